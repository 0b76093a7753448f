"""The trade state machine: `state_transition(state, input) -> (state, effects)`.

Rules (read before changing anything here):
- Deterministic and pure: no I/O, no clock, no randomness. Time arrives as `Block` inputs, one
  per chain, carrying that chain's block timestamp: deadlines are judged by chain time only.
- Inputs (`Action*` from the API, `ContractReceive*` from chain logs, `Block`) and outputs
  (`ContractSend*` transactions to make, `Event*` notifications) are separate hierarchies.
- State is immutable; every step returns a new state and is followed by an invariant check.
- The chain is the source of truth. A leg's status changes only when its log is seen, whoever
  sent the transaction. Chain inputs never raise: duplicates and strays are no-ops or flags.
- Effects are reconciled, not scripted: after every input the machine computes which
  transactions the facts call for, emits those not already pending, and forgets pending ones
  the chain has made moot. So inputs may arrive in any order, twice, or after a restart.
- The payment is claimed only with a preimage that is public on chain. A managed buyer's own
  secret is used for one thing, taking delivery, and enters the state only with that action:
  until then it lives encrypted outside the domain, so no stored state or input holds it while
  the seller could still use it to be paid without delivering.
- The claims are tied: the title is claimed for the buyer only while the seller can still be
  paid, and the payment for the seller only while the buyer has or can still get the title.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from enum import StrEnum

from gateway.domain.locks import PREIMAGE_LENGTH, DeliveryLock, PaymentLock
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
_REOPENABLE = frozenset({Phase.CANCELLED, Phase.REJECTED, Phase.EXPIRED, *ALERT_PHASES})
_EXCHANGE_PHASES = frozenset({Phase.DELIVERED, Phase.SETTLED, *ALERT_PHASES})


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
    pending: frozenset[str] = frozenset()  # keys of ContractSend* emitted, result not yet seen
    flags: tuple[str, ...] = ()


def is_active(state: TradeState) -> bool:
    """Still needs chain time: not final, effects pending, or a lock still open on chain."""
    legs = (state.payment, state.delivery, *state.rejected_payments, *state.other_deliveries)
    return (state.phase not in FINAL_PHASES or bool(state.pending)
            or any(leg is not None and leg.status is LegStatus.OPEN for leg in legs))


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


# --- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainRef:
    """Where a log came from: (chain_id, tx_hash, log_index) identifies it uniquely."""

    chain_id: int
    block_number: int
    tx_hash: bytes
    log_index: int


@dataclass(frozen=True)
class ActionProposeTrade:
    trade_id: bytes
    terms: Terms
    managed_buyer: bool = False
    managed_seller: bool = False


@dataclass(frozen=True)
class ActionAcceptTrade:
    """The counterparty accepts. A trade proposed without a hashlock (a seller's proposal to a
    buyer that keeps its own secret) gets it here, from the buyer: trust rule 1, the secret
    holder alone sets the hashlock."""

    trade_id: bytes
    hashlock: bytes | None = None


@dataclass(frozen=True)
class ActionCancelTrade:
    trade_id: bytes


@dataclass(frozen=True)
class ActionTakeDelivery:
    """A managed buyer performs: claim the delivery with its secret, which the caller takes
    from the encrypted secret store. The input log records this action without it."""

    trade_id: bytes
    secret: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ContractReceivePaymentLocked:
    lock_id: bytes
    lock: PaymentLock
    ref: ChainRef


@dataclass(frozen=True)
class ContractReceiveDeliveryLocked:
    lock_id: bytes
    lock: DeliveryLock
    ref: ChainRef


@dataclass(frozen=True)
class ContractReceiveClaimed:
    chain: Chain
    lock_id: bytes
    preimage: bytes
    ref: ChainRef


@dataclass(frozen=True)
class ContractReceiveRefunded:
    chain: Chain
    lock_id: bytes
    ref: ChainRef


@dataclass(frozen=True)
class Block:
    """Time passing on a chain, and how far it is final: `finalized` is the highest block
    number final by the chain's finality rule (confirmations or the node's `finalized` tag);
    None: this block itself is (observation is finality); 0: no news of finality."""

    chain: Chain
    number: int
    timestamp: int
    finalized: int | None = None


@dataclass(frozen=True)
class PreimageRevealed:
    """The preimage was made public on a chain, in a block since reorganised away: it is still
    public (the transaction may be mined again by anyone), so both legs may be claimed with it."""

    preimage: bytes


@dataclass(frozen=True)
class EffectRefused:
    """The executor checked an effect against the chain before sending it and found that it
    cannot succeed: sending would only revert (a managed party's balance, allowance or title
    does not cover a lock) or its lock does not exist on chain. `final`: the effect is given up
    (the trade is flagged `<kind>_failed`, e.g. `payment_lock_failed`); otherwise it stays
    pending, is not sent while the chain says no, and the trade is flagged `blocked:<key>`."""

    trade_id: bytes
    key: str
    reason: str
    final: bool = True


@dataclass(frozen=True)
class ChainDisagrees:
    """The reconciler read a leg's status from its contract and it differs from the trade's
    record (a reorg or a node that came back short changed the chain under the gateway). The
    trade is flagged `chain_disagrees:<lock id>`; the chain's own logs still decide the legs."""

    trade_id: bytes
    chain: Chain
    lock_id: bytes
    recorded: str  # the leg's status in the trade: open / claimed / refunded
    on_chain: str  # the contract's: none / open / claimed / refunded


