"""Effect keys and trade flags: small typed values instead of f-strings parsed with `split`.

Both are `str` subclasses on purpose: a trade's stored state, its input log and the outbox hold
them as the plain strings earlier releases wrote ("payment_claim:<lock hex>",
"blocked:payment_claim:<lock hex>"), so stored rows decode unchanged (`gateway.domain.codec`
turns each string back into its type), and they compare equal to those strings. Build them
with the constructors and read them with the properties; never format or split them by hand.
"""

from __future__ import annotations

from enum import StrEnum


class EffectKind(StrEnum):
    PAYMENT_LOCK = "payment_lock"
    DELIVERY_LOCK = "delivery_lock"
    PAYMENT_CLAIM = "payment_claim"
    DELIVERY_CLAIM = "delivery_claim"
    PAYMENT_REFUND = "payment_refund"
    DELIVERY_REFUND = "delivery_refund"


class EffectKey(str):
    """What the pending set and the outbox know a `ContractSend*` by: its kind and, for a claim
    or refund, the lock it exits (a trade locks each asset once; it may exit several locks)."""

    __slots__ = ()

    @classmethod
    def of(cls, kind: EffectKind, lock_id: bytes | None = None) -> EffectKey:
        return cls(kind.value if lock_id is None else f"{kind.value}:{lock_id.hex()}")

    @property
    def kind(self) -> EffectKind:
        return EffectKind(self.partition(":")[0])

    @property
    def lock_id(self) -> bytes | None:
        lock_hex = self.partition(":")[2]
        return bytes.fromhex(lock_hex) if lock_hex else None


class FlagKind(StrEnum):
    HASHLOCK_FROM_BUYER = "hashlock_from_buyer"  # the buyer gave the hashlock at accept
    TAKE_DELIVERY = "take_delivery"  # a managed buyer asked to take delivery
    FOREIGN_PAYMENT_LOCK = "foreign_payment_lock"  # a payment lock of the hashlock, not ours
    MISMATCHED_DELIVERY = "mismatched_delivery"  # a delivery lock off the terms
    EXTRA_DELIVERY_LOCK = "extra_delivery_lock"  # a second delivery lock of the hashlock
    CONTRADICTORY_EXIT = "contradictory_exit"  # a lock claimed and refunded, by the logs
    DELIVERY_LOCKED_BEFORE_PAYMENT = "delivery_locked_before_payment"
    AT_RISK = "at_risk"  # a claim that may not be final before its deadline
    BLOCKED = "blocked"  # an effect held back: its subject is the effect key
    CHAIN_DISAGREES = "chain_disagrees"  # the reconciler found a leg the contract disagrees with
    INVARIANT_VIOLATED = "invariant_violated"  # a bug contained to this trade
    PAYMENT_LOCK_FAILED = "payment_lock_failed"  # <effect kind>_failed: given up for good
    DELIVERY_LOCK_FAILED = "delivery_lock_failed"
    PAYMENT_CLAIM_FAILED = "payment_claim_failed"
    DELIVERY_CLAIM_FAILED = "delivery_claim_failed"
    PAYMENT_REFUND_FAILED = "payment_refund_failed"
    DELIVERY_REFUND_FAILED = "delivery_refund_failed"


class Flag(str):
    """A mark on a trade for its parties and the operator: a kind and, for most kinds, a
    subject (a lock id in hex, an effect key, an input type)."""

    __slots__ = ()

    @classmethod
    def of(cls, kind: FlagKind, subject: bytes | str | None = None) -> Flag:
        if subject is None:
            return cls(kind.value)
        return cls(f"{kind.value}:{subject.hex() if isinstance(subject, bytes) else subject}")

    @classmethod
    def failed(cls, effect: EffectKind) -> Flag:
        """The effect was given up for good (the chain says it can never succeed)."""
        return cls(f"{effect.value}_failed")

    @property
    def name(self) -> str:
        """The kind as written (a metric label): also for a flag of a kind this release does
        not know, read from an older row."""
        return self.partition(":")[0]

    def is_a(self, kind: FlagKind) -> bool:
        return self.name == kind.value

    @property
    def subject(self) -> str | None:
        return self.partition(":")[2] or None
