"""Webhooks: every trade phase change, signed and POSTed to the parties' registered endpoints.

Two steps, each its own short transaction, so a killed sender loses nothing:

* fan-out: `EventPhaseChanged` rows of `trade_events` past the cursor become one delivery row per
  active endpoint of the trade's buyer and seller; the deliveries and the advanced cursor commit
  together (a unique (endpoint, event) pair makes a repeated fan-out harmless).
* delivery: due deliveries are claimed (a lease, so two senders never POST the same one at
  once), POSTed outside any transaction, and their outcome recorded. 2xx is delivered; anything
  else is retried with exponential backoff until `max_attempts`, then failed.

Delivery is at least once (a sender killed mid-POST re-sends after the lease); receivers
de-duplicate on the body's `id`. Per endpoint, deliveries go out in event order: only the oldest
pending delivery of an endpoint is sent, so a failing event holds back the later ones until it is
delivered or has failed for good.

The signature: `X-DVP-Signature: sha256=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>`, where
`timestamp` is the `X-DVP-Timestamp` header (unix seconds), `body` the raw request body and the
key the secret (UTF-8) shown when the endpoint was registered. The timestamp is signed, so a
receiver rejects a replay by refusing timestamps outside a tolerance window (README).

Where a delivery goes (`gateway.engine.egress`): the URL's host is resolved at every attempt,
every address must be public (or on the operator's allow-list), and the request is sent to the
checked address itself, with the URL's host as `Host` header and TLS server name: no second
lookup between check and connect, no proxy from the environment, no redirect (a 3xx is a
failed attempt). What a tenant sees of an attempt (`last_error`) is whether its endpoint
answered and with which status (`HTTP 500`), or `no response`: never the transport error
that would tell a closed port from a filtered one (that stays in the server log), and the
attempt is recorded at the time it started, so its duration does not show either.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import structlog
from sqlalchemy.orm import Session, sessionmaker

from gateway.db.webhooks import Webhooks
from gateway.engine.egress import Destination, Egress, EgressRefused
from gateway.keys import Cipher
from gateway.logs import trade_ref

if TYPE_CHECKING:
    import httpx

log = structlog.get_logger("gateway.webhooks")

EVENT_TYPE = "trade.phase_changed"
# Trade events that become webhooks, by the kind stored in trade_events, and their body type.
EVENT_TYPES = {"EventPhaseChanged": EVENT_TYPE, "EventTradeFlagged": "trade.flagged"}
USER_AGENT = "dvp-gateway-webhooks/0.1"
# What a tenant may read of a failed attempt (besides "HTTP <status>").
NO_RESPONSE = "no response"
NOT_PUBLIC = "not sent: the host does not resolve to a public address"
NOT_SIGNED = "not sent: the gateway cannot read the endpoint's signing secret"
DISABLED = "endpoint disabled"
SAFE_ERRORS = frozenset({NO_RESPONSE, NOT_PUBLIC, NOT_SIGNED, DISABLED})


def public_error(error: str | None) -> str | None:
    """`last_error` as a tenant may see it: a status or one of `SAFE_ERRORS`; anything else
    (a transport error recorded by an older version) is `no response`."""
    if error is None or error in SAFE_ERRORS:
        return error
    code = error.removeprefix("HTTP ")
    return error if code != error and code.isdigit() else NO_RESPONSE


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The `X-DVP-Signature` header value for a request body sent at `timestamp`."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def utc(value: datetime) -> datetime:
    """Aware UTC. SQLite hands back naive datetimes; they were written as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class _Due:
    id: str
    endpoint_id: str
    url: str
    encrypted_secret: str
    disabled: bool
    trade_id: str
    payload: dict
    event_at: datetime


