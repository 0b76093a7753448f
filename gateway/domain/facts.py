"""What the chains' facts mean for a trade: which locks match its terms, who has been paid or
has taken delivery, when a lock is final, which phase the facts make, and when a block could
next change the trade. Pure functions of a `TradeState` (and the timing policy)."""

from __future__ import annotations

import hashlib

from gateway.domain.locks import PREIMAGE_LENGTH, DeliveryLock, PaymentLock
from gateway.domain.policy import TimingPolicy
from gateway.domain.state import (
    ALERT_PHASES,
    FINAL_PHASES,
    REOPENABLE_PHASES,
    LegStatus,
    PaymentLeg,
    Phase,
    Terms,
    TradeState,
)


def wake_times(s: TradeState, policy: TimingPolicy) -> tuple[int | None, int | None]:
    """The earliest payment-chain and business-chain block timestamps at which a `Block` could
    change the trade beyond its clock; None: no block of that chain ever can.

    A block before its chain's wake time leaves the trade as it is but for that clock (the
    trade machine's tests check this on every state they reach), so the dispatcher gives each
    batch's block only to the trades it wakes, and to those its logs concern, instead of to
    every open trade. Each value is the lowest deadline threshold still ahead of the trade's
    clock among every time comparison the rules make; a stale (earlier) clock only makes it
    earlier. A managed seller about to lock weighs both clocks against each other: woken by
    every block."""
    if s.managed_seller and s.phase is Phase.PAYMENT_LOCKED and s.delivery is None:
        return 0, 0
    payment, business = _wake_times(s, policy)
    if s.payment is not None and s.payment.status is LegStatus.OPEN and \
            not payment_lock_final(s, policy):
        payment = 0  # every payment block may make it final
    if s.delivery is not None and s.delivery.status is LegStatus.OPEN and \
            not delivery_lock_final(s, policy):
        business = 0
    return payment, business


def _wake_times(s: TradeState, policy: TimingPolicy) -> tuple[int | None, int | None]:
    t, lead, delivery_lead = s.terms, policy.claim_lead_time, policy.delivery_claim_lead_time
    payment = [t.t_pay, t.t_deliver - lead]
    business = [t.t_deliver - delivery_lead]
    if s.payment is not None:
        timelock = s.payment.lock.timelock
        payment += [timelock, timelock - lead, timelock - 1]
    for leg in s.rejected_payments:
        payment += [leg.lock.timelock, leg.lock.timelock - lead, leg.lock.timelock - 1]
    if s.delivery is not None:
        business += [s.delivery.lock.timelock, s.delivery.lock.timelock - delivery_lead]
    business += [leg.lock.timelock for leg in s.other_deliveries]
    return (min((x for x in payment if x > s.payment_time), default=None),
            min((x for x in business if x > s.business_time), default=None))


def deadline_without_progress(state: TradeState, horizon: int) -> str | None:
    """Which deadline an open trade is within `horizon` seconds of (by its own chain's time)
    without having done what is due before it: "delivery" (the title is not yet taken before
    T_deliver) or "payment" (the secret is public, the payment not yet claimed before T_pay).
    An operator alert, not a decision: the machine's rules do not read it."""
    t = state.terms
    if state.phase in (Phase.AGREED, Phase.PAYMENT_LOCKED, Phase.DELIVERY_LOCKED) and \
            state.business_time >= t.t_deliver - horizon:
        return "delivery"
    if state.phase is Phase.DELIVERED and state.payment is not None and \
            state.payment.status is LegStatus.OPEN and state.payment_time >= t.t_pay - horizon:
        return "payment"
    return None


def opens(secret: bytes | None, hashlock: bytes) -> bool:
    """A preimage the contracts accept for this hashlock: exactly 32 bytes, sha256."""
    return secret is not None and len(secret) == PREIMAGE_LENGTH and \
        hashlib.sha256(secret).digest() == hashlock


def seller_can_still_be_paid(s: TradeState, policy: TimingPolicy) -> bool:
    """The payment is claimed, or open with time left to claim it and see the claim final."""
    pay = s.payment
    return pay is not None and (pay.status is LegStatus.CLAIMED or (
        pay.status is LegStatus.OPEN and policy.claim_is_safe(s.payment_time,
                                                              pay.lock.timelock)))


