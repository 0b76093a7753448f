"""Rate limits (gateway.api.ratelimit): token buckets in the database, one per client address
taken before authentication (so key guessing is throttled) and one per enterprise after it,
shared by every API process on the database."""

from __future__ import annotations

import dataclasses
import time
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from gateway.api.app import create_app
from gateway.api.context import Limits
from gateway.api.ratelimit import RateLimiter, client_address, client_bucket, parse_networks
from gateway.db.models import RateBucketRow
from gateway.engine.build import open_database
from gateway.runner import System

PROBLEM = "application/problem+json"
HOST_A, HOST_B = ("203.0.113.7", 50000), ("203.0.113.8", 50000)
SLOW = 0.001  # tokens per second: no refill within a test


@pytest.fixture
def make_system(make_system):  # noqa: ANN001, ANN201 - tests/e2e/conftest.py's, by limits
    return lambda limits: make_system(limits=limits)


def keys(system: System) -> tuple[str, str]:
    ents = system.demo["enterprises"]
    return ents["buyer"]["api_key"], ents["seller"]["api_key"]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def limited(r) -> None:  # noqa: ANN001
    assert r.status_code == 429, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    assert r.json()["type"].endswith("/rate-limited")
    assert int(r.headers["retry-after"]) >= 1


def test_two_api_processes_share_one_enterprise_budget(make_system) -> None:
    """Two APIs on one database, each with its own engine and limiter (two processes, as
    far as the database can tell): an enterprise's burst is spent across both."""
    system = make_system(Limits(rate_per_second=SLOW, burst=4, client_rate_per_second=1000,
                                client_burst=1000))
    engine, factory = open_database(system.gateway.engine.url.render_as_string(
        hide_password=False))
    try:
        other = dataclasses.replace(system.ctx, session_factory=factory)
        assert other.rate_limiter is not system.ctx.rate_limiter
        one = TestClient(system.app, raise_server_exceptions=False)
        two = TestClient(create_app(other), raise_server_exceptions=False)
        buyer, seller = keys(system)
        for client in (one, two, one, two):
            assert client.get("/v1/me", headers=bearer(buyer)).status_code == 200
        limited(one.get("/v1/me", headers=bearer(buyer)))
        limited(two.get("/v1/me", headers=bearer(buyer)))
        # the seller's budget is its own, on both
        assert two.get("/v1/me", headers=bearer(seller)).status_code == 200
        assert one.get("/v1/me", headers=bearer(seller)).status_code == 200
    finally:
        engine.dispose()


def test_two_api_processes_share_one_client_address_budget(make_system) -> None:
    system = make_system(Limits(client_rate_per_second=SLOW, client_burst=3))
    engine, factory = open_database(system.gateway.engine.url.render_as_string(
        hide_password=False))
    try:
        other = dataclasses.replace(system.ctx, session_factory=factory)
        one = TestClient(system.app, raise_server_exceptions=False, client=HOST_A)
        two = TestClient(create_app(other), raise_server_exceptions=False, client=HOST_A)
        buyer, _ = keys(system)
        for client in (one, two, one):
            assert client.get("/v1/me", headers=bearer(buyer)).status_code == 200
        limited(two.get("/v1/me", headers=bearer(buyer)))
    finally:
        engine.dispose()


def test_bad_keys_from_one_address_are_throttled_and_other_addresses_are_not(
        make_system) -> None:
    system = make_system(Limits(client_rate_per_second=SLOW, client_burst=5))
    guesser = TestClient(system.app, raise_server_exceptions=False, client=HOST_A)
    honest = TestClient(system.app, raise_server_exceptions=False, client=HOST_B)
    buyer, _ = keys(system)
    for n in range(5):  # the burst: each answered 401, each counted
        r = guesser.get("/v1/me", headers=bearer(f"dvp_guess{n}"))
        assert r.status_code == 401, r.text
    limited(guesser.get("/v1/me", headers=bearer("dvp_guess5")))
    limited(guesser.get("/v1/trades"))  # no key at all: counted and refused alike
    limited(guesser.get("/v1/me", headers=bearer(buyer)))  # the address is out of tokens
    limited(guesser.post("/v1/trades", json={}, headers=bearer("dvp_x")))
    # another address is not affected, bad keys included
    assert honest.get("/v1/me", headers=bearer(buyer)).status_code == 200
    assert honest.get("/v1/me", headers=bearer("dvp_guess")).status_code == 401
    assert honest.get("/healthz").status_code == 200
    assert guesser.get("/healthz").status_code == 200  # operators' endpoints are not /v1


