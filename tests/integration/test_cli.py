"""The command line as operators use it: outputs, exit codes, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from click.testing import CliRunner
from sqlalchemy import create_engine, inspect

from gateway.cli import main


def test_swap_settles_through_the_relayer() -> None:
    result = CliRunner().invoke(main, ["swap", "--amount", "1234.56", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["phase"] == "settled"
    assert out["buyer_paid"] == out["seller_received"] == 123456
    chains = {e["chain"] for e in out["timeline"] if e["tx_hash"]}
    assert chains == {"payment", "business"}
    assert any("payment claimed for the seller" in e["what"] for e in out["timeline"])


def test_swap_refund_returns_both_legs() -> None:
    result = CliRunner().invoke(main, ["swap", "--refund", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["phase"] == "payment_refunded"
    assert out["buyer_paid"] == 0 and out["seller_received"] == 0


def test_bad_amount_is_a_clear_error() -> None:
    for amount in ("1.234", "-5", "abc", "0", "0.00"):
        result = CliRunner().invoke(main, ["swap", "--amount", amount])
        assert result.exit_code == 2, amount
        assert "--amount" in result.output
        assert "Traceback" not in result.output


def test_equal_chain_ids_refused() -> None:
    result = CliRunner().invoke(main, ["swap"], env={"DVP_PAYMENT_CHAIN_ID": "7",
                                                      "DVP_BUSINESS_CHAIN_ID": "7"})
    assert result.exit_code == 2
    assert "must differ" in result.output


def test_db_upgrade_creates_the_schema(database_url) -> None:
    url = database_url
    result = CliRunner().invoke(main, ["db", "upgrade", "--database-url", url])
    assert result.exit_code == 0, result.output
    from alembic.script import ScriptDirectory

    from gateway.db.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert f"revision {head}" in result.output
    engine = create_engine(url)
    assert "trades" in inspect(engine).get_table_names()
    engine.dispose()


def test_relayer_without_node_configuration_exits_with_message(database_url) -> None:
    result = CliRunner().invoke(main, ["relayer", "run", "--database-url", database_url],
                                env={})
    assert result.exit_code == 2
    assert "DVP_PAYMENT_RPC_URL" in result.output and "DVP_RELAYER_KEY" in result.output


def test_relayer_rejects_bad_contract_address(tmp_path) -> None:
    result = CliRunner().invoke(main, ["relayer", "run", "--payment-htlc", "0x1234"])
    assert result.exit_code == 2
    assert "PAYMENT_HTLC" in result.output and "not an address" in result.output


def test_relayer_daemon_logs_json_and_stops_on_sigterm(database_url) -> None:
    env = {**os.environ, "DVP_DATABASE_URL": database_url,
           "DVP_POLL_INTERVAL": "0.05"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "relayer", "run", "--devnet",
                             "--json-logs"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        started = None
        deadline = time.monotonic() + 60
        lines = []
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if '"relayer_started"' in line:
                started = json.loads(line)
                break
        assert started is not None, lines
        assert started["level"] == "info" and "timestamp" in started
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=30)[1]
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert '"relayer_stopped"' in rest


def test_relayer_metrics_port_taken_is_a_clear_error(database_url) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["relayer", "run", "--devnet", "--database-url",
                                           database_url], env={"DVP_METRICS_PORT": str(port)})
    assert result.exit_code == 2, result.output
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.output


def test_credentials_in_node_and_database_urls_are_never_printed(tmp_path,
                                                                 monkeypatch) -> None:
    """Providers put API keys in endpoint paths and queries; databases take passwords. An
    unreachable node's error names the node without them, and so do the relayer's logs."""
    from gateway import logs

    monkeypatch.setattr(logs, "_secrets", [])  # this process's other tests keep theirs
    result = CliRunner().invoke(main, ["relayer", "run"], env={
        "DVP_PAYMENT_RPC_URL": "http://127.0.0.1:9/v3/PROVIDERKEY1234?token=QUERYTOKEN99",
        "DVP_BUSINESS_RPC_URL": "http://127.0.0.1:9/BUSINESSKEY55",
        "DVP_RELAYER_KEY": "0x" + "11" * 32,
        "DVP_PAYMENT_HTLC": "0x" + "22" * 20, "DVP_DELIVERY_HTLC": "0x" + "33" * 20,
        "DVP_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"})
    assert result.exit_code == 2
    assert "payment chain at http://127.0.0.1:9/" in result.output and "unreachable" in \
        result.output
    assert "PROVIDERKEY1234" not in result.output and "QUERYTOKEN99" not in result.output

    logs.keep_secret(logs.url_secrets("postgresql+psycopg://dvp:DBPASSWORD77@db/dvp",
                                      path_is_secret=False))
    assert logs.redact("connect to postgresql+psycopg://dvp:DBPASSWORD77@db/dvp failed") == \
        "connect to postgresql+psycopg://dvp:***@db/dvp failed"
    import structlog
    from structlog.testing import capture_logs

    with capture_logs(processors=[logs._redact_event]) as seen:  # noqa: SLF001
        structlog.get_logger("t").error("relayer_step_failed",
                                        error="HTTPConnectionPool: url: /v3/PROVIDERKEY1234")
    assert seen[0]["error"] == "HTTPConnectionPool: url: /***"


# --- enterprise create: what it is given must be exact ------------------------------------------

CHECKSUMMED = "0x52908400098527886E0F7030069857D2E4169EE7"  # EIP-55's own example


def test_enterprise_create_needs_managed_or_both_addresses(database_url) -> None:
    for addresses in ([], ["--payment-address", CHECKSUMMED],
                      ["--business-address", CHECKSUMMED]):
        result = CliRunner().invoke(main, ["enterprise", "create", "--name", "Acme",
                                           "--database-url", database_url, *addresses])
        assert result.exit_code == 2, (addresses, result.output)
        assert "give --managed, or both --payment-address and --business-address" in \
            result.output, result.output
        assert "Traceback" not in result.output


def test_enterprise_create_refuses_a_wrong_address_checksum(database_url) -> None:
    wrong = CHECKSUMMED.replace("E0F7", "e0F7")  # mixed case, one letter off
    for option in ("--payment-address", "--business-address"):
        addresses = {"--payment-address": CHECKSUMMED, "--business-address": CHECKSUMMED,
                     option: wrong}
        result = CliRunner().invoke(main, ["enterprise", "create", "--name", f"Acme {option}",
                                           "--database-url", database_url,
                                           *[x for pair in addresses.items() for x in pair]])
        assert result.exit_code == 2, (option, result.output)
        assert option in result.output and "checksum" in result.output, result.output
        assert "Traceback" not in result.output
    # one case throughout carries no checksum: accepted, and shown checksummed
    result = CliRunner().invoke(main, [
        "enterprise", "create", "--name", "Acme", "--database-url", database_url,
        "--payment-address", CHECKSUMMED.lower(),
        "--business-address", "0x" + CHECKSUMMED[2:].upper()])
    assert result.exit_code == 0, result.output
    assert f"payment address  {CHECKSUMMED}" in result.output
    assert f"business address {CHECKSUMMED}" in result.output
