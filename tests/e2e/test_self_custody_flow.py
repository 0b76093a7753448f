"""Self-custody enterprises sign their own transactions from /instructions; the gateway
follows the chain and releases the payment when the buyer takes delivery."""

from __future__ import annotations

import uuid

import pytest

from gateway.chain.devnet import BUYER, SELLER
from gateway.domain.locks import hashlock_of, new_secret
from tests.e2e.conftest import auth, self_custody_parties


@pytest.fixture
def system(system_on_both_backends):  # noqa: ANN001, ANN201 - every test here, both backends
    return system_on_both_backends


def _sign_and_send(system, account, txs) -> None:  # noqa: ANN001
    for tx in txs:
        chain = system.devnet.payment if tx["chain"] == "payment" else system.devnet.business
        assert tx["chain_id"] == chain.chain_id
        receipt = chain.client.transact(account, to=tx["to"], data=tx["data"], gas=300_000)
        assert receipt.succeeded, tx["description"]


def test_self_custody_parties_follow_instructions_and_settle(system, client) -> None:
    d = system.devnet
    buyer_acct, seller_acct = d.account(BUYER), d.account(SELLER)
    buyer, buyer_key, seller, seller_key, token_id, doc = self_custody_parties(
        system, b"self-custody bill of lading")
    secret = new_secret()
    now = d.payment.latest_block_timestamp()
    body = {"role": "buyer", "counterparty": seller.id,
            "payment": {"token": d.info.payment.token, "amount": "250000"},
            "delivery": {"token_id": str(token_id), "document_hash": "0x" + doc.hex()},
            "deadlines": {"delivery": now + 3600, "payment": now + 7200},
            "hashlock": "0x" + hashlock_of(secret).hex()}
    r = client.post("/v1/trades", json=body,
                    headers={**auth(buyer_key), "Idempotency-Key": str(uuid.uuid4())})
    assert r.status_code == 201, r.text
    trade_id = r.json()["id"]
    assert client.post(f"/v1/trades/{trade_id}/accept", headers=auth(seller_key)).status_code \
        == 200
    buyer_before = d.payment_token.functions.balanceOf(buyer.payment_address).call()
    seller_before = d.payment_token.functions.balanceOf(seller.payment_address).call()
    relayer = system.gateway.relayer

    def phase() -> str:
        return client.get(f"/v1/trades/{trade_id}", headers=auth(buyer_key)).json()["phase"]

    step = client.get(f"/v1/trades/{trade_id}/instructions", headers=auth(buyer_key)).json()
    assert step["step"] == "lock_payment"
    _sign_and_send(system, buyer_acct, step["transactions"])
    relayer.run_until(lambda: phase() == "payment_locked", max_steps=5)

    assert client.get(f"/v1/trades/{trade_id}/instructions",
                      headers=auth(buyer_key)).json()["step"] == "wait"
    step = client.get(f"/v1/trades/{trade_id}/instructions", headers=auth(seller_key)).json()
    assert step["step"] == "lock_delivery"
    _sign_and_send(system, seller_acct, step["transactions"])
    relayer.run_until(lambda: phase() == "delivery_locked", max_steps=5)

    step = client.get(f"/v1/trades/{trade_id}/instructions", headers=auth(buyer_key)).json()
    assert step["step"] == "take_delivery"
    (claim,) = step["transactions"]
    claim["data"] = claim["data"][:-64] + secret.hex()  # the buyer puts its secret in
    _sign_and_send(system, buyer_acct, [claim])
    relayer.run_until(lambda: phase() == "settled", max_steps=5)

    assert d.payment_token.functions.balanceOf(buyer.payment_address).call() == \
        buyer_before - 250000
    assert d.payment_token.functions.balanceOf(seller.payment_address).call() == \
        seller_before + 250000
    assert d.titles.functions.ownerOf(token_id).call() == buyer.business_address
