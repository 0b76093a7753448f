"""Single proposals written together (`gateway.api.proposal_groups`, gathered by
`gateway.api.coalescing`): concurrent `POST /v1/trades` requests of one API process share one
transaction, and each still gets the answer it would have had alone, made one after the other:
its trade, its replay, or its own problem, which holds nobody else back."""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError

from gateway.api.coalescing import Coalescer
from gateway.api.context import Limits
from gateway.api.enterprises import Enterprise
from gateway.api.problems import Problem
from gateway.api.proposal_groups import Single, create_trade_group
from gateway.api.schemas import TradeCreate
from gateway.config import Settings
from gateway.db.enterprises import EnterpriseRepository
from gateway.db.idempotency import IdempotencyKeys
from gateway.db.models import IdempotencyRow, TradeRow
from gateway.domain.locks import hashlock_of, new_secret
from gateway.runner import System, build_system
from tests.databases import create_database, drop_database
from tests.e2e.test_api_contract import Party, managed, self_custody, terms

CAP = 500_000


@pytest.fixture
def system(tmp_path):
    url = create_database(tmp_path, "groups")
    system = build_system(Settings(_env_file=None), tmp_path / "run", database_url=url,
                          limits=Limits(rate_per_second=1e6, burst=10**6, exposure_cap=CAP))
    yield system
    system.close()
    drop_database(url)


@pytest.fixture
def client(system: System) -> TestClient:
    return TestClient(system.app, raise_server_exceptions=False)


def enterprise(system: System, party: Party) -> Enterprise:
    with system.gateway.session_factory() as session:
        return Enterprise.from_row(EnterpriseRepository(session).fields(party.id))


def single(system: System, party: Party, body: dict, key: str | None = None) -> Single:
    return Single(enterprise(system, party), TradeCreate(**body), key or str(uuid.uuid4()))


def hashlock() -> str:
    return "0x" + hashlock_of(new_secret()).hex()


def count(system: System, row: type) -> int:
    with system.gateway.session_factory() as session:
        return session.scalar(select(func.count()).select_from(row))


def groups(outcome: str) -> float:
    return REGISTRY.get_sample_value("dvp_proposal_groups_total", {"outcome": outcome}) or 0.0


def answer(outcome: object) -> tuple[int, object]:
    """(status, trade id) of a made or replayed trade; (status, (kind, fields)) of a problem."""
    if isinstance(outcome, Problem):
        return outcome.status, (outcome.kind, [e["field"] for e in outcome.errors])
    assert isinstance(outcome, tuple), outcome
    return outcome[0], outcome[1]["id"]


def post_at_once(system: System, party: Party, bodies: list[dict]) -> list[httpx.Response]:
    """`POST /v1/trades` of every body at once, on one event loop (the app in process)."""
    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=system.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            return await asyncio.gather(*(http.post("/v1/trades", json=b, headers=party.idem())
                                          for b in bodies))

    return asyncio.run(main())


def test_a_group_answers_each_request_as_if_made_one_after_another(system, client) -> None:
    seller, buyer, buyer2 = managed(system, "Seller"), self_custody(system, "Buyer"), \
        self_custody(system, "Buyer 2")
    earlier_body = terms(system, buyer.id, seller=seller, title=0)
    earlier = client.post("/v1/trades", json=earlier_body, headers=seller.idem("earlier"))
    in_use = hashlock()
    assert client.post("/v1/trades", json=terms(system, seller.id, role="buyer", seller=seller,
                                                 title=1, hashlock=in_use),
                       headers=buyer2.idem()).status_code == 201
    h1 = hashlock()
    first = terms(system, buyer.id, seller=seller, title=2)
    singles = [
        single(system, seller, first, "first"),                                      # 0 made
        single(system, seller, terms(system, "nobody", seller=seller, title=3)),     # 1 422
        single(system, buyer, terms(system, seller.id, role="buyer", seller=seller, title=4,
                                    amount="300000", hashlock=h1)),                  # 2 made
        single(system, buyer, terms(system, seller.id, role="buyer", seller=seller, title=5,
                                    amount="300000", hashlock=hashlock())),          # 3 cap
        single(system, buyer2, terms(system, seller.id, role="buyer", seller=seller,
                                     title=6, hashlock=h1)),                         # 4 in use
        single(system, buyer2, terms(system, seller.id, role="buyer", seller=seller,
                                     title=7, hashlock=in_use)),                     # 5 in use
        single(system, seller, first, "first"),                                      # 6 replay
        single(system, seller, terms(system, buyer.id, seller=seller, title=8),
               "first"),                                                             # 7 reuse
        single(system, seller, earlier_body, "earlier"),                             # 8 replay
        single(system, buyer2, terms(system, seller.id, role="buyer", seller=seller,
                                     title=9, amount="100000", hashlock=hashlock())),  # 9 made
    ]
    trades, together = count(system, TradeRow), groups("together")

    outcomes = create_trade_group(system.ctx, singles)

    assert groups("together") == together + 1  # written together, not each alone
    made = [answer(o)[1] for o in outcomes[:1] + outcomes[2:3] + outcomes[9:]]
    assert [answer(o)[0] for o in outcomes] == [201, 422, 201, 409, 409, 409, 201, 422, 201, 201]
    assert answer(outcomes[1])[1] == (None, ["counterparty"])
    assert answer(outcomes[3])[1] == ("exposure-cap", ["payment.amount"])
    assert answer(outcomes[4])[1] == answer(outcomes[5])[1] == ("hashlock-reused", ["hashlock"])
    assert answer(outcomes[6]) == answer(outcomes[0])  # the first's answer, replayed
    assert answer(outcomes[7])[1] == ("idempotency-key-reused", ["Idempotency-Key"])
    assert answer(outcomes[8]) == (201, earlier.json()["id"])
    assert count(system, TradeRow) == trades + 3 and len(set(made)) == 3
    # Each answer is the trade as a GET shows it to its caller, and stored for its key.
    for i, party in ((0, seller), (2, buyer), (9, buyer2)):
        status, body = outcomes[i]
        shown = client.get(f"/v1/trades/{body['id']}", headers=party.h).json()
        assert body == {**shown, "timeline": body.get("timeline", shown["timeline"])}
        again = client.post("/v1/trades", json=singles[i].body.model_dump(mode="json"),
                            headers=party.idem(singles[i].key))
        assert (again.status_code, again.json()) == (201, body)
    assert outcomes[0][1]["seller"]["enterprise_id"] == seller.id and \
        outcomes[2][1]["buyer"]["enterprise_id"] == buyer.id


