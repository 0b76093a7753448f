"""`dvp-gateway api --workers N` as an operator runs it on PostgreSQL: one port served by N
worker processes, each building its API from the same DVP_* variables; SIGTERM to the
supervisor stops every worker and exits 0. (On SQLite the command refuses: see
tests/integration/test_cli_operations.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from gateway.chain.anvil import devnet_env
from gateway.chain.devnet import BUYER, RELAYER
from tests.databases import on_postgres
from tests.e2e.test_run_command import _free_port, _wait_healthy
from tests.helpers import listening_sockets, terminate
from tests.postgres.waiting import wait_for

pytestmark = pytest.mark.skipif(not on_postgres(), reason="--workers needs PostgreSQL "
                                "(DVP_TEST_DATABASE_URL)")

CLI = [sys.executable, "-m", "gateway.cli"]
SCRIPT = Path(sys.executable).parent / "dvp-gateway"  # the installed entry point


def _children(pid: int) -> set[int]:
    """The processes `pid` started (its workers, and multiprocessing's resource tracker)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


def _workers(pid: int) -> set[int]:
    found = set()
    for child in _children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        if b"spawn_main" in cmdline:
            found.add(child)
    return found


def _enterprise(env: dict, address: str) -> tuple[str, str]:
    """A self-custody enterprise made with the CLI: (its id, its API key)."""
    made = subprocess.run([*CLI, "enterprise", "create", "--name", "Workers Ltd",
                           "--payment-address", address, "--business-address", address],
                          env=env, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stdout + made.stderr
    lines = made.stdout.splitlines()
    return lines[0].split()[1], lines[-1].split()[2]


@pytest.mark.parametrize(("command", "ops_port"), [([str(SCRIPT)], False), (CLI, True)],
                         ids=["dvp-gateway", "python-m-ops-port"])
def test_api_workers_serve_one_port_and_stop_on_sigterm(command, ops_port, anvil_devnet,
                                                        database_url, tmp_path) -> None:
    """With DVP_OPS_PORT, the supervisor serves /healthz, /readyz and /metrics there for all
    its workers, and the workers serve them not at all."""
    if not Path(command[0]).exists():
        pytest.skip(f"{command[0]} is not installed")
    env = {**os.environ, "DVP_DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1"}
    env.update(line.split("=", 1) for line in
               devnet_env(anvil_devnet, anvil_devnet.account(RELAYER).key, None))
    ent_id, key = _enterprise(env, anvil_devnet.account(BUYER).address)
    port = _free_port()
    base, log = f"http://127.0.0.1:{port}", tmp_path / "api.log"
    ops = base
    if ops_port:
        env["DVP_OPS_PORT"] = str(_free_port())
        ops = f"http://127.0.0.1:{env['DVP_OPS_PORT']}"
    with log.open("w") as out:  # a new database: the supervisor and the workers migrate it
        api = subprocess.Popen([*command, "api", "--workers", "2", "--port", str(port)],
                               env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(ops, api, timeout=120)
        wait_for(lambda: len(_workers(api.pid)) == 2, timeout=60, what="two workers")
        workers, started = _workers(api.pid), _children(api.pid)  # and a resource tracker

        def me(_: int) -> httpx.Response:
            return httpx.get(f"{base}/v1/me", headers={"Authorization": f"Bearer {key}"},
                             timeout=30)

        # Every /v1 request writes (its rate-limit buckets): the workers write side by side.
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(me, range(40)))
        assert {a.status_code for a in answers} == {200}, answers[0].text
        assert {a.json()["id"] for a in answers} == {ent_id}
        assert httpx.get(f"{base}/v1/me", timeout=10).status_code == 401
        assert httpx.get(f"{ops}/readyz", timeout=10).json()["ready"] is True
        scraped = httpx.get(f"{ops}/metrics", timeout=10).text
        assert "dvp_trades" in scraped
        # Every worker's requests are counted, whichever process answers the scrape (the
        # supervisor with DVP_OPS_PORT, else one of the workers).
        assert _requests_counted(scraped, "/v1/me", "200") == 40
        assert _requests_counted(scraped, "/v1/me", "401") == 1
        if ops_port:
            assert httpx.get(f"{base}/healthz", timeout=10).status_code == 404
        assert _workers(api.pid) == workers  # none died and was replaced
    finally:
        code = terminate(api, timeout=60)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "a worker outlived it"
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in started), timeout=10,
             what="the resource tracker gone")
    assert "Traceback" not in text, text[-3000:]


def _requests_counted(scraped: str, route: str, status: str) -> float:
    """The sum of `dvp_http_requests_total` for `route` and `status` in a /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(sample.value for family in text_string_to_metric_families(scraped)
               for sample in family.samples
               if sample.name == "dvp_http_requests_total"
               and sample.labels.get("route") == route and sample.labels.get("status") == status)


def _server_sides(port: int) -> dict[int, str]:
    """The socket inode of the server side of every established connection to `port`, by
    the client's port (/proc/net/tcp)."""
    found = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":  # ESTABLISHED
            found[int(fields[2].split(":")[1], 16)] = fields[9]
    return found


def _sockets_of(pid: int) -> set[str]:
    try:
        return {os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()}
    except OSError:  # gone meanwhile
        return set()


