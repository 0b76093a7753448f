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
  transactions the facts call for (`gateway.domain.wanted`), emits those not already pending,
  and forgets pending ones the chain has made moot. So inputs may arrive in any order, twice,
  or after a restart.
- The payment is claimed only with a preimage that is public on chain. A managed buyer's own
  secret is used for one thing, taking delivery, and enters the state only with that action:
  until then it lives encrypted outside the domain, so no stored state or input holds it while
  the seller could still use it to be paid without delivering.
- The claims are tied: the title is claimed for the buyer only while the seller can still be
  paid, and the payment for the seller only while the buyer has or can still get the title.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from gateway.domain.effects import (
    Effect,
    EventClaimAtRisk,
    EventLockRejected,
    EventPhaseChanged,
    EventTradeFlagged,
    InvalidTransition,
    InvariantViolated,
)
from gateway.domain.facts import (
    delivery_lock_problems,
    opens,
    payment_lock_problems,
    payment_to_claim,
    phase_for,
    seller_can_still_be_paid,
    wake_times,
)
from gateway.domain.inputs import (
    ActionAcceptTrade,
    ActionCancelTrade,
    ActionProposeTrade,
    ActionTakeDelivery,
    Block,
    ChainDisagrees,
    ContractReceiveClaimed,
    ContractReceiveDeliveryLocked,
    ContractReceivePaymentLocked,
    ContractReceiveRefunded,
    EffectRefused,
    Input,
    PreimageRevealed,
)
from gateway.domain.locks import PREIMAGE_LENGTH
from gateway.domain.marks import EffectKey, EffectKind, Flag, FlagKind
from gateway.domain.policy import TimingPolicy
from gateway.domain.state import (
    AWAITING_HASHLOCK,
    EXCHANGE_PHASES,
    FINAL_PHASES,
    REOPENABLE_PHASES,
    Chain,
    DeliveryLeg,
    LegStatus,
    PaymentLeg,
    Phase,
    TradeState,
    evolve,
    is_hashlock,
    terms_problems,
)
from gateway.domain.wanted import wanted


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
            step.state = evolve(state, phase=Phase.AGREED, **_hashlock_at_accept(state, inp))
        case ActionCancelTrade():
            if state.phase not in (Phase.PROPOSED, Phase.AGREED) or state.payment or \
                    state.delivery or state.pending:
                raise InvalidTransition(state.phase, "cancel")
            step.state = evolve(state, phase=Phase.CANCELLED)
        case ActionTakeDelivery():
            step.state = _take_delivery(state, inp, policy)
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
            key = EffectKey(inp.key)
            flag = Flag.failed(key.kind) if inp.final else Flag.of(FlagKind.BLOCKED, key)
            _flag(step, flag, inp.reason)
        case ChainDisagrees():
            _flag(step, Flag.of(FlagKind.CHAIN_DISAGREES, inp.lock_id),
                  f"{inp.chain} lock recorded {inp.recorded}, {inp.on_chain} on chain")
        case PreimageRevealed():
            if hashlib.sha256(inp.preimage).digest() == state.terms.hashlock:
                step.state = evolve(state, preimage=inp.preimage)
        case Block(chain=Chain.PAYMENT):
            step.state = _on_block(state, inp, "payment")
        case Block(chain=Chain.BUSINESS):
            step.state = _on_block(state, inp, "business")
    _advance_phase(step, policy)
    effects = _reconcile(step, policy)
    if step.state.phase is not state.phase:
        step.events.insert(0, EventPhaseChanged(state.trade_id, state.phase, step.state.phase))
    check_invariants(state, step.state)
    return step.state, step.events + effects


def _take_delivery(state: TradeState, inp: ActionTakeDelivery,
                   policy: TimingPolicy) -> TradeState:
    """Admit the managed buyer's secret only for a claim that can still be final in time."""
    if not state.managed_buyer:
        raise InvalidTransition(state.phase, "take delivery for a self-custody buyer in")
    if state.delivery is None or state.delivery.status is not LegStatus.OPEN or \
            state.phase is not Phase.DELIVERY_LOCKED:
        raise InvalidTransition(state.phase, "take delivery of")
    if not opens(inp.secret, state.terms.hashlock):
        raise ValueError(f"take delivery: the secret must be {PREIMAGE_LENGTH} bytes "
                         "whose sha256 is the trade's hashlock")
    if not policy.delivery_claim_is_safe(state.business_time, state.delivery.lock.timelock):
        raise InvalidTransition(state.phase, "take delivery (too close to T_deliver to "
                                             "be final in time) of")
    if not seller_can_still_be_paid(state, policy):
        raise InvalidTransition(state.phase, "take delivery (the payment could no "
                                             "longer be claimed for the seller) of")
    return evolve(state, flags=_add(state.flags, Flag.of(FlagKind.TAKE_DELIVERY)),
                   buyer_secret=inp.secret)


