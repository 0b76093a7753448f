"""One trade id form everywhere an operator or a tenant sees one: `0x` and 64 lowercase hex
digits, in log lines, API responses, webhook bodies and error messages, so any of them can be
grepped for with what another one shows (the database keeps 64 hex digits without `0x`)."""

from __future__ import annotations

import json
import logging
import re
import socket
import uuid

import httpx
import pytest
import structlog
from fastapi.testclient import TestClient
from structlog.testing import capture_logs

from gateway.config import Settings
from gateway.domain.trade import (
    ActionCancelTrade,
    ContractReceivePaymentLocked,
    InvariantViolated,
)
from gateway.engine import dispatcher as dispatcher_module
from gateway.engine.unit import UnknownTrade
from gateway.engine.webhooks import WebhookSender
from gateway.logs import trade_ref
from gateway.runner import build_system
from tests.integration.harness import World

ONE_FORM = re.compile(r"0x[0-9a-f]{64}")
PUBLIC_IP = "93.184.216.34"


@pytest.fixture(autouse=True)
def every_log_level():  # noqa: ANN201
    """Log lines of every level reach `capture_logs`, whatever level an earlier test in this
    process configured (`dvp-gateway demo` keeps only errors)."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    yield
    structlog.configure(**saved)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _mentions(value: object, hex_id: str) -> list[str]:
    """Every string in `value` (nested) that contains the trade id's 64 hex digits, in any
    case, with or without `0x`, as it appears (with what surrounds it, up to a word end)."""
    found: list[str] = []
    if isinstance(value, dict):
        for v in value.values():
            found += _mentions(v, hex_id)
    elif isinstance(value, list | tuple | set | frozenset):
        for v in value:
            found += _mentions(v, hex_id)
    elif isinstance(value, bytes):
        if value.hex() == hex_id:
            found.append(f"raw bytes {value!r}")
    elif isinstance(value, str):
        for match in re.finditer(r"[0-9A-Za-z_]*" + hex_id + r"[0-9A-Za-z_]*", value,
                                 flags=re.IGNORECASE):
            start = match.start()
            found.append(value[max(0, start - 2):match.end()]
                         if value[max(0, start - 2):start].lower() == "0x" else match.group())
    return found


def test_one_trade_shows_one_id_form_in_logs_api_and_webhooks(tmp_path, database_url,
                                                               monkeypatch) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if isinstance(host, str) and host.endswith(".example"):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (PUBLIC_IP, port or 0))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    bodies: list[dict] = []

    def receive(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(204)

    system = build_system(Settings(_env_file=None), tmp_path / "run", database_url=database_url)
    try:
        demo = system.demo["enterprises"]
        buyer, seller = demo["buyer"], demo["seller"]
        client = TestClient(system.app, raise_server_exceptions=False)
        endpoints = {}
        for who in (buyer, seller):
            r = client.post("/v1/webhooks", json={"url": f"https://{who['id']}.example/hook"},
                            headers=_auth(who["api_key"]))
            assert r.status_code == 201, r.text
            endpoints[who["api_key"]] = r.json()["id"]
        webhooks = WebhookSender(system.gateway.session_factory, system.ctx.cipher,
                                 client=httpx.Client(transport=httpx.MockTransport(receive)))
        title = seller["titles"][0]
        now = system.devnet.payment.latest_block_timestamp()
        responses: list[dict] = []
        with capture_logs() as logs:
            r = client.post("/v1/trades", headers={**_auth(seller["api_key"]),
                                                   "Idempotency-Key": str(uuid.uuid4())},
                            json={"role": "seller", "counterparty": buyer["id"],
                                  "payment": {"token": system.devnet.info.payment.token,
                                              "amount": "123456"},
                                  "delivery": {"token_id": title["token_id"],
                                               "document_hash": title["document_hash"]},
                                  "deadlines": {"delivery": now + 3600, "payment": now + 7200}})
            assert r.status_code == 201, r.text
            responses.append(r.json())
            trade_id = r.json()["id"]
            # The same trade named in the URL as stored (no 0x) or in capitals: still it.
            for alias in (trade_id[2:], "0x" + trade_id[2:].upper()):
                r = client.get(f"/v1/trades/{alias}", headers=_auth(buyer["api_key"]))
                assert r.status_code == 200, r.text
                responses.append(r.json())
            r = client.post(f"/v1/trades/{trade_id}/accept", headers=_auth(buyer["api_key"]))
            assert r.status_code == 200, r.text
            responses.append(r.json())

            def phase() -> str:
                view = client.get(f"/v1/trades/{trade_id}", headers=_auth(buyer["api_key"]))
                responses.append(view.json())
                return view.json()["phase"]

            relayer = system.gateway.relayer
            relayer.run_until(lambda: phase() == "delivery_locked", max_steps=20)
            r = client.post(f"/v1/trades/{trade_id}/take-delivery",
                            headers=_auth(buyer["api_key"]))
            assert r.status_code == 200, r.text
            relayer.run_until(lambda: phase() == "settled", max_steps=20)
            for _ in range(10):
                if not webhooks.run_once():
                    break
            listed = client.get("/v1/trades", headers=_auth(seller["api_key"]))
            responses.append(listed.json())
            for key, endpoint in endpoints.items():
                sent = client.get(f"/v1/webhooks/{endpoint}/deliveries", headers=_auth(key))
                assert sent.status_code == 200, sent.text
                responses.append(sent.json())
    finally:
        system.close()

    assert ONE_FORM.fullmatch(trade_id), trade_id
    assert trade_id == trade_ref(trade_id[2:])
    hex_id = trade_id[2:]
    # Log lines: every one naming the trade names it in the one form. (An access line's
    # `path` is the request's, as the client wrote it: the aliases above are in it.)
    logs = [{k: v for k, v in e.items() if not (e["event"] == "http_request" and k == "path")}
            for e in logs]
    in_logs = [m for event in logs for m in _mentions(event, hex_id)]
    assert {e["event"] for e in logs if trade_id in (e.get("trade"), *e.get("trades", ()))} \
        >= {"trade_event"}, logs
    assert set(in_logs) == {trade_id}, [e for e in logs if _mentions(e, hex_id)]
    # API responses: the trade's id, wherever it appears (views, the list).
    assert {r["id"] for r in responses if "id" in r} == {trade_id}
    assert {d["trade_id"] for r in responses if "items" in r for d in r["items"]
            if "trade_id" in d} == {trade_id}
    assert set(m for r in responses for m in _mentions(r, hex_id)) == {trade_id}
    # Webhook bodies: both parties', every phase change of the trade.
    assert {b["new"] for b in bodies} >= {"proposed", "agreed", "settled"}
    assert {b["trade_id"] for b in bodies} == {trade_id}
    assert set(m for b in bodies for m in _mentions(b, hex_id)) == {trade_id}


def test_an_invariant_violation_log_line_names_the_trade_in_the_one_form(world: World,
                                                                         monkeypatch) -> None:
    """The critical line of a broken invariant (contained to its trade) is grepped for with
    the id the API and the webhooks show."""
    trade = world.agree()
    real = dispatcher_module.state_transition

    def broken(state, inp, policy):  # noqa: ANN001, ANN202
        if isinstance(inp, ContractReceivePaymentLocked) and state.trade_id == trade.trade_id:
            raise InvariantViolated("a test's broken invariant")
        return real(state, inp, policy)

    monkeypatch.setattr(dispatcher_module, "state_transition", broken)
    world.lock_payment(trade)
    with capture_logs() as logs:
        world.gateway.relayer.run_until(
            lambda: "invariant_violated:ContractReceivePaymentLocked" in world.state(trade).flags)
    lines = [e for e in logs if e["event"] == "invariant_violated"]
    assert lines, logs
    assert {e["trade"] for e in lines} == {"0x" + trade.trade_id.hex()}


def test_an_unknown_trade_is_named_in_the_one_form(world: World) -> None:
    missing = bytes(range(32))
    with pytest.raises(UnknownTrade) as raised:
        world.gateway.dispatcher.apply_action(ActionCancelTrade(missing))
    assert raised.value.args == ("0x" + missing.hex(),)


@pytest.mark.parametrize("given", [bytes(range(32)), bytes(range(32)).hex(),
                                   "0x" + bytes(range(32)).hex().upper(),
                                   "0X" + bytes(range(32)).hex()])
def test_trade_ref_is_the_one_form(given: bytes | str) -> None:
    assert trade_ref(given) == "0x" + bytes(range(32)).hex()


@pytest.mark.parametrize("given", [b"\x01" * 31, "ab" * 31, "0x" + "zz" * 32, "", "0x"])
def test_trade_ref_refuses_what_is_no_trade_id(given: bytes | str) -> None:
    with pytest.raises(ValueError, match="32-byte trade id"):
        trade_ref(given)
