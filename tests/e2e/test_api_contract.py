"""The HTTP contract a client relies on, endpoint by endpoint (in process, TestClient).

Errors are RFC 9457 problem details (`application/problem+json`) naming the offending field in
`errors[].field`; another tenant's trade does not exist for the caller (404, never 403);
writes are idempotent by `Idempotency-Key`. Tests marked `xfail(strict=True)` with a reason
starting "BUG:" show a defect of the gateway as it is now; they turn red once it is fixed, so
the mark can be removed.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest
from eth_account import Account
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from gateway.api.context import MAX_DEADLINE_AHEAD, ChainView, Limits
from gateway.api.enterprises import create_enterprise, list_keys, revoke_key, rotate_keys
from gateway.chain.devnet import ISSUER
from gateway.db.models import EnterpriseRow, TradePartyRow, TradeRow
from gateway.domain.locks import hashlock_of, new_secret
from gateway.runner import System
from tests.e2e.conftest import meet_in, module_system

PROBLEM = "application/problem+json"
NO_TRADE = "0x" + "ab" * 32


# --- helpers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Party:
    id: str
    key: str

    @property
    def h(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def idem(self, key: str | None = None) -> dict[str, str]:
        return {**self.h, "Idempotency-Key": key or str(uuid.uuid4())}


def demo(system: System) -> tuple[Party, Party]:
    """(managed buyer with money, managed seller with titles)."""
    ents = system.demo["enterprises"]
    return (Party(ents["buyer"]["id"], ents["buyer"]["api_key"]),
            Party(ents["seller"]["id"], ents["seller"]["api_key"]))


def managed(system: System, name: str = "Managed") -> Party:
    """A new managed enterprise (no funds: enough to propose, accept, cancel and list)."""
    with system.gateway.session_factory.begin() as session:
        ent, key = create_enterprise(session, f"{name} {uuid.uuid4()}", managed=True,
                                     cipher=system.ctx.cipher)
    return Party(ent.id, key)


def self_custody(system: System, name: str = "Self custody", address: str | None = None
                 ) -> Party:
    address = address or Account.create().address
    with system.gateway.session_factory.begin() as session:
        ent, key = create_enterprise(session, f"{name} {uuid.uuid4()}", managed=False,
                                     cipher=None, payment_address=address,
                                     business_address=address)
    return Party(ent.id, key)


def chain_now(system: System) -> int:
    return max(system.devnet.payment.latest_block_timestamp(),
               system.devnet.business.latest_block_timestamp())


_TITLES: dict[str, list[dict]] = {}  # titles issued to sellers other than the demo seller


def title_of(system: System, seller: Party | None, n: int) -> dict:
    """The seller's `n`th title (the gateway checks on chain that the seller holds it): the
    demo seller's, or for another seller one issued to it on first use."""
    ents = system.demo["enterprises"]
    if seller is None or seller.id == ents["seller"]["id"]:
        return ents["seller"]["titles"][n]
    titles = _TITLES.setdefault(seller.id, [])
    while len(titles) <= n:
        with system.gateway.session_factory() as session:
            row = session.get(EnterpriseRow, seller.id)
            assert row is not None
            holder = row.business_address
        d = system.devnet
        doc = hashlib.sha256(f"{seller.id} bill {len(titles)}".encode()).digest()
        assert d.business.client.transact(
            d.account(ISSUER), to=d.titles.address, gas=300_000,
            data=d.titles.encode_abi("issue", [holder, doc])).succeeded
        titles.append({"token_id": str(d.titles.functions.issuedCount().call()),
                       "document_hash": "0x" + doc.hex()})
    return titles[n]


def terms(system: System, counterparty: str, *, role: str = "seller", title: int = 0,
          amount: str = "123456", hashlock: str | None = None, delivery_in: int = 3600,
          payment_in: int = 7200, seller: Party | None = None) -> dict:
    doc = title_of(system, seller, title)
    now = chain_now(system)
    body = {"role": role, "counterparty": counterparty,
            "payment": {"token": system.devnet.info.payment.token, "amount": amount},
            "delivery": {"token_id": doc["token_id"], "document_hash": doc["document_hash"]},
            "deadlines": {"delivery": now + delivery_in, "payment": now + payment_in}}
    if hashlock is not None:
        body["hashlock"] = hashlock
    return body


def propose(client: TestClient, system: System, proposer: Party, counterparty: Party,
            **kw) -> dict:
    seller = proposer if kw.get("role", "seller") == "seller" else counterparty
    r = client.post("/v1/trades", json=terms(system, counterparty.id, seller=seller, **kw),
                    headers=proposer.idem())
    assert r.status_code == 201, r.text
    return r.json()


