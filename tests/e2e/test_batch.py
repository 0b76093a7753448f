"""Batch agreement: `POST /v1/trades/batch` proposes many trades and `POST
/v1/trades/accept-batch` accepts many, each in ONE transaction (all or nothing), naming every
refused item's field as `trades[i].<field>` (in process, TestClient).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from gateway.api.context import Limits
from gateway.config import Settings
from gateway.db.models import IdempotencyRow, SecretRow, TradePartyRow, TradeRow
from gateway.domain.locks import hashlock_of, new_secret
from gateway.runner import System, build_system
from tests.databases import create_database, drop_database
from tests.e2e.conftest import meet_in, module_system
from tests.e2e.test_api_contract import (
    Party,
    chain_now,
    demo,
    managed,
    problem,
    self_custody,
    terms,
)

BATCH = "/v1/trades/batch"
ACCEPT = "/v1/trades/accept-batch"


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> System:
    yield from module_system(tmp_path_factory, "batch")


@pytest.fixture(scope="module")
def client(system: System) -> TestClient:
    return TestClient(system.app, raise_server_exceptions=False)


@pytest.fixture
def make_system(tmp_path):
    """Build extra systems (own limits); closed at teardown."""
    built: list[tuple[System, str]] = []

    def make(**kw) -> tuple[System, TestClient]:
        url = create_database(tmp_path, f"run{len(built)}")
        system = build_system(Settings(_env_file=None), tmp_path / f"run{len(built)}",
                              database_url=url, **kw)
        built.append((system, url))
        return system, TestClient(system.app, raise_server_exceptions=False)

    yield make
    for system, url in built:
        system.close()
        drop_database(url)


def items(system: System, buyer: Party, seller: Party, n: int, *, start: int = 0,
          **kw) -> list[dict]:
    """`n` proposals by `seller` to `buyer`, each of its own title (the seller's `start`th
    on) and its own amount."""
    return [terms(system, buyer.id, seller=seller, title=start + i, amount=str(1000 + i), **kw)
            for i in range(n)]


def count_trades(system: System) -> int:
    with system.gateway.session_factory() as session:
        return session.scalar(select(func.count()).select_from(TradeRow))


def listed(client: TestClient, party: Party) -> set[str]:
    r = client.get("/v1/trades", params={"limit": 100}, headers=party.h)
    assert r.status_code == 200, r.text
    return {t["id"] for t in r.json()["items"]}


def fields(body: dict) -> list[str]:
    return [e["field"] for e in body["errors"]]


def phases(client: TestClient, party: Party, ids: list[str]) -> list[str]:
    return [client.get(f"/v1/trades/{t}", headers=party.h).json()["phase"] for t in ids]


# --- proposing ---------------------------------------------------------------------------------


def test_a_batch_is_made_in_request_order_and_each_trade_settles(tmp_path,
                                                                 database_url) -> None:
    """Five proposals in one request, each with the terms of its item and, the buyer being
    managed, its own secret; two of them accepted in one request and driven to settlement
    like single trades (the others stay proposed)."""
    system = build_system(Settings(_env_file=None), tmp_path / "run", database_url=database_url)
    try:
        client = TestClient(system.app, raise_server_exceptions=False)
        buyer, seller = demo(system)
        body = {"trades": items(system, buyer, seller, 5)}
        before = count_trades(system)
        r = client.post(BATCH, json=body, headers=seller.idem())
        assert r.status_code == 201, r.text
        trades = r.json()["trades"]
        assert count_trades(system) == before + 5
        assert [t["delivery"]["token_id"] for t in trades] == \
            [i["delivery"]["token_id"] for i in body["trades"]]
        assert [t["payment"]["amount"] for t in trades] == [str(1000 + i) for i in range(5)]
        assert all(t["phase"] == "proposed" and t["role"] == "seller" for t in trades)
        assert len({t["id"] for t in trades}) == len({t["hashlock"] for t in trades}) == 5
        with system.gateway.session_factory() as session:
            for t in trades:  # each its own secret, kept encrypted, matching its hashlock
                row = session.get(SecretRow, t["id"][2:])
                secret = system.ctx.cipher.decrypt(row.encrypted_secret)
                assert "0x" + hashlib.sha256(secret).hexdigest() == t["hashlock"]
        # each trade is read like a single proposal's
        for t in trades:
            view = client.get(f"/v1/trades/{t['id']}", headers=buyer.h).json()
            assert view["role"] == "buyer" and view["hashlock"] == t["hashlock"]

        ids = [trades[1]["id"], trades[3]["id"]]
        r = client.post(ACCEPT, json={"trades": [{"id": i} for i in ids]}, headers=buyer.h)
        assert r.status_code == 200, r.text
        assert [t["id"] for t in r.json()["trades"]] == ids
        assert [t["phase"] for t in r.json()["trades"]] == ["agreed", "agreed"]
        token = system.devnet.payment_token.functions
        paid_before = token.balanceOf(system.demo["enterprises"]["seller"]
                                      ["payment_address"]).call()
        relayer = system.gateway.relayer
        relayer.run_until(lambda: phases(client, buyer, ids) == ["delivery_locked"] * 2,
                          max_steps=15)
        for tid in ids:
            r = client.post(f"/v1/trades/{tid}/take-delivery", headers=buyer.h)
            assert r.status_code == 200, r.text
        relayer.run_until(lambda: phases(client, buyer, ids) == ["settled"] * 2, max_steps=15)
        titles = system.devnet.titles.functions
        for t in (trades[1], trades[3]):
            assert titles.ownerOf(int(t["delivery"]["token_id"])).call() == \
                t["buyer"]["business_address"]
        assert token.balanceOf(system.demo["enterprises"]["seller"]["payment_address"]
                               ).call() == paid_before + 1001 + 1003
        assert phases(client, seller, [trades[i]["id"] for i in (0, 2, 4)]) == ["proposed"] * 3
    finally:
        system.close()


def test_an_invalid_item_refuses_the_whole_batch_naming_every_problem(system, client) -> None:
    buyer, seller = managed(system, "Buyer"), managed(system, "Seller")
    before = count_trades(system)
    good = items(system, buyer, seller, 6)
    bad = [dict(i) for i in good]
    bad[1] = {**bad[1], "counterparty": str(uuid.uuid4())}
    bad[2] = {**bad[2], "payment": {**bad[2]["payment"], "token": "0x" + "11" * 20}}
    now = chain_now(system)
    margin = system.ctx.policy.required_margin
    bad[3] = {**bad[3], "deadlines": {"delivery": now + 3600, "payment": now + 3600 + margin - 1}}
    bad[4] = {**bad[4], "deadlines": {"delivery": now - 10, "payment": now + 3600}}
    bad[5] = {**bad[5], "delivery": {**bad[5]["delivery"], "document_hash": "0x" + "cd" * 32}}
    r = client.post(BATCH, json={"trades": bad}, headers=seller.idem())
    body = problem(r, 422)
    assert fields(body) == ["trades[1].counterparty", "trades[2].payment.token",
                            "trades[3].deadlines.payment", "trades[4].deadlines.delivery",
                            "trades[5].delivery.document_hash"], body
    assert body["detail"].startswith("5 of the 6 trades refused")
    assert count_trades(system) == before and listed(client, seller) == set()

    # invalid by the schema: every item's field, indexed the same way
    bad = [dict(i) for i in good]
    bad[0] = {**bad[0], "payment": {**bad[0]["payment"], "amount": "0123"}}
    bad[4] = {**bad[4], "role": "broker", "extra": 1}
    body = problem(client.post(BATCH, json={"trades": bad}, headers=seller.idem()), 422)
    assert set(fields(body)) == {"trades[0].payment.amount", "trades[4].role",
                                 "trades[4].extra"}, body
    assert count_trades(system) == before

    # the same items, fixed, make the batch; a refused batch did not use up its key
    key = str(uuid.uuid4())
    problem(client.post(BATCH, json={"trades": bad}, headers=seller.idem(key)), 422)
    r = client.post(BATCH, json={"trades": good}, headers=seller.idem(key))
    assert r.status_code == 201, r.text
    assert count_trades(system) == before + 6


def test_the_same_title_twice_in_a_batch_is_refused(system, client) -> None:
    buyer, seller = managed(system, "Buyer"), managed(system, "Seller")
    two = items(system, buyer, seller, 2)
    same = [two[0], two[1], {**two[1], "payment": {**two[1]["payment"], "amount": "5"}}]
    body = problem(client.post(BATCH, json={"trades": same}, headers=seller.idem()), 422)
    assert fields(body) == ["trades[2].delivery.token_id"]
    assert "trades[1]" in body["errors"][0]["message"]
    assert listed(client, seller) == set()


def test_replay_and_key_reuse(system, client) -> None:
    buyer, seller = managed(system, "Buyer"), managed(system, "Seller")
    body = {"trades": items(system, buyer, seller, 2)}
    first = client.post(BATCH, json=body, headers=seller.idem("batch-1"))
    assert first.status_code == 201, first.text
    ids = [t["id"] for t in first.json()["trades"]]
    # the trades move on; a replay still answers the original's status and body
    assert client.post(ACCEPT, json={"trades": [{"id": ids[0]}]},
                       headers=buyer.h).status_code == 200
    again = client.post(BATCH, json=body, headers=seller.idem("batch-1"))
    assert (again.status_code, again.json()) == (201, first.json())
    assert listed(client, seller) == set(ids)

    other = {"trades": items(system, buyer, seller, 2, start=2)}
    r = client.post(BATCH, json=other, headers=seller.idem("batch-1"))
    assert problem(r, 422, "Idempotency-Key")["type"].endswith("/idempotency-key-reused")
    # a key is one request's, whichever route: single proposal and batch never confuse keys
    r = client.post("/v1/trades", json=other["trades"][0], headers=seller.idem("batch-1"))
    problem(r, 422, "Idempotency-Key")
    assert client.post("/v1/trades", json=other["trades"][0],
                       headers=seller.idem("single-1")).status_code == 201
    r = client.post(BATCH, json={"trades": [other["trades"][0]]},
                    headers=seller.idem("single-1"))
    problem(r, 422, "Idempotency-Key")
    assert len(listed(client, seller)) == 3
    # the key is per tenant: another seller's batch with the same key is its own
    seller2 = managed(system, "Seller 2")
    r = client.post(BATCH, json={"trades": items(system, buyer, seller2, 1)},
                    headers=seller2.idem("batch-1"))
    assert r.status_code == 201 and r.json()["trades"][0]["id"] not in ids


def test_an_expired_batch_key_is_a_new_key(system, client) -> None:
    """DVP_IDEMPOTENCY_TTL applies to batch keys too (deleted before the batch is looked up)."""
    buyer, seller = managed(system, "Buyer"), managed(system, "Seller")
    body = {"trades": items(system, buyer, seller, 1)}
    first = client.post(BATCH, json=body, headers=seller.idem("old"))
    assert first.status_code == 201, first.text
    ttl = system.ctx.limits.idempotency_ttl
    with system.gateway.session_factory.begin() as session:
        session.execute(update(IdempotencyRow).where(
            IdempotencyRow.enterprise_id == seller.id, IdempotencyRow.key == "old").values(
            created_at=datetime.now(UTC) - timedelta(seconds=ttl + 60)))
    second = client.post(BATCH, json=body, headers=seller.idem("old"))
    assert second.status_code == 201, second.text
    assert second.json()["trades"][0]["id"] != first.json()["trades"][0]["id"]
    assert len(listed(client, seller)) == 2


def test_concurrent_identical_batches_make_one_set_of_trades(system, client) -> None:
    buyer, seller = managed(system, "Buyer"), managed(system, "Seller")
    body = {"trades": items(system, buyer, seller, 3)}
    # Both requests reach the transaction after their replay check (each waits for the
    # other there): the second must replay the first, not make a second set.
    meeting = meet_in(system.ctx.dispatcher, "unit")
    responses = meeting.race(lambda: client.post(BATCH, json=body, headers=seller.idem("race")))
    assert not meeting.barrier.broken
    assert [r.status_code for r in responses] == [201, 201], [r.text for r in responses]
    assert responses[0].json() == responses[1].json()
    assert listed(client, seller) == {t["id"] for t in responses[0].json()["trades"]}
    assert len(listed(client, seller)) == 3


def test_concurrent_identical_batches_of_a_self_custody_buyer(system, client) -> None:
    """The same race where the items carry the buyer's hashlocks: the second transaction
    meets the first's key (not its hashlocks) and replays it."""
    buyer = self_custody(system, "Buyer")
    seller = managed(system, "Seller")
    body = {"trades": [terms(system, seller.id, role="buyer", seller=seller, title=i,
                             hashlock="0x" + hashlock_of(new_secret()).hex())
                       for i in range(2)]}
    responses = meet_in(system.ctx.dispatcher, "unit").race(
        lambda: client.post(BATCH, json=body, headers=buyer.idem("race-2")))
    assert [r.status_code for r in responses] == [201, 201], [r.text for r in responses]
    assert responses[0].json() == responses[1].json()
    assert len(listed(client, buyer)) == 2


