"""Admissions of concurrent /v1 requests together (`gateway.api.auth.admit_group`): one
transaction, the keys read at once, one take per rate bucket; each request admitted or refused
exactly as it would have been alone, in arrival order."""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from gateway.api import auth
from gateway.api.context import Limits
from gateway.db.ratelimit import RateBuckets
from gateway.runner import System
from tests.e2e.test_api_contract import managed, self_custody

NOW = 1_900_000_000.0  # a fixed clock: no refill between the takes compared


@pytest.fixture
def make(make_system):
    def make() -> System:
        system = make_system(limits=Limits(rate_per_second=0.001, burst=3,
                                           client_rate_per_second=0.001, client_burst=9))
        system.ctx.rate_limiter.clock = lambda: NOW
        return system

    return make


def scenario(system: System) -> list[tuple[str, str]]:
    """Ten requests from one address (its bucket holds 9), then one from another: enterprise
    A five times (its bucket holds 3), B twice, no key, an unknown key."""
    a, b = managed(system, "A"), self_custody(system, "B")
    here, there = "10.0.0.1", "10.0.0.2"
    return [(here, a.key), (here, b.key), (here, a.key), (here, ""), (here, a.key),
            (here, "dvp_unknown"), (here, a.key), (here, b.key), (here, a.key),
            (here, b.key), (there, b.key)]


def summary(system: System, outcomes: list) -> list[tuple[str, str | None]]:
    """(outcome, enterprise named) with the enterprises as "A"/"B" (ids differ per system)."""
    names = {}
    with system.gateway.session_factory() as session:
        from gateway.db.enterprises import EnterpriseRepository
        for row in EnterpriseRepository(session).all():
            names[row.id] = row.name.split()[0]
    return [(o[0], names.get(o[2]) if o[2] else None) for o in outcomes]


def test_a_group_admits_and_refuses_each_request_as_alone_in_order(make) -> None:
    grouped, alone = make(), make()
    together = auth.admit_group(grouped.ctx, scenario(grouped))
    one_by_one = [auth._admit(alone.ctx, address, token)  # noqa: SLF001
                  for address, token in scenario(alone)]
    assert summary(grouped, together) == summary(alone, one_by_one) == [
        ("ok", "A"), ("ok", "B"), ("ok", "A"), ("no-key", None), ("ok", "A"),
        ("unknown-key", None), ("limited", "A"), ("ok", "B"), ("limited", "A"),
        ("limited", None),  # the address's tenth request: its bucket held nine
        ("ok", "B")]        # another address: B's third token
    waits = [o[1] for o in together if o[0] == "limited"]
    assert all(w > 0 for w in waits)
    assert waits == [o[1] for o in one_by_one if o[0] == "limited"]
    # The buckets are left as the requests alone leave them.
    for system in (grouped, alone):
        with system.gateway.session_factory() as session:
            left = RateBuckets(session).take("client:10.0.0.1", NOW, 0.001, 9.0)
        assert left == (0.0, False)


def test_a_group_that_fails_admits_each_request_alone(make) -> None:
    system = make()
    requests = scenario(system)[:3]
    original = auth.authenticate_many

    def refused(session, tokens):  # noqa: ANN001, ANN202
        raise OperationalError("SELECT api_keys", {}, Exception("connection lost"))

    auth.authenticate_many = refused
    try:
        outcomes = auth.admit_group(system.ctx, requests)
    finally:
        auth.authenticate_many = original
    assert summary(system, outcomes) == [("ok", "A"), ("ok", "B"), ("ok", "A")]
    # The group's takes were rolled back: each request took one token, once.
    with system.gateway.session_factory() as session:
        tokens, taken = RateBuckets(session).take("client:10.0.0.1", NOW, 0.001, 9.0)
    assert (tokens, taken) == (5.0, True)


def test_concurrent_requests_over_http_are_each_admitted_once(make) -> None:
    """Through the app: concurrent requests (each test-client request on its own event loop,
    and several at once) are all answered, and each takes exactly one token."""
    system = make()
    a = managed(system, "A")
    client = TestClient(system.app)
    codes: list[int] = []
    start = threading.Barrier(6, timeout=30)

    def get() -> None:
        start.wait()
        codes.append(client.get("/v1/me", headers=a.h).status_code)

    threads = [threading.Thread(target=get) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(codes) == [200, 200, 200, 429, 429, 429]  # A's bucket holds 3
