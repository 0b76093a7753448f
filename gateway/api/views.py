"""What the API shows of trades: views built from the records of one session (one query per
kind of row, never one per trade), the tenancy check, trade ids and list cursors."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from datetime import datetime

from gateway.api.context import ApiContext
from gateway.api.enterprises import Enterprise
from gateway.api.problems import Problem
from gateway.api.schemas import (
    Deadlines,
    DeliveryTerms,
    Leg,
    Party,
    PaymentTerms,
    TimelineEvent,
    Trade,
    TradePage,
)
from gateway.db.enterprises import EnterpriseRepository
from gateway.db.models import EnterpriseRow, InputRow, TradePartyRow, TradeRow
from gateway.db.trade_records import PageQuery, TradeRecords
from gateway.db.trade_store import decode_state
from gateway.domain.marks import EffectKey
from gateway.domain.trade import TradeState


def parse_trade_id(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise Problem(404, "no such trade", kind="not-found")
    return raw


def parties_of(records: TradeRecords, trade_id: bytes, caller: Enterprise) -> TradePartyRow:
    """The trade's parties, or 404 when the caller is not one of them (no existence leak)."""
    row = records.parties([trade_id]).get(trade_id)
    if row is None or caller.id not in (row.buyer_id, row.seller_id):
        raise Problem(404, "no such trade", kind="not-found")
    return row


def trade_view(records: TradeRecords, ctx: ApiContext, trade_id: bytes, caller: Enterprise,
               timeline: bool = False) -> Trade:
    parties = parties_of(records, trade_id, caller)
    row = records.trade_rows([trade_id])[trade_id]
    return views(records, ctx, [(row, parties)], caller, timeline)[0]


def trade_views(records: TradeRecords, ctx: ApiContext, caller: Enterprise,
                trade_ids: list[bytes]) -> list[Trade]:
    """The views of trades the caller is a party to, in the order given."""
    rows, parties = records.trade_rows(trade_ids), records.parties(trade_ids)
    return views(records, ctx, [(rows[t], parties[t]) for t in trade_ids], caller)


def views(records: TradeRecords, ctx: ApiContext, rows: list[tuple[TradeRow, TradePartyRow]],
          caller: Enterprise, timeline: bool = False) -> list[Trade]:
    if not rows:
        return []
    enterprises = EnterpriseRepository(records.session).by_ids(
        {e for _, p in rows for e in (p.buyer_id, p.seller_id)})
    logs = records.leg_logs([t.id for t, _ in rows])
    return [_view(ctx, decode_state(row.state), parties, caller, enterprises,
                  logs.get(row.id, {}), _timeline(records, row) if timeline else None)
            for row, parties in rows]


def new_trade_views(records: TradeRecords, ctx: ApiContext, caller: Enterprise,
                    made: list[tuple[TradeState, TradePartyRow]],
                    enterprises: dict[str, Enterprise]) -> list[Trade]:
    """The views of trades made in this unit of work, from the states and rows it wrote
    rather than read back: only the legs' logs are read (a lock mined before its trade had
    the hashlock is adopted by the proposal). The same view a later GET shows. Only a trade
    with a leg has logs to read: a new trade has one only if it adopted an early lock."""
    with_legs = [state.trade_id.hex() for state, _ in made if state.payment or state.delivery]
    logs = records.leg_logs(with_legs) if with_legs else {}
    return [_view(ctx, state, parties, caller, enterprises, logs.get(state.trade_id.hex(), {}),
                  None) for state, parties in made]


def _view(ctx: ApiContext, state: TradeState, parties: TradePartyRow, caller: Enterprise,
          enterprises: Mapping[str, EnterpriseRow | Enterprise],
          logs: dict[tuple[str, str], InputRow], timeline: list[TimelineEvent] | None) -> Trade:
    t = state.terms

    def leg(leg_state) -> Leg | None:  # noqa: ANN001
        if leg_state is None:
            return None
        lock_id = "0x" + leg_state.lock_id.hex()
        seen, exit_ = logs.get(("lock", lock_id)), logs.get(("exit", lock_id))
        return Leg(lock_id=lock_id, status=leg_state.status.value,
                   tx_hash="0x" + seen.tx_hash if seen and seen.tx_hash else None,
                   block_number=seen.block_number if seen else None,
                   timelock=leg_state.lock.timelock,
                   exit_tx_hash="0x" + exit_.tx_hash if exit_ and exit_.tx_hash else None,
                   exit_block_number=exit_.block_number if exit_ else None)

    def party(enterprise_id: str) -> Party:
        ent = enterprises[enterprise_id]
        return Party(enterprise_id=ent.id, payment_address=ent.payment_address,
                     business_address=ent.business_address, managed=ent.managed)

    return Trade(
        id="0x" + state.trade_id.hex(), phase=state.phase.value,
        role="buyer" if caller.id == parties.buyer_id else "seller",
        buyer=party(parties.buyer_id), seller=party(parties.seller_id),
        payment=PaymentTerms(token=ctx.payment.asset, amount=str(t.amount)),
        delivery=DeliveryTerms(token_id=str(t.token_id),
                               document_hash="0x" + t.document_hash.hex()),
        hashlock="0x" + t.hashlock.hex() if t.hashlock else None,
        deadlines=Deadlines(delivery=t.t_deliver, payment=t.t_pay),
        margin=t.t_pay - t.t_deliver, required_margin=ctx.policy.required_margin,
        legs={"payment": leg(state.payment), "delivery": leg(state.delivery)},
        pending=sorted(EffectKey(k).kind.value for k in state.pending), flags=list(state.flags),
        created_at=parties.created_at, timeline=timeline)


def _timeline(records: TradeRecords, row: TradeRow) -> list[TimelineEvent]:
    return [TimelineEvent(at=e.created_at, kind=e.kind,
                          detail={k: v for k, v in e.payload.items()
                                  if k not in ("__type__", "trade_id")},
                          chain_id=e.chain_id, block_number=e.block_number,
                          tx_hash="0x" + e.tx_hash if e.tx_hash else None)
            for e in records.events(row.id)]


def list_trades(ctx: ApiContext, caller: Enterprise, *, phase: str | None, role: str | None,
                counterparty: str | None, created_from: datetime | None,
                created_to: datetime | None, cursor: str | None, limit: int) -> TradePage:
    query = PageQuery(caller.id, limit, phase=phase, role=role, counterparty=counterparty,
                      created_from=created_from, created_to=created_to,
                      after=_decode_cursor(cursor) if cursor else None)
    with ctx.session_factory() as session:
        records = TradeRecords(session)
        rows = records.page(query)
        items = views(records, ctx, rows[:limit], caller)
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1][1]
        next_cursor = _encode_cursor(last.created_at, last.trade_id)
    return TradePage(items=items, next_cursor=next_cursor)


_CURSOR_TRADE = re.compile(r"[0-9a-f]{64}")  # a trade id as the cursor carries it


def _encode_cursor(at: datetime, trade_id: str) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{trade_id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        at, trade_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        if not _CURSOR_TRADE.fullmatch(trade_id):
            raise ValueError(trade_id)  # never one this API wrote (nor a NUL for the database)
        return datetime.fromisoformat(at), trade_id
    except Exception:  # noqa: BLE001 - any malformed cursor is the client's error
        raise Problem(422, "not a cursor returned by this API", field="cursor") from None
