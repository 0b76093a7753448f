"""Never send a transaction known to revert (issue 10): the executor checks every lock, claim
and refund against the chain before signing it, and tells the trade (EffectRefused) when the
chain says no; a lock missing on chain keeps its claim or refund pending, unsent."""

from __future__ import annotations

from prometheus_client import REGISTRY
from sqlalchemy import func, select
from structlog.testing import capture_logs

from gateway.chain.devnet import BUYER, RELAYER, SELLER
from gateway.chain.htlc import payment_refund_calldata
from gateway.db.models import AttemptRow, InputRow, OutboxRow
from gateway.db.repository import Repository
from gateway.domain.locks import PaymentLock
from gateway.domain.trade import ActionCancelTrade, Chain
from tests.integration.harness import AMOUNT, World, make_gateway

DAY = 86_400


def _attempts(world: World) -> list[AttemptRow]:
    with world.gateway.session_factory() as session:
        return list(session.scalars(select(AttemptRow)))


def _inputs(world: World, kind: str) -> int:
    with world.gateway.session_factory() as session:
        return session.scalar(select(func.count()).select_from(InputRow).where(
            InputRow.kind == kind)) or 0


def _outbox_status(world: World, trade_id: bytes, key: str) -> str:
    with world.gateway.session_factory() as session:
        return session.scalars(select(OutboxRow.status).where(
            OutboxRow.trade_id == trade_id.hex(), OutboxRow.key == key)).one()


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_managed_buyer_lock_that_would_revert_is_not_sent_and_trade_can_be_cancelled(
        devnet, database_url) -> None:
    """Two managed-buyer trades whose lock cannot be made: the buyer's balance does not cover
    the amount (found by reading the balance), and a T_pay beyond the contract's 30 days
    (found by simulating the lock). Nothing is sent from the buyer's key, each trade is
    flagged payment_lock_failed once, and each can then be cancelled."""
    buyer = devnet.account(BUYER)
    world = World(devnet, make_gateway(devnet, database_url,
                                       managed_keys={buyer.address: buyer}))
    w3 = devnet.payment.client.w3
    balance = world.token_balance(buyer.address)
    nonce_before = w3.eth.get_transaction_count(buyer.address)
    refused_before = _metric("dvp_effects_refused_total", chain="payment", kind="payment_lock")

    with capture_logs() as logs:
        poor = world.agree(amount=balance + 1, managed_buyer=True)
        far = world.agree(margin=31 * DAY, managed_buyer=True)
        for _ in range(3):
            world.gateway.relayer.step()

    assert w3.eth.get_transaction_count(buyer.address) == nonce_before  # nothing sent
    assert _attempts(world) == []
    assert world.token_balance(buyer.address) == balance
    refused = {e["trade"]: e for e in logs if e["event"] == "effect_refused"}
    for trade in (poor, far):
        state = world.state(trade)
        assert state.phase.value == "agreed" and state.payment is None
        assert "payment_lock_failed" in state.flags and not state.pending
        assert _outbox_status(world, trade.trade_id, "payment_lock") == "cancelled"
        entry = refused["0x" + trade.trade_id.hex()]
        assert entry["log_level"] == "warning" and entry["key"] == "payment_lock"
        assert len(entry["trade"]) == 66
    assert refused["0x" + poor.trade_id.hex()]["reason"] == \
        f"buyer balance {balance} < amount {balance + 1}"
    assert "TimelockTooFar" in refused["0x" + far.trade_id.hex()]["reason"]
    assert len([e for e in logs if e["event"] == "effect_refused"]) == 2  # once per trade
    assert _inputs(world, "EffectRefused") == 2
    assert _metric("dvp_effects_refused_total", chain="payment",
                   kind="payment_lock") == refused_before + 2

    # The API's cancel (409 before the fix: the lock stayed pending forever).
    for trade in (poor, far):
        world.gateway.dispatcher.apply_action(ActionCancelTrade(trade.trade_id))
        assert world.phase(trade) == "cancelled"


def test_managed_seller_lock_without_the_title_is_not_sent(devnet, database_url) -> None:
    """The managed seller no longer owns the title when the buyer's payment is locked: the
    delivery lock is refused (final), nothing is sent from the seller's key."""
    seller = devnet.account(SELLER)
    world = World(devnet, make_gateway(devnet, database_url,
                                       managed_keys={seller.address: seller}))
    trade = world.agree(managed_seller=True)
    stranger = devnet.business.accounts[7].address
    titles = devnet.titles
    assert devnet.business.client.transact(
        seller, to=titles.address, gas=200_000,
        data=titles.encode_abi("transferFrom", [seller.address, stranger,
                                                trade.terms.token_id])).succeeded
    w3 = devnet.business.client.w3
    nonce_before = w3.eth.get_transaction_count(seller.address)
    world.lock_payment(trade)
    with capture_logs() as logs:
        for _ in range(3):
            world.gateway.relayer.step()

    assert w3.eth.get_transaction_count(seller.address) == nonce_before
    assert _attempts(world) == []
    state = world.state(trade)
    assert state.phase.value == "payment_locked" and state.delivery is None
    assert "delivery_lock_failed" in state.flags and not state.pending
    refused = [e for e in logs if e["event"] == "effect_refused"]
    assert len(refused) == 1 and refused[0]["trade"] == "0x" + trade.trade_id.hex()
    assert refused[0]["reason"] == (f"seller {seller.address} does not own title "
                                    f"{trade.terms.token_id} (owner {stranger})")
    assert world.title_owner(trade) == stranger


