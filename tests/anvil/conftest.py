"""Fault tests on real anvil nodes: fixtures start two fresh nodes per test and stop them."""

from __future__ import annotations

import pytest

from gateway.chain.anvil import start_anvil_devnet
from gateway.chain.devnet import DEFAULT_BUSINESS_CHAIN_ID, DEFAULT_PAYMENT_CHAIN_ID


@pytest.fixture
def database_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"


@pytest.fixture
def anvil_devnet():  # noqa: ANN201
    net = start_anvil_devnet(DEFAULT_PAYMENT_CHAIN_ID, DEFAULT_BUSINESS_CHAIN_ID)
    try:
        yield net
    finally:
        net.payment.close()
        net.business.close()


@pytest.fixture
def stateful_anvil_devnet():  # noqa: ANN201
    """Nodes that keep their state in a file across a restart (`--state`)."""
    net = start_anvil_devnet(DEFAULT_PAYMENT_CHAIN_ID, DEFAULT_BUSINESS_CHAIN_ID,
                             keep_state=True)
    try:
        yield net
    finally:
        net.payment.close()
        net.business.close()
