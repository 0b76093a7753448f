"""Sending signed transactions and reading contracts on one chain.

Transactions are signed locally (eth-account with coincurve) and carry explicit gas limits:
web3's automatic estimation replays each transaction several times, which on py-evm costs more
than the transaction itself. Nonces are tracked per key in this process. Receipts come back as
our own frozen types, so no HexBytes/AttributeDict leaves this package.

Fees (EIP-1559, type-2 transactions only): `suggest_fees()` asks the node for the latest base
fee and a priority fee (or uses the configured one) and offers `2 x base + priority`, never more
than the configured cap. `bumped()` raises both fields by at least the bump percentage (>= 10%,
what geth requires of a replacement at the same nonce), and at least to the current suggestion;
it answers None when the cap leaves no room, so a caller never loops on a replacement the node
must refuse. `toward_cap()` prices a claim near its deadline: a given fraction of the way from
the suggestion up to the cap (the cap itself on both fields at the end).
`classify_send_error()` names a node's refusal (already known, nonce too low, underpriced,
unavailable) for eth-tester's and JSON-RPC nodes' wording alike.
"""

from __future__ import annotations

import ast
import math
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from eth_abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import BlockNotFound, ContractLogicError, TransactionNotFound

from gateway.contracts import Artifact

DEFAULT_MAX_FEE_PER_GAS = 100 * 10**9
DEFAULT_PRIORITY_FEE_PER_GAS = 10**9
DEFAULT_FEE_CAP = 500 * 10**9
MIN_BUMP_PERCENT = 10
CALL_BATCH = 500  # eth_calls per JSON-RPC batch request (nodes cap a batch's size)


@dataclass(frozen=True)
class Fees:
    max_fee_per_gas: int
    max_priority_fee_per_gas: int

    def at_least(self, percent: int, than: Fees) -> bool:
        """Both fields at least `percent` above `than`'s (integer wei, rounded up)."""
        return (self.max_fee_per_gas >= _raise(than.max_fee_per_gas, percent) and
                self.max_priority_fee_per_gas >= _raise(than.max_priority_fee_per_gas, percent))


def _raise(value: int, percent: int) -> int:
    return (value * (100 + percent) + 99) // 100


@dataclass(frozen=True)
class SignedFields:
    """What a signed type-2 transaction says, read back from its raw bytes."""

    chain_id: int
    nonce: int
    fees: Fees
    gas: int
    to: str | None
    value: int
    data: bytes


def decode_signed(raw: bytes) -> SignedFields:
    import rlp

    if not raw or raw[0] != 2:
        raise ValueError("not an EIP-1559 (type 2) transaction")
    fields = rlp.decode(raw[1:])
    chain_id, nonce, prio, max_fee, gas = (int.from_bytes(f, "big") for f in fields[:5])
    to = to_checksum_address(fields[5]) if fields[5] else None
    return SignedFields(chain_id, nonce, Fees(max_fee, prio), gas, to,
                        int.from_bytes(fields[6], "big"), bytes(fields[7]))


SEND_KNOWN, SEND_NONCE_TOO_LOW, SEND_UNDERPRICED, SEND_UNAVAILABLE, SEND_REJECTED = (
    "known", "nonce_too_low", "underpriced", "unavailable", "rejected")


def classify_send_error(exc: BaseException) -> str:
    """Why a node refused `eth_sendRawTransaction`, in one word (see the SEND_* names)."""
    import re

    import requests

    if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError,
                        TimeoutError)):
        return SEND_UNAVAILABLE
    message = str(exc).lower()
    if "already known" in message or "already imported" in message or \
            "known transaction" in message:
        return SEND_KNOWN
    if "nonce too low" in message or "nonce is too low" in message:
        return SEND_NONCE_TOO_LOW
    found = re.search(r"invalid transaction nonce: expected (\d+), but got (\d+)", message)
    if found and int(found.group(2)) < int(found.group(1)):  # eth-tester
        return SEND_NONCE_TOO_LOW
    if "underpriced" in message or "fee too low" in message or "less than block base fee" \
            in message or "max fee per gas less than" in message:
        return SEND_UNDERPRICED
    return SEND_REJECTED


# The same few addresses come back in log after log; each checksum (a keccak) is made once.
checksum = lru_cache(maxsize=65_536)(to_checksum_address)


@dataclass(frozen=True)
class Log:
    address: str
    topics: tuple[bytes, ...]
    data: bytes
    log_index: int


@dataclass(frozen=True)
class ChainLog:
    """A log as `eth_getLogs` returns it: where it was mined, and what it says."""

    log: Log
    block_number: int
    tx_hash: bytes
    removed: bool = False


