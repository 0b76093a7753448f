"""Fault tests on real anvil nodes: fixtures start two fresh nodes per test and stop them."""

from __future__ import annotations

import pytest

from gateway.chain.anvil import running_anvil_devnet
from gateway.chain.devnet import DEFAULT_BUSINESS_CHAIN_ID, DEFAULT_PAYMENT_CHAIN_ID

# The database is tests/conftest.py's `database_url`: SQLite, or PostgreSQL in the
# PostgreSQL run, like every other suite.


@pytest.fixture
def anvil_devnet():  # noqa: ANN201
    with running_anvil_devnet(DEFAULT_PAYMENT_CHAIN_ID, DEFAULT_BUSINESS_CHAIN_ID) as net:
        yield net


@pytest.fixture
def stateful_anvil_devnet():  # noqa: ANN201
    """Nodes that keep their state in a file across a restart (`--state`)."""
    with running_anvil_devnet(DEFAULT_PAYMENT_CHAIN_ID, DEFAULT_BUSINESS_CHAIN_ID,
                              keep_state=True) as net:
        yield net
