"""Trust rule 3: a public secret pays the seller (issue 10 §3).

Each case ended, before the rule, with the title claimed by the buyer (its secret public on
chain) and the seller never paid: the buyer was refunded at T_pay. Now the relayer claims the
payment lock of the trade's terms whatever the trade's phase or flags said.
"""

from __future__ import annotations

import pytest

from gateway.chain.devnet import SELLER
from gateway.domain.locks import DeliveryLock
from gateway.domain.trade import ActionCancelTrade, InvalidTransition
from tests.integration.harness import AMOUNT, World, make_gateway


def _balances(world: World) -> tuple[int, int]:
    return world.token_balance(world.buyer.address), world.token_balance(world.seller.address)


def test_buyer_taking_a_delivery_off_the_terms_pays_the_seller(world: World) -> None:
    """The seller locks the title with an earlier T_deliver than agreed (safer for the
    seller); the gateway flags the lock as off the terms, but the buyer takes it."""
    buyer_before, seller_before = _balances(world)
    trade = world.agree()
    world.lock_payment(trade)
    t = trade.terms
    receipt, trade.delivery_lock = world.devnet.delivery_htlc.lock(
        world.seller, t.buyer_business, t.token_id, t.document_hash, trade.trade_id,
        t.hashlock, t.t_deliver - 100)
    assert receipt.succeeded
    world.run_until_phase(trade, "payment_locked")
    state = world.state(trade)
    assert state.delivery is None and any(f.startswith("mismatched_delivery:")
                                          for f in state.flags)
    world.take_delivery(trade)
    world.run_until_phase(trade, "settled")
    assert world.title_owner(trade) == world.buyer.address
    assert _balances(world) == (buyer_before - AMOUNT, seller_before + AMOUNT)
    assert world.token_balance(world.devnet.payment_htlc.address) == 0


def test_a_lock_off_the_terms_first_does_not_keep_the_right_one_from_paying(devnet,
                                                                            database_url) -> None:
    """The buyer first locks with too small a margin, then the right lock; the managed seller
    delivers against the right one; the buyer takes delivery. The first lock used to make the
    trade `rejected` for good and the right one was never claimed."""
    seller = devnet.account(SELLER)
    world = World(devnet, make_gateway(devnet, database_url,
                                       managed_keys={seller.address: seller}))
    buyer_before, seller_before = _balances(world)
    trade = world.agree(managed_seller=True)
    world.lock_payment(trade, timelock=trade.terms.t_deliver + 10)
    bad_lock = trade.payment_lock
    world.gateway.relayer.step()
    assert world.phase(trade) == "agreed" and len(world.state(trade).rejected_payments) == 1
    world.lock_payment(trade)
    world.run_until_phase(trade, "delivery_locked")  # the gateway locked the seller's title
    trade.delivery_lock = DeliveryLock(*trade.terms.expected_delivery_lock(
        trade.trade_id).as_tuple())
    world.take_delivery(trade)
    world.run_until_phase(trade, "settled")
    assert world.title_owner(trade) == world.buyer.address
    assert _balances(world) == (buyer_before - 2 * AMOUNT, seller_before + AMOUNT)
    # The lock off the terms goes back to the buyer at its own timelock.
    chain = world.devnet.payment
    chain.set_next_block_timestamp(bad_lock.timelock)
    chain.mine()
    for _ in range(3):
        world.gateway.relayer.step()
    assert _balances(world) == (buyer_before - AMOUNT, seller_before + AMOUNT)
    assert world.token_balance(world.devnet.payment_htlc.address) == 0


def test_a_cancel_before_the_locks_were_seen_never_hides_the_exchange(world: World) -> None:
    """Both parties lock; the buyer cancels through the API before the relayer has seen either
    lock (the gateway allows it: it knows of none), then takes delivery. The payment lock used
    to be filed as "trade is cancelled", never claimed, and the trade ended `cancelled`."""
    buyer_before, seller_before = _balances(world)
    trade = world.agree()
    world.lock_payment(trade)
    world.lock_delivery(trade)
    assert world.gateway.dispatcher.apply_action(
        ActionCancelTrade(trade.trade_id)).phase.value == "cancelled"
    world.take_delivery(trade)
    world.run_until_phase(trade, "settled")
    assert world.title_owner(trade) == world.buyer.address
    assert _balances(world) == (buyer_before - AMOUNT, seller_before + AMOUNT)
    assert world.token_balance(world.devnet.payment_htlc.address) == 0


def test_a_reorg_then_a_cancel_never_keeps_the_seller_from_being_paid(devnet,
                                                                      database_url) -> None:
    """A managed seller's title was locked and claimed; a payment-chain reorg drops the buyer's
    lock (and the seller's claim). The replayed trade used to have nothing locked, so the
    buyer's cancel was accepted, and the lock, mined again, was filed as "trade is cancelled"
    and never claimed. Now the secret is known (it was public), the trade is `delivered`, the
    cancel is refused, and the lock mined again pays the seller."""
    seller = devnet.account(SELLER)
    world = World(devnet, make_gateway(devnet, database_url,
                                       managed_keys={seller.address: seller}))
    buyer_before, seller_before = _balances(world)
    trade = world.agree(managed_seller=True)
    world.gateway.relayer.step()  # the relayer has seen the chain up to here
    payment = world.devnet.payment
    snapshot = payment.snapshot()
    world.lock_payment(trade)
    world.run_until_phase(trade, "delivery_locked")
    trade.delivery_lock = DeliveryLock(*trade.terms.expected_delivery_lock(
        trade.trade_id).as_tuple())
    world.take_delivery(trade)
    world.run_until_phase(trade, "settled")
    payment.revert(snapshot)  # the buyer's lock and the relayer's claim are gone
    payment.mine(2)
    world.gateway.relayer.step()
    assert not world.gateway.relayer.halted
    state = world.state(trade)
    assert state.payment is None and state.preimage == trade.secret
    assert state.phase.value == "delivered"  # the buyer has the title: the payment is due
    assert any(f.startswith("chain_disagrees:") for f in state.flags)  # it had been settled
    with pytest.raises(InvalidTransition):
        world.gateway.dispatcher.apply_action(ActionCancelTrade(trade.trade_id))
    world.lock_payment(trade)  # the buyer's lock is mined again
    world.run_until_phase(trade, "settled")
    assert world.title_owner(trade) == world.buyer.address
    assert _balances(world) == (buyer_before - AMOUNT, seller_before + AMOUNT)
