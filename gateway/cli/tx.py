"""`dvp-gateway take-delivery-tx`: the business-chain claim with which a self-custody buyer
takes delivery, checked, printed or sent."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from gateway import logs
from gateway.cli.common import _fail


@click.command("take-delivery-tx")
@click.option("--instructions", "instructions_file", required=True, type=click.File("r"),
              help="The JSON document GET /v1/trades/{id}/instructions returned at step "
                   "take_delivery (a file, or - for standard input).")
@click.option("--secret", help="Your 32-byte secret, 0x and 64 hex digits (its sha256 is the "
              "trade's hashlock). Prefer --secret-file: a command line is visible to others.")
@click.option("--secret-file", type=click.File("r"), help="A file holding the secret.")
@click.option("--rpc-url", help="The business chain's JSON-RPC node: check the chain id, the "
              "time left and the claim itself (eth_call) there before printing or sending.")
@click.option("--key-file", type=click.File("r"), help="With --send: a file holding your "
              "business-chain private key (0x and 64 hex digits).")
@click.option("--send", is_flag=True, help="Sign with --key-file, send through --rpc-url and "
              "wait for the receipt.")
def take_delivery_tx(instructions_file: Any, secret: str | None, secret_file: Any,
                     rpc_url: str | None, key_file: Any, send: bool) -> None:
    """Build the business-chain transaction with which a self-custody buyer takes delivery:
    claim(lock, secret) on the DeliveryHTLC. Checks sha256(secret) against the lock's hashlock
    before anything else (a claim with a wrong secret reverts, costs its fee and publishes
    the wrong secret only; one mined after T_deliver publishes the right one for nothing), and
    prints the transaction (chain_id, to, data) for your wallet, or sends it."""
    from gateway.chain.htlc import GAS_DELIVERY_EXIT

    if (secret is None) == (secret_file is None):
        _fail("give the secret with --secret or --secret-file (one of them)")
    if send and (rpc_url is None or key_file is None):
        _fail("--send needs --rpc-url and --key-file")
    if key_file is not None and not send:
        _fail("--key-file is only used with --send")
    preimage = _hex32(secret if secret is not None else secret_file.read(), "the secret")
    lock, tx = _claim_template(instructions_file)
    from gateway.chain.htlc import delivery_claim_calldata
    from gateway.domain.locks import hashlock_of

    if hashlock_of(preimage) != lock.hashlock:
        _fail(f"sha256 of this secret is 0x{hashlock_of(preimage).hex()}, not the trade's "
              f"hashlock 0x{lock.hashlock.hex()}: a claim with it would revert (and cost its "
              "fee). Check that this is the secret of trade 0x" + lock.trade_id.hex())
    data = delivery_claim_calldata(lock, preimage)
    out = {"chain": "business", "chain_id": tx["chain_id"], "to": tx["to"],
           "data": "0x" + data.hex(), "value": "0", "gas": GAS_DELIVERY_EXIT,
           "description": f"take delivery of title #{lock.token_id}: claim it with your "
                          f"secret before T_deliver {lock.timelock} (unix seconds, chain time)"}
    if rpc_url is None:
        click.echo(json.dumps(out, indent=2))
        click.echo("note: sending this publishes your secret, which releases your payment to "
                   f"the seller; it must be mined before T_deliver {lock.timelock}", err=True)
        return
    _send_claim(rpc_url, out, lock, key_file.read() if key_file is not None else None, send)


def _hex32(text: str, what: str) -> bytes:
    value = text.strip()
    body = value[2:] if value[:2] in ("0x", "0X") else value
    if len(body) != 64 or any(c not in "0123456789abcdefABCDEF" for c in body):
        _fail(f"{what} must be 32 bytes: 0x and 64 hex digits")  # never echo it
    return bytes.fromhex(body)


def _claim_template(instructions_file: Any):  # noqa: ANN202 - (DeliveryLock, tx dict)
    """The DeliveryHTLC claim in an instructions document, decoded: its lock and its tx."""
    from gateway.chain.accounts import is_address, to_checksum
    from gateway.chain.calls import decode_delivery_claim

    try:
        doc = json.load(instructions_file)
    except (ValueError, OSError) as exc:
        _fail(f"--instructions is not a JSON document: {exc}")
    if not isinstance(doc, dict) or not isinstance(doc.get("transactions"), list):
        _fail("--instructions is not an instructions document (GET "
              "/v1/trades/{id}/instructions): no transactions list")
    if doc.get("step") != "take_delivery":
        _fail(f"these instructions are for step {doc.get('step')!r}, not take_delivery"
              + (f": {doc['note']}" if doc.get("note") else ""))
    claims = [t for t in doc["transactions"] if isinstance(t, dict)
              and t.get("chain") == "business"]
    if len(claims) != 1 or len(doc["transactions"]) != 1:
        _fail("a take_delivery step has exactly one business-chain transaction; this one has "
              f"{len(doc['transactions'])}")
    (tx,) = claims
    try:
        data = bytes.fromhex(str(tx.get("data", "")).removeprefix("0x"))
        lock, placeholder = decode_delivery_claim(data)
        if not is_address(tx.get("to")) or not isinstance(tx.get("chain_id"), int):
            raise ValueError("no contract address or chain id")
    except Exception as exc:  # noqa: BLE001 - any malformed document
        _fail(f"the take_delivery transaction is not a DeliveryHTLC claim: {exc}")
    if len(placeholder) != 32:
        _fail("the take_delivery transaction's secret placeholder is not 32 bytes")
    return lock, {**tx, "to": to_checksum(tx["to"])}


def _send_claim(rpc_url: str, out: dict, lock, key_text: str | None,  # noqa: ANN001
                send: bool) -> None:
    """Check the claim against the node (chain id, time left, eth_call); send it if asked."""
    from gateway.chain.accounts import load_account
    from gateway.chain.client import http_client

    logs.keep_secret(logs.url_secrets(rpc_url))
    account = None
    if key_text is not None:
        try:
            account = load_account(_hex32(key_text, "the key in --key-file"))
        except ValueError:
            _fail("--key-file does not hold a valid private key")
    client = http_client(rpc_url, "business", out["chain_id"], timeout=30)
    now = _check_claim(client, rpc_url, out, lock,
                       account.address if account is not None else lock.buyer)
    if not send:
        click.echo(json.dumps(out, indent=2))
        click.echo(f"checked at {rpc_url}: the claim succeeds now (chain time {now}, T_deliver "
                   f"{lock.timelock}); sending it publishes your secret", err=True)
        return
    assert account is not None
    data = bytes.fromhex(out["data"][2:])
    try:
        raw = client.sign_with_nonce(account, to=out["to"], data=data, gas=out["gas"],
                                     nonce=client.pending_nonce(account.address),
                                     fees=client.suggest_fees())
        receipt = client.wait(client.send_raw(raw))
    except Exception as exc:  # noqa: BLE001
        _fail(f"sending the claim failed: {exc}")
    click.echo(json.dumps({**out, "tx_hash": "0x" + receipt.tx_hash.hex(),
                           "block_number": receipt.block_number,
                           "status": "succeeded" if receipt.succeeded else "reverted"},
                          indent=2))
    if not receipt.succeeded:
        sys.exit(1)


def _check_claim(client, rpc_url: str, out: dict, lock, sender: str) -> int:  # noqa: ANN001
    """The node's chain id, the time left before T_deliver, and the claim simulated from
    `sender` (eth_call): exit 2 on any of them; the chain time otherwise."""
    from gateway.contracts import load_artifact

    try:
        actual = client.node_chain_id()
        now = client.head()[0]
    except Exception as exc:  # noqa: BLE001
        _fail(f"the node at {rpc_url} is unreachable: {exc}")
    if actual != out["chain_id"]:
        _fail(f"the node at {rpc_url} is chain {actual}, the claim is for chain "
              f"{out['chain_id']}")
    if now + 1 >= lock.timelock:
        _fail(f"too late: the next block cannot be before T_deliver {lock.timelock} (chain "
              f"time {now}); do not send the claim: it would revert and still publish your "
              "secret. The title and your payment go back to their owners.")
    data = bytes.fromhex(out["data"][2:])
    try:
        revert = client.simulate(sender, out["to"], data, gas=out["gas"],
                                 abi=load_artifact("DeliveryHTLC").abi)
    except Exception as exc:  # noqa: BLE001
        _fail(f"cannot check the claim at {rpc_url}: {exc}")
    if revert is not None:
        _fail(f"the claim would revert on chain ({revert.name}{revert.values!r}); not sent")
    return now
