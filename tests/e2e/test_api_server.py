"""The app behind a real uvicorn server on loopback, driven over HTTP with httpx (the
`system` fixture is tests/e2e/conftest.py's: a fresh system per test).

`serve(app)` is also what `bench/api.py` measures against.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import uvicorn

from gateway.runner import System


@contextmanager
def serve(app, *, timeout: float = 10.0) -> Iterator[str]:  # noqa: ANN001
    """Run `app` in uvicorn on a free loopback port in a background thread; yields its base
    URL and stops the server (`should_exit`) on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # bound before the thread starts: no free-port race
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name=f"uvicorn:{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.005)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


@pytest.fixture
def base_url(system: System) -> Iterator[str]:
    with serve(system.app) as url:
        yield url


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_managed_trade_settles_over_http(system: System, base_url: str) -> None:
    d = system.devnet
    buyer = system.demo["enterprises"]["buyer"]
    seller = system.demo["enterprises"]["seller"]
    title = seller["titles"][0]
    amount = 250_000
    buyer_before = d.payment_token.functions.balanceOf(buyer["payment_address"]).call()
    seller_before = d.payment_token.functions.balanceOf(seller["business_address"]).call()
    now = max(d.payment.latest_block_timestamp(), d.business.latest_block_timestamp())

    with httpx.Client(base_url=base_url, timeout=10) as http:
        clock = http.get("/v1/clock", headers=_auth(buyer["api_key"])).json()
        assert clock["chain_time"] == now
        body = {"role": "seller", "counterparty": buyer["id"],
                "payment": {"token": d.info.payment.token, "amount": str(amount)},
                "delivery": {"token_id": title["token_id"],
                             "document_hash": title["document_hash"]},
                "deadlines": {"delivery": now + 3600, "payment": now + 7200}}
        r = http.post("/v1/trades", json=body,
                      headers={**_auth(seller["api_key"]), "Idempotency-Key": str(uuid.uuid4())})
        assert r.status_code == 201, r.text
        assert r.headers["content-type"] == "application/json"
        tid = r.json()["id"]
        r = http.post(f"/v1/trades/{tid}/accept", headers=_auth(buyer["api_key"]))
        assert r.status_code == 200 and r.json()["phase"] == "agreed"

        def phase() -> str:
            return http.get(f"/v1/trades/{tid}", headers=_auth(buyer["api_key"])).json()["phase"]

        relayer = system.gateway.relayer
        relayer.run_until(lambda: phase() == "delivery_locked", max_steps=10)
        r = http.post(f"/v1/trades/{tid}/take-delivery", headers=_auth(buyer["api_key"]))
        assert r.status_code == 200, r.text
        relayer.run_until(lambda: phase() == "settled", max_steps=10)

        view = http.get(f"/v1/trades/{tid}", headers=_auth(seller["api_key"])).json()
        assert view["legs"]["payment"]["status"] == "claimed"
        assert view["legs"]["delivery"]["status"] == "claimed"
        for leg in view["legs"].values():
            assert leg["tx_hash"].startswith("0x") and leg["block_number"] > 0
        page = http.get("/v1/trades", params={"phase": "settled"},
                        headers=_auth(seller["api_key"])).json()
        assert [t["id"] for t in page["items"]] == [tid]
        me = http.get("/v1/me", headers=_auth(buyer["api_key"])).json()

    # the chain, not the API, is the judge
    assert d.payment_token.functions.balanceOf(buyer["payment_address"]).call() == \
        buyer_before - amount
    assert d.payment_token.functions.balanceOf(seller["business_address"]).call() == \
        seller_before + amount
    assert d.titles.functions.ownerOf(int(title["token_id"])).call() == buyer["payment_address"]
    assert me["balances"]["payment_token"] == str(buyer_before - amount)
    assert me["balances"]["title_documents"] == 1


def test_docs_and_openapi_are_served(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as http:
        r = http.get("/openapi.json")
        assert r.status_code == 200, r.text
        spec = r.json()
        assert spec["openapi"].startswith("3.") and spec["info"]["title"] == "dvp-gateway"
        for path in ("/v1/trades", "/v1/trades/{trade_id}", "/v1/trades/{trade_id}/accept",
                     "/v1/trades/{trade_id}/cancel", "/v1/trades/{trade_id}/take-delivery",
                     "/v1/trades/{trade_id}/instructions", "/v1/me", "/v1/clock"):
            assert path in spec["paths"], path
        assert "TradeCreate" in spec["components"]["schemas"]
        r = http.get("/docs")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "swagger-ui" in r.text and "/openapi.json" in r.text
        r = http.get("/redoc")
        assert r.status_code == 200 and "/openapi.json" in r.text


def test_errors_over_the_wire(system: System, base_url: str) -> None:
    seller = system.demo["enterprises"]["seller"]
    with httpx.Client(base_url=base_url, timeout=10) as http:
        r = http.get("/v1/trades")
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["www-authenticate"] == "Bearer"
        r = http.post("/v1/trades", content=b"x" * (system.ctx.limits.max_body_bytes + 1),
                      headers={**_auth(seller["api_key"]), "Idempotency-Key": "k",
                               "Content-Type": "application/json"})
        assert r.status_code == 413
        assert r.headers["content-type"] == "application/problem+json"
        assert http.get("/healthz").json() == {"status": "ok"}


def test_body_limit_holds_for_chunked_uploads(system: System, base_url: str) -> None:
    seller = system.demo["enterprises"]["seller"]
    limit = system.ctx.limits.max_body_bytes

    def chunks() -> Iterator[bytes]:
        yield b'{"role": "seller", '
        for _ in range(4):
            yield b" " * limit
        yield b'"x": 1}'

    with httpx.Client(base_url=base_url, timeout=10) as http:
        r = http.post("/v1/trades", content=chunks(),
                      headers={**_auth(seller["api_key"]), "Idempotency-Key": "k",
                               "Content-Type": "application/json"})
        assert r.request.headers.get("transfer-encoding") == "chunked"
        assert r.status_code == 413, r.text
