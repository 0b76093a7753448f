"""Trust rule 1: the secret holder alone sets the hashlock (issue 10 §1).

The attack: a seller proposes to a self-custody buyer with `hashlock = sha256(s)` for a secret
`s` of its own, the buyer accepts and locks, the seller claims the payment with `s` itself and
never delivers. The gateway then showed the trade `delivered`, then `settled`.
"""

from __future__ import annotations

import uuid

import pytest

from gateway.chain.devnet import BUYER, SELLER
from gateway.config import Settings
from gateway.domain.locks import hashlock_of, new_secret
from gateway.domain.policy import TimingPolicy
from gateway.domain.trade import ActionProposeTrade, Phase, Terms
from gateway.runner import build_system
from tests.e2e.conftest import auth, self_custody_parties


@pytest.fixture
def system(tmp_path, database_url):  # noqa: ANN001, ANN201
    """The whole gateway, with a drift allowance so that a claim's lead time spans blocks."""
    system = build_system(Settings(_env_file=None), tmp_path / "run", database_url=database_url,
                          policy=TimingPolicy(payment_confirmations=0, business_confirmations=0,
                                              payment_block_time=1, business_block_time=1,
                                              reaction_budget=30, drift_allowance=5))
    yield system
    system.close()


@pytest.fixture
def parties(system):  # noqa: ANN001, ANN201
    d = system.devnet
    buyer, buyer_key, seller, seller_key, token_id, doc = self_custody_parties(
        system, b"bill of lading, hashlock owner test")
    now = d.payment.latest_block_timestamp()
    body = {"role": "seller", "counterparty": buyer.id,
            "payment": {"token": d.info.payment.token, "amount": "250000"},
            "delivery": {"token_id": str(token_id), "document_hash": "0x" + doc.hex()},
            "deadlines": {"delivery": now + 3600, "payment": now + 7200}}
    return buyer, buyer_key, seller, seller_key, body


def _propose(client, key: str, body: dict):  # noqa: ANN001, ANN202
    return client.post("/v1/trades", json=body,
                       headers={**auth(key), "Idempotency-Key": str(uuid.uuid4())})


def test_a_seller_cannot_set_the_hashlock_of_a_self_custody_buyer(client, parties) -> None:
    buyer, buyer_key, seller, seller_key, body = parties
    sellers_secret = new_secret()
    r = _propose(client, seller_key, {**body,
                                      "hashlock": "0x" + hashlock_of(sellers_secret).hex()})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert [e["field"] for e in r.json()["errors"]] == ["hashlock"]
    assert "only the buyer" in r.json()["detail"]


def test_the_buyer_gives_the_hashlock_when_it_accepts_a_sellers_proposal(
        client, parties) -> None:
    buyer, buyer_key, seller, seller_key, body = parties
    r = _propose(client, seller_key, body)
    assert r.status_code == 201, r.text
    trade = r.json()
    assert trade["hashlock"] is None and trade["phase"] == "proposed"
    trade_id = trade["id"]
    assert client.get(f"/v1/trades/{trade_id}/instructions",
                      headers=auth(buyer_key)).json()["step"] == "wait"
    # Accepting without it, or with a malformed one, is the buyer's error, and changes nothing.
    for bad in (None, {}, {"hashlock": "0x" + "00" * 32}, {"hashlock": "0x1234"}):
        r = client.post(f"/v1/trades/{trade_id}/accept", headers=auth(buyer_key), json=bad)
        assert r.status_code == 422, (bad, r.text)
        assert [e["field"] for e in r.json()["errors"]][-1].endswith("hashlock"), r.json()
    assert client.get(f"/v1/trades/{trade_id}", headers=auth(seller_key)).json()["phase"] == \
        "proposed"
    # Only the counterparty accepts: the seller cannot slip a hashlock in this way either.
    secret = new_secret()
    hashlock = "0x" + hashlock_of(secret).hex()
    r = client.post(f"/v1/trades/{trade_id}/accept", headers=auth(seller_key),
                    json={"hashlock": hashlock})
    assert r.status_code == 409
    r = client.post(f"/v1/trades/{trade_id}/accept", headers=auth(buyer_key),
                    json={"hashlock": hashlock})
    assert r.status_code == 200, r.text
    assert r.json()["phase"] == "agreed" and r.json()["hashlock"] == hashlock
    step = client.get(f"/v1/trades/{trade_id}/instructions", headers=auth(buyer_key)).json()
    assert step["step"] == "lock_payment"
    lock = step["transactions"][-1]["data"]
    assert hashlock[2:] in lock  # the payment locks under the buyer's own hashlock


def test_a_hashlock_given_at_proposal_cannot_be_replaced_at_accept(client, parties) -> None:
    buyer, buyer_key, seller, seller_key, body = parties
    r = _propose(client, buyer_key, {**body, "role": "buyer", "counterparty": seller.id,
                                     "hashlock": "0x" + hashlock_of(new_secret()).hex()})
    assert r.status_code == 201, r.text
    r = client.post(f"/v1/trades/{r.json()['id']}/accept", headers=auth(seller_key),
                    json={"hashlock": "0x" + hashlock_of(new_secret()).hex()})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "hashlock"


