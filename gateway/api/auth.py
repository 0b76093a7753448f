"""Who is calling: the `/v1` dependency that admits a request (the client address's rate
limit, the API key, the enterprise's rate limit) and names its enterprise."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import structlog
from fastapi import Header, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from gateway.api.context import ApiContext
from gateway.api.enterprises import Enterprise, authenticate
from gateway.api.problems import Problem
from gateway.api.ratelimit import client_address, client_bucket, enterprise_bucket


def caller_dependency(ctx: ApiContext) -> Callable[..., Awaitable[Enterprise]]:
    """The dependency every `/v1` route takes (`Depends(caller)`)."""

    async def caller(request: Request,
                     authorization: Annotated[str | None, Header()] = None) -> Enterprise:
        """The enterprise whose API key the request carries, after the client address's rate
        limit (taken first, whatever the key: failed authentications count) and then the
        enterprise's (gateway.api.ratelimit)."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""  # RFC 9110 11.1: any case
        outcome, value, enterprise_id = await run_in_threadpool(
            _admit, ctx, _client(request, ctx), token)
        if enterprise_id is not None:
            request.state.enterprise_id = enterprise_id  # for the access log
        if outcome == "limited":
            raise Problem(429, "rate limit exceeded", headers={"Retry-After": str(int(value) + 1)},
                          kind="rate-limited")
        if outcome == "no-key":
            raise Problem(401, "send your API key as 'Authorization: Bearer <key>'",
                          headers={"WWW-Authenticate": "Bearer"}, kind="unauthorized")
        if outcome == "unknown-key":
            raise Problem(401, "unknown or revoked API key",
                          headers={"WWW-Authenticate": "Bearer"}, kind="unauthorized")
        return value


    return caller


def _client(request: Request, ctx: ApiContext) -> str:
    """The client's address (DVP_TRUSTED_PROXIES: gateway.api.ratelimit.client_address)."""
    address = getattr(request.state, "client_address", None)
    if address is None:
        address = request.state.client_address = client_address(
            request.client.host if request.client else None,
            request.headers.getlist("x-forwarded-for"), ctx.trusted_proxies)
    return address


def _admit(ctx: ApiContext, address: str, token: str) -> tuple[str, Any, str | None]:
    """Admission of a /v1 request, in one database transaction (one commit, whatever the
    outcome: the buckets' takes count even when the key is refused): the client address's
    bucket whatever the key, then, for a known key, the enterprise's bucket. Returns
    (outcome, value, enterprise id if known): ("limited", seconds to wait) | ("no-key",
    None) | ("unknown-key", None) | ("ok", enterprise). Now and then, the housekeeping
    sweep."""
    with ctx.session_factory() as session:
        outcome = _admission(ctx, session, address, token)
        session.commit()
        if outcome[0] == "ok" and ctx.housekeeping.due():
            try:
                ctx.housekeeping.sweep(session)
            except Exception as exc:  # noqa: BLE001 - the request is served all the same
                session.rollback()
                structlog.get_logger("gateway.api").warning(
                    "housekeeping_failed", error=f"{type(exc).__name__}: {exc}")
        return outcome


def _admission(ctx: ApiContext, session: Session, address: str,
               token: str) -> tuple[str, Any, str | None]:
    """The read first (the key), the buckets' takes last: a take locks its bucket's row
    until the commit, and every request of a client address or an enterprise takes the same
    row, so the lock is held for the takes and the commit only, not for the read as well
    (measured: 16 concurrent requests of one enterprise queued on the client bucket's
    row)."""
    limits, limiter = ctx.limits, ctx.rate_limiter
    limiter.begin(session)
    enterprise = authenticate(session, token) if token else None
    wait = limiter.take(session, client_bucket(address), limits.client_rate,
                        limits.client_capacity)
    if wait:
        return "limited", wait, None
    if not token:
        return "no-key", None, None
    if enterprise is None:
        return "unknown-key", None, None
    wait = limiter.take(session, enterprise_bucket(enterprise.id), limits.rate_per_second,
                        limits.burst)
    if wait:
        return "limited", wait, enterprise.id
    return "ok", enterprise, enterprise.id
