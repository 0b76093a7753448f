"""The operator endpoints: /healthz, /readyz and /metrics.

- /healthz answers from the process alone (no database, no node): a liveness check.
- /readyz probes the database and both chain nodes; /metrics reads gauges from the database.
  Each result is kept for DVP_OPS_CACHE_SECONDS (2 s by default) and computed by one caller at
  a time, the others waiting for it: however many ask, the database and the nodes see at most
  one probe, and one metrics read, per interval.
- With DVP_OPS_TOKEN set, /readyz and /metrics require `Authorization: Bearer <token>` (401
  problem+json otherwise); /healthz stays open.
- With DVP_OPS_PORT set (`dvp-gateway api`, `dvp-gateway run`), the three are served on
  DVP_OPS_HOST:DVP_OPS_PORT by their own server (`create_ops_app`, `serve_in_thread`) and not
  at all on the public port.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from gateway.api import problems
from gateway.api.problems import Problem
from gateway.db.health import ping
from gateway.db.repository import Repository


class Cached:
    """A value computed by `compute` at most once per `ttl` seconds: callers within `ttl` of
    the last result get it; a caller that finds it stale computes it while any other caller
    waits for that same computation (from any thread or event loop) instead of starting its
    own. A failed computation is not kept."""

    def __init__(self, ttl: float, compute: Callable[[], Awaitable[Any]],
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._compute = compute
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._value: Any = None
        self._at = -math.inf
        self._running: concurrent.futures.Future | None = None
        self.computed = 0  # how many times `compute` ran (for tests and curiosity)

    async def get(self) -> Any:
        with self._lock:
            if self._monotonic() - self._at < self.ttl:
                return self._value
            running = self._running
            if running is None:
                running = self._running = concurrent.futures.Future()
                owner = True
            else:
                owner = False
        if not owner:
            return await asyncio.wrap_future(running)
        try:
            self.computed += 1
            value = await self._compute()
        except BaseException as exc:
            with self._lock:
                self._running = None
            running.set_exception(exc)
            raise
        with self._lock:
            self._value, self._at, self._running = value, self._monotonic(), None
        running.set_result(value)
        return value


def _check_token(ctx, authorization: str | None) -> None:  # noqa: ANN001
    """401 unless DVP_OPS_TOKEN is unset or `authorization` is `Bearer <it>`."""
    from gateway.engine.metrics import OPERATOR_TOKEN_NEEDED, operator_token_given

    if not operator_token_given(authorization, ctx.ops_token):
        raise Problem(401, OPERATOR_TOKEN_NEEDED, headers={"WWW-Authenticate": "Bearer"},
                      kind="unauthorized")


def _check_dependencies(ctx, checks: dict[str, str]) -> None:  # noqa: ANN001 - an ApiContext
    """Readiness: the database answers, and each chain's node gives its head. Written into
    `checks` as they come, so a probe that times out still reports what answered."""
    try:
        with ctx.session_factory() as session:
            ping(session)
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["database"] = f"down: {type(exc).__name__}"
    for name, view in (("payment_chain", ctx.payment), ("business_chain", ctx.business)):
        try:
            view.client.block_number()
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks[name] = f"down: {type(exc).__name__}"


def add_ops_routes(app: FastAPI, ctx) -> None:  # noqa: ANN001 - an ApiContext
    from gateway.engine import metrics as _metrics

    ttl = ctx.limits.ops_cache_seconds

    async def probe() -> tuple[bool, dict[str, str], dict[str, int | None]]:
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(run_in_threadpool(_check_dependencies, ctx, checks),
                                   timeout=10)
        except TimeoutError:
            for name in ("database", "payment_chain", "business_chain"):
                checks.setdefault(name, "down: timeout")
            return False, dict(checks), {}
        lag = await run_in_threadpool(_relayer_lag, ctx)
        return all(v == "ok" for v in checks.values()), checks, lag

    readiness = Cached(ttl, probe)
    stored = _metrics._StoredState(ctx.session_factory, {
        chain.value: chain_id for chain, chain_id in ctx.dispatcher.chain_ids.items()})

    async def read_stored() -> list:
        return await run_in_threadpool(lambda: list(stored.collect()))

    stored_metrics = Cached(ttl, read_stored)
    app.state.ops_caches = {"readyz": readiness, "metrics": stored_metrics}

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"],
             responses={401: {"description": "DVP_OPS_TOKEN is set and was not given"},
                        503: {"description": "not ready"}})
    async def readyz(request: Request) -> JSONResponse:
        _check_token(ctx, request.headers.get("authorization"))
        ready, checks, lag = await readiness.get()
        return JSONResponse({"ready": ready, "checks": checks, "relayer_lag_blocks": lag},
                            status_code=200 if ready else 503)

    @app.get("/metrics", tags=["operations"], response_class=Response,
             responses={401: {"description": "DVP_OPS_TOKEN is set and was not given"}})
    async def metrics(request: Request) -> Response:
        _check_token(ctx, request.headers.get("authorization"))
        families = await stored_metrics.get()
        body, content_type = await run_in_threadpool(
            _metrics.render, _Served(_metrics._ProcessMetrics(), families))
        return Response(body, media_type=content_type)


class _Served:
    """What one scrape renders: this process's counters as they are now, and the stored
    gauges as last read (the cached part)."""

    def __init__(self, process, families: list) -> None:  # noqa: ANN001
        self.process, self.families = process, families

    def collect(self):  # noqa: ANN201
        yield from self.process.collect()
        yield from self.families


def _relayer_lag(ctx) -> dict[str, int | None]:  # noqa: ANN001
    """Blocks between each chain's head and the relayer's last processed block."""
    lag: dict[str, int | None] = {}
    try:
        with ctx.session_factory() as session:
            repo = Repository(session)
            for name, view in (("payment", ctx.payment), ("business", ctx.business)):
                cursor = repo.cursor(view.chain_id)
                head = view.client.block_number()
                lag[name] = head - cursor.block_number if cursor else None
    except Exception:  # noqa: BLE001 - readiness reports what it can
        return lag
    return lag


def create_ops_app(ctx) -> FastAPI:  # noqa: ANN001
    """The operator endpoints alone, for DVP_OPS_HOST:DVP_OPS_PORT."""
    from gateway.api.app import install_request_log

    app = FastAPI(title="dvp-gateway operations", version="0.1.0", docs_url=None,
                  redoc_url=None, openapi_url=None)
    problems.install(app)
    install_request_log(app, ctx)
    add_ops_routes(app, ctx)
    return app


def serve_in_thread(app: FastAPI, host: str, port: int) -> Callable[[], None]:
    """Serve `app` with uvicorn from a daemon thread; returns `stop`. The socket is bound
    here, so a port in use raises OSError at once."""
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           lifespan="off", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="ops-http",
                              daemon=True)
    thread.start()

    def stop() -> None:
        server.should_exit = True
        thread.join(10)
        sock.close()

    return stop
