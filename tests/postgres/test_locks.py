"""The advisory locks several relayers coordinate with (gateway/db/locks.py)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from gateway.db.locks import AdvisoryLocks, lock_key
from gateway.db.session import make_engine
from tests.databases import on_postgres

pytestmark = pytest.mark.skipif(
    not on_postgres(), reason="PostgreSQL only: set DVP_TEST_DATABASE_URL (make test-postgres)")


def test_a_chain_lock_has_one_holder_at_a_time(database_url) -> None:
    one, two = make_engine(database_url), make_engine(database_url)
    a, b = AdvisoryLocks(one), AdvisoryLocks(two)
    try:
        with a.hold("execute:1") as first:
            assert first
            with b.hold("execute:1") as second, b.hold("execute:2") as other_chain:
                assert not second and other_chain
        with b.hold("execute:1") as after_release:
            assert after_release
    finally:
        one.dispose()
        two.dispose()


def test_a_holder_whose_connection_dies_frees_the_lock(database_url) -> None:
    one, two = make_engine(database_url), make_engine(database_url)
    a, b = AdvisoryLocks(one), AdvisoryLocks(two)
    try:
        with a.hold("poll:1") as held:
            assert held
            with two.begin() as connection:  # the holder's session ends (a crash, a cut)
                killed = connection.execute(text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND granted AND "
                    "(classid::bigint << 32 | objid::bigint) = :key"),
                    {"key": lock_key("poll:1")}).scalar()
            assert killed == 1
            with b.hold("poll:1") as taken_over:
                assert taken_over
    finally:
        one.dispose()
        two.dispose()


def test_sessions_ask_the_server_for_tcp_keepalives(database_url) -> None:
    """So the server ends a vanished relayer's session, and frees its locks, in seconds."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SHOW tcp_keepalives_idle")).scalar() == "10"
            assert connection.execute(text("SHOW tcp_keepalives_count")).scalar() == "3"
    finally:
        engine.dispose()
