"""Tenants cannot hurt each other, and two API details (in process, TestClient).

- A buyer's exposure cap counts only what the buyer committed itself to: trades it proposed
  or accepted. Proposals made TO it do not use it up (any tenant could otherwise fill a
  victim's cap for up to 30 days), and the cap is checked where the buyer commits, inside the
  transaction that does so: at its proposal, and at its accept.
- A hashlock already in use is refused with one answer, whoever's trade uses it.
- `POST /v1/trades` answers a replay as it answered the original (201) and its OpenAPI
  document says so, declaring every status the route answers.
- A body that is not JSON is located in words (line and column, field `body`), never as a
  field named by a character offset.
"""

from __future__ import annotations

import hashlib
import threading
import uuid

import pytest
from eth_account import Account
from fastapi.testclient import TestClient

from gateway.api.context import Limits
from gateway.api.enterprises import create_enterprise
from gateway.chain.devnet import ISSUER
from gateway.config import Settings
from gateway.db.models import EnterpriseRow
from gateway.domain.locks import hashlock_of, new_secret
from gateway.runner import System, build_system
from tests.databases import create_database, drop_database
from tests.e2e.test_api_contract import Party

PROBLEM = "application/problem+json"
CAP = 1_000_000  # payment units a buyer may have open in this module's gateway


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> System:
    workdir = tmp_path_factory.mktemp("tenants")
    url = create_database(workdir)
    system = build_system(Settings(_env_file=None), workdir / "run", database_url=url,
                          limits=Limits(rate_per_second=1e6, burst=10**6, exposure_cap=CAP))
    yield system
    system.close()
    drop_database(url)


@pytest.fixture(scope="module")
def client(system: System) -> TestClient:
    return TestClient(system.app, raise_server_exceptions=False)




def self_custody(system: System) -> Party:
    address = Account.create().address
    with system.gateway.session_factory.begin() as session:
        ent, key = create_enterprise(session, f"Self custody {uuid.uuid4()}", managed=False,
                                     cipher=None, payment_address=address,
                                     business_address=address)
    return Party(ent.id, key)


def managed_seller(system: System) -> tuple[Party, dict]:
    """A new managed enterprise and a title issued to it: (party, title)."""
    with system.gateway.session_factory.begin() as session:
        ent, key = create_enterprise(session, f"Seller {uuid.uuid4()}", managed=True,
                                     cipher=system.ctx.cipher)
    with system.gateway.session_factory() as session:
        row = session.get(EnterpriseRow, ent.id)
        assert row is not None
        holder = row.business_address
    d = system.devnet
    doc = hashlib.sha256(f"{ent.id} bill".encode()).digest()
    assert d.business.client.transact(
        d.account(ISSUER), to=d.titles.address, gas=300_000,
        data=d.titles.encode_abi("issue", [holder, doc])).succeeded
    return Party(ent.id, key), {"token_id": str(d.titles.functions.issuedCount().call()),
                                "document_hash": "0x" + doc.hex()}


def demo_seller(system: System) -> tuple[Party, dict]:
    seller = system.demo["enterprises"]["seller"]
    return Party(seller["id"], seller["api_key"]), seller["titles"][0]


def new_hashlock() -> str:
    return "0x" + hashlock_of(new_secret()).hex()


def terms(system: System, counterparty: Party, title: dict, *, role: str, amount: int,
          hashlock: str | None = None) -> dict:
    now = max(system.ctx.payment.now(), system.ctx.business.now())
    body = {"role": role, "counterparty": counterparty.id,
            "payment": {"token": system.devnet.info.payment.token, "amount": str(amount)},
            "delivery": dict(title),
            "deadlines": {"delivery": now + 3600, "payment": now + 7200}}
    if hashlock is not None:
        body["hashlock"] = hashlock
    return body