@dataclass(frozen=True)
class ChainBatch:
    """What a poller hands over: the logs of blocks (cursor, block.number] in order, the last
    block, and, after a reorganisation, the fork point to rewind to first. `checkpoints` are
    (number, hash) of blocks inside the batch to remember besides its last one, so that a fork
    point can be found close to where it is after a batch of many blocks."""

    chain: Chain
    chain_id: int
    inputs: list[ContractReceive]
    block: Block
    block_hash: bytes
    rewind_to: int | None = None
    checkpoints: tuple[tuple[int, bytes], ...] = ()


Action = ActionProposeTrade | ActionAcceptTrade | ActionCancelTrade | ActionTakeDelivery
ContractReceive = (ContractReceivePaymentLocked | ContractReceiveDeliveryLocked
                   | ContractReceiveClaimed | ContractReceiveRefunded)
Input = (Action | ContractReceive | Block | PreimageRevealed | EffectRefused
         | ChainDisagrees)


# --- effects --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContractSendPaymentLock:
    trade_id: bytes
    lock: PaymentLock

    @property
    def key(self) -> str:
        return "payment_lock"


@dataclass(frozen=True)
class ContractSendDeliveryLock:
    trade_id: bytes
    lock: DeliveryLock

    @property
    def key(self) -> str:
        return "delivery_lock"


@dataclass(frozen=True)
class ContractSendPaymentClaim:
    trade_id: bytes
    lock_id: bytes
    lock: PaymentLock
    preimage: bytes

    @property
    def key(self) -> str:
        return f"payment_claim:{self.lock_id.hex()}"


@dataclass(frozen=True)
class ContractSendDeliveryClaim:
    trade_id: bytes
    lock_id: bytes
    lock: DeliveryLock
    preimage: bytes

    @property
    def key(self) -> str:
        return f"delivery_claim:{self.lock_id.hex()}"


@dataclass(frozen=True)
class ContractSendPaymentRefund:
    trade_id: bytes
    lock_id: bytes
    lock: PaymentLock

    @property
    def key(self) -> str:
        return f"payment_refund:{self.lock_id.hex()}"


@dataclass(frozen=True)
class ContractSendDeliveryRefund:
    trade_id: bytes
    lock_id: bytes
    lock: DeliveryLock

    @property
    def key(self) -> str:
        return f"delivery_refund:{self.lock_id.hex()}"


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
    flag: str
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


