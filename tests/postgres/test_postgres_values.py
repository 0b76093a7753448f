"""Values PostgreSQL refuses that SQLite takes: refused as the client's error, never a 500."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from gateway.config import Settings
from gateway.runner import build_system
from tests.databases import on_postgres

pytestmark = pytest.mark.skipif(
    not on_postgres(), reason="PostgreSQL only: set DVP_TEST_DATABASE_URL (make test-postgres)")


def test_nul_characters_in_a_query_are_a_422_problem(tmp_path, database_url) -> None:
    system = build_system(Settings(_env_file=None), tmp_path / "run", database_url=database_url)
    try:
        client = TestClient(system.app, raise_server_exceptions=False)
        key = system.demo["enterprises"]["buyer"]["api_key"]
        r = client.get("/v1/trades", params={"counterparty": "a\x00b"},
                       headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 422, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["status"] == 422
    finally:
        system.close()
