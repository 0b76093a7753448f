"""Webhook endpoints of the calling enterprise, and the deliveries made to each.

Registering returns the endpoint's signing secret, the only time it is shown; it is stored
encrypted. Deleting disables the endpoint (its deliveries stay listable; pending ones fail).
See `gateway.engine.webhooks` for what is sent and how it is signed.
"""

# No `from __future__ import annotations`: FastAPI must see the `Caller` type made in router().
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Query, Response
from pydantic import AfterValidator, BaseModel, Field

from gateway.api.context import ApiContext
from gateway.api.enterprises import Enterprise
from gateway.api.problems import Problem
from gateway.api.schemas import Strict
from gateway.db.models import WebhookEndpointRow
from gateway.db.webhooks import Webhooks
from gateway.engine.egress import Egress, EgressRefused
from gateway.engine.webhooks import DISABLED, EVENT_TYPE, EVENT_TYPES, public_error, utc
from gateway.logs import trade_ref

MAX_ACTIVE_ENDPOINTS = 10
SECRET_PREFIX = "whsec_"


def _webhook_url(value: str) -> str:
    if any(c.isspace() for c in value):
        raise ValueError("must not contain whitespace")
    try:
        parts = urlsplit(value)
        port = parts.port  # raises on a malformed port
    except ValueError:
        raise ValueError("not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise ValueError("must name a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials: verify the signature instead")
    if port == 0:
        raise ValueError("not a valid port")
    if parts.fragment:
        raise ValueError("must not have a #fragment")
    return value


WebhookUrl = Annotated[str, Field(min_length=1, max_length=2048,
                                  examples=["https://erp.example.com/dvp/webhooks"]),
                       AfterValidator(_webhook_url)]


class WebhookCreate(Strict):
    url: WebhookUrl = Field(description="Where events are POSTed (http or https).")


class WebhookEndpoint(BaseModel):
    id: str
    url: str
    active: bool
    created_at: datetime
    disabled_at: datetime | None = None


class WebhookEndpointCreated(WebhookEndpoint):
    secret: str = Field(description="The HMAC-SHA256 signing key. Shown only in this response.")


class WebhookEndpointList(BaseModel):
    items: list[WebhookEndpoint]


class WebhookDelivery(BaseModel):
    id: str
    type: str = Field(EVENT_TYPE, description="trade.phase_changed (old, new) or "
                                               "trade.flagged (flag, reason)")
    trade_id: str
    old: str | None = None
    new: str | None = None
    flag: str | None = None
    reason: str | None = None
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None = Field(description="The status the endpoint answered with "
                                                     "at the last attempt, if it answered.")
    last_error: str | None = Field(description='Why the last attempt failed: "HTTP <status>", '
                                               '"no response" (no transport detail), or why '
                                               "it was not sent.")
    created_at: datetime
    delivered_at: datetime | None


class WebhookDeliveryPage(BaseModel):
    items: list[WebhookDelivery]
    next_cursor: str | None = None


def _view(row: WebhookEndpointRow) -> WebhookEndpoint:
    return WebhookEndpoint(id=row.id, url=row.url, active=row.disabled_at is None,
                           created_at=utc(row.created_at),
                           disabled_at=utc(row.disabled_at) if row.disabled_at else None)


def _owned(webhooks: Webhooks, endpoint_id: str, caller: Enterprise) -> WebhookEndpointRow:
    """The caller's endpoint, or 404 (another tenant's endpoint does not exist for it)."""
    row = webhooks.endpoint(endpoint_id) if len(endpoint_id) <= 36 else None
    if row is None or row.enterprise_id != caller.id:
        raise Problem(404, "no such webhook endpoint", kind="not-found")
    return row


def register_endpoint(ctx: ApiContext, egress: Egress, who: Enterprise,
                      body: WebhookCreate) -> WebhookEndpointCreated:
    """A new endpoint and its signing secret (shown this once), if the URL points at a public
    address and the enterprise has room for one more."""
    try:  # resolved now, and again at every delivery (the name may change meanwhile)
        egress.check(body.url)
    except EgressRefused as exc:
        raise Problem(422, str(exc), field="url") from None
    if ctx.cipher is None:
        raise Problem(422, "signing secrets are stored encrypted and this gateway has no "
                           "DVP_SECRETS_KEY: webhooks are unavailable", field="secret")
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    with ctx.session_factory.begin() as session:
        webhooks = Webhooks(session)
        if webhooks.count_active_endpoints(who.id) >= MAX_ACTIVE_ENDPOINTS:
            raise Problem(409, f"at most {MAX_ACTIVE_ENDPOINTS} active webhook endpoints; "
                               "delete one first", kind="too-many-webhooks")
        row = webhooks.add_endpoint(who.id, body.url, ctx.cipher.encrypt(secret.encode()),
                                    datetime.now(UTC))
    return WebhookEndpointCreated(**_view(row).model_dump(), secret=secret)


def disable_endpoint(ctx: ApiContext, who: Enterprise, endpoint_id: str) -> None:
    """No more deliveries to it: those pending fail at once."""
    with ctx.session_factory.begin() as session:
        webhooks = Webhooks(session)
        row = _owned(webhooks, endpoint_id, who)
        if row.disabled_at is None:
            row.disabled_at = datetime.now(UTC)
            webhooks.fail_pending_deliveries(row.id, DISABLED)


def delivery_page(ctx: ApiContext, who: Enterprise, endpoint_id: str, status: str | None,
                  cursor: str | None, limit: int) -> WebhookDeliveryPage:
    """Newest event first. `next_cursor` (a delivery id) continues after the last item."""
    with ctx.session_factory() as session:
        webhooks = Webhooks(session)
        endpoint = _owned(webhooks, endpoint_id, who)
        after = None
        if cursor:
            after = webhooks.delivery_event_id(endpoint.id, cursor)
            if after is None:
                raise Problem(422, "not a cursor returned by this API", field="cursor")
        rows = webhooks.deliveries_page(endpoint.id, status, after, limit + 1)
    items = [_delivery_view(r, e) for r, e in rows[:limit]]
    return WebhookDeliveryPage(items=items,
                               next_cursor=items[-1].id if len(rows) > limit else None)


def _delivery_view(r, e) -> WebhookDelivery:  # noqa: ANN001 - a delivery row and its event row
    return WebhookDelivery(
        id=r.id, trade_id=trade_ref(e.trade_id), old=e.payload.get("old"),
        new=e.payload.get("new"), flag=e.payload.get("flag"), reason=e.payload.get("reason"),
        type=EVENT_TYPES[e.payload.get("__type__", "EventPhaseChanged")],
        status=r.status, attempts=r.attempts,
        next_attempt_at=utc(r.next_attempt_at) if r.next_attempt_at else None,
        last_status_code=r.last_status_code, last_error=public_error(r.last_error),
        created_at=utc(r.created_at),
        delivered_at=utc(r.delivered_at) if r.delivered_at else None)


def router(ctx: ApiContext, caller: Callable, *, egress: Egress | None = None) -> APIRouter:
    """The `/v1/webhooks` routes; `caller` authenticates the enterprise. `egress` judges where
    a URL points (default: public addresses only, the system resolver); the sender judges it
    again, and connects to what it checked, at every delivery."""
    egress = egress or Egress()
    Caller = Annotated[Enterprise, Depends(caller)]  # noqa: N806
    api = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
    not_found = {404: {"description": "no such webhook endpoint (problem+json)"}}

    @api.post("", status_code=201, response_model=WebhookEndpointCreated,
              responses={409: {"description": "too many active endpoints (problem+json)"}})
    def create(body: WebhookCreate, who: Caller, response: Response) -> WebhookEndpointCreated:
        response.headers["Cache-Control"] = "no-store"  # the secret is in the body
        return register_endpoint(ctx, egress, who, body)

    @api.get("", response_model=WebhookEndpointList)
    def list_endpoints(who: Caller) -> WebhookEndpointList:
        with ctx.session_factory() as session:
            rows = Webhooks(session).endpoints_of(who.id)
            return WebhookEndpointList(items=[_view(r) for r in rows])

    @api.delete("/{endpoint_id}", status_code=204, response_class=Response,
                responses=not_found)
    def disable(endpoint_id: str, who: Caller) -> Response:
        disable_endpoint(ctx, who, endpoint_id)
        return Response(status_code=204)

    @api.get("/{endpoint_id}/deliveries", response_model=WebhookDeliveryPage,
             responses=not_found)
    def deliveries(endpoint_id: str, who: Caller,
                   status: Annotated[Literal["pending", "delivered", "failed"] | None,
                                     Query()] = None,
                   cursor: Annotated[str | None, Query(max_length=64)] = None,
                   limit: Annotated[int, Query(ge=1, le=100)] = 50) -> WebhookDeliveryPage:
        """Newest event first. `next_cursor` (a delivery id) continues after the last item."""
        return delivery_page(ctx, who, endpoint_id, status, cursor, limit)

    return api