# --- hashlocks, titles, the cap ----------------------------------------------------------------


def test_every_items_title_is_checked_from_one_read(system, client) -> None:
    """The batch's titles are read at once; each item still hears what is wrong with its own:
    a title never issued, one the seller does not hold, another document's hash."""
    buyer, seller = managed(system, "Buyer"), managed(system, "Seller")
    other = managed(system, "Other seller")
    good, missing, foreign, wrong = items(system, buyer, seller, 4)
    missing["delivery"]["token_id"] = "999999"
    foreign["delivery"] = terms(system, buyer.id, seller=other, title=9)["delivery"]
    wrong["delivery"]["document_hash"] = "0x" + "ee" * 32
    before = count_trades(system)
    body = problem(client.post(BATCH, json={"trades": [good, missing, foreign, wrong]},
                               headers=seller.idem()), 422)
    assert fields(body) == ["trades[1].delivery.token_id", "trades[2].delivery.token_id",
                            "trades[3].delivery.document_hash"], body
    assert "does not exist" in body["errors"][0]["message"]
    assert "not held by the seller" in body["errors"][1]["message"]
    assert count_trades(system) == before


def test_a_hashlock_twice_in_a_batch_or_already_in_use(system, client) -> None:
    buyer = self_custody(system, "Buyer")
    seller = managed(system, "Seller")
    before = count_trades(system)

    def item(n: int, hashlock: str) -> dict:
        return terms(system, seller.id, role="buyer", seller=seller, title=n,
                     hashlock=hashlock)

    h = ["0x" + hashlock_of(new_secret()).hex() for _ in range(3)]
    body = problem(client.post(BATCH, json={"trades": [item(0, h[0]), item(1, h[1]),
                                                       item(2, h[0])]},
                               headers=buyer.idem()), 422)
    assert fields(body) == ["trades[2].hashlock"] and "trades[0]" in body["detail"]
    assert count_trades(system) == before

    # a hashlock some trade already uses: the one hashlock-reused answer, naming the item
    used = client.post("/v1/trades", json=item(3, h[2]), headers=buyer.idem())
    assert used.status_code == 201, used.text
    r = client.post(BATCH, json={"trades": [item(0, h[0]), item(1, h[2])]},
                    headers=buyer.idem())
    body = problem(r, 409)
    assert body["type"].endswith("/hashlock-reused") and fields(body) == ["trades[1].hashlock"]
    assert used.json()["id"][2:] not in r.text
    assert count_trades(system) == before + 1


