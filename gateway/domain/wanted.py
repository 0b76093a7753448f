"""The transactions a trade's facts call for right now: the reconciled half of the machine.

`gateway.domain.machine` asks after every input and sends those not already pending, so each
part here reads the state afresh and never remembers what it asked for before. Read the rules
at the top of `gateway.domain.machine` before changing any of them.
"""

from __future__ import annotations

from gateway.domain.effects import (
    ContractSend,
    ContractSendDeliveryClaim,
    ContractSendDeliveryLock,
    ContractSendDeliveryRefund,
    ContractSendPaymentClaim,
    ContractSendPaymentLock,
    ContractSendPaymentRefund,
    Effect,
    EventClaimAtRisk,
)
from gateway.domain.facts import (
    payment_to_claim,
    seller_can_still_be_paid,
    seller_is_safe_to_deliver,
    seller_paid,
)
from gateway.domain.marks import EffectKind, Flag, FlagKind
from gateway.domain.policy import TimingPolicy
from gateway.domain.state import LegStatus, Phase, TradeState


def wanted(s: TradeState, policy: TimingPolicy) -> tuple[list[ContractSend], list[Effect]]:
    """The transactions the facts call for right now, and notifications about them.

    A public secret pays the seller: once the preimage is on chain, one payment lock of the
    trade's terms (`payment_to_claim`) is claimed for the seller whatever the phase or flags
    say (only the buyer chose the secret, so only the buyer can have made it public). The
    title is claimed for the buyer only while the seller has or can still get the payment, so
    a public preimage never hands one party both.
    """
    claim, notes = _payment_claim(s, policy)
    sends = [*_payment_refund(s), *claim, *_stray_refunds(s), *_delivery_exit(s, policy),
             *_managed_locks(s, policy)]
    return sends, notes


def _payment_refund(s: TradeState) -> list[ContractSend]:
    pay = s.payment
    if pay is not None and pay.status is LegStatus.OPEN and s.payment_time >= pay.lock.timelock:
        return [ContractSendPaymentRefund(s.trade_id, pay.lock_id, pay.lock)]
    return []


def _payment_claim(s: TradeState,
                   policy: TimingPolicy) -> tuple[list[ContractSend], list[Effect]]:
    """The seller's claim with the public preimage, sent while it can still be mined in time."""
    to_claim = payment_to_claim(s)
    if s.preimage is None or to_claim is None:
        return [], []
    timelock = to_claim.lock.timelock
    claim = ContractSendPaymentClaim(s.trade_id, to_claim.lock_id, to_claim.lock, s.preimage)
    if policy.claim_is_safe(s.payment_time, timelock):
        return [claim], []
    if policy.claim_is_possible(s.payment_time, timelock):
        if claim.key in s.pending:
            return [claim], []
        return [claim], [EventClaimAtRisk(s.trade_id, s.payment_time, timelock, sent=True)]
    if any(f.is_a(FlagKind.AT_RISK) for f in s.flags):
        # Reported once per trade: the operator acts on the trade, not on each lock.
        return [], []
    return [], [EventClaimAtRisk(s.trade_id, s.payment_time, timelock, sent=False)]


def _stray_refunds(s: TradeState) -> list[ContractSend]:
    """Locks that are not the trade's legs (rejected payments, other deliveries), once expired."""
    sends: list[ContractSend] = [
        ContractSendPaymentRefund(s.trade_id, leg.lock_id, leg.lock)
        for leg in s.rejected_payments
        if leg.status is LegStatus.OPEN and s.payment_time >= leg.lock.timelock]
    sends += [ContractSendDeliveryRefund(s.trade_id, other.lock_id, other.lock)
              for other in s.other_deliveries
              if other.status is LegStatus.OPEN and s.business_time >= other.lock.timelock]
    return sends


def _seller_gets_paid(s: TradeState) -> bool:
    to_claim = payment_to_claim(s)
    return seller_paid(s) or (to_claim is not None and s.payment_time < to_claim.lock.timelock)


def _delivery_exit(s: TradeState, policy: TimingPolicy) -> list[ContractSend]:
    """The open delivery lock's refund once expired, else its claim for the buyer if due."""
    dlv = s.delivery
    if dlv is None or dlv.status is not LegStatus.OPEN:
        return []
    if s.business_time >= dlv.lock.timelock:
        return [ContractSendDeliveryRefund(s.trade_id, dlv.lock_id, dlv.lock)]
    if s.preimage is not None and _seller_gets_paid(s):
        # The secret is public (e.g. a reorg dropped the buyer's own claim): the buyer paid,
        # the buyer gets the title.
        return [ContractSendDeliveryClaim(s.trade_id, dlv.lock_id, dlv.lock, s.preimage)]
    if Flag.of(FlagKind.TAKE_DELIVERY) in s.flags and s.buyer_secret is not None and \
            Flag.failed(EffectKind.DELIVERY_CLAIM) not in s.flags and \
            policy.delivery_claim_is_safe(s.business_time, dlv.lock.timelock) and \
            seller_can_still_be_paid(s, policy):
        # The managed buyer's private secret goes out only if the claim will be mined and
        # final before T_deliver: a late claim would publish it for nothing.
        return [ContractSendDeliveryClaim(s.trade_id, dlv.lock_id, dlv.lock, s.buyer_secret)]
    return []


def _managed_locks(s: TradeState, policy: TimingPolicy) -> list[ContractSend]:
    """Acting for managed parties: only while the counterparty still has time to act in turn."""
    t = s.terms
    sends: list[ContractSend] = []
    if s.managed_buyer and s.phase is Phase.AGREED and s.payment is None and \
            Flag.failed(EffectKind.PAYMENT_LOCK) not in s.flags and \
            policy.leaves_time(s.payment_time, t.t_deliver):
        sends.append(ContractSendPaymentLock(s.trade_id, t.expected_payment_lock()))
    if s.managed_seller and s.phase is Phase.PAYMENT_LOCKED and s.delivery is None and \
            Flag.failed(EffectKind.DELIVERY_LOCK) not in s.flags and \
            seller_is_safe_to_deliver(s, policy):
        sends.append(ContractSendDeliveryLock(s.trade_id, t.expected_delivery_lock(s.trade_id)))
    return sends
