"""Faults a real chain and a real machine produce, on anvil: reorgs (acted on, while the
relayer is down, deeper than the configured depth), a node killed and restarted mid-flow, and
a stalled chain. Every test asserts balances on both chains and the trade's final phase.
Chain time moves by `evm_setNextBlockTimestamp`/`evm_increaseTime`; waits are on chain or
database state, never fixed sleeps."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select
from structlog.testing import capture_logs

from gateway.chain.anvil import AnvilChain, AnvilNode
from gateway.chain.devnet import DEFAULT_BUSINESS_CHAIN_ID, DEFAULT_PAYMENT_CHAIN_ID, deploy_devnet
from gateway.db.models import AttemptRow
from gateway.domain.trade import Chain
from tests.integration.harness import AMOUNT, Trade, World, make_gateway


def _wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s")
        time.sleep(0.02)


def _balances(world: World) -> dict[str, int]:
    return {a: world.token_balance(a) for a in (world.buyer.address, world.seller.address)}


def _assert_settled(world: World, trade: Trade, before: dict[str, int]) -> None:
    assert world.phase(trade) == "settled"
    assert world.token_balance(world.buyer.address) == before[world.buyer.address] - AMOUNT
    assert world.token_balance(world.seller.address) == before[world.seller.address] + AMOUNT
    assert world.token_balance(world.devnet.payment_htlc.address) == 0
    assert world.title_owner(trade) == world.buyer.address
    assert not world.state(trade).pending


def _attempts(world: World) -> list[AttemptRow]:
    with world.gateway.session_factory() as session:
        return list(session.scalars(select(AttemptRow).order_by(AttemptRow.id)))


def _locked(world: World) -> Trade:
    trade = world.agree()
    world.lock_payment(trade)
    world.lock_delivery(trade)
    world.run_until_phase(trade, "delivery_locked")
    return trade


# --- 1. reorgs ------------------------------------------------------------------------------


def test_reorg_removes_the_business_claim_the_relayer_acted_on(anvil_devnet,
                                                              database_url) -> None:
    world = World(anvil_devnet, make_gateway(anvil_devnet, database_url, max_reorg_depth=8))
    before = _balances(world)
    trade = _locked(world)
    world.take_delivery(trade)
    world.run_until_phase(trade, "settled")  # the relayer claimed the payment on the secret
    assert world.token_balance(world.seller.address) == before[world.seller.address] + AMOUNT

    anvil_devnet.business.reorg(1)  # the buyer's claim is no longer on the chain
    assert world.title_owner(trade) == anvil_devnet.delivery_htlc.address
    # The secret stays public: the relayer re-submits the delivery claim for the buyer.
    world.gateway.relayer.run_until(
        lambda: world.title_owner(trade) == world.buyer.address and
        world.phase(trade) == "settled")
    _assert_settled(world, trade, before)
    assert [a.chain_id for a in _attempts(world)] == [DEFAULT_PAYMENT_CHAIN_ID,
                                                      DEFAULT_BUSINESS_CHAIN_ID]


def test_nothing_is_acted_on_before_its_confirmation_depth(anvil_devnet,
                                                          database_url) -> None:
    """Business confirmations 2: a claim reorged away while still shallower than that was
    never seen, so nothing was sent on it; the buyer's claim mined again settles as usual."""
    from dataclasses import replace

    from tests.integration.harness import TEST_POLICY

    policy = replace(TEST_POLICY, business_confirmations=2)
    world = World(anvil_devnet, make_gateway(anvil_devnet, database_url, policy=policy,
                                             business_confirmations=2, max_reorg_depth=8))
    business = anvil_devnet.business
    before = _balances(world)
    trade = _locked_deep(world, business)
    world.take_delivery(trade)
    business.mine()  # one confirmation: not enough
    world.gateway.relayer.step()
    assert world.phase(trade) == "delivery_locked" and _attempts(world) == []

    business.reorg(2)  # the claim's block and the one on top are replaced: no claim
    business.mine(3)
    for _ in range(2):
        world.gateway.relayer.step()
    assert world.phase(trade) == "delivery_locked" and _attempts(world) == []
    assert world.title_owner(trade) == anvil_devnet.delivery_htlc.address

    business.forget_nonces()  # the buyer's wallet resyncs its nonce after the reorg
    world.take_delivery(trade)
    business.mine(2)
    world.run_until_phase(trade, "settled")
    _assert_settled(world, trade, before)
    assert [a.status for a in _attempts(world)] == ["mined"]  # one payment claim


def _locked_deep(world: World, business) -> Trade:  # noqa: ANN001
    """Both legs locked and confirmed two blocks deep on the business chain."""
    trade = world.agree()
    world.lock_payment(trade)
    world.lock_delivery(trade)
    business.mine(2)
    world.run_until_phase(trade, "delivery_locked")
    return trade


