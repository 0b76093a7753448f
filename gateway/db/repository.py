"""Every query the engine makes of trade state, the input log, the outbox and the chain
cursors: one `Repository` over a session, made of a part per aggregate (`trade_store`,
`input_log`, `outbox`, `cursors`). No commits here: callers own the transaction."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.db.cursors import RECENT_HASHES, ChainCursors
from gateway.db.encrypted import UndecryptableError, encrypted_columns, rotate_encrypted
from gateway.db.input_log import Clock, InputLog
from gateway.db.locks import TRADE_WRITES
from gateway.db.outbox import Outbox
from gateway.db.trade_store import TradeStates, Wakes

__all__ = ["RECENT_HASHES", "Clock", "Repository", "UndecryptableError", "Wakes",
           "encrypted_columns", "rotate_encrypted"]

# PostgreSQL's trade-writes lock (`lock_trade_writes`), the first statement of every writing
# transaction: built once, run on the session's connection.
_TRADE_WRITES = select(func.pg_advisory_xact_lock(TRADE_WRITES))
_TRADE_WRITES_SHARED = select(func.pg_advisory_xact_lock_shared(TRADE_WRITES))


class Repository(TradeStates, InputLog, Outbox, ChainCursors):
    def __init__(self, session: Session) -> None:
        self.session = session

    # --- coordination ---------------------------------------------------------------------

    def lock_trade_writes(self, shared: bool = False) -> None:
        """Serialise the writers of trade state across processes; the first statement of each
        dispatcher transaction. See `gateway.db.locks`.

        PostgreSQL: the trade-writes advisory lock, transaction-level (released at commit or
        rollback). Exclusive for chain batches, which route logs to trades they discover as
        they go; `shared` for the writers of named trades (API actions and proposals), which
        then run in parallel with each other and lock their trades' rows (`load_trades`), so
        two writers of one trade still take turns and writers of different trades never wait.
        SQLite: the database's write lock, taken now. pysqlite begins a transaction only at
        its first write, so without this two processes (an API and a relayer) would both read
        a trade and the later commit would erase the earlier change. A write that changes
        nothing makes pysqlite emit BEGIN and SQLite take its write lock at once (waiting
        out another writer: the connection's busy timeout); in WAL mode this transaction's
        reads, all after it, then see everything committed before it. Readers do not wait."""
        dialect = self.session.get_bind().dialect.name
        if dialect == "postgresql":
            self.session.connection().execute(_TRADE_WRITES_SHARED if shared
                                              else _TRADE_WRITES)
        elif dialect == "sqlite":
            from sqlalchemy import text

            self.session.execute(text("UPDATE cursors SET chain_id = chain_id WHERE 0"))

    def lock_name(self, name: str) -> None:
        """A transaction-level lock on a name, for writers that hold the trade-writes lock only
        shared and must still take turns on something that is not one trade's row (a buyer's
        open exposure). PostgreSQL only: on SQLite the database's write lock, held by every
        writer, already serialises them."""
        if self.session.get_bind().dialect.name == "postgresql":
            from sqlalchemy import func

            from gateway.db.locks import lock_key

            self.session.execute(select(func.pg_advisory_xact_lock(lock_key(name))))

    def lock_chain_sends(self, chain_id: int) -> None:
        """Serialise the executor transactions that plan and record transactions on one chain,
        across processes; the first statement of each. PostgreSQL: that chain's send lock
        (transaction-level advisory). SQLite: its one write lock, taken at once, as in
        `lock_trade_writes` (so the plan is read after the previous one committed). See
        `gateway.db.locks`."""
        dialect = self.session.get_bind().dialect.name
        if dialect == "postgresql":
            from sqlalchemy import func

            from gateway.db.locks import send_lock

            self.session.execute(select(func.pg_advisory_xact_lock(send_lock(chain_id))))
        elif dialect == "sqlite":
            from sqlalchemy import text

            self.session.execute(text("UPDATE cursors SET chain_id = chain_id WHERE 0"))