# --- transition -----------------------------------------------------------------------------


@dataclass
class _Step:
    """The working state of one `state_transition` call (local to it, never shared)."""

    state: TradeState
    events: list[Effect] = field(default_factory=list)


def new_trade(action: ActionProposeTrade, policy: TimingPolicy) -> tuple[TradeState, list[Effect]]:
    """Create a trade from a proposal; raises ValueError listing the broken rules."""
    problems = terms_problems(action.terms, policy)
    if problems:
        raise ValueError("; ".join(f"{f}: {m}" for f, m in problems))
    state = TradeState(
        trade_id=action.trade_id, terms=action.terms, phase=Phase.PROPOSED,
        managed_buyer=action.managed_buyer, managed_seller=action.managed_seller,
    )
    return state, [EventPhaseChanged(action.trade_id, None, Phase.PROPOSED)]


def state_transition(state: TradeState, inp: Input,
                     policy: TimingPolicy) -> tuple[TradeState, list[Effect]]:
    """Apply one input to one trade. Raises InvalidTransition only for actions."""
    step = _Step(state)
    match inp:
        case ActionAcceptTrade():
            if state.phase is not Phase.PROPOSED:
                raise InvalidTransition(state.phase, "accept")
            step.state = replace(state, phase=Phase.AGREED, **_hashlock_at_accept(state, inp))
        case ActionCancelTrade():
            if state.phase not in (Phase.PROPOSED, Phase.AGREED) or state.payment or \
                    state.delivery or state.pending:
                raise InvalidTransition(state.phase, "cancel")
            step.state = replace(state, phase=Phase.CANCELLED)
        case ActionTakeDelivery():
            if not state.managed_buyer:
                raise InvalidTransition(state.phase, "take delivery for a self-custody buyer in")
            if state.delivery is None or state.delivery.status is not LegStatus.OPEN or \
                    state.phase is not Phase.DELIVERY_LOCKED:
                raise InvalidTransition(state.phase, "take delivery of")
            if not opens(inp.secret, state.terms.hashlock):
                raise ValueError(f"take delivery: the secret must be {PREIMAGE_LENGTH} bytes "
                                 "whose sha256 is the trade's hashlock")
            if not policy.delivery_claim_is_safe(state.business_time,
                                                 state.delivery.lock.timelock):
                raise InvalidTransition(state.phase, "take delivery (too close to T_deliver to "
                                                     "be final in time) of")
            if not _seller_can_still_be_paid(state, policy):
                raise InvalidTransition(state.phase, "take delivery (the payment could no "
                                                     "longer be claimed for the seller) of")
            step.state = replace(state, flags=_add(state.flags, "take_delivery"),
                                 buyer_secret=inp.secret)
        case ActionProposeTrade():
            raise InvalidTransition(state.phase, "propose again")
        case ContractReceivePaymentLocked():
            _on_payment_locked(step, inp, policy)
        case ContractReceiveDeliveryLocked():
            _on_delivery_locked(step, inp)
        case ContractReceiveClaimed():
            _on_exit(step, inp.chain, inp.lock_id, LegStatus.CLAIMED, inp.preimage)
        case ContractReceiveRefunded():
            _on_exit(step, inp.chain, inp.lock_id, LegStatus.REFUNDED, None)
        case EffectRefused():
            flag = f"{inp.key.partition(':')[0]}_failed" if inp.final else f"blocked:{inp.key}"
            _flag(step, flag, inp.reason)
        case ChainDisagrees():
            _flag(step, f"chain_disagrees:{inp.lock_id.hex()}",
                  f"{inp.chain} lock recorded {inp.recorded}, {inp.on_chain} on chain")
        case PreimageRevealed():
            if hashlib.sha256(inp.preimage).digest() == state.terms.hashlock:
                step.state = replace(state, preimage=inp.preimage)
        case Block(chain=Chain.PAYMENT):
            finalized = inp.number if inp.finalized is None else inp.finalized
            if inp.timestamp > state.payment_time or finalized > state.payment_finalized:
                step.state = replace(state, payment_time=max(inp.timestamp, state.payment_time),
                                     payment_finalized=max(finalized, state.payment_finalized))
        case Block(chain=Chain.BUSINESS):
            finalized = inp.number if inp.finalized is None else inp.finalized
            if inp.timestamp > state.business_time or finalized > state.business_finalized:
                step.state = replace(state,
                                     business_time=max(inp.timestamp, state.business_time),
                                     business_finalized=max(finalized,
                                                            state.business_finalized))
    _advance_phase(step, policy)
    effects = _reconcile(step, policy)
    if step.state.phase is not state.phase:
        step.events.insert(0, EventPhaseChanged(state.trade_id, state.phase, step.state.phase))
    check_invariants(state, step.state)
    return step.state, step.events + effects