def test_reorg_while_the_relayer_is_down_is_found_from_stored_block_hashes(
        anvil_devnet, database_url) -> None:
    world = World(anvil_devnet, make_gateway(anvil_devnet, database_url, max_reorg_depth=8))
    before = _balances(world)
    trade = _locked(world)
    world.take_delivery(trade)
    world.run_until_phase(trade, "settled")
    world.gateway.engine.dispose()  # the relayer goes down

    anvil_devnet.payment.reorg(1)  # its payment claim is orphaned
    anvil_devnet.payment.mine(2)
    assert world.token_balance(world.seller.address) == before[world.seller.address]

    world.gateway = make_gateway(anvil_devnet, database_url, max_reorg_depth=8)  # restart
    world.gateway.relayer.run_until(
        lambda: world.token_balance(world.seller.address) ==
        before[world.seller.address] + AMOUNT and world.phase(trade) == "settled")
    _assert_settled(world, trade, before)
    # Claimed twice: the first claim, orphaned by the reorg, is recorded so (it was left
    # "mined" at a block that no longer held it), the second for good.
    assert [a.status for a in _attempts(world)] == ["orphaned", "mined"]


def test_reorg_deeper_than_the_configured_depth_halts_that_chain_loudly(anvil_devnet,
                                                                       database_url) -> None:
    world = World(anvil_devnet, make_gateway(anvil_devnet, database_url, max_reorg_depth=2))
    before = _balances(world)
    trade = _locked(world)
    business = anvil_devnet.business
    for _ in range(3):  # the relayer processes a few more business blocks
        business.mine()
        world.gateway.relayer.step()

    business.reorg(4)  # the delivery lock's block is replaced too: the title is the seller's
    assert world.title_owner(trade) == world.seller.address
    with capture_logs() as logs:
        world.gateway.relayer.step()
        world.gateway.relayer.step()
    halted = [e for e in logs if e["event"] == "chain_halted"]
    assert len(halted) == 1 and halted[0]["log_level"] == "critical"
    assert "maximum reorg depth" in halted[0]["reason"]
    assert set(world.gateway.relayer.halted) == {Chain.BUSINESS}
    # Never silently, never acting on the halted chain: the trade stays where it was and the
    # payment stays locked (its chain is still followed) until an operator steps in.
    assert world.phase(trade) == "delivery_locked"
    assert world.token_balance(world.buyer.address) == before[world.buyer.address] - AMOUNT
    assert world.token_balance(anvil_devnet.payment_htlc.address) == AMOUNT
    assert world.token_balance(world.seller.address) == before[world.seller.address]
    assert _attempts(world) == []


# --- 4. a node killed and restarted mid-flow --------------------------------------------------


def test_payment_node_killed_and_restarted_relayer_backs_off_and_settles(
        stateful_anvil_devnet, database_url) -> None:
    net = stateful_anvil_devnet
    world = World(net, make_gateway(net, database_url))
    before = _balances(world)
    trade = _locked(world)
    node = net.payment.node
    head = net.payment.w3.eth.block_number
    node.stop(remove=False)  # SIGTERM: anvil writes its state file
    node.start()
    assert net.payment.w3.eth.block_number == head  # the state file works

    stop = threading.Event()
    thread = threading.Thread(target=world.gateway.relayer.run_forever, args=(stop, 0.05),
                              daemon=True)
    with capture_logs() as logs:
        node.stop(remove=False, kill=True)  # SIGKILL: nothing is written
        world.take_delivery(trade)  # the business chain is up: the secret is out
        thread.start()
        try:
            def failures() -> list[float]:
                return [e["retry_in"] for e in list(logs) if e["event"] == "relayer_step_failed"]
            _wait_for(lambda: len(failures()) >= 3, what="three failed relayer steps")
            assert failures()[:3] == [0.1, 0.2, 0.4]  # exponential backoff
            assert world.phase(trade) in ("delivery_locked", "delivered")
            node.start()  # same port, same state (the last file written)
            _wait_for(lambda: world.phase(trade) == "settled", what="settled")
        finally:
            stop.set()
            thread.join(30)
    assert net.payment.w3.eth.block_number > head
    assert net.payment.next_block_timestamp() < trade.terms.t_pay
    _assert_settled(world, trade, before)
    attempts = _attempts(world)
    assert [a.status for a in attempts] == ["mined"]


