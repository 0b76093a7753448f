"""Production mode as the README walks an operator through it, every part a separate process
configured only by DVP_* variables: `dvp-gateway devnet --demo` (two anvil nodes, contracts,
a funded managed buyer and seller), `dvp-gateway db upgrade`, `dvp-gateway relayer run` and
`dvp-gateway api` on the printed config, and an enterprise client (`dvp-gateway demo --api
URL`) settling a trade over HTTP. Balances and the title are read back from the nodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from web3 import HTTPProvider, Web3

from gateway.chain.client import ChainClient
from gateway.contracts import load_artifact
from gateway.keys import Cipher
from tests.e2e.test_run_command import _free_port, _wait_healthy
from tests.helpers import balance_of, terminate
from tests.postgres.waiting import wait_for

CLI = [sys.executable, "-m", "gateway.cli"]


def _stop_all(processes: list[tuple[subprocess.Popen | None, Path]]) -> None:
    """SIGTERM each (every one, whatever the others do), then check each stopped cleanly."""
    codes = [(terminate(p), log) for p, log in processes if p is not None]
    for code, log in codes:
        assert code == 0, log.read_text()[-3000:]


def test_devnet_relayer_and_api_processes_settle_a_managed_trade(database_url,
                                                                 tmp_path) -> None:
    env = {**os.environ, "DVP_DATABASE_URL": database_url,
           "DVP_SECRETS_KEY": Cipher.generate_key(), "PYTHONUNBUFFERED": "1"}
    env_file, workdir = tmp_path / "devnet.env", tmp_path / "client"
    devnet_log, relayer_log, api_log = (tmp_path / f"{n}.log" for n in ("devnet", "relayer",
                                                                        "api"))
    with devnet_log.open("w") as out:
        devnet = subprocess.Popen([*CLI, "devnet", "--block-time", "0", "--env-file",
                                   str(env_file), "--demo", str(workdir)], env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
    relayer = api = None
    try:
        wait_for(lambda: env_file.exists() or devnet.poll() is not None, timeout=120,
                 what="devnet up")
        assert devnet.poll() is None, devnet_log.read_text()
        env.update(line.split("=", 1) for line in env_file.read_text().splitlines())
        env.update({"DVP_POLL_INTERVAL": "5", "DVP_REACTION_BUDGET": "30",
                    "DVP_DRIFT_ALLOWANCE": "0"})  # new blocks wake the relayer (WebSocket)
        assert env["DVP_DATABASE_URL"] == database_url
        upgrade = subprocess.run([*CLI, "db", "upgrade"], env=env, capture_output=True,
                                 text=True, timeout=120)
        assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
        demo = json.loads((workdir / "demo.json").read_text())
        assert (workdir / "demo.json").stat().st_mode & 0o077 == 0
        buyer, seller = demo["enterprises"]["buyer"], demo["enterprises"]["seller"]
        payment = ChainClient(Web3(HTTPProvider(env["DVP_PAYMENT_RPC_URL"])),
                              int(env["DVP_PAYMENT_CHAIN_ID"]))
        business = ChainClient(Web3(HTTPProvider(env["DVP_BUSINESS_RPC_URL"])),
                               int(env["DVP_BUSINESS_CHAIN_ID"]))
        token = payment.contract(demo["payment_token"], load_artifact("PaymentToken"))
        titles = business.contract(demo["titles"], load_artifact("TitleDocument"))
        before = {who["id"]: balance_of(token, who["payment_address"])
                  for who in (buyer, seller)}

        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        with relayer_log.open("w") as out:
            relayer = subprocess.Popen([*CLI, "relayer", "run", "--json-logs"], env=env,
                                       stdout=out, stderr=subprocess.STDOUT)
        with api_log.open("w") as out:
            api = subprocess.Popen([*CLI, "api", "--port", str(port)], env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
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
        for leg, chain in (("payment", payment), ("delivery", business)):
            exit_tx = trade["legs"][leg]["exit_tx_hash"]
            assert chain.receipt(bytes.fromhex(exit_tx.removeprefix("0x"))).succeeded
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        assert 'dvp_trades{phase="settled"} 1.0' in metrics
        assert balance_of(token, buyer["payment_address"]) == before[buyer["id"]] - amount
        assert balance_of(token, seller["payment_address"]) == before[seller["id"]] + amount
        htlc = payment.contract(env["DVP_PAYMENT_HTLC"], load_artifact("PaymentHTLC"))
        assert balance_of(token, htlc.address) == 0
        token_id = int(trade["delivery"]["token_id"])
        assert titles.functions.ownerOf(token_id).call() == buyer["business_address"]
    finally:
        _stop_all([(api, api_log), (relayer, relayer_log), (devnet, devnet_log)])
    assert '"relayer_stopped"' in relayer_log.read_text()
    assert "Traceback" not in api_log.read_text()