def seller_is_safe_to_deliver(s: TradeState, policy: TimingPolicy) -> bool:
    """Locking the title now leaves the seller paid even if the buyer takes delivery at the
    last business block before T_deliver: the payment chain then still has a claim's lead
    time before T_pay (both clocks assumed to run at the same pace from here)."""
    pay, t = s.payment, s.terms
    return pay is not None and pay.status is LegStatus.OPEN and \
        payment_lock_final(s, policy) and \
        policy.delivery_claim_is_safe(s.business_time, t.t_deliver) and \
        (t.t_pay - s.payment_time) - (t.t_deliver - s.business_time) >= \
        policy.claim_lead_time and policy.claim_is_safe(s.payment_time, pay.lock.timelock)


def payment_lock_problems(lock: PaymentLock, terms: Terms, policy: TimingPolicy) -> list[str]:
    expected = terms.expected_payment_lock()
    problems = []
    if lock.beneficiary != expected.beneficiary:
        problems.append(f"beneficiary {lock.beneficiary} is not the seller {expected.beneficiary}")
    if lock.amount != expected.amount:
        problems.append(f"amount {lock.amount} is not the agreed {expected.amount}")
    if lock.hashlock != expected.hashlock:
        problems.append("hashlock is not the agreed hashlock")
    if lock.timelock != expected.timelock:
        problems.append(f"timelock {lock.timelock} is not the agreed T_pay {expected.timelock}")
    if lock.timelock - terms.t_deliver < policy.required_margin:
        problems.append(f"margin {lock.timelock - terms.t_deliver} s after T_deliver is below "
                        f"the required {policy.required_margin} s")
    return problems


def delivery_lock_problems(lock: DeliveryLock, terms: Terms, trade_id: bytes) -> list[str]:
    expected = terms.expected_delivery_lock(trade_id)
    names = ("seller", "buyer", "token_id", "document_hash", "trade_id", "hashlock", "timelock")
    return [f"{name} does not match the terms"
            for name, got, want in zip(names, lock.as_tuple(), expected.as_tuple(), strict=True)
            if got != want]


def pays_seller(lock: PaymentLock, terms: Terms) -> bool:
    """A payment lock of this trade's terms but perhaps its timelock: the buyer's money for
    the seller under this hashlock, the agreed amount. Once the secret is public, one such lock
    is claimed for the seller whatever else the trade says."""
    return (lock.sender, lock.beneficiary, lock.hashlock, lock.amount) == (
        terms.buyer_payment, terms.seller_payment, terms.hashlock, terms.amount)


def _seller_legs(s: TradeState) -> list[PaymentLeg]:
    return [leg for leg in (s.payment, *s.rejected_payments)
            if leg is not None and pays_seller(leg.lock, s.terms)]


def seller_paid(s: TradeState) -> bool:
    return any(leg.status is LegStatus.CLAIMED for leg in _seller_legs(s))


def buyer_took_delivery(s: TradeState) -> bool:
    """The buyer claimed the agreed delivery lock, or another lock of the agreed title for the
    buyer it chose to take instead (another title, or a lock for someone else, claimed by
    anyone, is no delivery to the buyer)."""
    return any(leg is not None and leg.status is LegStatus.CLAIMED
               and leg.lock.buyer == s.terms.buyer_business
               and leg.lock.token_id == s.terms.token_id
               for leg in (s.delivery, *s.other_deliveries))


def payment_to_claim(s: TradeState) -> PaymentLeg | None:
    """The one payment lock to claim for the seller once the secret is public: the agreed lock
    if it is still claimable, else the claimable seller-paying lock with the most time left
    (else the open one past its timelock, for the report that its claim was abandoned); None
    when the seller was paid already or no such lock is open."""
    legs = _seller_legs(s)
    if any(leg.status is LegStatus.CLAIMED for leg in legs):
        return None
    open_ = [leg for leg in legs if leg.status is LegStatus.OPEN]
    pool = [leg for leg in open_ if s.payment_time < leg.lock.timelock] or open_
    if s.payment is not None and s.payment in pool:
        return s.payment
    return max(pool, key=lambda leg: leg.lock.timelock, default=None)


