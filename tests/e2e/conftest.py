from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from gateway.config import Settings
from gateway.runner import System, build_system


@pytest.fixture
def system(tmp_path, database_url) -> System:
    system = build_system(Settings(_env_file=None), tmp_path / "run", database_url=database_url)
    yield system
    system.close()


@pytest.fixture
def client(system: System) -> TestClient:
    return TestClient(system.app, raise_server_exceptions=False)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