def test_a_seller_chosen_hashlock_from_before_the_rule_is_never_locked_against(
        system, client, parties) -> None:
    """A trade stored before this rule, proposed by the seller with its own hashlock: the buyer
    cannot accept it and is told not to lock; and if it pays anyway and the seller claims,
    the trade is `paid_without_delivery`, never `settled`."""
    from gateway.db.models import TradePartyRow

    buyer, buyer_key, seller, seller_key, body = parties
    d = system.devnet
    sellers_secret = new_secret()
    terms = Terms(buyer.payment_address, seller.payment_address, buyer.business_address,
                  seller.business_address, 250_000, int(body["delivery"]["token_id"]),
                  bytes.fromhex(body["delivery"]["document_hash"][2:]),
                  hashlock_of(sellers_secret), body["deadlines"]["delivery"],
                  body["deadlines"]["payment"])
    trade_id = new_secret()

    with system.gateway.dispatcher.unit() as unit:
        unit.propose(ActionProposeTrade(trade_id, terms))
        unit.session.add(TradePartyRow(trade_id=trade_id.hex(), buyer_id=buyer.id,
                                       seller_id=seller.id, proposer_id=seller.id,
                                       amount="250000"))
    tid = "0x" + trade_id.hex()
    r = client.post(f"/v1/trades/{tid}/accept", headers=auth(buyer_key))
    assert r.status_code == 409 and "seller chose" in r.json()["detail"]
    # Accepted anyway (e.g. before the upgrade): no lock_payment instructions for the buyer.
    from gateway.domain.trade import ActionAcceptTrade

    system.gateway.dispatcher.apply_action(ActionAcceptTrade(trade_id))
    step = client.get(f"/v1/trades/{tid}/instructions", headers=auth(buyer_key)).json()
    assert step["step"] == "wait" and not step["transactions"]
    assert "do not lock" in step["note"]
    # The buyer locks on its own; the seller claims with its own secret and never delivers.
    buyer_acct, seller_acct = d.account(BUYER), d.account(SELLER)
    seller_before = d.payment_token.functions.balanceOf(seller.payment_address).call()
    assert d.payment.client.transact(buyer_acct, to=d.payment_token.address, gas=100_000,
                                     data=d.payment_token.encode_abi(
                                         "approve", [d.payment_htlc.address, 250_000])).succeeded
    receipt, lock = d.payment_htlc.lock(buyer_acct, seller.payment_address, 250_000,
                                        terms.hashlock, terms.t_pay)
    assert receipt.succeeded
    assert d.payment_htlc.claim(seller_acct, lock, sellers_secret).succeeded
    assert d.payment_token.functions.balanceOf(seller.payment_address).call() == \
        seller_before + 250_000
    relayer = system.gateway.relayer

    def phase() -> str:
        return client.get(f"/v1/trades/{tid}", headers=auth(buyer_key)).json()["phase"]
    relayer.run_until(lambda: phase() == Phase.PAID_WITHOUT_DELIVERY.value, max_steps=10)
    for _ in range(3):
        relayer.step()
    assert phase() == "paid_without_delivery"
    assert d.titles.functions.ownerOf(terms.token_id).call() == seller.business_address
    metrics = client.get("/metrics").text
    assert 'dvp_trades{phase="paid_without_delivery"} 1.0' in metrics
    assert 'dvp_trades{phase="settled"} 1.0' not in metrics


def test_take_delivery_is_never_offered_when_the_claim_could_not_be_mined_in_time(
        system, client, parties) -> None:
    """Issue 10 §9: a claim that reverts still publishes the secret in its calldata. Judged by
    the node's latest block: inside the claim's lead time the instructions warn; once the next
    block cannot be before T_deliver they offer nothing."""
    buyer, buyer_key, seller, seller_key, body = parties
    d = system.devnet
    secret = new_secret()
    r = _propose(client, buyer_key, {**body, "role": "buyer", "counterparty": seller.id,
                                     "hashlock": "0x" + hashlock_of(secret).hex()})
    trade_id = r.json()["id"]
    assert client.post(f"/v1/trades/{trade_id}/accept",
                       headers=auth(seller_key)).status_code == 200
    relayer = system.gateway.relayer

    def sign(account, key: str) -> None:  # noqa: ANN001
        step = client.get(f"/v1/trades/{trade_id}/instructions", headers=auth(key)).json()
        for tx in step["transactions"]:
            chain = d.payment if tx["chain"] == "payment" else d.business
            assert chain.client.transact(account, to=tx["to"], data=tx["data"],
                                         gas=300_000).succeeded

    def phase() -> str:
        return client.get(f"/v1/trades/{trade_id}", headers=auth(buyer_key)).json()["phase"]
    sign(d.account(BUYER), buyer_key)
    relayer.run_until(lambda: phase() == "payment_locked", max_steps=5)
    sign(d.account(SELLER), seller_key)
    relayer.run_until(lambda: phase() == "delivery_locked", max_steps=5)
    t_deliver = body["deadlines"]["delivery"]
    d.business.set_next_block_timestamp(t_deliver - system.ctx.policy.delivery_claim_lead_time)
    d.business.mine()
    step = client.get(f"/v1/trades/{trade_id}/instructions", headers=auth(buyer_key)).json()
    assert step["step"] == "take_delivery" and step["note"].startswith("WARNING")
    d.business.set_next_block_timestamp(t_deliver - 1)
    d.business.mine()
    step = client.get(f"/v1/trades/{trade_id}/instructions", headers=auth(buyer_key)).json()
    assert step["step"] == "wait" and not step["transactions"]
    assert "too late" in step["note"]
