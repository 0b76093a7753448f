"""End-to-end settlement scenarios on two in-process chains, through the relayer."""

from __future__ import annotations

from tests.integration.harness import AMOUNT, World


def test_happy_path_relayer_releases_payment(world: World) -> None:
    buyer, seller = world.buyer.address, world.seller.address
    buyer_before, seller_before = world.token_balance(buyer), world.token_balance(seller)
    trade = world.agree()
    world.lock_payment(trade)
    world.run_until_phase(trade, "payment_locked")
    world.lock_delivery(trade)
    world.run_until_phase(trade, "delivery_locked")
    world.take_delivery(trade)
    world.run_until_phase(trade, "settled")

    assert world.token_balance(buyer) == buyer_before - AMOUNT
    assert world.token_balance(seller) == seller_before + AMOUNT
    assert world.token_balance(world.devnet.payment_htlc.address) == 0
    assert world.title_owner(trade) == buyer
    state = world.state(trade)
    assert state.preimage == trade.secret and not state.pending