def _flag(step: _Step, flag: str, reason: str) -> None:
    if flag not in step.state.flags:
        step.state = replace(step.state, flags=(*step.state.flags, flag))
        step.events.append(EventTradeFlagged(step.state.trade_id, flag, reason))


def _hashlock_at_accept(state: TradeState, inp: ActionAcceptTrade) -> dict:
    """The buyer's hashlock for a trade proposed without one; none may be given otherwise."""
    if state.terms.hashlock != AWAITING_HASHLOCK:
        if inp.hashlock is not None:
            raise ValueError("hashlock: this trade's hashlock was set at proposal")
        return {}
    if not is_hashlock(inp.hashlock):
        raise ValueError("hashlock: the buyer gives the sha256 hashlock of its 32-byte secret "
                         "when it accepts (32 bytes, not all zero)")
    return {"terms": replace(state.terms, hashlock=inp.hashlock),
            "flags": _add(state.flags, "hashlock_from_buyer")}


def opens(secret: bytes | None, hashlock: bytes) -> bool:
    """A preimage the contracts accept for this hashlock: exactly 32 bytes, sha256."""
    return secret is not None and len(secret) == PREIMAGE_LENGTH and \
        hashlib.sha256(secret).digest() == hashlock


def _seller_can_still_be_paid(s: TradeState, policy: TimingPolicy) -> bool:
    """The payment is claimed, or open with time left to claim it and see the claim final."""
    pay = s.payment
    return pay is not None and (pay.status is LegStatus.CLAIMED or (
        pay.status is LegStatus.OPEN and policy.claim_is_safe(s.payment_time,
                                                              pay.lock.timelock)))


def _seller_is_safe_to_deliver(s: TradeState, policy: TimingPolicy) -> bool:
    """Locking the title now leaves the seller paid even if the buyer takes delivery at the
    last business block before T_deliver: the payment chain then still has a claim's lead
    time before T_pay (both clocks assumed to run at the same pace from here)."""
    pay, t = s.payment, s.terms
    return pay is not None and pay.status is LegStatus.OPEN and \
        payment_lock_final(s, policy) and \
        policy.delivery_claim_is_safe(s.business_time, t.t_deliver) and \
        (t.t_pay - s.payment_time) - (t.t_deliver - s.business_time) >= \
        policy.claim_lead_time and policy.claim_is_safe(s.payment_time, pay.lock.timelock)


def _add(flags: tuple[str, ...], flag: str) -> tuple[str, ...]:
    return flags if flag in flags else (*flags, flag)


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


