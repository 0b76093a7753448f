"""A trade's stored state: the agreed terms, both legs as the chains recorded them, the phase.

Plain frozen values (encoded by `gateway.domain.codec`); the rules that move them live in
`gateway.domain.machine`, the readings of chain facts in `gateway.domain.facts`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import StrEnum
from functools import cache
from typing import Any, TypeVar

from gateway.domain.locks import DeliveryLock, PaymentLock
from gateway.domain.marks import EffectKey, Flag
from gateway.domain.policy import TimingPolicy


class Phase(StrEnum):
    PROPOSED = "proposed"
    AGREED = "agreed"
    PAYMENT_LOCKED = "payment_locked"
    DELIVERY_LOCKED = "delivery_locked"
    DELIVERED = "delivered"  # delivery claimed: the preimage is public, payment claim due
    SETTLED = "settled"  # both legs claimed
    DELIVERY_REFUNDED = "delivery_refunded"  # title back to the seller, payment refund due
    PAYMENT_REFUNDED = "payment_refunded"  # payment back to the buyer
    REJECTED = "rejected"  # T_pay passed; the buyer only ever locked payments off the terms
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # agreed, but nothing was locked before the payment deadline
    # Alerts: the exchange happened on one side only. Each is final unless the other side
    # still completes on chain (then the trade moves on to settled).
    PAID_WITHOUT_DELIVERY = "paid_without_delivery"  # seller paid, buyer has no title
    DELIVERED_UNPAID = "delivered_unpaid"  # buyer has the title and its money back


FINAL_PHASES = frozenset(
    {Phase.SETTLED, Phase.PAYMENT_REFUNDED, Phase.REJECTED, Phase.CANCELLED, Phase.EXPIRED,
     Phase.PAID_WITHOUT_DELIVERY, Phase.DELIVERED_UNPAID}
)
ALERT_PHASES = frozenset({Phase.PAID_WITHOUT_DELIVERY, Phase.DELIVERED_UNPAID})
# Final phases the chains can still overturn: a cancel, a rejection or an expiry never hides an
# exchange that completed on chain, and an alert phase becomes settled if the missing side
# completes after all.
REOPENABLE_PHASES = frozenset({Phase.CANCELLED, Phase.REJECTED, Phase.EXPIRED, *ALERT_PHASES})
EXCHANGE_PHASES = frozenset({Phase.DELIVERED, Phase.SETTLED, *ALERT_PHASES})


class Chain(StrEnum):
    PAYMENT = "payment"
    BUSINESS = "business"


class LegStatus(StrEnum):
    OPEN = "open"
    CLAIMED = "claimed"
    REFUNDED = "refunded"


@dataclass(frozen=True)
class Terms:
    """What buyer and seller agreed. Amounts are integer token units; times are unix seconds
    compared against block timestamps."""

    buyer_payment: str  # pays on the payment chain
    seller_payment: str  # is paid on the payment chain
    buyer_business: str  # receives the title on the business chain
    seller_business: str  # delivers the title on the business chain
    amount: int
    token_id: int
    document_hash: bytes
    hashlock: bytes
    t_deliver: int
    t_pay: int

    def expected_payment_lock(self) -> PaymentLock:
        return PaymentLock(self.buyer_payment, self.seller_payment, self.amount, self.hashlock,
                           self.t_pay)

    def expected_delivery_lock(self, trade_id: bytes) -> DeliveryLock:
        return DeliveryLock(self.seller_business, self.buyer_business, self.token_id,
                            self.document_hash, trade_id, self.hashlock, self.t_deliver)


AWAITING_HASHLOCK = b""  # a seller's proposal to a self-custody buyer: the buyer gives it


def is_hashlock(value: bytes | None) -> bool:
    return value is not None and len(value) == 32 and value != bytes(32)


def terms_problems(terms: Terms, policy: TimingPolicy) -> list[tuple[str, str]]:
    """(field, message) for every rule the terms break; empty when they are acceptable."""
    problems = []
    if terms.amount <= 0 or terms.amount >= 2**256:
        problems.append(("amount", "must be a positive integer below 2**256"))
    if terms.hashlock != AWAITING_HASHLOCK and not is_hashlock(terms.hashlock):
        problems.append(("hashlock", "must be 32 bytes, not all zero"))
    if len(terms.document_hash) != 32 or terms.document_hash == bytes(32):
        problems.append(("document_hash", "must be 32 bytes, not all zero"))
    if terms.token_id < 0 or terms.token_id >= 2**256:
        problems.append(("token_id", "must be a uint256"))
    margin = terms.t_pay - terms.t_deliver
    if margin < policy.required_margin:
        problems.append(("t_pay", f"T_pay - T_deliver is {margin} s; the minimum safety margin "
                                  f"is {policy.required_margin} s"))
    return problems


@dataclass(frozen=True)
class PaymentLeg:
    lock_id: bytes
    lock: PaymentLock
    status: LegStatus = LegStatus.OPEN
    block_number: int = 0  # where the lock was mined: final once the chain is final there


@dataclass(frozen=True)
class DeliveryLeg:
    lock_id: bytes
    lock: DeliveryLock
    status: LegStatus = LegStatus.OPEN
    block_number: int = 0  # where the lock was mined: final once the chain is final there


@dataclass(frozen=True)
class TradeState:
    trade_id: bytes
    terms: Terms
    phase: Phase
    managed_buyer: bool = False  # the gateway holds the buyer's keys and secret
    managed_seller: bool = False
    payment: PaymentLeg | None = None
    delivery: DeliveryLeg | None = None
    rejected_payments: tuple[PaymentLeg, ...] = ()  # buyer's locks not matching the terms
    other_deliveries: tuple[DeliveryLeg, ...] = ()  # delivery locks of this hashlock, flagged
    preimage: bytes | None = None  # public: seen in a Claimed log on either chain
    buyer_secret: bytes | None = None  # a managed buyer's secret, from take-delivery on
    payment_time: int = 0  # latest payment-chain block timestamp seen
    business_time: int = 0
    payment_finalized: int = 0  # highest payment block final by the chain's finality rule
    business_finalized: int = 0
    pending: frozenset[EffectKey] = frozenset()  # ContractSend* emitted, result not yet seen
    flags: tuple[Flag, ...] = ()


def is_active(state: TradeState) -> bool:
    """Still needs chain time: not final, effects pending, or a lock still open on chain."""
    legs = (state.payment, state.delivery, *state.rejected_payments, *state.other_deliveries)
    return (state.phase not in FINAL_PHASES or bool(state.pending)
            or any(leg is not None and leg.status is LegStatus.OPEN for leg in legs))


_T = TypeVar("_T")


@cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))


def evolve(obj: _T, **changes: Any) -> _T:  # noqa: ANN401 - a field's value
    """`dataclasses.replace` for the domain's frozen dataclasses (no `__post_init__`, no
    slots), five times faster: the machine makes a new state for almost every input, and
    `replace` re-runs `__init__` over every field of it."""
    if not changes.keys() <= _field_names(type(obj)):
        raise TypeError(f"{type(obj).__name__} has no field "
                        f"{sorted(changes.keys() - _field_names(type(obj)))}")
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__)
    new.__dict__.update(changes)
    return new
