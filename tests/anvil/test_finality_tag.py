"""A chain whose finality rule is the node's `finalized` block tag (anvil 1.7.1 answers
latest minus 64): a managed seller's title waits for the payment lock to be final by it."""

from __future__ import annotations

from dataclasses import replace

from gateway.chain.devnet import SELLER
from tests.integration.harness import TEST_POLICY, World, make_gateway


def test_title_waits_for_the_nodes_finalized_tag(anvil_devnet, database_url) -> None:
    seller = anvil_devnet.account(SELLER)
    payment = anvil_devnet.payment
    assert payment.rpc("eth_getBlockByNumber", ["finalized", False]) is not None
    policy = replace(TEST_POLICY, payment_finality=64)  # the depth the tag stands for
    world = World(anvil_devnet, make_gateway(anvil_devnet, database_url, policy=policy,
                                             managed_keys={seller.address: seller},
                                             max_reorg_depth=64, finality=("finalized", None)))
    trade = world.agree(managed_seller=True)
    world.lock_payment(trade)
    lock_block = payment.client.w3.eth.block_number
    payment.rpc("anvil_mine", [hex(63)])
    finalized = int(payment.rpc("eth_getBlockByNumber", ["finalized", False])["number"], 16)
    assert finalized == lock_block - 1  # not yet final by the node's rule
    for _ in range(3):
        world.gateway.relayer.step()
    state = world.state(trade)
    assert state.payment is not None and state.phase.value == "agreed"
    assert state.delivery is None and world.title_owner(trade) == world.seller.address
    payment.rpc("anvil_mine", [hex(1)])  # now it is
    world.run_until_phase(trade, "delivery_locked", max_steps=5)
    assert world.title_owner(trade) == anvil_devnet.delivery_htlc.address