def test_claim_whose_lock_is_missing_on_chain_is_held_until_the_lock_is_back(
        world: World) -> None:
    """The payment claim is due, but the payment chain no longer has the lock (a reorg the
    poller has not seen yet, or a node short of blocks): the claim is not done, not sent, and
    the trade is flagged blocked:<key> once. When the lock is on chain again the claim goes
    out and the trade settles."""
    seller_before = world.token_balance(world.seller.address)
    payment = world.devnet.payment
    w3 = payment.client.w3
    relayer = world.devnet.account(RELAYER).address
    trade = world.agree()
    world.gateway.relayer.step()  # the poller remembers the block below the lock
    snapshot = payment.snapshot()
    world.lock_payment(trade)
    world.lock_delivery(trade)
    world.run_until_phase(trade, "delivery_locked")
    world.take_delivery(trade)
    world.gateway.relayer.poll()  # the secret is public: the payment claim is due
    state = world.state(trade)
    key = f"payment_claim:{state.payment.lock_id.hex()}"
    assert state.phase.value == "delivered" and key in state.pending

    payment.revert(snapshot)  # the payment lock is gone from the chain
    assert world.devnet.payment_htlc.status(state.payment.lock_id) == 0
    nonce_before = w3.eth.get_transaction_count(relayer)
    missing_before = _metric("dvp_locks_missing_total", chain="payment", kind="payment_claim")
    with capture_logs() as logs:
        for _ in range(3):
            assert world.gateway.relayer.execute() == 0

    assert w3.eth.get_transaction_count(relayer) == nonce_before
    assert _attempts(world) == []
    state = world.state(trade)
    assert f"blocked:{key}" in state.flags and key in state.pending
    assert _outbox_status(world, trade.trade_id, key) == "pending"
    missing = [e for e in logs if e["event"] == "lock_missing"]
    assert len(missing) == 1  # once, not every pass
    assert missing[0]["log_level"] == "critical"
    assert missing[0]["trade"] == "0x" + trade.trade_id.hex()
    assert missing[0]["lock"] == "0x" + state.payment.lock_id.hex()
    assert _inputs(world, "EffectRefused") == 1
    assert _metric("dvp_locks_missing_total", chain="payment",
                   kind="payment_claim") == missing_before + 1

    world.lock_payment(trade)  # the same lock, on chain again
    assert world.gateway.relayer.execute() == 1  # the claim
    (attempt,) = _attempts(world)
    assert attempt.sender == relayer
    world.run_until_phase(trade, "settled")
    assert world.token_balance(world.seller.address) == seller_before + AMOUNT
    assert world.token_balance(world.devnet.payment_htlc.address) == 0


def test_mined_transaction_that_reverted_is_logged_with_its_reason(world: World) -> None:
    """A transaction of the relayer's that was mined but reverted (here: a refund of a lock
    that does not exist, recorded as ours) is a warning naming the revert reason."""
    client = world.devnet.payment.client
    relayer = world.devnet.account(RELAYER)
    lock = PaymentLock(world.buyer.address, world.seller.address, AMOUNT, b"\x11" * 32,
                       client.w3.eth.get_block("latest")["timestamp"] + 3600)
    lock_id = world.devnet.payment_htlc.lock_id(lock)
    nonce = client.w3.eth.get_transaction_count(relayer.address, "pending")
    raw = client.sign_with_nonce(relayer, to=world.devnet.payment_htlc.address,
                                 data=payment_refund_calldata(lock), gas=120_000, nonce=nonce,
                                 fees=client.suggest_fees())
    with world.gateway.session_factory.begin() as session:
        attempt = Repository(session).add_attempt(client.chain_id, relayer.address, nonce,
                                                  client.tx_hash(raw), raw)
        attempt.status = "sent"
    client.send_raw(raw)
    world.devnet.payment.mine()
    assert client.receipt(client.tx_hash(raw)).status == 0
    reverted_before = _metric("dvp_transactions_reverted_total", chain="payment")

    with capture_logs() as logs:
        world.gateway.relayer.executor.run_chain(Chain.PAYMENT)

    (entry,) = [e for e in logs if e["event"] == "tx_reverted"]
    assert entry["log_level"] == "warning"
    assert entry["tx"] == client.tx_hash(raw).hex()
    assert entry["reason"] == f"LockNotOpen(0x{lock_id.hex()}, 0)"
    assert [a.status for a in _attempts(world)] == ["reverted"]
    assert _metric("dvp_transactions_reverted_total", chain="payment") == reverted_before + 1
