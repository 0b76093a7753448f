"""End-to-end settlement scenarios on two in-process chains, through the relayer."""

from __future__ import annotations

from sqlalchemy import func, select

from gateway.chain.devnet import SELLER
from gateway.db.models import AttemptRow, InputRow
from tests.integration.harness import AMOUNT, World, make_gateway


def _settlements_timed() -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("dvp_settlement_latency_seconds_count") or 0.0


def test_happy_path_relayer_releases_payment(world: World) -> None:
    """Also: the settlement is timed once, from the phase change to `delivered` on record
    (`phases_reached_at`, matched on the event's payload in SQL)."""
    buyer, seller = world.buyer.address, world.seller.address
    buyer_before, seller_before = world.token_balance(buyer), world.token_balance(seller)
    timed = _settlements_timed()
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
    assert _settlements_timed() == timed + 1


def _pass_deadline(world: World, chain_name: str, deadline: int) -> None:
    """Let chain time reach `deadline`: one empty block mined at exactly that timestamp."""
    chain = getattr(world.devnet, chain_name)
    chain.set_next_block_timestamp(deadline)
    chain.mine()


def test_buyer_never_takes_delivery_both_legs_refunded(world: World) -> None:
    buyer, seller = world.buyer.address, world.seller.address
    buyer_before, seller_before = world.token_balance(buyer), world.token_balance(seller)
    trade = world.agree()
    world.lock_payment(trade)
    world.lock_delivery(trade)
    world.run_until_phase(trade, "delivery_locked")

    _pass_deadline(world, "business", trade.terms.t_deliver)
    world.run_until_phase(trade, "delivery_refunded")
    assert world.title_owner(trade) == seller
    assert world.token_balance(buyer) == buyer_before - AMOUNT  # payment still locked

    _pass_deadline(world, "payment", trade.terms.t_pay)
    world.run_until_phase(trade, "payment_refunded")
    assert world.token_balance(buyer) == buyer_before
    assert world.token_balance(seller) == seller_before
    assert world.title_owner(trade) == seller
    assert not world.state(trade).pending


def test_seller_never_locks_payment_refunded_after_t_pay(world: World) -> None:
    buyer_before = world.token_balance(world.buyer.address)
    trade = world.agree()
    world.lock_payment(trade)
    world.run_until_phase(trade, "payment_locked")
    # Before T_pay nothing is refunded, however long the relayer runs.
    _pass_deadline(world, "payment", trade.terms.t_pay - 1)
    world.gateway.relayer.step()
    world.gateway.relayer.step()
    assert world.phase(trade) == "payment_locked"
    assert world.token_balance(world.buyer.address) == buyer_before - AMOUNT

    _pass_deadline(world, "payment", trade.terms.t_pay)
    world.run_until_phase(trade, "payment_refunded")
    assert world.token_balance(world.buyer.address) == buyer_before
    assert world.title_owner(trade) == world.seller.address


def test_third_party_reveals_preimage_relayer_still_settles(world: World) -> None:
    seller_before = world.token_balance(world.seller.address)
    trade = world.agree()
    world.lock_payment(trade)
    world.lock_delivery(trade)
    stranger = world.devnet.business.accounts[7]
    world.take_delivery(trade, caller=stranger)  # directly on the contract, not via the gateway
    world.run_until_phase(trade, "settled")
    assert world.title_owner(trade) == world.buyer.address  # the buyer, never the caller
    assert world.token_balance(world.seller.address) == seller_before + AMOUNT