def block_transition(state: TradeState, block: Block,
                     policy: TimingPolicy) -> tuple[TradeState, list[Effect]]:
    """`state_transition(state, block, policy)`, without running the rules when the block is
    before its chain's wake time (`wake_times`): such a block moves that chain's clock and
    finality and nothing else, which the machine's tests check against the rules on every
    state they reach. The dispatcher gives every trade it touches a block or two per batch;
    most only move its clock."""
    wake = wake_times(state, policy)[0 if block.chain is Chain.PAYMENT else 1]
    if wake != 0 and (wake is None or block.timestamp < wake):
        return _on_block(state, block, block.chain.value), []
    return state_transition(state, block, policy)


def _on_block(state: TradeState, inp: Block, side: str) -> TradeState:
    """A chain's time and finality only move forward: a stale or replayed block is a no-op."""
    time, final = f"{side}_time", f"{side}_finalized"
    finalized = inp.number if inp.finalized is None else inp.finalized
    if inp.timestamp <= getattr(state, time) and finalized <= getattr(state, final):
        return state
    return evolve(state, **{time: max(inp.timestamp, getattr(state, time)),
                             final: max(finalized, getattr(state, final))})


def _flag(step: _Step, flag: Flag, reason: str) -> None:
    if flag not in step.state.flags:
        step.state = evolve(step.state, flags=(*step.state.flags, flag))
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
    return {"terms": evolve(state.terms, hashlock=inp.hashlock),
            "flags": _add(state.flags, Flag.of(FlagKind.HASHLOCK_FROM_BUYER))}


def _add(flags: tuple[Flag, ...], flag: Flag) -> tuple[Flag, ...]:
    return flags if flag in flags else (*flags, flag)


def _contradictory(lock_id: bytes) -> Flag:
    return Flag.of(FlagKind.CONTRADICTORY_EXIT, lock_id)


def _on_payment_locked(step: _Step, e: ContractReceivePaymentLocked,
                       policy: TimingPolicy) -> None:
    s = step.state
    known = [leg.lock_id for leg in (s.payment, *s.rejected_payments) if leg is not None]
    if e.lock_id in known:
        return
    if Flag.of(FlagKind.FOREIGN_PAYMENT_LOCK, e.lock_id) in s.flags:
        return
    if e.lock.sender != s.terms.buyer_payment:
        # Anyone can lock with a public hashlock; only the buyer's lock can be this trade's.
        step.events.append(EventLockRejected(s.trade_id, Chain.PAYMENT, e.lock_id,
                                             ("sender is not the buyer",)))
        foreign = Flag.of(FlagKind.FOREIGN_PAYMENT_LOCK, e.lock_id)
        step.state = evolve(s, flags=_add(s.flags, foreign))
        return
    problems = payment_lock_problems(e.lock, s.terms, policy)
    leg = PaymentLeg(e.lock_id, e.lock, block_number=e.ref.block_number)
    if problems or s.payment is not None or s.phase in FINAL_PHASES:
        reasons = tuple(problems) or (f"trade is {s.phase}"
                                      if s.payment is None else "a payment lock exists",)
        step.events.append(EventLockRejected(s.trade_id, Chain.PAYMENT, e.lock_id, reasons))
        step.state = evolve(s, rejected_payments=(*s.rejected_payments, leg))
        return
    step.state = evolve(s, payment=leg)


def _on_delivery_locked(step: _Step, e: ContractReceiveDeliveryLocked) -> None:
    s = step.state
    seen = (Flag.of(FlagKind.MISMATCHED_DELIVERY, e.lock_id),
            Flag.of(FlagKind.EXTRA_DELIVERY_LOCK, e.lock_id))
    if any(flag in s.flags for flag in seen):
        return
    other = (*s.other_deliveries, DeliveryLeg(e.lock_id, e.lock))
    if s.delivery is not None:
        if s.delivery.lock_id != e.lock_id:
            step.events.append(EventLockRejected(s.trade_id, Chain.BUSINESS, e.lock_id,
                                                 ("a delivery lock exists",)))
            step.state = evolve(s, flags=_add(s.flags, seen[1]), other_deliveries=other)
        return
    problems = delivery_lock_problems(e.lock, s.terms, s.trade_id)
    if problems:
        # The buyer decides whether to take such a delivery; it is flagged, not matched. If
        # the buyer takes it, its secret is public and the seller is paid all the same.
        step.events.append(EventLockRejected(s.trade_id, Chain.BUSINESS, e.lock_id,
                                             tuple(problems)))
        step.state = evolve(s, flags=_add(s.flags, seen[0]), other_deliveries=other)
        return
    flags = s.flags
    if s.payment is None:
        flags = _add(flags, Flag.of(FlagKind.DELIVERY_LOCKED_BEFORE_PAYMENT))
    step.state = evolve(s, delivery=DeliveryLeg(e.lock_id, e.lock,
                                                 block_number=e.ref.block_number), flags=flags)