def _on_payment_locked(step: _Step, e: ContractReceivePaymentLocked,
                       policy: TimingPolicy) -> None:
    s = step.state
    known = [leg.lock_id for leg in (s.payment, *s.rejected_payments) if leg is not None]
    if e.lock_id in known:
        return
    if f"foreign_payment_lock:{e.lock_id.hex()}" in s.flags:
        return
    if e.lock.sender != s.terms.buyer_payment:
        # Anyone can lock with a public hashlock; only the buyer's lock can be this trade's.
        step.events.append(EventLockRejected(s.trade_id, Chain.PAYMENT, e.lock_id,
                                             ("sender is not the buyer",)))
        step.state = replace(s, flags=_add(s.flags, f"foreign_payment_lock:{e.lock_id.hex()}"))
        return
    problems = payment_lock_problems(e.lock, s.terms, policy)
    leg = PaymentLeg(e.lock_id, e.lock, block_number=e.ref.block_number)
    if problems or s.payment is not None or s.phase in FINAL_PHASES:
        reasons = tuple(problems) or (f"trade is {s.phase}"
                                      if s.payment is None else "a payment lock exists",)
        step.events.append(EventLockRejected(s.trade_id, Chain.PAYMENT, e.lock_id, reasons))
        step.state = replace(s, rejected_payments=(*s.rejected_payments, leg))
        return
    step.state = replace(s, payment=leg)


def _on_delivery_locked(step: _Step, e: ContractReceiveDeliveryLocked) -> None:
    s = step.state
    seen = (f"mismatched_delivery:{e.lock_id.hex()}", f"extra_delivery_lock:{e.lock_id.hex()}")
    if any(flag in s.flags for flag in seen):
        return
    other = (*s.other_deliveries, DeliveryLeg(e.lock_id, e.lock))
    if s.delivery is not None:
        if s.delivery.lock_id != e.lock_id:
            step.events.append(EventLockRejected(s.trade_id, Chain.BUSINESS, e.lock_id,
                                                 ("a delivery lock exists",)))
            step.state = replace(s, flags=_add(s.flags, seen[1]), other_deliveries=other)
        return
    problems = delivery_lock_problems(e.lock, s.terms, s.trade_id)
    if problems:
        # The buyer decides whether to take such a delivery; it is flagged, not matched. If
        # the buyer takes it, its secret is public and the seller is paid all the same.
        step.events.append(EventLockRejected(s.trade_id, Chain.BUSINESS, e.lock_id,
                                             tuple(problems)))
        step.state = replace(s, flags=_add(s.flags, f"mismatched_delivery:{e.lock_id.hex()}"),
                             other_deliveries=other)
        return
    flags = s.flags
    if s.payment is None:
        flags = _add(flags, "delivery_locked_before_payment")
    step.state = replace(s, delivery=DeliveryLeg(e.lock_id, e.lock,
                                                 block_number=e.ref.block_number), flags=flags)


def _on_exit(step: _Step, chain: Chain, lock_id: bytes, status: LegStatus,
             preimage: bytes | None) -> None:
    s = step.state
    if preimage is not None and hashlib.sha256(preimage).digest() == s.terms.hashlock:
        s = replace(s, preimage=preimage)
    if chain is Chain.PAYMENT:
        if s.payment is not None and s.payment.lock_id == lock_id:
            if s.payment.status is not LegStatus.OPEN:
                if s.payment.status is not status:  # a lock exits once; no chain says twice
                    s = replace(s, flags=_add(s.flags, f"contradictory_exit:{lock_id.hex()}"))
                step.state = s
                return
            s = replace(s, payment=replace(s.payment, status=status))
        else:
            legs = []
            for leg in s.rejected_payments:
                if leg.lock_id == lock_id and leg.status is LegStatus.OPEN:
                    leg = replace(leg, status=status)
                elif leg.lock_id == lock_id and leg.status is not status:
                    s = replace(s, flags=_add(s.flags, f"contradictory_exit:{lock_id.hex()}"))
                legs.append(leg)
            s = replace(s, rejected_payments=tuple(legs))
    elif s.delivery is not None and s.delivery.lock_id == lock_id:
        if s.delivery.status is not LegStatus.OPEN:
            if s.delivery.status is not status:
                s = replace(s, flags=_add(s.flags, f"contradictory_exit:{lock_id.hex()}"))
        else:
            s = replace(s, delivery=replace(s.delivery, status=status))
    else:
        others = tuple(replace(leg, status=status)
                       if leg.lock_id == lock_id and leg.status is LegStatus.OPEN else leg
                       for leg in s.other_deliveries)
        s = replace(s, other_deliveries=others)
    step.state = s


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


