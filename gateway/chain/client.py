"""Sending signed transactions and reading contracts on one chain.

Transactions are signed locally (eth-account with coincurve) and carry explicit gas limits:
web3's automatic estimation replays each transaction several times, which on py-evm costs more
than the transaction itself. Nonces are tracked per key in this process. Receipts come back as
our own frozen types (`gateway.chain.receipts`), so no HexBytes/AttributeDict leaves this
package.

Fees (EIP-1559, type-2 transactions only): `suggest_fees()` asks the node for the latest base
fee and a priority fee (or uses the configured one); `bumped()` and `toward_cap()` price a
replacement and a claim near its deadline from it (`gateway.chain.fees`). Reads of many values
go to a JSON-RPC node as batch requests (`gateway.chain.rpc`); a revert is decoded
(`gateway.chain.reverts`); `classify_send_error()` names a node's refusal
(`gateway.chain.sending`). Every name callers import from here is re-exported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import BlockNotFound, TransactionNotFound

from gateway.chain.fees import (
    DEFAULT_FEE_CAP,
    DEFAULT_MAX_FEE_PER_GAS,
    DEFAULT_PRIORITY_FEE_PER_GAS,
    MIN_BUMP_PERCENT,
    Fees,
    bumped_fees,
    fees_toward_cap,
    offered_fees,
)
from gateway.chain.receipts import (
    ChainLog,
    Log,
    Receipt,
    chain_log_from_json,
    chain_log_from_web3,
    checksum,
    hex_bytes,
    receipt_from_json,
    receipt_from_web3,
)
from gateway.chain.reverts import (
    RevertError,
    call_errors,
    decode_revert,
    error_selectors,
    revert_data,
    tester_missing_block,
)
from gateway.chain.rpc import CALL_BATCH, RPCError, batch, cache_chain_id, calls_at_block, request
from gateway.chain.sending import (
    SEND_KNOWN,
    SEND_NONCE_TOO_LOW,
    SEND_REJECTED,
    SEND_UNAVAILABLE,
    SEND_UNDERPRICED,
    SignedFields,
    classify_send_error,
    decode_signed,
    refusal,
    send_raw_batch,
)
from gateway.contracts import Artifact

__all__ = [
    "CALL_BATCH", "DEFAULT_FEE_CAP", "DEFAULT_MAX_FEE_PER_GAS", "DEFAULT_PRIORITY_FEE_PER_GAS",
    "MIN_BUMP_PERCENT", "SEND_KNOWN", "SEND_NONCE_TOO_LOW", "SEND_REJECTED", "SEND_UNAVAILABLE",
    "SEND_UNDERPRICED", "ChainClient", "ChainLog", "Fees", "Log", "RPCError", "Receipt",
    "RevertError", "SignedFields", "checksum", "classify_send_error", "decode_revert",
    "decode_signed", "error_selectors", "http_client",
]

_call_errors = call_errors  # gateway.chain.htlc imports it by this name



@dataclass(frozen=True)
class BlockHeader:
    number: int
    hash: bytes
    timestamp: int

class ChainClient:
    """One chain: a Web3 connection and the local nonce of every key that sends through it."""

    def __init__(self, w3: Web3, chain_id: int, name: str = "", *,
                 fee_cap: int = DEFAULT_FEE_CAP, priority_fee: int | None = None) -> None:
        self.w3 = w3
        self.chain_id = chain_id
        self.name = name or str(chain_id)
        self._nonces: dict[str, int] = {}
        self._view_params: dict[str, str] | None = None
        if self._json_rpc:
            cache_chain_id(w3)
        # Fixed fees of `sign`/`transact` (the development tools' path).
        self.max_fee_per_gas = DEFAULT_MAX_FEE_PER_GAS
        self.priority_fee_per_gas = DEFAULT_PRIORITY_FEE_PER_GAS
        # The relayer's path: fees from the node, capped (`suggest_fees`, `bumped`).
        self.fee_cap = fee_cap
        self.priority_fee = priority_fee

    def suggest_fees(self) -> Fees:
        """`2 x latest base fee + priority`, capped; the priority fee is the configured one or
        the node's suggestion (`eth_maxPriorityFeePerGas`)."""
        base = self.w3.eth.get_block("latest").get("baseFeePerGas", 0) or 0
        priority = self.priority_fee
        if priority is None:
            try:
                priority = int(self.w3.eth.max_priority_fee)
            except Exception:  # noqa: BLE001 - a node without the method
                priority = DEFAULT_PRIORITY_FEE_PER_GAS
        return offered_fees(base, priority, self.fee_cap)

    def bumped(self, previous: Fees, percent: int = 12) -> Fees | None:
        """Fees for a replacement of a transaction priced at `previous`: both fields at least
        `percent` (>= 10) higher and at least the current suggestion; None if the cap does not
        allow a valid replacement."""
        return bumped_fees(previous, self.suggest_fees(), self.fee_cap, percent)

    def head(self) -> tuple[int, int]:
        """The latest block's timestamp and base fee (chain time and price, per the node)."""
        if self._json_rpc:  # the header as the node sent it: web3's block formatters cost more
            block = request(self.w3, "eth_getBlockByNumber", ["latest", False])
            return int(block["timestamp"], 16), int(block.get("baseFeePerGas") or "0x0", 16)
        block = self.w3.eth.get_block("latest")
        return int(block["timestamp"]), int(block.get("baseFeePerGas", 0) or 0)

    def block_number(self) -> int:
        """The node's latest block number (`eth_blockNumber`)."""
        return int(self.w3.eth.block_number)

    def blocks(self, which: list[int | str]) -> list[BlockHeader | None]:
        """The headers of these blocks (numbers, or tags such as "latest" and "finalized"), in
        order, None for a block the node does not have: one JSON-RPC batch request on a node
        (the node answers in order, so a later one is never older than an earlier one), one
        read each on eth-tester. A node that cannot be reached raises."""
        if not which:
            return []
        if self._json_rpc:
            found = batch(self.w3, [("eth_getBlockByNumber",
                                     [hex(b) if isinstance(b, int) else b, False])
                                    for b in which], "eth_getBlockByNumber")
            return [BlockHeader(int(h["number"], 16), hex_bytes(h["hash"]),
                                int(h["timestamp"], 16)) if h else None for h in found]
        headers: list[BlockHeader | None] = []
        for b in which:
            try:
                h = self.w3.eth.get_block(b)
            except (BlockNotFound, *tester_missing_block()):
                headers.append(None)
                continue
            headers.append(BlockHeader(int(h["number"]), bytes(h["hash"]), int(h["timestamp"])))
        return headers

    def node_chain_id(self) -> int:
        """The chain id the node reports (`eth_chainId`): to check it is `chain_id`."""
        return int(self.w3.eth.chain_id)

    def pending_nonce(self, address: str) -> int:
        """`address`'s next nonce counting the node's pending transactions (the node's
        transaction count at `pending`); `next_nonce` is this process's own count."""
        return int(self.w3.eth.get_transaction_count(address, "pending"))  # type: ignore[arg-type]

    def mined_nonce(self, address: str) -> int:
        """`address`'s transactions mined up to the latest block (its transaction count at
        `latest`): every nonce below it is used."""
        return int(self.w3.eth.get_transaction_count(address, "latest"))  # type: ignore[arg-type]

    def mine(self) -> None:
        """Ask a development node (eth-tester, anvil) for one block now (`evm_mine`)."""
        self.w3.provider.make_request("evm_mine", [1])  # type: ignore[arg-type]

    def toward_cap(self, fraction: float, percent: int = 12) -> Fees:
        """Fees `fraction` (0 to 1) of the way from the current suggestion up to the cap, on
        both fields: a claim running out of time. Once less than `percent` below the cap (no
        replacement could fit in between), and at 1, the cap itself on both fields."""
        return fees_toward_cap(self.suggest_fees(), self.fee_cap, fraction, percent)

    @property
    def _json_rpc(self) -> bool:
        return getattr(self.w3.provider, "endpoint_uri", None) is not None

    def view_params(self) -> dict[str, str]:
        """The transaction fields of a read (`eth_call` of a view) with no sender of its own:
        none on a JSON-RPC node; on eth-tester the sender web3's eth-tester middleware would
        fill in (its first account), asked once here: the middleware asks eth-tester for its
        accounts three times a call, several milliseconds each."""
        if self._view_params is None:
            accounts = [] if self._json_rpc else self.w3.eth.accounts
            self._view_params = {"from": accounts[0]} if accounts else {}
        return dict(self._view_params)  # a copy: web3 builds on the dict it is given

    def get_logs(self, from_block: int, to_block: int, address: str) -> list[ChainLog]:
        """The logs of one contract in a block range, in the node's order."""
        if self._json_rpc:
            return [chain_log_from_json(j)
                    for j in request(self.w3, "eth_getLogs", [{"fromBlock": hex(from_block),
                                                               "toBlock": hex(to_block),
                                                               "address": address}])]
        return [chain_log_from_web3(raw)
                for raw in self.w3.eth.get_logs({"fromBlock": from_block, "toBlock": to_block,
                                                 "address": address})]

    def call_many(self, calls: list[tuple[str, bytes]],
                  block: int) -> tuple[bytes, list[bytes]] | None:
        """`eth_call` every (to, data) at block number `block`: that block's hash and the
        results, in order; None when the node cannot read at that block (above its head, its
        state pruned). On a JSON-RPC node: one batch request per `CALL_BATCH` calls, each with
        the block's header (one round trip for a few hundred reads); on eth-tester, which
        takes no batches, one call after another."""
        if self._json_rpc:
            return calls_at_block(self.w3, calls, block)
        try:
            block_hash = bytes(self.w3.eth.get_block(block)["hash"])
            return block_hash, [bytes(self.w3.eth.call({**self.view_params(), "to": to,
                                                        "data": data},
                                                       block_identifier=block))
                                for to, data in calls]
        except (BlockNotFound, *tester_missing_block()):
            return None

    def calls(self, calls: list[tuple[str, bytes]]) -> list[bytes]:
        """`eth_call` of every (to, data) at the latest block, the raw results in order: one
        JSON-RPC batch request (per `CALL_BATCH` calls) on a JSON-RPC node; on eth-tester,
        which takes no batches, one call after another. A call that fails (a revert, a node
        error) raises: for reads that do not revert (a view such as `statusOf`)."""
        if not calls:
            return []
        if not self._json_rpc:
            return [bytes(self.w3.eth.call({**self.view_params(), "to": to, "data": data}))
                    for to, data in calls]
        return [hex_bytes(result) for result in batch(
            self.w3, [("eth_call", [{"to": to, "data": "0x" + data.hex()}, "latest"])
                      for to, data in calls], "eth_call")]

    def calls_with_time(self, calls: list[tuple[str, bytes]]) -> tuple[int, list[bytes]]:
        """Chain time (`head`'s timestamp) and `calls`' results: on a JSON-RPC node the latest
        header rides in the calls' batch request, one round trip for both (a proposal reads
        the business chain's time and its titles)."""
        if not self._json_rpc:
            return self.head()[0], self.calls(calls)
        answers = batch(self.w3, [("eth_getBlockByNumber", ["latest", False]), *(
            ("eth_call", [{"to": to, "data": "0x" + data.hex()}, "latest"])
            for to, data in calls)], "eth_call")
        return int(answers[0]["timestamp"], 16), [hex_bytes(result) for result in answers[1:]]

    def receipts(self, tx_hashes: list[bytes]) -> list[Receipt | None]:
        """`receipt()` of every transaction, in order (None: not mined, or unknown): one JSON-RPC
        batch request (per `CALL_BATCH` hashes) on a JSON-RPC node, one lookup each on
        eth-tester."""
        if not tx_hashes:
            return []
        if not self._json_rpc:
            return [self.receipt(tx_hash) for tx_hash in tx_hashes]
        return [receipt_from_json(found) if found else None for found in batch(
            self.w3, [("eth_getTransactionReceipt", ["0x" + h.hex()]) for h in tx_hashes],
            "eth_getTransactionReceipt")]

    def is_known(self, tx_hash: bytes) -> bool:
        """Does the node know the transaction (pending in its pool, or mined)?"""
        try:
            self.w3.eth.get_transaction(tx_hash)
            return True
        except TransactionNotFound:
            return False

    def contract(self, address: str, artifact: Artifact) -> Contract:
        return self.w3.eth.contract(address=to_checksum_address(address), abi=artifact.abi)

    def next_nonce(self, address: str) -> int:
        if address not in self._nonces:
            self._nonces[address] = self.w3.eth.get_transaction_count(address, "pending")
        return self._nonces[address]

    def sign(self, account: LocalAccount, *, to: str | None, data: bytes | str, gas: int,
             value: int = 0) -> bytes:
        """Sign the sender's next transaction and reserve its nonce; returns the raw bytes."""
        nonce = self.next_nonce(account.address)
        tx: dict[str, Any] = {
            "chainId": self.chain_id,
            "nonce": nonce,
            "gas": gas,
            "maxFeePerGas": self.max_fee_per_gas,
            "maxPriorityFeePerGas": self.priority_fee_per_gas,
            "value": value,
            "data": data,
        }
        if to is not None:
            tx["to"] = to_checksum_address(to)
        raw = bytes(account.sign_transaction(tx).raw_transaction)
        self._nonces[account.address] = nonce + 1
        return raw

    def sign_with_nonce(self, account: LocalAccount, *, to: str, data: bytes | str, gas: int,
                        nonce: int, value: int = 0, fees: Fees | None = None) -> bytes:
        """Sign with an explicit nonce (the caller manages nonces, e.g. from its database)
        and explicit fees (default: the fixed development fees)."""
        fees = fees or Fees(self.max_fee_per_gas, self.priority_fee_per_gas)
        tx: dict[str, Any] = {
            "chainId": self.chain_id, "nonce": nonce, "gas": gas, "value": value, "data": data,
            "maxFeePerGas": fees.max_fee_per_gas,
            "maxPriorityFeePerGas": fees.max_priority_fee_per_gas,
            "to": to_checksum_address(to),
        }
        return bytes(account.sign_transaction(tx).raw_transaction)

    @staticmethod
    def tx_hash(raw: bytes) -> bytes:
        return keccak(raw)

    def receipt(self, tx_hash: bytes) -> Receipt | None:
        if self._json_rpc:
            found = request(self.w3, "eth_getTransactionReceipt", ["0x" + tx_hash.hex()])
            return receipt_from_json(found) if found else None
        try:
            return receipt_from_web3(self.w3.eth.get_transaction_receipt(tx_hash))
        except TransactionNotFound:
            return None

    def send_raw(self, raw: bytes) -> bytes:
        return bytes(self.w3.eth.send_raw_transaction(raw))

    def send_raws(self, raws: list[bytes]) -> list[Exception | None]:
        """Broadcast these transactions, in order; each one's refusal, None if taken. One
        batch request on a JSON-RPC node (`send_raw_batch`), one request each on eth-tester."""
        if self._json_rpc:
            return send_raw_batch(self.w3, raws) if raws else []
        return [refusal(self.send_raw, raw) for raw in raws]

    def wait(self, tx_hash: bytes, timeout: float = 120, poll_every: float = 0.1) -> Receipt:
        """The receipt once mined, asked for every `poll_every` seconds (web3's default; a
        benchmark timing a node passes less, or each wait rounds up to the next poll)."""
        return receipt_from_web3(self.w3.eth.wait_for_transaction_receipt(
            tx_hash, timeout=timeout, poll_latency=poll_every))

    def transact(self, account: LocalAccount, *, to: str | None, data: bytes | str, gas: int,
                 value: int = 0) -> Receipt:
        """Sign, send and wait for one transaction. A reverted transaction is returned (status
        0), not raised: the caller decides whether a revert is an error."""
        return self.wait(self.send_raw(self.sign(account, to=to, data=data, gas=gas, value=value)))

    def deploy(self, account: LocalAccount, artifact: Artifact, *args: Any,
               gas: int = 6_000_000) -> Contract:
        factory = self.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        data = factory.constructor(*args).data_in_transaction
        receipt = self.transact(account, to=None, data=data, gas=gas)
        if not receipt.succeeded or receipt.contract_address is None:
            raise RuntimeError(f"deploying {artifact.contract_name} on {self.name} failed")
        return self.contract(receipt.contract_address, artifact)

    def call(self, contract: Contract, fn: str, *args: Any, sender: str | None = None,
             block: str | int = "latest") -> Any:
        """Call a view or simulate a transaction; a revert raises RevertError, decoded."""
        try:
            return getattr(contract.functions, fn)(*args).call(
                {"from": sender} if sender else self.view_params(), block_identifier=block
            )
        except call_errors() as exc:
            raise decode_revert(revert_data(exc), contract.abi) from exc

    def simulate(self, sender: str, to: str, data: bytes, *, gas: int | None = None,
                 value: int = 0, block: str | int = "latest",
                 abi: list[dict[str, Any]] | tuple[dict[str, Any], ...] = ()) -> RevertError | None:
        """Run a transaction as `eth_call` at `block` (nothing is signed or sent): None if it
        would succeed, else why it reverts, decoded with the custom errors of `abi`. Errors
        other than a revert (a node down) are raised."""
        tx: dict[str, Any] = {"from": to_checksum_address(sender), "to": to_checksum_address(to),
                              "data": data, "value": value}
        if gas is not None:
            tx["gas"] = gas
        try:
            self.w3.eth.call(tx, block_identifier=block)  # type: ignore[arg-type]
        except call_errors() as exc:
            return decode_revert(revert_data(exc), list(abi))
        return None


def http_client(url: str, name: str, chain_id: int | None = None, *, timeout: float = 30,
                fee_cap: int = DEFAULT_FEE_CAP, priority_fee: int | None = None) -> ChainClient:
    """A client of the JSON-RPC node at `url` (each request times out after `timeout`
    seconds). Without `chain_id`, the node's own, asked now: raises when the node does not
    answer. With it, nothing is asked (`node_chain_id()` checks it)."""
    from gateway.chain.transport import NodeProvider

    w3 = Web3(NodeProvider(url, timeout=timeout))
    if chain_id is None:
        chain_id = int(w3.eth.chain_id)
    return ChainClient(w3, chain_id, name, fee_cap=fee_cap, priority_fee=priority_fee)
