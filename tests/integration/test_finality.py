"""Trust rule 2: deliver only against a final lock (issue 10 §2).

Reproduced before: with payment confirmations 2, a managed seller's title was locked once the
buyer's payment lock was 2 blocks deep; a 3-block payment-chain reorg removed the payment lock,
the buyer claimed the title and had its money back. Now the payment chain has a finality rule
at least as deep as the reorgs the gateway handles, and the title waits for it.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.chain.devnet import SELLER
from gateway.config import Settings
from gateway.domain.locks import DeliveryLock
from tests.integration.harness import TEST_POLICY, World, make_gateway

DEPTH = 8  # the reorg depth the gateway handles, and the payment chain's finality depth


def _world(devnet, database_url) -> World:  # noqa: ANN001
    seller = devnet.account(SELLER)
    policy = replace(TEST_POLICY, payment_confirmations=2, payment_finality=DEPTH)
    return World(devnet, make_gateway(devnet, database_url, policy=policy,
                                      payment_confirmations=2, max_reorg_depth=DEPTH,
                                      managed_keys={seller.address: seller}))


def test_a_payment_lock_reorged_away_before_it_was_final_was_never_delivered_against(
        devnet, database_url) -> None:
    world = _world(devnet, database_url)
    buyer_before = world.token_balance(world.buyer.address)
    trade = world.agree(managed_seller=True)
    payment = world.devnet.payment
    snapshot = payment.snapshot()
    world.lock_payment(trade)
    payment.mine(3)  # 3 deep: seen (2 confirmations), not final (8)
    for _ in range(3):
        world.gateway.relayer.step()
    state = world.state(trade)
    assert state.payment is not None and state.phase.value == "agreed"
    assert state.delivery is None and not state.pending
    assert world.title_owner(trade) == world.seller.address
    payment.revert(snapshot)  # a 3-block reorg: the buyer's lock is gone
    payment.mine(5)
    for _ in range(3):
        world.gateway.relayer.step()
    state = world.state(trade)
    assert state.payment is None and state.phase.value == "agreed"
    assert world.title_owner(trade) == world.seller.address
    assert world.token_balance(world.buyer.address) == buyer_before
    assert world.gateway.relayer.halted == {}


def test_the_title_is_locked_once_the_payment_lock_is_final_and_the_trade_settles(
        devnet, database_url) -> None:
    world = _world(devnet, database_url)
    trade = world.agree(managed_seller=True)
    world.lock_payment(trade)
    payment = world.devnet.payment
    payment.mine(DEPTH - 1)
    for _ in range(3):
        world.gateway.relayer.step()
    assert world.phase(trade) == "agreed" and world.state(trade).delivery is None
    payment.mine(1)  # the lock's block is now DEPTH deep: final
    world.run_until_phase(trade, "delivery_locked", max_steps=5)
    trade.delivery_lock = DeliveryLock(*trade.terms.expected_delivery_lock(
        trade.trade_id).as_tuple())
    seller_before = world.token_balance(world.seller.address)
    world.take_delivery(trade)
    world.run_until_phase(trade, "delivered", max_steps=5)
    payment.mine(2)  # the claim is seen at the payment chain's confirmation depth
    world.run_until_phase(trade, "settled", max_steps=5)
    assert world.token_balance(world.seller.address) == seller_before + trade.terms.amount


def test_a_finality_shallower_than_the_reorg_depth_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("DVP_MAX_REORG_DEPTH", "64")
    monkeypatch.setenv("DVP_PAYMENT_FINALITY", "12")
    with pytest.raises(ValueError, match="DVP_PAYMENT_FINALITY .12 blocks. is shallower"):
        Settings(_env_file=None)
    monkeypatch.setenv("DVP_PAYMENT_FINALITY", "finalized")  # the node's rule
    assert Settings(_env_file=None).finality_rule("payment") == "finalized"
    monkeypatch.setenv("DVP_PAYMENT_FINALITY", "64")
    settings = Settings(_env_file=None)
    # The wait is in the timing policy: the margin covers a claim made final by that rule.
    assert settings.timing_policy().claim_lead_time == 65 * settings.payment_block_time + \
        settings.drift_allowance
