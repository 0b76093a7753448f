"""The FastAPI application factory: `/v1` for enterprises, health and metrics for operators."""

import asyncio
import time
from datetime import datetime
from typing import Annotated, Literal

from fastapi import Body, Depends, FastAPI, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text

from gateway.api import problems
from gateway.api.context import MAX_DEADLINE_AHEAD, ApiContext
from gateway.api.enterprises import Enterprise, authenticate
from gateway.api.problems import BodyLimit, Problem
from gateway.api.schemas import (
    Balances,
    Clock,
    Instructions,
    Me,
    Trade,
    TradeAccept,
    TradeCreate,
    TradePage,
)
from gateway.api.trades import (
    act,
    create_trade,
    instructions,
    list_trades,
    parse_trade_id,
    trade_view,
)
from gateway.domain.trade import Phase
from gateway.engine.egress import Egress

PHASES = tuple(p.value for p in Phase)


def create_app(ctx: ApiContext, *, webhook_egress: Egress | None = None) -> FastAPI:
    app = FastAPI(
        title="dvp-gateway",
        version="0.1.0",
        description="Cross-chain delivery versus payment: propose, accept and follow trades "
                    "whose payment (payment chain) and delivery (business chain) settle "
                    "atomically through hash-time-locked contracts.",
        responses={422: {"description": "Invalid request (problem+json)"}},
    )
    app.state.ctx = ctx
    problems.install(app)
    app.add_middleware(BodyLimit, max_bytes=ctx.limits.max_body_bytes)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):  # noqa: ANN001, ANN202
        from gateway.engine.metrics import HTTP_REQUESTS, HTTP_SECONDS

        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        HTTP_SECONDS.labels(path).observe(time.perf_counter() - started)
        HTTP_REQUESTS.labels(request.method, path, str(response.status_code)).inc()
        return response

    async def caller(request: Request,
                     authorization: Annotated[str | None, Header()] = None) -> Enterprise:
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:  # RFC 9110 11.1: schemes ignore case
            raise Problem(401, "send your API key as 'Authorization: Bearer <key>'",
                          headers={"WWW-Authenticate": "Bearer"}, kind="unauthorized")

        def lookup() -> Enterprise | None:
            with ctx.session_factory() as session:
                return authenticate(session, token)

        enterprise = await run_in_threadpool(lookup)
        if enterprise is None:
            raise Problem(401, "unknown or revoked API key",
                          headers={"WWW-Authenticate": "Bearer"}, kind="unauthorized")
        wait = ctx.rate_limiter.take(enterprise.id)
        if wait:
            raise Problem(429, "rate limit exceeded", headers={"Retry-After": str(int(wait) + 1)},
                          kind="rate-limited")
        return enterprise

    Caller = Annotated[Enterprise, Depends(caller)]

    # --- enterprise ---------------------------------------------------------------------

    @app.get("/v1/me", response_model=Me, tags=["enterprise"])
    async def me(who: Caller) -> Me:
        balances = None
        if who.managed:
            def read() -> Balances:
                token = ctx.payment.client.contract(ctx.payment.asset, _erc20())
                titles = ctx.business.client.contract(ctx.business.asset, _erc721())
                return Balances(
                    payment_token=str(token.functions.balanceOf(who.payment_address).call()),
                    title_documents=titles.functions.balanceOf(who.business_address).call())
            balances = await run_in_threadpool(read)
        return Me(id=who.id, name=who.name, managed=who.managed,
                  payment_address=who.payment_address, business_address=who.business_address,
                  balances=balances)

    @app.get("/v1/clock", response_model=Clock, tags=["enterprise"])
    async def clock(who: Caller) -> Clock:
        """Chain time, by which every deadline is judged, and the deadline rules."""
        def read() -> Clock:
            pay, biz = ctx.payment.now(), ctx.business.now()
            return Clock(chain_time=max(pay, biz), payment_chain_time=pay,
                         business_chain_time=biz, required_margin=ctx.policy.required_margin,
                         min_lead=ctx.policy.claim_lead_time, max_ahead=MAX_DEADLINE_AHEAD)
        return await run_in_threadpool(read)

    # --- trades -------------------------------------------------------------------------

    @app.post("/v1/trades", status_code=201, response_model=Trade, tags=["trades"],
              responses={200: {"description": "replay of an earlier identical request"},
                         409: {"description": "conflict (problem+json)"}})
    async def propose(body: TradeCreate, who: Caller,
                      idempotency_key: Annotated[str, Header(min_length=1, max_length=200)],
                      ) -> JSONResponse:
        status, payload = await run_in_threadpool(create_trade, ctx, who, body, idempotency_key)
        return JSONResponse(payload, status_code=status)

    @app.get("/v1/trades", response_model=TradePage, tags=["trades"])
    async def trades(who: Caller,
                     phase: Annotated[Literal[PHASES] | None, Query()] = None,  # type: ignore[valid-type]
                     role: Annotated[Literal["buyer", "seller"] | None, Query()] = None,
                     counterparty: Annotated[str | None, Query(max_length=64)] = None,
                     created_from: Annotated[datetime | None, Query()] = None,
                     created_to: Annotated[datetime | None, Query()] = None,
                     cursor: Annotated[str | None, Query(max_length=500)] = None,
                     limit: Annotated[int, Query(ge=1, le=ctx.limits.max_page_size)] = min(
                         50, ctx.limits.max_page_size)) -> TradePage:
        return await run_in_threadpool(list_trades, ctx, who, phase=phase, role=role,
                                       counterparty=counterparty, created_from=created_from,
                                       created_to=created_to, cursor=cursor, limit=limit)

    @app.get("/v1/trades/{trade_id}", response_model=Trade, tags=["trades"],
             responses={404: {"description": "no such trade (problem+json)"}})
    async def trade(trade_id: str, who: Caller) -> Trade:
        raw = parse_trade_id(trade_id)

        def read() -> Trade:
            with ctx.session_factory() as session:
                return trade_view(session, ctx, raw, who, timeline=True)
        return await run_in_threadpool(read)

    @app.get("/v1/trades/{trade_id}/instructions", response_model=Instructions,
             tags=["trades"], responses={404: {"description": "no such trade"}})
    async def trade_instructions(trade_id: str, who: Caller) -> Instructions:
        return await run_in_threadpool(instructions, ctx, who, parse_trade_id(trade_id))

    def action_endpoint(action: str):  # noqa: ANN202
        """One route per action, bound by closure: nothing a client sends can change it."""
        def endpoint(trade_id: str, who: Caller) -> Trade:
            return act(ctx, who, parse_trade_id(trade_id), action)
        return endpoint

    @app.post("/v1/trades/{trade_id}/accept", response_model=Trade, tags=["trades"],
              name="accept", responses={404: {"description": "no such trade"},
                                        409: {"description": "not allowed in this phase"}})
    def accept(trade_id: str, who: Caller,
               body: Annotated[TradeAccept | None, Body()] = None) -> Trade:
        """The counterparty accepts. A self-custody buyer accepting a seller's proposal gives
        the hashlock of its own secret here: only the buyer sets it."""
        hashlock = bytes.fromhex(body.hashlock[2:]) if body and body.hashlock else None
        return act(ctx, who, parse_trade_id(trade_id), "accept", hashlock)

    for action in ("cancel", "take-delivery"):
        app.add_api_route(f"/v1/trades/{{trade_id}}/{action}", action_endpoint(action),
                          methods=["POST"],
                          response_model=Trade, tags=["trades"], name=action,
                          responses={404: {"description": "no such trade"},
                                     409: {"description": "not allowed in this phase"}})

    from gateway.api.webhooks import router as webhooks_router
    app.include_router(webhooks_router(ctx, caller, egress=webhook_egress))

    # --- operations ---------------------------------------------------------------------

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    async def readyz() -> JSONResponse:
        checks: dict[str, str] = {}

        def probe() -> None:
            try:
                with ctx.session_factory() as session:
                    session.execute(text("SELECT 1"))
                checks["database"] = "ok"
            except Exception as exc:  # noqa: BLE001
                checks["database"] = f"down: {type(exc).__name__}"
            for name, view in (("payment_chain", ctx.payment), ("business_chain", ctx.business)):
                try:
                    view.client.w3.eth.block_number  # noqa: B018
                    checks[name] = "ok"
                except Exception as exc:  # noqa: BLE001
                    checks[name] = f"down: {type(exc).__name__}"
        await asyncio.wait_for(run_in_threadpool(probe), timeout=10)
        lag = await run_in_threadpool(_relayer_lag, ctx)
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ready, "checks": checks, "relayer_lag_blocks": lag},
                            status_code=200 if ready else 503)

    from gateway.engine import metrics as _metrics

    served_metrics = _metrics.registry(
        ctx.session_factory,
        {chain.value: chain_id for chain, chain_id in ctx.dispatcher.chain_ids.items()})

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def metrics() -> Response:
        body, content_type = await run_in_threadpool(_metrics.render, served_metrics)
        return Response(body, media_type=content_type)

    document_security(app)
    return app


