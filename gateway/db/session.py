"""Engines and sessions. SQLite (a file) is the embedded default; PostgreSQL in production."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # The busy timeout: a writer waits up to 30 s for another's write lock (processes on
        # one file take it first thing in every trade-state transaction:
        # `Repository.lock_trade_writes`) instead of failing with "database is locked".
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, connect_args=_postgres_connect_args(url))


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
