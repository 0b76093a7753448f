"""Why a call reverted: the revert data of a failed call (from a JSON-RPC node or from
eth-tester), decoded with a contract's custom errors."""

from __future__ import annotations

import ast
import sys
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import keccak, to_checksum_address
from web3.exceptions import ContractLogicError


class RevertError(Exception):
    """A call reverted; `name` is the decoded custom error (or Error/Panic), `values` its args."""

    def __init__(self, name: str, values: tuple[Any, ...], data: bytes) -> None:
        super().__init__(f"{name}{values!r}")
        self.name = name
        self.values = values
        self.data = data


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


def tester_failed() -> tuple[type[BaseException], ...]:
    """eth-tester's TransactionFailed, if eth-tester is loaded (only then can it be raised):
    a relayer on JSON-RPC nodes never imports eth-tester and py-evm."""
    module = sys.modules.get("eth_tester.exceptions")
    return (module.TransactionFailed,) if module is not None else ()


def tester_missing_block() -> tuple[type[BaseException], ...]:
    """eth-tester's BlockNotFound (a call at a block above the head), if eth-tester is loaded."""
    module = sys.modules.get("eth_tester.exceptions")
    return (module.BlockNotFound,) if module is not None else ()


def call_errors() -> tuple[type[BaseException], ...]:
    """What a reverted call raises: web3's ContractLogicError, or eth-tester's failure."""
    return (ContractLogicError, *tester_failed())


def revert_data(exc: BaseException) -> bytes:
    """The raw revert data of a failed call, from a JSON-RPC node or from eth-tester.

    eth-tester raises TransactionFailed with `str(revert_bytes)` (a bytes literal) as its
    message, and web3's provider re-raises that with a prefix; the original is its context.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ContractLogicError) and isinstance(seen.data, str):
            return bytes.fromhex(seen.data.removeprefix("0x"))
        if isinstance(seen, tester_failed()) and seen.args:
            message = seen.args[0]
            if isinstance(message, bytes):
                return message
            if isinstance(message, str) and message[:2] in ("b'", 'b"'):
                literal = ast.literal_eval(message)
                if isinstance(literal, bytes):
                    return literal
        seen = seen.__cause__ or seen.__context__
    return b""
