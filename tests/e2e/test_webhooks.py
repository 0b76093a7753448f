"""Webhooks: phase changes of a trade reach its parties' endpoints, signed, in order, retried
with backoff, exactly once across a restarted sender, and never another tenant's."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select

from gateway.api.enterprises import create_enterprise
from gateway.db.models import TradeEventRow
from gateway.engine.crashpoints import SimulatedCrash
from gateway.engine.webhooks import WebhookSender
from tests.e2e.conftest import auth

T0 = datetime(2030, 1, 1, tzinfo=UTC)
OUTSIDER_ADDRESS = "0x" + "11" * 20
PUBLIC_IP = "93.184.216.34"  # what every *.example receiver resolves to in these tests


@pytest.fixture(autouse=True)
def public_dns(monkeypatch) -> None:
    """The receivers' names resolve to a public address (the sender resolves them at every
    delivery, and connects to that address: see test_webhook_egress.py)."""
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if isinstance(host, str) and host.endswith(".example"):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (PUBLIC_IP, port or 0))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


class Receiver:
    """An httpx MockTransport handler: checks each request's signature, records its body
    under the URL it was registered with (the request goes to the checked address, with the
    registered host in `Host`)."""

    def __init__(self, fail_first: int = 0, crash_first: bool = False) -> None:
        self.secrets: dict[str, str] = {}  # url -> secret
        self.received: dict[str, list[dict]] = {}
        self.fail_first, self.crash_first = fail_first, crash_first
        self.requests = 0
        self.bad_signatures = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.crash_first and self.requests == 1:
            raise SimulatedCrash("killed while posting")
        assert request.url.host == PUBLIC_IP, request.url  # the address that was checked
        url = f"{request.url.scheme}://{request.headers['Host']}{request.url.raw_path.decode()}"
        body = request.content
        timestamp = request.headers["X-DVP-Timestamp"]
        expected = hmac.new(self.secrets[url].encode(), f"{timestamp}.".encode() + body,
                            hashlib.sha256).hexdigest()
        if request.headers["X-DVP-Signature"] != f"sha256={expected}" or \
                request.headers["Content-Type"] != "application/json":
            self.bad_signatures += 1
            return httpx.Response(401)
        if self.requests <= self.fail_first:
            return httpx.Response(500)
        self.received.setdefault(url, []).append({**json.loads(body), "_ts": int(timestamp)})
        return httpx.Response(204)

    def phases(self, url: str) -> list[tuple[str | None, str]]:
        return [(b["old"], b["new"]) for b in self.received.get(url, [])]


def sender(system, receiver: Receiver, **kw) -> WebhookSender:
    client = httpx.Client(transport=httpx.MockTransport(receiver.handle))
    return WebhookSender(system.gateway.session_factory, system.ctx.cipher, client=client, **kw)


def register(client, receiver: Receiver, key: str, url: str) -> dict:
    r = client.post("/v1/webhooks", json={"url": url}, headers=auth(key))
    assert r.status_code == 201, r.text
    endpoint = r.json()
    assert endpoint["url"] == url and endpoint["active"] and endpoint["secret"]
    receiver.secrets[url] = endpoint["secret"]
    return endpoint


def deliveries(client, key: str, endpoint_id: str, **params) -> dict:
    r = client.get(f"/v1/webhooks/{endpoint_id}/deliveries", params=params, headers=auth(key))
    assert r.status_code == 200, r.text
    return r.json()


def propose_and_accept(system, client) -> str:
    demo = system.demo["enterprises"]
    buyer, seller = demo["buyer"], demo["seller"]
    title = seller["titles"][0]
    now = system.devnet.payment.latest_block_timestamp()
    body = {"role": "seller", "counterparty": buyer["id"],
            "payment": {"token": system.devnet.info.payment.token, "amount": "123456"},
            "delivery": {"token_id": title["token_id"], "document_hash": title["document_hash"]},
            "deadlines": {"delivery": now + 3600, "payment": now + 7200}}
    r = client.post("/v1/trades", json=body,
                    headers={**auth(seller["api_key"]), "Idempotency-Key": str(uuid.uuid4())})
    assert r.status_code == 201, r.text
    trade_id = r.json()["id"]
    r = client.post(f"/v1/trades/{trade_id}/accept", headers=auth(buyer["api_key"]))
    assert r.status_code == 200, r.text
    return trade_id


def phase_changes(system) -> list[tuple[str | None, str]]:
    with system.gateway.session_factory() as session:
        rows = session.scalars(select(TradeEventRow).where(
            TradeEventRow.kind == "EventPhaseChanged").order_by(TradeEventRow.id))
        return [(r.payload["old"], r.payload["new"]) for r in rows]


@pytest.fixture
def keys(system) -> dict[str, str]:
    demo = system.demo["enterprises"]
    with system.gateway.session_factory.begin() as session:
        _, outsider = create_enterprise(session, "Outsider", managed=False, cipher=None,
                                        payment_address=OUTSIDER_ADDRESS,
                                        business_address=OUTSIDER_ADDRESS)
    return {"buyer": demo["buyer"]["api_key"], "seller": demo["seller"]["api_key"],
            "outsider": outsider}


def test_every_phase_change_reaches_both_parties_signed_and_in_order(system, client,
                                                                      keys) -> None:
    receiver = Receiver()
    urls = {who: f"https://{who}.example/dvp/hook" for who in keys}
    endpoints = {who: register(client, receiver, keys[who], urls[who]) for who in keys}
    webhooks = sender(system, receiver)

    trade_id = propose_and_accept(system, client)
    assert webhooks.run_once(T0) == 4  # proposed and agreed, to the buyer and to the seller
    buyer_key = keys["buyer"]

    def phase() -> str:
        return client.get(f"/v1/trades/{trade_id}", headers=auth(buyer_key)).json()["phase"]

    relayer = system.gateway.relayer
    relayer.run_until(lambda: phase() == "delivery_locked", max_steps=10)
    r = client.post(f"/v1/trades/{trade_id}/take-delivery", headers=auth(buyer_key))
    assert r.status_code == 200, r.text
    relayer.run_until(lambda: phase() == "settled", max_steps=10)
    later = T0 + timedelta(seconds=30)
    sent = webhooks.run_once(later)
    assert webhooks.run_once(later + timedelta(hours=2)) == 0  # nothing left over

    expected = phase_changes(system)
    assert expected[0] == (None, "proposed") and expected[-1][1] == "settled"
    assert sent == 2 * (len(expected) - 2)
    for who in ("buyer", "seller"):
        assert receiver.phases(urls[who]) == expected
        bodies = receiver.received[urls[who]]
        assert {b["trade_id"] for b in bodies} == {trade_id}
        assert {b["type"] for b in bodies} == {"trade.phase_changed"}
        assert len({b["id"] for b in bodies}) == len(expected)  # one delivery per change
        assert {b["_ts"] for b in bodies} == {int(T0.timestamp()), int(later.timestamp())}
        assert all(datetime.fromisoformat(b["created_at"]).tzinfo for b in bodies)
    assert urls["outsider"] not in receiver.received
    assert receiver.bad_signatures == 0

    # The deliveries list: newest first, all delivered, paged by cursor.
    page = deliveries(client, buyer_key, endpoints["buyer"]["id"])
    assert [(d["old"], d["new"]) for d in page["items"]] == expected[::-1]
    assert {d["status"] for d in page["items"]} == {"delivered"}
    assert all(d["attempts"] == 1 and d["last_status_code"] == 204 for d in page["items"])
    assert [d["id"] for d in page["items"]] == [b["id"] for b in
                                               receiver.received[urls["buyer"]]][::-1]
    first = deliveries(client, buyer_key, endpoints["buyer"]["id"], limit=2)
    rest = deliveries(client, buyer_key, endpoints["buyer"]["id"], limit=100,
                      cursor=first["next_cursor"])
    assert [d["id"] for d in first["items"] + rest["items"]] == \
        [d["id"] for d in page["items"]] and rest["next_cursor"] is None
    assert deliveries(client, keys["outsider"], endpoints["outsider"]["id"])["items"] == []

    # Another tenant's endpoint does not exist for the caller.
    other = endpoints["buyer"]["id"]
    for method, path in (("GET", f"/v1/webhooks/{other}/deliveries"),
                         ("DELETE", f"/v1/webhooks/{other}")):
        r = client.request(method, path, headers=auth(keys["outsider"]))
        assert r.status_code == 404, r.text
        assert r.headers["content-type"] == "application/problem+json"
    listed = client.get("/v1/webhooks", headers=auth(keys["outsider"])).json()["items"]
    assert [e["id"] for e in listed] == [endpoints["outsider"]["id"]]
    assert "secret" not in listed[0]


def test_a_failing_receiver_is_retried_with_backoff(system, client, keys) -> None:
    receiver = Receiver(fail_first=2)
    url = "https://buyer.example/hook"
    endpoint = register(client, receiver, keys["buyer"], url)
    webhooks = sender(system, receiver)
    propose_and_accept(system, client)

    def at(seconds: float) -> int:
        return webhooks.run_once(T0 + timedelta(seconds=seconds))

    assert at(0) == 1  # the first event fails; the second waits behind it (order kept)
    oldest, newest = deliveries(client, keys["buyer"], endpoint["id"])["items"][::-1]
    assert (oldest["status"], oldest["attempts"], oldest["last_status_code"]) == \
        ("pending", 1, 500)
    assert oldest["last_error"] == "HTTP 500"
    assert datetime.fromisoformat(oldest["next_attempt_at"]) == T0 + timedelta(seconds=5)
    assert (newest["status"], newest["attempts"]) == ("pending", 0)

    assert at(4.9) == 0  # backoff respected
    assert at(5) == 1  # second attempt, fails again: now 10 s
    assert at(14.9) == 0
    assert receiver.received == {}
    assert at(15) == 2  # third attempt succeeds, then the next event follows
    assert receiver.phases(url) == [(None, "proposed"), ("proposed", "agreed")]

    newest, oldest = deliveries(client, keys["buyer"], endpoint["id"])["items"]
    assert (oldest["status"], oldest["attempts"], oldest["last_status_code"]) == \
        ("delivered", 3, 204)
    assert oldest["last_error"] is None and oldest["next_attempt_at"] is None
    assert datetime.fromisoformat(oldest["delivered_at"]) == T0 + timedelta(seconds=15)
    assert (newest["status"], newest["attempts"]) == ("delivered", 1)
    assert at(3600) == 0


def test_retries_back_off_exponentially_then_give_up(system, client, keys) -> None:
    receiver = Receiver(fail_first=10**6)
    endpoint = register(client, receiver, keys["buyer"], "https://buyer.example/hook")
    webhooks = sender(system, receiver, max_attempts=3)
    assert [webhooks.backoff(n).total_seconds() for n in (1, 2, 3, 10, 11, 30)] == \
        [5, 10, 20, 2560, 3600, 3600]
    propose_and_accept(system, client)
    for seconds in (0, 5, 15):
        assert webhooks.run_once(T0 + timedelta(seconds=seconds)) == 1
    items = deliveries(client, keys["buyer"], endpoint["id"], status="failed")["items"]
    assert [(d["new"], d["attempts"]) for d in items] == [("proposed", 3)]
    # The failed event no longer holds back the next one.
    assert webhooks.run_once(T0 + timedelta(seconds=15)) == 1
    page = deliveries(client, keys["buyer"], endpoint["id"], status="pending")
    assert [(d["new"], d["attempts"]) for d in page["items"]] == [("agreed", 1)]


def test_a_sender_killed_after_fan_out_delivers_exactly_once(system, client, keys) -> None:
    receiver = Receiver()
    url = "https://seller.example/hook"
    endpoint = register(client, receiver, keys["seller"], url)
    propose_and_accept(system, client)

    assert sender(system, receiver).fan_out(T0) == 2  # committed, then the process dies
    assert receiver.requests == 0
    fresh = sender(system, receiver)
    assert fresh.run_once(T0) == 2
    assert fresh.run_once(T0 + timedelta(hours=2)) == 0
    assert sender(system, receiver).run_once(T0 + timedelta(hours=3)) == 0
    assert receiver.phases(url) == [(None, "proposed"), ("proposed", "agreed")]
    assert len({b["id"] for b in receiver.received[url]}) == 2
    items = deliveries(client, keys["seller"], endpoint["id"])["items"]
    assert [d["status"] for d in items] == ["delivered", "delivered"]


def test_a_sender_killed_while_posting_resends_after_its_lease(system, client, keys) -> None:
    receiver = Receiver(crash_first=True)
    url = "https://seller.example/hook"
    register(client, receiver, keys["seller"], url)
    propose_and_accept(system, client)

    with pytest.raises(SimulatedCrash):
        sender(system, receiver, lease=60).run_once(T0)
    fresh = sender(system, receiver, lease=60)
    assert fresh.run_once(T0 + timedelta(seconds=59)) == 0  # still claimed by the dead one
    assert fresh.run_once(T0 + timedelta(seconds=60)) == 2
    assert receiver.phases(url) == [(None, "proposed"), ("proposed", "agreed")]


def test_a_disabled_endpoint_gets_nothing_more(system, client, keys) -> None:
    receiver = Receiver()
    url = "https://buyer.example/hook"
    endpoint = register(client, receiver, keys["buyer"], url)
    propose_and_accept(system, client)
    sender(system, receiver).fan_out(T0)

    r = client.delete(f"/v1/webhooks/{endpoint['id']}", headers=auth(keys["buyer"]))
    assert r.status_code == 204, r.text
    assert client.delete(f"/v1/webhooks/{endpoint['id']}",
                         headers=auth(keys["buyer"])).status_code == 204
    listed = client.get("/v1/webhooks", headers=auth(keys["buyer"])).json()["items"]
    assert [(e["id"], e["active"]) for e in listed] == [(endpoint["id"], False)]
    assert listed[0]["disabled_at"] is not None
    assert sender(system, receiver).run_once(T0) == 0
    items = deliveries(client, keys["buyer"], endpoint["id"])["items"]
    assert [(d["status"], d["last_error"]) for d in items] == [("failed", "endpoint disabled")] * 2


def _problem(r: httpx.Response, status: int, field: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in r.json()["errors"]], r.json()


def test_bad_input_is_a_problem_naming_the_field(system, client, keys) -> None:
    headers = auth(keys["buyer"])

    def post(body: dict) -> httpx.Response:
        return client.post("/v1/webhooks", json=body, headers=headers)

    _problem(post({"url": "ftp://files.example/hook"}), 422, "url")
    _problem(post({"url": "https://ok.example/hook", "events": ["all"]}), 422, "events")
    _problem(post({}), 422, "url")
    _problem(post({"url": "https://a.example/" + "x" * 2048}), 422, "url")
    _problem(post({"url": "https://"}), 422, "url")
    _problem(post({"url": "https://user:pw@a.example/hook"}), 422, "url")
    for internal in ("http://127.0.0.1:8000/hook", "http://localhost/hook",
                     "http://10.1.2.3/hook", "http://169.254.169.254/latest",
                     "http://[::1]/hook", "http://2130706433/hook", "http://127.1/hook",
                     "http://0x7f.0.0.1/hook", "http://[::ffff:127.0.0.1]/hook"):
        _problem(post({"url": internal}), 422, "url")
    assert client.get("/v1/webhooks", headers=headers).json()["items"] == []

    r = post({"url": "https://ok.example/hook"})
    assert r.status_code == 201 and r.headers["Cache-Control"] == "no-store"
    endpoint = r.json()
    _problem(client.get(f"/v1/webhooks/{endpoint['id']}/deliveries",
                        params={"cursor": "nope"}, headers=headers), 422, "cursor")
    _problem(client.get(f"/v1/webhooks/{endpoint['id']}/deliveries",
                        params={"limit": 0}, headers=headers), 422, "limit")
    r = client.get("/v1/webhooks/not-an-endpoint/deliveries", headers=headers)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert client.get("/v1/webhooks").status_code == 401

    cipher, system.ctx.cipher = system.ctx.cipher, None
    try:
        _problem(post({"url": "https://ok.example/other"}), 422, "secret")
    finally:
        system.ctx.cipher = cipher
