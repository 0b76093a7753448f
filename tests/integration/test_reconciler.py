"""The reconciler: open trades' legs against the contracts, with the chain changed under the
gateway (a reorg deeper than the relayer may follow, a node that comes back short, a log the
poller never applied). Each scenario also holds a healthy trade, which must not be flagged."""

from __future__ import annotations

from prometheus_client import REGISTRY
from sqlalchemy import select
from structlog.testing import capture_logs

from gateway.db.models import InputRow
from gateway.db.repository import Repository
from gateway.domain.trade import Chain, ChainDisagrees
from gateway.engine.reconciler import Disagreement
from tests.integration.harness import Trade, World, make_gateway


def _disagreements(chain: Chain) -> float:
    return REGISTRY.get_sample_value("dvp_chain_disagreements_total",
                                     {"chain": chain.value}) or 0.0


def _disagreeing(chain: Chain) -> float:
    return REGISTRY.get_sample_value("dvp_trades_disagreeing_chain", {"chain": chain.value})


def _flags(world: World, trade: Trade) -> list[str]:
    return [f for f in world.state(trade).flags if f.startswith("chain_disagrees:")]


def _alerts(logs: list[dict]) -> list[dict]:
    return [e for e in logs if e["event"] == "chain_disagrees"]


def test_a_lock_lost_in_a_reorg_deeper_than_allowed_is_flagged(devnet, database_url) -> None:
    """The payment chain forks below the depth the relayer may follow: the chain halts, and
    the reconciler (from the relayer's steps) flags the trade whose lock the fork dropped."""
    world = World(devnet, make_gateway(devnet, database_url, max_reorg_depth=2,
                                       reconcile_every=1))
    healthy = world.agree()
    world.lock_payment(healthy)
    world.run_until_phase(healthy, "payment_locked")
    payment = devnet.payment
    snapshot = payment.snapshot()
    lost = world.agree()
    world.lock_payment(lost)
    payment.mine(4)
    world.run_until_phase(lost, "payment_locked")
    lock_id = world.state(lost).payment.lock_id
    before = _disagreements(Chain.PAYMENT)

    payment.revert(snapshot)  # the lock and the blocks on top are gone
    payment.mine(8)
    with capture_logs() as logs:
        world.gateway.relayer.step()  # the fork is too deep: the chain halts
        assert Chain.PAYMENT in world.gateway.relayer.halted
        assert _flags(world, lost) == []  # seen once at a block the poller did not see
        world.gateway.relayer.step()  # seen again: reported

    assert _flags(world, lost) == [f"chain_disagrees:{lock_id.hex()}"]
    assert world.state(lost).payment.status.value == "open"  # legs follow the logs only
    assert _flags(world, healthy) == []
    assert _disagreements(Chain.PAYMENT) == before + 1
    assert _disagreeing(Chain.PAYMENT) == 1
    (alert,) = _alerts(logs)
    assert alert["log_level"] == "critical"
    assert alert["trade"] == "0x" + lost.trade_id.hex() and len(alert["trade"]) == 66
    assert (alert["chain"], alert["lock_id"], alert["recorded"], alert["on_chain"]) == (
        "payment", "0x" + lock_id.hex(), "open", "none")


def test_a_node_that_comes_back_short_is_flagged_before_the_next_poll(devnet,
                                                                     database_url) -> None:
    """The business node loses its latest blocks (a restart without them): the delivery lock
    the relayer recorded is no longer there, and the reconciler, run before any poll, says so
    once it has seen it twice."""
    world = World(devnet, make_gateway(devnet, database_url))
    healthy = world.agree()
    world.lock_payment(healthy)
    world.lock_delivery(healthy)
    lost = world.agree()
    world.lock_payment(lost)
    business = devnet.business
    snapshot = business.snapshot()
    world.lock_delivery(lost)
    world.run_until_phase(lost, "delivery_locked")
    assert world.phase(healthy) == "delivery_locked"
    lock_id = world.state(lost).delivery.lock_id
    relayer = world.gateway.relayer
    assert relayer.reconcile() == []  # all agree
    before = _disagreements(Chain.BUSINESS)

    business.revert(snapshot)  # shorter than the relayer's cursor, and without the lock
    with capture_logs() as logs:
        assert relayer.reconcile() == []  # once: maybe a reorg the poller is about to see
        assert _flags(world, lost) == []
        found = relayer.reconcile()
    assert found == [Disagreement(lost.trade_id, Chain.BUSINESS, lock_id, "open", "none")]
    assert _flags(world, lost) == [f"chain_disagrees:{lock_id.hex()}"]
    assert _flags(world, healthy) == []
    assert _disagreements(Chain.BUSINESS) == before + 1
    assert _disagreeing(Chain.BUSINESS) == 1
    assert [(a["trade"], a["lock_id"], a["recorded"], a["on_chain"]) for a in _alerts(logs)] \
        == [("0x" + lost.trade_id.hex(), "0x" + lock_id.hex(), "open", "none")]


def test_an_unpolled_claim_is_no_disagreement_a_log_the_poller_lost_is(devnet,
                                                                       database_url) -> None:
    """Reads are at the block the poller processed: a claim mined after it is not a
    disagreement however often it is read. A claim the cursor passed without its log being
    applied is, at once (the block read is the cursor's own), and flags the trade once."""
    world = World(devnet, make_gateway(devnet, database_url))
    healthy = world.agree()
    world.lock_payment(healthy)
    world.lock_delivery(healthy)
    trade = world.agree()
    world.lock_payment(trade)
    world.lock_delivery(trade)
    world.run_until_phase(trade, "delivery_locked")
    relayer = world.gateway.relayer
    lock_id = world.state(trade).delivery.lock_id
    before = _disagreements(Chain.BUSINESS)

    world.take_delivery(trade)  # mined, not yet polled
    with capture_logs() as logs:
        for _ in range(3):
            assert relayer.reconcile() == []
    assert _alerts(logs) == [] and _flags(world, trade) == []
    assert _disagreeing(Chain.BUSINESS) == 0

    # The poller "loses" the claim's log: the cursor moves past it without it.
    client = devnet.business.client
    head = client.w3.eth.get_block("latest")
    with world.gateway.session_factory.begin() as session:
        Repository(session).set_cursor(client.chain_id, head["number"], bytes(head["hash"]),
                                       head["timestamp"])
    with capture_logs() as logs:
        found = relayer.reconcile()
        assert relayer.reconcile() == found  # still standing: neither logged nor flagged again
    assert found == [Disagreement(trade.trade_id, Chain.BUSINESS, lock_id, "open", "claimed")]
    assert len(_alerts(logs)) == 1
    assert _flags(world, trade) == [f"chain_disagrees:{lock_id.hex()}"]
    assert _flags(world, healthy) == []
    assert world.state(trade).delivery.status.value == "open"
    assert _disagreements(Chain.BUSINESS) == before + 1
    assert _disagreeing(Chain.BUSINESS) == 1
    with world.gateway.session_factory() as session:
        kinds = session.scalars(select(InputRow.kind).where(
            InputRow.trade_id == trade.trade_id.hex())).all()
    assert kinds.count(ChainDisagrees.__name__) == 1
