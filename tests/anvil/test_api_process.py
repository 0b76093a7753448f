"""Production mode as an operator runs it, every part a separate process configured only by
DVP_* variables: `dvp-gateway db upgrade`, then `dvp-gateway relayer run` and `dvp-gateway api`
against two anvil nodes (the config lines `dvp-gateway devnet` prints), and an enterprise
client (`dvp-gateway demo --api URL`) settling a trade over HTTP between two managed
enterprises. Balances are read back from the nodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from gateway.api.secrets import Cipher
from gateway.chain.anvil import devnet_env
from gateway.chain.devnet import RELAYER
from gateway.db.session import make_engine, make_session_factory
from gateway.runner import create_demo_enterprises
from tests.e2e.test_run_command import _free_port, _wait_healthy
from tests.helpers import balance_of, terminate

CLI = [sys.executable, "-m", "gateway.cli"]


def _stop(process: subprocess.Popen, log: Path) -> None:
    assert terminate(process) == 0, log.read_text()[-3000:]


def test_api_and_relayer_processes_settle_a_managed_trade_on_anvil(
        anvil_devnet, database_url, tmp_path) -> None:
    net = anvil_devnet
    key = Cipher.generate_key()
    env = {**os.environ, **dict(line.split("=", 1) for line in devnet_env(
        net, net.account(RELAYER).key, None)),
        "DVP_DATABASE_URL": database_url, "DVP_SECRETS_KEY": key, "DVP_POLL_INTERVAL": "0.05",
        "DVP_REACTION_BUDGET": "30", "DVP_DRIFT_ALLOWANCE": "0", "PYTHONUNBUFFERED": "1"}
    upgrade = subprocess.run([*CLI, "db", "upgrade"], env=env, capture_output=True, text=True,
                             timeout=120)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr

    engine = make_engine(database_url)
    try:  # what an operator does with `enterprise create --managed` and a faucet
        demo = create_demo_enterprises(net, make_session_factory(engine), Cipher(key))
    finally:
        engine.dispose()
    workdir = tmp_path / "client"
    workdir.mkdir()
    (workdir / "demo.json").write_text(json.dumps(demo))
    buyer, seller = demo["enterprises"]["buyer"], demo["enterprises"]["seller"]
    token = net.payment_token
    before = {who["id"]: balance_of(token, who["payment_address"]) for who in (buyer, seller)}

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    relayer_log, api_log = tmp_path / "relayer.log", tmp_path / "api.log"
    with relayer_log.open("w") as out:
        relayer = subprocess.Popen([*CLI, "relayer", "run", "--json-logs"], env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    with api_log.open("w") as out:
        api = subprocess.Popen([*CLI, "api", "--port", str(port)], env=env, stdout=out,
                               stderr=subprocess.STDOUT)
    try:
        _wait_healthy(base, api)
        ready = httpx.get(f"{base}/readyz", timeout=10).json()
        assert ready["ready"] is True, ready
        run = subprocess.run([*CLI, "demo", "--api", base, "--workdir", str(workdir),
                              "--no-refund"], env=env, capture_output=True, text=True,
                             timeout=240)
        assert run.returncode == 0, run.stdout + run.stderr + relayer_log.read_text()[-3000:]
        assert run.stdout.rstrip().endswith("settled"), run.stdout
        headers = {"Authorization": f"Bearer {buyer['api_key']}"}
        trades = httpx.get(f"{base}/v1/trades", headers=headers, timeout=10).json()["items"]
        assert [t["phase"] for t in trades] == ["settled"]
        trade = httpx.get(f"{base}/v1/trades/{trades[0]['id']}", headers=headers,
                          timeout=10).json()
        amount = int(trade["payment"]["amount"])
        for leg, chain in (("payment", net.payment), ("delivery", net.business)):
            exit_tx = trade["legs"][leg]["exit_tx_hash"]
            assert chain.client.receipt(bytes.fromhex(exit_tx.removeprefix("0x"))).succeeded
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        assert 'dvp_trades{phase="settled"} 1.0' in metrics
    finally:
        _stop(api, api_log)
        _stop(relayer, relayer_log)
    assert balance_of(token, buyer["payment_address"]) == before[buyer["id"]] - amount
    assert balance_of(token, seller["payment_address"]) == before[seller["id"]] + amount
    assert balance_of(token, net.payment_htlc.address) == 0
    token_id = int(trade["delivery"]["token_id"])
    assert net.titles.functions.ownerOf(token_id).call() == buyer["business_address"]
    assert '"relayer_stopped"' in relayer_log.read_text()
    assert "Traceback" not in api_log.read_text()