def _hex_bytes(value: str) -> bytes:
    return bytes.fromhex(value[2:] if value.startswith("0x") else value)


def _log_from_json(j: dict[str, Any]) -> Log:
    return Log(address=checksum(j["address"]), topics=tuple(_hex_bytes(t) for t in j["topics"]),
               data=_hex_bytes(j["data"]), log_index=int(j["logIndex"], 16))


def _receipt_from_json(j: dict[str, Any]) -> Receipt:
    return Receipt(
        tx_hash=_hex_bytes(j["transactionHash"]), block_number=int(j["blockNumber"], 16),
        block_hash=_hex_bytes(j["blockHash"]), status=int(j["status"], 16),
        gas_used=int(j["gasUsed"], 16),
        contract_address=checksum(j["contractAddress"]) if j.get("contractAddress") else None,
        logs=tuple(_log_from_json(log) for log in j["logs"]))


class RPCError(RuntimeError):
    """A JSON-RPC node answered a request with an error."""


@dataclass(frozen=True)
class Receipt:
    tx_hash: bytes
    block_number: int
    block_hash: bytes
    status: int
    gas_used: int
    contract_address: str | None
    logs: tuple[Log, ...]

    @property
    def succeeded(self) -> bool:
        return self.status == 1


class RevertError(Exception):
    """A call reverted; `name` is the decoded custom error (or Error/Panic), `values` its args."""

    def __init__(self, name: str, values: tuple[Any, ...], data: bytes) -> None:
        super().__init__(f"{name}{values!r}")
        self.name = name
        self.values = values
        self.data = data


def _to_receipt(raw: Any) -> Receipt:
    return Receipt(
        tx_hash=bytes(raw["transactionHash"]),
        block_number=raw["blockNumber"],
        block_hash=bytes(raw["blockHash"]),
        status=raw["status"],
        gas_used=raw["gasUsed"],
        contract_address=raw.get("contractAddress"),
        logs=tuple(
            Log(
                address=log["address"],
                topics=tuple(bytes(t) for t in log["topics"]),
                data=bytes(log["data"]),
                log_index=log["logIndex"],
            )
            for log in raw["logs"]
        ),
    )


def error_selectors(abi: list[dict[str, Any]]) -> dict[bytes, tuple[str, list[str]]]:
    """Map each custom error's 4-byte selector to its name and argument types."""
    selectors: dict[bytes, tuple[str, list[str]]] = {
        keccak(text="Error(string)")[:4]: ("Error", ["string"]),
        keccak(text="Panic(uint256)")[:4]: ("Panic", ["uint256"]),
    }
    for item in abi:
        if item["type"] == "error":
            types = [_canonical_type(i) for i in item["inputs"]]
            selectors[keccak(text=f"{item['name']}({','.join(types)})")[:4]] = (item["name"], types)
    return selectors


def _canonical_type(item: dict[str, Any]) -> str:
    if item["type"].startswith("tuple"):
        inner = ",".join(_canonical_type(c) for c in item["components"])
        return f"({inner}){item['type'][5:]}"
    return item["type"]


