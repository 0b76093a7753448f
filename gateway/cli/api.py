"""`dvp-gateway api`: the HTTP API against the configured nodes and database, the relayer
running separately (`dvp-gateway relayer run`). With `--workers N` (N > 1, PostgreSQL only),
N processes serve the port (gateway.cli.workers), each building its API with
`create_app_from_env` from the same DVP_* variables."""

from __future__ import annotations

import signal
import sys
from contextlib import asynccontextmanager

import click

from gateway import logs
from gateway.cli.common import _cipher, _fail, _settings
from gateway.cli.nodes import _rpc_clients
from gateway.config import Settings

FACTORY = "gateway.cli.api:create_app_from_env"


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="API processes serving the port together (more than 1 needs PostgreSQL).")
def api(host: str, port: int, workers: int) -> None:
    """Serve the HTTP API against the configured nodes and database (the relayer runs
    separately: `dvp-gateway relayer run`)."""
    settings = _settings()
    if workers > 1 and settings.database_url.startswith("sqlite"):
        _fail(f"--workers {workers} needs PostgreSQL: DVP_DATABASE_URL is a SQLite database, "
              "which has a single writer, and every API request writes (rate limits, trades, "
              "idempotency keys), so API processes would only queue for its write lock. Run "
              "one API process on SQLite (--workers 1), or set DVP_DATABASE_URL to PostgreSQL "
              "(postgresql+psycopg://...) for several")
    logs.configure(json=None)
    if workers > 1:
        from gateway.cli.workers import serve_workers

        serve_workers(settings, host, port, workers)
        return
    import uvicorn

    from gateway.api.app import create_app
    from gateway.engine.egress import Egress

    engine, ctx = _api_context(settings)
    stop_ops = _serve_ops(settings, ctx, engine) if settings.ops_port is not None else None
    # As `run`: uvicorn's graceful shutdown re-raises the signal; exit 0 there instead.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(create_app(ctx, webhook_egress=Egress(settings.webhook_allow_hosts),
                               ops_routes=stop_ops is None),
                    host=host, port=port, log_level="warning")
    except KeyboardInterrupt:
        pass
    finally:
        if stop_ops is not None:
            stop_ops()
        engine.dispose()


def _api_context(settings: Settings):  # noqa: ANN202 - (Engine, ApiContext)
    """The checked nodes and the migrated database, as the API sees them."""
    from gateway.api.context import ApiContext, ChainView, Limits
    from gateway.chain.calls import htlc_titles, htlc_token
    from gateway.domain.trade import Chain
    from gateway.engine.build import open_database
    from gateway.engine.dispatcher import Dispatcher

    clients = _rpc_clients(settings, relayer=False)
    pay_htlc, dlv_htlc = settings.payment_htlc, settings.delivery_htlc  # checksummed
    assert pay_htlc is not None and dlv_htlc is not None  # _rpc_clients requires both
    engine, factory = open_database(settings.database_url)  # migrated, as a relayer's
    policy = settings.timing_policy()
    ctx = ApiContext(
        session_factory=factory, dispatcher=Dispatcher(factory, policy, chain_ids={
            Chain.PAYMENT: clients["payment"].chain_id,
            Chain.BUSINESS: clients["business"].chain_id}), policy=policy,
        payment=ChainView(clients["payment"], pay_htlc, htlc_token(clients["payment"], pay_htlc)),
        business=ChainView(clients["business"], dlv_htlc,
                           htlc_titles(clients["business"], dlv_htlc)),
        cipher=_cipher(settings), limits=Limits.from_settings(settings)).configure(settings)
    return engine, ctx


def _serve_ops(settings: Settings, ctx, engine):  # noqa: ANN001, ANN202 - stop
    """/healthz, /readyz and /metrics on DVP_OPS_HOST:DVP_OPS_PORT (not on --port)."""
    from gateway.api.ops import create_ops_app, serve_in_thread

    try:
        return serve_in_thread(create_ops_app(ctx), settings.ops_host, settings.ops_port)
    except OSError as exc:
        engine.dispose()
        _fail(f"cannot serve the operator endpoints on {settings.ops_host}:"
              f"{settings.ops_port} (DVP_OPS_HOST/DVP_OPS_PORT): {exc}")


def create_app_from_env():  # noqa: ANN201 - a FastAPI app
    """The API of one `--workers` process, built from the DVP_* variables as `dvp-gateway
    api` builds its own (uvicorn calls this in each worker). A worker that cannot start exits
    with uvicorn's startup-failure code, so the supervisor stops instead of restarting it."""
    from uvicorn.config import STARTUP_FAILURE

    from gateway.api.app import create_app
    from gateway.engine.egress import Egress

    try:
        settings = _settings()
        logs.configure(json=None)
        engine, ctx = _api_context(settings)
    except SystemExit:  # the reason is printed already
        sys.exit(STARTUP_FAILURE)
    except Exception as exc:  # noqa: BLE001 - a CLI reports, it does not trace back
        click.echo(f"error: an API worker cannot start: {logs.redact(str(exc))}", err=True)
        sys.exit(STARTUP_FAILURE)
    app = create_app(ctx, webhook_egress=Egress(settings.webhook_allow_hosts),
                     ops_routes=settings.ops_port is None)  # else the supervisor serves them

    @asynccontextmanager
    async def lifespan(_app):  # noqa: ANN001, ANN202
        try:
            yield
        finally:  # a graceful stop: in-flight requests done, connections closed
            engine.dispose()

    app.router.lifespan_context = lifespan
    return app
