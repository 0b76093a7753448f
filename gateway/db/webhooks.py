"""Webhook endpoints, their deliveries and the fan-out cursor (`webhook_endpoints`,
`webhook_deliveries`, `webhook_cursor`): the queries of the API's /v1/webhooks routes and of
the sender (gateway.engine.webhooks). No commits here: callers own the transaction, and the
sender's steps (fan-out, claim, record) are each one transaction of their own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import Row, and_, func, select, text, update
from sqlalchemy.orm import Session, aliased

from gateway.db.models import (
    TradeEventRow,
    TradePartyRow,
    WebhookCursorRow,
    WebhookDeliveryRow,
    WebhookEndpointRow,
)

CURSOR_ID = 1  # the fan-out cursor's single row


class Webhooks:
    def __init__(self, session: Session) -> None:
        self.session = session

    # --- endpoints --------------------------------------------------------------------------

    def endpoint(self, endpoint_id: str) -> WebhookEndpointRow | None:
        return self.session.get(WebhookEndpointRow, endpoint_id)

    def endpoints_of(self, enterprise_id: str) -> list[WebhookEndpointRow]:
        """The enterprise's endpoints, disabled ones included, newest first."""
        return list(self.session.scalars(select(WebhookEndpointRow).where(
            WebhookEndpointRow.enterprise_id == enterprise_id).order_by(
            WebhookEndpointRow.created_at.desc(), WebhookEndpointRow.id)))

    def count_active_endpoints(self, enterprise_id: str) -> int:
        return self.session.scalar(select(func.count()).select_from(WebhookEndpointRow).where(
            WebhookEndpointRow.enterprise_id == enterprise_id,
            WebhookEndpointRow.disabled_at.is_(None))) or 0

    def add_endpoint(self, enterprise_id: str, url: str, encrypted_secret: str,
                     created_at: datetime) -> WebhookEndpointRow:
        row = WebhookEndpointRow(id=str(uuid.uuid4()), enterprise_id=enterprise_id, url=url,
                                 encrypted_secret=encrypted_secret, created_at=created_at)
        self.session.add(row)
        return row

    def active_endpoints_by_enterprise(self, enterprise_ids: Iterable[str]
                                       ) -> dict[str, list[str]]:
        """The active endpoints' ids of each enterprise, oldest first."""
        endpoints: dict[str, list[str]] = {}
        for ep_id, enterprise_id in self.session.execute(
                select(WebhookEndpointRow.id, WebhookEndpointRow.enterprise_id)
                .where(WebhookEndpointRow.enterprise_id.in_(enterprise_ids),
                       WebhookEndpointRow.disabled_at.is_(None))
                .order_by(WebhookEndpointRow.created_at, WebhookEndpointRow.id)):
            endpoints.setdefault(enterprise_id, []).append(ep_id)
        return endpoints

    # --- deliveries, as a tenant reads them -------------------------------------------------

    def delivery_event_id(self, endpoint_id: str, delivery_id: str) -> int | None:
        """The trade event of the endpoint's delivery `delivery_id` (a page cursor); None if
        the endpoint has no such delivery."""
        d = WebhookDeliveryRow
        return self.session.scalar(select(d.trade_event_id).where(
            d.id == delivery_id, d.endpoint_id == endpoint_id))

    def deliveries_page(self, endpoint_id: str, status: str | None, before_event: int | None,
                        limit: int) -> Sequence[Row[tuple[WebhookDeliveryRow, TradeEventRow]]]:
        """Up to `limit` (delivery, trade event) pairs of the endpoint, newest event first;
        only those in `status`, and before the trade event `before_event`, when given."""
        d = WebhookDeliveryRow
        query = (select(d, TradeEventRow).join(TradeEventRow,
                                               TradeEventRow.id == d.trade_event_id)
                 .where(d.endpoint_id == endpoint_id))
        if status:
            query = query.where(d.status == status)
        if before_event is not None:
            query = query.where(d.trade_event_id < before_event)
        return self.session.execute(
            query.order_by(d.trade_event_id.desc()).limit(limit)).all()

    # --- fan-out ----------------------------------------------------------------------------

    def has_events_to_fan_out(self) -> bool:
        """Whether `trade_events` holds an id past the fan-out cursor (a read without locks:
        the common case is nothing new)."""
        last = self.session.scalar(select(WebhookCursorRow.last_event_id)
                                   .where(WebhookCursorRow.id == CURSOR_ID)) or 0
        return (self.session.scalar(select(func.max(TradeEventRow.id))) or 0) > last

    def lock_cursor_for_fan_out(self) -> WebhookCursorRow:
        """The fan-out cursor, locked (FOR UPDATE) for this transaction; a new one at 0 if there
        is none yet. On PostgreSQL, first waits for every open writer of `trade_events`
        (LOCK ... IN SHARE MODE): ids are drawn before commit, so a later id can commit first
        and the cursor would pass an event still in flight; what is read after the lock has no
        such gap. The first statement of the fan-out transaction."""
        if self.session.get_bind().dialect.name == "postgresql":
            self.session.execute(text("LOCK TABLE trade_events IN SHARE MODE"))
        cursor = self.session.get(WebhookCursorRow, CURSOR_ID, with_for_update=True)
        if cursor is None:
            cursor = WebhookCursorRow(id=CURSOR_ID, last_event_id=0)
            self.session.add(cursor)
        return cursor

    def events_after(self, event_id: int, limit: int) -> Sequence[Row[tuple[int, str, str]]]:
        """Up to `limit` trade events (id, trade_id, kind) past `event_id`, in id order."""
        return self.session.execute(
            select(TradeEventRow.id, TradeEventRow.trade_id, TradeEventRow.kind)
            .where(TradeEventRow.id > event_id)
            .order_by(TradeEventRow.id).limit(limit)).all()

    def trade_parties(self, trade_ids: Iterable[str]) -> dict[str, TradePartyRow]:
        """The buyer and seller of each trade made through the API, by trade id."""
        return {p.trade_id: p for p in self.session.scalars(select(TradePartyRow).where(
            TradePartyRow.trade_id.in_(trade_ids)))}

    def add_delivery(self, endpoint_id: str, trade_event_id: int, now: datetime) -> None:
        """A pending delivery, due at `now`."""
        self.session.add(WebhookDeliveryRow(
            id=str(uuid.uuid4()), endpoint_id=endpoint_id, trade_event_id=trade_event_id,
            status="pending", attempts=0, next_attempt_at=now, created_at=now))

    # --- delivery ---------------------------------------------------------------------------

    def due_deliveries(self, now: datetime, skip_endpoints: set[str], limit: int) -> Sequence[Row]:
        """Up to `limit` deliveries due at `now`, each the oldest pending one of its endpoint
        (per endpoint, events go out in order), none of `skip_endpoints`: rows of id,
        endpoint_id, url, encrypted_secret, disabled_at, trade_id, payload, created_at (the
        event's), the longest overdue first."""
        d, head = WebhookDeliveryRow, aliased(WebhookDeliveryRow)
        oldest = (select(func.min(head.trade_event_id))
                  .where(head.endpoint_id == d.endpoint_id, head.status == "pending")
                  .scalar_subquery())
        query = (select(d.id, d.endpoint_id, WebhookEndpointRow.url,
                        WebhookEndpointRow.encrypted_secret, WebhookEndpointRow.disabled_at,
                        TradeEventRow.trade_id, TradeEventRow.payload, TradeEventRow.created_at)
                 .join(WebhookEndpointRow, WebhookEndpointRow.id == d.endpoint_id)
                 .join(TradeEventRow, TradeEventRow.id == d.trade_event_id)
                 .where(d.status == "pending", d.next_attempt_at <= now,
                        d.trade_event_id == oldest)
                 .order_by(d.next_attempt_at, d.trade_event_id).limit(limit))
        if skip_endpoints:
            query = query.where(d.endpoint_id.not_in(skip_endpoints))
        return self.session.execute(query).all()

    def claim_delivery(self, delivery_id: str, now: datetime, until: datetime) -> bool:
        """Lease a delivery still pending and due at `now`: its next attempt moves to `until`,
        so no other sender picks it up meanwhile. One conditional UPDATE; False if another
        sender claimed or settled it first."""
        d = WebhookDeliveryRow
        result = self.session.execute(
            update(d).where(and_(d.id == delivery_id, d.status == "pending",
                                 d.next_attempt_at <= now))
            .values(next_attempt_at=until))
        return result.rowcount == 1

    def delivery(self, delivery_id: str) -> WebhookDeliveryRow | None:
        return self.session.get(WebhookDeliveryRow, delivery_id)

    def fail_pending_deliveries(self, endpoint_id: str, reason: str) -> None:
        """Every pending delivery of the endpoint fails for `reason`, never to be retried."""
        d = WebhookDeliveryRow
        self.session.execute(update(d).where(d.endpoint_id == endpoint_id, d.status == "pending")
                             .values(status="failed", next_attempt_at=None, last_error=reason))