def test_the_cap_holds_across_a_batchs_items(make_system) -> None:
    system, client = make_system(limits=Limits(rate_per_second=1e6, burst=10**6,
                                               exposure_cap=500_000))
    buyer = self_custody(system, "Buyer")
    seller = managed(system, "Seller")

    def item(n: int, amount: int) -> dict:
        return terms(system, seller.id, role="buyer", seller=seller, title=n,
                     amount=str(amount), hashlock="0x" + hashlock_of(new_secret()).hex())

    # each fits alone; the third does not fit after the first two
    three = [item(0, 200_000), item(1, 200_000), item(2, 200_000)]
    body = problem(client.post(BATCH, json={"trades": three}, headers=buyer.idem()), 409)
    assert body["type"].endswith("/exposure-cap")
    assert fields(body) == ["trades[2].payment.amount"], body
    assert listed(client, buyer) == set()
    r = client.post(BATCH, json={"trades": three[:2]}, headers=buyer.idem())
    assert r.status_code == 201, r.text
    # what is open counts: 400 000 open, so the first item of 200 000 no longer fits
    body = problem(client.post(BATCH, json={"trades": [item(3, 50_000), item(4, 200_000)]},
                               headers=buyer.idem()), 409)
    assert fields(body) == ["trades[1].payment.amount"]
    assert len(listed(client, buyer)) == 2

    # ...and decided in the batch's own transaction: a proposal committed after the early
    # answer, before the batch's transaction, counts
    buyer2 = self_custody(system, "Buyer 2")
    original = system.ctx.dispatcher.unit

    def unit_after_another():  # noqa: ANN202 - the batch's writing transaction, once
        system.ctx.dispatcher.unit = original
        r = client.post("/v1/trades", json=item(5, 300_000), headers=buyer2.idem())
        assert r.status_code == 201, r.text
        return original()

    system.ctx.dispatcher.unit = unit_after_another
    try:
        r = client.post(BATCH, json={"trades": [item(6, 100_000), item(7, 150_000)]},
                        headers=buyer2.idem())
    finally:
        system.ctx.dispatcher.unit = original
    assert fields(problem(r, 409)) == ["trades[1].payment.amount"]
    assert len(listed(client, buyer2)) == 1


