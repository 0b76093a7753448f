"""Writers of trade state on PostgreSQL: per-trade locking (gateway/db/locks.py).

Writers of named trades (API actions and proposals: `Dispatcher.unit`) hold the trade-writes
lock shared and lock their trades' rows, so writers of different trades run side by side and
writers of one trade take turns, the second reading what the first committed. A chain batch,
which discovers its trades as it routes logs, holds the lock exclusively. Each test holds a
real transaction open at a chosen line (a thread waiting on an event) and watches the other
writer wait, or not.
"""

from __future__ import annotations

import hashlib
import threading

import pytest

from gateway.db import migrate
from gateway.db.repository import Repository
from gateway.db.session import make_engine, make_session_factory
from gateway.domain.policy import TimingPolicy
from gateway.domain.trade import (
    ActionAcceptTrade,
    ActionCancelTrade,
    ActionProposeTrade,
    Block,
    Chain,
    ChainBatch,
    ChainRef,
    ContractReceivePaymentLocked,
    InvalidTransition,
    Phase,
    Terms,
)
from gateway.engine.dispatcher import Dispatcher
from tests.databases import on_postgres

pytestmark = pytest.mark.skipif(
    not on_postgres(), reason="PostgreSQL only: set DVP_TEST_DATABASE_URL (make test-postgres)")

T0 = 1_700_000_000
HOLD = 1.0  # seconds a writer that must wait is watched waiting


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _terms(n: int) -> Terms:
    t_deliver = T0 + 3_600
    return Terms(buyer_payment="0x" + "b0" * 20, seller_payment="0x" + "5e" * 20,
                 buyer_business="0x" + "b1" * 20, seller_business="0x" + "51" * 20,
                 amount=1_000, token_id=n, document_hash=_sha(b"bill of lading"),
                 hashlock=_sha(b"secret %d" % n), t_deliver=t_deliver,
                 t_pay=t_deliver + TimingPolicy().required_margin + 600)


TRADES = [_sha(b"trade %d" % n) for n in range(2)]


@pytest.fixture
def dispatcher(database_url):  # noqa: ANN201
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    d = Dispatcher(make_session_factory(engine), TimingPolicy())
    for n, trade_id in enumerate(TRADES):
        d.propose(ActionProposeTrade(trade_id, _terms(n)))
    yield d
    engine.dispose()


class Held:
    """A unit of work on `trade_id` held open (in a thread) after reading the trade, until
    `release`; then it applies `action` and commits."""

    def __init__(self, dispatcher: Dispatcher, trade_id: bytes, action) -> None:  # noqa: ANN001
        self.inside, self.go, self.errors = threading.Event(), threading.Event(), []

        def run() -> None:
            try:
                with dispatcher.unit() as unit:
                    unit.trades([trade_id])
                    self.inside.set()
                    assert self.go.wait(30)
                    unit.apply(action)
            except Exception as exc:  # noqa: BLE001 - reported by `release`
                self.errors.append(exc)
                self.inside.set()

        self.thread = threading.Thread(target=run)
        self.thread.start()
        assert self.inside.wait(30)

    def release(self) -> None:
        self.go.set()
        self.thread.join(30)
        assert not self.errors, self.errors


def _in_thread(call) -> tuple[threading.Thread, list, threading.Event]:  # noqa: ANN001
    out: list = []
    done = threading.Event()

    def run() -> None:
        try:
            out.append(call())
        except Exception as exc:  # noqa: BLE001 - the caller looks at it
            out.append(exc)
        done.set()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out, done


def _phase(d: Dispatcher, trade_id: bytes) -> Phase:
    with d.session_factory() as session:
        state = Repository(session).get_trade(trade_id)
    assert state is not None
    return state.phase


def test_writers_of_different_trades_do_not_wait_for_each_other(dispatcher) -> None:
    held = Held(dispatcher, TRADES[0], ActionAcceptTrade(TRADES[0]))
    try:
        thread, out, done = _in_thread(
            lambda: dispatcher.apply_action(ActionAcceptTrade(TRADES[1])))
        assert done.wait(10), "a writer of another trade waited for the held one"
        thread.join()
        assert not isinstance(out[0], Exception), out
    finally:
        held.release()
    assert [_phase(dispatcher, t) for t in TRADES] == [Phase.AGREED, Phase.AGREED]


def test_writers_of_one_trade_take_turns_and_lose_no_update(dispatcher) -> None:
    held = Held(dispatcher, TRADES[0], ActionAcceptTrade(TRADES[0]))
    try:
        thread, out, done = _in_thread(
            lambda: dispatcher.apply_action(ActionAcceptTrade(TRADES[0])))
        assert not done.wait(HOLD), "a second writer of the trade did not wait for the first"
    finally:
        held.release()
    thread.join(30)
    # The second accept read what the first committed: the trade is already agreed.
    assert isinstance(out[0], InvalidTransition), out
    assert _phase(dispatcher, TRADES[0]) is Phase.AGREED
    # ... and a cancel after it applies on top of the accept, never instead of it.
    held = Held(dispatcher, TRADES[0], ActionCancelTrade(TRADES[0]))
    held.release()
    with dispatcher.session_factory() as session:
        logged = [type(i).__name__ for i, _ in Repository(session).inputs_for_trade(TRADES[0])]
    assert logged == ["ActionProposeTrade", "ActionAcceptTrade", "ActionCancelTrade"]


def test_a_chain_batch_waits_for_the_writers_of_named_trades(dispatcher) -> None:
    """A batch routes its logs to trades it finds as it goes: it holds the lock alone."""
    dispatcher.chain_ids = {Chain.PAYMENT: 71_001}
    ref = ChainRef(71_001, 101, _sha(b"payment lock tx"), 0)
    held = Held(dispatcher, TRADES[0], ActionAcceptTrade(TRADES[0]))
    try:
        lock = ContractReceivePaymentLocked(_sha(b"payment lock"),
                                            _terms(0).expected_payment_lock(), ref)
        batch = ChainBatch(Chain.PAYMENT, 71_001, [lock], Block(Chain.PAYMENT, 101, T0 + 60),
                           _sha(b"block 101"))
        thread, out, done = _in_thread(lambda: dispatcher.apply_chain_batch(batch))
        assert not done.wait(HOLD), "the batch ran inside a writer's transaction"
    finally:
        held.release()
    thread.join(30)
    assert out == [None], out
    # both: the accept, then the payment lock the batch applied on top of it
    assert _phase(dispatcher, TRADES[0]) is Phase.PAYMENT_LOCKED


def test_a_named_lock_serialises_its_holders(dispatcher) -> None:
    """A buyer's exposure lock (`Unit.lock_name`): the second proposal or accept of one buyer
    reads its open exposure only after the first committed; another buyer's does not wait."""
    for other, must_wait in (("exposure:buyer", True), ("exposure:another buyer", False)):
        inside, go = threading.Event(), threading.Event()

        def first(inside: threading.Event = inside, go: threading.Event = go) -> None:
            with dispatcher.unit() as unit:
                unit.lock_name("exposure:buyer")
                inside.set()
                go.wait(30)

        def second(name: str = other) -> bool:
            with dispatcher.unit() as unit:
                unit.lock_name(name)
            return True

        holder = threading.Thread(target=first)
        holder.start()
        assert inside.wait(30)
        thread, out, done = _in_thread(second)
        waited = not done.wait(HOLD if must_wait else 10)
        go.set()
        holder.join(30)
        thread.join(30)
        assert waited is must_wait and out == [True], (other, waited, out)