def _phase_for(s: TradeState, policy: TimingPolicy) -> Phase:
    """The phase the facts put the trade in (only ever called to move forward)."""
    exchange = _exchange_phase(s)
    if exchange is not None and (s.phase not in FINAL_PHASES or (
            s.phase in _REOPENABLE and exchange is not s.phase and (
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


def _advance_phase(step: _Step, policy: TimingPolicy) -> None:
    new = _phase_for(step.state, policy)
    if new is not step.state.phase:
        step.state = replace(step.state, phase=new)


def _wanted(s: TradeState, policy: TimingPolicy) -> tuple[list[ContractSend], list[Effect]]:
    """The transactions the facts call for right now, and notifications about them.

    A public secret pays the seller: once the preimage is on chain, one payment lock of the
    trade's terms (`payment_to_claim`) is claimed for the seller whatever the phase or flags
    say (only the buyer chose the secret, so only the buyer can have made it public). The
    title is claimed for the buyer only while the seller has or can still get the payment, so
    a public preimage never hands one party both.
    """
    wanted: list[ContractSend] = []
    notes: list[Effect] = []
    t = s.terms
    pay, dlv = s.payment, s.delivery
    pay_open = pay is not None and pay.status is LegStatus.OPEN
    dlv_open = dlv is not None and dlv.status is LegStatus.OPEN
    to_claim = payment_to_claim(s)
    seller_gets_paid = seller_paid(s) or (
        to_claim is not None and s.payment_time < to_claim.lock.timelock)
    if pay is not None and pay_open and s.payment_time >= pay.lock.timelock:
        wanted.append(ContractSendPaymentRefund(s.trade_id, pay.lock_id, pay.lock))
    if s.preimage is not None and to_claim is not None:
        claim = ContractSendPaymentClaim(s.trade_id, to_claim.lock_id, to_claim.lock, s.preimage)
        if policy.claim_is_safe(s.payment_time, to_claim.lock.timelock):
            wanted.append(claim)
        elif policy.claim_is_possible(s.payment_time, to_claim.lock.timelock):
            wanted.append(claim)
            if claim.key not in s.pending:
                notes.append(EventClaimAtRisk(s.trade_id, s.payment_time,
                                              to_claim.lock.timelock, sent=True))
        elif not any(f.startswith("at_risk:payment_claim:") for f in s.flags):
            # Reported once per trade: the operator acts on the trade, not on each lock.
            notes.append(EventClaimAtRisk(s.trade_id, s.payment_time,
                                          to_claim.lock.timelock, sent=False))
    for leg in s.rejected_payments:
        if leg.status is LegStatus.OPEN and s.payment_time >= leg.lock.timelock:
            wanted.append(ContractSendPaymentRefund(s.trade_id, leg.lock_id, leg.lock))
    for other in s.other_deliveries:
        if other.status is LegStatus.OPEN and s.business_time >= other.lock.timelock:
            wanted.append(ContractSendDeliveryRefund(s.trade_id, other.lock_id, other.lock))
    if dlv is not None and dlv_open:
        if s.business_time >= dlv.lock.timelock:
            wanted.append(ContractSendDeliveryRefund(s.trade_id, dlv.lock_id, dlv.lock))
        elif s.preimage is not None and seller_gets_paid:
            # The secret is public (e.g. a reorg dropped the buyer's own claim): the buyer paid,
            # the buyer gets the title.
            wanted.append(ContractSendDeliveryClaim(s.trade_id, dlv.lock_id, dlv.lock,
                                                    s.preimage))
        elif "take_delivery" in s.flags and s.buyer_secret is not None and \
                "delivery_claim_failed" not in s.flags and \
                policy.delivery_claim_is_safe(s.business_time, dlv.lock.timelock) and \
                _seller_can_still_be_paid(s, policy):
            # The managed buyer's private secret goes out only if the claim will be mined and
            # final before T_deliver: a late claim would publish it for nothing.
            wanted.append(ContractSendDeliveryClaim(s.trade_id, dlv.lock_id, dlv.lock,
                                                    s.buyer_secret))
    # Acting for managed parties: only while the counterparty still has time to act in turn.
    if s.managed_buyer and s.phase is Phase.AGREED and pay is None and \
            "payment_lock_failed" not in s.flags and \
            policy.leaves_time(s.payment_time, t.t_deliver):
        wanted.append(ContractSendPaymentLock(s.trade_id, t.expected_payment_lock()))
    if s.managed_seller and s.phase is Phase.PAYMENT_LOCKED and dlv is None and \
            "delivery_lock_failed" not in s.flags and _seller_is_safe_to_deliver(s, policy):
        wanted.append(ContractSendDeliveryLock(s.trade_id, t.expected_delivery_lock(s.trade_id)))
    return wanted, notes


def _reconcile(step: _Step, policy: TimingPolicy) -> list[Effect]:
    s = step.state
    wanted, notes = _wanted(s, policy)
    keys = {w.key for w in wanted}
    new = [w for w in wanted if w.key not in s.pending]
    flags = s.flags
    for note in notes:
        if isinstance(note, EventClaimAtRisk) and not note.sent:
            leg = payment_to_claim(s)
            assert leg is not None
            flags = _add(flags, f"at_risk:payment_claim:{leg.lock_id.hex()}")
    # A held effect (`blocked:<key>`: its lock was missing on chain) that is no longer pending
    # was done or given up: the flag goes with it.
    flags = tuple(f for f in flags if not f.startswith("blocked:") or f[8:] in keys)
    # Pending effects the facts no longer call for (the chain showed their result, or the
    # moment passed) are dropped; those still wanted stay pending exactly once.
    step.state = replace(s, pending=frozenset(keys), flags=flags)
    return [*new, *notes]


def check_invariants(before: TradeState, after: TradeState) -> None:
    if after.terms != before.terms and not (
            before.terms.hashlock == AWAITING_HASHLOCK and before.phase is Phase.PROPOSED
            and after.phase is Phase.AGREED
            and replace(after.terms, hashlock=AWAITING_HASHLOCK) == before.terms):
        raise InvariantViolated("terms changed other than by the buyer's hashlock at accept")
    if after.phase not in (Phase.PROPOSED, Phase.CANCELLED, Phase.EXPIRED) and \
            after.terms.hashlock == AWAITING_HASHLOCK:
        raise InvariantViolated(f"{after.phase} trade without a hashlock")
    if before.phase in FINAL_PHASES and after.phase is not before.phase and not (
            before.phase in _REOPENABLE and after.phase in _EXCHANGE_PHASES):
        raise InvariantViolated(f"left final phase {before.phase} for {after.phase}")
    for old, new in ((before.payment, after.payment), (before.delivery, after.delivery)):
        if old is not None and old.status is not LegStatus.OPEN and \
                (new is None or new.status is not old.status):
            raise InvariantViolated(f"leg {old.lock_id.hex()} left {old.status}")
    if after.payment and after.payment.status is LegStatus.CLAIMED and after.preimage is None:
        raise InvariantViolated("payment claimed but no public preimage recorded")
    if any(k.startswith("payment_claim") for k in after.pending) and after.preimage is None:
        raise InvariantViolated("payment claim pending without a public preimage")
    if after.preimage is not None and \
            hashlib.sha256(after.preimage).digest() != after.terms.hashlock:
        raise InvariantViolated("recorded preimage does not open the hashlock")
