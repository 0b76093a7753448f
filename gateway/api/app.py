"""The FastAPI application factory: `/v1` for enterprises, health and metrics for operators."""

import time
from datetime import datetime
from typing import Annotated, Any, Literal

import structlog
from fastapi import Body, Depends, FastAPI, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import Receive, Scope, Send

from gateway.api import problems
from gateway.api.context import MAX_DEADLINE_AHEAD, ApiContext
from gateway.api.enterprises import Enterprise, authenticate
from gateway.api.housekeeping import expire_idempotency_key
from gateway.api.ops import add_ops_routes
from gateway.api.problems import BodyLimit, Problem
from gateway.api.ratelimit import client_address, client_bucket, enterprise_bucket
from gateway.api.schemas import (
    Balances,
    Clock,
    Instructions,
    Me,
    Trade,
    TradeAccept,
    TradeBatchResult,
    TradeCreate,
    TradePage,
    batch_models,
)
from gateway.api.trades import (
    accept_trades,
    act,
    create_trade,
    create_trades,
    instructions,
    list_trades,
    parse_trade_id,
    trade_view,
)
from gateway.domain.trade import Phase
from gateway.engine.egress import Egress

PHASES = tuple(p.value for p in Phase)


def create_app(ctx: ApiContext, *, webhook_egress: Egress | None = None,
               ops_routes: bool = True) -> FastAPI:
    """The API. `ops_routes=False`: without /healthz, /readyz and /metrics (served on their
    own port instead, by `gateway.api.ops.create_ops_app`)."""
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
    install_request_log(app, ctx)

    async def caller(request: Request,
                     authorization: Annotated[str | None, Header()] = None) -> Enterprise:
        """The enterprise whose API key the request carries, after the client address's rate
        limit (taken first, whatever the key: failed authentications count) and then the
        enterprise's (gateway.api.ratelimit)."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""  # RFC 9110 11.1: any case
        route = request.scope.get("route")
        proposal_key = (request.headers.get("idempotency-key")
                        if request.method == "POST" and getattr(route, "path", None)
                        in ("/v1/trades", "/v1/trades/batch") else None)
        outcome, value, enterprise_id = await run_in_threadpool(
            _admit, ctx, _client(request, ctx), token, proposal_key)
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
              response_description="The trade proposed. A replay (the same Idempotency-Key "
                                   "and body) answers the original's status, 201, and body.",
              responses=problems.documented({
                  409: "the buyer's open exposure would exceed its cap (type exposure-cap, "
                       "field payment.amount), or the hashlock is already in use (type "
                       "hashlock-reused, field hashlock)",
                  422: "invalid request, or an Idempotency-Key reused with another body",
                  503: "no secrets key to keep a managed buyer's secret, or the database "
                       "is unavailable"}))
    async def propose(body: TradeCreate, who: Caller,
                      idempotency_key: Annotated[str, Header(min_length=1, max_length=200)],
                      ) -> JSONResponse:
        """Propose a trade as buyer or seller. Idempotent by `Idempotency-Key`: a replay
        with the same body answers exactly what the original answered (201 and the same
        trade, even after the trade moved on); the same key with another body is a 422."""
        status, payload = await run_in_threadpool(create_trade, ctx, who, body, idempotency_key)
        return JSONResponse(payload, status_code=status)

    TradeBatch, TradeAcceptBatch = batch_models(ctx.limits.batch_max)  # noqa: N806

    def batch_route(path: str, **kw):  # noqa: ANN003, ANN202
        """POST `path` on the app's own router (so 405's Allow names it), its validation
        errors naming items as `trades[3].payment.amount` (ItemIndexedRoute)."""
        def add(endpoint):  # noqa: ANN001, ANN202
            app.router.add_api_route(path, endpoint, methods=["POST"], tags=["trades"],
                                     route_class_override=ItemIndexedRoute, **kw)
            return endpoint
        return add

    @batch_route(
        "/v1/trades/batch", status_code=201, response_model=TradeBatchResult,
        response_description="The trades proposed, in the request's order. A replay (the same "
                             "Idempotency-Key and body) answers the original's status, 201, "
                             "and body.",
        responses=problems.documented({
            409: "an item would take the buyer's open exposure over its cap, counting the "
                 "batch's earlier items (type exposure-cap, field trades[i].payment.amount), "
                 "or an item's hashlock is already in use (type hashlock-reused, field "
                 "trades[i].hashlock)",
            422: "invalid request: every invalid item's fields are named (trades[i].<field>), "
                 "including two items with one hashlock or one title; more than "
                 f"{ctx.limits.batch_max} items; or an Idempotency-Key reused with another "
                 "request",
            503: "no secrets key to keep a managed buyer's secret, or the database is "
                 "unavailable"}))
    async def propose_batch(body: TradeBatch, who: Caller,  # type: ignore[valid-type]
                            idempotency_key: Annotated[str, Header(min_length=1,
                                                                   max_length=200)],
                            ) -> JSONResponse:
        """Propose several trades at once, each as `POST /v1/trades` would, in ONE
        transaction: all are made or none. Every item is checked before anything is written,
        and every problem is answered at once, each naming its item (`trades[3].payment.
        amount`). The buyer's cap and hashlock uniqueness hold across the batch's own items
        too. Idempotent as a whole by `Idempotency-Key` (the keys of single proposals and
        batches share one namespace: a key used for the other kind is a 422)."""
        status, payload = await run_in_threadpool(create_trades, ctx, who,
                                                  body.trades, idempotency_key)
        return JSONResponse(payload, status_code=status)

    @batch_route(
        "/v1/trades/accept-batch", response_model=TradeBatchResult,
        response_description="The trades accepted, in the request's order.",
        responses=problems.documented({
            409: "an item may not be accepted in its phase or by the caller (field "
                 "trades[i]); the buyer's open exposure would exceed its cap, counting the "
                 "batch's earlier items (type exposure-cap, field trades[i].payment.amount); "
                 "or an item's hashlock is already in use (type hashlock-reused)",
            422: "invalid request: an item's trade does not exist or is not the caller's "
                 "(field trades[i].id), is named twice, or its hashlock is missing, "
                 f"malformed or unexpected; more than {ctx.limits.batch_max} items"}))
    def accept_batch(body: TradeAcceptBatch, who: Caller) -> TradeBatchResult:  # type: ignore[valid-type]
        """Accept several proposals at once, each as `POST /v1/trades/{trade_id}/accept`
        would, in ONE transaction: all are accepted or none. As buyer, the caller's cap is
        checked across all of them."""
        return TradeBatchResult(trades=accept_trades(
            ctx, who, [(item.id, item.hashlock) for item in body.trades]))

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
              name="accept", responses=problems.documented({
                  404: "no such trade",
                  409: "not allowed in this phase or by this party; the buyer's open exposure "
                       "would exceed its cap (type exposure-cap, field payment.amount); or "
                       "the hashlock is already in use (type hashlock-reused, field hashlock)",
                  422: "invalid request (a missing, malformed or unexpected hashlock)"}))
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

    if ops_routes:  # else served on the operator port (DVP_OPS_PORT): gateway.api.ops
        add_ops_routes(app, ctx)

    document_security(app)
    return app


class ItemIndexedRoute(APIRoute):
    """A batch route: its validation errors name an item's field as `trades[3].payment.amount`
    (by default a list index reads as one more dotted part, `trades.3.payment.amount`). Its
    path is its own: another method on it is a 405 whose Allow names this route's methods
    only, never routed on to `/v1/trades/{trade_id}` (which would read `batch` as a trade
    id)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        return (Match.FULL if match is Match.PARTIAL else match), child_scope

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            response = problems.problem_response(
                405, "Method Not Allowed", headers={"Allow": ", ".join(sorted(self.methods))},
                instance=scope["path"])
            await response(scope, receive, send)
            return
        await super().handle(scope, receive, send)

    def get_route_handler(self):  # noqa: ANN201
        handler = super().get_route_handler()

        async def indexed(request: Request):  # noqa: ANN202
            try:
                return await handler(request)
            except RequestValidationError as exc:
                raise RequestValidationError([_indexed(e) for e in exc.errors()],
                                             body=exc.body) from None
        return indexed


