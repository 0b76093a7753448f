"""`dvp-gateway api --workers N`: uvicorn's supervisor serving one port from N worker
processes (PostgreSQL only: `dvp-gateway api` refuses SQLite, which has a single writer).

- Each worker accepts on its own socket, all bound to the port with SO_REUSEPORT: the kernel
  spreads new connections over them. (On one shared socket, the first worker to wake accepted
  every connection opened at once: 16 kept-alive clients on one of two workers, the other
  idle.) A worker that dies is replaced on its socket, which stays open and listening in the
  supervisor meanwhile: the connections it is given wait in its backlog, none is refused.

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
- The workers' counters and histograms (requests, latencies) are recorded in a directory of
  the supervisor's (prometheus_client's multiprocess mode, PROMETHEUS_MULTIPROC_DIR), so
  /metrics, whoever serves it, counts the requests of every worker, those of replaced workers
  included. The directory is new at each start and removed at exit.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from functools import partial

from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from gateway.cli.api import FACTORY, _api_context
from gateway.cli.common import _fail
from gateway.cli.nodes import _rpc_clients
from gateway.config import Settings
from gateway.engine.metrics import MULTIPROCESS_DIR_ENV

logger = logging.getLogger("uvicorn.error")

# uvicorn gives a worker 5 s to answer its supervisor's ping, and a new one 5 s to start
# serving: on a loaded machine a worker importing its app took longer, and a SIGHUP restart
# stopped at the first replacement (tests/anvil/test_api_workers.py, with the CPU busy). A
# worker that answers nothing for half a minute is hung; one that does not serve after a
# minute will not.
WORKER_HEALTHCHECK_TIMEOUT = 30
WORKER_STARTUP_TIMEOUT = 60


class _Supervisor(Multiprocess):
    """uvicorn's supervisor (handles SIGTERM, SIGINT, SIGHUP), with a socket per worker slot
    (a replacement takes its slot's socket), which also starts the operator endpoints once a
    worker serves the port (its socket is listening)."""

    def __init__(self, config, socks: list[socket.socket],  # noqa: ANN001 - a uvicorn Config
                 start_ops: Callable[[], Callable[[], None]] | None) -> None:
        super().__init__(config, sockets=socks)
        self.start_ops = start_ops
        self.stop_ops: Callable[[], None] | None = None
        self.ops_error: OSError | None = None

    def _start(self, slot: int) -> Process:
        process = Process(self.config, [self.sockets[slot]])
        process.start()
        return process

    def init_processes(self) -> None:
        self.processes = [self._start(slot) for slot in range(len(self.sockets))]

    def keep_subprocess_alive(self) -> None:
        """uvicorn's, each replacement on its slot's socket; then the operator endpoints."""
        for slot, process in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()  # hung, or dead already
            process.join()
            if process.exitcode == STARTUP_FAILURE:  # would fail the same way again
                self.should_exit.set()
                return
            logger.warning(f"API worker [{process.pid}] died; a new one takes its socket")
            self.processes[slot] = self._start(slot)
        if self.start_ops is None or self.stop_ops is not None or self.should_exit.is_set():
            return
        if any(s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) for s in self.sockets):
            try:
                self.stop_ops = self.start_ops()
            except OSError as exc:
                self.ops_error = exc
                self.should_exit.set()

    def restart_all(self) -> None:
        """SIGHUP: each worker replaced in turn, its replacement started on its socket first.
        One that does not start within WORKER_STARTUP_TIMEOUT is stopped, and so is the
        restart: the workers left serve on."""
        for slot, old in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new = self._start(slot)
            if not new.wait_until_ready(WORKER_STARTUP_TIMEOUT, self.should_exit):
                new.kill()
                new.join()
                logger.warning(f"a new API worker did not start within "
                               f"{WORKER_STARTUP_TIMEOUT} s; the restart stops there")
                return
            old.terminate()
            old.join()
            self.processes[slot] = new

    def handle_ttin(self) -> None:  # a worker's socket is bound before it starts: fixed count
        logger.warning("the number of API workers is set by --workers; SIGTTIN ignored")

    def handle_ttou(self) -> None:
        logger.warning("the number of API workers is set by --workers; SIGTTOU ignored")


def serve_workers(settings: Settings, host: str, port: int, workers: int) -> None:
    """`workers` API processes on one port until SIGTERM or SIGINT (exit 0), or until a
    worker fails to start (exit 2, all stopped; its reason printed above)."""
    import uvicorn

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
    socks = _listen(host, port, workers)
    config = uvicorn.Config(FACTORY, factory=True, workers=workers, host=host, port=port,
                            log_level="warning",
                            timeout_worker_healthcheck=WORKER_HEALTHCHECK_TIMEOUT)
    supervisor = _Supervisor(config, socks, start_ops)
    counted = tempfile.mkdtemp(prefix="dvp-gateway-metrics-")
    given = os.environ.get(MULTIPROCESS_DIR_ENV)
    os.environ[MULTIPROCESS_DIR_ENV] = counted  # the spawned workers inherit it
    try:
        supervisor.run()
    finally:
        for sock in socks:
            sock.close()
        if supervisor.stop_ops is not None:
            supervisor.stop_ops()
        engine.dispose()
        if given is None:
            os.environ.pop(MULTIPROCESS_DIR_ENV, None)
        else:
            os.environ[MULTIPROCESS_DIR_ENV] = given
        shutil.rmtree(counted, ignore_errors=True)
    if supervisor.ops_error is not None:
        _fail(f"cannot serve the operator endpoints on {settings.ops_host}:"
              f"{settings.ops_port} (DVP_OPS_HOST/DVP_OPS_PORT): {supervisor.ops_error}")
    if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        _fail("an API worker could not start (see above); every worker is stopped")


def _serve_ops(ctx, host: str, port: int) -> Callable[[], None]:  # noqa: ANN001
    """/healthz, /readyz and /metrics of `ctx` (an ApiContext) on host:port; returns stop."""
    from gateway.api.ops import create_ops_app, serve_in_thread

    return serve_in_thread(create_ops_app(ctx), host, port)


def _socket(host: str, reuse_port: bool = False) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def _check_free(host: str, port: int, what: str, options: str) -> None:
    """Refuse a port in use now, not once the workers are up."""
    with _socket(host) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            _fail(f"cannot serve {what} on {host}:{port} ({options}): {exc}")


def _listen(host: str, port: int, workers: int) -> list[socket.socket]:
    """A socket per worker, all bound here to host:port with SO_REUSEPORT and listened on by
    their workers once they serve. A port in use is refused at once, even by another group
    of SO_REUSEPORT sockets (another `--workers` gateway of this user): the port is first
    bound without the option, which only a free port allows."""
    if port != 0:
        _check_free(host, port, "the API", "--host/--port")
    socks: list[socket.socket] = []
    try:
        for _ in range(workers):
            sock = _socket(host, reuse_port=True)
            socks.append(sock)
            sock.bind((host, port))
            port = sock.getsockname()[1]  # --port 0: the others join the first one's port
            sock.set_inheritable(True)
    except OSError as exc:
        for sock in socks:
            sock.close()
        _fail(f"cannot listen on {host}:{port} (--host/--port): {exc}")
    return socks
