"""Engines and sessions. SQLite (a file) is the embedded default; PostgreSQL in production."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

# SQLite's `PRAGMA synchronous` (see `Settings.sqlite_synchronous`): FULL, the default, syncs
# the write-ahead log at every commit, so a committed transaction (an API response given, a
# signed transaction recorded before it is sent) survives power loss; NORMAL syncs only at
# checkpoints, so the last commits before a power cut can be lost (never corrupted).
SQLITE_SYNCHRONOUS = ("full", "normal")
SQLITE_SYNCHRONOUS_ENV = "DVP_SQLITE_SYNCHRONOUS"


def sqlite_synchronous(value: str | None = None) -> str:
    """The synchronous level: `value`, else DVP_SQLITE_SYNCHRONOUS, else "full"."""
    chosen = (value if value is not None
              else os.environ.get(SQLITE_SYNCHRONOUS_ENV) or "full").strip().lower()
    if chosen not in SQLITE_SYNCHRONOUS:
        raise ValueError(f"{SQLITE_SYNCHRONOUS_ENV} must be one of "
                         f"{', '.join(SQLITE_SYNCHRONOUS)}, not {chosen!r}")
    return chosen


# Connections each process keeps open (`Settings.database_pool_size`). The API serves up to 40
# requests at once, each in a thread with its own connection; a pool smaller than that closed
# every connection beyond it on return and opened a new one for the next request (measured with
# 16 concurrent proposals: a new PostgreSQL session, with its server process, per request).
DEFAULT_POOL_SIZE = 20
POOL_SIZE_ENV = "DVP_DATABASE_POOL_SIZE"
MAX_POOL_SIZE = 500
POOL_OVERFLOW = 10  # opened beyond the pool when it is all in use, closed on return


def pool_size(value: int | str | None = None) -> int:
    """The pool size: `value`, else DVP_DATABASE_POOL_SIZE, else DEFAULT_POOL_SIZE."""
    chosen = value if value is not None else os.environ.get(POOL_SIZE_ENV) or DEFAULT_POOL_SIZE
    try:
        size = int(str(chosen).strip())
    except ValueError:
        size = 0
    if not 1 <= size <= MAX_POOL_SIZE:
        raise ValueError(f"{POOL_SIZE_ENV} must be a whole number from 1 to {MAX_POOL_SIZE}, "
                         f"not {chosen!r}")
    return size


def make_engine(url: str, *, synchronous: str | None = None,
                pool: int | None = None) -> Engine:
    """`synchronous`: SQLite's level, "full" or "normal"; None: DVP_SQLITE_SYNCHRONOUS (read
    here because every process opens its database through this function), default "full".
    `pool`: connections kept open; None: DVP_DATABASE_POOL_SIZE, default 20."""
    size = pool_size(pool)
    if url.startswith("sqlite"):
        level = sqlite_synchronous(synchronous).upper()
        # The busy timeout: a writer waits up to 30 s for another's write lock (processes on
        # one file take it first thing in every trade-state transaction:
        # `Repository.lock_trade_writes`) instead of failing with "database is locked".
        from sqlalchemy.engine import make_url

        in_memory = make_url(url).database in (None, "", ":memory:")  # one connection, no pool
        pooling = {} if in_memory else {"pool_size": size, "max_overflow": POOL_OVERFLOW}
        engine = create_engine(url, connect_args={"timeout": 30}, **pooling)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
            cursor.execute(f"PRAGMA synchronous={level}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    engine = create_engine(url, pool_size=size, max_overflow=POOL_OVERFLOW,
                           connect_args=_postgres_connect_args(url))
    ping_when_idle(engine)
    return engine


# A pooled PostgreSQL connection is checked before use only if it sat unused in the pool this
# long. SQLAlchemy's `pool_pre_ping` checks every checkout: a round trip more per transaction,
# two per proposal (measured: 0.8 ms of the API's 14 ms CPU a proposal, 0.3 of the database's
# 3.4). A connection the server dropped while idle (a restart, a proxy's idle timeout) is still
# replaced before use; one in use a moment ago that fails anyway (the server went within the
# second) fails its request with a 503, and SQLAlchemy then replaces every pooled connection.
PING_AFTER_IDLE = 1.0  # seconds


def ping_when_idle(engine: Engine) -> None:
    """Check a pooled connection at checkout when it was returned `PING_AFTER_IDLE` seconds
    ago or more; one that fails the check is discarded and another taken (SQLAlchemy's
    disconnect handling: the pool retries on `DisconnectionError`)."""
    import time

    from sqlalchemy.exc import DisconnectionError

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_connection, record) -> None:  # noqa: ANN001
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection, record, _proxy) -> None:  # noqa: ANN001
        returned = record.info.get("returned_at")
        if returned is None or time.monotonic() - returned < PING_AFTER_IDLE:
            return  # just opened, or in use a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"a pooled connection failed its check: {exc}") from exc


# PostgreSQL sessions: give up connecting after 10 s (a database that is away makes the API
# answer 503 instead of hanging), and keep-alives both ways on TCP, so that a relayer host that
# vanishes (power, network) has its session, and with it its advisory locks (gateway.db.locks),
# ended by the server within about half a minute rather than the operating system's two hours.
# Any of these given in the URL's query wins.
_KEEPALIVE = {"tcp_keepalives_idle": 10, "tcp_keepalives_interval": 5, "tcp_keepalives_count": 3}


def _postgres_connect_args(url: str) -> dict[str, object]:
    from sqlalchemy.engine import make_url

    query = make_url(url).query
    args: dict[str, object] = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 10,
                               "keepalives_interval": 5, "keepalives_count": 3}
    if "options" not in query:
        args["options"] = " ".join(f"-c {k}={v}" for k, v in _KEEPALIVE.items())
    return {k: v for k, v in args.items() if k not in query}


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


class BackupError(Exception):
    """A backup that was not made (the message says why); nothing is left at the target."""


def backup_sqlite(source: Path, target: Path, *, force: bool = False) -> tuple[str | None, int]:
    """Copy the SQLite database `source` to `target` with SQLite's online backup API: one
    consistent snapshot (a read transaction; in WAL mode writers carry on meanwhile, and a
    write transaction open elsewhere is not in the copy), into a new file of mode 0600 (it
    holds encrypted keys and API key hashes), checked with `PRAGMA integrity_check`, made a
    single self-contained file (rollback journal, no -wal), synced and only then renamed to
    `target`. An existing `target` is refused unless `force`. Returns the copy's alembic
    revision (None without one) and its size in bytes."""
    if not source.is_file():
        raise BackupError(f"no SQLite database at {source}")
    if target.exists() and not force:
        raise BackupError(f"{target} exists: give --force to overwrite it")
    if target.resolve() == source.resolve():
        raise BackupError(f"{target} is the database itself")
    tmp = _private_file_beside(target)
    try:
        revision, check = _snapshot(source, tmp)
        if check != ["ok"]:
            raise BackupError(f"the copy of {source} fails PRAGMA integrity_check: "
                              + "; ".join(check[:5]))
        _fsync_file(tmp)
        size = tmp.stat().st_size
        _publish(tmp, target, force=force)
        _fsync_directory(target.parent)
        return revision, size
    finally:
        tmp.unlink(missing_ok=True)


def _private_file_beside(target: Path) -> Path:
    """A new empty file of mode 0600 next to `target`: the copy is made there, then renamed."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise BackupError(f"cannot create {tmp}: {exc}") from exc
    return tmp


