"""`dvp-gateway api --workers N`: uvicorn's supervisor serving one socket from N worker
processes (PostgreSQL only: `dvp-gateway api` refuses SQLite, which has a single writer).

- The supervisor checks the nodes and migrates the database before any worker starts, so a
  bad configuration is refused once, with exit 2, as `dvp-gateway api` refuses it.
- Each worker builds its API with `gateway.cli.api:create_app_from_env` from the same DVP_*
  variables (uvicorn starts workers with `spawn`: nothing is inherited but the socket). It
  opens the database as every process does: the migrations run under PostgreSQL's advisory
  lock (gateway.db.migrate), so workers starting together take turns and find the schema at
  head. API writes of different trades then run in parallel in the workers (the dispatcher's
  shared trade-writes lock and row locks: gateway.db.locks).
- A worker that fails to start exits with uvicorn's startup-failure code: the supervisor then
  stops the others and exits 2, instead of starting it again and again. A worker that dies
  later is replaced.
- SIGTERM or SIGINT to the supervisor: every worker shuts down gracefully (requests in flight
  are answered, its database connections closed), then the supervisor exits 0.
- With DVP_OPS_PORT set, the supervisor serves /healthz, /readyz and /metrics there for all
  workers, from the moment the first worker serves the API port (a probe sees the port
  closed until then), and the workers serve them not at all.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from functools import partial

from uvicorn.supervisors import Multiprocess

from gateway.cli.api import FACTORY, _api_context
from gateway.cli.common import _fail
from gateway.cli.nodes import _rpc_clients
from gateway.config import Settings


class _Supervisor(Multiprocess):
    """uvicorn's supervisor (handles SIGTERM, SIGINT, SIGHUP), which also starts the operator
    endpoints once a worker serves the API socket (it is listening)."""

    def __init__(self, config, sock: socket.socket,  # noqa: ANN001 - a uvicorn Config
                 start_ops: Callable[[], Callable[[], None]] | None) -> None:
        super().__init__(config, sockets=[sock])
        self.sock = sock
        self.start_ops = start_ops
        self.stop_ops: Callable[[], None] | None = None
        self.ops_error: OSError | None = None

    def keep_subprocess_alive(self) -> None:
        super().keep_subprocess_alive()
        if self.start_ops is None or self.stop_ops is not None or self.should_exit.is_set():
            return
        if self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            try:
                self.stop_ops = self.start_ops()
            except OSError as exc:
                self.ops_error = exc
                self.should_exit.set()


def serve_workers(settings: Settings, host: str, port: int, workers: int) -> None:
    """`workers` API processes on one socket until SIGTERM or SIGINT (exit 0), or until a
    worker fails to start (exit 2, all stopped; its reason printed above)."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    from gateway.engine.build import open_database

    start_ops = None
    if settings.ops_port is not None:  # served by the supervisor, for all its workers
        _check_free(settings.ops_host, settings.ops_port, "the operator endpoints",
                    "DVP_OPS_HOST/DVP_OPS_PORT")
        engine, ctx = _api_context(settings)
        start_ops = partial(_serve_ops, ctx, settings.ops_host, settings.ops_port)
    else:  # the same checks, and nothing kept open: the workers have their own
        _rpc_clients(settings, relayer=False)
        engine, _ = open_database(settings.database_url)  # migrated
        engine.dispose()
    sock = _listen(host, port)
    config = uvicorn.Config(FACTORY, factory=True, workers=workers, host=host, port=port,
                            log_level="warning")
    supervisor = _Supervisor(config, sock, start_ops)
    try:
        supervisor.run()
    finally:
        sock.close()
        if supervisor.stop_ops is not None:
            supervisor.stop_ops()
        engine.dispose()
    if supervisor.ops_error is not None:
        _fail(f"cannot serve the operator endpoints on {settings.ops_host}:"
              f"{settings.ops_port} (DVP_OPS_HOST/DVP_OPS_PORT): {supervisor.ops_error}")
    if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        _fail("an API worker could not start (see above); every worker is stopped")


def _serve_ops(ctx, host: str, port: int) -> Callable[[], None]:  # noqa: ANN001
    """/healthz, /readyz and /metrics of `ctx` (an ApiContext) on host:port; returns stop."""
    from gateway.api.ops import create_ops_app, serve_in_thread

    return serve_in_thread(create_ops_app(ctx), host, port)


def _socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


def _check_free(host: str, port: int, what: str, options: str) -> None:
    """Refuse a port in use now, not once the workers are up."""
    with _socket(host) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            _fail(f"cannot serve {what} on {host}:{port} ({options}): {exc}")


def _listen(host: str, port: int) -> socket.socket:
    """The API's socket, bound here (a port in use is refused at once) and shared with the
    workers, which listen on it once they serve."""
    sock = _socket(host)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        _fail(f"cannot listen on {host}:{port} (--host/--port): {exc}")
    sock.set_inheritable(True)
    return sock