def test_the_cap_holds_across_an_accept_batch(make_system) -> None:
    system, client = make_system(limits=Limits(rate_per_second=1e6, burst=10**6,
                                               exposure_cap=500_000))
    buyer, seller = managed(system, "Buyer"), managed(system, "Seller")
    # proposals made TO the buyer commit it to nothing: three of 200 000 are made
    r = client.post(BATCH, json={"trades": [
        terms(system, buyer.id, seller=seller, title=i, amount="200000") for i in range(3)]},
        headers=seller.idem())
    assert r.status_code == 201, r.text
    ids = [t["id"] for t in r.json()["trades"]]
    body = problem(client.post(ACCEPT, json={"trades": [{"id": i} for i in ids]},
                               headers=buyer.h), 409)
    assert body["type"].endswith("/exposure-cap")
    assert fields(body) == ["trades[2].payment.amount"]
    assert phases(client, buyer, ids) == ["proposed"] * 3
    r = client.post(ACCEPT, json={"trades": [{"id": i} for i in ids[:2]]}, headers=buyer.h)
    assert r.status_code == 200, r.text
    assert phases(client, buyer, ids) == ["agreed", "agreed", "proposed"]


def test_the_batch_size_is_limited(system, client, make_system) -> None:
    buyer, seller = demo(system)
    limit = system.ctx.limits.batch_max
    assert limit == Settings(_env_file=None).batch_max == 100
    one = terms(system, buyer.id)
    before = count_trades(system)
    for n in (0, limit + 1):
        body = problem(client.post(BATCH, json={"trades": [one] * n}, headers=seller.idem()),
                       422)
        assert fields(body) == ["trades"], body
        body = problem(client.post(ACCEPT, json={"trades": [{"id": "0x" + "ab" * 32}] * n},
                                   headers=buyer.h), 422)
        assert fields(body) == ["trades"], body
    assert count_trades(system) == before
    spec = system.app.openapi()["components"]["schemas"]
    for name in ("TradeBatch", "TradeAcceptBatch"):
        assert spec[name]["properties"]["trades"]["maxItems"] == limit
        assert spec[name]["properties"]["trades"]["minItems"] == 1

    # DVP_BATCH_MAX sets it
    assert Limits.from_settings(Settings(_env_file=None, batch_max=3)).batch_max == 3
    small, small_client = make_system(limits=Limits(rate_per_second=1e6, burst=10**6,
                                                    batch_max=3))
    b, s = demo(small)
    four = [terms(small, b.id, title=i) for i in range(4)]
    problem(small_client.post(BATCH, json={"trades": four}, headers=s.idem()), 422, "trades")
    r = small_client.post(BATCH, json={"trades": four[:3]}, headers=s.idem())
    assert r.status_code == 201, r.text


