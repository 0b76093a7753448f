"""Reorg depth right after a catch-up batch (issue 10 §7): a relayer that catches up over many
blocks in one batch still rewinds a shallow reorg of the blocks it just read (it halted the
chain as "deep" when only each batch's last block was remembered), and a reorg deeper than
`max_reorg_depth` still halts. Both backends (the `devnet` fixture): eth-tester and anvil."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from gateway.db.repository import Repository
from gateway.domain.trade import Chain
from tests.integration.harness import AMOUNT, World, make_gateway

MAX_DEPTH = 8
IDLE_BLOCKS = 40  # mined while the relayer is not polling: one catch-up batch of 40+ blocks


def _settled_after_catch_up(devnet, database_url, depth: int):  # noqa: ANN001, ANN202
    """A trade settled by a payment claim mined right after a catch-up batch; the payment
    chain then forks `depth` blocks below the relayer's cursor."""
    world = World(devnet, make_gateway(devnet, database_url, max_reorg_depth=MAX_DEPTH))
    payment = devnet.payment
    seller_before = world.token_balance(world.seller.address)
    trade = world.agree()
    world.lock_payment(trade)
    world.lock_delivery(trade)
    world.run_until_phase(trade, "delivery_locked")

    world.take_delivery(trade)  # the secret is public; the relayer does not poll meanwhile
    payment.mine(IDLE_BLOCKS)
    fork = payment.w3.eth.block_number
    snapshot = payment.snapshot()
    payment.mine(depth - 1)  # the claim is mined on top: the cursor is `depth` above `fork`
    world.run_until_phase(trade, "settled")
    assert world.token_balance(world.seller.address) == seller_before + AMOUNT
    cursor = _cursor(world)
    assert cursor == fork + depth, "the claim's block is the cursor, `depth` above the fork"
    old = {n: payment.w3.eth.get_block(n)["hash"] for n in (fork, fork + 1)}

    payment.revert(snapshot)  # the blocks above `fork` (with the claim) are replaced
    payment.set_next_block_timestamp(payment.next_block_timestamp() + 7)
    payment.mine(depth + 1)
    assert payment.w3.eth.get_block(fork)["hash"] == old[fork]
    assert payment.w3.eth.get_block(fork + 1)["hash"] != old[fork + 1]  # `depth` deep indeed
    assert world.token_balance(world.seller.address) == seller_before
    return world, trade, seller_before, cursor, fork


def _cursor(world: World) -> int:
    with world.gateway.session_factory() as session:
        row = Repository(session).cursor(world.devnet.payment.client.chain_id)
    assert row is not None
    return row.block_number


# 3: the case; 6: the fork point is not remembered, the rewind goes one block below it
# (its blocks are read again); 7: the deepest reorg shallower than the maximum.
@pytest.mark.parametrize("depth", [3, 6, MAX_DEPTH - 1])
def test_shallow_reorg_right_after_a_catch_up_batch_is_rewound(devnet, database_url,
                                                                depth) -> None:
    world, trade, seller_before, cursor, fork = _settled_after_catch_up(devnet, database_url,
                                                                        depth)
    with capture_logs() as logs:
        world.gateway.relayer.step()
    assert not world.gateway.relayer.halted, world.gateway.relayer.halted
    rewinds = [e for e in logs if e["event"] == "reorg_rewind"]
    assert len(rewinds) == 1 and rewinds[0]["chain"] == Chain.PAYMENT.value
    # At or below the true fork point (the orphaned claim is forgotten), within the maximum
    # depth of the cursor.
    assert cursor - MAX_DEPTH <= rewinds[0]["fork_block"] <= fork
    # The orphaned claim is re-sent from its recorded bytes: the seller is paid once.
    world.gateway.relayer.run_until(
        lambda: world.token_balance(world.seller.address) == seller_before + AMOUNT and
        world.phase(trade) == "settled")
    assert not world.gateway.relayer.halted
    assert world.token_balance(world.devnet.payment_htlc.address) == 0
    assert world.title_owner(trade) == world.buyer.address
    assert not world.state(trade).pending


def test_reorg_deeper_than_the_maximum_after_a_catch_up_batch_halts(devnet,
                                                                    database_url) -> None:
    world, trade, seller_before, _, _ = _settled_after_catch_up(devnet, database_url,
                                                                depth=MAX_DEPTH + 1)
    with capture_logs() as logs:
        world.gateway.relayer.step()
    halted = [e for e in logs if e["event"] == "chain_halted"]
    assert len(halted) == 1 and "maximum reorg depth" in halted[0]["reason"]
    assert set(world.gateway.relayer.halted) == {Chain.PAYMENT}
    assert not [e for e in logs if e["event"] == "reorg_rewind"]
    # Nothing is rewound or acted on for the halted chain: the trade stays as the relayer knew
    # it, and the claim the reorg undid is not re-sent (an operator steps in).
    assert world.phase(trade) == "settled"
    assert world.token_balance(world.seller.address) == seller_before
