"""Two managed enterprises trade through the HTTP API; the gateway does every chain step."""

from __future__ import annotations

import uuid

import pytest

from tests.e2e.conftest import auth


@pytest.fixture
def system(system_on_both_backends):  # noqa: ANN001, ANN201 - every test here, both backends
    return system_on_both_backends


def _balance(system, address: str) -> int:
    return system.devnet.payment_token.functions.balanceOf(address).call()


def _propose_body(system, demo, amount: str = "123456") -> dict:
    title = demo["enterprises"]["seller"]["titles"][0]
    now = system.devnet.payment.latest_block_timestamp()
    return {
        "role": "seller", "counterparty": demo["enterprises"]["buyer"]["id"],
        "payment": {"token": system.devnet.info.payment.token, "amount": amount},
        "delivery": {"token_id": title["token_id"], "document_hash": title["document_hash"]},
        "deadlines": {"delivery": now + 3600, "payment": now + 7200},
    }


def test_managed_buyer_and_seller_settle_through_the_api(system, client) -> None:
    demo = system.demo
    buyer, seller = demo["enterprises"]["buyer"], demo["enterprises"]["seller"]
    buyer_before = _balance(system, buyer["payment_address"])
    seller_addr = seller["business_address"]

    r = client.post("/v1/trades", json=_propose_body(system, demo),
                    headers={**auth(seller["api_key"]), "Idempotency-Key": str(uuid.uuid4())})
    assert r.status_code == 201, r.text
    trade = r.json()
    assert trade["phase"] == "proposed" and trade["role"] == "seller"
    trade_id = trade["id"]

    r = client.post(f"/v1/trades/{trade_id}/accept", headers=auth(buyer["api_key"]))
    assert r.status_code == 200, r.text
    relayer = system.gateway.relayer

    def phase() -> str:
        return client.get(f"/v1/trades/{trade_id}", headers=auth(buyer["api_key"])).json()["phase"]

    relayer.run_until(lambda: phase() == "delivery_locked", max_steps=10)
    r = client.post(f"/v1/trades/{trade_id}/take-delivery", headers=auth(buyer["api_key"]))
    assert r.status_code == 200, r.text
    relayer.run_until(lambda: phase() == "settled", max_steps=10)

    assert _balance(system, buyer["payment_address"]) == buyer_before - 123456
    assert _balance(system, seller_addr) == 123456
    titles = system.devnet.titles
    token_id = int(demo["enterprises"]["seller"]["titles"][0]["token_id"])
    assert titles.functions.ownerOf(token_id).call() == buyer["payment_address"]
    view = client.get(f"/v1/trades/{trade_id}", headers=auth(seller["api_key"])).json()
    assert view["legs"]["payment"]["status"] == "claimed"
    assert view["legs"]["delivery"]["status"] == "claimed"
    # each leg names the transactions that made and exited it, as the chains recorded them
    for name, chain in (("payment", system.devnet.payment), ("delivery", system.devnet.business)):
        leg = view["legs"][name]
        for tx, block in ((leg["tx_hash"], leg["block_number"]),
                          (leg["exit_tx_hash"], leg["exit_block_number"])):
            receipt = chain.client.receipt(bytes.fromhex(tx[2:]))
            assert receipt is not None and receipt.succeeded and receipt.block_number == block
        assert leg["exit_block_number"] > leg["block_number"]
    assert any(e["kind"] == "EventPhaseChanged" and e["detail"]["new"] == "settled"
               for e in view["timeline"])


def _stored_text(system) -> str:
    """Everything the gateway stored about trades, as one text: states, the input log, the
    outbox and the timeline."""
    from sqlalchemy import select

    from gateway.db.models import InputRow, OutboxRow, TradeEventRow, TradeRow

    with system.gateway.session_factory() as session:
        rows = [*session.scalars(select(TradeRow.state)), *session.scalars(
            select(InputRow.payload)), *session.scalars(select(OutboxRow.payload)),
            *session.scalars(select(TradeEventRow.payload))]
    import json

    return json.dumps(rows)


def test_managed_buyers_secret_is_stored_only_encrypted_until_delivery_is_taken(
        system, client) -> None:
    """A seller who learnt the buyer's secret before locking the title could be paid without
    delivering: until take-delivery, no stored state, input or effect holds it in clear."""
    from gateway.db.models import SecretRow

    demo = system.demo
    buyer, seller = demo["enterprises"]["buyer"], demo["enterprises"]["seller"]
    seller_before = _balance(system, seller["business_address"])  # one address on both chains
    r = client.post("/v1/trades", json=_propose_body(system, demo, amount="777"),
                    headers={**auth(seller["api_key"]), "Idempotency-Key": str(uuid.uuid4())})
    trade_id = r.json()["id"]
    with system.gateway.session_factory() as session:
        row = session.get(SecretRow, trade_id[2:])
        assert row is not None and len(row.encrypted_secret) > 64
        secret = system.ctx.cipher.decrypt(row.encrypted_secret)
    import hashlib

    assert "0x" + hashlib.sha256(secret).hexdigest() == r.json()["hashlock"]

    def phase() -> str:
        return client.get(f"/v1/trades/{trade_id}", headers=auth(buyer["api_key"])).json()["phase"]

    assert client.post(f"/v1/trades/{trade_id}/accept",
                       headers=auth(buyer["api_key"])).status_code == 200
    system.gateway.relayer.run_until(lambda: phase() == "delivery_locked", max_steps=10)
    assert secret.hex() not in _stored_text(system)  # payment and title locked: still secret

    assert client.post(f"/v1/trades/{trade_id}/take-delivery",
                       headers=auth(buyer["api_key"])).status_code == 200
    system.gateway.relayer.run_until(lambda: phase() == "settled", max_steps=10)
    with system.gateway.session_factory() as session:
        from sqlalchemy import select

        from gateway.db.models import InputRow

        logged = [r.payload for r in session.scalars(select(InputRow).where(
            InputRow.kind == "ActionTakeDelivery"))]
    assert logged and all(p.get("secret") is None for p in logged)  # the log never holds it
    assert _balance(system, seller["business_address"]) == seller_before + 777