def test_a_full_batch_fits_the_body_limit(system, client) -> None:
    """DVP_BATCH_MAX items of the largest kind (with a hashlock) are under the 64 KiB body
    limit, so the default maximum can be used."""
    buyer = self_custody(system, "Buyer")
    seller = managed(system, "Seller")
    one = terms(system, seller.id, role="buyer", seller=seller, title=0,
                hashlock="0x" + "ab" * 32)
    limit = system.ctx.limits.batch_max
    size = len(json.dumps({"trades": [one] * limit}).encode())
    assert size < system.ctx.limits.max_body_bytes, size
    # answered on its items (one title, one hashlock a hundred times), not the size
    body = problem(client.post(BATCH, json={"trades": [one] * limit}, headers=buyer.idem()),
                   422)
    assert "trades[99].hashlock" in fields(body) and "trades[99].delivery.token_id" in \
        fields(body)


def test_the_body_limit_is_set_for_bigger_batches(make_system) -> None:
    """DVP_MAX_BODY_BYTES: a batch bigger than 64 KiB (DVP_BATCH_MAX up to 1000) is read
    whole; over the limit it is a 413, never read in full."""
    settings = Settings(_env_file=None, batch_max=500, max_body_bytes=256 * 1024)
    assert Limits.from_settings(settings).max_body_bytes == 256 * 1024
    big, big_client = make_system(limits=Limits(rate_per_second=1e6, burst=10**6,
                                                batch_max=500, max_body_bytes=256 * 1024))
    b, s = demo(big)
    one = terms(big, b.id, title=0)
    body = {"trades": [one] * 300}  # about 100 KiB: over the default limit, under this one
    assert 64 * 1024 < len(json.dumps(body)) < 256 * 1024
    # read whole and answered on its items (one title 300 times)
    assert "trades[299].delivery.token_id" in fields(
        problem(big_client.post(BATCH, json=body, headers=s.idem()), 422))
    problem(big_client.post(BATCH, json={"trades": [one] * 900}, headers=s.idem()), 413)


