from __future__ import annotations

import pytest

from tests.integration.harness import World, make_gateway


@pytest.fixture
def database_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"


@pytest.fixture
def world(devnet, database_url) -> World:
    return World(devnet, make_gateway(devnet, database_url))