def _indexed(error: dict) -> dict:
    loc, out = tuple(error.get("loc", ())), []
    for part in loc:
        if isinstance(part, int) and out and isinstance(out[-1], str) and \
                out[-1] not in ("body", "query", "path", "header"):
            out[-1] = f"{out[-1]}[{part}]"
        else:
            out.append(part)
    return {**error, "loc": tuple(out)}


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


# --- every request: metrics, access log, admission ---------------------------------------------

ACCESS_LOG = "gateway.api.access"


def install_request_log(app: FastAPI, ctx: ApiContext) -> None:
    """Count and time every request (Prometheus), and write one structured line for it to
    the `gateway.api.access` log: method, route template, path, status, duration, client
    address and, once authenticated, the enterprise id. Never a header, key or body."""
    log = structlog.get_logger(ACCESS_LOG)

    @app.middleware("http")
    async def observe(request: Request, call_next):  # noqa: ANN001, ANN202
        from gateway.engine.metrics import HTTP_REQUESTS, HTTP_SECONDS

        started = time.perf_counter()
        status = 500  # unless a response comes back
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(request.scope.get("route"), "path", "unmatched")
            HTTP_SECONDS.labels(route).observe(elapsed)
            HTTP_REQUESTS.labels(request.method, route, str(status)).inc()
            fields = {"method": request.method, "route": route,
                      "path": request.url.path[:256], "status": status,
                      "duration_ms": round(elapsed * 1000, 1), "client": _client(request, ctx)}
            enterprise_id = getattr(request.state, "enterprise_id", None)
            if enterprise_id is not None:
                fields["enterprise_id"] = enterprise_id
            trade = _trade_of(request)
            if trade is not None:
                fields["trade"] = trade  # the form every log line and view uses
            log.info("http_request", **fields)


