"""Reorg replay is faithful (issue 10 §3b): the dispatcher rebuilds a trade from its inputs
still on chain at the chain times each was first applied at, and never forgets a preimage that
was public. Driven with synthetic chain batches: what is tested is the dispatcher and its
input log, not a chain."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from gateway.db.repository import Repository
from gateway.domain.locks import DeliveryLock, PaymentLock
from gateway.domain.policy import TimingPolicy
from gateway.domain.trade import (
    ActionAcceptTrade,
    ActionCancelTrade,
    ActionProposeTrade,
    Block,
    Chain,
    ChainBatch,
    ChainRef,
    ContractReceiveClaimed,
    ContractReceiveDeliveryLocked,
    ContractReceivePaymentLocked,
    Phase,
    Terms,
)
from gateway.engine.build import open_database
from gateway.engine.dispatcher import Dispatcher

POLICY = TimingPolicy(payment_confirmations=0, business_confirmations=0, payment_block_time=1,
                      business_block_time=1, reaction_budget=30, drift_allowance=0)
PAY_ID, BIZ_ID = 71001, 71002
T0 = 1_800_000_000
BUYER, SELLER = "0x" + "b0" * 20, "0x" + "5e" * 20
SECRET = b"\x07" * 32
HASHLOCK = hashlib.sha256(SECRET).digest()
TRADE_ID = hashlib.sha256(b"replay trade").digest()
T_DELIVER, T_PAY = T0 + 600, T0 + 1200
TERMS = Terms(BUYER, SELLER, BUYER, SELLER, 1000, 1, b"\x0d" * 32, HASHLOCK, T_DELIVER, T_PAY)


@pytest.fixture
def dispatcher(database_url):  # noqa: ANN201
    engine, factory = open_database(database_url)
    yield Dispatcher(factory, POLICY, chain_ids={Chain.PAYMENT: PAY_ID,
                                                 Chain.BUSINESS: BIZ_ID})
    engine.dispose()


def batch(chain: Chain, number: int, at: int, *inputs, rewind_to: int | None = None,
          ) -> ChainBatch:
    chain_id = PAY_ID if chain is Chain.PAYMENT else BIZ_ID
    return ChainBatch(chain, chain_id, list(inputs), Block(chain, number, at),
                      hashlib.sha256(f"{chain}{number}{at}".encode()).digest(),
                      rewind_to=rewind_to)


def ref(chain: Chain, number: int, index: int = 0) -> ChainRef:
    chain_id = PAY_ID if chain is Chain.PAYMENT else BIZ_ID
    return ChainRef(chain_id, number, hashlib.sha256(f"{chain}{number}{index}".encode())
                    .digest(), index)


def state(dispatcher: Dispatcher):  # noqa: ANN201
    with dispatcher.session_factory() as session:
        return Repository(session).get_trade(TRADE_ID)


DLV_LOCK = DeliveryLock(SELLER, BUYER, 1, b"\x0d" * 32, TRADE_ID, HASHLOCK, T_DELIVER)
PAY_LOCK = PaymentLock(BUYER, SELLER, 1000, HASHLOCK, T_PAY)


def test_a_cancel_accepted_late_stays_accepted_on_replay(dispatcher: Dispatcher) -> None:
    """A managed buyer's trade accepted too late for its payment lock (nothing owed, so the
    cancel is accepted). Replayed with the clocks at 0 (before), accepting asked for the lock,
    the cancel was refused, and the trade went back to `agreed`."""
    dispatcher.apply_chain_batch(batch(Chain.PAYMENT, 1, T0))
    dispatcher.apply_chain_batch(batch(Chain.BUSINESS, 1, T0))
    dispatcher.propose(ActionProposeTrade(TRADE_ID, TERMS, managed_buyer=True))
    late = T_DELIVER - POLICY.claim_lead_time  # a lock made now leaves no claim window
    dispatcher.apply_chain_batch(batch(Chain.PAYMENT, 2, late))
    accepted = dispatcher.apply_action(ActionAcceptTrade(TRADE_ID))
    assert accepted.phase is Phase.AGREED and not accepted.pending
    assert dispatcher.apply_action(ActionCancelTrade(TRADE_ID)).phase is Phase.CANCELLED
    # A delivery lock of the trade's hashlock in business block 5, then a reorg to block 4.
    dispatcher.apply_chain_batch(batch(Chain.BUSINESS, 5, T0 + 50, ContractReceiveDeliveryLocked(
        b"\x01" * 32, DLV_LOCK, ref(Chain.BUSINESS, 5))))
    assert state(dispatcher).delivery is not None
    dispatcher.apply_chain_batch(batch(Chain.BUSINESS, 4, T0 + 40, rewind_to=4))
    after = state(dispatcher)
    assert after.delivery is None
    assert after.phase is Phase.CANCELLED and not after.pending


def test_a_preimage_survives_two_reorgs(dispatcher: Dispatcher) -> None:
    """The buyer's claim is dropped by one reorg, the secret is kept (it was public); a second
    reorg on the same chain used to replay without it."""
    dispatcher.apply_chain_batch(batch(Chain.PAYMENT, 1, T0))
    dispatcher.apply_chain_batch(batch(Chain.BUSINESS, 1, T0))
    dispatcher.propose(ActionProposeTrade(TRADE_ID, TERMS))
    dispatcher.apply_action(ActionAcceptTrade(TRADE_ID))
    dispatcher.apply_chain_batch(batch(Chain.PAYMENT, 2, T0 + 10, ContractReceivePaymentLocked(
        b"\x02" * 32, PAY_LOCK, ref(Chain.PAYMENT, 2))))
    dispatcher.apply_chain_batch(batch(Chain.BUSINESS, 3, T0 + 30, ContractReceiveDeliveryLocked(
        b"\x01" * 32, DLV_LOCK, ref(Chain.BUSINESS, 3))))
    dispatcher.apply_chain_batch(batch(Chain.BUSINESS, 6, T0 + 60, ContractReceiveClaimed(
        Chain.BUSINESS, b"\x01" * 32, SECRET, ref(Chain.BUSINESS, 6))))
    assert state(dispatcher).phase is Phase.DELIVERED
    dispatcher.apply_chain_batch(batch(Chain.BUSINESS, 5, T0 + 50, rewind_to=5))  # claim gone
    first = state(dispatcher)
    assert first.preimage == SECRET and first.phase is Phase.DELIVERY_LOCKED
    assert {k.split(":")[0] for k in first.pending} == {"payment_claim", "delivery_claim"}
    # A second reorg, below the delivery lock this time: the secret is still known.
    dispatcher.apply_chain_batch(batch(Chain.BUSINESS, 2, T0 + 20, rewind_to=2))
    second = state(dispatcher)
    assert second.delivery is None and second.preimage == SECRET
    # A public secret pays the seller: the payment claim is still asked for.
    assert any(k.startswith("payment_claim:") for k in second.pending)


def test_a_reorg_taking_back_a_lock_reported_verified_is_a_critical_alert(
        dispatcher: Dispatcher) -> None:
    """Issue 10 §2: a reorg that removes a lock the gateway already acted on raises a critical
    alert naming the trade, and the trade shows it (and keeps showing it after later
    replays)."""
    from structlog.testing import capture_logs

    dispatcher.apply_chain_batch(batch(Chain.PAYMENT, 1, T0))
    dispatcher.apply_chain_batch(batch(Chain.BUSINESS, 1, T0))
    dispatcher.propose(ActionProposeTrade(TRADE_ID, TERMS))
    dispatcher.apply_action(ActionAcceptTrade(TRADE_ID))
    lock_id = b"\x02" * 32
    dispatcher.apply_chain_batch(batch(Chain.PAYMENT, 3, T0 + 30, ContractReceivePaymentLocked(
        lock_id, PAY_LOCK, ref(Chain.PAYMENT, 3))))
    assert state(dispatcher).phase is Phase.PAYMENT_LOCKED  # reported verified to the seller
    with capture_logs() as logs:
        dispatcher.apply_chain_batch(batch(Chain.PAYMENT, 2, T0 + 20, rewind_to=2))
    after = state(dispatcher)
    assert after.payment is None and after.phase is Phase.AGREED
    assert f"chain_disagrees:{lock_id.hex()}" in after.flags
    alerts = [e for e in logs if e["event"] == "trade_flagged"]
    assert alerts and alerts[0]["log_level"] == "critical"
    assert alerts[0]["trade"] == "0x" + TRADE_ID.hex()
    # A later reorg replays the alert too: it is in the input log.
    dispatcher.apply_chain_batch(batch(Chain.PAYMENT, 5, T0 + 50))
    dispatcher.apply_chain_batch(batch(Chain.PAYMENT, 4, T0 + 40, rewind_to=2))
    assert f"chain_disagrees:{lock_id.hex()}" in state(dispatcher).flags


def _statements(dispatcher: Dispatcher, apply) -> int:  # noqa: ANN001
    """The SQL statements `apply()` runs."""
    from sqlalchemy import event

    seen = []
    engine = dispatcher.session_factory.kw["bind"]
    listener = lambda *_: seen.append(1)  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        apply()
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    return len(seen)


def _locked_trades(dispatcher: Dispatcher, first: int, count: int, block: int) -> list[bytes]:
    """`count` agreed trades whose payment locks are mined in payment block `block`."""
    made, logs = [], []
    for n in range(first, first + count):
        secret = hashlib.sha256(b"reorg secret %d" % n).digest()
        trade_id = hashlib.sha256(b"reorg trade %d" % n).digest()
        terms = replace(TERMS, hashlock=hashlib.sha256(secret).digest(), token_id=n)
        dispatcher.propose(ActionProposeTrade(trade_id, terms))
        dispatcher.apply_action(ActionAcceptTrade(trade_id))
        lock = PaymentLock(BUYER, SELLER, 1000, terms.hashlock, T_PAY)
        logs.append(ContractReceivePaymentLocked(hashlib.sha256(b"lock %d" % n).digest(), lock,
                                                 ref(Chain.PAYMENT, block, n)))
        made.append(trade_id)
    dispatcher.apply_chain_batch(batch(Chain.PAYMENT, block, T0 + 10 * block, *logs))
    return made


def test_a_reorg_replays_its_trades_in_a_fixed_number_of_queries(
        dispatcher: Dispatcher) -> None:
    """Every trade a reorg touches is loaded, and its remaining inputs read, with the others,
    and their alerts recorded at once: the same statements for 1 trade as for 4 (before: 3
    more per trade: its load, its inputs, its alert). Each trade comes out as alone."""
    dispatcher.apply_chain_batch(batch(Chain.PAYMENT, 1, T0))
    dispatcher.apply_chain_batch(batch(Chain.BUSINESS, 1, T0))
    one = _locked_trades(dispatcher, 100, 1, 3)
    four = _locked_trades(dispatcher, 200, 4, 6)
    with dispatcher.session_factory() as session:
        repo = Repository(session)
        assert {repo.get_trade(t).phase for t in one + four} == {Phase.PAYMENT_LOCKED}

    undo_four = _statements(dispatcher, lambda: dispatcher.apply_chain_batch(
        batch(Chain.PAYMENT, 5, T0 + 50, rewind_to=4)))  # block 6's four locks gone
    undo_one = _statements(dispatcher, lambda: dispatcher.apply_chain_batch(
        batch(Chain.PAYMENT, 2, T0 + 20, rewind_to=2)))  # then block 3's one lock
    assert undo_four == undo_one, (undo_four, undo_one)
    with dispatcher.session_factory() as session:
        repo = Repository(session)
        for trade_id in one + four:
            after = repo.get_trade(trade_id)
            assert after.payment is None and after.phase is Phase.AGREED
            assert any(f.startswith("chain_disagrees:") for f in after.flags)
            kinds = [type(i).__name__ for i, _ in repo.inputs_for_trade(trade_id)]
            assert kinds[-1] == "ChainDisagrees" and "ContractReceivePaymentLocked" not in kinds


def test_many_trades_are_read_in_chunks_in_id_order(dispatcher: Dispatcher, monkeypatch) -> None:
    """More trades than an IN list carries (`bulk.IN_CHUNK`, 1,000; 2 here) are read chunk by
    chunk, every one of them, in trade id order across the chunks (the row-lock order)."""
    from gateway.db import bulk

    dispatcher.apply_chain_batch(batch(Chain.PAYMENT, 1, T0))
    dispatcher.apply_chain_batch(batch(Chain.BUSINESS, 1, T0))
    made = _locked_trades(dispatcher, 300, 5, 3)
    monkeypatch.setattr(bulk, "IN_CHUNK", 2)
    with dispatcher.session_factory() as session:
        repo = Repository(session)
        found = repo.load_trades(made)
        histories = repo.inputs_for_trades(made)
    assert list(found) == sorted(made, key=bytes.hex)
    assert {found[t][0].phase for t in made} == {Phase.PAYMENT_LOCKED}
    assert {t: [type(i).__name__ for i, _ in histories[t]] for t in made} == {
        t: ["ActionProposeTrade", "ActionAcceptTrade", "ContractReceivePaymentLocked"]
        for t in made}
