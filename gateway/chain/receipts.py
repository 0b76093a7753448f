"""Receipts and logs as our own frozen types, from a JSON-RPC node's answers or from web3's
objects alike: no HexBytes or AttributeDict leaves gateway/chain."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from eth_utils import to_checksum_address

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


def hex_bytes(value: str) -> bytes:
    return bytes.fromhex(value[2:] if value.startswith("0x") else value)


def log_from_json(j: dict[str, Any]) -> Log:
    return Log(address=checksum(j["address"]), topics=tuple(hex_bytes(t) for t in j["topics"]),
               data=hex_bytes(j["data"]), log_index=int(j["logIndex"], 16))


def chain_log_from_json(j: dict[str, Any]) -> ChainLog:
    return ChainLog(log_from_json(j), int(j["blockNumber"], 16), hex_bytes(j["transactionHash"]),
                    bool(j.get("removed")))


def chain_log_from_web3(raw: Any) -> ChainLog:
    return ChainLog(Log(address=raw["address"], topics=tuple(bytes(t) for t in raw["topics"]),
                        data=bytes(raw["data"]), log_index=raw["logIndex"]),
                    raw["blockNumber"], bytes(raw["transactionHash"]), bool(raw.get("removed")))


def receipt_from_json(j: dict[str, Any]) -> Receipt:
    return Receipt(
        tx_hash=hex_bytes(j["transactionHash"]), block_number=int(j["blockNumber"], 16),
        block_hash=hex_bytes(j["blockHash"]), status=int(j["status"], 16),
        gas_used=int(j["gasUsed"], 16),
        contract_address=checksum(j["contractAddress"]) if j.get("contractAddress") else None,
        logs=tuple(log_from_json(log) for log in j["logs"]))


def receipt_from_web3(raw: Any) -> Receipt:
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
