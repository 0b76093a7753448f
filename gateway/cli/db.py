"""`dvp-gateway db`: schema migrations and backups."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from gateway.cli.common import _fail, _settings


@click.group()
def db() -> None:
    """Database schema and backups."""


@db.command("upgrade")
@click.option("--database-url", help="SQLAlchemy URL (default: DVP_DATABASE_URL).")
def db_upgrade(database_url: str | None) -> None:
    """Apply every pending migration."""
    from gateway.db import migrate
    from gateway.db.session import make_engine

    settings = _settings(database_url=database_url)
    engine = make_engine(settings.database_url, synchronous=settings.sqlite_synchronous,
                         pool=settings.database_pool_size)
    try:
        migrate.upgrade(engine)
        click.echo(f"database at revision {migrate.current_revision(engine)}")
    except Exception as exc:  # noqa: BLE001 - a CLI reports, it does not trace back
        click.echo(f"error: cannot upgrade {engine.url!r}: {exc}", err=True)
        sys.exit(1)
    finally:
        engine.dispose()


@db.command("backup")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
@click.option("--database-url", help="SQLAlchemy URL (default: DVP_DATABASE_URL).")
def db_backup(path: str, force: bool, database_url: str | None) -> None:
    """Copy a SQLite database to PATH, consistently, while the gateway runs (SQLite's online
    backup API), check the copy (PRAGMA integrity_check) and print its schema revision.
    PostgreSQL: use pg_dump (the command is printed)."""
    from sqlalchemy.engine import URL, make_url
    from sqlalchemy.exc import ArgumentError

    settings = _settings(database_url=database_url)
    try:
        url = make_url(settings.database_url)
    except ArgumentError as exc:
        _fail(f"DVP_DATABASE_URL is not a database URL: {exc}")
    if url.get_backend_name() == "postgresql":
        libpq = URL.create("postgresql", username=url.username, host=url.host, port=url.port,
                           database=url.database, query=url.query).render_as_string(
                               hide_password=False)  # libpq's form, without the password
        _fail("db backup copies SQLite files; back up PostgreSQL with pg_dump, online and "
              f"consistent:\n  pg_dump --format=custom --file={_shell_quote(path)} "
              f"--dbname={_shell_quote(libpq)}\n(the password from PGPASSWORD or ~/.pgpass; "
              "restore into an empty database with pg_restore --dbname=URL FILE)")
    if url.get_backend_name() != "sqlite":
        _fail(f"db backup supports SQLite (and names the command for PostgreSQL), not "
              f"{url.get_backend_name()}")
    if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
        _fail(f"db backup needs a SQLite database file, not {url.database or 'memory'!r}")
    from gateway.db.session import BackupError, backup_sqlite

    try:
        revision, size = backup_sqlite(Path(url.database), Path(path), force=force)
    except BackupError as exc:
        _fail(str(exc))
    click.echo(f"backed up {url.database} to {path}: {size} bytes, integrity_check ok, "
               f"alembic revision {revision or 'none (not a migrated gateway database?)'}")


def _shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)
