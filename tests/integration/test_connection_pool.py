"""Connections are kept under load: the API serves many requests at once, one connection each.

With SQLAlchemy's default pool (5 kept, 10 more opened and closed on return), 16 concurrent
requests opened and closed about 11 connections each round: on PostgreSQL a new server process
and login per request. The pool now keeps DVP_DATABASE_POOL_SIZE (default 20) connections.
"""

from __future__ import annotations

import threading

import pytest
from click.testing import CliRunner
from sqlalchemy import event, text

from gateway.cli import main
from gateway.config import Settings
from gateway.db.session import DEFAULT_POOL_SIZE, make_engine

CONCURRENT = 16  # the API bench's connections


def _rounds_of_concurrent_use(engine, rounds: int, at_once: int = CONCURRENT) -> int:  # noqa: ANN001
    """Connections opened while `rounds` times `at_once` threads each hold one at once."""
    opened = []
    event.listen(engine, "connect", lambda *_: opened.append(1))
    for _ in range(rounds):
        all_in = threading.Barrier(at_once)

        def use(all_in: threading.Barrier) -> None:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
                all_in.wait(timeout=30)  # every thread holds its connection at once

        threads = [threading.Thread(target=use, args=(all_in,)) for _ in range(at_once)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    return len(opened)


def test_concurrent_requests_reuse_their_connections(database_url, monkeypatch) -> None:
    monkeypatch.delenv("DVP_DATABASE_POOL_SIZE", raising=False)
    engine = make_engine(database_url)
    try:
        assert engine.pool.size() == DEFAULT_POOL_SIZE >= CONCURRENT
        # Three rounds of 16 at once: 16 connections opened in the first, none after.
        assert _rounds_of_concurrent_use(engine, 3) == CONCURRENT
        assert engine.pool.checkedin() == CONCURRENT
    finally:
        engine.dispose()


def test_the_pool_size_is_the_operators(database_url, monkeypatch) -> None:
    monkeypatch.setenv("DVP_DATABASE_POOL_SIZE", "4")  # as every process reads it
    assert Settings(_env_file=None).database_pool_size == 4
    engine = make_engine(database_url)
    try:
        assert engine.pool.size() == 4
        # 12 at once (4 kept, 10 more allowed): the 8 beyond the 4 kept are opened again
        # every round (closed on return).
        assert _rounds_of_concurrent_use(engine, 2, at_once=12) == 12 + 8
    finally:
        engine.dispose()


@pytest.mark.parametrize("value", ["0", "-3", "many", "501"])
def test_a_wrong_pool_size_is_refused(tmp_path, value) -> None:
    with pytest.raises(ValueError, match="DVP_DATABASE_POOL_SIZE"):
        make_engine(f"sqlite:///{tmp_path / 'a.db'}", pool=value)
    result = CliRunner().invoke(main, ["db", "upgrade", "--database-url",
                                       f"sqlite:///{tmp_path / 'a.db'}"],
                                env={"DVP_DATABASE_POOL_SIZE": value})
    assert result.exit_code == 2, result.output
    assert "database_pool_size" in result.output.lower().replace("dvp_", "")
    assert "Traceback" not in result.output
