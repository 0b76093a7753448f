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


def refusal(send, raw: bytes) -> Exception | None:  # noqa: ANN001
    """`send(raw)`'s refusal (what it raised), None if the node took the transaction."""
    try:
        send(raw)
    except Exception as exc:  # noqa: BLE001 - told to the caller, as a node's answer
        return exc
    return None


def send_raw_batch(w3, raws: list[bytes]) -> list[Exception | None]:  # noqa: ANN001
    """`eth_sendRawTransaction` of every raw transaction, in order, in one JSON-RPC batch
    request: each one's refusal (an `RPCError` holding the node's words), None where the node
    took it. A node that refuses one still takes the others; a request that gets no answer
    (the node down, an answer that is not one per transaction) is every one's refusal."""
    from gateway.chain.rpc import RPCError

    try:
        answers = w3.provider.make_batch_request(
            [("eth_sendRawTransaction", ["0x" + raw.hex()]) for raw in raws])
    except Exception as exc:  # noqa: BLE001 - each transaction's outcome, as for one
        return [exc] * len(raws)
    if not isinstance(answers, list) or len(answers) != len(raws):
        return [RPCError(f"batch eth_sendRawTransaction: {answers!r}"[:500])] * len(raws)
    return [RPCError(f"eth_sendRawTransaction: {answer['error']}") if "error" in answer
            else None for answer in answers]