def seller_proposes(client: TestClient, system: System, seller: tuple[Party, dict],
                    buyer: Party, amount: int):  # noqa: ANN201
    party, title = seller
    return client.post("/v1/trades", json=terms(system, buyer, title, role="seller",
                                                amount=amount), headers=party.idem())


def buyer_proposes(client: TestClient, system: System, buyer: Party,
                   seller: tuple[Party, dict], amount: int,
                   hashlock: str | None = None):  # noqa: ANN201
    party, title = seller
    return client.post("/v1/trades", json=terms(system, party, title, role="buyer",
                                                amount=amount,
                                                hashlock=hashlock or new_hashlock()),
                       headers=buyer.idem())


def accept(client: TestClient, buyer: Party, trade_id: str, hashlock: str | None = None):  # noqa: ANN201
    return client.post(f"/v1/trades/{trade_id}/accept", headers=buyer.h,
                       json={"hashlock": hashlock or new_hashlock()})


def created(r) -> str:  # noqa: ANN001
    assert r.status_code == 201, r.text
    return r.json()["id"]


def problem(r, status: int, field: str | None = None) -> dict:  # noqa: ANN001
    assert r.status_code == status, r.text
    assert r.headers["content-type"].split(";")[0] == PROBLEM, r.headers["content-type"]
    body = r.json()
    assert body["status"] == status and body["detail"]
    if field is not None:
        assert field in [e["field"] for e in body.get("errors", [])], body
    return body


def over_cap(r) -> dict:  # noqa: ANN001
    body = problem(r, 409, "payment.amount")
    assert body["type"].endswith("/exposure-cap"), body
    return body


def phase(client: TestClient, party: Party, trade_id: str) -> str:
    r = client.get(f"/v1/trades/{trade_id}", headers=party.h)
    assert r.status_code == 200, r.text
    return r.json()["phase"]


def race(*calls):  # noqa: ANN001, ANN002, ANN201
    """Run the calls in threads at once; their results in order."""
    results: list = [None] * len(calls)

    def run(n: int) -> None:
        results[n] = calls[n]()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def in_step(obj, name: str, parties: int = 2):  # noqa: ANN001, ANN201
    """Make `obj.name` wait on entry until `parties` callers are there too (or 2 s): a race
    that is certain rather than likely. Returns an undo function."""
    barrier = threading.Barrier(parties, timeout=2)
    original = getattr(obj, name)

    def waiting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
        return original(*args, **kwargs)

    setattr(obj, name, waiting)
    return lambda: setattr(obj, name, original)


# --- 1. the exposure cap is the buyer's own commitments --------------------------------------


def test_proposals_made_to_a_buyer_do_not_use_up_its_cap(system, client) -> None:
    """Two other tenants name the victim as buyer in proposals worth three times its cap: the
    victim's cap is untouched by them (it can still commit its whole cap itself), and
    accepting any of them on top of that is refused."""
    victim = self_custody(system)
    attackers = [managed_seller(system), managed_seller(system)]
    foreign = [created(seller_proposes(client, system, attackers[n % 2], victim, CAP))
               for n in range(3)]
    assert all(phase(client, victim, tid) == "proposed" for tid in foreign)
    # the victim's own commitment: its whole cap
    honest = demo_seller(system)
    own = created(buyer_proposes(client, system, victim, honest, CAP))
    assert phase(client, victim, own) == "proposed"
    # the cap holds when the victim accepts: every foreign proposal is now one too many
    for tid in foreign:
        err = over_cap(accept(client, victim, tid))
        assert str(CAP) in err["detail"]
        assert phase(client, victim, tid) == "proposed"
    # its own commitment ended, it can take up one of them, and then no other
    assert client.post(f"/v1/trades/{own}/cancel", headers=victim.h).status_code == 200
    r = accept(client, victim, foreign[0])
    assert r.status_code == 200 and r.json()["phase"] == "agreed", r.text
    over_cap(accept(client, victim, foreign[1]))
    over_cap(buyer_proposes(client, system, victim, honest, 1))


