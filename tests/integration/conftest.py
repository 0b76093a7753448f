from __future__ import annotations

import pytest

from gateway.chain.devnet import DEFAULT_BUSINESS_CHAIN_ID, DEFAULT_PAYMENT_CHAIN_ID, start_devnet
from tests.integration.harness import World, make_gateway

BACKENDS = ["eth-tester", "anvil"]


@pytest.fixture(params=BACKENDS)
def devnet(request):  # noqa: ANN201
    """One suite, two backends: every integration scenario runs on two in-process eth-tester
    chains and on two real anvil nodes (JSON-RPC over HTTP, started and stopped per test)."""
    if request.param == "eth-tester":
        yield start_devnet()
        return
    from gateway.chain.anvil import running_anvil_devnet

    with running_anvil_devnet(DEFAULT_PAYMENT_CHAIN_ID, DEFAULT_BUSINESS_CHAIN_ID) as net:
        yield net


@pytest.fixture
def world(devnet, database_url) -> World:
    return World(devnet, make_gateway(devnet, database_url))
