"""Idempotency keys expire after DVP_IDEMPOTENCY_TTL (24 h by default): a key reused after
that is a new key, and expired keys are deleted by the API's housekeeping sweep
(gateway.api.housekeeping). Rows are aged by setting their `created_at`, never by waiting."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from gateway.api.context import Limits
from gateway.config import Settings
from gateway.db.models import IdempotencyRow
from gateway.runner import System, build_system
from tests.databases import create_database, drop_database
from tests.e2e.test_api_contract import demo, problem, terms


def age(system: System, key: str, by: timedelta) -> None:
    with system.gateway.session_factory.begin() as session:
        session.execute(update(IdempotencyRow).where(IdempotencyRow.key == key)
                        .values(created_at=datetime.now(UTC) - by))


def stored(system: System, key: str) -> list[str]:
    with system.gateway.session_factory() as session:
        return [row.response["id"] for row in session.scalars(
            select(IdempotencyRow).where(IdempotencyRow.key == key))]


def test_a_key_reused_after_24_hours_is_a_new_key(system, client) -> None:
    buyer, seller = demo(system)
    key = str(uuid.uuid4())
    first_body, second_body = terms(system, buyer.id), terms(system, buyer.id, title=1)
    r = client.post("/v1/trades", json=first_body, headers=seller.idem(key))
    assert r.status_code == 201, r.text
    first = r.json()["id"]

    age(system, key, timedelta(hours=23, minutes=59))  # still remembered
    r = client.post("/v1/trades", json=first_body, headers=seller.idem(key))
    assert r.json()["id"] == first
    problem(client.post("/v1/trades", json=second_body, headers=seller.idem(key)), 422,
            "Idempotency-Key")

    age(system, key, timedelta(hours=24, minutes=1))  # expired: a new key
    r = client.post("/v1/trades", json=second_body, headers=seller.idem(key))
    assert r.status_code == 201, r.text
    second = r.json()["id"]
    assert second != first
    assert stored(system, key) == [second]
    r = client.post("/v1/trades", json=second_body, headers=seller.idem(key))  # replayed
    assert r.json()["id"] == second
    # both trades exist: the first was not undone, only forgotten as a replay
    for trade_id in (first, second):
        assert client.get(f"/v1/trades/{trade_id}", headers=seller.h).status_code == 200


@pytest.fixture
def short_ttl_system(tmp_path, monkeypatch):
    monkeypatch.setenv("DVP_IDEMPOTENCY_TTL", "600")
    settings = Settings(_env_file=None)
    assert settings.idempotency_ttl == 600
    url = create_database(tmp_path)
    system = build_system(settings, tmp_path / "run", database_url=url,
                          limits=Limits.from_settings(settings))
    yield system
    system.close()
    drop_database(url)


def test_the_time_to_live_is_configurable(short_ttl_system) -> None:
    system = short_ttl_system
    client = TestClient(system.app, raise_server_exceptions=False)
    buyer, seller = demo(system)
    key = str(uuid.uuid4())
    first_body, second_body = terms(system, buyer.id), terms(system, buyer.id, title=1)
    assert client.post("/v1/trades", json=first_body,
                       headers=seller.idem(key)).status_code == 201
    age(system, key, timedelta(seconds=500))
    problem(client.post("/v1/trades", json=second_body, headers=seller.idem(key)), 422)
    age(system, key, timedelta(seconds=700))
    assert client.post("/v1/trades", json=second_body,
                       headers=seller.idem(key)).status_code == 201


def test_expired_keys_are_swept(system, client) -> None:
    """The sweep (due at most once a minute per process; made due here) deletes every
    tenant's expired keys and keeps the others."""
    buyer, seller = demo(system)
    now = datetime.now(UTC)
    rows = {("old", buyer.id): now - timedelta(hours=25), ("old", seller.id): now - timedelta(
        days=30), ("fresh", buyer.id): now - timedelta(hours=1)}
    with system.gateway.session_factory.begin() as session:
        session.add_all([IdempotencyRow(enterprise_id=ent, key=key, request_hash="00" * 32,
                                        status_code=201, response={"id": key}, created_at=at)
                         for (key, ent), at in rows.items()])
    system.ctx.housekeeping.make_due()
    assert client.get("/v1/me", headers=buyer.h).status_code == 200
    with system.gateway.session_factory() as session:
        left = set(session.execute(select(IdempotencyRow.key, IdempotencyRow.enterprise_id)))
    assert left == {("fresh", buyer.id)}
    assert not system.ctx.housekeeping.due()  # swept: not again for a minute
