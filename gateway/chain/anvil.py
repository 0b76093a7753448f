"""anvil (Foundry's local node) as a real JSON-RPC chain: started, controlled and stopped here.

Rules:
- The binary is the pinned one the project installs (`tools/anvil`, `make` stamp) unless
  `DVP_ANVIL_BIN` names another. It listens on 127.0.0.1 on a port the OS picks (`--port 0`,
  read back from its "Listening on" line), so parallel test workers never collide.
- Every node gets its own temporary directory as `HOME` and `--cache-path`: anvil 1.7.1 writes
  per-block state under `$HOME/.foundry/anvil/tmp` (gigabytes under load). The directory is
  removed when the node stops. `--prune-history` is not used: it makes `anvil_reorg` fail.
- Only the process started here is ever signalled, by its pid; stopping waits for it to exit.
  On Linux the node also gets a parent-death signal, so a SIGKILLed owner (the thread that
  started it, in fact: start nodes from a long-lived thread) leaves no node running; its
  directory is swept by the next node started on the machine.
- A node may be restarted on the same port with its state kept (`--state` file, dumped on a
  clean stop and every `state_interval` seconds), which is how a crash-and-restart is tested.
- The development accounts are eth-tester's default keys (private keys 1..10), funded with
  `anvil_setBalance`, so both backends have the same addresses and roles.
"""

from __future__ import annotations

import collections
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import HTTPProvider, Web3

from gateway.chain.client import ChainClient
from gateway.chain.transport import NodeProvider

REPO_ROOT = Path(__file__).resolve().parents[2]
ANVIL_VERSION = "1.7.1"
DEV_KEYS = tuple((i).to_bytes(32, "big") for i in range(1, 11))
DEV_BALANCE = 10**6 * 10**18
START_TIMEOUT = 20.0


WORKDIR_PREFIX = "dvp-anvil-"
OWNER_FILE = "owner.pid"