def decode_revert(data: bytes, abi: list[dict[str, Any]]) -> RevertError:
    known = error_selectors(abi)
    if len(data) >= 4 and data[:4] in known:
        name, types = known[data[:4]]
        values = tuple(to_checksum_address(v) if t == "address" else v
                       for t, v in zip(types, abi_decode(types, data[4:]), strict=True))
        return RevertError(name, values, data)
    return RevertError("UnknownRevert", (data.hex(),), data)


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
            _cache_chain_id(w3)
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
        max_fee = min(self.fee_cap, 2 * base + priority)
        return Fees(max_fee, min(priority, max_fee))

    def bumped(self, previous: Fees, percent: int = 12) -> Fees | None:
        """Fees for a replacement of a transaction priced at `previous`: both fields at least
        `percent` (>= 10) higher and at least the current suggestion; None if the cap does not
        allow a valid replacement."""
        percent = max(percent, MIN_BUMP_PERCENT)
        now = self.suggest_fees()
        max_fee = min(self.fee_cap, max(_raise(previous.max_fee_per_gas, percent),
                                        now.max_fee_per_gas))
        priority = min(max_fee, max(_raise(previous.max_priority_fee_per_gas, percent),
                                    now.max_priority_fee_per_gas))
        fees = Fees(max_fee, priority)
        return fees if fees.at_least(MIN_BUMP_PERCENT, previous) else None

    def head(self) -> tuple[int, int]:
        """The latest block's timestamp and base fee (chain time and price, per the node)."""
        block = self.w3.eth.get_block("latest")
        return int(block["timestamp"]), int(block.get("baseFeePerGas", 0) or 0)

    def block_number(self) -> int:
        """The node's latest block number (`eth_blockNumber`)."""
        return int(self.w3.eth.block_number)

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
        now = self.suggest_fees()
        f = min(max(fraction, 0.0), 1.0)
        max_fee = now.max_fee_per_gas + math.ceil(f * (self.fee_cap - now.max_fee_per_gas))
        if _raise(max_fee, max(percent, MIN_BUMP_PERCENT)) > self.fee_cap:
            return Fees(self.fee_cap, self.fee_cap)
        priority = now.max_priority_fee_per_gas + math.ceil(
            f * (self.fee_cap - now.max_priority_fee_per_gas))
        return Fees(max_fee, min(priority, max_fee))

    def _rpc(self, method: str, params: list[Any]) -> Any:
        """One request straight to a JSON-RPC node, its result as the node sent it (hex
        strings): web3's result formatters cost more than the request itself on a receipt or
        a page of logs. Only for JSON-RPC endpoints (`_json_rpc`); eth-tester goes via web3."""
        response = self.w3.provider.make_request(method, params)  # type: ignore[arg-type]
        if "error" in response:
            raise RPCError(f"{method}: {response['error']}")
        return response.get("result")

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
            return [ChainLog(_log_from_json(j), int(j["blockNumber"], 16),
                             _hex_bytes(j["transactionHash"]), bool(j.get("removed")))
                    for j in self._rpc("eth_getLogs", [{"fromBlock": hex(from_block),
                                                        "toBlock": hex(to_block),
                                                        "address": address}])]
        return [ChainLog(Log(address=raw["address"], topics=tuple(bytes(t) for t in raw["topics"]),
                             data=bytes(raw["data"]), log_index=raw["logIndex"]),
                         raw["blockNumber"], bytes(raw["transactionHash"]),
                         bool(raw.get("removed")))
                for raw in self.w3.eth.get_logs({"fromBlock": from_block, "toBlock": to_block,
                                                 "address": address})]

    def call_many(self, calls: list[tuple[str, bytes]],
                  block: int) -> tuple[bytes, list[bytes]] | None:
        """`eth_call` every (to, data) at block number `block`: that block's hash and the
        results, in order; None when the node cannot read at that block (above its head, its
        state pruned). On a JSON-RPC node: one batch request per `CALL_BATCH` calls, each with
        the block's header (one round trip for a few hundred reads); on eth-tester, which
        takes no batches, one call after another."""
        number = hex(block)
        if not self._json_rpc:
            try:
                block_hash = bytes(self.w3.eth.get_block(block)["hash"])
                return block_hash, [bytes(self.w3.eth.call({**self.view_params(), "to": to,
                                                            "data": data},
                                                           block_identifier=block))
                                    for to, data in calls]
            except (BlockNotFound, *_tester_missing_block()):
                return None
        hashes: set[str] = set()
        results: list[bytes] = []
        for start in range(0, max(len(calls), 1), CALL_BATCH):
            requests: list[tuple[str, list[Any]]] = [("eth_getBlockByNumber", [number, False])]
            requests += [("eth_call", [{"to": to, "data": "0x" + data.hex()}, number])
                         for to, data in calls[start:start + CALL_BATCH]]
            answers = self.w3.provider.make_batch_request(requests)  # type: ignore[arg-type]
            if not isinstance(answers, list) or len(answers) != len(requests):
                raise RPCError(f"batch eth_call: {answers!r}"[:500])
            header = answers[0].get("result")
            if header is None or any("error" in a for a in answers):
                return None  # no such block, or no state for it: the caller reads elsewhere
            hashes.add(header["hash"])
            results += [_hex_bytes(a["result"]) for a in answers[1:]]
        if len(hashes) != 1:
            return None  # the block at that height changed between two requests
        return _hex_bytes(hashes.pop()), results

    def _batch(self, requests: list[tuple[str, list[Any]]], what: str) -> list[Any]:
        """JSON-RPC batch requests (`CALL_BATCH` a request) of a JSON-RPC node: each
        request's result as the node sent it, in order. An error answer raises `RPCError`,
        as one request's error would (web3's, or `_rpc`'s)."""
        results: list[Any] = []
        for start in range(0, len(requests), CALL_BATCH):
            chunk = requests[start:start + CALL_BATCH]
            answers = self.w3.provider.make_batch_request(chunk)  # type: ignore[arg-type]
            if not isinstance(answers, list) or len(answers) != len(chunk):
                raise RPCError(f"batch {what}: {answers!r}"[:500])
            for answer in answers:
                if "error" in answer:
                    raise RPCError(f"batch {what}: {answer['error']}"[:500])
                results.append(answer.get("result"))
        return results

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
        return [_hex_bytes(result) for result in self._batch(
            [("eth_call", [{"to": to, "data": "0x" + data.hex()}, "latest"])
             for to, data in calls], "eth_call")]

    def receipts(self, tx_hashes: list[bytes]) -> list[Receipt | None]:
        """`receipt()` of every transaction, in order (None: not mined, or unknown): one JSON-RPC
        batch request (per `CALL_BATCH` hashes) on a JSON-RPC node, one lookup each on
        eth-tester."""
        if not tx_hashes:
            return []
        if not self._json_rpc:
            return [self.receipt(tx_hash) for tx_hash in tx_hashes]
        return [_receipt_from_json(found) if found else None for found in self._batch(
            [("eth_getTransactionReceipt", ["0x" + h.hex()]) for h in tx_hashes],
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
            found = self._rpc("eth_getTransactionReceipt", ["0x" + tx_hash.hex()])
            return _receipt_from_json(found) if found else None
        try:
            return _to_receipt(self.w3.eth.get_transaction_receipt(tx_hash))
        except TransactionNotFound:
            return None

    def send_raw(self, raw: bytes) -> bytes:
        return bytes(self.w3.eth.send_raw_transaction(raw))

    def wait(self, tx_hash: bytes, timeout: float = 120) -> Receipt:
        return _to_receipt(self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout))

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
        except _call_errors() as exc:
            raise decode_revert(_revert_data(exc), contract.abi) from exc

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
        except _call_errors() as exc:
            return decode_revert(_revert_data(exc), list(abi))
        return None


def http_client(url: str, name: str, chain_id: int | None = None, *, timeout: float = 30,
                fee_cap: int = DEFAULT_FEE_CAP, priority_fee: int | None = None) -> ChainClient:
    """A client of the JSON-RPC node at `url` (each request times out after `timeout`
    seconds). Without `chain_id`, the node's own, asked now: raises when the node does not
    answer. With it, nothing is asked (`node_chain_id()` checks it)."""
    from web3 import HTTPProvider

    w3 = Web3(HTTPProvider(url, request_kwargs={"timeout": timeout}))
    if chain_id is None:
        chain_id = int(w3.eth.chain_id)
    return ChainClient(w3, chain_id, name, fee_cap=fee_cap, priority_fee=priority_fee)


def _cache_chain_id(w3: Web3) -> None:
    """web3's validation middleware asks the node for its chain id before and after every
    `eth_call` (two `eth_chainId` requests per call, to check a `chainId` field our calls
    never carry): the provider keeps the node's answer instead (web3's request cache, for
    `eth_chainId` alone). A provider configured with a request cache of its own is left
    as it is."""
    provider = w3.provider
    if not getattr(provider, "cache_allowed_requests", True):
        provider.cacheable_requests = {"eth_chainId"}  # type: ignore[union-attr,assignment]
        provider.cache_allowed_requests = True  # type: ignore[union-attr]


def _tester_failed() -> tuple[type[BaseException], ...]:
    """eth-tester's TransactionFailed, if eth-tester is loaded (only then can it be raised):
    a relayer on JSON-RPC nodes never imports eth-tester and py-evm."""
    module = sys.modules.get("eth_tester.exceptions")
    return (module.TransactionFailed,) if module is not None else ()


def _tester_missing_block() -> tuple[type[BaseException], ...]:
    """eth-tester's BlockNotFound (a call at a block above the head), if eth-tester is loaded."""
    module = sys.modules.get("eth_tester.exceptions")
    return (module.BlockNotFound,) if module is not None else ()


def _call_errors() -> tuple[type[BaseException], ...]:
    return (ContractLogicError, *_tester_failed())


def _revert_data(exc: BaseException) -> bytes:
    """The raw revert data of a failed call, from a JSON-RPC node or from eth-tester.

    eth-tester raises TransactionFailed with `str(revert_bytes)` (a bytes literal) as its
    message, and web3's provider re-raises that with a prefix; the original is its context.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ContractLogicError) and isinstance(seen.data, str):
            return bytes.fromhex(seen.data.removeprefix("0x"))
        if isinstance(seen, _tester_failed()) and seen.args:
            message = seen.args[0]
            if isinstance(message, bytes):
                return message
            if isinstance(message, str) and message[:2] in ("b'", 'b"'):
                literal = ast.literal_eval(message)
                if isinstance(literal, bytes):
                    return literal
        seen = seen.__cause__ or seen.__context__
    return b""