def test_a_proposal_above_the_cap_is_refused_whatever_the_buyer_has_open(system,
                                                                       client) -> None:
    """An amount above the cap can never be accepted, so a seller's proposal of it is refused
    at once; the answer reads nothing of the buyer's and is the same for a buyer with nothing
    open as for one at its cap (a seller learns nothing about its counterparty from it)."""
    empty, full = self_custody(system), self_custody(system)
    seller = demo_seller(system)
    created(buyer_proposes(client, system, full, seller, CAP))
    answers = [over_cap(seller_proposes(client, system, seller, buyer, CAP + 1))
               for buyer in (empty, full)]
    assert answers[0] == answers[1]
    assert str(CAP) in answers[0]["detail"]
    # at the cap itself a proposal TO the full buyer is made: it commits that buyer to nothing
    created(seller_proposes(client, system, seller, full, CAP))


def test_a_buyer_cannot_accept_beyond_its_cap(system, client) -> None:
    buyer = self_custody(system)
    seller = managed_seller(system)
    first = created(seller_proposes(client, system, seller, buyer, 600_000))
    second = created(seller_proposes(client, system, seller, buyer, 500_000))
    assert accept(client, buyer, first).json()["phase"] == "agreed"
    # accepting the second would make 1,100,000 open: refused, and nothing of it is kept
    lock = new_hashlock()
    err = over_cap(accept(client, buyer, second, lock))
    assert "600000 open" in err["detail"]
    assert phase(client, buyer, second) == "proposed"
    # the first one ended: the second fits, with the very hashlock the refusal did not keep
    assert client.post(f"/v1/trades/{first}/cancel", headers=buyer.h).status_code == 200
    r = accept(client, buyer, second, lock)
    assert r.status_code == 200 and r.json()["hashlock"] == lock, r.text
    # the buyer's own proposal up to the cap exactly; the seller accepting it does not count
    # it twice; one unit more is refused
    mine = created(buyer_proposes(client, system, buyer, seller, CAP - 500_000))
    r = client.post(f"/v1/trades/{mine}/accept", headers=seller[0].h)
    assert r.status_code == 200 and r.json()["phase"] == "agreed", r.text
    over_cap(buyer_proposes(client, system, buyer, seller, 1))
    third = created(seller_proposes(client, system, seller, buyer, 1))
    over_cap(accept(client, buyer, third))


def test_the_cap_holds_against_concurrent_accepts(system, client) -> None:
    """Two accepts, each within the cap alone but not together, made to run at once (both
    past everything the API does before the dispatcher's transaction): one is refused. A cap
    read before that transaction would let both through."""
    buyer = self_custody(system)
    seller = managed_seller(system)
    trades = [created(seller_proposes(client, system, seller, buyer, 600_000))
              for _ in range(2)]
    undo = in_step(system.ctx.dispatcher, "apply_action")
    try:
        answers = race(*(lambda tid=tid: accept(client, buyer, tid) for tid in trades))
    finally:
        undo()
    assert sorted(r.status_code for r in answers) == [200, 409], [r.text for r in answers]
    over_cap(next(r for r in answers if r.status_code == 409))
    assert sorted(phase(client, buyer, tid) for tid in trades) == ["agreed", "proposed"]


def test_the_cap_holds_against_concurrent_proposals(system, client) -> None:
    buyer = self_custody(system)
    seller = demo_seller(system)
    undo = in_step(system.ctx.dispatcher, "propose")
    try:
        answers = race(*(lambda: buyer_proposes(client, system, buyer, seller, 600_000)
                         for _ in range(2)))
    finally:
        undo()
    assert sorted(r.status_code for r in answers) == [201, 409], [r.text for r in answers]
    over_cap(next(r for r in answers if r.status_code == 409))
    r = client.get("/v1/trades", params={"role": "buyer"}, headers=buyer.h)
    assert len(r.json()["items"]) == 1