def test_business_node_restarted_without_its_last_blocks_buyer_still_gets_the_title(
        stateful_anvil_devnet, database_url) -> None:
    """The node dies before writing the block with the buyer's claim, after the relayer
    claimed the payment on the secret it revealed: on restart the chain is shorter than the
    relayer's cursor and the title is locked again. The secret stays public; the relayer
    finds the fork, claims the title for the buyer, and the trade is settled again."""
    net = stateful_anvil_devnet
    world = World(net, make_gateway(net, database_url))
    before = _balances(world)
    trade = _locked(world)
    node = net.business.node
    node.stop(remove=False)  # SIGTERM: the state file holds both locks
    node.start()
    head = net.business.w3.eth.block_number
    world.take_delivery(trade)
    world.run_until_phase(trade, "settled")
    assert world.token_balance(world.seller.address) == before[world.seller.address] + AMOUNT

    node.stop(remove=False, kill=True)  # SIGKILL: the claim's block is never written
    node.start()
    assert net.business.w3.eth.block_number == head  # shorter than the relayer's cursor
    assert world.title_owner(trade) == net.delivery_htlc.address
    with capture_logs() as logs:
        world.gateway.relayer.run_until(
            lambda: world.title_owner(trade) == world.buyer.address and
            world.phase(trade) == "settled")
    assert any(e["event"] == "reorg_rewind" and e["chain"] == "business" for e in logs)
    _assert_settled(world, trade, before)


def test_payment_node_restarted_without_the_relayers_claim_it_is_sent_again_once(
        stateful_anvil_devnet, database_url) -> None:
    """The payment node dies before writing the block with the relayer's own claim: the claim
    is gone from the chain (and from the node's pool) and the relayer's cursor is above the
    head. The relayer finds the fork and the claim is mined again, once, from its record."""
    net = stateful_anvil_devnet
    world = World(net, make_gateway(net, database_url))
    before = _balances(world)
    trade = _locked(world)
    node = net.payment.node
    node.stop(remove=False)  # SIGTERM: the state file holds the payment lock
    node.start()
    head = net.payment.w3.eth.block_number
    world.take_delivery(trade)
    world.run_until_phase(trade, "settled")

    node.stop(remove=False, kill=True)  # SIGKILL: the claim's block is never written
    node.start()
    assert net.payment.w3.eth.block_number == head
    assert world.token_balance(world.seller.address) == before[world.seller.address]
    world.gateway.relayer.run_until(
        lambda: world.token_balance(world.seller.address) ==
        before[world.seller.address] + AMOUNT and world.phase(trade) == "settled")
    _assert_settled(world, trade, before)
    mined = [a for a in _attempts(world) if a.status == "mined"]
    assert len(mined) == 1 and not [a for a in _attempts(world) if a.status == "reverted"]


# --- 5. a stalled chain -----------------------------------------------------------------------


@pytest.fixture
def lagging_devnet():  # noqa: ANN201
    """Two nodes whose chain time is a day behind the wall clock: every deadline set by chain
    time is already in the wall clock's past."""
    past = int(time.time()) - 86_400
    chains = [AnvilChain(name, chain_id, node=AnvilNode(chain_id,
                                                        extra_args=("--timestamp", str(past))))
              for name, chain_id in (("payment", DEFAULT_PAYMENT_CHAIN_ID),
                                     ("business", DEFAULT_BUSINESS_CHAIN_ID))]
    try:
        yield deploy_devnet(*chains)
    finally:
        for chain in chains:
            chain.close()


def test_stalled_chain_never_refunds_by_wall_clock_and_alerts(lagging_devnet,
                                                              database_url) -> None:
    net = lagging_devnet
    world = World(net, make_gateway(net, database_url, stall_after=60))
    before = _balances(world)
    with capture_logs() as logs:
        trade = world.agree()
        world.lock_payment(trade)
        world.run_until_phase(trade, "payment_locked")  # the seller never delivers
        assert trade.terms.t_pay < time.time()  # by the wall clock, the payment is refundable

        payment = net.payment
        payment.set_automine(False)  # the payment chain stalls
        business = net.business
        business.set_next_block_timestamp(trade.terms.t_pay + 3600)  # the other chain's time
        business.mine()  # is no business of the payment leg
        for _ in range(5):
            world.gateway.relayer.step()
    stalled = [e for e in logs if e["event"] == "chain_stalled"]
    assert {e["chain"] for e in stalled} == {"payment", "business"}  # both lag the wall clock
    assert all(e["log_level"] == "critical" for e in stalled) and len(stalled) == 2
    assert world.phase(trade) == "payment_locked"
    assert payment.pending_transactions() == [] and _attempts(world) == []
    assert world.token_balance(world.buyer.address) == before[world.buyer.address] - AMOUNT

    # The payment chain moves on to T_pay: now, and only now, the refund is due.
    payment.set_automine(True)
    payment.set_next_block_timestamp(trade.terms.t_pay)
    payment.mine()
    world.run_until_phase(trade, "payment_refunded")
    refund = payment.client.receipt(bytes.fromhex(_attempts(world)[0].tx_hash))
    assert payment.w3.eth.get_block(refund.block_number)["timestamp"] >= trade.terms.t_pay
    assert _balances(world) == before
    assert world.token_balance(net.payment_htlc.address) == 0
    assert world.title_owner(trade) == world.seller.address
    assert not world.state(trade).pending
