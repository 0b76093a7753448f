"""What a signed transaction says, read back from its raw bytes, and why a node refused to
take one (`classify_send_error`), for eth-tester's and JSON-RPC nodes' wording alike."""

from __future__ import annotations

from dataclasses import dataclass

from eth_utils import to_checksum_address

from gateway.chain.fees import Fees

SEND_KNOWN, SEND_NONCE_TOO_LOW, SEND_UNDERPRICED, SEND_UNAVAILABLE, SEND_REJECTED = (
    "known", "nonce_too_low", "underpriced", "unavailable", "rejected")


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


def node_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the node did not answer (refused, reset, timed out, an HTTP error
    status), as opposed to an answer refusing the request."""
    import requests

    return isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError,
                            TimeoutError))


def classify_send_error(exc: BaseException) -> str:
    """Why a node refused `eth_sendRawTransaction`, in one word (see the SEND_* names)."""
    import re

    if node_unavailable(exc):
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
