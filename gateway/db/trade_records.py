"""The API's records of trades: parties (tenancy), managed buyers' encrypted secrets, and the
reads its views and lists are made of. Trade state itself is the dispatcher's
(`gateway.db.repository`); these rows are written in the same transaction as the state they
describe (a `Unit`, `gateway.engine.unit`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from gateway.db import bulk
from gateway.db.models import (
    InputRow,
    SecretRow,
    TradeEventRow,
    TradePartyRow,
    TradeRow,
    utcnow,
)
from gateway.domain.trade import Phase

_PARTIES, _SECRETS = TradePartyRow.__table__, SecretRow.__table__

LEG_INPUTS = ("ContractReceivePaymentLocked", "ContractReceiveDeliveryLocked",
              "ContractReceiveClaimed", "ContractReceiveRefunded")


@dataclass(frozen=True)
class PageQuery:
    """A page of one enterprise's trades, newest first (`GET /v1/trades`)."""

    enterprise_id: str
    limit: int
    phase: str | None = None
    role: str | None = None
    counterparty: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    after: tuple[datetime, str] | None = None  # (created_at, trade id) of the last one seen


class TradeRecords:
    def __init__(self, session: Session) -> None:
        self.session = session

    # --- parties and secrets -------------------------------------------------------------------

    def parties(self, trade_ids: list[bytes]) -> dict[bytes, TradePartyRow]:
        ids = [t.hex() for t in trade_ids]
        rows = self.session.scalars(select(TradePartyRow).where(
            TradePartyRow.trade_id.in_(ids))) if ids else []
        return {bytes.fromhex(r.trade_id): r for r in rows}

    def add_parties(self, entries: list[tuple[bytes, str, str, str, int, str | None]]
                    ) -> list[TradePartyRow]:
        """New trades' parties, each (trade id, buyer id, seller id, proposer id, amount,
        encrypted secret or None), in one statement per table; the rows as stored (not in
        the session: Core inserts, which cost a proposal a fraction of the ORM's flush). A
        managed buyer's secret is stored encrypted."""
        created_at = utcnow()
        rows = [TradePartyRow(trade_id=trade_id.hex(), buyer_id=buyer_id, seller_id=seller_id,
                              proposer_id=proposer_id, amount=str(amount), created_at=created_at)
                for trade_id, buyer_id, seller_id, proposer_id, amount, _ in entries]
        bulk.insert_rows(self.session, _PARTIES, [
            {"trade_id": r.trade_id, "buyer_id": r.buyer_id, "seller_id": r.seller_id,
             "proposer_id": r.proposer_id, "created_at": r.created_at, "amount": r.amount}
            for r in rows])
        bulk.insert_rows(self.session, _SECRETS, [
            {"trade_id": trade_id.hex(), "encrypted_secret": secret}
            for trade_id, *_, secret in entries if secret is not None])
        return rows

    def encrypted_secret(self, trade_id: bytes) -> str | None:
        row = self.session.get(SecretRow, trade_id.hex())
        return row.encrypted_secret if row else None

    def open_exposure(self, buyer_id: str) -> int:
        """Payment units the buyer has committed itself to (exact: summed as Python integers):
        its open trades that it proposed itself, or that it accepted (past `proposed`: only the
        buyer's accept moves a seller's proposal on). A proposal made TO the buyer that it has
        not accepted commits it to nothing and does not count: otherwise any tenant could fill
        a victim's cap with proposals naming it as buyer, which stay open until their T_pay."""
        rows = self.session.scalars(select(TradePartyRow.amount).join(
            TradeRow, TradePartyRow.trade_id == TradeRow.id).where(
            TradePartyRow.buyer_id == buyer_id, TradeRow.active.is_(True),
            or_(TradePartyRow.proposer_id == buyer_id, TradeRow.phase != Phase.PROPOSED.value)))
        return sum(int(amount or 0) for amount in rows)

    def hashlocks_in_use(self, hashlocks: list[bytes]) -> set[bytes]:
        wanted = [h.hex() for h in hashlocks]
        if not wanted:
            return set()
        return {bytes.fromhex(h) for h in self.session.scalars(
            select(TradeRow.hashlock).where(TradeRow.hashlock.in_(wanted)))}

    # --- what views are made of ----------------------------------------------------------------

    def trade_rows(self, trade_ids: list[bytes]) -> dict[bytes, TradeRow]:
        ids = [t.hex() for t in trade_ids]
        rows = self.session.scalars(select(TradeRow).where(TradeRow.id.in_(ids))) if ids else []
        return {bytes.fromhex(r.id): r for r in rows}

    def leg_logs(self, trade_ids: list[str]) -> dict[str, dict[tuple[str, str], InputRow]]:
        """Per trade, the first log of each lock ("lock") and of its exit ("exit"), by lock
        id: where the view finds a leg's transactions and blocks."""
        found: dict[str, dict[tuple[str, str], InputRow]] = {}
        for r in self.session.scalars(select(InputRow).where(
                InputRow.trade_id.in_(trade_ids), InputRow.orphaned.is_(False),
                InputRow.kind.in_(LEG_INPUTS)).order_by(InputRow.id)):
            step = "lock" if r.kind.endswith("Locked") else "exit"
            found.setdefault(r.trade_id, {}).setdefault((step, r.payload["lock_id"]), r)
        return found

    def events(self, trade_id: str) -> list[TradeEventRow]:
        return list(self.session.scalars(select(TradeEventRow).where(
            TradeEventRow.trade_id == trade_id).order_by(TradeEventRow.id)))

    def page(self, q: PageQuery) -> list[tuple[TradeRow, TradePartyRow]]:
        """Up to `q.limit + 1` trades (one more tells the caller a next page exists)."""
        me, parties = q.enterprise_id, TradePartyRow
        query = select(TradeRow, parties).join(parties, parties.trade_id == TradeRow.id)
        if q.role == "buyer":
            query = query.where(parties.buyer_id == me)
        elif q.role == "seller":
            query = query.where(parties.seller_id == me)
        else:
            query = query.where(or_(parties.buyer_id == me, parties.seller_id == me))
        if q.phase:
            query = query.where(TradeRow.phase == q.phase)
        if q.counterparty:
            query = query.where(or_(
                and_(parties.buyer_id == me, parties.seller_id == q.counterparty),
                and_(parties.seller_id == me, parties.buyer_id == q.counterparty)))
        if q.created_from:
            query = query.where(parties.created_at >= q.created_from)
        if q.created_to:
            query = query.where(parties.created_at < q.created_to)
        if q.after:
            at, last_id = q.after
            query = query.where(or_(parties.created_at < at,
                                    and_(parties.created_at == at, parties.trade_id < last_id)))
        query = query.order_by(parties.created_at.desc(),
                               parties.trade_id.desc()).limit(q.limit + 1)
        return [(t, p) for t, p in self.session.execute(query).all()]
