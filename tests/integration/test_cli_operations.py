"""Operations from the command line: SQLite durability (PRAGMA synchronous), online backups,
files that hold keys written with mode 0600, and `api --workers` refusals."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError
from sqlalchemy import insert, text

from gateway.cli import main
from gateway.config import Settings
from gateway.db.models import EnterpriseRow
from gateway.db.session import make_engine

FULL, NORMAL = 2, 1  # PRAGMA synchronous values


def _synchronous(engine) -> int:  # noqa: ANN001
    with engine.connect() as connection:
        return connection.execute(text("PRAGMA synchronous")).scalar_one()


# --- PRAGMA synchronous ---------------------------------------------------------------------


def test_sqlite_commits_are_synced_by_default(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("DVP_SQLITE_SYNCHRONOUS", raising=False)
    engine = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    try:
        assert _synchronous(engine) == FULL
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
    finally:
        engine.dispose()
    assert Settings(_env_file=None).sqlite_synchronous == "full"


@pytest.mark.parametrize(("setting", "expected"), [("full", FULL), ("normal", NORMAL),
                                                   ("NORMAL", NORMAL)])
def test_each_synchronous_setting_reaches_every_new_connection(tmp_path, monkeypatch, setting,
                                                               expected) -> None:
    from gateway.engine.build import open_database

    url = f"sqlite:///{tmp_path / 'a.db'}"
    engine = make_engine(url, synchronous=setting)  # given
    try:
        assert _synchronous(engine) == expected
        with engine.connect() as one, engine.connect() as two:  # two pooled connections
            for connection in (one, two):
                assert connection.execute(text("PRAGMA synchronous")).scalar_one() == expected
    finally:
        engine.dispose()
    monkeypatch.setenv("DVP_SQLITE_SYNCHRONOUS", setting)  # as every process reads it
    assert Settings(_env_file=None).sqlite_synchronous == setting.lower()
    engine, _ = open_database(url)
    try:
        assert _synchronous(engine) == expected
    finally:
        engine.dispose()


def test_a_wrong_synchronous_setting_is_refused(tmp_path, monkeypatch) -> None:
    with pytest.raises(ValidationError):
        Settings(_env_file=None, sqlite_synchronous="off")
    with pytest.raises(ValueError, match="DVP_SQLITE_SYNCHRONOUS"):
        make_engine(f"sqlite:///{tmp_path / 'a.db'}", synchronous="off")
    result = CliRunner().invoke(main, ["db", "upgrade", "--database-url",
                                       f"sqlite:///{tmp_path / 'a.db'}"],
                                env={"DVP_SQLITE_SYNCHRONOUS": "off"})
    assert result.exit_code == 2, result.output
    assert "DVP_SQLITE_SYNCHRONOUS" in result.output and "Traceback" not in result.output


# --- db backup --------------------------------------------------------------------------------


def _head() -> str:
    from alembic.script import ScriptDirectory

    from gateway.db.migrate import alembic_config

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def _enterprise(name: str) -> dict:
    return {"id": str(uuid.uuid4()), "name": name, "managed": False,
            "payment_address": "0x" + "11" * 20, "business_address": "0x" + "22" * 20}


@pytest.fixture
def gateway_db(tmp_path):  # noqa: ANN201
    """A migrated SQLite gateway database with three enterprises; (url, path, engine)."""
    path = tmp_path / "gateway.db"
    url = f"sqlite:///{path}"
    assert CliRunner().invoke(main, ["db", "upgrade", "--database-url", url]).exit_code == 0
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(insert(EnterpriseRow), [_enterprise(f"Committed {n}")
                                                   for n in range(3)])
    yield url, path, engine
    engine.dispose()


def _names(path: Path) -> set[str]:
    with sqlite3.connect(path) as copy:
        return {row[0] for row in copy.execute("SELECT name FROM enterprises")}


def _backup(url: str, target: Path, *extra: str):  # noqa: ANN202
    return CliRunner().invoke(main, ["db", "backup", str(target), "--database-url", url,
                                     *extra])


def test_backup_while_a_write_transaction_is_open(gateway_db, tmp_path) -> None:
    url, _, engine = gateway_db
    target = tmp_path / "backups" / "copy.db"
    target.parent.mkdir()
    with engine.connect() as writer:
        writer.exec_driver_sql("BEGIN IMMEDIATE")  # holds the write lock, uncommitted
        writer.execute(insert(EnterpriseRow), [_enterprise("Uncommitted")])
        result = _backup(url, target)
        assert result.exit_code == 0, result.output
        writer.rollback()
    assert f"alembic revision {_head()}" in result.output
    assert "integrity_check ok" in result.output
    assert _names(target) == {"Committed 0", "Committed 1", "Committed 2"}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # encrypted keys, API key hashes
    with sqlite3.connect(target) as copy:  # one self-contained file
        assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert sorted(p.name for p in target.parent.iterdir()) == ["copy.db"]


def test_backup_during_writes_is_one_consistent_snapshot(gateway_db, tmp_path) -> None:
    url, _, engine = gateway_db
    stop, written = threading.Event(), []

    def write() -> None:
        n = 0
        while not stop.is_set():
            with engine.begin() as connection:  # two rows per transaction: a pair or none
                connection.execute(insert(EnterpriseRow), [_enterprise(f"w{n}a"),
                                                           _enterprise(f"w{n}b")])
            written.append(n)
            n += 1

    thread = threading.Thread(target=write)
    thread.start()
    try:
        while len(written) < 20:
            stop.wait(0.01)
        result = _backup(url, tmp_path / "copy.db")
    finally:
        stop.set()
        thread.join(30)
    assert result.exit_code == 0, result.output
    names = _names(tmp_path / "copy.db") - {"Committed 0", "Committed 1", "Committed 2"}
    pairs = {name[:-1] for name in names}
    assert len(pairs) >= 20
    assert names == {f"{p}{s}" for p in pairs for s in "ab"}  # no half transaction
    assert pairs == {f"w{n}" for n in range(len(pairs))}  # a prefix of the commits


def test_backup_refuses_to_overwrite_unless_forced(gateway_db, tmp_path) -> None:
    url, _, engine = gateway_db
    target = tmp_path / "copy.db"
    target.write_text("precious")
    result = _backup(url, target)
    assert result.exit_code == 2, result.output
    assert "exists: give --force" in result.output and "Traceback" not in result.output
    assert target.read_text() == "precious"
    with engine.begin() as connection:
        connection.execute(insert(EnterpriseRow), [_enterprise("Later")])
    result = _backup(url, target, "--force")
    assert result.exit_code == 0, result.output
    assert "Later" in _names(target)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_backup_of_a_missing_database_creates_nothing(tmp_path) -> None:
    result = _backup(f"sqlite:///{tmp_path / 'missing.db'}", tmp_path / "copy.db")
    assert result.exit_code == 2, result.output
    assert "no SQLite database at" in result.output and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_backup_on_postgresql_names_the_pg_dump_command(tmp_path) -> None:
    result = _backup("postgresql+psycopg://dvp:S3CRETPW@db.example:5433/gateway?sslmode=require",
                     tmp_path / "gw.dump")
    assert result.exit_code == 2, result.output
    assert (f"pg_dump --format=custom --file={tmp_path / 'gw.dump'} "
            "--dbname='postgresql://dvp@db.example:5433/gateway?sslmode=require'"
            in result.output), result.output
    assert "S3CRETPW" not in result.output and "Traceback" not in result.output
    assert not (tmp_path / "gw.dump").exists()


# --- files that hold keys ---------------------------------------------------------------------


def test_key_files_are_private_from_their_creation(tmp_path, monkeypatch) -> None:
    from gateway import keys as secrets

    path = tmp_path / "devnet.env"
    path.write_text("old")
    path.chmod(0o644)  # an existing world-readable file
    modes_when_written = []
    real_replace = os.replace

    def replace(src, dst) -> None:  # noqa: ANN001 - the content is complete here
        modes_when_written.append(stat.S_IMODE(os.stat(src).st_mode))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    old_umask = os.umask(0)  # the most permissive umask: the mode must not depend on it
    try:
        secrets.write_private_file(path, "DVP_RELAYER_KEY=0x04\n")
    finally:
        os.umask(old_umask)
    assert modes_when_written == [0o600]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "DVP_RELAYER_KEY=0x04\n"
    assert [p.name for p in tmp_path.iterdir()] == ["devnet.env"]


def test_devnet_demo_json_is_private(tmp_path, monkeypatch) -> None:
    """Private by construction: with no later chmod to rely on (a no-op here, as a crash
    between writing and chmod would leave it), the file is still 0600."""
    from gateway.chain.devnet import start_devnet
    from gateway.cli import _write_demo
    from gateway.keys import Cipher

    workdir = tmp_path / "demo"
    workdir.mkdir()
    (workdir / "demo.json").write_text("{}")
    (workdir / "demo.json").chmod(0o644)
    settings = Settings(_env_file=None, database_url=f"sqlite:///{tmp_path / 'g.db'}")
    monkeypatch.setattr(Path, "chmod", lambda *_a, **_k: None)
    old_umask = os.umask(0)
    try:
        _write_demo(start_devnet(), settings, Cipher(Cipher.generate_key()), workdir)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((workdir / "demo.json").stat().st_mode) == 0o600
    assert json.loads((workdir / "demo.json").read_text())["enterprises"]["buyer"]["api_key"]


# --- api --workers --------------------------------------------------------------------------


def test_api_workers_are_refused_on_sqlite(tmp_path) -> None:
    """SQLite has one writer and every API request writes: several API processes on it are
    refused before anything is opened (the nodes are never asked, the file never made);
    tests/anvil/test_api_workers.py runs them on PostgreSQL."""
    database = tmp_path / "gateway.db"
    result = CliRunner().invoke(main, ["api", "--workers", "2"], env={
        "DVP_DATABASE_URL": f"sqlite:///{database}",
        "DVP_PAYMENT_RPC_URL": "http://127.0.0.1:9", "DVP_BUSINESS_RPC_URL": "http://127.0.0.1:9"})
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: --workers 2 needs PostgreSQL: DVP_DATABASE_URL is "
                                    "a SQLite database, which has a single writer")
    assert "--workers 1" in result.output and "postgresql+psycopg://" in result.output
    assert "Traceback" not in result.output and "unreachable" not in result.output
    assert not database.exists()


def test_api_workers_must_be_at_least_one() -> None:
    result = CliRunner().invoke(main, ["api", "--workers", "0"])
    assert result.exit_code == 2
    assert "--workers" in result.output and "0 is not in the range x>=1" in result.output


def test_an_api_worker_that_cannot_start_stops_the_supervisor(tmp_path, monkeypatch,
                                                              capsys) -> None:
    """A worker exits with uvicorn's startup-failure code, whatever the reason (its message
    printed, secrets redacted): uvicorn's supervisor then stops every worker instead of
    starting the failing one again and again, and `api --workers` exits 2."""
    from uvicorn.config import STARTUP_FAILURE

    from gateway import logs
    from gateway.cli import api

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVP_PAYMENT_CHAIN_ID", "7")
    monkeypatch.setenv("DVP_BUSINESS_CHAIN_ID", "7")
    with pytest.raises(SystemExit) as exit_info:  # a setting refused
        api.create_app_from_env()
    assert exit_info.value.code == STARTUP_FAILURE
    assert "must differ" in capsys.readouterr().err

    logs.keep_secret(["hunter2-worker-secret"])

    def broken(**_: object) -> None:
        raise RuntimeError("connection to postgresql://u:hunter2-worker-secret@db refused")

    monkeypatch.setattr(api, "_settings", broken)
    with pytest.raises(SystemExit) as exit_info:  # anything else
        api.create_app_from_env()
    assert exit_info.value.code == STARTUP_FAILURE
    err = capsys.readouterr().err
    assert err.startswith("error: an API worker cannot start: connection to postgresql://")
    assert "hunter2-worker-secret" not in err


SUPERVISOR = """
from gateway.cli import common, workers
workers._rpc_clients = lambda settings, relayer: None  # the supervisor's own checks pass
workers.serve_workers(common._settings(), "127.0.0.1", 0, 2)
"""


def test_api_workers_that_cannot_start_are_not_restarted(tmp_path) -> None:
    """Workers that fail to start (here: no node configured, which the supervisor was made to
    overlook) stop the supervisor with exit 2 instead of being started again and again."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("DVP_")}
    env["DVP_DATABASE_URL"] = f"sqlite:///{tmp_path / 'gateway.db'}"
    done = subprocess.run([sys.executable, "-c", SUPERVISOR], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "error: missing configuration: DVP_PAYMENT_RPC_URL" in done.stderr
    assert done.stderr.rstrip().endswith(
        "error: an API worker could not start (see above); every worker is stopped")
    assert "Traceback" not in done.stderr