# --- 2. a hashlock in use: one answer, whoever's trade it is -----------------------------------


def test_a_hashlock_in_use_answers_the_same_for_own_and_foreign_trades(system, client) -> None:
    """Uniqueness stays global (one secret must never open two trades' locks, and the relayer
    routes chain events by hashlock), so a reused hashlock is refused and the refusal tells
    the caller one bit: "some trade uses this hashlock". It tells nothing else: the answer is
    byte for byte the same whether the trade is the caller's own or another tenant's, and it
    names no trade, party or phase.

    Why the one bit is harmless: a hashlock is sha256 of a buyer's 32-byte random secret, so
    it cannot be guessed; before it is locked on chain only the buyer that chose it (it
    reaches the gateway first in the very request that reserves it) and that trade's
    counterparty know it, both parties to the trade already; once locked, every PaymentHTLC
    `Locked` event publishes it anyway. A tenant can only ask about a hashlock it already
    knows, and does not learn whose it is."""
    alice, bob = self_custody(system), self_custody(system)
    seller = demo_seller(system)
    lock = new_hashlock()
    alices = created(buyer_proposes(client, system, alice, seller, 1000, lock))
    bobs_lock = new_hashlock()
    created(buyer_proposes(client, system, bob, seller, 1000, bobs_lock))

    answers = {
        "foreign": buyer_proposes(client, system, bob, seller, 1000, lock),
        "own": buyer_proposes(client, system, alice, seller, 1000, lock),
        "own, other tenant": buyer_proposes(client, system, bob, seller, 1000, bobs_lock),
    }
    for r in answers.values():
        body = problem(r, 409, "hashlock")
        assert body["type"].endswith("/hashlock-reused")
        assert alices[2:] not in r.text and alice.id not in r.text and bob.id not in r.text
    first = answers["foreign"]
    for r in answers.values():
        assert r.content == first.content and r.headers["content-type"] == \
            first.headers["content-type"]

    # the same at accept, where a buyer gives the hashlock of a seller's proposal
    to_bob = created(seller_proposes(client, system, seller, bob, 1000))
    to_alice = created(seller_proposes(client, system, seller, alice, 1000))
    at_accept = {"foreign": accept(client, bob, to_bob, lock),
                 "own": accept(client, alice, to_alice, lock)}
    bodies = []
    for tid, r in zip((to_bob, to_alice), at_accept.values(), strict=True):
        body = problem(r, 409, "hashlock")
        assert alices[2:] not in r.text.replace(tid[2:], "")
        assert body.pop("instance") == f"/v1/trades/{tid}/accept"
        bodies.append(body)
    assert bodies[0] == bodies[1]
    assert bodies[0] == {k: v for k, v in first.json().items() if k != "instance"}
    # uniqueness is enforced: nothing was made or changed by a refusal
    assert phase(client, bob, to_bob) == "proposed"
    assert phase(client, alice, alices) == "proposed"
    r = client.get("/v1/trades", params={"role": "buyer"}, headers=bob.h)
    assert len(r.json()["items"]) == 2  # its own proposal and the seller's to it
    assert accept(client, bob, to_bob).status_code == 200


# --- 3. replays and the OpenAPI document agree ---------------------------------------------------


def _declared(system: System, path: str) -> dict:
    return system.app.openapi()["paths"][path]["post"]["responses"]


