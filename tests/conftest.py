from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from gateway.chain.devnet import BUYER, RELAYER, SELLER, Devnet, start_devnet
from tests.databases import create_database, drop_database
from tests.helpers import approve

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=20, deadline=None)
settings.load_profile("ci")


@pytest.fixture
def database_url(tmp_path) -> str:
    """A new, empty database (SQLite file, or PostgreSQL with DVP_TEST_DATABASE_URL)."""
    url = create_database(tmp_path)
    yield url
    drop_database(url)


@pytest.fixture
def devnet() -> Devnet:
    """A fresh pair of in-process chains with every contract deployed (~0.15 s)."""
    return start_devnet()


@pytest.fixture
def buyer(devnet: Devnet):
    return devnet.account(BUYER)


@pytest.fixture
def seller(devnet: Devnet):
    return devnet.account(SELLER)


@pytest.fixture
def relayer(devnet: Devnet):
    return devnet.account(RELAYER)


@pytest.fixture
def approved_buyer(devnet: Devnet, buyer):
    """The buyer with a standing (max) allowance for the PaymentHTLC."""
    approve(devnet.payment.client, buyer, devnet.payment_token, devnet.payment_htlc.address)
    return buyer