def _snapshot(source: Path, copy: Path) -> tuple[str | None, list[str]]:
    """`source` copied into `copy` in one step (one snapshot) and made a single file: the
    copy's alembic revision and what `PRAGMA integrity_check` says of it."""
    import sqlite3

    try:
        src = sqlite3.connect(source.resolve().as_uri() + "?mode=rw", uri=True, timeout=30)
        try:
            dst = sqlite3.connect(copy)
            try:
                src.backup(dst)  # all pages in one step: one snapshot
                dst.execute("PRAGMA journal_mode=DELETE")
                check = [row[0] for row in dst.execute("PRAGMA integrity_check")]
                try:
                    row = dst.execute("SELECT version_num FROM alembic_version").fetchone()
                    revision = row[0] if row else None
                except sqlite3.OperationalError:  # no such table
                    revision = None
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot back up {source}: {exc}") from exc
    return revision, check


def _publish(tmp: Path, target: Path, *, force: bool) -> None:
    """The finished copy renamed to `target`; without `force`, never over a file that
    appeared there meanwhile."""
    try:
        if force:
            os.replace(tmp, target)
        else:
            os.link(tmp, target)  # fails if `target` appeared meanwhile: never clobbered
            tmp.unlink()
    except FileExistsError as exc:
        raise BackupError(f"{target} exists: give --force to overwrite it") from exc
    except OSError as exc:
        raise BackupError(f"cannot write {target}: {exc}") from exc


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