def test_a_replay_answers_201_as_the_openapi_document_says(system, client) -> None:
    declared = _declared(system, "/v1/trades")
    # one success status: a replay is the original's answer again, as Stripe does it
    assert "200" not in declared
    assert "replay" in declared["201"]["description"].lower()
    assert declared["201"]["content"]["application/json"]["schema"]["$ref"].endswith("/Trade")

    buyer = self_custody(system)
    seller = demo_seller(system)
    body = terms(system, seller[0], seller[1], role="buyer", amount=CAP,
                 hashlock=new_hashlock())
    headers = buyer.idem()
    first = client.post("/v1/trades", json=body, headers=headers)
    replay = client.post("/v1/trades", json=body, headers=headers)
    assert first.status_code == replay.status_code == 201
    assert replay.json() == first.json()

    # every answer the route gives is declared, each problem with its media type
    seen = [first, replay,
            client.post("/v1/trades", json={**body, "role": "seller"}, headers=headers),  # 422
            buyer_proposes(client, system, buyer, seller, 1),  # 409 exposure-cap
            buyer_proposes(client, system, self_custody(system), seller, 1,
                           body["hashlock"]),  # 409 hashlock-reused
            client.post("/v1/trades", content=b'{"role": ', headers={
                **buyer.idem(), "Content-Type": "application/json"}),  # 422 not JSON
            client.post("/v1/trades", content=b'{"role": "\xff"}', headers={
                **buyer.idem(), "Content-Type": "application/json"}),  # 400 not UTF-8
            client.post("/v1/trades", json=body, headers={"Idempotency-Key": "x"})]  # 401
    assert {r.status_code for r in seen} == {201, 400, 401, 409, 422}
    for r in seen:
        status = str(r.status_code)
        assert status in declared, (status, sorted(declared))
        media = r.headers["content-type"].split(";")[0]
        assert media in declared[status]["content"], (status, declared[status])
    assert PROBLEM in declared["503"]["content"]  # no secrets key / database unavailable


def test_accept_declares_its_problems(system, client) -> None:
    declared = _declared(system, "/v1/trades/{trade_id}/accept")
    buyer = self_custody(system)
    seller = managed_seller(system)
    tid = created(seller_proposes(client, system, seller, buyer, CAP))
    big = created(seller_proposes(client, system, seller, buyer, 1))
    seen = [accept(client, buyer, "0x" + "ab" * 32),  # 404
            client.post(f"/v1/trades/{tid}/accept", headers=buyer.h,
                        json={"hashlock": "0x1234"}),  # 422
            accept(client, buyer, tid),  # 200
            accept(client, buyer, big),  # 409 exposure-cap
            accept(client, buyer, tid)]  # 409 not in this phase
    assert [r.status_code for r in seen] == [404, 422, 200, 409, 409]
    for r in seen:
        status = str(r.status_code)
        media = r.headers["content-type"].split(";")[0]
        assert media in declared[status]["content"], (status, declared[status])


# --- 4. a body that is not JSON is located in words --------------------------------------------


@pytest.mark.parametrize(("content", "where"), [
    (b'{"role": "buyer",', "line 1, column 18"),
    (b'{\n  "role": "buyer",\n  "counterparty": }', "line 3, column 19"),
    (b'{"role": "buy\x01er"}', "line 1, column 14"),
])
def test_a_body_that_is_not_json_is_located_in_words(system, client, content,
                                                    where) -> None:
    buyer = self_custody(system)
    for path in ("/v1/trades", f"/v1/trades/0x{'ab' * 32}/accept"):
        r = client.post(path, content=content,
                        headers={**buyer.idem(), "Content-Type": "application/json"})
        body = problem(r, 422, "body")
        assert [e["field"] for e in body["errors"]] == ["body"]
        assert "not valid JSON" in body["errors"][0]["message"]
        assert where in body["errors"][0]["message"] and where in body["detail"]
        assert not body["detail"][:1].isdigit()


def test_a_body_that_is_not_utf8_is_located_in_words(system, client) -> None:
    buyer = self_custody(system)
    r = client.post("/v1/trades", content=b'{"role":\n  "\xff"}',
                    headers={**buyer.idem(), "Content-Type": "application/json"})
    body = problem(r, 400, "body")
    message = body["errors"][0]["message"]
    assert "UTF-8" in message and "line 2, column 4" in message and "0xff" in message