# --- accepting ---------------------------------------------------------------------------------


def test_accept_batch_is_all_or_nothing(system, client) -> None:
    buyer, seller = managed(system, "Buyer"), managed(system, "Seller")
    r = client.post(BATCH, json={"trades": items(system, buyer, seller, 4)},
                    headers=seller.idem())
    ids = [t["id"] for t in r.json()["trades"]]
    assert client.post(f"/v1/trades/{ids[0]}/accept", headers=buyer.h).status_code == 200

    # one item already accepted: none of the others is accepted either
    body = problem(client.post(ACCEPT, json={"trades": [{"id": ids[1]}, {"id": ids[0]},
                                                        {"id": ids[2]}]}, headers=buyer.h),
                   409)
    assert fields(body) == ["trades[1]"] and body["type"].endswith("/invalid-transition")
    assert phases(client, buyer, ids) == ["agreed", "proposed", "proposed", "proposed"]

    # a trade that does not exist and another tenant's: the same answer, naming the item
    outsider, stranger = managed(system, "Outsider"), managed(system, "Stranger")
    foreign = client.post("/v1/trades", json=terms(system, stranger.id, seller=outsider),
                          headers=outsider.idem()).json()["id"]
    answers = []
    for tid in ("0x" + "ab" * 32, foreign):
        body = problem(client.post(ACCEPT, json={"trades": [{"id": ids[1]}, {"id": tid}]},
                                   headers=buyer.h), 422)
        assert fields(body) == ["trades[1].id"]
        answers.append({k: v for k, v in body.items() if k != "instance"})
    assert answers[0] == answers[1]
    # a trade named twice; the proposer accepting its own proposals
    body = problem(client.post(ACCEPT, json={"trades": [{"id": ids[1]}, {"id": ids[1]}]},
                               headers=buyer.h), 422)
    assert fields(body) == ["trades[1].id"]
    body = problem(client.post(ACCEPT, json={"trades": [{"id": ids[2]}, {"id": ids[3]}]},
                               headers=seller.h), 409)
    assert fields(body) == ["trades[0]", "trades[1]"]
    # a malformed id is refused by the schema, indexed
    body = problem(client.post(ACCEPT, json={"trades": [{"id": ids[1]}, {"id": "0x12"}]},
                               headers=buyer.h), 422)
    assert fields(body) == ["trades[1].id"]
    assert phases(client, buyer, ids) == ["agreed", "proposed", "proposed", "proposed"]

    r = client.post(ACCEPT, json={"trades": [{"id": ids[3]}, {"id": ids[1]}]}, headers=buyer.h)
    assert r.status_code == 200, r.text
    assert [(t["id"], t["phase"], t["role"]) for t in r.json()["trades"]] == \
        [(ids[3], "agreed", "buyer"), (ids[1], "agreed", "buyer")]
    assert phases(client, buyer, ids) == ["agreed", "agreed", "proposed", "agreed"]


