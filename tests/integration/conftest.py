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
    from gateway.chain.anvil import start_anvil_devnet

    net = start_anvil_devnet(DEFAULT_PAYMENT_CHAIN_ID, DEFAULT_BUSINESS_CHAIN_ID)
    try:
        yield net
    finally:
        net.payment.close()
        net.business.close()


@pytest.fixture
def world(devnet, database_url) -> World:
    return World(devnet, make_gateway(devnet, database_url))