def _trade_of(request: Request) -> str | None:
    """The trade a request names, as `0x` + 64 lowercase hex however the client wrote it."""
    from gateway.logs import trade_ref

    raw = request.scope.get("path_params", {}).get("trade_id")
    if not isinstance(raw, str):
        return None
    try:
        return trade_ref(raw)
    except ValueError:
        return None


def _client(request: Request, ctx: ApiContext) -> str:
    """The client's address (DVP_TRUSTED_PROXIES: gateway.api.ratelimit.client_address)."""
    address = getattr(request.state, "client_address", None)
    if address is None:
        address = request.state.client_address = client_address(
            request.client.host if request.client else None,
            request.headers.getlist("x-forwarded-for"), ctx.trusted_proxies)
    return address


def _admit(ctx: ApiContext, address: str, token: str,
           proposal_key: str | None) -> tuple[str, Any, str | None]:
    """Admission of a /v1 request, in one database session: the client address's bucket,
    then the key, then the enterprise's bucket. (outcome, value, enterprise id if known):
    ("limited", seconds to wait) | ("no-key", None) | ("unknown-key", None) | ("ok",
    enterprise). Before a proposal, the caller's
    expired row for its Idempotency-Key (`proposal_key`) is deleted: a key reused after
    DVP_IDEMPOTENCY_TTL is a new key. Now and then, the housekeeping sweep."""
    limits, limiter = ctx.limits, ctx.rate_limiter
    with ctx.session_factory() as session:
        wait = limiter.take(session, client_bucket(address), limits.client_rate,
                            limits.client_capacity)
        session.commit()
        if wait:
            return "limited", wait, None
        if not token:
            return "no-key", None, None
        enterprise = authenticate(session, token)
        if enterprise is None:
            return "unknown-key", None, None
        wait = limiter.take(session, enterprise_bucket(enterprise.id), limits.rate_per_second,
                            limits.burst)
        if not wait and proposal_key:
            expire_idempotency_key(session, enterprise.id, proposal_key,
                                   limits.idempotency_ttl, limiter.clock())
        session.commit()
        if wait:
            return "limited", wait, enterprise.id
        if ctx.housekeeping.due():
            try:
                ctx.housekeeping.sweep(session)
            except Exception as exc:  # noqa: BLE001 - the request is served all the same
                session.rollback()
                structlog.get_logger("gateway.api").warning(
                    "housekeeping_failed", error=f"{type(exc).__name__}: {exc}")
        return "ok", enterprise, enterprise.id


def _erc20():  # noqa: ANN202
    from gateway.contracts import load_artifact

    return load_artifact("PaymentToken")


def _erc721():  # noqa: ANN202
    from gateway.contracts import load_artifact

    return load_artifact("TitleDocument")