def test_a_key_won_meanwhile_by_another_process_runs_each_request_alone(system) -> None:
    """Another API process commits a request with one of the group's keys between the group's
    read of the keys and its commit: the group's transaction loses on the key and writes
    nothing; each request then runs alone and answers as it would have: that one a key
    reused with another body, the others their trades."""
    if system.gateway.engine.dialect.name == "sqlite":
        pytest.skip("SQLite has one writer: the group's transaction holds it from its start, "
                    "so no other process can commit in between")
    seller, buyer = managed(system, "Seller"), self_custody(system, "Buyer")
    singles = [single(system, seller, terms(system, buyer.id, seller=seller, title=n))
               for n in range(3)]
    original = IdempotencyKeys.stored_many

    def won_meanwhile(self, keys, stored_before):  # noqa: ANN001, ANN202
        found = original(self, keys, stored_before)
        with system.gateway.session_factory.begin() as other:  # another process's request
            IdempotencyKeys(other).store(singles[1].caller.id, singles[1].key, "f" * 64, 201,
                                         {"id": "theirs"})
        return found

    IdempotencyKeys.stored_many = won_meanwhile
    trades, alone = count(system, TradeRow), groups("alone")
    try:
        outcomes = create_trade_group(system.ctx, singles)
    finally:
        IdempotencyKeys.stored_many = original
    assert groups("alone") == alone + 1
    assert [answer(o)[0] for o in outcomes] == [201, 422, 201]
    assert answer(outcomes[1])[1] == ("idempotency-key-reused", ["Idempotency-Key"])
    assert count(system, TradeRow) == trades + 2
    assert count(system, IdempotencyRow) >= 3


def test_a_group_that_fails_writes_nothing_and_each_request_runs_alone(system) -> None:
    """Whatever fails the group's transaction (here the database refuses its stored answers
    once) rolls all of it back; each request then runs alone: every trade made once."""
    seller, buyer = managed(system, "Seller"), self_custody(system, "Buyer")
    singles = [single(system, seller, terms(system, buyer.id, seller=seller, title=n))
               for n in range(3)]
    original = IdempotencyKeys.store_many

    def refused(self, answers):  # noqa: ANN001, ANN202
        IdempotencyKeys.store_many = original
        raise OperationalError("INSERT INTO idempotency_keys", {}, Exception("disk full"))

    IdempotencyKeys.store_many = refused
    trades, keys, alone = count(system, TradeRow), count(system, IdempotencyRow), groups("alone")
    try:
        outcomes = create_trade_group(system.ctx, singles)
    finally:
        IdempotencyKeys.store_many = original
    assert groups("alone") == alone + 1
    assert [answer(o)[0] for o in outcomes] == [201] * 3
    assert count(system, TradeRow) == trades + 3
    assert count(system, IdempotencyRow) == keys + 3