def _exchange_phase(s: TradeState) -> Phase | None:
    """What the claims on chain say, whatever was agreed, cancelled or rejected: None while
    neither side was claimed."""
    paid, took = seller_paid(s), buyer_took_delivery(s)
    if paid and took:
        return Phase.SETTLED
    if took:
        # The title went to the buyer: the payment is due, unless no lock can pay any more.
        leg = payment_to_claim(s)
        if (leg is not None and s.payment_time < leg.lock.timelock) or \
                s.payment_time < s.terms.t_pay:
            return Phase.DELIVERED
        return Phase.DELIVERED_UNPAID
    if paid:
        dlv = s.delivery
        if dlv is not None and dlv.status is LegStatus.OPEN and \
                s.business_time < dlv.lock.timelock:
            return Phase.DELIVERED  # the title is claimed for the buyer with the public secret
        return Phase.PAID_WITHOUT_DELIVERY
    return None


def phase_for(s: TradeState, policy: TimingPolicy) -> Phase:
    """The phase the facts put the trade in (only ever called to move forward)."""
    exchange = _exchange_phase(s)
    if exchange is not None and (s.phase not in FINAL_PHASES or (
            s.phase in REOPENABLE_PHASES and exchange is not s.phase and (
                exchange is Phase.SETTLED or s.phase not in ALERT_PHASES))):
        return exchange
    if s.phase in FINAL_PHASES:
        return s.phase
    pay = s.payment.status if s.payment else None
    dlv = s.delivery.status if s.delivery else None
    if s.phase is Phase.PROPOSED:
        # Locks seen before the counterparty accepted do not make an agreement: nothing is
        # done on anyone's behalf until the trade is accepted, and a lock does not move it.
        # Only facts that end or perform the trade do (above), and the payment deadline.
        if pay is LegStatus.REFUNDED:
            return Phase.PAYMENT_REFUNDED
        return Phase.EXPIRED if s.payment_time >= s.terms.t_pay else s.phase
    facts = _facts_phase(pay, dlv, payment_lock_final(s, policy),
                         delivery_lock_final(s, policy))
    nothing_open = pay is not LegStatus.OPEN and dlv is not LegStatus.OPEN
    if nothing_open and s.payment_time >= s.terms.t_pay and facts is Phase.DELIVERY_REFUNDED:
        # Every lock has exited and no payment lock can be made any more: the trade is over.
        return Phase.REJECTED if s.rejected_payments else Phase.EXPIRED
    if facts is not None:
        return facts
    if s.phase is Phase.AGREED and s.payment_time >= s.terms.t_pay and pay is not \
            LegStatus.OPEN:
        # A lock off the terms does not end the trade while the right one may still come; a
        # lock of the terms not final yet ends it when its refund is seen (payment_refunded).
        return Phase.REJECTED if s.rejected_payments else Phase.EXPIRED
    return s.phase


def payment_lock_final(s: TradeState, policy: TimingPolicy) -> bool:
    """The payment lock is final by the payment chain's finality rule: no reorg the gateway
    handles can undo it (trust rule 2: deliver only against a final lock). Where the rule is
    the poller's own confirmation depth, every lock it hands over is final."""
    return s.payment is not None and (not policy.waits_for_payment_finality or
                                      s.payment.block_number <= s.payment_finalized)


def delivery_lock_final(s: TradeState, policy: TimingPolicy) -> bool:
    """The title lock is final by the business chain's rule: the buyer reveals its secret
    against it only then (a reorg could otherwise take the lock back after the secret is
    public, and the seller would be paid and keep the title)."""
    return s.delivery is not None and (not policy.waits_for_business_finality or
                                       s.delivery.block_number <= s.business_finalized)


def _facts_phase(pay: LegStatus | None, dlv: LegStatus | None,
                 final: bool = True, delivery_final: bool = True) -> Phase | None:
    """The phase the two legs' on-chain status imply when neither was claimed, if any. A
    lock not yet final is not reported as verified (`payment_locked`, `delivery_locked`)."""
    if pay is LegStatus.REFUNDED:
        return Phase.PAYMENT_REFUNDED
    if dlv is LegStatus.REFUNDED:
        return Phase.DELIVERY_REFUNDED
    if pay is LegStatus.OPEN and dlv is LegStatus.OPEN and delivery_final:
        return Phase.DELIVERY_LOCKED
    if pay is LegStatus.OPEN and final:
        return Phase.PAYMENT_LOCKED
    return None
