"""Pooled PostgreSQL connections are checked before use only after sitting idle
(`gateway.db.session.ping_when_idle`): a connection the server dropped while it was idle is
replaced before a request sees it, and one in use a moment ago costs no extra round trip."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from gateway.db import session as db_session
from gateway.db.session import make_engine
from tests.databases import on_postgres

pytestmark = pytest.mark.skipif(
    not on_postgres(), reason="PostgreSQL only: set DVP_TEST_DATABASE_URL (make test-postgres)")


def _counting_pings(engine) -> list[int]:  # noqa: ANN001
    pings: list[int] = []
    real = engine.dialect.do_ping

    def do_ping(dbapi_connection) -> bool:  # noqa: ANN001
        pings.append(1)
        return real(dbapi_connection)

    engine.dialect.do_ping = do_ping
    return pings


def _backend_pid(engine) -> int:  # noqa: ANN001
    with engine.connect() as connection:
        return connection.execute(text("SELECT pg_backend_pid()")).scalar_one()


def _terminate(database_url: str, pid: int) -> None:
    other = make_engine(database_url, pool=1)
    try:
        with other.connect() as connection:
            assert connection.execute(text("SELECT pg_terminate_backend(:pid)"),
                                      {"pid": pid}).scalar_one()
    finally:
        other.dispose()


def test_connections_in_steady_use_are_not_pinged(database_url) -> None:
    engine = make_engine(database_url, pool=2)
    try:
        pings = _counting_pings(engine)
        pids = {_backend_pid(engine) for _ in range(20)}
        assert pings == [] and len(pids) == 1  # one pooled connection, reused, never pinged
    finally:
        engine.dispose()


def test_a_connection_dropped_while_idle_is_replaced_before_use(database_url,
                                                                monkeypatch) -> None:
    engine = make_engine(database_url, pool=1)
    try:
        pings = _counting_pings(engine)
        first = _backend_pid(engine)
        _terminate(database_url, first)  # the server drops the pooled connection
        monkeypatch.setattr(db_session, "PING_AFTER_IDLE", 0.0)  # it has sat idle long enough
        second = _backend_pid(engine)  # no error: the check found it dead and reconnected
        assert second != first and len(pings) == 1
    finally:
        engine.dispose()


def test_a_connection_dropped_while_just_used_fails_once_then_the_pool_recovers(
        database_url) -> None:
    """The trade-off: within PING_AFTER_IDLE of its last use a connection is not checked, so
    the first statement on a dropped one fails (the API answers 503); the pool then replaces
    its connections and the next request is served."""
    engine = make_engine(database_url, pool=1)
    try:
        first = _backend_pid(engine)
        _terminate(database_url, first)
        with pytest.raises(OperationalError), engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        assert _backend_pid(engine) != first
    finally:
        engine.dispose()
