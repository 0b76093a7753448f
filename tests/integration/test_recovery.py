"""Recovery: restarts, kills at every step, and chain reorganisations."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from gateway.chain.devnet import SELLER
from gateway.db.models import AttemptRow
from gateway.engine import crashpoints
from gateway.engine.crashpoints import SimulatedCrash
from tests.integration.harness import AMOUNT, World, make_gateway


def _restart(world: World, database_url: str, **kwargs) -> None:
    """A new process: fresh engine objects on the same database and chains."""
    world.gateway.engine.dispose()
    world.gateway = make_gateway(world.devnet, database_url, **kwargs)


def test_relayer_down_while_secret_revealed_settles_from_history(world: World,
                                                                  database_url) -> None:
    seller_before = world.token_balance(world.seller.address)
    trade = world.agree()
    world.lock_payment(trade)
    world.lock_delivery(trade)
    world.run_until_phase(trade, "delivery_locked")
    world.gateway.engine.dispose()  # the relayer goes down

    world.take_delivery(trade)
    world.devnet.business.mine(5)
    world.devnet.payment.mine(5)
    assert world.devnet.payment.next_block_timestamp() < trade.terms.t_pay

    _restart(world, database_url)
    world.run_until_phase(trade, "settled")
    assert world.token_balance(world.seller.address) == seller_before + AMOUNT
    assert world.title_owner(trade) == world.buyer.address


CRASHES = [(point, hit) for point in ("dispatcher.before_commit", "dispatcher.after_commit")
           for hit in range(1, 6)]
CRASHES += [(point, hit) for point in ("executor.before_record", "executor.after_record",
                                       "executor.after_broadcast") for hit in (1, 2)]


@pytest.mark.parametrize(("point", "hit"), CRASHES, ids=[f"{p}#{h}" for p, h in CRASHES])
def test_killed_at_every_step_settles_exactly_once(devnet, database_url, point, hit) -> None:
    """Managed seller, so the relayer sends two transactions (delivery lock, payment claim)
    and commits many batches: the kill lands at every step of the flow."""
    seller = devnet.account(SELLER)
    keys = {seller.address: seller}
    world = World(devnet, make_gateway(devnet, database_url, managed_keys=keys))
    buyer_before = world.token_balance(world.buyer.address)
    seller_before = world.token_balance(seller.address)
    trade = world.agree(managed_seller=True)
    crashpoints.arm(point, hit)
    crashed = False

    def step_until(phase: str) -> None:
        nonlocal crashed
        for _ in range(30):
            try:
                world.gateway.relayer.step()
            except SimulatedCrash:
                crashed = True
                _restart(world, database_url, managed_keys=keys)
                continue
            if world.phase(trade) == phase:
                return
        raise AssertionError(f"never reached {phase}; at {world.phase(trade)}")

    try:
        world.lock_payment(trade)
        step_until("delivery_locked")
        trade.delivery_lock = world.state(trade).delivery.lock
        world.take_delivery(trade)
        step_until("settled")
    finally:
        crashpoints.disarm()
    assert crashed, f"{point} was not reached {hit} times: the test exercised nothing"

    assert world.token_balance(world.buyer.address) == buyer_before - AMOUNT
    assert world.token_balance(seller.address) == seller_before + AMOUNT
    assert world.token_balance(world.devnet.payment_htlc.address) == 0
    assert world.title_owner(trade) == world.buyer.address
    with world.gateway.session_factory() as session:
        attempts = session.scalars(select(AttemptRow)).all()
    # Exactly one delivery lock and one payment claim were mined; nothing was sent twice.
    assert sorted(a.status for a in attempts) == ["mined", "mined"], \
        [(a.status, a.nonce, a.chain_id) for a in attempts]


def test_business_reorg_removes_buyer_claim_relayer_reclaims_for_buyer(world: World) -> None:
    seller_before = world.token_balance(world.seller.address)
    trade = world.agree()
    world.lock_payment(trade)
    world.lock_delivery(trade)
    world.run_until_phase(trade, "delivery_locked")
    business = world.devnet.business
    snapshot = business.snapshot()
    world.take_delivery(trade)
    world.run_until_phase(trade, "settled")  # the relayer acted: payment claimed
    assert world.token_balance(world.seller.address) == seller_before + AMOUNT

    business.revert(snapshot)  # the buyer's claim is orphaned
    business.mine(3)
    assert world.title_owner(trade) == world.devnet.delivery_htlc.address
    # The relayer notices the fork, forgets the orphaned claim, and - the secret being public
    # - claims the title for the buyer, who has paid.
    world.run_until_phase(trade, "settled")
    assert world.title_owner(trade) == world.buyer.address
    assert world.token_balance(world.seller.address) == seller_before + AMOUNT


def test_payment_reorg_removes_relayer_claim_relayer_claims_again(world: World) -> None:
    seller_before = world.token_balance(world.seller.address)
    trade = world.agree()
    world.lock_payment(trade)
    world.lock_delivery(trade)
    world.run_until_phase(trade, "delivery_locked")
    payment = world.devnet.payment
    snapshot = payment.snapshot()
    world.take_delivery(trade)
    world.run_until_phase(trade, "settled")
    assert world.token_balance(world.seller.address) == seller_before + AMOUNT

    payment.revert(snapshot)  # the relayer's claim is orphaned
    payment.mine(2)
    assert world.token_balance(world.seller.address) == seller_before
    world.gateway.relayer.step()
    world.run_until_phase(trade, "settled")
    assert world.token_balance(world.seller.address) == seller_before + AMOUNT
    assert world.token_balance(world.devnet.payment_htlc.address) == 0
