"""`dvp-gateway demo` as an enterprise runs it: two trades through the HTTP API against a
running system (relayer and block producer in threads), one settled and one refunded, with
balances checked on both chains."""

from __future__ import annotations

import json
import re
import shutil
import stat
import threading
from pathlib import Path

import pytest
import structlog
import uvicorn
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select

from gateway import demo as demo_module
from gateway.cli import main
from gateway.config import Settings
from gateway.db.models import TradeRow
from gateway.demo import Api, money, run_demo
from gateway.domain.policy import TimingPolicy
from gateway.runner import build_system
from tests.helpers import free_port

# Chain time runs ahead of the wall clock (a block every few milliseconds), so the refunded
# trade's deadlines pass in seconds; the margin the demo asks for is this policy's.
FAST = TimingPolicy(payment_confirmations=0, business_confirmations=0, payment_block_time=1,
                    business_block_time=1, reaction_budget=10, drift_allowance=0)


def test_demo_settles_one_trade_and_refunds_the_other(tmp_path, database_url) -> None:
    system = build_system(Settings(_env_file=None), tmp_path / "run", policy=FAST,
                          database_url=database_url)
    try:
        demo = system.demo
        buyer, seller = demo["enterprises"]["buyer"], demo["enterprises"]["seller"]
        token, titles = system.devnet.payment_token, system.devnet.titles
        before = {who["payment_address"]: token.functions.balanceOf(who["payment_address"])
                  .call() for who in (buyer, seller)}
        system.start_relayer(0.02)
        _start_lockstep_blocks(system)
        lines: list[str] = []
        with TestClient(system.app) as client:
            api = Api(client, buyer["api_key"], seller["api_key"])
            settled, refunded = run_demo(api, demo, lines.append, timeout=90)
    finally:
        system.close()
    assert (settled["phase"], refunded["phase"]) == ("settled", "payment_refunded")
    assert token.functions.balanceOf(buyer["payment_address"]).call() == \
        before[buyer["payment_address"]] - 123456  # paid once, the other payment came back
    assert token.functions.balanceOf(seller["payment_address"]).call() == \
        before[seller["payment_address"]] + 123456
    assert titles.functions.ownerOf(int(settled["delivery"]["token_id"])).call() == \
        buyer["business_address"]
    assert titles.functions.ownerOf(int(refunded["delivery"]["token_id"])).call() == \
        seller["business_address"]
    text = "\n".join(lines)
    assert "delivered -> settled" in text and "delivery_refunded -> payment_refunded" in text
    assert "business chain 71002 block" in text and "payment chain 71001 block" in text
    assert f"for {money(123456)}" in text


def _start_lockstep_blocks(system) -> threading.Thread:  # noqa: ANN001
    """Mine an empty block on both chains whenever the relayer has caught up with both heads
    and has no effect left to do: chain time then never outruns the gateway, however loaded
    the machine is (a wall-clock producer would let a deadline pass before the relayer acts,
    which is a slow machine, not a bug). A stuck effect stops time for at most 2 s."""
    from gateway.db.models import CursorRow
    from gateway.db.repository import Repository

    chains = (system.devnet.payment, system.devnet.business)

    def idle() -> bool:
        with system.gateway.session_factory() as session:
            if Repository(session).outbox_depth():
                return False
            for chain in chains:
                cursor = session.get(CursorRow, chain.chain_id)
                if cursor is None or cursor.block_number < chain.w3.eth.block_number:
                    return False
        return True

    def produce() -> None:
        waited = 0.0
        while not system.stop.wait(0.005):
            waited += 0.005
            if idle() or waited > 2:
                waited = 0.0
                for chain in chains:
                    chain.w3.provider.make_request("evm_mine", [1])

    thread = threading.Thread(target=produce, name="lockstep-blocks", daemon=True)
    thread.start()
    return thread


def test_money_is_exact_in_base_units() -> None:
    assert money(123456) == "1,234.56"
    assert money(5) == "0.05"
    assert money(10**24 + 1) == "10,000,000,000,000,000,000,000.01"  # no float rounding
    assert money(-250) == "-2.50"


