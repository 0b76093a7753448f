"""The database unavailable for a while (issue 5, fault 7): the gateway reaches PostgreSQL
through a TCP forwarder that the test stops (open connections cut, new ones refused) and starts
again on the same address. The API answers 503 problem+json meanwhile, the relayer backs off
and resumes, and nothing the chains did in the meantime is lost."""

from __future__ import annotations

import uuid

import pytest
import structlog
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.engine import make_url

from gateway.config import Settings
from gateway.db.models import AttemptRow, InputRow
from gateway.runner import build_system
from tests.databases import on_postgres
from tests.integration.harness import AMOUNT, World, make_gateway
from tests.postgres.proxy import TcpProxy
from tests.postgres.waiting import wait_for

pytestmark = pytest.mark.skipif(
    not on_postgres(), reason="PostgreSQL only: set DVP_TEST_DATABASE_URL (make test-postgres)")

PROBLEM = "application/problem+json"


@pytest.fixture
def proxy(database_url):  # noqa: ANN201
    url = make_url(database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxy.start()
    yield proxy
    proxy.stop()


def _failures(logs: list[dict]) -> int:
    return sum(1 for e in logs if e["event"] == "relayer_step_failed")


def _assert_unavailable(response) -> None:  # noqa: ANN001
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.headers["retry-after"]
    body = response.json()
    assert body["status"] == 503 and "database" in body["detail"]


def test_api_answers_503_while_the_database_is_down_and_the_trade_settles_after(
        tmp_path, database_url, proxy) -> None:
    system = build_system(Settings(_env_file=None), tmp_path / "run",
                          database_url=proxy.url_for(database_url))
    client = TestClient(system.app, raise_server_exceptions=False)
    try:
        demo = system.demo["enterprises"]
        buyer, seller = demo["buyer"], demo["seller"]
        b_auth = {"Authorization": f"Bearer {buyer['api_key']}"}
        s_auth = {"Authorization": f"Bearer {seller['api_key']}"}
        token = system.devnet.payment_token
        buyer_before = token.functions.balanceOf(buyer["payment_address"]).call()
        title = seller["titles"][0]
        now = system.devnet.payment.latest_block_timestamp()
        body = {"role": "seller", "counterparty": buyer["id"],
                "payment": {"token": system.devnet.info.payment.token, "amount": "123456"},
                "delivery": {"token_id": title["token_id"],
                             "document_hash": title["document_hash"]},
                "deadlines": {"delivery": now + 3600, "payment": now + 7200}}
        with structlog.testing.capture_logs() as logs:
            system.start_block_producer(0.1)
            system.start_relayer(0.02)
            r = client.post("/v1/trades", json=body,
                            headers={**s_auth, "Idempotency-Key": str(uuid.uuid4())})
            assert r.status_code == 201, r.text
            trade_id = r.json()["id"]
            assert client.post(f"/v1/trades/{trade_id}/accept", headers=b_auth).status_code \
                == 200

            def phase() -> str:
                r = client.get(f"/v1/trades/{trade_id}", headers=b_auth)
                return r.json()["phase"] if r.status_code == 200 else f"HTTP {r.status_code}"

            wait_for(lambda: phase() == "delivery_locked", what="delivery_locked")

            proxy.stop()  # the database goes away
            _assert_unavailable(client.get(f"/v1/trades/{trade_id}", headers=b_auth))
            _assert_unavailable(client.get("/v1/trades", headers=s_auth))
            _assert_unavailable(client.post(f"/v1/trades/{trade_id}/take-delivery",
                                            headers=b_auth))
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["database"].startswith("down")
            assert client.get("/healthz").status_code == 200  # alive, only not ready
            seen = _failures(logs)
            wait_for(lambda: _failures(logs) >= seen + 2, what="relayer backing off")

            proxy.start()  # and comes back
            wait_for(lambda: client.get("/readyz").status_code == 200, what="ready again")
            r = client.post(f"/v1/trades/{trade_id}/take-delivery", headers=b_auth)
            assert r.status_code == 200, r.text
            wait_for(lambda: phase() == "settled", what="settled")
    finally:
        system.close()

    assert token.functions.balanceOf(buyer["payment_address"]).call() == buyer_before - 123456
    assert token.functions.balanceOf(seller["business_address"]).call() == 123456
    assert token.functions.balanceOf(system.devnet.info.payment.htlc).call() == 0
    titles = system.devnet.titles
    assert titles.functions.ownerOf(int(title["token_id"])).call() == buyer["payment_address"]


def test_relayer_pauses_while_the_database_is_down_and_loses_nothing(
        devnet, database_url, proxy) -> None:
    """Every chain step of the trade happens while the relayer cannot reach its database."""
    import threading

    gateway = make_gateway(devnet, proxy.url_for(database_url))
    world = World(devnet, gateway)
    buyer_before = world.token_balance(world.buyer.address)
    seller_before = world.token_balance(world.seller.address)
    trade = world.agree()
    stop = threading.Event()
    with structlog.testing.capture_logs() as logs:
        thread = threading.Thread(target=gateway.relayer.run_forever, args=(stop, 0.02),
                                  daemon=True)
        thread.start()
        try:
            wait_for(lambda: any(e["event"] == "relayer_started" for e in logs))
            proxy.stop()
            world.lock_payment(trade)
            world.lock_delivery(trade)
            world.take_delivery(trade)  # the secret is public; the seller is owed the payment
            seen = _failures(logs)
            wait_for(lambda: _failures(logs) >= seen + 3, what="relayer backing off")
            assert world.token_balance(world.seller.address) == seller_before  # nothing sent
            proxy.start()
            wait_for(lambda: world.phase(trade) == "settled", what="settled")
        finally:
            stop.set()
            thread.join(timeout=60)
    assert not thread.is_alive()
    assert any(e["event"] == "relayer_step_failed" and "OperationalError" in e["error"]
               for e in logs)
    assert world.token_balance(world.buyer.address) == buyer_before - AMOUNT
    assert world.token_balance(world.seller.address) == seller_before + AMOUNT
    assert world.token_balance(devnet.payment_htlc.address) == 0
    assert world.title_owner(trade) == world.buyer.address
    with gateway.session_factory() as session:
        attempts = list(session.scalars(select(AttemptRow)))
        inputs = list(session.scalars(select(InputRow).where(InputRow.chain_id.is_not(None))))
    assert [a.status for a in attempts] == ["mined"]  # the payment claim, once
    assert sorted(i.kind for i in inputs) == sorted(
        ["ContractReceivePaymentLocked", "ContractReceiveDeliveryLocked",
         "ContractReceiveClaimed", "ContractReceiveClaimed"])
    gateway.engine.dispose()
