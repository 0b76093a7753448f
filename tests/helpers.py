"""Shared test helpers: test-double artifacts, token funding, revert assertions, processes."""

from __future__ import annotations

import random
import signal
import socket
import subprocess
from enum import IntEnum
from pathlib import Path
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address
from web3.contract import Contract

from gateway.chain.client import ChainClient, Receipt, RevertError
from gateway.chain.devnet import InProcessChain
from gateway.contracts import Artifact, load_artifact

TEST_ARTIFACTS = Path(__file__).parent / "contracts" / "artifacts"
MAX_UINT256 = 2**256 - 1


def double_artifact(name: str) -> Artifact:
    """A compiled test double from solidity/test (NoReturnToken, FeeOnTransferToken, ...)."""
    return load_artifact(name, TEST_ARTIFACTS)


def balance_of(token: Contract, address: str) -> int:
    return token.functions.balanceOf(address).call()


def approve(client: ChainClient, owner: LocalAccount, token: Contract, spender: str,
            amount: int = MAX_UINT256) -> None:
    receipt = client.transact(owner, to=token.address, gas=100_000,
                              data=token.encode_abi("approve", [spender, amount]))
    assert receipt.succeeded


def expect_revert(client: ChainClient, sender: LocalAccount, contract: Contract, fn: str,
                  args: list[Any], error: str, gas: int = 500_000) -> RevertError:
    """Assert that `fn(*args)` from `sender` reverts with custom error `error`, both when
    simulated against the pending block and when actually mined (status 0). Returns the decoded
    error so the caller can check its arguments."""
    with pytest.raises(RevertError) as info:
        client.call(contract, fn, *args, sender=sender.address, block="pending")
    assert info.value.name == error, f"expected {error}, got {info.value}"
    receipt: Receipt = client.transact(sender, to=contract.address, gas=gas,
                                       data=contract.encode_abi(fn, args))
    assert receipt.status == 0, f"{fn} was mined successfully, expected revert {error}"
    return info.value


class Status(IntEnum):
    NONE = 0
    OPEN = 1
    CLAIMED = 2
    REFUNDED = 3


def at(chain: InProcessChain, timestamp: int) -> None:
    """Make the next transaction on `chain` be mined at exactly `timestamp`."""
    chain.set_next_block_timestamp(timestamp)
    assert chain.next_block_timestamp() == timestamp


def mined_at(chain: InProcessChain, receipt: Receipt) -> int:
    return chain.w3.eth.get_block(receipt.block_number)["timestamp"]


def with_errors(client: ChainClient, contract: Contract, *others: Contract) -> Contract:
    """`contract` at its address, with the custom errors of `others` added to its ABI, so
    that errors raised by a callee (a token or registry) are decoded by name too."""
    errors = [item for other in others for item in other.abi if item["type"] == "error"]
    return client.w3.eth.contract(address=contract.address, abi=contract.abi + errors)


def values(err: RevertError) -> tuple[object, ...]:
    """A decoded error's arguments, addresses checksummed (eth-abi decodes them lowercase)."""
    return tuple(to_checksum_address(v) if isinstance(v, str) else v for v in err.values)


def terminate(process: subprocess.Popen, timeout: float = 30) -> int:
    """SIGTERM, as an operator's service manager sends it; SIGKILL if it is not gone within
    `timeout`. Returns the exit code (0 is a clean stop)."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def listening_sockets(port: int) -> int:
    """Sockets listening on a local IPv4 `port`: with SO_REUSEPORT, one per API worker that
    serves (`dvp-gateway api --workers N`), so a client can wait for all N."""
    rows = (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
    return sum(int(f[1].split(":")[1], 16) == port and f[3] == "0A" for f in rows)  # LISTEN


def free_port() -> int:
    """A loopback port nobody listens on, for a server a test starts: drawn below the
    kernel's ephemeral range, so no outgoing connection (to PostgreSQL, a node, made by a
    test running alongside) takes it between this check and the server's bind, as one
    bound to port 0 and closed could be taken (a server then failed with "address already
    in use")."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(100):
        port = random.randrange(10_000, low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port between 10000 and {low}")

