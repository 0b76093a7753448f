"""Two processes writing trade state on one SQLite file (an API and a relayer) lose no update.

Every dispatcher transaction reads trade states and writes new ones. On SQLite, nothing but the
database's own write lock orders two processes, and pysqlite takes it only at a transaction's
first write: both could read the same state, and the later commit would erase the earlier one
(an accepted trade back to `proposed`, or a payment lock forgotten). `lock_trade_writes` takes
the write lock first, so the second transaction waits and reads what the first committed.

Deterministic: process A pauses its real `Dispatcher` transaction right after reading the
trade, process B then runs its own, and A waits (up to `PAUSE`) for B to finish before it
commits: B must still be waiting when A commits, and the trade must hold both changes.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import time

import pytest

from tests.databases import on_postgres

pytestmark = pytest.mark.skipif(on_postgres(), reason="SQLite only: PostgreSQL has its own "
                                "tests of the advisory locks (tests/postgres/)")

PAUSE = 1.0  # how long A holds its transaction open after B has started its own
T0 = 1_700_000_000


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


TRADE_ID = _sha(b"sqlite writers trade")


def _policy():  # noqa: ANN202
    from gateway.domain.policy import TimingPolicy

    return TimingPolicy()


def _terms():  # noqa: ANN202
    from gateway.domain.trade import Terms

    t_deliver = T0 + 3_600
    return Terms(buyer_payment="0x" + "b0" * 20, seller_payment="0x" + "5e" * 20,
                 buyer_business="0x" + "b1" * 20, seller_business="0x" + "51" * 20,
                 amount=1_000, token_id=7, document_hash=_sha(b"bill of lading"),
                 hashlock=_sha(b"secret" * 5), t_deliver=t_deliver,
                 t_pay=t_deliver + _policy().required_margin + 600)


def _payment_batch():  # noqa: ANN202
    """The relayer's side: a block of the payment chain with the buyer's matching lock."""
    from gateway.domain.trade import (
        Block,
        Chain,
        ChainBatch,
        ChainRef,
        ContractReceivePaymentLocked,
    )

    ref = ChainRef(71_001, 101, _sha(b"payment lock tx"), 0)
    lock = ContractReceivePaymentLocked(_sha(b"payment lock"), _terms().expected_payment_lock(),
                                        ref)
    return ChainBatch(Chain.PAYMENT, 71_001, [lock], Block(Chain.PAYMENT, 101, T0 + 60),
                      _sha(b"block 101"))


def _dispatcher(url: str):  # noqa: ANN202
    """A process's own engine and dispatcher (not `gateway.engine.build`: its chain imports
    take seconds)."""
    from gateway.db.session import make_engine, make_session_factory
    from gateway.engine.dispatcher import Dispatcher

    engine = make_engine(url)
    return engine, Dispatcher(make_session_factory(engine), _policy())


def _write(role: str, url: str, pause=None) -> None:  # noqa: ANN001
    """One dispatcher transaction: the API's accept, or the relayer's payment-chain batch.
    `pause`, if given, runs inside the transaction right after the trade was read."""
    from gateway.domain.trade import ActionAcceptTrade

    engine, dispatcher = _dispatcher(url)
    try:
        if role == "api":
            with dispatcher.unit() as unit:
                unit.trades([TRADE_ID])
                if pause is not None:
                    pause()
                unit.apply(ActionAcceptTrade(TRADE_ID))
            return
        if pause is not None:
            from gateway.db.repository import Repository

            read = Repository.trades_for_logs

            def trades_for_logs(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
                found = read(self, *args, **kwargs)
                pause()
                return found

            Repository.trades_for_logs = trades_for_logs  # this process only
        dispatcher.apply_chain_batch(_payment_batch())
    finally:
        engine.dispose()


def _first(role: str, url: str, a_read, b_started, b_done, results) -> None:  # noqa: ANN001
    """Process A: read the trade, then hold the transaction open while B tries its own."""
    def pause() -> None:
        a_read.set()
        assert b_started.wait(30), "B never started"
        # B, started, finishes at once unless it waits for this transaction.
        results.put(("b_done_before_a_commit", b_done.wait(PAUSE)))

    _write(role, url, pause)
    results.put(("a_committed", True))


def _second(role: str, url: str, a_read, b_started, b_done, results) -> None:  # noqa: ANN001
    """Process B: once A is inside its transaction, run its own; report how long it took."""
    from gateway.db.migrate import current_revision

    engine, _ = _dispatcher(url)
    current_revision(engine)  # imports and first connection done before the clock starts
    engine.dispose()
    assert a_read.wait(30), "A never read the trade"
    b_started.set()
    started = time.monotonic()
    _write(role, url)
    results.put(("b_seconds", time.monotonic() - started))
    b_done.set()


@pytest.mark.parametrize("first", ["api", "relayer"])
def test_api_and_relayer_processes_lose_no_update(tmp_path, first: str) -> None:
    from gateway.db import migrate
    from gateway.db.repository import Repository
    from gateway.domain.trade import ActionProposeTrade, Phase

    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    engine, dispatcher = _dispatcher(url)
    migrate.upgrade(engine)
    dispatcher.propose(ActionProposeTrade(TRADE_ID, _terms()))

    second = "relayer" if first == "api" else "api"
    ctx = multiprocessing.get_context("spawn")
    a_read, b_started, b_done = ctx.Event(), ctx.Event(), ctx.Event()
    results = ctx.Queue()
    args = (a_read, b_started, b_done, results)
    procs = [ctx.Process(target=_first, args=(first, url, *args)),
             ctx.Process(target=_second, args=(second, url, *args))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    try:
        assert [p.exitcode for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    got = dict(results.get(timeout=5) for _ in range(3))

    with dispatcher.session_factory() as session:
        state = Repository(session).get_trade(TRADE_ID)
    engine.dispose()
    assert state is not None and got["a_committed"]
    # Both changes: the seller's acceptance and the buyer's payment lock.
    assert state.payment is not None, "the payment lock was lost"
    assert state.phase is Phase.PAYMENT_LOCKED, state.phase
    # ... because B waited for A's commit, then read what A wrote.
    assert got["b_done_before_a_commit"] is False, "B's transaction ran inside A's"
    assert got["b_seconds"] >= PAUSE * 0.8, "B did not wait for A's commit"
