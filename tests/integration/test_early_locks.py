"""A buyer may lock its payment before the gateway knows the trade's hashlock: before it
proposes, or (a seller's proposal to a self-custody buyer) before it gives the hashlock when it
accepts. The relayer has then seen the lock and kept it with no trade. The trade adopts it when
it gets the hashlock, so that once the buyer takes delivery the seller is paid (trust rule 3):
before, such a lock was never routed, the title went to the buyer and the payment back to it.
"""

from __future__ import annotations

import pytest

from gateway.domain.locks import hashlock_of, new_secret
from gateway.domain.trade import (
    AWAITING_HASHLOCK,
    ActionAcceptTrade,
    ActionProposeTrade,
    Chain,
    Terms,
)
from tests.integration.harness import AMOUNT, DELIVERY_WINDOW, MARGIN, Trade, World, make_gateway


def _terms(world: World, hashlock: bytes) -> Terms:
    token_id, doc = world.issue_title()
    now = max(world.devnet.payment.next_block_timestamp(),
              world.devnet.business.next_block_timestamp())
    t_deliver = now + DELIVERY_WINDOW
    return Terms(world.buyer.address, world.seller.address, world.buyer.address,
                 world.seller.address, AMOUNT, token_id, doc, hashlock, t_deliver,
                 t_deliver + MARGIN)


def _settle_after_delivery(world: World, trade: Trade) -> None:
    """The seller, seeing the buyer's lock on chain, locks the title; the buyer takes it."""
    seller_before = world.token_balance(world.seller.address)
    world.lock_delivery(trade)
    world.run_until_phase(trade, "delivery_locked")
    world.take_delivery(trade)
    world.run_until_phase(trade, "settled")
    assert world.token_balance(world.seller.address) == seller_before + AMOUNT
    assert world.title_owner(trade) == world.buyer.address
    assert world.state(trade).payment.lock_id == _payment_lock_id(world, trade)


@pytest.mark.parametrize("proposal", ["one", "batch"])
def test_a_lock_mined_before_the_buyer_proposes_is_the_trades(devnet, database_url,
                                                              proposal) -> None:
    world = World(devnet, make_gateway(devnet, database_url))
    secret = new_secret()
    trade = Trade(new_secret(), secret, _terms(world, hashlock_of(secret)))
    world.lock_payment(trade)
    for _ in range(3):  # the lock is polled, and kept with no trade
        world.gateway.relayer.step()
    action = ActionProposeTrade(trade.trade_id, trade.terms)
    if proposal == "one":
        world.gateway.dispatcher.propose(action)
    else:  # with another trade that has no early log
        other = ActionProposeTrade(new_secret(), _terms(world, hashlock_of(new_secret())))
        world.gateway.dispatcher.propose_many([other, action])
    world.gateway.dispatcher.apply_action(ActionAcceptTrade(trade.trade_id))
    world.run_until_phase(trade, "payment_locked")
    _settle_after_delivery(world, trade)


def test_a_lock_mined_before_the_buyer_gives_its_hashlock_is_the_trades(devnet,
                                                                         database_url) -> None:
    """A seller proposes to a self-custody buyer (no hashlock); the buyer locks under its own
    hashlock, then accepts giving it."""
    world = World(devnet, make_gateway(devnet, database_url))
    secret = new_secret()
    trade = Trade(new_secret(), secret, _terms(world, AWAITING_HASHLOCK))
    world.gateway.dispatcher.propose(ActionProposeTrade(trade.trade_id, trade.terms))
    trade.terms = _terms_with(trade.terms, hashlock_of(secret))
    world.lock_payment(trade)
    for _ in range(3):
        world.gateway.relayer.step()
    assert world.phase(trade) == "proposed"  # the lock is seen, and no trade's yet
    world.gateway.dispatcher.apply_action(ActionAcceptTrade(trade.trade_id,
                                                            hashlock_of(secret)))
    world.run_until_phase(trade, "payment_locked")
    _settle_after_delivery(world, trade)
    # The adopted lock is the trade's on a replay too: its inputs are in order.
    with world.gateway.session_factory() as session:
        from gateway.db.repository import Repository

        kinds = [type(i).__name__ for i, _ in Repository(session).inputs_for_trade(
            trade.trade_id)]
        from gateway.db.models import LockRow

        link = session.get(LockRow, (_payment_lock_id(world, trade).hex(), Chain.PAYMENT.value))
        assert link is not None and link.trade_id == trade.trade_id.hex()
    assert kinds[:3] == ["ActionProposeTrade", "ActionAcceptTrade",
                         "ContractReceivePaymentLocked"]


def _terms_with(terms: Terms, hashlock: bytes) -> Terms:
    from dataclasses import replace

    return replace(terms, hashlock=hashlock)


def _payment_lock_id(world: World, trade: Trade) -> bytes:
    return world.devnet.payment_htlc.lock_id(trade.payment_lock)
