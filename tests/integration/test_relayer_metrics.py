"""The relayer's metrics port (`relayer run` with DVP_METRICS_PORT): with DVP_OPS_TOKEN set it
answers /metrics only to that bearer, as the API's operator endpoints do. Before, the port had
no token: anyone who reached it read the trade counts and the relayer's activity."""

from __future__ import annotations

import httpx
import pytest

from gateway.engine import metrics
from gateway.engine.build import open_database
from tests.e2e.test_run_command import _free_port

TOKEN = "an-operator-token-of-32-chars-xx"


@pytest.fixture
def served(database_url, request):  # noqa: ANN001, ANN201
    engine, factory = open_database(database_url)
    port = _free_port()
    server = metrics.serve(factory, {"payment": 1337, "business": 1338}, "127.0.0.1", port,
                           request.param)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        engine.dispose()


@pytest.mark.parametrize("served", [TOKEN], indirect=True)
def test_with_a_token_only_its_bearer_reads_the_metrics(served) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-token-of-the-same-length-x"},
                    {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):
        refused = httpx.get(f"{served}/metrics", headers=headers, timeout=10)
        assert refused.status_code == 401, headers
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["status"] == 401 and "DVP_OPS_TOKEN" in refused.json()["detail"]
        assert "dvp_" not in refused.text
    read = httpx.get(f"{served}/metrics", headers={"Authorization": f"Bearer {TOKEN}"},
                     timeout=10)
    assert read.status_code == 200
    assert 'dvp_outbox_pending{chain="payment"} 0.0' in read.text
    assert httpx.get(f"{served}/other", headers={"Authorization": f"Bearer {TOKEN}"},
                     timeout=10).status_code == 404


@pytest.mark.parametrize("served", [None], indirect=True)
def test_without_a_token_the_port_is_open_as_before(served) -> None:
    read = httpx.get(f"{served}/metrics", timeout=10)
    assert read.status_code == 200 and "dvp_trades" in read.text
    assert httpx.get(served, timeout=10).status_code == 404