class WebhookSender:
    def __init__(self, session_factory: sessionmaker[Session], cipher: Cipher | None, *,
                 client: httpx.Client | None = None, egress: Egress | None = None,
                 clock: Callable[[], datetime] | None = None,
                 max_attempts: int = 10, first_delay: float = 5.0, max_delay: float = 3600.0,
                 lease: float = 60.0, fan_out_batch: int = 500, max_sends: int = 100) -> None:
        self.session_factory = session_factory
        self.cipher = cipher
        if client is None:
            import httpx

            # No proxy from the environment (it would resolve the name itself), no redirect,
            # no kept-alive connection (a pooled connection to one address must not carry
            # another host's request under the first one's TLS name).
            client = httpx.Client(timeout=5.0, follow_redirects=False, trust_env=False,
                                  limits=httpx.Limits(max_keepalive_connections=0))
            self._own_client = True
        else:
            self._own_client = False
        self.client = client
        self.egress = egress or Egress()
        self.clock = clock or (lambda: datetime.now(UTC))
        self.max_attempts = max_attempts
        self.first_delay, self.max_delay = first_delay, max_delay
        self.lease = timedelta(seconds=lease)  # must exceed the HTTP timeout
        self.fan_out_batch = fan_out_batch
        self.max_sends = max_sends

    def close(self) -> None:
        if self._own_client:
            self.client.close()

    def _now(self, now: datetime | None) -> datetime:
        return utc(now if now is not None else self.clock())

    def backoff(self, attempts: int) -> timedelta:
        """The wait after the `attempts`-th failed attempt: 5 s, 10 s, 20 s, ... capped."""
        return timedelta(seconds=min(self.first_delay * 2 ** (attempts - 1), self.max_delay))

    # --- one pass ---------------------------------------------------------------------------

    def run_once(self, now: datetime | None = None) -> int:
        """Fan out new trade events, then send what is due. Returns the POSTs attempted."""
        self.fan_out(now)
        return self.deliver_due(now)

    def run_forever(self, stop: threading.Event, poll_interval: float = 1.0) -> None:
        log.info("webhooks_started", poll_interval=poll_interval)
        backoff = poll_interval
        while not stop.is_set():
            started = time.monotonic()
            try:
                sent = self.run_once()
                backoff = poll_interval
                if sent:
                    log.info("webhooks_step", sent=sent)
            except Exception as exc:  # noqa: BLE001 - the database is down: retry
                backoff = min(backoff * 2, 30.0)
                log.error("webhooks_step_failed", error=f"{type(exc).__name__}: {exc}"[:500],
                          retry_in=backoff)
                stop.wait(backoff)
                continue
            stop.wait(max(0.0, poll_interval - (time.monotonic() - started)))
        self.close()
        log.info("webhooks_stopped")

    # --- fan-out ----------------------------------------------------------------------------

    def fan_out(self, now: datetime | None = None) -> int:
        """One batch of trade events past the cursor into deliveries; returns events read."""
        now = self._now(now)
        with self.session_factory() as session:  # a read first: the common case is nothing new
            if not Webhooks(session).has_events_to_fan_out():
                return 0
        with self.session_factory.begin() as session:
            webhooks = Webhooks(session)
            cursor = webhooks.lock_cursor_for_fan_out()
            events = webhooks.events_after(cursor.last_event_id, self.fan_out_batch)
            if not events:
                return 0
            changes = [e for e in events if e.kind in EVENT_TYPES]
            parties = webhooks.trade_parties({e.trade_id for e in changes}) if changes else {}
            owners = {i for p in parties.values() for i in (p.buyer_id, p.seller_id)}
            endpoints = webhooks.active_endpoints_by_enterprise(owners) if owners else {}
            created = 0
            for event in changes:
                p = parties.get(event.trade_id)
                if p is None:
                    continue  # a trade made outside the API (e.g. the CLI): no tenant
                for enterprise_id in dict.fromkeys((p.buyer_id, p.seller_id)):
                    for ep_id in endpoints.get(enterprise_id, ()):
                        webhooks.add_delivery(ep_id, event.id, now)
                        created += 1
            cursor.last_event_id = events[-1].id
        if created:
            log.info("webhooks_fanned_out", events=len(events), deliveries=created)
        return len(events)

    # --- delivery ---------------------------------------------------------------------------

    def deliver_due(self, now: datetime | None = None) -> int:
        """POST due deliveries, oldest event first per endpoint; returns the POSTs attempted."""
        sent = 0
        skip: set[str] = set()  # endpoints that failed in this pass: later events wait
        while sent < self.max_sends:
            due = self._due(self._now(now), skip, self.max_sends - sent)
            if not due:
                break
            for item in due:
                if item.disabled:
                    self._fail_disabled(item.endpoint_id)
                    continue
                if not self._claim(item.id, self._now(now)):
                    skip.add(item.endpoint_id)  # another sender has it
                    continue
                ok = self._send(item, now)
                sent += 1
                if not ok:
                    skip.add(item.endpoint_id)
        return sent

    def _due(self, now: datetime, skip: set[str], limit: int) -> list[_Due]:
        """The oldest pending delivery of each endpoint, when it is due."""
        with self.session_factory() as session:
            rows = Webhooks(session).due_deliveries(now, skip, limit)
        return [_Due(r.id, r.endpoint_id, r.url, r.encrypted_secret, r.disabled_at is not None,
                     r.trade_id, r.payload, utc(r.created_at)) for r in rows]

    def _claim(self, delivery_id: str, now: datetime) -> bool:
        """Push the delivery's next attempt out by the lease; False if someone else did."""
        with self.session_factory.begin() as session:
            return Webhooks(session).claim_delivery(delivery_id, now, now + self.lease)

    def _fail_disabled(self, endpoint_id: str) -> None:
        with self.session_factory.begin() as session:
            Webhooks(session).fail_pending_deliveries(endpoint_id, DISABLED)

    def _send(self, item: _Due, now: datetime | None) -> bool:
        body = json.dumps({
            "id": item.id,
            "type": EVENT_TYPES[item.payload.get("__type__", "EventPhaseChanged")],
            "trade_id": trade_ref(item.trade_id),
            **({"old": item.payload.get("old"), "new": item.payload.get("new")}
               if item.payload.get("__type__", "EventPhaseChanged") == "EventPhaseChanged"
               else {"flag": item.payload.get("flag"), "reason": item.payload.get("reason")}),
            "created_at": item.event_at.isoformat().replace("+00:00", "Z"),
        }, separators=(",", ":")).encode()
        started = self._now(now)  # recorded as the attempt's time: its duration is not shown
        status: int | None = None
        error: str | None = None
        detail: str | None = None  # for the server log only
        target: Destination | None = None
        try:
            secret = (self.cipher.decrypt(item.encrypted_secret).decode()
                      if self.cipher is not None else None)
        except Exception as exc:  # noqa: BLE001 - a key that cannot read this secret
            secret, detail = None, f"{type(exc).__name__}: {exc}"[:500]
        if secret is None:
            error, detail = NOT_SIGNED, detail or "no DVP_SECRETS_KEY"
        else:
            try:
                target = self.egress.destination(item.url)  # resolved once, checked, pinned
            except EgressRefused as exc:
                error, detail = NOT_PUBLIC, str(exc)
        if target is not None and secret is not None:
            timestamp = str(int(started.timestamp()))
            headers = {"Host": target.host_header, "Content-Type": "application/json",
                       "User-Agent": USER_AGENT, "X-DVP-Timestamp": timestamp,
                       "X-DVP-Signature": sign(secret, timestamp, body)}
            try:
                # To the checked address; TLS verifies the certificate for the URL's host.
                # Streamed and never read: a receiver's response body is not our business.
                with self.client.stream("POST", target.url, content=body, headers=headers,
                                        extensions=target.request_extensions(),
                                        follow_redirects=False) as resp:
                    status = resp.status_code
                if not 200 <= status < 300:
                    error = f"HTTP {status}"
            except Exception as exc:  # noqa: BLE001 - any failure is this attempt's outcome
                error, detail = NO_RESPONSE, f"{type(exc).__name__}: {exc}"[:500]
        self._record(item.id, status, error, started, detail=detail,
                     address=target.address if target else None)
        return error is None

    def _record(self, delivery_id: str, status: int | None, error: str | None,
                now: datetime, *, detail: str | None = None,
                address: str | None = None) -> None:
        with self.session_factory.begin() as session:
            row = Webhooks(session).delivery(delivery_id)
            assert row is not None
            if row.status != "pending":
                return  # our lease ran out and another sender settled it meanwhile
            row.attempts += 1
            row.last_status_code, row.last_error = status, error
            if error is None:
                row.status, row.delivered_at, row.next_attempt_at = "delivered", now, None
            elif row.attempts >= self.max_attempts:
                row.status, row.next_attempt_at = "failed", None
            else:
                row.next_attempt_at = now + self.backoff(row.attempts)
            outcome, attempts = row.status, row.attempts
        log_fn = log.warning if error else log.info
        log_fn("webhook_attempt", delivery=delivery_id, status=outcome, attempts=attempts,
               http_status=status, error=error, detail=detail, address=address)
