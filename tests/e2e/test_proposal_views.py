"""A proposal's answer is the trade as a later GET shows it (the answer is built from what
the request wrote, not read back): single proposals by either role, a batch, and the replay
of each."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from gateway.runner import System
from tests.e2e.conftest import module_system


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> System:
    yield from module_system(tmp_path_factory, "proposal-views")


def _body(system: System, role: str, title: dict, amount: int) -> dict:
    ents = system.demo["enterprises"]
    now = max(system.ctx.payment.now(), system.ctx.business.now())
    return {"role": role, "counterparty": ents["buyer" if role == "seller" else "seller"]["id"],
            "payment": {"token": system.devnet.info.payment.token, "amount": str(amount)},
            "delivery": {"token_id": title["token_id"], "document_hash": title["document_hash"]},
            "deadlines": {"delivery": now + 3600, "payment": now + 7200}}


def _as_shown(client: TestClient, key: str, trade: dict) -> dict:
    shown = client.get(f"/v1/trades/{trade['id']}", headers={"Authorization": f"Bearer {key}"})
    assert shown.status_code == 200, shown.text
    return {k: v for k, v in shown.json().items() if k != "timeline"}


@pytest.mark.parametrize("role", ["seller", "buyer"])
def test_a_proposal_answers_the_trade_as_get_shows_it(system, client, role) -> None:  # noqa: ANN001
    ents = system.demo["enterprises"]
    key = ents[role]["api_key"]
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": str(uuid.uuid4())}
    body = _body(system, role, ents["seller"]["titles"][0], 1000 + len(role))
    made = client.post("/v1/trades", json=body, headers=headers)
    assert made.status_code == 201, made.text
    assert made.json().pop("timeline") is None  # a proposal's answer has no timeline
    assert {k: v for k, v in made.json().items() if k != "timeline"} == \
        _as_shown(client, key, made.json())
    assert made.json()["buyer"]["managed"] is True and made.json()["role"] == role
    again = client.post("/v1/trades", json=body, headers=headers)
    assert again.status_code == 201 and again.json() == made.json()


def test_a_batch_answers_each_trade_as_get_shows_it(system, client) -> None:  # noqa: ANN001
    ents = system.demo["enterprises"]
    key = ents["seller"]["api_key"]
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": str(uuid.uuid4())}
    titles = ents["seller"]["titles"]
    bodies = [_body(system, "seller", titles[i], 2000 + i) for i in range(min(3, len(titles)))]
    assert len(bodies) > 1
    made = client.post("/v1/trades/batch", json={"trades": bodies}, headers=headers)
    assert made.status_code == 201, made.text
    trades = made.json()["trades"]
    assert [t["payment"]["amount"] for t in trades] == [b["payment"]["amount"] for b in bodies]
    assert [{k: v for k, v in t.items() if k != "timeline"} for t in trades] == \
        [_as_shown(client, key, t) for t in trades]
    again = client.post("/v1/trades/batch", json={"trades": bodies}, headers=headers)
    assert again.status_code == 201 and again.json() == made.json()


def test_a_proposal_that_adopts_an_early_lock_shows_its_leg(system, client) -> None:  # noqa: ANN001
    """A self-custody buyer locked its payment before proposing (the relayer kept the lock
    with no trade): its proposal adopts the lock, and the answer shows the payment leg with
    the lock's transaction and block, as a later GET does."""
    from gateway.chain.devnet import BUYER
    from gateway.domain.locks import hashlock_of, new_secret
    from tests.e2e.conftest import self_custody_parties

    buyer, buyer_key, seller, _, token_id, doc = self_custody_parties(system, b"early lock")
    d, secret, amount = system.devnet, new_secret(), 3_000
    body = {**_body(system, "buyer", {"token_id": str(token_id),
                                      "document_hash": "0x" + doc.hex()}, amount),
            "counterparty": seller.id, "hashlock": "0x" + hashlock_of(secret).hex()}
    acct = d.account(BUYER)
    assert d.payment.client.transact(acct, to=d.payment_token.address, gas=100_000,
                                     data=d.payment_token.encode_abi(
                                         "approve", [d.payment_htlc.address, amount])).succeeded
    receipt, _ = d.payment_htlc.lock(acct, seller.payment_address, amount,
                                     hashlock_of(secret), body["deadlines"]["payment"])
    assert receipt.succeeded
    system.gateway.relayer.step()  # seen, kept for the trade that will name its hashlock
    made = client.post("/v1/trades", json=body, headers={
        "Authorization": f"Bearer {buyer_key}", "Idempotency-Key": str(uuid.uuid4())})
    assert made.status_code == 201, made.text
    leg = made.json()["legs"]["payment"]
    assert leg is not None and leg["tx_hash"] == "0x" + receipt.tx_hash.hex()
    assert leg["block_number"] == receipt.block_number
    assert {k: v for k, v in made.json().items() if k != "timeline"} == \
        _as_shown(client, buyer_key, made.json())