def test_a_self_custody_buyer_accepts_a_batch_with_its_hashlocks(system, client) -> None:
    buyer = self_custody(system, "Buyer")
    seller = managed(system, "Seller")
    r = client.post(BATCH, json={"trades": items(system, buyer, seller, 3)},
                    headers=seller.idem())
    assert r.status_code == 201, r.text
    ids = [t["id"] for t in r.json()["trades"]]
    assert all(t["hashlock"] is None for t in r.json()["trades"])
    h = ["0x" + hashlock_of(new_secret()).hex() for _ in range(3)]

    # one hashlock twice; one missing: refused, naming those items
    body = problem(client.post(ACCEPT, json={"trades": [
        {"id": ids[0], "hashlock": h[0]}, {"id": ids[1], "hashlock": h[0]}]},
        headers=buyer.h), 422)
    assert fields(body) == ["trades[1].hashlock"]
    body = problem(client.post(ACCEPT, json={"trades": [
        {"id": ids[0], "hashlock": h[0]}, {"id": ids[1]}]}, headers=buyer.h), 422)
    assert fields(body) == ["trades[1].hashlock"]
    # a hashlock another trade uses (the third's, once accepted singly)
    assert client.post(f"/v1/trades/{ids[2]}/accept", json={"hashlock": h[2]},
                       headers=buyer.h).status_code == 200
    body = problem(client.post(ACCEPT, json={"trades": [
        {"id": ids[0], "hashlock": h[0]}, {"id": ids[1], "hashlock": h[2]}]},
        headers=buyer.h), 409)
    assert body["type"].endswith("/hashlock-reused") and fields(body) == ["trades[1].hashlock"]
    assert phases(client, buyer, ids) == ["proposed", "proposed", "agreed"]

    r = client.post(ACCEPT, json={"trades": [{"id": ids[0], "hashlock": h[0]},
                                             {"id": ids[1], "hashlock": h[1]}]},
                    headers=buyer.h)
    assert r.status_code == 200, r.text
    assert [t["hashlock"] for t in r.json()["trades"]] == h[:2]
    assert phases(client, buyer, ids) == ["agreed"] * 3


# --- the document ------------------------------------------------------------------------------


def test_both_routes_are_declared(system) -> None:
    paths = system.app.openapi()["paths"]
    batch, accept = paths[BATCH]["post"], paths[ACCEPT]["post"]
    assert batch["requestBody"]["content"]["application/json"]["schema"]["$ref"] \
        .endswith("/TradeBatch")
    assert accept["requestBody"]["content"]["application/json"]["schema"]["$ref"] \
        .endswith("/TradeAcceptBatch")
    for operation, ok in ((batch, "201"), (accept, "200")):
        assert operation["responses"][ok]["content"]["application/json"]["schema"]["$ref"] \
            .endswith("/TradeBatchResult")
        for status in ("409", "422"):
            assert "application/problem+json" in operation["responses"][status]["content"]
        assert {"401", "429", "400", "413"} <= set(operation["responses"])
    assert "200" not in batch["responses"] and "201" not in accept["responses"]
    assert any(p["name"] == "idempotency-key" and p["required"] for p in batch["parameters"])


def test_the_batch_paths_answer_post_only(system, client) -> None:
    """`batch` is not read as a trade id: another method is a 405 that allows POST only."""
    buyer, _ = demo(system)
    for path in (BATCH, ACCEPT):
        for method in ("GET", "DELETE", "OPTIONS"):
            r = client.request(method, path, headers=buyer.h)
            problem(r, 405)
            assert r.headers["allow"] == "POST", (method, path)


def test_batch_parties_are_recorded_per_trade(system, client) -> None:
    """Tenancy as for single proposals: each trade's parties, the proposer the caller."""
    buyer, seller = managed(system, "Buyer"), managed(system, "Seller")
    r = client.post(BATCH, json={"trades": items(system, buyer, seller, 2)},
                    headers=seller.idem())
    with system.gateway.session_factory() as session:
        for t in r.json()["trades"]:
            row = session.get(TradePartyRow, t["id"][2:])
            assert (row.buyer_id, row.seller_id, row.proposer_id) == \
                (buyer.id, seller.id, seller.id)
            assert row.amount == t["payment"]["amount"]
    outsider = managed(system, "Outsider")
    for t in r.json()["trades"]:
        problem(client.get(f"/v1/trades/{t['id']}", headers=outsider.h), 404)

