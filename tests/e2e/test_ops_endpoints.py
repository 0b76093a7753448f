"""Operator endpoints (gateway.api.ops) and the access log:

- DVP_OPS_TOKEN: /readyz and /metrics need it as a Bearer token; /healthz stays open;
- DVP_OPS_PORT: the three are served by their own server and not on the public port;
- /readyz's probe and /metrics' database read happen at most once per DVP_OPS_CACHE_SECONDS,
  however many callers ask at once;
- one structured line per request in the access log, never a key.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import httpx
import pytest
import structlog
from fastapi.testclient import TestClient

from gateway import logs
from gateway.api.app import create_app
from gateway.api.context import ChainView, Limits
from gateway.api.ops import create_ops_app
from gateway.config import Settings
from gateway.runner import System
from tests.e2e.test_api_contract import demo, problem, propose
from tests.e2e.test_run_command import _free_port, _wait_healthy
from tests.helpers import listening_sockets, terminate
from tests.postgres.waiting import wait_for

TOKEN = "ops-" + "t" * 28


@pytest.fixture
def make_system(make_system):  # noqa: ANN001, ANN201 - tests/e2e/conftest.py's, by limits
    return lambda **limits: make_system(limits=Limits(**limits))


# --- the operator token -------------------------------------------------------------------------


def test_readyz_and_metrics_need_the_operator_token_when_one_is_set(system, client) -> None:
    assert client.get("/metrics").status_code == 200  # unset: open, as before
    system.ctx.configure(Settings(_env_file=None, ops_token=TOKEN))
    for path in ("/readyz", "/metrics"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": f"Bearer {TOKEN}x"}):
            r = client.get(path, headers=headers)
            problem(r, 401)
            assert r.headers["www-authenticate"] == "Bearer"
            assert TOKEN not in r.text
        ok = client.get(path, headers={"Authorization": f"bearer {TOKEN}"})
        assert ok.status_code == 200, ok.text
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text.count(
        "# TYPE dvp_trades gauge") == 1
    assert client.get("/healthz").json() == {"status": "ok"}  # liveness stays open


def test_an_enterprise_key_is_not_the_operator_token(system, client) -> None:
    system.ctx.configure(Settings(_env_file=None, ops_token=TOKEN))
    buyer, _ = demo(system)
    problem(client.get("/metrics", headers=buyer.h), 401)


def test_the_operator_settings(monkeypatch) -> None:
    monkeypatch.setenv("DVP_OPS_TOKEN", TOKEN)
    monkeypatch.setenv("DVP_OPS_PORT", "9102")
    settings = Settings(_env_file=None)
    assert settings.ops_token is not None and settings.ops_token.get_secret_value() == TOKEN
    assert TOKEN not in repr(settings)
    assert (settings.ops_host, settings.ops_port, settings.ops_cache_seconds) == \
        ("127.0.0.1", 9102, 2.0)
    with pytest.raises(ValueError, match="ops_token"):
        Settings(_env_file=None, ops_token="short")  # 16 characters at least
    with pytest.raises(ValueError, match="ops_cache_seconds"):
        Settings(_env_file=None, ops_cache_seconds=0)  # always cached, however briefly


# --- a separate operator port -------------------------------------------------------------------


def test_without_ops_routes_the_public_app_serves_none_of_them(system) -> None:
    public = TestClient(create_app(system.ctx, ops_routes=False),
                        raise_server_exceptions=False)
    ops = TestClient(create_ops_app(system.ctx), raise_server_exceptions=False)
    for path in ("/healthz", "/readyz", "/metrics"):
        problem(public.get(path), 404)
        assert ops.get(path).status_code == 200, path
    buyer, _ = demo(system)
    assert public.get("/v1/me", headers=buyer.h).status_code == 200
    assert ops.get("/v1/me", headers=buyer.h).status_code == 404
    assert ops.get("/openapi.json").status_code == 404
    assert not any(p.startswith("/readyz") or p.startswith("/metrics")
                   for p in public.get("/openapi.json").json()["paths"])
    system.ctx.configure(Settings(_env_file=None, ops_token=TOKEN))
    problem(ops.get("/metrics"), 401)
    assert ops.get("/healthz").status_code == 200


def test_run_serves_the_operator_endpoints_on_their_own_port(tmp_path: Path) -> None:
    port, ops_port = _free_port(), _free_port()
    base, ops = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{ops_port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DVP_OPS_PORT": str(ops_port),
           "DVP_OPS_TOKEN": TOKEN}
    env.pop("DVP_DATABASE_URL", None)
    server = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--port", str(port),
                               "--workdir", str(tmp_path / ".dvp")], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_healthy(ops, server)
        # The operator endpoints start first, the API after the relayer's threads: wait for
        # the API's socket too (on a busy machine it listened a moment after).
        wait_for(lambda: server.poll() is not None or listening_sockets(port) == 1,
                 timeout=60, what="the API listening")
        assert server.poll() is None, server.stdout.read() if server.stdout else ""
        assert httpx.get(f"{base}/healthz", timeout=10).status_code == 404
        assert httpx.get(f"{base}/metrics", timeout=10).status_code == 404
        assert httpx.get(f"{ops}/metrics", timeout=10).status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert "dvp_trades" in httpx.get(f"{ops}/metrics", headers=auth, timeout=10).text
        assert httpx.get(f"{ops}/readyz", headers=auth, timeout=10).json()["ready"] is True
        key = json.loads((tmp_path / ".dvp" / "demo.json").read_text())[
            "enterprises"]["buyer"]["api_key"]
        assert httpx.get(f"{base}/v1/me", headers={"Authorization": f"Bearer {key}"},
                         timeout=10).status_code == 200
    finally:
        code = terminate(server)
        output = server.stdout.read() if server.stdout else ""
    assert code == 0, output
    assert f"metrics {ops}/metrics" in output
    assert "Traceback" not in output


# --- caching --------------------------------------------------------------------------------------


class CountingNode:
    """A chain client whose head is counted each time it is read."""

    def __init__(self, chain_id: int, fail: bool = False) -> None:
        self.reads, self.fail = 0, fail
        self.chain_id = chain_id
        self._lock = threading.Lock()

    def block_number(self) -> int:
        with self._lock:
            self.reads += 1
        if self.fail:
            raise ConnectionError("node unreachable")
        return 1


def count_probes(system: System, monkeypatch) -> CountingNode:  # noqa: ANN001
    node = CountingNode(system.ctx.business.chain_id)
    monkeypatch.setattr(system.ctx, "business", ChainView(node, "0x0", "0x0"))  # type: ignore
    return node


def test_a_flood_of_readyz_calls_makes_one_probe_per_interval(make_system,
                                                              monkeypatch) -> None:
    system = make_system(ops_cache_seconds=2.0)
    client = TestClient(system.app, raise_server_exceptions=False)
    node = count_probes(system, monkeypatch)
    cache = system.app.state.ops_caches["readyz"]
    now = [1000.0]
    cache._monotonic = lambda: now[0]  # the cache's clock, moved by hand

    results: list[int] = []

    def call() -> None:
        results.append(client.get("/readyz").status_code)

    threads = [threading.Thread(target=call) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [200] * 20
    assert cache.computed == 1
    assert node.reads == 2  # one probe: the head for readiness, and for the relayer's lag
    node.fail = True
    now[0] += 1.9  # within the interval: the cached answer
    assert client.get("/readyz").status_code == 200
    assert node.reads == 2
    now[0] += 0.2  # past it: probed again, and the node is down
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["business_chain"] == \
        "down: ConnectionError"
    assert cache.computed == 2


def test_readyz_is_never_cached_beyond_the_setting(make_system, monkeypatch) -> None:
    system = make_system(ops_cache_seconds=0)
    client = TestClient(system.app, raise_server_exceptions=False)
    node = count_probes(system, monkeypatch)
    for _ in range(3):
        assert client.get("/readyz").status_code == 200
    assert system.app.state.ops_caches["readyz"].computed == 3
    assert node.reads == 6


def test_metrics_read_the_database_once_per_interval(make_system) -> None:
    system = make_system(ops_cache_seconds=2.0)
    client = TestClient(system.app, raise_server_exceptions=False)
    cache = system.app.state.ops_caches["metrics"]
    now = [1000.0]
    cache._monotonic = lambda: now[0]
    buyer, seller = demo(system)

    def scrape() -> tuple[str, float]:
        """(the stored gauge of proposed trades, this process's count of proposals made)."""
        lines = client.get("/metrics").text.splitlines()
        gauge = next(line for line in lines if line.startswith('dvp_trades{phase="proposed"}'))
        made = next(line for line in lines if line.startswith(
            'dvp_http_requests_total{method="POST",route="/v1/trades",status="201"}'))
        return gauge, float(made.split()[-1])

    def proposed() -> str:
        return scrape()[0]

    propose(client, system, seller, buyer)
    gauge, made = scrape()
    assert gauge.endswith(" 1.0")
    propose(client, system, seller, buyer, title=1)
    for _ in range(5):  # the stored gauges as read a moment ago, this process's counters live
        assert scrape() == (gauge, made + 1)
    assert cache.computed == 1
    now[0] += 2.1
    assert proposed().endswith(" 2.0")
    assert cache.computed == 2


# --- access log -----------------------------------------------------------------------------------


@pytest.fixture
def json_logs():
    """The process's structured log as JSON lines, written to a buffer."""
    saved = structlog.get_config()
    out = io.StringIO()
    logs.configure(json=True, file=out)

    def lines() -> list[dict]:
        return [json.loads(line) for line in out.getvalue().splitlines()]

    yield lines
    structlog.configure(**saved)


def test_one_access_log_line_per_request_and_never_a_key(system, json_logs) -> None:
    client = TestClient(system.app, raise_server_exceptions=False, client=("198.51.100.4", 1))
    buyer, seller = demo(system)
    wrong = "dvp_" + uuid.uuid4().hex
    t = propose(client, system, seller, buyer)
    assert client.get(f"/v1/trades/{t['id']}", headers=buyer.h).status_code == 200
    assert client.get("/v1/me", headers={"Authorization": f"Bearer {wrong}"}).status_code == 401
    assert client.get("/healthz").status_code == 200
    assert client.get("/nowhere", headers=buyer.h).status_code == 404

    access = [e for e in json_logs() if e.get("event") == "http_request"]
    assert [(e["method"], e["route"], e["status"]) for e in access] == [
        ("POST", "/v1/trades", 201), ("GET", "/v1/trades/{trade_id}", 200),
        ("GET", "/v1/me", 401), ("GET", "/healthz", 200), ("GET", "unmatched", 404)]
    proposal, read, refused, health, lost = access
    assert proposal["enterprise_id"] == seller.id and read["enterprise_id"] == buyer.id
    assert read["path"] == f"/v1/trades/{t['id']}"
    assert "enterprise_id" not in refused and "enterprise_id" not in health
    for entry in access:
        assert entry["client"] == "198.51.100.4"
        assert entry["level"] == "info" and entry["timestamp"]
        assert isinstance(entry["duration_ms"], float) and entry["duration_ms"] >= 0
    text = json.dumps(access)
    for secret in (buyer.key, seller.key, wrong, "Bearer", "authorization", "Idempotency"):
        assert secret.lower() not in text.lower()
    assert t["payment"]["amount"] not in text  # nor a body