def problem(r, status: int, field: str | None = None) -> dict:
    """Assert an RFC 9457 problem response; returns its body."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].split(";")[0] == PROBLEM, r.headers["content-type"]
    body = r.json()
    assert body["status"] == status
    assert body["type"].startswith("https://") and body["title"] and body["detail"]
    if field is not None:
        fields = [e["field"] for e in body.get("errors", [])]
        assert field in fields, body
        assert all(e["message"] for e in body["errors"])
    return body


def phase_of(client: TestClient, party: Party, trade_id: str) -> str:
    r = client.get(f"/v1/trades/{trade_id}", headers=party.h)
    assert r.status_code == 200, r.text
    return r.json()["phase"]


def list_ids(client: TestClient, party: Party, **params) -> list[str]:
    r = client.get("/v1/trades", params={"limit": 100, **params}, headers=party.h)
    assert r.status_code == 200, r.text
    return [t["id"] for t in r.json()["items"]]


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> System:
    """One system for the tests that do not drive the relayer or need their own limits.
    Tests isolate themselves by tenancy (`pair`: two new enterprises whose trades no other
    test sees); the rate limit is out of the way."""
    yield from module_system(tmp_path_factory, "shared")


@pytest.fixture
def pair(system: System) -> tuple[Party, Party]:
    """(buyer, seller): two new managed enterprises of the shared system."""
    return managed(system, "Buyer"), managed(system, "Seller")


def fresh(make_system, **kw) -> tuple[System, TestClient]:  # noqa: ANN001
    system = make_system(**kw)
    return system, TestClient(system.app, raise_server_exceptions=False)


def spec_operations(app) -> list[tuple[str, str]]:  # noqa: ANN001
    """(method, concrete path) of every /v1 operation in the OpenAPI document."""
    fill = {"{trade_id}": NO_TRADE, "{endpoint_id}": str(uuid.uuid4())}
    out = []
    for path, ops in app.openapi()["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for placeholder, value in fill.items():
            path = path.replace(placeholder, value)
        assert "{" not in path, f"unfilled path parameter in {path}"
        out.extend((method.upper(), path) for method in ops)
    return out


# --- authentication -----------------------------------------------------------------------------


def test_every_v1_operation_needs_a_valid_key(system, client) -> None:
    operations = spec_operations(system.app)
    assert ("POST", "/v1/trades") in operations and len(operations) >= 9
    for method, path in operations:
        for headers in ({}, {"Authorization": "Bearer dvp_not-a-key"},
                        {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer "},
                        {"Authorization": system.demo["enterprises"]["buyer"]["api_key"]}):
            r = client.request(method, path, headers=headers)
            body = problem(r, 401)
            assert r.headers["www-authenticate"] == "Bearer", (method, path)
            assert body["type"].endswith("/unauthorized")
            assert system.demo["enterprises"]["buyer"]["api_key"] not in r.text


def test_revoked_and_rotated_keys_are_refused(system, client) -> None:
    buyer = managed(system)
    assert client.get("/v1/me", headers=buyer.h).status_code == 200
    with system.gateway.session_factory.begin() as session:
        (info,) = list_keys(session, buyer.id)
        revoke_key(session, info.id)
    problem(client.get("/v1/me", headers=buyer.h), 401)
    problem(client.get("/v1/trades", headers=buyer.h), 401)
    with system.gateway.session_factory.begin() as session:
        new_key = rotate_keys(session, buyer.id)
    r = client.get("/v1/me", headers={"Authorization": f"Bearer {new_key}"})
    assert r.status_code == 200 and r.json()["id"] == buyer.id
    problem(client.get("/v1/me", headers=buyer.h), 401)


def test_auth_scheme_is_case_insensitive(system, client) -> None:
    buyer, _ = demo(system)
    assert client.get("/v1/me", headers={"Authorization": f"bearer {buyer.key}"}
                      ).status_code == 200


def test_me_and_clock(system, client) -> None:
    buyer, seller = demo(system)
    me = client.get("/v1/me", headers=buyer.h).json()
    assert me["id"] == buyer.id and me["managed"] is True
    assert me["balances"]["payment_token"] == str(system.devnet.payment_token.functions
                                                  .balanceOf(me["payment_address"]).call())
    assert client.get("/v1/me", headers=seller.h).json()["balances"]["title_documents"] == 5
    clock = client.get("/v1/clock", headers=buyer.h).json()
    assert clock["chain_time"] == chain_now(system)
    assert clock["required_margin"] == system.ctx.policy.required_margin
    assert clock["max_ahead"] == MAX_DEADLINE_AHEAD


# --- tenancy ------------------------------------------------------------------------------------


def test_another_tenants_trade_does_not_exist_for_the_caller(system, client, pair) -> None:
    buyer, seller = pair
    outsider = managed(system, "Outsider")
    trade = propose(client, system, seller, buyer)
    tid = trade["id"]
    missing = problem(client.get(f"/v1/trades/{NO_TRADE}", headers=outsider.h), 404)
    for method, suffix in (("GET", ""), ("GET", "/instructions"), ("POST", "/accept"),
                           ("POST", "/cancel"), ("POST", "/take-delivery")):
        r = client.request(method, f"/v1/trades/{tid}{suffix}", headers=outsider.h)
        body = problem(r, 404)
        # indistinguishable from a trade that does not exist: no existence oracle
        assert {k: v for k, v in body.items() if k != "instance"} == \
            {k: v for k, v in missing.items() if k != "instance"}
        assert tid[2:] not in r.text.replace(body["instance"], "")
    for params in ({}, {"counterparty": seller.id}, {"counterparty": buyer.id},
                   {"phase": "proposed"}, {"role": "buyer"}, {"role": "seller"}):
        assert tid not in list_ids(client, outsider, **params)
    # nothing the outsider did touched the trade
    assert phase_of(client, buyer, tid) == "proposed"
    assert list_ids(client, seller) == [tid] and list_ids(client, buyer) == [tid]
    # and the parties still can act on it
    assert client.post(f"/v1/trades/{tid}/accept", headers=buyer.h).status_code == 200


def test_idempotency_keys_are_per_tenant(system, client) -> None:
    buyer, seller = demo(system)
    outsider = managed(system, "Outsider")
    key = "shared-key-1"
    body = terms(system, seller.id, role="buyer")  # the title is the seller's, whoever buys
    first = client.post("/v1/trades", json=body, headers=buyer.idem(key))
    assert first.status_code == 201
    # the outsider's identical request with the same key is its own, new trade
    other = client.post("/v1/trades", json=body, headers=outsider.idem(key))
    assert other.status_code == 201, other.text
    assert other.json()["id"] != first.json()["id"]
    assert other.json()["buyer"]["enterprise_id"] == outsider.id
    problem(client.get(f"/v1/trades/{first.json()['id']}", headers=outsider.h), 404)


# --- validation of proposals ---------------------------------------------------------------------


def test_unknown_fields_are_rejected(system, client) -> None:
    buyer, seller = demo(system)
    body = terms(system, buyer.id)
    problem(client.post("/v1/trades", json={**body, "price": "1"}, headers=seller.idem()),
            422, "price")
    body["payment"]["decimals"] = 2
    problem(client.post("/v1/trades", json=body, headers=seller.idem()), 422,
            "payment.decimals")
    body = terms(system, buyer.id)
    body["deadlines"]["grace"] = 1
    problem(client.post("/v1/trades", json=body, headers=seller.idem()), 422,
            "deadlines.grace")


def test_malformed_bodies_are_problems(system, client) -> None:
    buyer, seller = demo(system)
    for content in (b"{not json", b"[]", b"null", b'"x"'):
        problem(client.post("/v1/trades", content=content,
                            headers={**seller.idem(), "Content-Type": "application/json"}), 422)
    body = terms(system, buyer.id)
    del body["payment"]
    problem(client.post("/v1/trades", json=body, headers=seller.idem()), 422, "payment")
    problem(client.post("/v1/trades", json={**terms(system, buyer.id), "role": "broker"},
                        headers=seller.idem()), 422, "role")


@pytest.mark.parametrize("token", ["0x1234", "not-an-address", "0x" + "g" * 40, "",
                                   "0x" + "ab" * 21])
def test_bad_addresses_are_rejected(system, client, token) -> None:
    buyer, seller = demo(system)
    body = terms(system, buyer.id)
    body["payment"]["token"] = token
    problem(client.post("/v1/trades", json=body, headers=seller.idem()), 422, "payment.token")


def test_wrong_payment_token_is_rejected(system, client) -> None:
    buyer, seller = demo(system)
    body = terms(system, buyer.id)
    body["payment"]["token"] = Account.create().address  # an address, not the token
    err = problem(client.post("/v1/trades", json=body, headers=seller.idem()), 422,
                  "payment.token")
    assert system.devnet.info.payment.token in err["detail"]
    # a lower-case spelling of the right token is the right token
    body["payment"]["token"] = system.devnet.info.payment.token.lower()
    assert client.post("/v1/trades", json=body, headers=seller.idem()).status_code == 201


@pytest.mark.parametrize("amount", ["12.5", "1e6", "-5", "+5", "0x10", " 5", "5 ", "", "abc",
                                    "0", "000", str(2**256), str(2**256 + 1), "9" * 81, 5, 5.0,
                                    None])
def test_amount_must_be_a_positive_uint256_decimal_string(system, client, amount) -> None:
    buyer, seller = demo(system)
    body = terms(system, buyer.id)
    body["payment"]["amount"] = amount
    problem(client.post("/v1/trades", json=body, headers=seller.idem()), 422, "payment.amount")


def test_amount_boundaries_are_accepted_by_validation(system, client) -> None:
    buyer, seller = demo(system)
    t = propose(client, system, seller, buyer, amount="1")
    assert t["payment"]["amount"] == "1"
    # 2**256 - 1 is a valid amount: it fails the exposure cap (409), not validation (422)
    body = terms(system, buyer.id, amount=str(2**256 - 1))
    r = client.post("/v1/trades", json=body, headers=seller.idem())
    assert problem(r, 409, "payment.amount")["type"].endswith("/exposure-cap")


@pytest.mark.parametrize("hashlock", ["0x1234", "0x" + "ab" * 31, "0x" + "ab" * 33,
                                      "ab" * 31, "0x" + "zz" * 32, "0x" + "00" * 32, "", 12])
def test_hashlock_must_be_32_bytes(system, client, hashlock) -> None:
    buyer = self_custody(system)
    _, seller = demo(system)
    body = terms(system, buyer.id, hashlock=hashlock)
    problem(client.post("/v1/trades", json=body, headers=seller.idem()), 422, "hashlock")


def test_only_the_buyer_gives_the_hashlock(system, client) -> None:
    buyer, seller = demo(system)
    lock = "0x" + hashlock_of(new_secret()).hex()
    err = problem(client.post("/v1/trades", json=terms(system, buyer.id, hashlock=lock),
                              headers=seller.idem()), 422, "hashlock")
    assert "omit" in err["detail"]
    # A seller never supplies the hashlock of a self-custody buyer (trust rule 1) ...
    sc_buyer = self_custody(system)
    err = problem(client.post("/v1/trades", json=terms(system, sc_buyer.id, hashlock=lock),
                              headers=seller.idem()), 422, "hashlock")
    assert "only the buyer" in err["detail"]
    # ... its proposal carries none, and the buyer gives it when it accepts.
    proposal = client.post("/v1/trades", json=terms(system, sc_buyer.id), headers=seller.idem())
    assert proposal.status_code == 201 and proposal.json()["hashlock"] is None
    # the self-custody buyer proposing itself must give it
    sc_seller = self_custody(system)
    problem(client.post("/v1/trades", json=terms(system, sc_seller.id, role="buyer",
                                                 seller=sc_seller),
                        headers=sc_buyer.idem()), 422, "hashlock")
    ok = client.post("/v1/trades", json=terms(system, seller.id, role="buyer", seller=seller,
                                              hashlock=lock.upper().replace("0X", "0x")),
                     headers=sc_buyer.idem())
    assert ok.status_code == 201, ok.text
    assert ok.json()["hashlock"] == lock


def test_a_hashlock_serves_one_trade_only(system, client) -> None:
    sc_buyer = self_custody(system)
    _, seller = demo(system)
    lock = "0x" + hashlock_of(new_secret()).hex()
    propose(client, system, sc_buyer, seller, role="buyer", hashlock=lock)
    r = client.post("/v1/trades", json=terms(system, seller.id, role="buyer", seller=seller,
                                             hashlock=lock, title=1), headers=sc_buyer.idem())
    assert problem(r, 409, "hashlock")["type"].endswith("/hashlock-reused")
    # the same at accept: the buyer gives a hashlock another trade uses
    trade = propose(client, system, seller, sc_buyer, title=2)
    r = client.post(f"/v1/trades/{trade['id']}/accept", json={"hashlock": lock},
                    headers=sc_buyer.h)
    assert problem(r, 409, "hashlock")["type"].endswith("/hashlock-reused")
    assert client.get(f"/v1/trades/{trade['id']}", headers=seller.h).json()["phase"] == \
        "proposed"


def test_deadlines_must_be_in_the_chain_future(system, client) -> None:
    buyer, seller = demo(system)
    for delivery_in, payment_in, field in ((-10, 3600, "deadlines.delivery"),
                                           (0, 3600, "deadlines.delivery"),
                                           (-7200, -3600, "deadlines.delivery")):
        body = terms(system, buyer.id, delivery_in=delivery_in, payment_in=payment_in)
        err = problem(client.post("/v1/trades", json=body, headers=seller.idem()), 422, field)
        assert "future" in err["detail"] and "chain time" in err["detail"]
    body = terms(system, buyer.id)
    body["deadlines"]["delivery"] = -1
    problem(client.post("/v1/trades", json=body, headers=seller.idem()), 422,
            "deadlines.delivery")
    body["deadlines"]["delivery"] = 2**63
    problem(client.post("/v1/trades", json=body, headers=seller.idem()), 422,
            "deadlines.delivery")
    body["deadlines"]["delivery"] = "soon"
    problem(client.post("/v1/trades", json=body, headers=seller.idem()), 422,
            "deadlines.delivery")


def test_deadlines_at_most_30_days_ahead(system, client) -> None:
    buyer, seller = demo(system)
    month = 30 * 24 * 3600
    body = terms(system, buyer.id, delivery_in=month - 3600, payment_in=month + 60)
    err = problem(client.post("/v1/trades", json=body, headers=seller.idem()), 422,
                  "deadlines.payment")
    assert str(MAX_DEADLINE_AHEAD) in err["detail"]
    body = terms(system, buyer.id, delivery_in=month + 10, payment_in=month + 3600)
    problem(client.post("/v1/trades", json=body, headers=seller.idem()), 422,
            "deadlines.delivery")
    # the last allowed second is allowed (chain time does not move without a block)
    body = terms(system, buyer.id, delivery_in=month - 3600, payment_in=month)
    assert client.post("/v1/trades", json=body, headers=seller.idem()).status_code == 201


def test_margin_below_the_minimum_is_rejected_with_the_minimum_stated(system, client) -> None:
    buyer, seller = demo(system)
    minimum = system.ctx.policy.required_margin
    for margin in (minimum - 1, 0, -600):
        body = terms(system, buyer.id, delivery_in=3600, payment_in=3600 + margin)
        err = problem(client.post("/v1/trades", json=body, headers=seller.idem()), 422)
        assert f"{minimum} s" in err["detail"] and f"is {margin} s" in err["detail"]
        assert [e["message"] for e in err["errors"]] == [err["detail"]]
    t = propose(client, system, seller, buyer, delivery_in=3600, payment_in=3600 + minimum)
    assert t["margin"] == minimum and t["required_margin"] == minimum


def test_margin_problem_names_the_request_field(system, client) -> None:
    buyer, seller = demo(system)
    body = terms(system, buyer.id, delivery_in=3600, payment_in=3601)
    problem(client.post("/v1/trades", json=body, headers=seller.idem()), 422,
            "deadlines.payment")


def test_counterparty_must_be_another_existing_enterprise(system, client) -> None:
    buyer, seller = demo(system)
    for counterparty in (str(uuid.uuid4()), seller.id, "x", "Demo Buyer"):
        body = terms(system, counterparty)
        problem(client.post("/v1/trades", json=body, headers=seller.idem()), 422,
                "counterparty")
    problem(client.post("/v1/trades", json=terms(system, ""), headers=seller.idem()), 422,
            "counterparty")


def test_bad_document_hash_and_token_id(system, client) -> None:
    buyer, seller = demo(system)
    body = terms(system, buyer.id)
    body["delivery"]["document_hash"] = "0x1234"
    problem(client.post("/v1/trades", json=body, headers=seller.idem()), 422,
            "delivery.document_hash")
    body = terms(system, buyer.id)
    body["delivery"]["token_id"] = "-1"
    problem(client.post("/v1/trades", json=body, headers=seller.idem()), 422,
            "delivery.token_id")


# --- transitions ----------------------------------------------------------------------------------


def test_accept_twice_and_accept_by_the_proposer_conflict(system, client) -> None:
    buyer, seller = demo(system)
    tid = propose(client, system, seller, buyer)["id"]
    err = problem(client.post(f"/v1/trades/{tid}/accept", headers=seller.h), 409)
    assert "counterparty" in err["detail"]
    r = client.post(f"/v1/trades/{tid}/accept", headers=buyer.h)
    assert r.status_code == 200 and r.json()["phase"] == "agreed"
    err = problem(client.post(f"/v1/trades/{tid}/accept", headers=buyer.h), 409)
    assert err["type"].endswith("/invalid-transition") and "agreed" in err["detail"]
    # a buyer that proposes cannot accept either; the seller can
    tid = propose(client, system, buyer, seller, role="buyer", title=1)["id"]
    problem(client.post(f"/v1/trades/{tid}/accept", headers=buyer.h), 409)
    assert client.post(f"/v1/trades/{tid}/accept", headers=seller.h).json()["phase"] == "agreed"


def test_managed_trade_cancel_before_any_lock(system, client) -> None:
    buyer, seller = demo(system)
    for canceller in (seller, buyer):  # the proposer withdraws, the counterparty declines
        tid = propose(client, system, seller, buyer)["id"]
        r = client.post(f"/v1/trades/{tid}/cancel", headers=canceller.h)
        assert r.status_code == 200, r.text
        assert r.json()["phase"] == "cancelled"
        assert phase_of(client, buyer, tid) == "cancelled"
        problem(client.post(f"/v1/trades/{tid}/cancel", headers=canceller.h), 409)
        problem(client.post(f"/v1/trades/{tid}/accept", headers=buyer.h), 409)
    assert system.devnet.payment_token.functions.balanceOf(
        system.demo["enterprises"]["buyer"]["payment_address"]).call() == 10_000_000_00


def test_managed_trade_cannot_be_cancelled_once_its_lock_is_queued(system, client) -> None:
    """Documented choice of the state machine: after acceptance the gateway owes a managed
    buyer's payment lock (pending effect) and the trade can no longer be cancelled, even
    before the lock is mined; an agreed self-custody trade (nothing owed) can be."""
    buyer, seller = demo(system)
    tid = propose(client, system, seller, buyer)["id"]
    assert client.post(f"/v1/trades/{tid}/accept", headers=buyer.h).json()["pending"] == \
        ["payment_lock"]
    problem(client.post(f"/v1/trades/{tid}/cancel", headers=seller.h), 409)
    sc_buyer = self_custody(system)
    lock = "0x" + hashlock_of(new_secret()).hex()
    tid = propose(client, system, seller, sc_buyer, title=1)["id"]
    assert client.post(f"/v1/trades/{tid}/accept", headers=sc_buyer.h,
                       json={"hashlock": lock}).status_code == 200
    r = client.post(f"/v1/trades/{tid}/cancel", headers=seller.h)
    assert r.status_code == 200 and r.json()["phase"] == "cancelled"


def test_cancel_after_a_lock_and_take_delivery_by_a_seller_conflict(make_system) -> None:
    system, client = fresh(make_system)
    buyer, seller = demo(system)
    tid = propose(client, system, seller, buyer)["id"]
    problem(client.post(f"/v1/trades/{tid}/take-delivery", headers=seller.h), 409)
    problem(client.post(f"/v1/trades/{tid}/take-delivery", headers=buyer.h), 409)  # too early
    assert client.post(f"/v1/trades/{tid}/accept", headers=buyer.h).status_code == 200
    system.gateway.relayer.run_until(lambda: phase_of(client, buyer, tid) == "payment_locked",
                                     max_steps=10)
    for who in (buyer, seller):
        err = problem(client.post(f"/v1/trades/{tid}/cancel", headers=who.h), 409)
        assert "payment_locked" in err["detail"]
    err = problem(client.post(f"/v1/trades/{tid}/take-delivery", headers=seller.h), 409)
    assert "managed buyer" in err["detail"]
    system.gateway.relayer.run_until(lambda: phase_of(client, buyer, tid) == "delivery_locked",
                                     max_steps=10)
    problem(client.post(f"/v1/trades/{tid}/take-delivery", headers=seller.h), 409)
    problem(client.post(f"/v1/trades/{tid}/cancel", headers=seller.h), 409)
    r = client.post(f"/v1/trades/{tid}/take-delivery", headers=buyer.h)
    assert r.status_code == 200 and "take_delivery" in r.json()["flags"]


def test_unknown_and_malformed_trade_ids_are_404(system, client) -> None:
    buyer, _ = demo(system)
    for tid in (NO_TRADE, NO_TRADE[2:], "0x12", "not-hex", "0x" + "ab" * 33):
        for method, suffix in (("GET", ""), ("GET", "/instructions"), ("POST", "/accept"),
                               ("POST", "/cancel"), ("POST", "/take-delivery")):
            problem(client.request(method, f"/v1/trades/{tid}{suffix}", headers=buyer.h), 404)


def test_unknown_routes_and_methods_are_problems(system, client) -> None:
    buyer, _ = demo(system)
    problem(client.get("/v1/nothing", headers=buyer.h), 404)
    r = client.delete(f"/v1/trades/{NO_TRADE}", headers=buyer.h)
    problem(r, 405)
    assert r.headers["allow"] == "GET"
    problem(client.delete("/v1/trades", headers=buyer.h), 405)


def test_405_allow_names_every_method(system, client) -> None:
    buyer, _ = demo(system)
    r = client.delete("/v1/trades", headers=buyer.h)
    problem(r, 405)
    assert {m.strip() for m in r.headers["allow"].split(",")} == {"GET", "POST"}


def test_action_routes_do_only_their_own_action(system, client) -> None:
    buyer, seller = demo(system)
    tid = propose(client, system, seller, buyer)["id"]
    r = client.post(f"/v1/trades/{tid}/accept", params={"_action": "cancel"}, headers=buyer.h)
    assert phase_of(client, buyer, tid) != "cancelled"
    assert r.status_code == 200 and r.json()["phase"] == "agreed"


def test_action_routes_ignore_unknown_query_parameters(system, client) -> None:
    buyer, seller = demo(system)
    tid = propose(client, system, seller, buyer)["id"]
    r = client.post(f"/v1/trades/{tid}/cancel", params={"_action": "x"}, headers=seller.h)
    assert r.status_code == 200, r.text


def test_action_operations_have_no_query_parameters(system) -> None:
    paths = system.app.openapi()["paths"]
    for action in ("accept", "cancel", "take-delivery"):
        params = paths[f"/v1/trades/{{trade_id}}/{action}"]["post"].get("parameters", [])
        assert [p["name"] for p in params if p["in"] == "query"] == []


# --- idempotency ----------------------------------------------------------------------------------


def test_idempotency_key_replays_the_first_response(system, client, pair) -> None:
    buyer, seller = pair
    body = terms(system, buyer.id, seller=seller)
    first = client.post("/v1/trades", json=body, headers=seller.idem("k-1"))
    assert first.status_code == 201
    again = client.post("/v1/trades", json=body, headers=seller.idem("k-1"))
    assert again.status_code == first.status_code
    assert again.json() == first.json()
    # the same request in another spelling (the token address in lower case) is the same one
    body2 = {**body, "payment": {**body["payment"], "token": body["payment"]["token"].lower()}}
    assert client.post("/v1/trades", json=body2, headers=seller.idem("k-1")).json()["id"] == \
        first.json()["id"]
    assert list_ids(client, seller) == [first.json()["id"]]
    # a replay is the stored response, even after the trade moved on
    client.post(f"/v1/trades/{first.json()['id']}/cancel", headers=seller.h)
    assert client.post("/v1/trades", json=body, headers=seller.idem("k-1")).json() == \
        first.json()


def test_idempotency_key_with_a_different_body_is_422(system, client, pair) -> None:
    buyer, seller = pair
    body = terms(system, buyer.id, seller=seller)
    assert client.post("/v1/trades", json=body, headers=seller.idem("k-2")).status_code == 201
    other = {**body, "payment": {**body["payment"], "amount": "654321"}}
    err = problem(client.post("/v1/trades", json=other, headers=seller.idem("k-2")), 422,
                  "Idempotency-Key")
    assert err["type"].endswith("/idempotency-key-reused")
    assert len(list_ids(client, seller)) == 1


def test_idempotency_key_is_required(system, client, pair) -> None:
    buyer, seller = pair
    body = terms(system, buyer.id)
    problem(client.post("/v1/trades", json=body, headers=seller.h), 422, "idempotency-key")
    problem(client.post("/v1/trades", json=body, headers={**seller.h, "Idempotency-Key": ""}),
            422, "idempotency-key")
    problem(client.post("/v1/trades", json=body, headers=seller.idem("k" * 201)), 422,
            "idempotency-key")
    assert list_ids(client, seller) == []


def test_a_refused_request_does_not_use_up_its_key(system, client) -> None:
    buyer, seller = demo(system)
    bad = terms(system, str(uuid.uuid4()))
    problem(client.post("/v1/trades", json=bad, headers=seller.idem("k-3")), 422)
    good = terms(system, buyer.id)
    assert client.post("/v1/trades", json=good, headers=seller.idem("k-3")).status_code == 201


def test_concurrent_requests_with_one_idempotency_key_make_one_trade(system, client,
                                                                    pair) -> None:
    buyer, seller = pair
    body = terms(system, buyer.id, seller=seller)
    # Make the race certain rather than likely: each request waits before its writing
    # transaction (after its replay check) until the other has got there too.
    responses = meet_in(system.ctx.dispatcher, "unit", timeout=2).race(
        lambda: client.post("/v1/trades", json=body, headers=seller.idem("k-race")))
    # a replay (201) or a "still in progress" conflict (409) are both fine; a 500 is not
    assert all(r.status_code in (201, 409) for r in responses), [r.text for r in responses]
    assert len({r.json()["id"] for r in responses if r.status_code == 201}) == 1
    assert len(list_ids(client, seller)) == 1


# --- listing --------------------------------------------------------------------------------------


def _spread_creation_times(system: System, trade_ids: list[str], start: datetime) -> None:
    """Give trades distinct creation days (SQLite's clock has a 1 s resolution)."""
    with system.gateway.session_factory.begin() as session:
        for n, tid in enumerate(trade_ids):
            session.execute(update(TradePartyRow).where(TradePartyRow.trade_id == tid[2:])
                            .values(created_at=start + timedelta(days=n)))


def test_list_filters(system, client, pair) -> None:
    buyer, seller = pair
    outsider = managed(system, "Outsider")
    t1 = propose(client, system, seller, buyer)["id"]
    t2 = propose(client, system, seller, buyer, title=1)["id"]
    client.post(f"/v1/trades/{t2}/accept", headers=buyer.h)
    t3 = propose(client, system, seller, buyer, title=2)["id"]
    client.post(f"/v1/trades/{t3}/cancel", headers=seller.h)
    t4 = propose(client, system, buyer, seller, role="buyer", title=3)["id"]
    t5 = propose(client, system, seller, outsider, role="buyer", title=4)["id"]
    t6 = propose(client, system, outsider, buyer)["id"]  # not the seller's
    ids = [t1, t2, t3, t4, t5]
    _spread_creation_times(system, [*ids, t6], datetime(2030, 1, 1, 12))

    assert list_ids(client, seller) == ids[::-1]  # newest first
    assert set(list_ids(client, seller, phase="proposed")) == {t1, t4, t5}
    assert list_ids(client, seller, phase="agreed") == [t2]
    assert list_ids(client, seller, phase="cancelled") == [t3]
    assert list_ids(client, seller, phase="settled") == []
    assert list_ids(client, seller, role="buyer") == [t5]
    assert set(list_ids(client, seller, role="seller")) == {t1, t2, t3, t4}
    assert list_ids(client, seller, counterparty=outsider.id) == [t5]
    assert set(list_ids(client, seller, counterparty=buyer.id)) == {t1, t2, t3, t4}
    assert list_ids(client, seller, counterparty=str(uuid.uuid4())) == []
    assert set(list_ids(client, seller, role="seller", phase="proposed")) == {t1, t4}
    assert set(list_ids(client, buyer)) == {t1, t2, t3, t4, t6}
    # created range: [from, to)
    assert set(list_ids(client, seller, created_from="2030-01-02T00:00:00")) == {t2, t3, t4, t5}
    assert set(list_ids(client, seller, created_to="2030-01-03T00:00:00")) == {t1, t2}
    assert set(list_ids(client, seller, created_from="2030-01-02T00:00:00Z",
                        created_to="2030-01-04T00:00:00Z")) == {t2, t3}
    assert list_ids(client, seller, created_from="2030-01-04T00:00:00",
                    created_to="2030-01-02T00:00:00") == []
    assert list_ids(client, seller, created_from="2031-01-01T00:00:00") == []
    # the roles in the items are the caller's
    r = client.get("/v1/trades", params={"counterparty": outsider.id}, headers=seller.h).json()
    assert r["items"][0]["role"] == "buyer" and r["items"][0]["timeline"] is None


@pytest.mark.parametrize("params", [{"phase": "done"}, {"role": "broker"}, {"limit": 0},
                                    {"limit": 101}, {"limit": "x"}, {"created_from": "yesterday"},
                                    {"created_to": "2030-13-01"}, {"counterparty": "x" * 65},
                                    {"cursor": "not-a-cursor"}, {"cursor": "x" * 501},
                                    {"cursor": base64.urlsafe_b64encode(b"2030|x|y").decode()}])
def test_list_rejects_bad_filters(system, client, params) -> None:
    _, seller = demo(system)
    (field,) = params
    problem(client.get("/v1/trades", params=params, headers=seller.h), 422, field)


def test_page_size_limit_is_enforced(system, client, pair) -> None:
    buyer, seller = pair
    for n in range(3):
        propose(client, system, seller, buyer, title=n)
    assert len(client.get("/v1/trades", params={"limit": 100}, headers=seller.h)
               .json()["items"]) == 3
    problem(client.get("/v1/trades", params={"limit": 101}, headers=seller.h), 422, "limit")
    page = client.get("/v1/trades", params={"limit": 1}, headers=seller.h).json()
    assert len(page["items"]) == 1 and page["next_cursor"]


def test_configured_page_size_limit_is_enforced(make_system) -> None:
    system, client = fresh(make_system, limits=Limits(max_page_size=5))
    _, seller = demo(system)
    assert client.get("/v1/trades", params={"limit": 5}, headers=seller.h).status_code == 200
    problem(client.get("/v1/trades", params={"limit": 6}, headers=seller.h), 422, "limit")


def _all_pages(client: TestClient, party: Party, limit: int, max_pages: int,
               **params) -> list[str]:
    seen: list[str] = []
    cursor = None
    for _ in range(max_pages):
        page = client.get("/v1/trades", params={"limit": limit, **params,
                                                **({"cursor": cursor} if cursor else {})},
                          headers=party.h)
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["items"]) <= limit
        seen += [t["id"] for t in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError(f"still paging after {max_pages} pages: {len(seen)} items, "
                         f"{len(set(seen))} distinct")


def test_cursor_pagination_walks_distinct_creation_times(system, client, pair) -> None:
    """Every trade exactly once, newest first, when creation times are distinct."""
    buyer, seller = pair
    ids = [propose(client, system, seller, buyer, title=n % 5, amount=str(1000 + n))["id"]
           for n in range(11)]
    _spread_creation_times(system, ids, datetime(2030, 1, 1, 12))
    for limit in (1, 3, 5, 11, 50):
        assert _all_pages(client, seller, limit, max_pages=20) == ids[::-1]
    # a cursor keeps the filters it was walked with
    client.post(f"/v1/trades/{ids[0]}/cancel", headers=seller.h)
    client.post(f"/v1/trades/{ids[5]}/cancel", headers=seller.h)
    assert _all_pages(client, seller, 1, 20, phase="cancelled") == [ids[5], ids[0]]


def test_cursor_pagination_returns_every_trade_exactly_once(system, client, pair) -> None:
    buyer, seller = pair
    ids = [propose(client, system, seller, buyer, title=n % 5, amount=str(1000 + n))["id"]
           for n in range(7)]
    seen = _all_pages(client, seller, 3, max_pages=10)
    assert sorted(seen) == sorted(ids)


def test_created_range_bounds_at_a_trades_own_creation_time(system, client, pair) -> None:
    buyer, seller = pair
    trade = propose(client, system, seller, buyer)
    assert list_ids(client, seller, created_from=trade["created_at"]) == [trade["id"]]
    assert list_ids(client, seller, created_to=trade["created_at"]) == []


def test_created_range_honours_utc_offsets(system, client, pair) -> None:
    buyer, seller = pair
    trade = propose(client, system, seller, buyer)
    created = datetime.fromisoformat(trade["created_at"]).replace(tzinfo=UTC)
    before = created - timedelta(seconds=1)
    assert list_ids(client, seller, created_from=before.isoformat()) == [trade["id"]]
    plus_two = before.astimezone(timezone(timedelta(hours=2))).isoformat()
    assert list_ids(client, seller, created_from=plus_two) == [trade["id"]]


def test_created_at_carries_its_timezone(system, client) -> None:
    buyer, seller = demo(system)
    trade = propose(client, system, seller, buyer)
    assert datetime.fromisoformat(trade["created_at"]).utcoffset() == timedelta(0)


# --- limits ---------------------------------------------------------------------------------------


def test_body_size_limit(system, client) -> None:
    _, seller = demo(system)
    limit = system.ctx.limits.max_body_bytes
    r = client.post("/v1/trades", content=b" " * (limit + 1),
                    headers={**seller.idem(), "Content-Type": "application/json"})
    assert str(limit) in problem(r, 413)["detail"]
    r = client.post("/v1/trades", content=b" " * limit,
                    headers={**seller.idem(), "Content-Type": "application/json"})
    problem(r, 422)  # at the limit the body is read (and is not JSON)
    # checked before authentication: no key needed to be refused
    problem(client.post("/v1/trades", content=b"x" * (limit + 1)), 413)


def test_body_size_limit_applies_to_chunked_bodies(system, client) -> None:
    _, seller = demo(system)
    limit = system.ctx.limits.max_body_bytes

    def chunks():  # noqa: ANN202
        yield b'{"role": "seller", '
        for _ in range(4):
            yield b" " * limit
        yield b'"x": 1}'

    r = client.post("/v1/trades", content=chunks(),
                    headers={**seller.idem(), "Content-Type": "application/json"})
    problem(r, 413)


def test_rate_limit(make_system) -> None:
    system, client = fresh(make_system, limits=Limits(rate_per_second=0.01, burst=3,
                                                      client_rate_per_second=100,
                                                      client_burst=100))
    buyer, seller = demo(system)
    for _ in range(3):
        assert client.get("/v1/me", headers=buyer.h).status_code == 200
    r = client.get("/v1/trades", headers=buyer.h)
    body = problem(r, 429)
    assert body["type"].endswith("/rate-limited")
    retry = int(r.headers["retry-after"])
    assert 1 <= retry <= 101  # one token at 0.01/s: at most 100 s away
    problem(client.post("/v1/trades", json=terms(system, seller.id), headers=buyer.idem()), 429)
    # per tenant: the seller has its own bucket; health is not rate limited, and bad keys
    # only by the client address's bucket (tests/e2e/test_rate_limits.py)
    assert client.get("/v1/me", headers=seller.h).status_code == 200
    assert client.get("/healthz").status_code == 200
    problem(client.get("/v1/me", headers={"Authorization": "Bearer nope"}), 401)


def test_exposure_cap(make_system) -> None:
    system, client = fresh(make_system, limits=Limits(exposure_cap=500_000))
    buyer, seller = demo(system)
    # what the buyer proposes itself counts against its cap
    first = propose(client, system, buyer, seller, role="buyer", amount="300000")
    r = client.post("/v1/trades", json=terms(system, seller.id, role="buyer", amount="200001",
                                             title=1), headers=buyer.idem())
    err = problem(r, 409, "payment.amount")
    assert err["type"].endswith("/exposure-cap") and "500000" in err["detail"]
    propose(client, system, buyer, seller, role="buyer", amount="200000", title=1)  # at the cap
    # a seller's proposal commits the buyer to nothing until it accepts (otherwise any tenant
    # could fill a buyer's cap: tests/e2e/test_tenant_isolation.py); its accept is capped
    offer = propose(client, system, seller, buyer, amount="1", title=2)
    err = problem(client.post(f"/v1/trades/{offer['id']}/accept", headers=buyer.h), 409,
                  "payment.amount")
    assert err["type"].endswith("/exposure-cap")
    # a cancelled trade no longer counts
    assert client.post(f"/v1/trades/{first['id']}/cancel", headers=buyer.h).status_code == 200
    r = client.post(f"/v1/trades/{offer['id']}/accept", headers=buyer.h)
    assert r.status_code == 200 and r.json()["phase"] == "agreed", r.text
    # the cap is the buyer's: the seller as a buyer elsewhere is not affected
    outsider = managed(system, "Outsider")
    propose(client, system, seller, outsider, role="buyer", amount="500000", title=3)


# --- operations -----------------------------------------------------------------------------------


def test_healthz_and_readyz(system, client, monkeypatch) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    ready = r.json()
    assert ready["ready"] is True
    assert ready["checks"] == {"database": "ok", "payment_chain": "ok", "business_chain": "ok"}
    assert set(ready["relayer_lag_blocks"]) == {"payment", "business"}

    class Down:
        chain_id = 0

        def block_number(self) -> int:
            raise ConnectionError("node unreachable")

    stub = Down()
    monkeypatch.setattr(system.ctx, "business", ChainView(stub, "0x0", "0x0"))  # type: ignore
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["ready"] is False
    assert r.json()["checks"]["business_chain"] == "down: ConnectionError"
    assert r.json()["checks"]["payment_chain"] == "ok"


def test_metrics(make_system) -> None:
    system, client = fresh(make_system)
    buyer, seller = demo(system)
    propose(client, system, seller, buyer)
    t = propose(client, system, seller, buyer, title=1)
    client.post(f"/v1/trades/{t['id']}/cancel", headers=seller.h)
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    lines = r.text.splitlines()
    assert "# TYPE dvp_trades gauge" in lines
    assert 'dvp_trades{phase="proposed"} 1.0' in lines
    assert 'dvp_trades{phase="cancelled"} 1.0' in lines
    assert any(line.startswith("dvp_outbox_depth ") for line in lines)
    assert 'dvp_trades_near_deadline_without_progress{deadline="delivery"} 0.0' in lines
    assert 'dvp_outbox_pending{chain="payment"} 0.0' in lines
    assert any(line.startswith("dvp_http_requests_total{") and 'route="/v1/trades"' in line
               for line in lines)
    # what the metric says is what the database holds
    with system.gateway.session_factory() as session:
        assert len(session.scalars(select(TradeRow.id)).all()) == 2


def test_deadline_alert_counts_an_idle_trade_by_the_chains_time(make_system) -> None:
    """An agreed trade whose buyer never locks: nothing about it changes as time passes, so
    its stored clocks stay where they were. The alert still fires once the business chain is
    within the horizon of T_deliver, because it is judged by the chains' times."""
    system, client = fresh(make_system, limits=Limits(ops_cache_seconds=0))  # fresh scrapes
    _, seller = demo(system)
    buyer = self_custody(system, "Idle buyer")
    t = propose(client, system, seller, buyer)
    assert client.post(f"/v1/trades/{t['id']}/accept", headers=buyer.h,
                       json={"hashlock": "ab" * 32}).status_code == 200

    def alert() -> str:
        return next(line for line in client.get("/metrics").text.splitlines()
                    if line.startswith('dvp_trades_near_deadline_without_progress{'
                                       'deadline="delivery"}'))

    system.gateway.relayer.step()
    assert alert().endswith(" 0.0")
    business = system.devnet.business
    business.set_next_block_timestamp(t["deadlines"]["delivery"] - 100)
    business.mine()
    system.gateway.relayer.step()
    assert alert().endswith(" 1.0")
    assert client.get(f"/v1/trades/{t['id']}", headers=buyer.h).json()["phase"] == "agreed"


def test_metrics_show_pending_effects_and_their_age(make_system) -> None:
    """An accepted trade of a managed buyer waits for its payment lock: the outbox gauge per
    chain counts it and the age of the oldest pending effect grows until the relayer acts."""
    import re

    system, client = fresh(make_system, limits=Limits(ops_cache_seconds=0))  # fresh scrapes
    buyer, seller = demo(system)
    tid = propose(client, system, seller, buyer)["id"]
    assert client.post(f"/v1/trades/{tid}/accept", headers=buyer.h).status_code == 200

    def gauge(name: str, chain: str) -> float:
        line = next(line for line in client.get("/metrics").text.splitlines()
                    if line.startswith(f'{name}{{chain="{chain}"}}'))
        return float(re.split(r"\s+", line)[-1])

    assert gauge("dvp_outbox_pending", "payment") >= 1  # the approval-backed payment lock
    assert gauge("dvp_outbox_pending", "business") == 0
    first = gauge("dvp_outbox_oldest_pending_seconds", "payment")
    assert first > 0
    system.gateway.relayer.run_until(
        lambda: gauge("dvp_outbox_pending", "payment") == 0, max_steps=10)
    assert gauge("dvp_outbox_oldest_pending_seconds", "payment") == 0
