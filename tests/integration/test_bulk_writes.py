"""The dispatcher's batch writes (`gateway.db.bulk`): on PostgreSQL one statement per kind of
row (arrays through `unnest`), on SQLite the executemany statements they replace. Each test
runs on both paths where the database has both (PostgreSQL: arrays, and the executemany path
forced), and the rows written are the same either way."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.exc import IntegrityError

from gateway.db import bulk
from gateway.db.migrate import upgrade
from gateway.db.models import CursorRow, InputRow, LockRow, OutboxRow, TradeEventRow, TradeRow
from gateway.db.repository import RECENT_HASHES, Repository
from gateway.db.session import make_engine, make_session_factory
from gateway.domain.codec import decode, encode
from gateway.domain.locks import PaymentLock
from gateway.domain.policy import TimingPolicy
from gateway.domain.state import Terms, evolve
from gateway.domain.trade import (
    ActionProposeTrade,
    Block,
    Chain,
    ChainRef,
    ContractSendPaymentClaim,
    EventPhaseChanged,
    Phase,
    TradeState,
    new_trade,
)
from tests.databases import on_postgres

PATHS = ["arrays", "executemany"] if on_postgres() else ["executemany"]


@pytest.fixture(params=PATHS)
def sessions(request, database_url, monkeypatch):  # noqa: ANN001, ANN201
    if request.param == "executemany":
        monkeypatch.setattr(bulk, "arrays", lambda session: False)
    engine = make_engine(database_url)
    upgrade(engine)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute",
                 lambda conn, cursor, sql, params, context, many: statements.append(sql))
    factory = make_session_factory(engine)
    factory.statements = statements  # type: ignore[attr-defined]
    factory.arrays = request.param == "arrays"  # type: ignore[attr-defined]
    yield factory
    engine.dispose()


def _trade(n: int) -> TradeState:
    terms = Terms("0x" + "11" * 20, "0x" + "22" * 20, "0x" + "33" * 20, "0x" + "44" * 20,
                  amount=500 + n, token_id=n, document_hash=hashlib.sha256(b"title").digest(),
                  hashlock=hashlib.sha256(b"h%d" % n).digest(), t_deliver=10_000,
                  t_pay=20_000)
    state, _ = new_trade(ActionProposeTrade(hashlib.sha256(b"t%d" % n).digest(), terms),
                         TimingPolicy())
    return state


def _ref(n: int) -> ChainRef:
    return ChainRef(71001, 100 + n, hashlib.sha256(b"tx%d" % n).digest(), n)


def test_the_input_log_is_appended_in_order_across_statements(sessions, monkeypatch) -> None:
    monkeypatch.setattr(bulk, "CHUNK_ROWS", 7)
    trade = _trade(1)
    entries = [(trade.trade_id if n % 3 else None, Block(Chain.PAYMENT, n, 1000 + n),
                _ref(n) if n % 2 else None, (n, n + 1) if n % 4 else None) for n in range(20)]
    with sessions.begin() as session:
        repo = Repository(session)
        repo.add_trades([(trade, (0, None))])
        before = len(sessions.statements)
        repo.record_inputs(entries)
        written = len(sessions.statements) - before
    assert written == (3 if sessions.arrays else 1)  # 20 rows, 7 a statement
    with sessions() as session:
        rows = session.scalars(select(InputRow).order_by(InputRow.id)).all()
    assert [decode(Block, r.payload).number for r in rows] == list(range(20))
    assert [r.trade_id for r in rows] == [t.hex() if t else None for t, *_ in entries]
    assert [r.tx_hash for r in rows] == [ref.tx_hash.hex() if ref else None
                                         for _, _, ref, _ in entries]
    assert [r.payload.get("_clock") for r in rows] == [list(c) if c else None
                                                       for *_, c in entries]
    assert all(r.orphaned is False and r.created_at.tzinfo is UTC for r in rows)


def test_orphaned_inputs_come_back_in_log_order_and_read_as_orphaned(sessions) -> None:
    trade = _trade(1)
    entries = [(trade.trade_id if n % 3 else None, Block(Chain.PAYMENT, n, 1000 + n), _ref(n),
                None) for n in range(20)]
    with sessions.begin() as session:
        repo = Repository(session)
        repo.add_trades([(trade, (0, None))])
        repo.record_inputs(entries)
    with sessions.begin() as session:
        repo = Repository(session)
        loaded = repo.logged_inputs(71001, [ref for _, _, ref, _ in entries])  # in the session
        orphaned = repo.orphan_inputs_after(71001, 100 + 9)
        assert orphaned == [(trade.trade_id, inp) for t, inp, _, _ in entries[10:] if t]
        assert [loaded[(_ref(n).tx_hash.hex(), n)].orphaned for n in (9, 10, 19)] == [
            False, True, True]
        again = repo.logged_inputs(71001, [ref for _, _, ref, _ in entries])
        assert sorted(n for (_, n), row in again.items() if row.orphaned) == list(range(10, 20))
        assert repo.orphan_inputs_after(71001, 100 + 9) == []


def test_saved_trades_take_every_column_and_the_last_save_wins(sessions) -> None:
    trades = [_trade(n) for n in range(3)]
    with sessions.begin() as session:
        Repository(session).add_trades([(t, (0, 0)) for t in trades])
    moved = [evolve(t, phase=Phase.CANCELLED) for t in trades]
    with sessions.begin() as session:
        Repository(session).save_trades([(moved[0], (None, 7)), (moved[1], (5, None)),
                                         (trades[0], (1, 2))])
    with sessions() as session:
        rows = {r.id: r for r in session.scalars(select(TradeRow))}
    first, second, third = (rows[t.trade_id.hex()] for t in trades)
    assert (first.phase, first.wake_payment, first.wake_business) == ("proposed", 1, 2)
    assert (second.phase, second.active, second.wake_payment, second.wake_business) == (
        "cancelled", False, 5, None)
    assert second.state == encode(moved[1]) and second.updated_at > second.created_at
    assert (third.phase, third.wake_payment, third.wake_business) == ("proposed", 0, 0)


def test_states_are_stored_once_as_json_and_read_back_by_another_process(sessions,
                                                                          monkeypatch) -> None:
    """The dispatcher writes each state's JSON text as it serialized it (not serialized a
    second time, as a string), and a process that kept nothing reads the same states back."""
    from gateway.db import trade_store

    trades = [_trade(n) for n in range(3)]
    with sessions.begin() as session:
        Repository(session).add_trades([(t, (0, 0)) for t in trades[:1]])
        Repository(session).add_trades([(t, (0, 0)) for t in trades[1:]])
    moved = [evolve(t, phase=Phase.CANCELLED) for t in trades]
    with sessions.begin() as session:
        Repository(session).save_trades([(t, (1, 1)) for t in moved[:2]])
    with sessions() as session:
        assert {r.id: r.state for r in session.scalars(select(TradeRow))} == {
            t.trade_id.hex(): encode(t) for t in [*moved[:2], trades[2]]}
    monkeypatch.setattr(trade_store, "_STATES", trade_store._DecodedStates(8))  # a new process
    with sessions() as session:
        loaded = Repository(session).load_trades([t.trade_id for t in trades], lock_rows=False)
    assert {t: state for t, (state, _) in loaded.items()} == {
        t.trade_id: t for t in [*moved[:2], trades[2]]}


def test_a_hashlock_in_use_still_raises_integrity_error(sessions) -> None:
    trade = _trade(1)
    with sessions.begin() as session:
        Repository(session).add_trades([(trade, (0, 0))])
    twin = evolve(_trade(2), terms=trade.terms)
    with pytest.raises(IntegrityError), sessions.begin() as session:
        Repository(session).add_trades([(twin, (0, 0))])


def test_effects_close_once_and_only_while_pending(sessions) -> None:
    trade = _trade(1)
    now = datetime.now(UTC)
    with sessions.begin() as session:
        Repository(session).add_trades([(trade, (0, 0))])
        bulk.insert_rows(session, OutboxRow.__table__, [
            {"trade_id": trade.trade_id.hex(), "key": key, "kind": "K", "chain": "payment",
             "payload": {}, "status": status, "created_at": now, "updated_at": now}
            for key, status in (("a", "pending"), ("b", "sent"), ("c", "pending"))])
    with sessions.begin() as session:
        Repository(session).close_effects_many([(trade.trade_id, "a", "done"),
                                                (trade.trade_id, "b", "done"),
                                                (trade.trade_id, "a", "cancelled"),
                                                (trade.trade_id, "x", "done")])
    with sessions() as session:
        found = dict(session.execute(select(OutboxRow.key, OutboxRow.status)).all())
    assert found == {"a": "done", "b": "sent", "c": "pending"}


def test_known_lock_links_are_kept(sessions) -> None:
    one, two = _trade(1), _trade(2)
    with sessions.begin() as session:
        repo = Repository(session)
        repo.add_trades([(one, (0, 0)), (two, (0, 0))])
        repo.link_locks("payment", [(b"\x01" * 32, one.trade_id)])
    with sessions.begin() as session:
        Repository(session).link_locks("payment", [(b"\x01" * 32, two.trade_id),
                                                   (b"\x02" * 32, two.trade_id)])
        Repository(session).link_locks("business", [(b"\x01" * 32, two.trade_id)])
    with sessions() as session:
        links = set(session.execute(select(LockRow.lock_id, LockRow.chain, LockRow.trade_id)))
    assert links == {("01" * 32, "payment", one.trade_id.hex()),
                     ("02" * 32, "payment", two.trade_id.hex()),
                     ("01" * 32, "business", two.trade_id.hex())}


def test_the_cursor_and_its_block_hashes(sessions) -> None:
    def h(n: int) -> bytes:
        return hashlib.sha256(b"%d" % n).digest()

    top = 10 + RECENT_HASHES
    with sessions.begin() as session:
        Repository(session).set_cursor(7, 10, h(10), 1010, [(9, h(9)), (8, h(8))])
    with sessions.begin() as session:
        repo = Repository(session)
        assert repo.recent_block_hashes(7) == [(10, h(10)), (9, h(9)), (8, h(8))]
        loaded = repo.cursor(7)  # in the session's identity map: must not go stale
        repo.set_cursor(7, top - 1, h(top - 1), 1900, [(top - 3, b"\x01" * 32)])
        repo.set_cursor(7, top, h(top), 2000, [(top - 3, h(top - 3)), (10, b"\x0a" * 32),
                                               (top - 2, h(top - 2))])
        assert (loaded.block_number, loaded.block_timestamp) == (top, 2000)
    with sessions() as session:
        hashes = Repository(session).recent_block_hashes(7)
        cursor = session.get(CursorRow, 7)
    # 10 and below are RECENT_HASHES or more below the cursor: forgotten, even one the batch
    # named again; a block named again takes its new hash.
    assert hashes == [(n, h(n)) for n in range(top, top - 4, -1)]
    assert (cursor.block_number, cursor.block_hash, cursor.block_timestamp) == (
        top, h(top).hex(), 2000)


def test_timeline_rows_keep_their_order(sessions) -> None:
    trade = _trade(1)
    notes = [(trade.trade_id, EventPhaseChanged(trade.trade_id, None, Phase.PROPOSED), None),
             (trade.trade_id, EventPhaseChanged(trade.trade_id, Phase.PROPOSED,
                                                Phase.CANCELLED), _ref(3))]
    with sessions.begin() as session:
        repo = Repository(session)
        repo.add_trades([(trade, (0, 0))])
        repo.add_events_many(notes)
    with sessions() as session:
        rows = session.scalars(select(TradeEventRow).order_by(TradeEventRow.id)).all()
    assert [r.payload for r in rows] == [encode(note) for _, note, _ in notes]
    assert [(r.chain_id, r.block_number, r.tx_hash) for r in rows] == [
        (None, None, None), (71001, 103, _ref(3).tx_hash.hex())]


@pytest.mark.skipif(not on_postgres(), reason="PostgreSQL only: the arrays path")
def test_both_paths_store_the_same_text(database_url, monkeypatch) -> None:
    """Column by column, as text: JSON (quotes, escapes, non-ASCII), instants, NULLs."""
    engine = make_engine(database_url)
    upgrade(engine)
    factory = make_session_factory(engine)
    trade = _trade(1)
    at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    payload = {"s": 'q"\\ \u00e9 \u2603 \n', "n": [1, 2.5, None, True], "o": {"k": {}}}
    row = {"trade_id": trade.trade_id.hex(), "kind": "K", "payload": payload,
           "chain_id": None, "block_number": 2**40, "tx_hash": None, "created_at": at}
    try:
        with factory.begin() as session:
            Repository(session).add_trades([(trade, (0, None))])
            bulk.insert_rows(session, TradeEventRow.__table__, [row])
            with monkeypatch.context() as patch:
                patch.setattr(bulk, "arrays", lambda session: False)
                bulk.insert_rows(session, TradeEventRow.__table__, [row])
        with engine.connect() as connection:
            arrays, executemany = connection.execute(text(
                "SELECT payload::text, chain_id, block_number, tx_hash, created_at::text "
                "FROM trade_events ORDER BY id")).all()
        assert arrays == executemany
    finally:
        engine.dispose()


def _claim(trade: TradeState, n: int) -> ContractSendPaymentClaim:
    lock = PaymentLock(trade.terms.buyer_payment, trade.terms.seller_payment, 500 + n,
                       trade.terms.hashlock, 20_000)
    return ContractSendPaymentClaim(trade.trade_id, hashlib.sha256(b"lock%d" % n).digest(),
                                    lock, hashlib.sha256(b"secret%d" % n).digest())


def test_the_executor_plans_only_effects_with_no_transaction_in_flight(sessions) -> None:
    """`unsent_effects`: a claim whose transaction is signed or sent is left out (it waits to
    be mined); one never sent, or whose attempt was mined without its result, reverted or
    dropped, is planned (the latter as a retry). `link_effects` points rows at an attempt in
    one statement, and the loaded rows say so too."""
    trades = [_trade(n) for n in range(6)]
    claims = [_claim(t, n) for n, t in enumerate(trades)]
    with sessions.begin() as session:
        repo = Repository(session)
        repo.add_trades([(t, (0, 0)) for t in trades])
        repo.enqueue_many([(c.trade_id, c, "payment") for c in claims])
    with sessions.begin() as session:
        repo = Repository(session)
        rows = {row.trade_id: row for row, _, _ in repo.unsent_effects("payment")}
        attempts = {status: repo.add_attempt(71001, "0x" + "aa" * 20, nonce,
                                             hashlib.sha256(status.encode()).digest(), b"\x02")
                    for nonce, status in enumerate(("signed", "sent", "mined", "reverted",
                                                    "dropped"))}
        for status, attempt in attempts.items():
            attempt.status = status
        session.flush()
        links = [(rows[t.trade_id.hex()], attempts[s].id) for t, s in zip(
            trades, ("signed", "sent", "mined", "reverted", "dropped"), strict=False)]
        repo.link_effects(links)
        assert [row.attempt_id for row, _ in links] == [a for _, a in links]
    with sessions() as session:
        planned = Repository(session).unsent_effects("payment")
        assert Repository(session).unsent_effects("business") == []
    assert [(row.trade_id, effect, retry) for row, effect, retry in planned] == [
        (c.trade_id.hex(), c, retry) for c, retry in zip(
            claims[2:], (True, True, True, False), strict=True)]
