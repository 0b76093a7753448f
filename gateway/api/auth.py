"""Who is calling: the `/v1` dependency that admits a request (the client address's rate
limit, the API key, the enterprise's rate limit) and names its enterprise."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Annotated, Any

import structlog
from fastapi import Header, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from gateway.api.coalescing import Coalescer
from gateway.api.context import ApiContext
from gateway.api.enterprises import Enterprise, authenticate, authenticate_many
from gateway.api.problems import Problem
from gateway.api.ratelimit import client_address, client_bucket, enterprise_bucket


def caller_dependency(ctx: ApiContext) -> Callable[..., Awaitable[Enterprise]]:
    """The dependency every `/v1` route takes (`Depends(caller)`). Concurrent requests of
    this process are admitted together, in one transaction (`admit_group`)."""
    admissions = Coalescer(partial(admit_group, ctx), ctx.limits.request_group_max) \
        if ctx.limits.request_group_max > 1 else None

    async def caller(request: Request,
                     authorization: Annotated[str | None, Header()] = None) -> Enterprise:
        """The enterprise whose API key the request carries, after the client address's rate
        limit (taken first, whatever the key: failed authentications count) and then the
        enterprise's (gateway.api.ratelimit)."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""  # RFC 9110 11.1: any case
        if admissions is None:
            outcome, value, enterprise_id = await run_in_threadpool(
                _admit, ctx, _client(request, ctx), token)
        else:
            outcome, value, enterprise_id = await admissions.submit((_client(request, ctx),
                                                                     token))
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
        ctx.rate_limiter.begin(session)
        outcome = _admission(ctx, session, address, token,
                             authenticate(session, token) if token else None)
        session.commit()
        _housekeeping(ctx, session, [outcome])
        return outcome


def admit_group(ctx: ApiContext, requests: list[tuple[str, str]]
                ) -> list[tuple[str, Any, str | None] | Exception]:
    """The admissions of concurrent requests (client address, key), in one transaction: the
    keys read in one query, then the buckets' takes (`_admissions`), each request admitted
    or refused as `_admit` would have, in arrival order; one commit. If the transaction
    fails, each request is admitted alone."""
    if len(requests) > 1:
        try:
            with ctx.session_factory() as session:
                ctx.rate_limiter.begin(session)
                known = authenticate_many(session, {token for _, token in requests if token})
                outcomes = _admissions(ctx, session, requests, known)
                session.commit()
                _housekeeping(ctx, session, outcomes)
                return outcomes  # type: ignore[return-value]
        except Exception as exc:  # noqa: BLE001 - each alone answers it
            structlog.get_logger("gateway.api").info(
                "admission_group_alone", requests=len(requests),
                error=f"{type(exc).__name__}: {exc}"[:300])
    outcomes = []
    for address, token in requests:
        try:
            outcomes.append(_admit(ctx, address, token))
        except Exception as exc:  # noqa: BLE001 - raised by its own request
            outcomes.append(exc)
    return outcomes


def _admissions(ctx: ApiContext, session: Session, requests: list[tuple[str, str]],
                known: dict[str, Enterprise]) -> list[tuple[str, Any, str | None]]:
    """`_admission` of each request, in arrival order, with one take per bucket: the tokens of
    all of a bucket's requests at once, or (too few left) one by one in arrival order, as
    they would have been taken alone. Buckets are taken in key order, every client
    address's before any enterprise's, as a request alone takes them: groups and single
    admissions of other processes wait on each other's rows, never in a cycle."""
    limits = ctx.limits
    outcomes: list[tuple[str, Any, str | None] | None] = [None] * len(requests)
    clients: dict[str, list[int]] = {}
    for i, (address, _) in enumerate(requests):
        clients.setdefault(client_bucket(address), []).append(i)
    enterprises: dict[str, list[int]] = {}
    for i in sorted(_take(ctx, session, clients, limits.client_rate, limits.client_capacity,
                          outcomes, lambda i: None)):
        token = requests[i][1]
        if not token:
            outcomes[i] = ("no-key", None, None)
        elif token not in known:
            outcomes[i] = ("unknown-key", None, None)
        else:
            enterprises.setdefault(enterprise_bucket(known[token].id), []).append(i)
    for i in _take(ctx, session, enterprises, limits.rate_per_second, limits.burst, outcomes,
                   lambda i: known[requests[i][1]].id):
        outcomes[i] = ("ok", known[requests[i][1]], known[requests[i][1]].id)
    return outcomes  # type: ignore[return-value]


def _take(ctx: ApiContext, session: Session, buckets: dict[str, list[int]], rate: float,
          burst: int, outcomes: list, limited_id: Callable[[int], str | None]) -> list[int]:
    """The requests (indices) that got a token of their bucket; the others' outcomes set to
    "limited" (naming `limited_id(i)`, the enterprise if known)."""
    limiter, passed = ctx.rate_limiter, []
    for key in sorted(buckets):
        members = buckets[key]
        if len(members) > 1 and limiter.take_all(session, key, len(members), rate, burst):
            passed += members
            continue
        for i in members:
            wait = limiter.take(session, key, rate, burst)
            if wait:
                outcomes[i] = ("limited", wait, limited_id(i))
            else:
                passed.append(i)
    return passed


def _housekeeping(ctx: ApiContext, session: Session, outcomes: list[tuple]) -> None:
    """Now and then, after an admission that let a request in: the housekeeping sweep."""
    if any(o[0] == "ok" for o in outcomes) and ctx.housekeeping.due():
        try:
            ctx.housekeeping.sweep(session)
        except Exception as exc:  # noqa: BLE001 - the request is served all the same
            session.rollback()
            structlog.get_logger("gateway.api").warning(
                "housekeeping_failed", error=f"{type(exc).__name__}: {exc}")


def _admission(ctx: ApiContext, session: Session, address: str, token: str,
               enterprise: Enterprise | None) -> tuple[str, Any, str | None]:
    """The key read first (`enterprise`, None if unknown), the buckets' takes last: a take
    locks its bucket's row until the commit, and every request of a client address or an
    enterprise takes the same row, so the lock is held for the takes and the commit only,
    not for the read as well (measured: 16 concurrent requests of one enterprise queued on
    the client bucket's row)."""
    limits, limiter = ctx.limits, ctx.rate_limiter
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
