"""A node that ignores `eth_getLogs`' address filter (buggy or hostile) hands the poller the
logs of another contract with the same event topics: a second PaymentHTLC, anyone's to
deploy. A lock there carries the trade's exact terms, and its `Locked` log decodes like the
real one; the poller must drop it (counted and logged), so it never becomes the trade's
payment leg, while the watched contract's own logs are applied whatever the case of the
address the node writes in them."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import structlog
from prometheus_client import REGISTRY
from sqlalchemy import select
from structlog.testing import capture_logs

from gateway.chain.htlc import PaymentHTLCProxy
from gateway.contracts import load_artifact
from gateway.db.models import CursorRow, InputRow
from gateway.domain.trade import Chain
from tests.helpers import approve
from tests.integration.harness import World


@pytest.fixture(autouse=True)
def every_log_level():  # noqa: ANN201
    """Log lines of every level reach `capture_logs`, whatever level an earlier test in this
    process configured (`dvp-gateway demo` keeps only errors)."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    yield
    structlog.configure(**saved)


class FilterIgnoringNode:
    """The payment chain's client as the poller sees it, answering `get_logs` with the
    watched contract's logs (their address in lower case: still the same contract) and, as if
    the address filter were not there, every log of `foreign` in the range."""

    def __init__(self, client, foreign: str) -> None:  # noqa: ANN001
        self._client = client
        self.foreign = foreign
        self.injected = 0

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._client, name)

    def get_logs(self, start: int, end: int, address: str) -> list:
        ours = [dataclasses.replace(found, log=dataclasses.replace(
            found.log, address=found.log.address.lower()))
            for found in self._client.get_logs(start, end, address)]
        theirs = self._client.get_logs(start, end, self.foreign)
        self.injected += len(theirs)
        return sorted(ours + theirs, key=lambda f: (f.block_number, f.log.log_index))


def _foreign_count() -> float:
    return REGISTRY.get_sample_value("dvp_foreign_logs_total", {"chain": "payment"}) or 0.0


def _cursor(world: World, chain_id: int) -> int:
    with world.gateway.session_factory() as session:
        row = session.get(CursorRow, chain_id)
        return row.block_number if row else -1


def test_a_foreign_contracts_lock_never_becomes_a_trade_leg(world: World) -> None:
    devnet = world.devnet
    payment = devnet.payment.client
    foreign = PaymentHTLCProxy(payment, payment.deploy(
        world.issuer, load_artifact("PaymentHTLC"), devnet.payment_token.address))
    assert foreign.address != devnet.payment_htlc.address
    poller = world.gateway.relayer.pollers[Chain.PAYMENT]
    node = FilterIgnoringNode(poller.client, foreign.address)
    poller.client = node
    approve(payment, world.buyer, devnet.payment_token, foreign.address)

    trade = world.agree()
    t = trade.terms
    before = _foreign_count()
    with capture_logs() as logs:
        receipt, foreign_lock = foreign.lock(world.buyer, t.seller_payment, t.amount,
                                             t.hashlock, t.t_pay)
        assert receipt.succeeded
        world.gateway.relayer.run_until(
            lambda: _cursor(world, payment.chain_id) >= receipt.block_number)
    foreign_id = foreign.lock_id(foreign_lock)

    assert node.injected >= 1  # the foreign Locked log did reach the poller
    assert world.phase(trade) == "agreed" and world.state(trade).payment is None
    assert _foreign_count() - before == node.injected
    dropped = [e for e in logs if e["event"] == "foreign_logs_dropped"]
    assert dropped and dropped[0]["log_level"] == "warning"
    assert {e for d in dropped for e in d["emitters"]} == {foreign.address}
    with world.gateway.session_factory() as session:
        stored = session.scalars(select(InputRow.payload)).all()
    assert not any(p.get("lock_id") == "0x" + foreign_id.hex() for p in stored if p)

    # The watched contract's lock of the same terms is the leg (its logs, lower-cased by the
    # node, are not taken for foreign ones), and the trade settles on it.
    world.lock_payment(trade)
    world.run_until_phase(trade, "payment_locked")
    real_id = devnet.payment_htlc.lock_id(trade.payment_lock)
    assert world.state(trade).payment.lock_id == real_id != foreign_id
    world.lock_delivery(trade)
    world.run_until_phase(trade, "delivery_locked")
    world.take_delivery(trade)
    world.run_until_phase(trade, "settled")
    assert world.state(trade).payment.lock_id == real_id
    assert foreign.status(foreign_id) == 1  # still Open: the gateway never acted on it
