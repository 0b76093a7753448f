from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from gateway.config import Settings
from gateway.runner import System, build_system
from tests.databases import create_database, drop_database


@pytest.fixture
def system(tmp_path, database_url) -> System:
    system = build_system(Settings(_env_file=None), tmp_path / "run", database_url=database_url)
    yield system
    system.close()


BACKENDS = ["eth-tester", "anvil"]


@pytest.fixture(params=BACKENDS)
def system_on_both_backends(request, tmp_path, database_url) -> System:
    """The whole gateway (API, relayer, database) on in-process chains, or on two real anvil
    nodes over JSON-RPC: the flows that move money run on both."""
    if request.param == "eth-tester":
        system = build_system(Settings(_env_file=None), tmp_path / "run",
                              database_url=database_url)
        yield system
        system.close()
        return
    from gateway.chain.anvil import running_anvil_devnet

    settings = Settings(_env_file=None)
    with running_anvil_devnet(settings.payment_chain_id, settings.business_chain_id) as net:
        system = build_system(settings, tmp_path / "run", database_url=database_url,
                              devnet=net)
        yield system
        system.close()


@pytest.fixture
def client(system: System) -> TestClient:
    return TestClient(system.app, raise_server_exceptions=False)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def self_custody_parties(system: System, document: bytes):  # noqa: ANN201
    """A self-custody buyer and seller on the devnet's buyer and seller keys, and a title
    issued to the seller carrying `document`'s sha256: (buyer, buyer_key, seller, seller_key,
    token_id, document_hash)."""
    import hashlib

    from gateway.api.enterprises import create_enterprise
    from gateway.chain.devnet import BUYER, ISSUER, SELLER

    d = system.devnet
    buyer_acct, seller_acct = d.account(BUYER), d.account(SELLER)
    with system.gateway.session_factory.begin() as session:
        buyer, buyer_key = create_enterprise(session, "Self Buyer", managed=False, cipher=None,
                                             payment_address=buyer_acct.address,
                                             business_address=buyer_acct.address)
        seller, seller_key = create_enterprise(session, "Self Seller", managed=False,
                                               cipher=None, payment_address=seller_acct.address,
                                               business_address=seller_acct.address)
    doc = hashlib.sha256(document).digest()
    assert d.business.client.transact(d.account(ISSUER), to=d.titles.address, gas=300_000,
                                      data=d.titles.encode_abi("issue", [seller.business_address,
                                                                         doc])).succeeded
    return buyer, buyer_key, seller, seller_key, d.titles.functions.issuedCount().call(), doc


def module_system(tmp_path_factory, name: str):  # noqa: ANN001, ANN201
    """A whole gateway shared by a module's tests, the rate limit out of the way and /readyz
    and /metrics never cached (a generator: `yield from` it in a module-scoped fixture)."""
    from gateway.api.context import Limits
    from tests.databases import create_database, drop_database

    workdir = tmp_path_factory.mktemp(name)
    url = create_database(workdir)
    system = build_system(Settings(_env_file=None), workdir / "run",
                          limits=Limits(rate_per_second=1e6, burst=10**6, ops_cache_seconds=0),
                          database_url=url)
    yield system
    system.close()
    drop_database(url)


class Meeting:
    """Two concurrent calls of `obj.method` made to meet (`meet_in`), once: a later call (a
    request's unit of work run again after its commit lost a race) does not wait."""

    def __init__(self, obj: object, method: str, timeout: float) -> None:
        import threading

        self.barrier = threading.Barrier(2, timeout=timeout)
        self._obj, self._method = obj, method
        self._original = original = getattr(obj, method)
        barrier, met = self.barrier, threading.Event()

        def in_step(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if not met.is_set():  # they meet once: a call after that (a retry) goes on
                try:
                    barrier.wait()
                    met.set()
                except threading.BrokenBarrierError:
                    pass
            return original(*args, **kwargs)

        setattr(obj, method, in_step)

    def restore(self) -> None:
        setattr(self._obj, self._method, self._original)

    def race(self, call):  # noqa: ANN001, ANN201 - what each call answered
        """Run `call` in two threads at once, then put the method back."""
        import threading

        answers: list = []
        threads = [threading.Thread(target=lambda: answers.append(call())) for _ in range(2)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            self.restore()
        return answers


def meet_in(obj: object, method: str, timeout: float = 5) -> Meeting:
    """Make a race between two requests certain rather than likely: each call of
    `obj.method` waits until a second call has got there too (or `timeout` passes: a fixed
    gateway may never let two in; `barrier.broken` tells)."""
    return Meeting(obj, method, timeout)


@pytest.fixture
def make_system(tmp_path):
    """Build extra whole gateways (`build_system`'s keywords: own limits, ...), each on a new
    database; closed at teardown."""
    built: list[tuple[System, str]] = []

    def make(**kw) -> System:
        url = create_database(tmp_path, f"run{len(built)}")
        system = build_system(Settings(_env_file=None), tmp_path / f"run{len(built)}",
                              database_url=url, **kw)
        built.append((system, url))
        return system

    yield make
    for system, url in built:
        system.close()
        drop_database(url)
