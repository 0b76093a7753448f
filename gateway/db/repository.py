"""Every query the engine and the API make. No commits here: callers own the transaction."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime

from sqlalchemy import bindparam, delete, insert, or_, select, update
from sqlalchemy.orm import Session

from gateway.db.models import (
    AttemptRow,
    BlockHashRow,
    CursorRow,
    InputRow,
    LockRow,
    OutboxRow,
    TradeEventRow,
    TradeRow,
    utcnow,
)
from gateway.domain.codec import decode, encode
from gateway.domain.trade import (
    ActionTakeDelivery,
    ChainRef,
    ContractSend,
    Effect,
    Input,
    TradeState,
    is_active,
)

RECENT_HASHES = 256  # cursor positions kept per chain for finding a fork point

# The hot writes are Core statements: the ORM's unit of work costs several times the SQL.
_TRADES, _LOCKS, _INPUTS = TradeRow.__table__, LockRow.__table__, InputRow.__table__
_OUTBOX, _EVENTS = OutboxRow.__table__, TradeEventRow.__table__
_CURSORS = CursorRow.__table__
_CURSOR_TIMES = select(_CURSORS.c.chain_id, _CURSORS.c.block_number,
                       _CURSORS.c.block_timestamp).where(
    _CURSORS.c.chain_id.in_(bindparam("ids", expanding=True)))
_SAVE_TRADE = update(_TRADES).where(_TRADES.c.id == bindparam("b_id"))
_CLOSE_EFFECT = update(_OUTBOX).where(
    _OUTBOX.c.trade_id == bindparam("b_trade"), _OUTBOX.c.key == bindparam("b_key"),
    _OUTBOX.c.status == "pending").values(status=bindparam("b_status"),
                                          updated_at=bindparam("b_now"))


Wakes = tuple[int | None, int | None]  # (payment, business): see `wake_times`
Clock = tuple[int, int]  # a trade's (payment_time, business_time) when an input was applied


def _payload(inp: Input, clock: Clock | None) -> dict:
    if isinstance(inp, ActionTakeDelivery):
        inp = replace(inp, secret=None)
    payload = encode(inp)
    if clock is not None:
        payload["_clock"] = list(clock)
    return payload


def _route_keys(trade_id: bytes | None, inp: Input) -> tuple[str | None, str | None]:
    """(hashlock, lock id) a log routes by, kept only while no trade claims it."""
    route = getattr(inp, "route", None)
    if trade_id is not None or route is None:
        return None, None
    return (route.hashlock.hex() if route.hashlock is not None else None,
            route.lock_id.hex() if route.lock_id is not None else None)


def _clock(payload: dict) -> Clock | None:
    clock = payload.get("_clock")
    return (int(clock[0]), int(clock[1])) if clock else None


def _trade_values(state: TradeState, wakes: Wakes, updated: bool = False) -> dict[str, object]:
    # A trade awaiting its buyer's hashlock (a seller's proposal to a self-custody buyer) is
    # stored under its own id in the unique hashlock column until the buyer accepts; a lock
    # made under that value is routed to it and rejected as off the terms.
    values: dict[str, object] = {"id": state.trade_id.hex(),
                                 "hashlock": (state.terms.hashlock or state.trade_id).hex(),
                                 "phase": state.phase.value, "active": is_active(state),
                                 "state": encode(state), "updated_at": utcnow(),
                                 "wake_payment": wakes[0], "wake_business": wakes[1]}
    if not updated:
        values["created_at"] = values["updated_at"]
    return values


class Repository:
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
            from sqlalchemy import func

            from gateway.db.locks import TRADE_WRITES

            take = func.pg_advisory_xact_lock_shared if shared else func.pg_advisory_xact_lock
            self.session.execute(select(take(TRADE_WRITES)))
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

    # --- trades ---------------------------------------------------------------------------

    def get_trade(self, trade_id: bytes) -> TradeState | None:
        row = self.session.get(TradeRow, trade_id.hex())
        return decode(TradeState, row.state) if row else None

    def get_trade_for_update(self, trade_id: bytes) -> tuple[TradeState, Wakes] | None:
        """The trade and its stored wake times (the dispatcher saves them when they change)."""
        found = self._trades_with_wakes(_TRADES.c.id == trade_id.hex())
        return found[0] if found else None

    def load_trades(self, trade_ids: Iterable[bytes]) -> dict[bytes, tuple[TradeState, Wakes]]:
        """Trades with their wake times, their rows locked until the transaction ends
        (PostgreSQL `FOR UPDATE`; SQLite's write lock already covers them), taken in trade id
        order: two writers of overlapping sets of trades never hold one each and wait for the
        other's."""
        ids = sorted({t.hex() for t in trade_ids})
        if not ids:
            return {}
        rows = self.session.execute(
            select(_TRADES.c.state, _TRADES.c.wake_payment, _TRADES.c.wake_business)
            .where(_TRADES.c.id.in_(ids)).order_by(_TRADES.c.id).with_for_update())
        found = [(decode(TradeState, state), (wp, wb)) for state, wp, wb in rows]
        return {state.trade_id: (state, wakes) for state, wakes in found}

    def due_trades(self, chain: str, timestamp: int) -> list[tuple[TradeState, Wakes]]:
        """Open trades that a `chain` block at `timestamp` may change (see `wake_times`)."""
        column = _TRADES.c.wake_payment if chain == "payment" else _TRADES.c.wake_business
        return self._trades_with_wakes(_TRADES.c.active.is_(True), column <= timestamp)

    def trades_for_logs(self, chain: str, hashlocks: Iterable[bytes],
                        lock_ids: Iterable[bytes]) -> list[tuple[TradeState, Wakes]]:
        """The trades that logs name, by their hashlock or by a lock of theirs on `chain`:
        two queries for a whole batch instead of one per log."""
        hashlocks, lock_ids = {h.hex() for h in hashlocks}, {i.hex() for i in lock_ids}
        found = self._trades_with_wakes(_TRADES.c.hashlock.in_(hashlocks)) if hashlocks else []
        if lock_ids:
            found += self._trades_with_wakes(_TRADES.c.id.in_(
                select(_LOCKS.c.trade_id).where(_LOCKS.c.chain == chain,
                                                _LOCKS.c.lock_id.in_(lock_ids))))
        return found

    def _trades_with_wakes(self, *where) -> list[tuple[TradeState, Wakes]]:  # noqa: ANN002
        rows = self.session.execute(select(_TRADES.c.state, _TRADES.c.wake_payment,
                                           _TRADES.c.wake_business).where(*where))
        return [(decode(TradeState, state), (wp, wb)) for state, wp, wb in rows]

    def wake_all_active(self) -> None:
        """Every open trade woken by the next block of each chain, which stores its real wake
        times: a relayer does this when it starts, so that wake times computed under another
        timing policy (or another version of the rules) are never trusted."""
        self.session.execute(update(_TRADES).where(_TRADES.c.active.is_(True)).values(
            wake_payment=0, wake_business=0))

    def trade_id_by_hashlock(self, hashlock: bytes) -> bytes | None:
        found = self.session.scalar(select(TradeRow.id).where(TradeRow.hashlock == hashlock.hex()))
        return bytes.fromhex(found) if found else None

    def trade_id_by_lock(self, chain: str, lock_id: bytes) -> bytes | None:
        row = self.session.get(LockRow, (lock_id.hex(), chain))
        return bytes.fromhex(row.trade_id) if row else None

    def link_locks(self, chain: str, links: Iterable[tuple[bytes, bytes]]) -> None:
        """Record (lock id, trade id) pairs seen on `chain`; pairs already known are kept."""
        wanted = {lock_id.hex(): trade_id.hex() for lock_id, trade_id in links}
        if not wanted:
            return
        known = set(self.session.scalars(select(LockRow.lock_id).where(
            LockRow.chain == chain, LockRow.lock_id.in_(wanted))))
        rows = [{"lock_id": lock, "chain": chain, "trade_id": trade}
                for lock, trade in wanted.items() if lock not in known]
        if rows:
            self.session.execute(insert(_LOCKS), rows)

    def add_trade(self, state: TradeState, wakes: Wakes = (0, 0)) -> None:
        self.session.execute(insert(_TRADES), [_trade_values(state, wakes)])

    def add_trades(self, trades: Iterable[tuple[TradeState, Wakes]]) -> None:
        """New trades in one executemany INSERT (a batch proposal); a hashlock already in use
        raises IntegrityError, as in `add_trade`."""
        rows = [_trade_values(state, wakes) for state, wakes in trades]
        if rows:
            self.session.execute(insert(_TRADES), rows)

    def save_trades(self, trades: Iterable[tuple[TradeState, Wakes]]) -> None:
        """One executemany UPDATE by primary key for all of them (Core: the ORM's bulk
        update costs more than the statement itself)."""
        rows = [{"b_id": s.trade_id.hex(), **_trade_values(s, wakes, updated=True)}
                for s, wakes in trades]
        for row in rows:
            del row["id"], row["hashlock"]
        if rows:
            self.session.execute(_SAVE_TRADE, rows)

    def set_trade_hashlock(self, trade_id: bytes, hashlock: bytes) -> None:
        """The buyer gave the hashlock when it accepted (unique: a reused one raises
        IntegrityError, as at proposal)."""
        self.session.execute(update(_TRADES).where(_TRADES.c.id == trade_id.hex())
                             .values(hashlock=hashlock.hex()))

    def active_trades(self) -> list[TradeState]:
        rows = self.session.scalars(select(TradeRow.state).where(TradeRow.active.is_(True)))
        return [decode(TradeState, r) for r in rows]

    def active_trades_with_locks(self, chain: str) -> list[TradeState]:
        """Open trades with a lock seen on `chain` (the reconciler's work): one query, and
        only those trades decoded."""
        rows = self.session.scalars(select(_TRADES.c.state).where(
            _TRADES.c.active.is_(True),
            _TRADES.c.id.in_(select(_LOCKS.c.trade_id).where(_LOCKS.c.chain == chain))))
        return [decode(TradeState, r) for r in rows]

    def trade_counts_by_phase(self) -> dict[str, int]:
        from sqlalchemy import func

        rows = self.session.execute(select(TradeRow.phase, func.count()).group_by(TradeRow.phase))
        return {phase: count for phase, count in rows}

    # --- input log ------------------------------------------------------------------------

    def logged_inputs(self, chain_id: int, refs: Iterable[ChainRef],
                      ) -> dict[tuple[str, int], InputRow]:
        """The input rows already logged for these chain logs, by (tx hash, log index)."""
        hashes = {ref.tx_hash.hex() for ref in refs}
        if not hashes:
            return {}
        rows = self.session.scalars(select(InputRow).where(
            InputRow.chain_id == chain_id, InputRow.tx_hash.in_(hashes)))
        return {(r.tx_hash, r.log_index): r for r in rows}  # type: ignore[misc]

    def revive_input(self, row: InputRow, trade_id: bytes | None, inp: Input,
                     ref: ChainRef, clock: Clock | None = None) -> None:
        """A log orphaned by a reorg and mined again (same transaction, same log index): back
        in the log, at its new place."""
        row.orphaned, row.block_number = False, ref.block_number
        row.payload, row.trade_id = _payload(inp, clock), trade_id.hex() if trade_id else None
        row.route_hashlock, row.route_lock_id = _route_keys(trade_id, inp)

    def record_input(self, trade_id: bytes | None, inp: Input, ref: ChainRef | None = None,
                     clock: Clock | None = None) -> None:
        self.record_inputs([(trade_id, inp, ref, clock)])

    def record_inputs(self, entries: Iterable[tuple[bytes | None, Input, ChainRef | None,
                                                    Clock | None]]) -> None:
        """Append to the input log, in order, in one statement. Each entry keeps the trade's
        chain times when it was applied (`clock`), so a replay after a reorg decides at the
        same times. A managed buyer's secret is never logged: the trade's state holds it from
        take-delivery on, and a replay takes it from there."""
        rows = []
        for trade_id, inp, ref, clock in entries:
            hashlock, lock_id = _route_keys(trade_id, inp)
            rows.append({"trade_id": trade_id.hex() if trade_id else None,
                         "kind": type(inp).__name__, "payload": _payload(inp, clock),
                         "chain_id": ref.chain_id if ref else None,
                         "block_number": ref.block_number if ref else None,
                         "tx_hash": ref.tx_hash.hex() if ref else None,
                         "log_index": ref.log_index if ref else None, "orphaned": False,
                         "created_at": utcnow(), "route_hashlock": hashlock,
                         "route_lock_id": lock_id})
        if rows:
            self.session.execute(insert(_INPUTS), rows)

    def unmatched_inputs(self, hashlocks: Iterable[bytes] = (),
                         lock_ids: Iterable[bytes] = ()) -> list[tuple[InputRow, Input]]:
        """Chain logs no trade has claimed that route by one of these hashlocks or lock ids,
        still on chain, in log order."""
        hashlocks, lock_ids = [h.hex() for h in hashlocks], [i.hex() for i in lock_ids]
        keys = [*([InputRow.route_hashlock.in_(hashlocks)] if hashlocks else []),
                *([InputRow.route_lock_id.in_(lock_ids)] if lock_ids else [])]
        if not keys:
            return []
        rows = self.session.scalars(select(InputRow).where(
            InputRow.trade_id.is_(None), InputRow.orphaned.is_(False), or_(*keys)
        ).order_by(InputRow.id))
        return [(row, decode(Input, row.payload)) for row in rows]

    def adopt_inputs(self, trade_id: bytes,
                     adopted: list[tuple[InputRow, Input, Clock | None]]) -> None:
        """Give unmatched logs to the trade that now claims them, at the end of its input log
        (moved, not copied: a log is in the input log once), each with the chain times it was
        applied at, so a replay after a reorg applies them where the trade first did."""
        if not adopted:
            return
        self.session.execute(delete(_INPUTS).where(
            _INPUTS.c.id.in_([row.id for row, _, _ in adopted])))
        self.session.execute(insert(_INPUTS), [{
            "trade_id": trade_id.hex(), "kind": row.kind, "payload": _payload(inp, clock),
            "chain_id": row.chain_id, "block_number": row.block_number, "tx_hash": row.tx_hash,
            "log_index": row.log_index, "orphaned": False, "created_at": row.created_at,
            "route_hashlock": None, "route_lock_id": None} for row, inp, clock in adopted])
        for row, _, _ in adopted:
            self.session.expunge(row)

    def inputs_for_trade(self, trade_id: bytes) -> list[tuple[Input, Clock | None]]:
        """The trade's inputs still on chain (or actions), in order, each with the chain times
        it was applied at (None: logged before those were kept)."""
        rows = self.session.scalars(select(InputRow).where(
            InputRow.trade_id == trade_id.hex(), InputRow.orphaned.is_(False)
        ).order_by(InputRow.id))
        return [(decode(Input, r.payload), _clock(r.payload)) for r in rows]

    def orphan_inputs_after(self, chain_id: int, block_number: int) -> list[tuple[bytes, Input]]:
        """Mark chain inputs from blocks above `block_number` orphaned; returns them."""
        rows = list(self.session.scalars(select(InputRow).where(
            InputRow.chain_id == chain_id, InputRow.block_number > block_number,
            InputRow.orphaned.is_(False))))
        for row in rows:
            row.orphaned = True
        self.session.flush()  # the replay that follows reads the log back
        return [(bytes.fromhex(r.trade_id), decode(Input, r.payload)) for r in rows if r.trade_id]

    # --- outbox ---------------------------------------------------------------------------

    def enqueue_many(self, items: Iterable[tuple[bytes, ContractSend, str]],
                     new_trades: frozenset[bytes] = frozenset()) -> None:
        """Put effects in the outbox, in order. One already there and pending stays as it is;
        one there but finished (a reorg undid its result) starts afresh. `new_trades` were
        created in this transaction: they have no rows to look for."""
        wanted: dict[tuple[str, str], tuple[ContractSend, str]] = {}
        for trade_id, effect, chain in items:
            wanted.setdefault((trade_id.hex(), effect.key), (effect, chain))
        if not wanted:
            return
        look_in = {t for t, _ in wanted} - {t.hex() for t in new_trades}
        existing = {(r.trade_id, r.key): r for r in self.session.scalars(select(OutboxRow).where(
            OutboxRow.trade_id.in_(look_in)))} if look_in else {}
        rows = []
        for (trade_hex, key), (effect, chain) in wanted.items():
            row = existing.get((trade_hex, key))
            if row is None:
                now = utcnow()
                rows.append({"trade_id": trade_hex, "key": key, "kind": type(effect).__name__,
                             "chain": chain, "payload": encode(effect), "status": "pending",
                             "created_at": now, "updated_at": now})
            elif row.status != "pending":
                row.status, row.payload, row.attempt_id, row.last_error = (
                    "pending", encode(effect), None, None)
        if rows:
            self.session.execute(insert(_OUTBOX), rows)

    def close_effects_many(self, items: Iterable[tuple[bytes, str, str]]) -> None:
        """Mark pending effects (trade id, key) finished with a status, in one statement."""
        rows = [{"b_trade": t.hex(), "b_key": k, "b_status": s, "b_now": utcnow()}
                for t, k, s in items]
        if rows:
            self.session.execute(_CLOSE_EFFECT, rows)

    def pending_effects(self, chain: str | None = None) -> list[tuple[OutboxRow, ContractSend]]:
        query = select(OutboxRow).where(OutboxRow.status == "pending").order_by(OutboxRow.id)
        if chain is not None:
            query = query.where(OutboxRow.chain == chain)
        return [(row, decode(ContractSend, row.payload)) for row in self.session.scalars(query)]

    def outbox_pending_by_chain(self) -> dict[str, tuple[int, datetime]]:
        """Per chain: how many effects wait to be done on chain, and since when the oldest."""
        from sqlalchemy import func

        rows = self.session.execute(select(
            OutboxRow.chain, func.count(), func.min(OutboxRow.created_at)).where(
            OutboxRow.status == "pending").group_by(OutboxRow.chain))
        return {chain: (count, oldest) for chain, count, oldest in rows}  # min() keeps UTC

    def outbox_depth(self) -> int:
        from sqlalchemy import func

        return self.session.scalar(select(func.count()).select_from(OutboxRow).where(
            OutboxRow.status == "pending")) or 0

    # --- transaction attempts -------------------------------------------------------------

    def add_attempt(self, chain_id: int, sender: str, nonce: int, tx_hash: bytes,
                    raw_tx: bytes) -> AttemptRow:
        existing = self.session.scalar(select(AttemptRow).where(
            AttemptRow.chain_id == chain_id, AttemptRow.sender == sender,
            AttemptRow.nonce == nonce, AttemptRow.tx_hash == tx_hash.hex()))
        if existing is not None:
            # The very same transaction again (a reorg dropped it after it was mined).
            existing.status, existing.block_number = "signed", None
            return existing
        row = AttemptRow(chain_id=chain_id, sender=sender, nonce=nonce, tx_hash=tx_hash.hex(),
                         raw_tx=raw_tx.hex(), status="signed")
        self.session.add(row)
        self.session.flush()
        return row

    def get_attempt(self, attempt_id: int) -> AttemptRow | None:
        return self.session.get(AttemptRow, attempt_id)

    def max_inflight_nonce(self, chain_id: int, sender: str) -> int | None:
        """Highest nonce of our transactions not yet seen mined (signed or sent). Mined ones
        are counted by the chain's own nonce, which also forgets those a reorg removed."""
        from sqlalchemy import func

        return self.session.scalar(select(func.max(AttemptRow.nonce)).where(
            AttemptRow.chain_id == chain_id, AttemptRow.sender == sender,
            AttemptRow.status.in_(("signed", "sent"))))

    def orphan_mined_attempts(self, chain_id: int, sender: str,
                              from_nonce: int) -> list[AttemptRow]:
        """Attempts recorded as mined at `from_nonce` or above, which the chain's nonce says
        are not on chain any more: marked `orphaned`; returns them."""
        rows = list(self.session.scalars(select(AttemptRow).where(
            AttemptRow.chain_id == chain_id, AttemptRow.sender == sender,
            AttemptRow.nonce >= from_nonce, AttemptRow.status == "mined")))
        for row in rows:
            row.status = "orphaned"
        return rows

    def unsettled_attempts(self, chain_id: int) -> list[AttemptRow]:
        return list(self.session.scalars(select(AttemptRow).where(
            AttemptRow.chain_id == chain_id, AttemptRow.status.in_(("signed", "sent"))
        ).order_by(AttemptRow.nonce)))

    # --- cursors --------------------------------------------------------------------------

    def cursor(self, chain_id: int) -> CursorRow | None:
        return self.session.get(CursorRow, chain_id)

    def cursors(self, chain_ids: list[int]):  # noqa: ANN201 - rows of the three columns
        """(chain_id, block_number, block_timestamp) of these chains' cursors."""
        return list(self.session.execute(_CURSOR_TIMES, {"ids": chain_ids}))

    def set_cursor(self, chain_id: int, number: int, block_hash: bytes, timestamp: int,
                   checkpoints: Iterable[tuple[int, bytes]] = ()) -> None:
        """Move the cursor and remember its block hash, with those of `checkpoints` (blocks
        below it that its batch covered: `ChainBatch.checkpoints`), for finding a fork point;
        hashes of blocks `RECENT_HASHES` or more below the cursor are forgotten."""
        row = self.session.get(CursorRow, chain_id)
        if row is None:
            self.session.add(CursorRow(chain_id=chain_id, block_number=number,
                                       block_hash=block_hash.hex(), block_timestamp=timestamp))
        else:
            row.block_number, row.block_hash, row.block_timestamp = (
                number, block_hash.hex(), timestamp)
        self.session.merge(BlockHashRow(chain_id=chain_id, block_number=number,
                                        block_hash=block_hash.hex()))
        self.session.execute(delete(BlockHashRow).where(
            BlockHashRow.chain_id == chain_id,
            BlockHashRow.block_number <= number - RECENT_HASHES))
        rows = [{"chain_id": chain_id, "block_number": n, "block_hash": h.hex()}
                for n, h in checkpoints if number - RECENT_HASHES < n < number]
        if rows:  # two statements however many (a catch-up batch brings dozens)
            self.session.execute(delete(BlockHashRow).where(
                BlockHashRow.chain_id == chain_id,
                BlockHashRow.block_number.in_([r["block_number"] for r in rows])))
            self.session.execute(insert(BlockHashRow), rows)

    def recent_block_hashes(self, chain_id: int) -> list[tuple[int, bytes]]:
        rows = self.session.execute(select(BlockHashRow.block_number, BlockHashRow.block_hash)
                                    .where(BlockHashRow.chain_id == chain_id)
                                    .order_by(BlockHashRow.block_number.desc()))
        return [(n, bytes.fromhex(h)) for n, h in rows]

    def forget_block_hashes_after(self, chain_id: int, number: int) -> None:
        self.session.execute(delete(BlockHashRow).where(
            BlockHashRow.chain_id == chain_id, BlockHashRow.block_number > number))

    # --- timeline -------------------------------------------------------------------------

    def add_events_many(self, items: Iterable[tuple[bytes, Effect, ChainRef | None]]) -> None:
        """Append to the trades' timelines, in order, in one statement."""
        rows = [{"trade_id": trade_id.hex(), "kind": type(event).__name__,
                 "payload": encode(event), "chain_id": ref.chain_id if ref else None,
                 "block_number": ref.block_number if ref else None,
                 "tx_hash": ref.tx_hash.hex() if ref else None, "created_at": utcnow()}
                for trade_id, event, ref in items]
        if rows:
            self.session.execute(insert(_EVENTS), rows)

    def phases_reached_at(self, trade_ids: Iterable[bytes], phase: str,
                          ) -> dict[bytes, datetime]:
        """For each trade that entered `phase`: when it first did (one query for all)."""
        ids = {t.hex() for t in trade_ids}
        if not ids:
            return {}
        found: dict[bytes, datetime] = {}
        for trade_hex, payload, at in self.session.execute(
                select(TradeEventRow.trade_id, TradeEventRow.payload, TradeEventRow.created_at)
                .where(TradeEventRow.trade_id.in_(ids),
                       TradeEventRow.kind == "EventPhaseChanged")
                .order_by(TradeEventRow.id)):
            if payload.get("new") == phase:
                found.setdefault(bytes.fromhex(trade_hex), at)
        return found

    def events_for_trade(self, trade_id: bytes) -> list[TradeEventRow]:
        return list(self.session.scalars(select(TradeEventRow).where(
            TradeEventRow.trade_id == trade_id.hex()).order_by(TradeEventRow.id)))

    # --- transaction replacement (executor) -----------------------------------------------

    def attempts_at_nonce(self, chain_id: int, sender: str, nonce: int) -> list[AttemptRow]:
        """Every transaction we signed at this nonce: the first and its replacements."""
        return list(self.session.scalars(select(AttemptRow).where(
            AttemptRow.chain_id == chain_id, AttemptRow.sender == sender,
            AttemptRow.nonce == nonce).order_by(AttemptRow.id)))

    def outbox_rows_for_attempt(self, attempt_id: int) -> list[OutboxRow]:
        return list(self.session.scalars(select(OutboxRow).where(
            OutboxRow.attempt_id == attempt_id)))


# --- encryption at rest: key rotation (`dvp-gateway secrets rotate`) --------------------------


def encrypted_columns():  # noqa: ANN201 - [(table name, key column, ciphertext column)]
    """Every column that holds `gateway.keys.Cipher` output: managed accounts' signing
    keys, managed buyers' unrevealed trade secrets, webhook endpoints' signing secrets."""
    from gateway.db.models import ManagedKeyRow, SecretRow, WebhookEndpointRow

    return [(ManagedKeyRow.__table__, "enterprise_id", "encrypted_key"),
            (SecretRow.__table__, "trade_id", "encrypted_secret"),
            (WebhookEndpointRow.__table__, "id", "encrypted_secret")]


class UndecryptableError(ValueError):
    """A stored ciphertext that no configured key decrypts."""


def rotate_encrypted(session: Session, cipher) -> dict[str, tuple[int, int]]:  # noqa: ANN001
    """Re-encrypt every stored ciphertext that is not under the cipher's newest key, in the
    caller's transaction. Per table: (rows rewritten, rows already under the newest key).
    Raises UndecryptableError (naming the row, never its content) when no key decrypts one:
    the caller rolls back, and nothing is half-rotated."""
    counts: dict[str, tuple[int, int]] = {}
    for table, key_name, column_name in encrypted_columns():
        key, column = table.c[key_name], table.c[column_name]
        rewritten = current = 0
        for row_key, token in session.execute(select(key, column).order_by(key)).all():
            if cipher.is_current(token):
                current += 1
                continue
            try:
                new = cipher.rotate(token)
            except ValueError:
                raise UndecryptableError(
                    f"{table.name}.{column_name} of {key_name} {row_key}: no key of "
                    "DVP_SECRETS_KEY decrypts it (is the key it was written with missing?)"
                ) from None
            # Compare-and-set: a row changed meanwhile is left as it is (rotate again).
            done = session.execute(update(table).where(key == row_key, column == token)
                                   .values({column_name: new}))
            rewritten += done.rowcount
        counts[table.name] = (rewritten, current)
    return counts
