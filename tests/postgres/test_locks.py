"""The advisory locks several relayers coordinate with (gateway/db/locks.py)."""

from __future__ import annotations

import pytest
from sqlalchemy import event, text

from gateway.db.locks import AdvisoryLocks, lock_key
from gateway.db.session import make_engine
from tests.databases import on_postgres
from tests.postgres.waiting import wait_for

# pg_locks rows of the advisory lock :key that a session holds.
HELD = "locktype = 'advisory' AND granted AND (classid::bigint << 32 | objid::bigint) = :key"

pytestmark = pytest.mark.skipif(
    not on_postgres(), reason="PostgreSQL only: set DVP_TEST_DATABASE_URL (make test-postgres)")


@pytest.fixture
def engines(database_url):  # noqa: ANN201
    """Two engines on one database: two relayer processes' connections."""
    one, two = make_engine(database_url), make_engine(database_url)
    yield one, two
    one.dispose()
    two.dispose()


def test_a_chain_lock_has_one_holder_at_a_time(engines) -> None:
    a, b = (AdvisoryLocks(e) for e in engines)
    with a.hold("execute:1") as first:
        assert first
        with b.hold("execute:1") as second, b.hold("execute:2") as other_chain:
            assert not second and other_chain
    with b.hold("execute:1") as after_release:
        assert after_release


def test_a_holder_whose_connection_dies_frees_the_lock(engines) -> None:
    _, two = engines
    a, b = (AdvisoryLocks(e) for e in engines)
    with a.hold("poll:1") as held:
        assert held
        with two.begin() as connection:  # the holder's session ends (a crash, a cut)
            killed = connection.execute(text(
                f"SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE {HELD}"),
                {"key": lock_key("poll:1")}).scalar()
        assert killed == 1

        def released() -> bool:  # pg_terminate_backend only signals the backend
            with two.connect() as connection:
                return not connection.execute(text(
                    f"SELECT count(*) FROM pg_locks WHERE {HELD}"),
                    {"key": lock_key("poll:1")}).scalar()

        wait_for(released, timeout=30, what="the killed holder's lock released")
        with b.hold("poll:1") as taken_over:
            assert taken_over