def test_mismatched_payment_locks_are_flagged_and_never_delivered_against(devnet,
                                                                          database_url) -> None:
    """The gateway acts for a managed seller: it locks the title only against a payment lock
    that matches the terms on chain. Wrong amount, wrong beneficiary, too little margin: the
    lock is rejected (the trade stays agreed: the right lock may still come) and the title
    never leaves the seller; at T_pay the trade is rejected. Wrong hashlock: the lock matches
    no trade (it is recorded as unmatched), the trade stays agreed and then expires."""
    seller = devnet.account(SELLER)
    world = World(devnet, make_gateway(devnet, database_url,
                                       managed_keys={seller.address: seller}))
    stranger = devnet.payment.accounts[8].address
    trades = {name: world.agree(managed_seller=True)
              for name in ("amount", "beneficiary", "margin", "hashlock")}
    world.lock_payment(trades["amount"], amount=AMOUNT - 1)
    world.lock_payment(trades["beneficiary"], beneficiary=stranger)
    world.lock_payment(trades["margin"], timelock=trades["margin"].terms.t_deliver + 10)
    world.lock_payment(trades["hashlock"], hashlock=b"\x42" * 32)
    for _ in range(4):
        world.gateway.relayer.step()

    for name in ("amount", "beneficiary", "margin"):
        state = world.state(trades[name])
        assert state.phase.value == "agreed", name
        assert state.delivery is None and len(state.rejected_payments) == 1
    assert world.phase(trades["hashlock"]) == "agreed"
    for trade in trades.values():
        assert world.title_owner(trade) == seller.address  # never locked against
    with world.gateway.session_factory() as session:
        unmatched = session.scalar(select(func.count()).select_from(InputRow).where(
            InputRow.trade_id.is_(None), InputRow.kind == "ContractReceivePaymentLocked"))
    assert unmatched == 1

    # After their timelocks the rejected locks go back to the buyer: the relayer refunds them.
    buyer_before = world.token_balance(world.buyer.address)
    _pass_deadline(world, "payment", max(t.payment_lock.timelock for t in trades.values()))
    for _ in range(3):
        world.gateway.relayer.step()
    refunded = sum(t.payment_lock.amount for n, t in trades.items() if n != "hashlock")
    assert world.token_balance(world.buyer.address) == buyer_before + refunded
    assert world.phase(trades["hashlock"]) == "expired"
    for name in ("amount", "beneficiary", "margin"):
        assert world.phase(trades[name]) == "rejected", name


def test_managed_seller_happy_path_gateway_delivers(devnet, database_url) -> None:
    seller = devnet.account(SELLER)
    world = World(devnet, make_gateway(devnet, database_url,
                                       managed_keys={seller.address: seller}))
    seller_before = world.token_balance(seller.address)
    trade = world.agree(managed_seller=True)
    world.lock_payment(trade)
    world.run_until_phase(trade, "delivery_locked")  # the gateway locked the title
    trade.delivery_lock = world.state(trade).delivery.lock
    world.take_delivery(trade)
    world.run_until_phase(trade, "settled")
    assert world.title_owner(trade) == world.buyer.address
    assert world.token_balance(seller.address) == seller_before + AMOUNT


def test_hundred_concurrent_trades_through_one_relayer(world: World) -> None:
    n = 100
    buyer, seller = world.buyer.address, world.seller.address
    buyer_before, seller_before = world.token_balance(buyer), world.token_balance(seller)
    trades = [world.agree(amount=AMOUNT + i) for i in range(n)]
    for trade in trades:
        world.lock_payment(trade)
    for trade in trades:
        world.lock_delivery(trade)
    world.gateway.relayer.step()
    assert {world.phase(t) for t in trades} == {"delivery_locked"}
    for trade in trades:
        world.take_delivery(trade)
    world.gateway.relayer.run_until(
        lambda: {world.phase(t) for t in trades} == {"settled"}, max_steps=10)

    total = sum(t.terms.amount for t in trades)
    assert world.token_balance(buyer) == buyer_before - total
    assert world.token_balance(seller) == seller_before + total
    assert world.token_balance(world.devnet.payment_htlc.address) == 0
    assert all(world.title_owner(t) == buyer for t in trades)
    with world.gateway.session_factory() as session:
        attempts = session.scalars(select(AttemptRow)).all()
    # Claims were batched (claimMany of up to 50), each mined once.
    assert len(attempts) == 2 and {a.status for a in attempts} == {"mined"}
