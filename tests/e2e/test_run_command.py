"""The two commands an operator types: `dvp-gateway run` as a real process (uvicorn on
loopback), then `dvp-gateway demo --api URL` against it, finding the demo keys where `run`
left them. The trade settles over HTTP, metrics count it, and `run` stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.helpers import free_port

CLI = [sys.executable, "-m", "gateway.cli"]


_free_port = free_port  # (other test modules and the API bench import it from here)


def _wait_healthy(base: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{base} did not answer /healthz in {timeout} s")


def test_run_then_demo_against_it(tmp_path: Path) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    workdir = tmp_path / ".dvp"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DVP_DATABASE_URL", None)
    server = subprocess.Popen([*CLI, "run", "--port", str(port), "--workdir", str(workdir),
                               "--poll-interval", "0.1"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_healthy(base, server)
        demo = subprocess.run([*CLI, "demo", "--api", base, "--workdir", str(workdir),
                               "--no-refund"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=240)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "delivered -> settled" in demo.stdout and demo.stdout.rstrip().endswith(
            "settled"), demo.stdout
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        assert 'dvp_trades{phase="settled"} 1.0' in metrics
        assert httpx.get(f"{base}/readyz", timeout=10).json()["ready"] is True
        assert (workdir / "demo.json").stat().st_mode & 0o077 == 0  # keys readable by owner only
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            output, _ = server.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            output, _ = server.communicate()
    assert server.returncode == 0, output
    assert f"API   {base}/v1" in output and "demo buyer" in output
    assert "Traceback" not in output