def document_security(app: FastAPI) -> None:
    """Publish the Bearer scheme and the 401/429 every `/v1` operation can answer (and the
    400/413 of those with a body)."""
    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(title=app.title, version=app.version,
                           description=app.description, routes=app.routes)
        spec.setdefault("components", {})["securitySchemes"] = {
            "apiKey": {"type": "http", "scheme": "bearer",
                       "description": "The enterprise's API key: `Authorization: Bearer <key>`"}}
        problem = {"application/problem+json": {"schema": {"type": "object"}}}
        for path, operations in spec["paths"].items():
            if not path.startswith("/v1/"):
                continue
            for operation in operations.values():
                operation["security"] = [{"apiKey": []}]
                operation["responses"].setdefault("401", {
                    "description": "missing, unknown or revoked API key", "content": problem})
                operation["responses"].setdefault("429", {
                    "description": "rate limit exceeded; see Retry-After", "content": problem,
                    "headers": {"Retry-After": {"schema": {"type": "integer"}}}})
                if "requestBody" in operation:
                    operation["responses"].setdefault("400", {
                        "description": "the body could not be read (not UTF-8)",
                        "content": problem})
                    operation["responses"].setdefault("413", {
                        "description": "request body too large", "content": problem})
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def _relayer_lag(ctx: ApiContext) -> dict[str, int | None]:
    """Blocks between each chain's head and the relayer's last processed block."""
    from gateway.db.models import CursorRow

    lag: dict[str, int | None] = {}
    try:
        with ctx.session_factory() as session:
            for name, view in (("payment", ctx.payment), ("business", ctx.business)):
                cursor = session.get(CursorRow, view.chain_id)
                head = view.client.w3.eth.block_number
                lag[name] = head - cursor.block_number if cursor else None
    except Exception:  # noqa: BLE001 - readiness reports what it can
        return lag
    return lag


def _erc20():  # noqa: ANN202
    from gateway.contracts import load_artifact

    return load_artifact("PaymentToken")


def _erc721():  # noqa: ANN202
    from gateway.contracts import load_artifact

    return load_artifact("TitleDocument")
