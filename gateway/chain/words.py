"""ABI words (32 bytes each) of static values, checked as eth_abi checks them: calldata the
relayer sends in bulk (`htlc.claim_many_calldata`) is written from them directly."""

from __future__ import annotations


def uint_word(value: int, bits: int) -> bytes:
    if type(value) is not int or not 0 <= value < 1 << bits:
        raise ValueError(f"not a uint{bits}: {value!r}")
    return value.to_bytes(32, "big")


def address_word(value: str) -> bytes:
    raw = bytes.fromhex(value[2:]) if isinstance(value, str) and value[:2] in ("0x", "0X") \
        else b""
    if len(raw) != 20:
        raise ValueError(f"not an address: {value!r}")
    return bytes(12) + raw


def bytes32_word(value: bytes) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise ValueError(f"not 32 bytes: {value!r}")
    return value