def test_concurrent_requests_are_gathered_and_each_answered(system) -> None:
    """Requests that arrive while a group is written go together in the next one; a lone
    request goes at once. Through the Coalescer with the real group writer."""
    seller, buyer = managed(system, "Seller"), self_custody(system, "Buyer")
    singles = [single(system, seller, terms(system, buyer.id, seller=seller, title=n))
               for n in range(6)]
    release = threading.Event()
    sizes: list[int] = []

    def run(group: list[Single]) -> list:  # noqa: ANN202
        sizes.append(len(group))
        if len(sizes) == 1:
            assert release.wait(30)  # the first, alone, holds until the others queue
        return create_trade_group(system.ctx, group)

    coalescer: Coalescer = Coalescer(run, max_items=4)

    async def main() -> list:
        first = asyncio.ensure_future(coalescer.submit(singles[0]))
        while not sizes:
            await asyncio.sleep(0)
        rest = [asyncio.ensure_future(coalescer.submit(s)) for s in singles[1:]]
        await asyncio.sleep(0)
        release.set()
        return await asyncio.gather(first, *rest)

    outcomes = asyncio.run(main())
    assert sizes == [1, 4, 1]  # at most max_items together
    assert [o[0] for o in outcomes] == [201] * 6
    assert len({o[1]["id"] for o in outcomes}) == 6


def test_an_exception_reaches_only_its_own_request() -> None:
    def run(items: list[int]) -> list:  # noqa: ANN202
        return [ValueError(i) if i % 2 else i * 10 for i in items]

    coalescer: Coalescer = Coalescer(run, max_items=8)

    async def main() -> list:
        return await asyncio.gather(*(coalescer.submit(i) for i in range(4)),
                                    return_exceptions=True)

    outcomes = asyncio.run(main())
    assert outcomes[0] == 0 and outcomes[2] == 20
    assert [str(o) for o in (outcomes[1], outcomes[3])] == ["1", "3"]


def test_requests_on_several_event_loops_at_once_are_each_answered() -> None:
    """A test client runs an event loop per request: several loops submit at once, each
    with its own queue; none waits for a group that another loop would have to run."""
    started = threading.Barrier(4, timeout=30)

    def run(items: list[int]) -> list:  # noqa: ANN202
        return [i * 10 for i in items]

    coalescer: Coalescer = Coalescer(run, max_items=8)
    answers: dict[int, int] = {}

    def client(n: int) -> None:
        async def main() -> int:
            started.wait()
            return await coalescer.submit(n)
        answers[n] = asyncio.run(main())

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert answers == {0: 0, 1: 10, 2: 20, 3: 30}


def test_concurrent_http_proposals_are_each_made_once(system) -> None:
    """Over HTTP, many at once: every request its own trade, none lost or doubled."""
    seller, buyer = managed(system, "Seller"), self_custody(system, "Buyer")
    bodies = [terms(system, buyer.id, seller=seller, title=n) for n in range(12)]
    trades = count(system, TradeRow)

    answers = post_at_once(system, seller, bodies)
    assert [r.status_code for r in answers] == [201] * 12, answers[0].text
    assert len({r.json()["id"] for r in answers}) == 12
    assert count(system, TradeRow) == trades + 12


def test_each_request_alone_when_groups_are_turned_off(make_system, monkeypatch) -> None:
    """DVP_REQUEST_GROUP_MAX=1: admissions and proposals each in a transaction of their own,
    concurrent requests all answered."""
    monkeypatch.setenv("DVP_REQUEST_GROUP_MAX", "1")
    limits = Limits.from_settings(Settings(_env_file=None))
    assert limits.request_group_max == 1
    system = make_system(limits=limits)
    seller, buyer = managed(system, "Seller"), self_custody(system, "Buyer")
    bodies = [terms(system, buyer.id, seller=seller, title=n) for n in range(4)]

    answers = post_at_once(system, seller, bodies)
    assert [r.status_code for r in answers] == [201] * 4, answers[0].text
    assert len({r.json()["id"] for r in answers}) == 4


def test_an_expired_key_in_a_group_is_a_new_key(system, client) -> None:
    """A key older than DVP_IDEMPOTENCY_TTL, read by the group: its row is deleted in the
    group's transaction and the request makes a new trade, stored under the key anew."""
    seller, buyer = managed(system, "Seller"), self_custody(system, "Buyer")
    body = terms(system, buyer.id, seller=seller, title=0)
    first = client.post("/v1/trades", json=body, headers=seller.idem("old"))
    assert first.status_code == 201, first.text
    with system.gateway.session_factory.begin() as session:
        session.execute(update(IdempotencyRow).values(
            created_at=datetime.now(UTC) - timedelta(seconds=system.ctx.limits.idempotency_ttl
                                                     + 60)))
    singles = [single(system, seller, body, "old"),
               single(system, seller, terms(system, buyer.id, seller=seller, title=1))]
    together = groups("together")
    outcomes = create_trade_group(system.ctx, singles)
    assert groups("together") == together + 1
    assert [answer(o)[0] for o in outcomes] == [201, 201]
    assert answer(outcomes[0])[1] != first.json()["id"]
    again = client.post("/v1/trades", json=body, headers=seller.idem("old"))
    assert (again.status_code, again.json()["id"]) == (201, answer(outcomes[0])[1])
