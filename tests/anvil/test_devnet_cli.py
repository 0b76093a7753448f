"""`dvp-gateway devnet`: two anvil nodes, contracts deployed, a config the relayer accepts,
and nothing left behind (processes, temporary directories) after SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.contracts import load_artifact


def _wait_for(predicate, timeout: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes; anvil's parent (the devnet) reaps it.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_devnet_prints_a_config_the_relayer_accepts_and_cleans_up(tmp_path) -> None:
    env_file = tmp_path / "devnet.env"
    existing = set(Path(tempfile.gettempdir()).glob("dvp-anvil-*"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "devnet", "--block-time", "0",
         "--env-file", str(env_file)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "DVP_PAYMENT_CHAIN_ID": "72001", "DVP_BUSINESS_CHAIN_ID": "72002"})
    try:
        _wait_for(lambda: env_file.exists() or proc.poll() is not None)
        assert proc.poll() is None, "devnet exited"
        header = proc.stdout.readline()
        pids = [int(p) for p in re.findall(r"pids (\d+) \(payment\), (\d+)", header)[0]]
        comments = []
        while (line := proc.stdout.readline()).startswith("#"):
            comments.append(line)
        comments = "".join(comments)
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600  # it holds DVP_RELAYER_KEY
        values = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
        settings = Settings(_env_file=None,
                            **{k.removeprefix("DVP_").lower(): v for k, v in values.items()})
        assert (settings.payment_chain_id, settings.business_chain_id) == (72001, 72002)
        # what the development keys are, and why two contracts show one address
        assert "well-known private keys 0x00...01 to 0x00...0a" in comments
        assert "never use them" in comments and "on a real chain" in comments
        assert settings.payment_token and settings.title_registry
        if settings.payment_token == settings.title_registry:
            assert f"share the address {settings.payment_token}: they are different " \
                   "contracts on different chains" in comments

        from gateway.cli import _rpc_clients

        clients = _rpc_clients(settings, relayer=True)  # chain ids, code and assets check out
        assert clients["payment"].contract(settings.payment_htlc, load_artifact(
            "PaymentHTLC")).functions.token().call() == settings.payment_token
        assert clients["business"].contract(settings.delivery_htlc, load_artifact(
            "DeliveryHTLC")).functions.titles().call() == settings.title_registry
        wrong = settings.model_copy(update={"title_registry": settings.payment_htlc})
        with pytest.raises(SystemExit):  # an HTLC bound to another asset: refused
            _rpc_clients(wrong, relayer=True)
        assert clients["payment"].w3.eth.chain_id == 72001
        assert clients["business"].w3.eth.chain_id == 72002
        workdirs = set(Path(tempfile.gettempdir()).glob("dvp-anvil-7200*")) - existing
        assert len(workdirs) == 2
        assert all(_alive(pid) for pid in pids)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert not any(_alive(pid) for pid in pids)
    assert not any(d.exists() for d in workdirs)


def test_nodes_die_with_a_killed_devnet_and_their_directories_are_swept(tmp_path) -> None:
    env_file = tmp_path / "devnet.env"
    existing = set(Path(tempfile.gettempdir()).glob("dvp-anvil-*"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "devnet", "--block-time", "0",
         "--env-file", str(env_file)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "DVP_PAYMENT_CHAIN_ID": "73001", "DVP_BUSINESS_CHAIN_ID": "73002"})
    try:
        _wait_for(lambda: env_file.exists() or proc.poll() is not None)
        header = proc.stdout.readline()
        pids = [int(p) for p in re.findall(r"pids (\d+) \(payment\), (\d+)", header)[0]]
        workdirs = set(Path(tempfile.gettempdir()).glob("dvp-anvil-7300*")) - existing
        assert len(workdirs) == 2
    finally:
        proc.kill()  # SIGKILL: no clean-up code of the devnet runs
        proc.wait(30)
    _wait_for(lambda: not any(_alive(pid) for pid in pids))
    from gateway.chain.anvil import AnvilNode

    node = AnvilNode(73_003)  # any new node sweeps the directories of dead owners
    node.stop()
    assert not any(d.exists() for d in workdirs)