class AnvilError(RuntimeError):
    pass


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_orphaned_workdirs() -> None:
    """Remove node directories whose owning process is gone (it was killed before it could
    clean up). Directories of live processes, ours or others', are left alone."""
    for path in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
        try:
            owner = int((path / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not _pid_alive(owner):
            shutil.rmtree(path, ignore_errors=True)


def anvil_binary() -> Path:
    """The pinned anvil binary (see tools/anvil), or `DVP_ANVIL_BIN`."""
    override = os.environ.get("DVP_ANVIL_BIN")
    if override:
        return Path(override)
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower())
    system = {"linux": "linux", "darwin": "darwin"}.get(platform.system().lower(), "win32")
    path = (REPO_ROOT / "tools" / "anvil" / "node_modules" / "@foundry-rs"
            / f"anvil-{system}-{arch}" / "bin" / "anvil")
    if not path.is_file():
        raise AnvilError(f"anvil is not installed at {path}: run `make install` (tools/anvil)")
    return path


def anvil_available() -> bool:
    try:
        return anvil_binary().is_file()
    except AnvilError:
        return False


class AnvilNode:
    """One anvil process. `start()` blocks until its JSON-RPC answers."""

    def __init__(self, chain_id: int, *, block_time: float | None = None,
                 keep_state: bool = False, state_interval: int | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.chain_id = chain_id
        self.block_time = block_time
        self.keep_state = keep_state
        self.state_interval = state_interval
        self.extra_args = extra_args
        self.port = 0
        _sweep_orphaned_workdirs()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{chain_id}-"))
        (self.workdir / OWNER_FILE).write_text(str(os.getpid()))
        self.process: subprocess.Popen[str] | None = None
        self.output: collections.deque[str] = collections.deque(maxlen=200)
        self._listening = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """The same port speaks WebSocket (subscriptions: `gateway.chain.heads`)."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def state_path(self) -> Path:
        return self.workdir / "state.json"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _args(self) -> list[str]:
        args = [str(anvil_binary()), "--host", "127.0.0.1", "--port", str(self.port),
                "--chain-id", str(self.chain_id), "--accounts", "0",
                "--cache-path", str(self.workdir / "cache")]
        if self.block_time is not None:
            args += ["--block-time", str(self.block_time)]
        if self.keep_state:
            args += ["--state", str(self.state_path)]
            if self.state_interval is not None:
                args += ["--state-interval", str(self.state_interval)]
        return args + list(self.extra_args)

    def start(self) -> AnvilNode:
        if self.running():
            raise AnvilError(f"anvil (chain {self.chain_id}) is already running")
        self._listening.clear()
        env = {**os.environ, "HOME": str(self.workdir), "NO_COLOR": "1"}
        # Its own session (a Ctrl-C to the terminal reaches only us, and we stop it), and it
        # dies with us even if we are SIGKILLed (Linux parent-death signal).
        self.process = subprocess.Popen(self._args(), env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        text=True, bufsize=1, start_new_session=True,
                                        preexec_fn=_die_with_parent)
        threading.Thread(target=self._read_output, args=(self.process,), daemon=True,
                         name=f"anvil-{self.chain_id}").start()
        if not self._listening.wait(START_TIMEOUT) or not self.running():
            tail = "\n".join(self.output)
            self.stop(remove=False)
            raise AnvilError(f"anvil (chain {self.chain_id}) did not start:\n{tail}")
        self._wait_rpc()
        return self

    def _read_output(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        try:
            for line in process.stdout:
                line = line.rstrip()
                self.output.append(line)
                if line.startswith("Listening on "):
                    self.port = int(line.rsplit(":", 1)[1])
                    self._listening.set()
        except (ValueError, OSError):
            pass  # the pipe was closed by stop() while a line was being read
        self._listening.set()  # exited: let start() see it

    def _wait_rpc(self) -> None:
        w3 = Web3(HTTPProvider(self.url, request_kwargs={"timeout": 2}))
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if w3.eth.chain_id == self.chain_id:
                    return
            except Exception:  # noqa: BLE001 - not accepting connections yet
                pass
            if time.monotonic() > deadline or not self.running():
                raise AnvilError(f"anvil (chain {self.chain_id}) at {self.url} never answered")
            time.sleep(0.02)

    def stop(self, *, remove: bool = True, kill: bool = False, timeout: float = 10) -> None:
        """Stop the process started here (SIGTERM, which dumps `--state`; SIGKILL with
        `kill=True` or when it does not exit in time). `remove` deletes its directory."""
        process = self.process
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout)
        if process is not None and process.stdout is not None:
            process.stdout.close()
        if remove:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def restart(self, *, kill: bool = False) -> None:
        """Stop and start again on the same port, keeping the directory (and `--state`)."""
        self.stop(remove=False, kill=kill)
        self.start()

    def __enter__(self) -> AnvilNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AnvilChain:
    """An anvil node as a development chain: a client plus control of time, mining, reorgs
    and the node's life. The same surface as `devnet.InProcessChain`."""

    def __init__(self, name: str, chain_id: int, *, node: AnvilNode | None = None,
                 timeout: float = 30, fund: bool = True) -> None:
        self.name = name
        self.chain_id = chain_id
        self.node = node or AnvilNode(chain_id)
        if not self.node.running():
            self.node.start()
        w3 = Web3(NodeProvider(self.node.url, timeout=timeout))
        self.client = ChainClient(w3, chain_id, name)
        self.accounts: list[LocalAccount] = [Account.from_key(k) for k in DEV_KEYS]
        self._next_timestamp: int | None = None
        if fund:
            for account in self.accounts:
                self.rpc("anvil_setBalance", [account.address, hex(DEV_BALANCE)])

    @property
    def w3(self) -> Web3:
        return self.client.w3

    def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        response = self.w3.provider.make_request(method, params or [])  # type: ignore[arg-type]
        if "error" in response:
            raise AnvilError(f"{method} on {self.name}: {response['error']}")
        return response.get("result")

    # --- time ------------------------------------------------------------------------------

    def latest_block_timestamp(self) -> int:
        return self.w3.eth.get_block("latest")["timestamp"]

    def next_block_timestamp(self) -> int:
        """The timestamp the next block will have, if it is mined now (anvil follows the wall
        clock, plus any offset, and never goes back)."""
        if self._next_timestamp is not None and self._next_timestamp > \
                self.latest_block_timestamp():
            return self._next_timestamp
        return max(self.latest_block_timestamp() + 1,
                   self.w3.eth.get_block("pending")["timestamp"])

    def set_next_block_timestamp(self, timestamp: int) -> None:
        latest = self.latest_block_timestamp()
        if timestamp <= latest:
            raise ValueError(f"the latest {self.name} block is already at {latest}: chain "
                             f"time cannot go back to {timestamp}")
        self.rpc("evm_setNextBlockTimestamp", [timestamp])
        self._next_timestamp = timestamp

    def increase_time(self, seconds: int) -> None:
        self.rpc("evm_increaseTime", [seconds])

    def mine(self, blocks: int = 1) -> None:
        for _ in range(blocks):
            self.rpc("evm_mine")

    # --- mining, mempool, history ----------------------------------------------------------

    def set_automine(self, enabled: bool) -> None:
        self.rpc("evm_setAutomine", [enabled])

    def set_interval_mining(self, seconds: int) -> None:
        self.rpc("evm_setIntervalMining", [seconds])

    def pending_transactions(self) -> list[bytes]:
        content = self.rpc("txpool_content")
        return [bytes.fromhex(tx["hash"][2:]) for group in ("pending", "queued")
                for by_nonce in content.get(group, {}).values() for tx in by_nonce.values()]

    def drop_transaction(self, tx_hash: bytes) -> None:
        self.rpc("anvil_dropTransaction", ["0x" + tx_hash.hex()])

    def snapshot(self) -> str:
        return self.rpc("evm_snapshot")

    def revert(self, snapshot_id: str) -> None:
        if not self.rpc("evm_revert", [snapshot_id]):
            raise AnvilError(f"evm_revert({snapshot_id}) on {self.name} failed")
        self._next_timestamp = None
        self.forget_nonces()

    def reorg(self, depth: int, transactions: list[tuple[bytes, int]] = ()) -> None:
        """Replace the last `depth` blocks by as many new ones holding `transactions`
        (raw signed transaction, index of the new block)."""
        self.rpc("anvil_reorg", [depth, [["0x" + raw.hex(), block] for raw, block
                                         in transactions]])

    def forget_nonces(self) -> None:
        """After a revert or reorg the client's cached nonces are stale."""
        self.client._nonces.clear()  # noqa: SLF001

    def close(self) -> None:
        self.node.stop()


def start_anvil_devnet(payment_chain_id: int, business_chain_id: int, *,
                       block_time: float | None = None, keep_state: bool = False,
                       initial_balance: int | None = None):  # noqa: ANN201 - devnet.Devnet
    """Two anvil nodes (distinct chain ids, checked before anything starts) with every
    contract deployed by the same routine as the in-process devnet."""
    from gateway.chain.devnet import INITIAL_BALANCE, check_distinct, deploy_devnet

    check_distinct(payment_chain_id, business_chain_id)
    payment = business = None
    try:
        # Deployed while automining (a block per transaction, no waiting for the interval),
        # then switched to a block every `block_time` seconds.
        payment = AnvilChain("payment", payment_chain_id,
                             node=AnvilNode(payment_chain_id, keep_state=keep_state))
        business = AnvilChain("business", business_chain_id,
                              node=AnvilNode(business_chain_id, keep_state=keep_state))
        devnet = deploy_devnet(payment, business, initial_balance or INITIAL_BALANCE)
        if block_time:
            for chain in (payment, business):
                chain.set_interval_mining(max(1, round(block_time)))
        return devnet
    except BaseException:
        for chain in (payment, business):
            if chain is not None:
                chain.close()
        raise


@contextmanager
def running_anvil_devnet(payment_chain_id: int, business_chain_id: int,
                         **kwargs: Any) -> Iterator[Any]:
    """`start_anvil_devnet`, with both nodes stopped (and their directories removed) on exit."""
    devnet = start_anvil_devnet(payment_chain_id, business_chain_id, **kwargs)
    try:
        yield devnet
    finally:
        devnet.payment.close()
        devnet.business.close()


def devnet_env(devnet, relayer_key: bytes, block_time: float | None) -> list[str]:  # noqa: ANN001
    """The DVP_* settings `dvp-gateway api` and `dvp-gateway relayer run` need for `devnet`."""
    lines = [
        f"DVP_PAYMENT_RPC_URL={devnet.payment.node.url}",
        f"DVP_BUSINESS_RPC_URL={devnet.business.node.url}",
        f"DVP_PAYMENT_WS_URL={devnet.payment.node.ws_url}",
        f"DVP_BUSINESS_WS_URL={devnet.business.node.ws_url}",
        f"DVP_PAYMENT_CHAIN_ID={devnet.info.payment.chain_id}",
        f"DVP_BUSINESS_CHAIN_ID={devnet.info.business.chain_id}",
        f"DVP_PAYMENT_HTLC={devnet.info.payment.htlc}",
        f"DVP_DELIVERY_HTLC={devnet.info.business.htlc}",
        f"DVP_RELAYER_KEY=0x{relayer_key.hex()}",
    ]
    # A development node reorganises only when asked to: finality is the confirmation depth,
    # and a deeper fork halts (production keeps DVP_MAX_REORG_DEPTH's default, 64).
    if block_time:
        seconds = max(1, round(block_time))
        lines += [f"DVP_PAYMENT_BLOCK_TIME={seconds}", f"DVP_BUSINESS_BLOCK_TIME={seconds}",
                  "DVP_MAX_REORG_DEPTH=2"]
    else:  # automine: a block per transaction, so no block ever confirms another
        lines += ["DVP_PAYMENT_CONFIRMATIONS=0", "DVP_BUSINESS_CONFIRMATIONS=0",
                  "DVP_PAYMENT_BLOCK_TIME=1", "DVP_BUSINESS_BLOCK_TIME=1",
                  "DVP_MAX_REORG_DEPTH=0"]
    return lines