@pytest.fixture
def restore_logging():  # noqa: ANN201
    """`dvp-gateway demo` configures structlog for the whole process: put it back."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.mark.usefixtures("restore_logging")
def test_demo_drives_the_gateway_that_run_started(tmp_path, database_url, monkeypatch) -> None:
    """`make demo` (`dvp-gateway demo`, no option) drives the gateway `make run` started: the
    one at the default URL, with the keys its workdir's demo.json holds. It starts none of
    its own, and prints each trade's id in full, as the API, logs and webhooks show it."""
    workdir = tmp_path / ".dvp"
    system = build_system(Settings(_env_file=None), workdir, policy=FAST,
                          database_url=database_url)
    server = uvicorn.Server(uvicorn.Config(system.app, host="127.0.0.1", port=free_port(),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    try:
        system.start_relayer(0.02)
        _start_lockstep_blocks(system)
        thread.start()
        while not server.started and thread.is_alive():
            thread.join(0.05)
        assert server.started
        url = f"http://127.0.0.1:{server.config.port}"
        monkeypatch.setattr(demo_module, "DEFAULT_API", url)

        # Keys the running gateway does not know (a demo.json left by another run): said so.
        stale = tmp_path / "stale"
        stale.mkdir()
        other = json.loads((workdir / "demo.json").read_text())
        other["enterprises"]["buyer"]["api_key"] = "dvp_" + "0" * 40
        (stale / "demo.json").write_text(json.dumps(other))
        refused = CliRunner().invoke(main, ["demo", "--workdir", str(stale), "--no-refund"])
        assert refused.exit_code != 0
        assert "does not know the demo keys" in refused.output

        result = CliRunner().invoke(main, ["demo", "--workdir", str(workdir), "--no-refund"])
        with system.gateway.session_factory() as session:
            trades = {"0x" + row.id: row.phase for row in session.scalars(select(TradeRow))}
    finally:
        server.should_exit = True
        thread.join(10)
        system.close()
    assert result.exit_code == 0, result.output
    assert f"driving the gateway running at {url}" in result.output
    assert "started a gateway" not in result.output
    assert list(trades.values()) == ["settled"]  # the trade is the running gateway's
    (trade_id,) = trades
    assert f"seller proposed trade {trade_id}" in result.output
    assert result.output.rstrip().endswith(f"trade {trade_id}: settled")
    # Every trade id printed is the whole id, in the one form (no shortened prefix).
    shown = set(re.findall(r"0x[0-9a-fA-F]+", result.output))
    assert not {s for s in shown if trade_id.startswith(s.lower()) and s != trade_id}


@pytest.mark.usefixtures("restore_logging")
def test_demo_says_so_when_no_gateway_is_running(tmp_path, monkeypatch) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setattr(demo_module, "DEFAULT_API", url)
    result = CliRunner().invoke(main, ["demo", "--workdir", str(tmp_path / ".dvp"),
                                       "--no-refund"])
    assert result.exit_code != 0
    assert f"no gateway is running at {url}" in result.output
    assert "make run" in result.output and "--own-gateway" in result.output
    assert "started a gateway" not in result.output


@pytest.mark.usefixtures("restore_logging")
def test_demo_with_its_own_gateway_announces_it_and_keeps_its_keys_private(monkeypatch) -> None:
    monkeypatch.setattr(demo_module, "DEFAULT_API", "http://127.0.0.1:9")  # never asked
    result = CliRunner().invoke(main, ["demo", "--own-gateway", "--no-refund"])
    assert result.exit_code == 0, result.output
    found = re.search(r"started a gateway of its own for this demo at (\S+) \(workdir (\S+),",
                      result.output)
    assert found, result.output
    keys = Path(found.group(2)) / "demo.json"
    try:
        assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    finally:
        shutil.rmtree(keys.parent, ignore_errors=True)
    assert re.search(r"trade 0x[0-9a-f]{64}: settled$", result.output.rstrip())
