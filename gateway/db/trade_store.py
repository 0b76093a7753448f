"""Trade states: stored, found by what concerns them (wake times, logs' keys), and their
timelines."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Text, cast, insert, select, update
from sqlalchemy.orm import Session

from gateway.db import bulk
from gateway.db.models import (
    JSONText,
    LockRow,
    TradeEventRow,
    TradeRow,
    utcnow,
)
from gateway.domain.codec import decode, encode
from gateway.domain.trade import (
    ChainRef,
    Effect,
    TradeState,
    is_active,
)

# The hot writes are Core statements (the ORM's unit of work costs several times the SQL), one
# per kind of row however many rows (`gateway.db.bulk`).
_TRADES = TradeRow.__table__
_LOCKS = LockRow.__table__
_EVENTS = TradeEventRow.__table__


Wakes = tuple[int | None, int | None]  # (payment, business): see `wake_times`


@dataclass(frozen=True)
class LogTrades:
    """The trades a batch's logs name, and where the database routes each of their keys (a
    hashlock or a lock id on the batch's chain) to a trade."""

    trades: list[tuple[TradeState, Wakes]]
    by_hashlock: dict[bytes, bytes]
    by_lock: dict[bytes, bytes]


class _DecodedStates:
    """The states this process last wrote or read, by trade, with the text stored for each
    (its JSON): a state read back is parsed and decoded only if its stored text differs from
    the one kept. A state is its stored value decoded, so text equal to the one kept is that
    state, whoever wrote the row and whatever rolled back since. (A row read as a parsed value
    by the ORM is compared as that value: 4 us, against 80 to decode it.) Bounded (the least
    recently used out); shared by the process's threads (states are frozen)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.kept: dict[str, tuple[str | dict, TradeState]] = {}
        self.lock = threading.Lock()

    def decode_text(self, trade_hex: str, text: str) -> TradeState:
        kept = self.kept.get(trade_hex)
        state = kept[1] if kept is not None and kept[0] == text \
            else decode(TradeState, json.loads(text))
        self.keep(trade_hex, text, state)
        return state

    def decode(self, stored: dict) -> TradeState:
        key = stored.get("trade_id")
        kept = self.kept.get(key[2:]) if isinstance(key, str) else None
        state = kept[1] if kept is not None and kept[0] == stored \
            else decode(TradeState, stored)
        if isinstance(key, str):
            self.keep(key[2:], stored, state)
        return state

    def keep(self, trade_hex: str, stored: str | dict, state: TradeState) -> None:
        with self.lock:
            self.kept.pop(trade_hex, None)  # to the end: the newest
            self.kept[trade_hex] = (stored, state)
            while len(self.kept) > self.size:
                del self.kept[next(iter(self.kept))]


_STATES = _DecodedStates(2048)
# A trade row's state as its stored text (the same SQL on both databases; PostgreSQL's driver
# would parse a JSON column): compared with the text kept, parsed only when it differs.
_STATE_TEXT = cast(_TRADES.c.state, Text)


def decode_state(stored: dict) -> TradeState:
    """A trade row's stored state, decoded (or the process's kept state for that value)."""
    return _STATES.decode(stored)


def _trade_values(state: TradeState, wakes: Wakes, now: datetime,
                  updated: bool = False) -> dict[str, object]:
    # A trade awaiting its buyer's hashlock (a seller's proposal to a self-custody buyer) is
    # stored under its own id in the unique hashlock column until the buyer accepts; a lock
    # made under that value is routed to it and rejected as off the terms.
    trade_hex = state.trade_id.hex()
    stored = JSONText(json.dumps(encode(state)))
    _STATES.keep(trade_hex, stored, state)
    values: dict[str, object] = {"id": trade_hex,
                                 "hashlock": (state.terms.hashlock or state.trade_id).hex(),
                                 "phase": state.phase.value, "active": is_active(state),
                                 "state": stored, "updated_at": now,
                                 "wake_payment": wakes[0], "wake_business": wakes[1]}
    if not updated:
        values["created_at"] = values["updated_at"]
    return values


class TradeStates:
    """The dispatcher's trade rows and the trades' timelines (a part of `Repository`)."""

    session: Session

    # --- trades ---------------------------------------------------------------------------

    def get_trade(self, trade_id: bytes) -> TradeState | None:
        row = self.session.get(TradeRow, trade_id.hex())
        return _STATES.decode(row.state) if row else None

    def load_trades(self, trade_ids: Iterable[bytes], *, lock_rows: bool = True
                    ) -> dict[bytes, tuple[TradeState, Wakes]]:
        """Trades with their wake times, their rows locked until the transaction ends
        (PostgreSQL `FOR UPDATE`; SQLite's write lock already covers them), taken in trade id
        order: two writers of overlapping sets of trades never hold one each and wait for the
        other's. `lock_rows=False`: read only (the caller holds the exclusive trade-writes
        lock)."""
        ids = sorted({t.hex() for t in trade_ids})
        found: dict[bytes, tuple[TradeState, Wakes]] = {}
        for start in range(0, len(ids), bulk.IN_CHUNK):  # in id order across chunks too
            query = select(_TRADES.c.id, _STATE_TEXT, _TRADES.c.wake_payment,
                           _TRADES.c.wake_business) \
                .where(_TRADES.c.id.in_(ids[start:start + bulk.IN_CHUNK])).order_by(_TRADES.c.id)
            for trade_hex, text, wp, wb in self.session.execute(
                    query.with_for_update() if lock_rows else query):
                state = _STATES.decode_text(trade_hex, text)
                found[state.trade_id] = (state, (wp, wb))
        return found

    def due_trades(self, chain: str, timestamp: int) -> list[tuple[TradeState, Wakes]]:
        """Open trades that a `chain` block at `timestamp` may change (see `wake_times`)."""
        column = _TRADES.c.wake_payment if chain == "payment" else _TRADES.c.wake_business
        return self._trades_with_wakes(_TRADES.c.active.is_(True), column <= timestamp)

    def trades_for_logs(self, chain: str, hashlocks: Iterable[bytes],
                        lock_ids: Iterable[bytes]) -> LogTrades:
        """The trades that logs name, by their hashlock or by a lock of theirs on `chain`, and
        the database's route for each of those keys: two queries for a whole batch, and none
        for a log that names no trade (another user's lock on a shared contract)."""
        hashlocks, lock_ids = {h.hex() for h in hashlocks}, {i.hex() for i in lock_ids}
        found = LogTrades([], {}, {})
        if hashlocks:
            for text, wp, wb, trade_id, hashlock in self.session.execute(
                    select(_STATE_TEXT, _TRADES.c.wake_payment, _TRADES.c.wake_business,
                           _TRADES.c.id, _TRADES.c.hashlock)
                    .where(_TRADES.c.hashlock.in_(hashlocks))):
                found.trades.append((_STATES.decode_text(trade_id, text), (wp, wb)))
                found.by_hashlock[bytes.fromhex(hashlock)] = bytes.fromhex(trade_id)
        if lock_ids:
            for text, wp, wb, trade_id, lock_id in self.session.execute(
                    select(_STATE_TEXT, _TRADES.c.wake_payment, _TRADES.c.wake_business,
                           _TRADES.c.id, _LOCKS.c.lock_id)
                    .join(_LOCKS, _LOCKS.c.trade_id == _TRADES.c.id)
                    .where(_LOCKS.c.chain == chain, _LOCKS.c.lock_id.in_(lock_ids))):
                found.trades.append((_STATES.decode_text(trade_id, text), (wp, wb)))
                found.by_lock[bytes.fromhex(lock_id)] = bytes.fromhex(trade_id)
        return found

    def _trades_with_wakes(self, *where) -> list[tuple[TradeState, Wakes]]:  # noqa: ANN002
        rows = self.session.execute(select(_TRADES.c.id, _STATE_TEXT, _TRADES.c.wake_payment,
                                           _TRADES.c.wake_business).where(*where))
        return [(_STATES.decode_text(trade_hex, text), (wp, wb))
                for trade_hex, text, wp, wb in rows]

    def wake_all_active(self) -> None:
        """Every open trade woken by the next block of each chain, which stores its real wake
        times: a relayer does this when it starts, so that wake times computed under another
        timing policy (or another version of the rules) are never trusted."""
        self.session.execute(update(_TRADES).where(_TRADES.c.active.is_(True)).values(
            wake_payment=0, wake_business=0))

    def link_locks(self, chain: str, links: Iterable[tuple[bytes, bytes]]) -> None:
        """Record (lock id, trade id) pairs seen on `chain`; pairs already known are kept."""
        wanted = {lock_id.hex(): trade_id.hex() for lock_id, trade_id in links}
        if not wanted:
            return
        # One statement: ON CONFLICT DO NOTHING keeps the links already there.
        bulk.insert_rows(self.session, _LOCKS, [
            {"lock_id": lock, "chain": chain, "trade_id": trade}
            for lock, trade in wanted.items()], ignore_existing=True)

    def add_trade(self, state: TradeState, wakes: Wakes = (0, 0)) -> None:
        self.session.execute(insert(_TRADES), [_trade_values(state, wakes, utcnow())])

    def add_trades(self, trades: Iterable[tuple[TradeState, Wakes]]) -> None:
        """New trades in one statement (a batch proposal); a hashlock already in use raises
        IntegrityError, as in `add_trade`."""
        now = utcnow()
        bulk.insert_rows(self.session, _TRADES,
                         [_trade_values(state, wakes, now) for state, wakes in trades])

    def save_trades(self, trades: Iterable[tuple[TradeState, Wakes]]) -> None:
        """One UPDATE by primary key for all of them (Core: the ORM's bulk update costs more
        than the statement itself)."""
        now = utcnow()  # one instant per statement: the transaction's writes are one change
        rows = [_trade_values(s, wakes, now, updated=True) for s, wakes in trades]
        for row in rows:
            del row["hashlock"]
        bulk.update_rows(self.session, _TRADES, rows, keys=("id",))

    def set_trade_hashlock(self, trade_id: bytes, hashlock: bytes) -> None:
        """The buyer gave the hashlock when it accepted (unique: a reused one raises
        IntegrityError, as at proposal)."""
        self.session.execute(update(_TRADES).where(_TRADES.c.id == trade_id.hex())
                             .values(hashlock=hashlock.hex()))

    def active_trades(self) -> list[TradeState]:
        rows = self.session.scalars(select(TradeRow.state).where(TradeRow.active.is_(True)))
        return [_STATES.decode(r) for r in rows]

    def active_trades_with_locks(self, chain: str) -> list[TradeState]:
        """Open trades with a lock seen on `chain` (the reconciler's work): one query, and
        only those trades decoded."""
        rows = self.session.scalars(select(_TRADES.c.state).where(
            _TRADES.c.active.is_(True),
            _TRADES.c.id.in_(select(_LOCKS.c.trade_id).where(_LOCKS.c.chain == chain))))
        return [_STATES.decode(r) for r in rows]

    def trade_counts_by_phase(self) -> dict[str, int]:
        from sqlalchemy import func

        rows = self.session.execute(select(TradeRow.phase, func.count()).group_by(TradeRow.phase))
        return {phase: count for phase, count in rows}

    # --- timeline -------------------------------------------------------------------------

    def add_events_many(self, items: Iterable[tuple[bytes, Effect, ChainRef | None]]) -> None:
        """Append to the trades' timelines, in order, in one statement."""
        now = utcnow()
        rows = [{"trade_id": trade_id.hex(), "kind": type(event).__name__,
                 "payload": encode(event), "chain_id": ref.chain_id if ref else None,
                 "block_number": ref.block_number if ref else None,
                 "tx_hash": ref.tx_hash.hex() if ref else None, "created_at": now}
                for trade_id, event, ref in items]
        bulk.insert_rows(self.session, _EVENTS, rows)

    def phases_reached_at(self, trade_ids: Iterable[bytes], phase: str,
                          ) -> dict[bytes, datetime]:
        """For each trade that entered `phase`: when it first did (one query for all)."""
        ids = {t.hex() for t in trade_ids}
        if not ids:
            return {}
        found: dict[bytes, datetime] = {}
        for trade_hex, at in self.session.execute(  # the payload's phase matched in SQL
                select(TradeEventRow.trade_id, TradeEventRow.created_at)
                .where(TradeEventRow.trade_id.in_(ids),
                       TradeEventRow.kind == "EventPhaseChanged",
                       TradeEventRow.payload["new"].as_string() == phase)
                .order_by(TradeEventRow.id)):
            found.setdefault(bytes.fromhex(trade_hex), at)
        return found

    def events_for_trade(self, trade_id: bytes) -> list[TradeEventRow]:
        return list(self.session.scalars(select(TradeEventRow).where(
            TradeEventRow.trade_id == trade_id.hex()).order_by(TradeEventRow.id)))