def test_sessions_ask_the_server_for_tcp_keepalives(database_url) -> None:
    """So the server ends a vanished relayer's session, and frees its locks, in seconds."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SHOW tcp_keepalives_idle")).scalar() == "10"
            assert connection.execute(text("SHOW tcp_keepalives_count")).scalar() == "3"
    finally:
        engine.dispose()


def test_overlapping_executor_passes_send_each_effect_once(devnet, database_url,
                                                           monkeypatch) -> None:
    """Two relayers both run a pass over the payment chain's outbox at once (as when the first
    one's lock connection alone was cut and the second took the execute lock). The chain's send
    lock makes the second plan only after the first has recorded: one claim transaction, and
    the seller paid once."""
    import threading

    from sqlalchemy import select

    from gateway.db.models import AttemptRow, OutboxRow
    from gateway.domain.trade import Chain
    from gateway.engine import executor as executor_module
    from tests.integration.harness import World, make_gateway

    first, second = make_gateway(devnet, database_url), make_gateway(devnet, database_url)
    world = World(devnet, first)
    trades = [world.agree() for _ in range(3)]
    for trade in trades:
        world.lock_payment(trade)
        world.lock_delivery(trade)
    first.relayer.poll()
    for trade in trades:
        world.take_delivery(trade)
    first.relayer.poll()  # three payment claims wait in the outbox
    seller_before = world.token_balance(world.seller.address)

    paused, resume = threading.Event(), threading.Event()
    reach = executor_module.reach

    def pausing(name: str) -> None:
        if name == "executor.before_record" and threading.current_thread().name == "first":
            paused.set()  # planned and signed inside its transaction, not yet committed
            resume.wait(60)
        reach(name)

    monkeypatch.setattr(executor_module, "reach", pausing)
    watcher = make_engine(database_url)
    try:
        def lock_waits() -> list[str]:
            with watcher.connect() as connection:
                return list(connection.execute(text(
                    "SELECT wait_event FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'")).scalars())

        a = threading.Thread(target=first.relayer.executor.run_chain, args=(Chain.PAYMENT,),
                             name="first")
        a.start()
        assert paused.wait(60)
        b = threading.Thread(target=second.relayer.executor.run_chain, args=(Chain.PAYMENT,),
                             name="second")
        b.start()
        wait_for(lambda: bool(lock_waits()) or not b.is_alive(), timeout=60,
                 what="the second pass blocked or done")
        assert b.is_alive(), "the second pass ran while the first had not recorded"
        assert lock_waits() == ["advisory"]  # the send lock, before it read anything
        resume.set()
        a.join(60)
        b.join(60)
        assert not a.is_alive() and not b.is_alive()
    finally:
        resume.set()
        watcher.dispose()

    with first.session_factory() as session:
        attempts = session.scalars(select(AttemptRow).where(
            AttemptRow.chain_id == devnet.payment.client.chain_id)).all()
        claims = session.scalars(select(OutboxRow).where(OutboxRow.chain == "payment")).all()
    assert len(attempts) == 1, [(a.nonce, a.status) for a in attempts]
    assert {row.attempt_id for row in claims} == {attempts[0].id}
    first.relayer.run_until(lambda: all(world.phase(t) == "settled" for t in trades))
    assert world.token_balance(world.seller.address) == seller_before + sum(
        t.terms.amount for t in trades)


def test_processes_starting_together_migrate_once(database_url) -> None:
    """An API and relayers started at once on an empty database each run the migrations:
    they take turns, and every one of them finds the schema at head."""
    import threading

    from gateway.db import migrate

    engines = [make_engine(database_url) for _ in range(3)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(engines))

    def upgrade(engine) -> None:  # noqa: ANN001
        start.wait()
        try:
            migrate.upgrade(engine)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=upgrade, args=(e,)) for e in engines]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert errors == []
        heads = {migrate.current_revision(e) for e in engines}
        from alembic.script import ScriptDirectory

        script = ScriptDirectory.from_config(migrate.alembic_config(database_url))
        assert heads == {script.get_current_head()}
    finally:
        for engine in engines:
            engine.dispose()


def test_holding_a_chain_lock_costs_two_statements_and_no_transaction(engines, monkeypatch) -> None:
    """A relayer takes and releases four chain locks a step: in autocommit, one statement each
    way, with no BEGIN and COMMIT around them (an idle relayer step: 34 round trips, was 50)."""
    import psycopg

    commands: list[bytes] = []  # what psycopg sends outside statements: BEGIN, COMMIT, ...
    run = psycopg.Connection._exec_command

    def counted(self, command, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        commands.append(bytes(command).split()[0])
        return run(self, command, *args, **kwargs)

    engine, other = engines
    with engine.connect():  # SQLAlchemy's first-connect checks, not counted
        pass
    monkeypatch.setattr(psycopg.Connection, "_exec_command", counted)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    with engine.begin() as connection:  # the counter sees a transaction's BEGIN and COMMIT
        connection.execute(text("SELECT 1"))
    assert commands == [b"BEGIN", b"COMMIT"]
    commands.clear()
    statements.clear()
    with AdvisoryLocks(engine).hold("execute:7") as held:
        assert held
        assert commands == [] and len(statements) == 1 and "pg_try_advisory_lock" in statements[0]
        with other.connect() as seen:  # held by the session: another sees it in pg_locks
            assert seen.execute(text(f"SELECT count(*) FROM pg_locks WHERE {HELD}"),
                                {"key": lock_key("execute:7")}).scalar() == 1
        commands.clear()  # (that other session's own)
    assert commands == [] and len(statements) == 2 and "pg_advisory_unlock" in statements[1]
    with AdvisoryLocks(other).hold("execute:7") as after_release:
        assert after_release
