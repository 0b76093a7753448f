"""Coordination of several relayers on one PostgreSQL database: advisory locks.

Four kinds of work must not run twice at the same time:

* **writing trade state** (the dispatcher: API actions and proposals, the relayer's own
  inputs, chain batches). Every dispatcher transaction first takes the transaction-level
  trade-writes lock (`Repository.lock_trade_writes`). Writers of named trades (a
  `Dispatcher.unit`: API requests, the reconciler, refused sends) take it *shared* and lock
  their trades' rows (`SELECT ... FOR UPDATE`, in trade id order): they run side by side, and
  two writers of one trade take turns, the second reading what the first committed. A chain
  batch takes it *exclusively*: it finds its trades as it routes its logs (by hashlock, by
  lock id, by wake time) and stores the logs no trade claims yet for a proposal to adopt, so it
  runs alone. What writers of different trades share is locked by name (`Repository.lock_name`:
  a buyer's open exposure, read and committed to in one transaction). All are released by
  the commit or rollback, and so by a crash or a lost connection.
* **polling a chain** (cursor -> fetch logs -> apply): one relayer per chain at a time, or two
  would apply the same batch and could move the cursor backwards.
* **executing a chain's outbox** (settle attempts, sign with each key at its next nonce,
  record, broadcast): one relayer per chain at a time, which covers every signing key used on
  that chain, so no nonce is handed out twice and no effect is sent by two relayers.

The last two are session-level `pg_try_advisory_lock`s held on a connection of their own for
one pass over one chain (`AdvisoryLocks.hold`): a relayer that does not get a chain's lock
skips that chain for this step, because another relayer is doing it. The server releases a
session lock when its connection ends, so a relayer that is killed mid-pass frees its chains
for the others at once (one whose host vanishes, within about half a minute: the sessions ask
for TCP keep-alives, `gateway.db.session`); what it had recorded is picked up by whoever
runs next (the executor's recorded-before-broadcast rule).

The session lock decides who does a pass; it is not what keeps nonces unique. A holder whose
lock connection alone was dropped while its other connections kept working would overlap its
pass with a new holder's. So every executor transaction that plans and records transactions on
a chain first takes that chain's **send lock** (`send_lock`, transaction-level, waited for):
such transactions run one at a time per chain, and each one reads the outbox and the recorded
nonces only after the previous one committed. Two overlapping passes then find each other's
attempts recorded and send nothing twice.

On SQLite (the embedded default) there are no advisory locks. The transaction-level ones
(`Repository.lock_trade_writes`, `Repository.lock_chain_sends`) take SQLite's single write
lock as their transaction's first statement instead: pysqlite would take it only at the first
write, after the reads, so an API process and a relayer process could each write a state
computed from the same old one. Every dispatcher and executor planning transaction of the
processes sharing the file thus runs alone, a second one waiting up to the busy timeout
(30 s, `gateway.db.session`); readers never wait (WAL). The session locks stay no-ops (`hold`
always says yes): on SQLite run one relayer (two would poll the same chain and could move its
cursor backwards); the API may be a process of its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import structlog
from sqlalchemy import Engine, func, select

log = structlog.get_logger("gateway.locks")


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for a name (`dvp:` namespaced)."""
    digest = hashlib.sha256(f"dvp:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


TRADE_WRITES = lock_key("trade-writes")


def poll_lock(chain_id: int) -> str:
    return f"poll:{chain_id}"


def execute_lock(chain_id: int) -> str:
    return f"execute:{chain_id}"


def send_lock(chain_id: int) -> int:
    """The transaction-level lock of a chain's planning and recording of transactions."""
    return lock_key(f"send:{chain_id}")


class AdvisoryLocks:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.enabled = engine.dialect.name == "postgresql"

    @contextmanager
    def hold(self, name: str) -> Iterator[bool]:
        """Try to take the session lock `name` for the duration of the block; yields whether
        it was taken (never waits). Always True where locks are not needed (SQLite)."""
        if not self.enabled:
            yield True
            return
        key = lock_key(name)
        # In autocommit: a statement each to take and to release the lock, with no BEGIN and
        # COMMIT around them (six round trips a pass and chain before), and no open
        # transaction held meanwhile.
        connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = bool(connection.execute(select(func.pg_try_advisory_lock(key))).scalar())
        except Exception:
            connection.invalidate()
            connection.close()
            raise
        if not got:
            connection.close()
            yield False
            return
        try:
            yield True
        finally:
            try:
                connection.execute(select(func.pg_advisory_unlock(key)))
            except Exception as exc:  # noqa: BLE001 - the session is gone, and its lock with it
                log.warning("advisory_unlock_failed", lock=name, error=str(exc)[:200])
                connection.invalidate()
            finally:
                connection.close()
