"""The test databases: SQLite files by default; PostgreSQL when `DVP_TEST_DATABASE_URL` names
an admin connection to a server (`scripts/pg-cluster run -- make test` or `make
test-postgres`). Every test that builds a database gets a new, empty one (a new file, or a
uniquely named PostgreSQL database created through the admin connection and dropped after),
and the code under test migrates it with `alembic upgrade head` as it does in production.
"""

from __future__ import annotations

import atexit
import os
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

ENV = "DVP_TEST_DATABASE_URL"
ADMIN_URL = os.environ.get(ENV) or None


def on_postgres() -> bool:
    return ADMIN_URL is not None


def _admin():  # noqa: ANN202
    assert ADMIN_URL is not None
    return create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)


def create_database(tmp_path: Path, name: str = "gateway") -> str:
    """A new empty database's URL: a file in `tmp_path`, or a new PostgreSQL database."""
    if ADMIN_URL is None:
        return f"sqlite:///{tmp_path / f'{name}.db'}"
    db = f"dvp_test_{uuid.uuid4().hex[:20]}"
    engine = _admin()
    try:
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{db}"'))
    finally:
        engine.dispose()
    return make_url(ADMIN_URL).set(database=db).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    """Drop a database made by `create_database` (its file goes with tmp_path), even while
    engines of the test still hold connections to it."""
    if ADMIN_URL is None or not url.startswith("postgresql"):
        return
    db = make_url(url).database
    assert db and db.startswith("dvp_test_"), db
    engine = _admin()
    try:
        with engine.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
    finally:
        engine.dispose()


def database_for_process(tmp_path: Path, name: str = "gateway") -> str:
    """For a database built outside any fixture (at import): dropped when the process exits."""
    url = create_database(tmp_path, name)
    atexit.register(drop_database, url)
    return url
