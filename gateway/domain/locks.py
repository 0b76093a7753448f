"""The two legs of a trade as the contracts record them, and the hashlock rules.

Both legs share one hashlock `H = sha256(s)` over a secret `s` of exactly 32 bytes; both
contracts refuse any other preimage length, so a secret that opens one leg opens the other.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

PREIMAGE_LENGTH = 32


class InvalidPreimage(ValueError):
    pass


def new_secret() -> bytes:
    return secrets.token_bytes(PREIMAGE_LENGTH)


def hashlock_of(preimage: bytes) -> bytes:
    if len(preimage) != PREIMAGE_LENGTH:
        raise InvalidPreimage(f"a preimage is exactly {PREIMAGE_LENGTH} bytes, got {len(preimage)}")
    return hashlib.sha256(preimage).digest()


@dataclass(frozen=True)
class PaymentLock:
    """Parameters of a PaymentHTLC lock (field order = the Solidity struct)."""

    sender: str
    beneficiary: str
    amount: int
    hashlock: bytes
    timelock: int

    def as_tuple(self) -> tuple[str, str, int, bytes, int]:
        return (self.sender, self.beneficiary, self.amount, self.hashlock, self.timelock)


@dataclass(frozen=True)
class DeliveryLock:
    """Parameters of a DeliveryHTLC lock (field order = the Solidity struct)."""

    seller: str
    buyer: str
    token_id: int
    document_hash: bytes
    trade_id: bytes
    hashlock: bytes
    timelock: int

    def as_tuple(self) -> tuple[str, str, int, bytes, bytes, bytes, int]:
        return (self.seller, self.buyer, self.token_id, self.document_hash, self.trade_id,
                self.hashlock, self.timelock)


@dataclass(frozen=True)
class PaymentLocked:
    lock_id: bytes
    lock: PaymentLock


@dataclass(frozen=True)
class DeliveryLocked:
    lock_id: bytes
    lock: DeliveryLock


@dataclass(frozen=True)
class LockClaimed:
    """Either leg claimed; the preimage is now public."""

    lock_id: bytes
    preimage: bytes

    @property
    def hashlock(self) -> bytes:
        return hashlock_of(self.preimage)


@dataclass(frozen=True)
class LockRefunded:
    lock_id: bytes


LockEvent = PaymentLocked | DeliveryLocked | LockClaimed | LockRefunded