def test_forwarded_for_is_believed_only_from_trusted_proxies(make_system) -> None:
    system = make_system(Limits(client_rate_per_second=SLOW, client_burst=2))
    system.ctx.trusted_proxies = parse_networks("10.0.0.0/24")
    proxy = TestClient(system.app, raise_server_exceptions=False, client=("10.0.0.3", 1))
    direct = TestClient(system.app, raise_server_exceptions=False, client=HOST_B)
    buyer, _ = keys(system)

    def via(client: TestClient, forwarded: str) -> int:
        return client.get("/v1/me", headers={**bearer(buyer),
                                             "X-Forwarded-For": forwarded}).status_code

    # a client behind the proxy: its forged left-most entry is ignored
    assert via(proxy, "6.6.6.6, 198.51.100.1") == 200
    assert via(proxy, "7.7.7.7, 198.51.100.1, 10.0.0.9") == 200
    assert via(proxy, "198.51.100.1") == 429
    assert via(proxy, "198.51.100.2") == 200  # another client behind the same proxy
    # from an untrusted peer the header is ignored: its own address is what counts
    assert via(direct, "198.51.100.2") == 200
    assert via(direct, "198.51.100.2") == 200
    assert via(direct, "198.51.100.3") == 429


def test_client_address_and_bucket() -> None:
    trusted = parse_networks("10.0.0.1, 192.168.0.0/16")
    assert client_address("1.2.3.4", ["9.9.9.9"], trusted) == "1.2.3.4"
    assert client_address("10.0.0.1", ["9.9.9.9, 1.1.1.1"], trusted) == "1.1.1.1"
    assert client_address("10.0.0.1", ["9.9.9.9", "1.1.1.1, 192.168.3.4"], trusted) == "1.1.1.1"
    assert client_address("10.0.0.1", [], trusted) == "10.0.0.1"
    assert client_address("10.0.0.1", ["1.1.1.1, not-an-ip"], trusted) == "10.0.0.1"
    assert client_address("10.0.0.1", ["192.168.1.1"], trusted) == "192.168.1.1"
    assert client_address(None, [], ()) == "unknown"
    # an IPv6 host is limited by its /64; an IPv4-mapped address as the IPv4 one
    assert client_bucket("2001:db8:1:2:aaaa::1") == client_bucket("2001:db8:1:2:bbbb::2") \
        == "client:2001:db8:1:2::/64"
    assert client_bucket("2001:db8:1:3::1") != client_bucket("2001:db8:1:2::1")
    assert client_bucket("::ffff:1.2.3.4") == client_bucket("1.2.3.4") == "client:1.2.3.4"
    with pytest.raises(ValueError, match="nope"):
        parse_networks("10.0.0.1, nope")


def test_bucket_refills_with_time_and_is_one_row(database_url) -> None:
    """The upsert, by an injected clock: a full bucket of `burst`, refilled at `rate`, never
    beyond `burst`, and the wait it reports is the time to the next token."""
    engine, factory = open_database(database_url)
    now = [1_000_000.0]
    limiter = RateLimiter(clock=lambda: now[0])
    key = f"client:{uuid.uuid4()}"

    def take() -> float:
        with factory() as session:
            wait = limiter.take(session, key, 2.0, 3)
            session.commit()
            return wait

    try:
        assert [take() for _ in range(3)] == [0.0, 0.0, 0.0]
        assert take() == pytest.approx(0.5)
        now[0] += 0.25
        assert take() == pytest.approx(0.25)  # half a token so far; a refusal takes none
        now[0] += 0.25
        assert take() == 0.0
        assert take() == pytest.approx(0.5)
        now[0] += 3600  # refilled to the burst, not beyond
        assert [take() for _ in range(4)][-1] == pytest.approx(0.5)
        now[0] -= 60  # another process's clock, behind: no refill, no harm
        assert take() > 0
        with factory() as session:
            rows = session.scalars(select(RateBucketRow)).all()
        assert [r.key for r in rows] == [key]
    finally:
        engine.dispose()


def test_concurrent_takes_never_overspend(database_url) -> None:
    """Eight threads, own sessions, one bucket of 20: exactly 20 allowed."""
    import threading

    engine, factory = open_database(database_url)
    limiter = RateLimiter(clock=lambda: 5_000_000.0)
    allowed: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            with factory() as session:
                wait = limiter.take(session, "enterprise:shared", 1.0, 20)
                session.commit()
            with lock:
                allowed.append(wait == 0)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(allowed) == 40 and sum(allowed) == 20
    finally:
        engine.dispose()


def test_idle_buckets_are_swept(make_system) -> None:
    """A bucket untouched long enough to be full again is deleted by the API's sweep; a
    bucket still being refilled is kept."""
    system = make_system(Limits(rate_per_second=1.0, burst=10, client_rate_per_second=1.0,
                                client_burst=10))
    client = TestClient(system.app, raise_server_exceptions=False, client=HOST_A)
    buyer, _ = keys(system)
    now = time.time()
    with system.gateway.session_factory.begin() as session:
        session.add_all([RateBucketRow(key="client:idle", tokens=0.0, allowed=False,
                                       updated_at=now - 11),
                         RateBucketRow(key="client:refilling", tokens=0.0, allowed=False,
                                       updated_at=now - 5)])
    system.ctx.housekeeping.make_due()
    assert client.get("/v1/me", headers=bearer(buyer)).status_code == 200
    with system.gateway.session_factory() as session:
        remaining = set(session.scalars(select(RateBucketRow.key)))
    assert "client:idle" not in remaining
    assert {"client:refilling", client_bucket(HOST_A[0])} <= remaining
