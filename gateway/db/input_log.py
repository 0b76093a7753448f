"""The input log: every input applied to a trade, with the chain times it was applied at (for a
faithful replay), and the chain logs that no trade claims yet (routed when one does)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from gateway.db import bulk
from gateway.db.models import (
    InputRow,
    utcnow,
)
from gateway.domain.codec import decode, encode
from gateway.domain.trade import (
    ActionTakeDelivery,
    ChainRef,
    Input,
)

# The hot writes are Core statements: the ORM's unit of work costs several times the SQL.
_INPUTS = InputRow.__table__


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


class InputLog:
    """The append-only input log (a part of `Repository`)."""

    session: Session

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
        rows, now = [], utcnow()
        for trade_id, inp, ref, clock in entries:
            hashlock, lock_id = _route_keys(trade_id, inp)
            rows.append({"trade_id": trade_id.hex() if trade_id else None,
                         "kind": type(inp).__name__, "payload": _payload(inp, clock),
                         "chain_id": ref.chain_id if ref else None,
                         "block_number": ref.block_number if ref else None,
                         "tx_hash": ref.tx_hash.hex() if ref else None,
                         "log_index": ref.log_index if ref else None, "orphaned": False,
                         "created_at": now, "route_hashlock": hashlock,
                         "route_lock_id": lock_id})
        bulk.insert_rows(self.session, _INPUTS, rows)

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
        bulk.insert_rows(self.session, _INPUTS, [{
            "trade_id": trade_id.hex(), "kind": row.kind, "payload": _payload(inp, clock),
            "chain_id": row.chain_id, "block_number": row.block_number, "tx_hash": row.tx_hash,
            "log_index": row.log_index, "orphaned": False, "created_at": row.created_at,
            "route_hashlock": None, "route_lock_id": None} for row, inp, clock in adopted])
        for row, _, _ in adopted:
            self.session.expunge(row)

    def inputs_for_trade(self, trade_id: bytes) -> list[tuple[Input, Clock | None]]:
        """The trade's inputs still on chain (or actions), in order, each with the chain times
        it was applied at (None: logged before those were kept)."""
        return self.inputs_for_trades([trade_id]).get(trade_id, [])

    def inputs_for_trades(self, trade_ids: Iterable[bytes]
                          ) -> dict[bytes, list[tuple[Input, Clock | None]]]:
        """`inputs_for_trade` of each trade, in one query (a reorg replays every trade its
        orphaned blocks touched)."""
        found: dict[bytes, list[tuple[Input, Clock | None]]] = {}
        ids = sorted({t.hex() for t in trade_ids})
        for start in range(0, len(ids), bulk.IN_CHUNK):
            rows = self.session.execute(select(InputRow.trade_id, InputRow.payload).where(
                InputRow.trade_id.in_(ids[start:start + bulk.IN_CHUNK]),
                InputRow.orphaned.is_(False)).order_by(InputRow.id))
            for trade_id, payload in rows:
                found.setdefault(bytes.fromhex(trade_id), []).append(
                    (decode(Input, payload), _clock(payload)))
        return found

    def orphan_inputs_after(self, chain_id: int, block_number: int) -> list[tuple[bytes, Input]]:
        """Mark chain inputs from blocks above `block_number` orphaned; returns them, in log
        order."""
        if bulk.arrays(self.session):
            return self._orphan_returning(chain_id, block_number)
        rows = list(self.session.scalars(select(InputRow).where(
            InputRow.chain_id == chain_id, InputRow.block_number > block_number,
            InputRow.orphaned.is_(False)).order_by(InputRow.id)))
        for row in rows:
            row.orphaned = True
        self.session.flush()  # the replay that follows reads the log back
        return [(bytes.fromhex(r.trade_id), decode(Input, r.payload)) for r in rows if r.trade_id]

    def _orphan_returning(self, chain_id: int, block_number: int) -> list[tuple[bytes, Input]]:
        """`orphan_inputs_after` in one UPDATE ... RETURNING (PostgreSQL), instead of reading
        the rows and writing each back at the flush; in log order."""
        self.session.flush()  # as there: whatever the session holds is written first
        rows = self.session.execute(update(_INPUTS).where(
            _INPUTS.c.chain_id == chain_id, _INPUTS.c.block_number > block_number,
            _INPUTS.c.orphaned.is_(False)).values(orphaned=True).returning(
            _INPUTS.c.id, _INPUTS.c.trade_id, _INPUTS.c.payload)).all()
        for loaded in list(self.session.identity_map.values()):
            if isinstance(loaded, InputRow):
                self.session.expire(loaded, ["orphaned"])  # read again: it may be one of them
        return [(bytes.fromhex(trade), decode(Input, payload))
                for _, trade, payload in sorted(rows, key=lambda row: row.id) if trade]
