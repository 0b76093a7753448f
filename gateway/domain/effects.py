"""Outputs of the trade machine: transactions to make (`ContractSend*`, each with the key the
outbox and the pending set know it by) and notifications (`Event*`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from gateway.domain.locks import DeliveryLock, PaymentLock
from gateway.domain.marks import EffectKey, EffectKind, Flag
from gateway.domain.state import Chain, Phase


class _Send:
    """What every `ContractSend*` is known by: its kind and, for a claim or refund, its lock."""

    KIND: ClassVar[EffectKind]

    @property
    def key(self) -> EffectKey:
        return EffectKey.of(self.KIND, getattr(self, "lock_id", None))


@dataclass(frozen=True)
class ContractSendPaymentLock(_Send):
    trade_id: bytes
    lock: PaymentLock
    KIND: ClassVar[EffectKind] = EffectKind.PAYMENT_LOCK


@dataclass(frozen=True)
class ContractSendDeliveryLock(_Send):
    trade_id: bytes
    lock: DeliveryLock
    KIND: ClassVar[EffectKind] = EffectKind.DELIVERY_LOCK


@dataclass(frozen=True)
class ContractSendPaymentClaim(_Send):
    trade_id: bytes
    lock_id: bytes
    lock: PaymentLock
    preimage: bytes
    KIND: ClassVar[EffectKind] = EffectKind.PAYMENT_CLAIM


@dataclass(frozen=True)
class ContractSendDeliveryClaim(_Send):
    trade_id: bytes
    lock_id: bytes
    lock: DeliveryLock
    preimage: bytes
    KIND: ClassVar[EffectKind] = EffectKind.DELIVERY_CLAIM


@dataclass(frozen=True)
class ContractSendPaymentRefund(_Send):
    trade_id: bytes
    lock_id: bytes
    lock: PaymentLock
    KIND: ClassVar[EffectKind] = EffectKind.PAYMENT_REFUND


@dataclass(frozen=True)
class ContractSendDeliveryRefund(_Send):
    trade_id: bytes
    lock_id: bytes
    lock: DeliveryLock
    KIND: ClassVar[EffectKind] = EffectKind.DELIVERY_REFUND


@dataclass(frozen=True)
class EventPhaseChanged:
    trade_id: bytes
    old: Phase | None
    new: Phase


@dataclass(frozen=True)
class EventLockRejected:
    trade_id: bytes
    chain: Chain
    lock_id: bytes
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class EventClaimAtRisk:
    """The payment claim is due but may not be mined and final before `T_pay`."""

    trade_id: bytes
    payment_time: int
    t_pay: int
    sent: bool  # False: too late to be mined at all, not attempted


@dataclass(frozen=True)
class EventTradeFlagged:
    """Something a party or the operator must know about the trade that is not a phase: a lock
    the gateway could not make for a managed party, a leg the chain disagrees with. Sent as a
    webhook like a phase change."""

    trade_id: bytes
    flag: Flag
    reason: str


ContractSend = (ContractSendPaymentLock | ContractSendDeliveryLock | ContractSendPaymentClaim
                | ContractSendDeliveryClaim | ContractSendPaymentRefund
                | ContractSendDeliveryRefund)
Effect = (ContractSend | EventPhaseChanged | EventLockRejected | EventClaimAtRisk
          | EventTradeFlagged)


class InvalidTransition(Exception):
    """An action not allowed in the trade's current phase (the API answers 409)."""

    def __init__(self, phase: Phase, action: str) -> None:
        super().__init__(f"cannot {action} a trade in phase {phase}")
        self.phase = phase
        self.action = action


class InvariantViolated(AssertionError):
    pass
