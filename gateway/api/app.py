"""The FastAPI application factory: `/v1` for enterprises (one router per resource: account,
trades, webhooks), health and metrics for operators, and what every request goes through
(problem+json errors, the body limit, metrics and the access log)."""

import time

import structlog
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api import account, problems, trades, webhooks
from gateway.api.auth import _client, caller_dependency
from gateway.api.context import ApiContext
from gateway.api.ops import add_ops_routes
from gateway.api.problems import BodyLimit, unexpected_answer
from gateway.engine.egress import Egress


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
    caller = caller_dependency(ctx)
    app.include_router(account.router(ctx, caller))
    app.include_router(trades.router(ctx, caller))
    app.include_router(webhooks.router(ctx, caller, egress=webhook_egress))
    if ops_routes:  # else served on the operator port (DVP_OPS_PORT): gateway.api.ops
        add_ops_routes(app, ctx)
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


# --- every request: metrics, access log, admission ---------------------------------------------

ACCESS_LOG = "gateway.api.access"


def install_request_log(app: FastAPI, ctx: ApiContext) -> None:
    """Count and time every request (Prometheus), and write one structured line for it to
    the `gateway.api.access` log: method, route template, path, status, duration, client
    address and, once authenticated, the enterprise id. Never a header, key or body."""
    app.add_middleware(RequestLog, ctx=ctx)


class RequestLog:
    """`install_request_log`'s middleware, plain ASGI: Starlette's `@app.middleware("http")`
    runs the rest of the request in a task of its own with a stream between them, which
    cost about a millisecond of CPU a request (measured on POST /v1/trades)."""

    def __init__(self, app: ASGIApp, ctx: ApiContext) -> None:
        self.app, self.ctx = app, ctx
        self.log = structlog.get_logger(ACCESS_LOG)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts

        async def sent(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        except Exception as exc:
            status = unexpected_answer(exc)[0]  # what the outermost handler will answer
            raise
        finally:
            self._observe(Request(scope), status, time.perf_counter() - started)

    def _observe(self, request: Request, status: int, elapsed: float) -> None:
        from gateway.engine.metrics import HTTP_REQUESTS, HTTP_SECONDS

        route = getattr(request.scope.get("route"), "path", "unmatched")
        HTTP_SECONDS.labels(route).observe(elapsed)
        HTTP_REQUESTS.labels(request.method, route, str(status)).inc()
        fields = {"method": request.method, "route": route, "path": request.url.path[:256],
                  "status": status, "duration_ms": round(elapsed * 1000, 1),
                  "client": _client(request, self.ctx)}
        enterprise_id = getattr(request.state, "enterprise_id", None)
        if enterprise_id is not None:
            fields["enterprise_id"] = enterprise_id
        trade = _trade_of(request)
        if trade is not None:
            fields["trade"] = trade  # the form every log line and view uses
        self.log.info("http_request", **fields)


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