def _open_at_once(port: int, n: int, pids: set[int]) -> tuple[list, dict[int, int]]:
    """`n` kept-alive connections opened together, as a client's pool opens them when load
    starts, each answered once (so each was accepted by a worker); the open sockets, and how
    many of them each of `pids` accepted. Each connection's worker is looked up while the
    answers come in, from the moment a worker holds it: a worker closes a connection idle
    for uvicorn's keep-alive timeout (5 s), and on a loaded machine the last answers (a
    replacement worker starting) can come later than that after the first."""
    import select
    import socket
    import time

    conns = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(n)]
    for conn in conns:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    clients = [conn.getsockname()[1] for conn in conns]
    owner: dict[int, int] = {}
    answered: set[int] = set()
    deadline = time.monotonic() + 120
    while len(answered) < n or len(owner) < n:
        assert time.monotonic() < deadline, f"answered {len(answered)}, placed {len(owner)}"
        sides, held = _server_sides(port), {pid: _sockets_of(pid) for pid in pids}
        for i, client in enumerate(clients):
            inode = sides.get(client)
            for pid, sockets in held.items():
                if i not in owner and inode is not None and f"socket:[{inode}]" in sockets:
                    owner[i] = pid
        waiting = [conn for i, conn in enumerate(conns) if i not in answered]
        for conn in select.select(waiting, [], [], 0.05)[0] if waiting else []:
            assert conn.recv(4096).startswith(b"HTTP/1.1 200"), "a connection was not served"
            answered.add(conns.index(conn))
    return conns, {pid: sum(1 for p in owner.values() if p == pid) for pid in pids}


def test_workers_share_the_connections_opened_at_once(anvil_devnet, database_url,
                                                      tmp_path) -> None:
    """Kept-alive connections opened together are spread over the workers (each worker its
    own SO_REUSEPORT socket). On one shared socket the first worker to wake accepted every
    one of them, and the other worker idled while its peer's clients queued. A worker that
    dies is replaced on its own socket, and so is each worker SIGHUP restarts: no connection
    waits on a socket nobody accepts."""
    import signal

    env = {**os.environ, "DVP_DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1"}
    env.update(line.split("=", 1) for line in
               devnet_env(anvil_devnet, anvil_devnet.account(RELAYER).key, None))
    port = _free_port()
    base, log = f"http://127.0.0.1:{port}", tmp_path / "api.log"
    with log.open("w") as out:
        api = subprocess.Popen([*CLI, "api", "--workers", "2", "--port", str(port)],
                               env=env, stdout=out, stderr=subprocess.STDOUT)
    conns: list = []
    try:
        _wait_healthy(base, api, timeout=120)
        wait_for(lambda: len(_workers(api.pid)) == 2 and listening_sockets(port) == 2, timeout=120,
                 what="two workers listening")
        workers = _workers(api.pid)
        conns, held = _open_at_once(port, 32, workers)
        assert sum(held.values()) == 32 and min(held.values()) > 0, held
        for conn in conns:
            conn.close()
        dead = min(workers)
        os.kill(dead, signal.SIGKILL)
        wait_for(lambda: len(_workers(api.pid) - workers) == 1, timeout=120,
                 what="the dead worker replaced")
        replaced = _workers(api.pid)
        conns, held = _open_at_once(port, 32, replaced)  # every one answered, none left waiting
        assert sum(held.values()) == 32 and min(held.values()) > 0, held
        for conn in conns:
            conn.close()
        os.kill(api.pid, signal.SIGHUP)  # every worker replaced in turn, on its socket
        wait_for(lambda: not _workers(api.pid) & replaced and len(_workers(api.pid)) == 2,
                 timeout=180, what="the workers restarted")
        conns, held = _open_at_once(port, 32, _workers(api.pid))
        assert sum(held.values()) == 32 and min(held.values()) > 0, held
        # The 96 /healthz above are all counted, those the killed and the restarted workers
        # answered included, in the supervisor's directory (removed at exit).
        scraped = httpx.get(f"{base}/metrics", timeout=10).text
        assert _requests_counted(scraped, "/healthz", "200") >= 96
        counted = _environ(min(_workers(api.pid)))["PROMETHEUS_MULTIPROC_DIR"]
        assert Path(counted).is_dir()
    finally:
        for conn in conns:
            conn.close()
        code = terminate(api, timeout=60)
    assert code == 0, log.read_text()[-3000:]
    assert not Path(counted).exists()


def _environ(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode().split("=", 1) for e in entries if b"=" in e)


def test_workers_refuse_a_port_another_reuseport_group_holds(anvil_devnet, database_url) -> None:
    """Sockets with SO_REUSEPORT of the same user share a port: a second `--workers` gateway
    started on the first one's port would silently take half its connections. Refused."""
    import socket

    env = {**os.environ, "DVP_DATABASE_URL": database_url}
    env.update(line.split("=", 1) for line in
               devnet_env(anvil_devnet, anvil_devnet.account(RELAYER).key, None))
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = subprocess.run([*CLI, "api", "--workers", "2", "--port", str(port)], env=env,
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"cannot serve the API on 127.0.0.1:{port} (--host/--port)" in result.stderr
    assert "Traceback" not in result.stderr