def _on_exit(step: _Step, chain: Chain, lock_id: bytes, status: LegStatus,
             preimage: bytes | None) -> None:
    s = step.state
    if preimage is not None and hashlib.sha256(preimage).digest() == s.terms.hashlock:
        s = evolve(s, preimage=preimage)
    if chain is Chain.PAYMENT:
        if s.payment is not None and s.payment.lock_id == lock_id:
            if s.payment.status is not LegStatus.OPEN:
                if s.payment.status is not status:  # a lock exits once; no chain says twice
                    s = evolve(s, flags=_add(s.flags, _contradictory(lock_id)))
                step.state = s
                return
            s = evolve(s, payment=evolve(s.payment, status=status))
        else:
            legs = []
            for leg in s.rejected_payments:
                if leg.lock_id == lock_id and leg.status is LegStatus.OPEN:
                    leg = evolve(leg, status=status)
                elif leg.lock_id == lock_id and leg.status is not status:
                    s = evolve(s, flags=_add(s.flags, _contradictory(lock_id)))
                legs.append(leg)
            s = evolve(s, rejected_payments=tuple(legs))
    elif s.delivery is not None and s.delivery.lock_id == lock_id:
        if s.delivery.status is not LegStatus.OPEN:
            if s.delivery.status is not status:
                s = evolve(s, flags=_add(s.flags, _contradictory(lock_id)))
        else:
            s = evolve(s, delivery=evolve(s.delivery, status=status))
    else:
        others = tuple(evolve(leg, status=status)
                       if leg.lock_id == lock_id and leg.status is LegStatus.OPEN else leg
                       for leg in s.other_deliveries)
        s = evolve(s, other_deliveries=others)
    step.state = s


def _advance_phase(step: _Step, policy: TimingPolicy) -> None:
    new = phase_for(step.state, policy)
    if new is not step.state.phase:
        step.state = evolve(step.state, phase=new)


def _reconcile(step: _Step, policy: TimingPolicy) -> list[Effect]:
    s = step.state
    sends, notes = wanted(s, policy)
    keys = {w.key for w in sends}
    new = [w for w in sends if w.key not in s.pending]
    flags = s.flags
    for note in notes:
        if isinstance(note, EventClaimAtRisk) and not note.sent:
            leg = payment_to_claim(s)
            assert leg is not None
            flags = _add(flags, Flag.of(FlagKind.AT_RISK,
                                          EffectKey.of(EffectKind.PAYMENT_CLAIM, leg.lock_id)))
    # A held effect (`blocked:<key>`: its lock was missing on chain) that is no longer pending
    # was done or given up: the flag goes with it.
    flags = tuple(f for f in flags if not f.is_a(FlagKind.BLOCKED) or f.subject in keys)
    # Pending effects the facts no longer call for (the chain showed their result, or the
    # moment passed) are dropped; those still wanted stay pending exactly once.
    step.state = evolve(s, pending=frozenset(keys), flags=flags)
    return [*new, *notes]


def check_invariants(before: TradeState, after: TradeState) -> None:
    if after.terms != before.terms and not (
            before.terms.hashlock == AWAITING_HASHLOCK and before.phase is Phase.PROPOSED
            and after.phase is Phase.AGREED
            and evolve(after.terms, hashlock=AWAITING_HASHLOCK) == before.terms):
        raise InvariantViolated("terms changed other than by the buyer's hashlock at accept")
    if after.phase not in (Phase.PROPOSED, Phase.CANCELLED, Phase.EXPIRED) and \
            after.terms.hashlock == AWAITING_HASHLOCK:
        raise InvariantViolated(f"{after.phase} trade without a hashlock")
    if before.phase in FINAL_PHASES and after.phase is not before.phase and not (
            before.phase in REOPENABLE_PHASES and after.phase in EXCHANGE_PHASES):
        raise InvariantViolated(f"left final phase {before.phase} for {after.phase}")
    for old, new in ((before.payment, after.payment), (before.delivery, after.delivery)):
        if old is not None and old.status is not LegStatus.OPEN and \
                (new is None or new.status is not old.status):
            raise InvariantViolated(f"leg {old.lock_id.hex()} left {old.status}")
    if after.payment and after.payment.status is LegStatus.CLAIMED and after.preimage is None:
        raise InvariantViolated("payment claimed but no public preimage recorded")
    if any(k.kind is EffectKind.PAYMENT_CLAIM for k in after.pending) and after.preimage is None:
        raise InvariantViolated("payment claim pending without a public preimage")
    if after.preimage is not None and \
            hashlib.sha256(after.preimage).digest() != after.terms.hashlock:
        raise InvariantViolated("recorded preimage does not open the hashlock")
