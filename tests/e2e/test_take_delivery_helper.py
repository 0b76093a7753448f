"""`dvp-gateway take-delivery-tx`: a self-custody buyer turns the instructions the API gives
at step take_delivery, and its secret, into the claim that takes the title (and releases the
payment to the seller), checked against the hashlock before anything else."""

from __future__ import annotations

import json
import uuid

import pytest
from click.testing import CliRunner

from gateway.chain.devnet import BUYER, SELLER
from gateway.cli import main
from gateway.domain.locks import hashlock_of, new_secret
from tests.e2e.conftest import auth, self_custody_parties


@pytest.fixture
def system(system_on_both_backends):  # noqa: ANN001, ANN201 - both backends
    return system_on_both_backends


def _send(system, account, txs) -> None:  # noqa: ANN001
    for tx in txs:
        chain = system.devnet.payment if tx["chain"] == "payment" else system.devnet.business
        assert chain.client.transact(account, to=tx["to"], data=tx["data"],
                                     gas=300_000).succeeded, tx["description"]


def _to_take_delivery(system, client):  # noqa: ANN001, ANN202
    """A self-custody trade up to delivery_locked: (trade id, buyer key, secret, token id,
    buyer and seller enterprises)."""
    d = system.devnet
    buyer, buyer_key, seller, seller_key, token_id, doc = self_custody_parties(
        system, b"helper bill of lading")
    secret = new_secret()
    now = d.payment.latest_block_timestamp()
    r = client.post("/v1/trades", json={
        "role": "buyer", "counterparty": seller.id,
        "payment": {"token": d.info.payment.token, "amount": "4200"},
        "delivery": {"token_id": str(token_id), "document_hash": "0x" + doc.hex()},
        "deadlines": {"delivery": now + 3600, "payment": now + 7200},
        "hashlock": "0x" + hashlock_of(secret).hex()},
        headers={**auth(buyer_key), "Idempotency-Key": str(uuid.uuid4())})
    assert r.status_code == 201, r.text
    trade_id = r.json()["id"]
    assert client.post(f"/v1/trades/{trade_id}/accept",
                       headers=auth(seller_key)).status_code == 200
    relayer = system.gateway.relayer

    def phase() -> str:
        return client.get(f"/v1/trades/{trade_id}", headers=auth(buyer_key)).json()["phase"]

    step = client.get(f"/v1/trades/{trade_id}/instructions", headers=auth(buyer_key)).json()
    _send(system, d.account(BUYER), step["transactions"])
    relayer.run_until(lambda: phase() == "payment_locked", max_steps=5)
    step = client.get(f"/v1/trades/{trade_id}/instructions", headers=auth(seller_key)).json()
    _send(system, d.account(SELLER), step["transactions"])
    relayer.run_until(lambda: phase() == "delivery_locked", max_steps=5)
    return trade_id, buyer_key, secret, token_id, buyer, seller, phase


def _helper(instructions: dict, *args: str):  # noqa: ANN202
    return CliRunner().invoke(main, ["take-delivery-tx", "--instructions", "-", *args],
                              input=json.dumps(instructions))


def test_the_helpers_claim_takes_delivery_and_settles(system, client, tmp_path) -> None:
    d = system.devnet
    trade_id, buyer_key, secret, token_id, buyer, seller, phase = _to_take_delivery(system,
                                                                                    client)
    seller_before = d.payment_token.functions.balanceOf(seller.payment_address).call()
    instructions = client.get(f"/v1/trades/{trade_id}/instructions",
                              headers=auth(buyer_key)).json()
    assert instructions["step"] == "take_delivery"

    # a wrong secret is refused first of all: before the node (unreachable here) is asked
    result = _helper(instructions, "--secret", "0x" + new_secret().hex(),
                     "--rpc-url", "http://127.0.0.1:9")
    assert result.exit_code == 2, result.output
    assert f"not the trade's hashlock 0x{hashlock_of(secret).hex()}" in result.output
    assert "Traceback" not in result.output and "unreachable" not in result.output

    secret_file = tmp_path / "secret"
    secret_file.write_text("0x" + secret.hex() + "\n")
    result = _helper(instructions, "--secret-file", str(secret_file))
    assert result.exit_code == 0, result.output
    tx = json.loads(result.stdout)
    (template,) = instructions["transactions"]
    assert (tx["chain_id"], tx["to"]) == (d.business.chain_id, d.info.business.htlc)
    assert tx["data"] == template["data"][:-64] + secret.hex()  # what the note asks for
    assert d.titles.functions.ownerOf(token_id).call() != buyer.business_address

    if hasattr(d.business, "node"):  # a real node: the helper checks, signs and sends
        checked = _helper(instructions, "--secret-file", str(secret_file), "--rpc-url",
                          d.business.node.url)  # eth_call only: nothing sent
        assert checked.exit_code == 0, checked.output
        assert json.loads(checked.stdout) == tx and "the claim succeeds now" in checked.stderr
        assert d.titles.functions.ownerOf(token_id).call() != buyer.business_address
        key_file = tmp_path / "buyer.key"
        key_file.write_text("0x" + bytes(d.account(BUYER).key).hex())
        result = _helper(instructions, "--secret-file", str(secret_file), "--rpc-url",
                         d.business.node.url, "--key-file", str(key_file), "--send")
        assert result.exit_code == 0, result.output
        sent = json.loads(result.stdout)
        assert sent["status"] == "succeeded" and sent["data"] == tx["data"]
    else:  # the buyer's wallet signs what the helper printed
        assert d.business.client.transact(d.account(BUYER), to=tx["to"], data=tx["data"],
                                          gas=tx["gas"]).succeeded
    assert d.titles.functions.ownerOf(token_id).call() == buyer.business_address
    system.gateway.relayer.run_until(lambda: phase() == "settled", max_steps=5)
    assert d.payment_token.functions.balanceOf(seller.payment_address).call() == \
        seller_before + 4200


def test_instructions_of_another_step_are_refused(system, client) -> None:
    buyer, buyer_key, seller, seller_key, token_id, doc = self_custody_parties(
        system, b"another step")
    now = system.devnet.payment.latest_block_timestamp()
    secret = new_secret()
    r = client.post("/v1/trades", json={
        "role": "buyer", "counterparty": seller.id,
        "payment": {"token": system.devnet.info.payment.token, "amount": "10"},
        "delivery": {"token_id": str(token_id), "document_hash": "0x" + doc.hex()},
        "deadlines": {"delivery": now + 3600, "payment": now + 7200},
        "hashlock": "0x" + hashlock_of(secret).hex()},
        headers={**auth(buyer_key), "Idempotency-Key": str(uuid.uuid4())})
    assert r.status_code == 201, r.text
    instructions = client.get(f"/v1/trades/{r.json()['id']}/instructions",
                              headers=auth(buyer_key)).json()
    assert instructions["step"] != "take_delivery"
    result = _helper(instructions, "--secret", "0x" + secret.hex())
    assert result.exit_code == 2, result.output
    assert "not take_delivery" in result.output and "Traceback" not in result.output
    for bad in ("not json", json.dumps({"step": "take_delivery", "transactions": [
            {"chain": "business", "chain_id": 1, "to": "0x" + "11" * 20, "data": "0x1234"}]})):
        result = CliRunner().invoke(main, ["take-delivery-tx", "--instructions", "-",
                                           "--secret", "0x" + secret.hex()], input=bad)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
    result = _helper(instructions, "--secret", "0x1234")
    assert result.exit_code == 2 and "64 hex digits" in result.output
