"""`dvp-gateway relayer run` as an operator runs it: a separate process configured only by
the DVP_* lines `dvp-gateway devnet` prints, against two anvil nodes, settling a trade the
parties drive on chain with their own keys. The poll interval is a minute: every step after the
first is woken by a new block announced over WebSocket."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from gateway.chain.anvil import devnet_env
from gateway.chain.devnet import RELAYER
from tests.e2e.test_run_command import _free_port
from tests.integration.harness import AMOUNT, World, make_gateway

POLL_INTERVAL = 60.0  # longer than the whole test may take: only new heads wake the relayer
OPS_TOKEN = "relayer-process-operator-token-0123"


def _wait_for(predicate, timeout: float = 40.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_relayer_process_settles_a_trade_on_anvil_from_the_printed_config(
        anvil_devnet, database_url, tmp_path) -> None:
    net = anvil_devnet
    lines = devnet_env(net, net.account(RELAYER).key, None)
    port = _free_port()
    env = {**os.environ, **dict(line.split("=", 1) for line in lines),
           "DVP_DATABASE_URL": database_url, "DVP_POLL_INTERVAL": str(POLL_INTERVAL),
           "DVP_REACTION_BUDGET": "30", "DVP_DRIFT_ALLOWANCE": "0",
           "DVP_METRICS_PORT": str(port), "DVP_OPS_TOKEN": OPS_TOKEN}
    assert env["DVP_PAYMENT_WS_URL"].startswith("ws://")
    # The parties' side (and the trade's terms, agreed through the dispatcher as the API
    # would) shares the database; this gateway object never steps its relayer.
    world = World(net, make_gateway(net, database_url))
    log_path = tmp_path / "relayer.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "relayer", "run",
                                 "--json-logs"], env=env, stderr=log_file,
                                stdout=subprocess.DEVNULL)
    try:
        before = {a: world.token_balance(a) for a in (world.buyer.address,
                                                       world.seller.address)}
        _wait_for(lambda: log_path.read_text().count('"head_watch_connected"') == 2)
        trade = world.agree()
        world.lock_payment(trade)
        world.lock_delivery(trade)
        _wait_for(lambda: world.phase(trade) == "delivery_locked")
        world.take_delivery(trade)
        _wait_for(lambda: world.phase(trade) == "settled")
        assert proc.poll() is None, log_path.read_text()[-2000:]
        # The relayer's own metrics, from its process (the API serves the stored ones too).
        url = f"http://127.0.0.1:{port}/metrics"
        assert httpx.get(url, timeout=10).status_code == 401  # DVP_OPS_TOKEN guards it
        metrics = httpx.get(url, headers={"Authorization": f"Bearer {OPS_TOKEN}"},
                            timeout=10).text
        sent = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
                if line.startswith("dvp_transactions_sent_total{")}
        assert sent['dvp_transactions_sent_total{chain="payment"}'] >= 1, metrics
        assert 'dvp_trades{phase="settled"} 1.0' in metrics
        assert 'dvp_relayer_lag_blocks{chain="business"}' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0, log_path.read_text()[-2000:]
    assert world.token_balance(world.buyer.address) == before[world.buyer.address] - AMOUNT
    assert world.token_balance(world.seller.address) == before[world.seller.address] + AMOUNT
    assert world.token_balance(net.payment_htlc.address) == 0
    assert world.title_owner(trade) == world.buyer.address
    assert '"relayer_stopped"' in log_path.read_text()
