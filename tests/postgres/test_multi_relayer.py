"""Three relayers on one PostgreSQL database and the same two chains, each with its own engine,
sessions, dispatcher and executor, running the real daemon loop in threads (the in-process
chains live in this process). They share the relayer key and a managed seller's key, so every
effect could be sent by any of them: each must be sent once."""

from __future__ import annotations

import threading

import pytest
import structlog
from sqlalchemy import select

from gateway.chain.devnet import SELLER
from gateway.db.models import AttemptRow, InputRow, OutboxRow
from tests.databases import on_postgres
from tests.integration.harness import World, make_gateway
from tests.postgres.waiting import wait_for

pytestmark = pytest.mark.skipif(
    not on_postgres(), reason="PostgreSQL only: set DVP_TEST_DATABASE_URL (make test-postgres)")

RELAYERS = 3
TRADES = 12


def _calls(devnet, attempts: list[AttemptRow]) -> list[tuple[str, int]]:  # noqa: ANN001
    """(function, locks carried) of each of our transactions, read back from the chain."""
    out = []
    for attempt in attempts:
        chain = devnet.payment if attempt.chain_id == devnet.payment.client.chain_id \
            else devnet.business
        contract = devnet.payment_htlc.htlc if chain is devnet.payment \
            else devnet.delivery_htlc.htlc
        tx = chain.w3.eth.get_transaction("0x" + attempt.tx_hash)
        fn, args = contract.decode_function_input(tx["input"])
        out.append((fn.fn_name, len(args["locks"]) if fn.fn_name == "claimMany" else 1))
    return out


def test_three_relayers_settle_a_batch_each_effect_sent_once(devnet, database_url) -> None:
    seller = devnet.account(SELLER)
    gateways = [make_gateway(devnet, database_url, managed_keys={seller.address: seller})
                for _ in range(RELAYERS)]
    world = World(devnet, gateways[0])
    buyer_before = world.token_balance(world.buyer.address)
    seller_before = world.token_balance(seller.address)
    trades = [world.agree(amount=100_00 + i, managed_seller=True) for i in range(TRADES)]

    stop = threading.Event()

    def produce_blocks() -> None:
        """Chains that make blocks when idle, as real ones do (eth-tester otherwise mines
        only on transactions, and an idle chain's time would stand still)."""
        while not stop.wait(0.1):
            for chain in (devnet.payment, devnet.business):
                chain.w3.provider.make_request("evm_mine", [1])  # through the provider's lock

    with structlog.testing.capture_logs() as logs:
        threads = [threading.Thread(target=g.relayer.run_forever, args=(stop, 0.01),
                                    name=f"relayer-{n}", daemon=True)
                   for n, g in enumerate(gateways)]
        threads.append(threading.Thread(target=produce_blocks, daemon=True))
        for thread in threads:
            thread.start()
        try:
            for trade in trades:  # the buyer pays; the gateway delivers (the seller's key)
                world.lock_payment(trade)
            wait_for(lambda: {world.phase(t) for t in trades} == {"delivery_locked"})
            for trade in trades:
                trade.delivery_lock = world.state(trade).delivery.lock
                world.take_delivery(trade)
            wait_for(lambda: {world.phase(t) for t in trades} == {"settled"})
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads)

    # No relayer failed a step (a lost race would show here as an error or a retry).
    assert [e for e in logs if e["event"] == "relayer_step_failed"] == []
    # Exact balances on both chains.
    total = sum(t.terms.amount for t in trades)
    assert world.token_balance(world.buyer.address) == buyer_before - total
    assert world.token_balance(seller.address) == seller_before + total
    assert world.token_balance(devnet.payment_htlc.address) == 0
    assert all(world.title_owner(t) == world.buyer.address for t in trades)
    assert {world.phase(t) for t in trades} == {"settled"}

    with gateways[0].session_factory() as session:
        attempts = list(session.scalars(select(AttemptRow).order_by(AttemptRow.id)))
        outbox = list(session.scalars(select(OutboxRow)))
        inputs = list(session.scalars(select(InputRow).where(InputRow.chain_id.is_not(None))))
    # Every transaction mined, none reverted, dropped or replaced; one per nonce and key.
    assert {a.status for a in attempts} == {"mined"}
    nonces = [(a.chain_id, a.sender, a.nonce) for a in attempts]
    assert len(nonces) == len(set(nonces))
    # No effect sent twice: the delivery locks (seller's key) and the payment claims (relayer
    # key) our transactions carried are exactly one per trade.
    calls = _calls(devnet, attempts)
    assert sum(n for fn, n in calls if fn == "lock") == TRADES
    assert sum(n for fn, n in calls if fn in ("claim", "claimMany")) == TRADES
    assert {fn for fn, _ in calls} <= {"lock", "claim", "claimMany"}
    assert [(r.key, r.status) for r in outbox if r.status != "done"] == []
    # Each chain log applied once (the input log is unique per log, and nothing was orphaned).
    assert not any(row.orphaned for row in inputs)
    assert len(inputs) == TRADES * 4  # payment locked, delivery locked, both claimed
