"""Phase x input table of the pure trade state machine (`gateway.domain.trade`).

Every case builds a trade in one phase from real inputs (`trade_in`), applies one input and
checks the resulting phase and the exact effects, in order. Chain time arrives only as `Block`
inputs; the table trade starts with both chains at `T0`, far from every deadline.

Conventions of the tables below:
- `same(*effects)`: the phase does not change and exactly these effects are returned;
- `to(phase, *effects)`: the trade moves to `phase`;
- `CONTRADICTORY`: the input contradicts a leg exit already seen (a claimed lock refunded, a
  refunded lock claimed). No contract can log it (reorganisations are handled by replaying the
  trade from scratch), so it is ignored: the leg keeps its first exit, nothing is emitted and
  the trade is flagged `contradictory_exit:<lock id>`.

The claims are tied (see `gateway.domain.wanted`): the payment is claimed for the seller only
while the buyer has or can still get the title, and the title is claimed for the buyer from a
public preimage only while the seller has or can still get paid.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

import pytest

from gateway.domain.codec import decode, encode
from gateway.domain.policy import TimingPolicy
from gateway.domain.trade import (
    AWAITING_HASHLOCK,
    FINAL_PHASES,
    ActionAcceptTrade,
    ActionCancelTrade,
    ActionProposeTrade,
    ActionTakeDelivery,
    Block,
    Chain,
    ChainDisagrees,
    ChainRef,
    ContractReceiveClaimed,
    ContractReceiveDeliveryLocked,
    ContractReceivePaymentLocked,
    ContractReceiveRefunded,
    ContractSend,
    ContractSendDeliveryClaim,
    ContractSendDeliveryLock,
    ContractSendDeliveryRefund,
    ContractSendPaymentClaim,
    ContractSendPaymentLock,
    ContractSendPaymentRefund,
    Effect,
    EffectRefused,
    EventClaimAtRisk,
    EventLockRejected,
    EventPhaseChanged,
    EventTradeFlagged,
    Input,
    InvalidTransition,
    InvariantViolated,
    LegStatus,
    Phase,
    PreimageRevealed,
    Terms,
    TradeState,
    check_invariants,
    deadline_without_progress,
    is_active,
    new_trade,
    state_transition,
    terms_problems,
    wake_times,
)

PAYMENT, BUSINESS = Chain.PAYMENT, Chain.BUSINESS
POLICY = TimingPolicy()
LEAD = POLICY.claim_lead_time  # 51 s with the default policy
DLEAD = POLICY.delivery_claim_lead_time  # 51 s with the default policy, on the business chain
MARGIN = POLICY.required_margin  # 162 s with the default policy


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def lock_id(name: str) -> bytes:
    """An opaque, distinct 32-byte lock id per name."""
    return sha256(b"lock id " + name.encode())


SECRET = bytes(range(1, 33))
HASHLOCK = sha256(SECRET)
OTHER_SECRET = b"\x77" * 32  # opens another hashlock, e.g. an unrelated lock's
TRADE_ID = sha256(b"trade 1")
T0 = 1_700_000_000
T_DELIVER = T0 + 3_600
T_PAY = T_DELIVER + MARGIN + 600
BUYER_PAY, SELLER_PAY = "0x" + "b0" * 20, "0x" + "5e" * 20
BUYER_BIZ, SELLER_BIZ = "0x" + "b1" * 20, "0x" + "51" * 20
MALLORY = "0x" + "ee" * 20
AMOUNT, TOKEN_ID = 1_000, 7
TERMS = Terms(
    buyer_payment=BUYER_PAY, seller_payment=SELLER_PAY, buyer_business=BUYER_BIZ,
    seller_business=SELLER_BIZ, amount=AMOUNT, token_id=TOKEN_ID,
    document_hash=sha256(b"bill of lading 1"), hashlock=HASHLOCK, t_deliver=T_DELIVER,
    t_pay=T_PAY,
)
PAY_LOCK = TERMS.expected_payment_lock()
DLV_LOCK = TERMS.expected_delivery_lock(TRADE_ID)

PAY_ID, PAY2_ID, DLV_ID, DLV2_ID = lock_id("pay"), lock_id("pay2"), lock_id("dlv"), lock_id("dlv2")
PAY_AMOUNT_ID, PAY_BENEFICIARY_ID = lock_id("pay amount"), lock_id("pay beneficiary")
PAY_FOREIGN_ID, DLV_BAD_ID, STRAY_ID = lock_id("pay foreign"), lock_id("dlv bad"), lock_id("stray")


def ref(chain: Chain, n: int) -> ChainRef:
    chain_id = 71_001 if chain is PAYMENT else 71_002
    return ChainRef(chain_id, 100 + n, sha256(b"tx %d %d" % (chain_id, n)), n % 3)


def pay_locked(lid: bytes, lock=PAY_LOCK, n: int = 1) -> ContractReceivePaymentLocked:
    return ContractReceivePaymentLocked(lid, lock, ref(PAYMENT, n))


def dlv_locked(lid: bytes, lock=DLV_LOCK, n: int = 1) -> ContractReceiveDeliveryLocked:
    return ContractReceiveDeliveryLocked(lid, lock, ref(BUSINESS, n))


def claimed(chain: Chain, lid: bytes, preimage: bytes = SECRET) -> ContractReceiveClaimed:
    return ContractReceiveClaimed(chain, lid, preimage, ref(chain, 50))


def refunded(chain: Chain, lid: bytes) -> ContractReceiveRefunded:
    return ContractReceiveRefunded(chain, lid, ref(chain, 60))


# --- inputs ---------------------------------------------------------------------------------

ACCEPT, CANCEL, TAKE = (ActionAcceptTrade(TRADE_ID), ActionCancelTrade(TRADE_ID),
                        ActionTakeDelivery(TRADE_ID, SECRET))
PAY_OK = pay_locked(PAY_ID)
PAY_SECOND = pay_locked(PAY2_ID, n=2)
AMOUNT_LOCK = replace(PAY_LOCK, amount=AMOUNT + 1)
PAY_AMOUNT = pay_locked(PAY_AMOUNT_ID, AMOUNT_LOCK, n=3)
BENEFICIARY_LOCK = replace(PAY_LOCK, beneficiary=MALLORY)
PAY_BENEFICIARY = pay_locked(PAY_BENEFICIARY_ID, BENEFICIARY_LOCK, n=4)
PAY_FOREIGN = pay_locked(PAY_FOREIGN_ID, replace(PAY_LOCK, sender=MALLORY), n=5)
DLV_OK = dlv_locked(DLV_ID)
DLV_SECOND = dlv_locked(DLV2_ID, n=2)
DLV_BAD = dlv_locked(DLV_BAD_ID, replace(DLV_LOCK, token_id=TOKEN_ID + 1), n=3)
CLAIM_DLV = claimed(BUSINESS, DLV_ID)
CLAIM_PAY = claimed(PAYMENT, PAY_ID)
CLAIM_STRAY_BIZ = claimed(BUSINESS, STRAY_ID)  # another lock under the trade's hashlock
CLAIM_STRAY_PAY = claimed(PAYMENT, STRAY_ID)
CLAIM_OTHER_BIZ = claimed(BUSINESS, STRAY_ID, OTHER_SECRET)  # an unrelated lock's claim
CLAIM_OTHER_PAY = claimed(PAYMENT, STRAY_ID, OTHER_SECRET)
REFUND_DLV = refunded(BUSINESS, DLV_ID)
REFUND_PAY = refunded(PAYMENT, PAY_ID)
REVEAL = PreimageRevealed(SECRET)
REVEAL_WRONG = PreimageRevealed(OTHER_SECRET)
PAY_EARLY = Block(PAYMENT, 10, T0 + 60)
PAY_RISKY = Block(PAYMENT, 11, T_PAY - LEAD)  # a claim sent now is not safe, still possible
PAY_LAST = Block(PAYMENT, 12, T_PAY - 1)  # a claim sent now can no longer be mined
PAY_AT = Block(PAYMENT, 13, T_PAY)
PAY_AFTER = Block(PAYMENT, 14, T_PAY + 100)
BIZ_BEFORE = Block(BUSINESS, 10, T_DELIVER - 1)
BIZ_AT = Block(BUSINESS, 11, T_DELIVER)
BIZ_AFTER = Block(BUSINESS, 12, T_DELIVER + 100)

# --- effects --------------------------------------------------------------------------------

PAY_CLAIM = ContractSendPaymentClaim(TRADE_ID, PAY_ID, PAY_LOCK, SECRET)
DLV_CLAIM = ContractSendDeliveryClaim(TRADE_ID, DLV_ID, DLV_LOCK, SECRET)
PAY_REFUND = ContractSendPaymentRefund(TRADE_ID, PAY_ID, PAY_LOCK)
DLV_REFUND = ContractSendDeliveryRefund(TRADE_ID, DLV_ID, DLV_LOCK)
SEND_PAY_LOCK = ContractSendPaymentLock(TRADE_ID, PAY_LOCK)
SEND_DLV_LOCK = ContractSendDeliveryLock(TRADE_ID, DLV_LOCK)
R_AMOUNT = f"amount {AMOUNT + 1} is not the agreed {AMOUNT}"
R_BENEFICIARY = f"beneficiary {MALLORY} is not the seller {SELLER_PAY}"


def changed(old: str, new: str) -> EventPhaseChanged:
    return EventPhaseChanged(TRADE_ID, Phase(old), Phase(new))


def lock_rejected(chain: Chain, lid: bytes, *reasons: str) -> EventLockRejected:
    return EventLockRejected(TRADE_ID, chain, lid, reasons)


def at_risk(payment_time: int, sent: bool) -> EventClaimAtRisk:
    return EventClaimAtRisk(TRADE_ID, payment_time, T_PAY, sent)


# --- building a trade in each phase ---------------------------------------------------------

BUILD: dict[str, tuple[Input, ...]] = {
    "proposed": (),
    "agreed": (ACCEPT,),
    "payment_locked": (ACCEPT, PAY_OK),
    "delivery_locked": (ACCEPT, PAY_OK, DLV_OK),
    "delivered": (ACCEPT, PAY_OK, DLV_OK, CLAIM_DLV),
    "settled": (ACCEPT, PAY_OK, DLV_OK, CLAIM_DLV, CLAIM_PAY),
    "delivery_refunded": (ACCEPT, PAY_OK, DLV_OK, BIZ_AT, REFUND_DLV),
    "payment_refunded": (ACCEPT, PAY_OK, DLV_OK, BIZ_AT, REFUND_DLV, PAY_AT, REFUND_PAY),
    "rejected": (ACCEPT, PAY_BENEFICIARY, PAY_AT),
    "cancelled": (CANCEL,),
    "expired": (ACCEPT, PAY_AT),
    "paid_without_delivery": (ACCEPT, PAY_OK, CLAIM_PAY),
    "delivered_unpaid": (ACCEPT, PAY_OK, DLV_OK, CLAIM_DLV, PAY_AT, REFUND_PAY),
}
PHASES = list(BUILD)
assert set(PHASES) == {p.value for p in Phase}


def step(state: TradeState, inp: Input,
         policy: TimingPolicy = POLICY) -> tuple[TradeState, list[Effect]]:
    return state_transition(state, inp, policy)


def run(state: TradeState, *inputs: Input) -> TradeState:
    for inp in inputs:
        state, _ = step(state, inp)
    return state


def propose(managed_buyer: bool = False, managed_seller: bool = False,
            terms: Terms = TERMS) -> TradeState:
    """A proposed trade whose chains both stand at T0."""
    action = ActionProposeTrade(TRADE_ID, terms, managed_buyer, managed_seller)
    state, effects = new_trade(action, POLICY)
    assert effects == [EventPhaseChanged(TRADE_ID, None, Phase.PROPOSED)]
    return run(state, Block(PAYMENT, 1, T0), Block(BUSINESS, 1, T0))


def trade_in(phase: str, managed_buyer: bool = False, managed_seller: bool = False) -> TradeState:
    state = run(propose(managed_buyer, managed_seller), *BUILD[phase])
    assert state.phase is Phase(phase)
    return state


def sends(effects: list[Effect]) -> list[ContractSend]:
    return [e for e in effects if isinstance(e, ContractSend)]


# --- the table: chain inputs ----------------------------------------------------------------

CONTRADICTORY = "contradictory"
Expected = tuple[str | None, list[Effect]] | str


def same(*effects: Effect) -> Expected:
    return (None, list(effects))


def to(phase: str, *effects: Effect) -> Expected:
    return (phase, list(effects))


def every(**rows: Expected) -> dict[str, Expected]:
    assert list(rows) == PHASES, "a table row lists every phase, in order"
    return rows



def unchanged_everywhere(*effects: Effect) -> dict[str, Expected]:
    return every(**{phase: same(*effects) for phase in PHASES})


PREIMAGE_MADE_PUBLIC = every(  # the preimage becomes known, no leg changes status
    proposed=same(), agreed=same(),
    # Only the buyer chose the secret, so only the buyer made it public: whatever it took in
    # exchange (another lock of this hashlock, say), a public secret pays the seller.
    payment_locked=same(PAY_CLAIM),
    delivery_locked=same(PAY_CLAIM, DLV_CLAIM), delivered=same(), settled=same(),
    delivery_refunded=same(PAY_CLAIM),
    payment_refunded=same(), rejected=same(), cancelled=same(), expired=same(),
    paid_without_delivery=same(), delivered_unpaid=same(),
)


def payment_deadline(payment_time: int) -> dict[str, Expected]:
    """The row of a payment block at or after T_pay (at `payment_time`)."""
    return every(
        proposed=to("expired", changed("proposed", "expired")),
        agreed=to("expired", changed("agreed", "expired")),
        payment_locked=same(PAY_REFUND), delivery_locked=same(PAY_REFUND),
        # The preimage is known and the buyer has the title, but T_pay has passed: the claim
        # is abandoned (reported once), the payment goes back to the buyer and the trade says
        # the seller lost.
        delivered=to("delivered_unpaid", changed("delivered", "delivered_unpaid"), PAY_REFUND,
                     at_risk(payment_time, sent=False)),
        settled=same(), delivery_refunded=same(PAY_REFUND), payment_refunded=same(),
        rejected=same(),  # (its lock's refund is pending since T_pay)
        cancelled=same(), expired=same(), paid_without_delivery=same(), delivered_unpaid=same(),
    )


HAVE_DELIVERY = ("delivery_locked", "delivered", "settled", "delivery_refunded",
                 "payment_refunded", "delivered_unpaid")
DELIVERY_DEADLINE = every(**{p: same(DLV_REFUND) if p == "delivery_locked" else same()
                             for p in PHASES})

CHAIN_TABLE: dict[str, tuple[Input, dict[str, Expected]]] = {
    "payment-locked": (PAY_OK, every(
        proposed=same(),  # recorded, but nothing happens before acceptance
        agreed=to("payment_locked", changed("agreed", "payment_locked")),
        payment_locked=same(), delivery_locked=same(), delivered=same(), settled=same(),
        delivery_refunded=same(), payment_refunded=same(),  # duplicates of the lock log
        rejected=same(lock_rejected(PAYMENT, PAY_ID, "trade is rejected"), PAY_REFUND),
        cancelled=same(lock_rejected(PAYMENT, PAY_ID, "trade is cancelled")),
        expired=same(lock_rejected(PAYMENT, PAY_ID, "trade is expired"), PAY_REFUND),
        paid_without_delivery=same(), delivered_unpaid=same(),
    )),
    "second-payment-locked": (PAY_SECOND, every(
        proposed=same(), agreed=to("payment_locked", changed("agreed", "payment_locked")),
        payment_locked=same(lock_rejected(PAYMENT, PAY2_ID, "a payment lock exists")),
        delivery_locked=same(lock_rejected(PAYMENT, PAY2_ID, "a payment lock exists")),
        delivered=same(lock_rejected(PAYMENT, PAY2_ID, "a payment lock exists")),
        settled=same(lock_rejected(PAYMENT, PAY2_ID, "a payment lock exists")),
        delivery_refunded=same(lock_rejected(PAYMENT, PAY2_ID, "a payment lock exists")),
        payment_refunded=same(lock_rejected(PAYMENT, PAY2_ID, "a payment lock exists"),
                              ContractSendPaymentRefund(TRADE_ID, PAY2_ID, PAY_LOCK)),
        rejected=same(lock_rejected(PAYMENT, PAY2_ID, "trade is rejected"),
                      ContractSendPaymentRefund(TRADE_ID, PAY2_ID, PAY_LOCK)),
        cancelled=same(lock_rejected(PAYMENT, PAY2_ID, "trade is cancelled")),
        expired=same(lock_rejected(PAYMENT, PAY2_ID, "trade is expired"),
                     ContractSendPaymentRefund(TRADE_ID, PAY2_ID, PAY_LOCK)),
        paid_without_delivery=same(lock_rejected(PAYMENT, PAY2_ID, "a payment lock exists")),
        # A lock that could have paid the seller, made too late: refunded (the abandoned
        # claim was reported once, at T_pay).
        delivered_unpaid=same(lock_rejected(PAYMENT, PAY2_ID, "a payment lock exists"),
                              ContractSendPaymentRefund(TRADE_ID, PAY2_ID, PAY_LOCK)),
    )),
    "payment-locked-wrong-amount": (PAY_AMOUNT, every(
        proposed=same(lock_rejected(PAYMENT, PAY_AMOUNT_ID, R_AMOUNT)),
        # Flagged and refunded at its timelock; the trade waits for the right lock until T_pay.
        agreed=same(lock_rejected(PAYMENT, PAY_AMOUNT_ID, R_AMOUNT)),
        **{p: same(lock_rejected(PAYMENT, PAY_AMOUNT_ID, R_AMOUNT))
           for p in ("payment_locked", "delivery_locked", "delivered", "settled",
                     "delivery_refunded")},
        payment_refunded=same(lock_rejected(PAYMENT, PAY_AMOUNT_ID, R_AMOUNT),
                              ContractSendPaymentRefund(TRADE_ID, PAY_AMOUNT_ID, AMOUNT_LOCK)),
        rejected=same(lock_rejected(PAYMENT, PAY_AMOUNT_ID, R_AMOUNT),
                      ContractSendPaymentRefund(TRADE_ID, PAY_AMOUNT_ID, AMOUNT_LOCK)),
        cancelled=same(lock_rejected(PAYMENT, PAY_AMOUNT_ID, R_AMOUNT)),
        expired=same(lock_rejected(PAYMENT, PAY_AMOUNT_ID, R_AMOUNT),
                     ContractSendPaymentRefund(TRADE_ID, PAY_AMOUNT_ID, AMOUNT_LOCK)),
        paid_without_delivery=same(lock_rejected(PAYMENT, PAY_AMOUNT_ID, R_AMOUNT)),
        delivered_unpaid=same(lock_rejected(PAYMENT, PAY_AMOUNT_ID, R_AMOUNT),
                              ContractSendPaymentRefund(TRADE_ID, PAY_AMOUNT_ID, AMOUNT_LOCK)),
    )),
    "payment-locked-by-foreign-sender": (PAY_FOREIGN, unchanged_everywhere(
        lock_rejected(PAYMENT, PAY_FOREIGN_ID, "sender is not the buyer"))),
    "delivery-locked": (DLV_OK, every(
        proposed=same(), agreed=same(),  # before the payment: recorded and flagged
        payment_locked=to("delivery_locked", changed("payment_locked", "delivery_locked")),
        delivery_locked=same(), delivered=same(), settled=same(), delivery_refunded=same(),
        payment_refunded=same(), rejected=same(), cancelled=same(), expired=same(),
        # The seller was paid without delivering; a title locked now is claimed for the buyer.
        paid_without_delivery=same(DLV_CLAIM), delivered_unpaid=same(),
    )),
    "second-delivery-locked": (DLV_SECOND, every(
        proposed=same(), agreed=same(),
        payment_locked=to("delivery_locked", changed("payment_locked", "delivery_locked")),
        **{p: same(lock_rejected(BUSINESS, DLV2_ID, "a delivery lock exists"))
           for p in ("delivery_locked", "delivered", "settled")},
        # After T_deliver: the extra title goes back to the seller as well.
        **{p: same(lock_rejected(BUSINESS, DLV2_ID, "a delivery lock exists"),
                   ContractSendDeliveryRefund(TRADE_ID, DLV2_ID, DLV_LOCK))
           for p in ("delivery_refunded", "payment_refunded")},
        rejected=same(), cancelled=same(), expired=same(),
        paid_without_delivery=same(ContractSendDeliveryClaim(TRADE_ID, DLV2_ID, DLV_LOCK,
                                                             SECRET)),
        delivered_unpaid=same(lock_rejected(BUSINESS, DLV2_ID, "a delivery lock exists")),
    )),
    "delivery-locked-wrong-token": (DLV_BAD, every(**{
        p: same(lock_rejected(BUSINESS, DLV_BAD_ID, "a delivery lock exists"
                              if p in HAVE_DELIVERY else "token_id does not match the terms"),
                *([ContractSendDeliveryRefund(TRADE_ID, DLV_BAD_ID, DLV_BAD.lock)]
                  if p in ("delivery_refunded", "payment_refunded") else []))
        for p in PHASES})),
    "delivery-claimed": (CLAIM_DLV, every(
        proposed=same(), agreed=same(),  # no delivery lock yet: only the preimage is learnt
        payment_locked=same(PAY_CLAIM),  # a lock unknown to us: the secret is public
        delivery_locked=to("delivered", changed("delivery_locked", "delivered"), PAY_CLAIM),
        delivered=same(), settled=same(),
        delivery_refunded=CONTRADICTORY, payment_refunded=CONTRADICTORY,
        rejected=same(), cancelled=same(), expired=same(),
        paid_without_delivery=same(), delivered_unpaid=same(),
    )),
    "payment-claimed": (CLAIM_PAY, every(
        proposed=same(), agreed=same(),
        # Paid while the buyer has no title: never "delivered" or "settled", an alert phase.
        payment_locked=to("paid_without_delivery",
                          changed("payment_locked", "paid_without_delivery")),
        delivery_locked=to("delivered", changed("delivery_locked", "delivered"), DLV_CLAIM),
        delivered=to("settled", changed("delivered", "settled")),
        settled=same(),
        delivery_refunded=to("paid_without_delivery",
                             changed("delivery_refunded", "paid_without_delivery")),
        payment_refunded=CONTRADICTORY,
        rejected=same(), cancelled=same(), expired=same(),
        paid_without_delivery=same(), delivered_unpaid=CONTRADICTORY,
    )),
    "claimed-unknown-lock-business": (CLAIM_STRAY_BIZ, PREIMAGE_MADE_PUBLIC),
    "claimed-unknown-lock-payment": (CLAIM_STRAY_PAY, PREIMAGE_MADE_PUBLIC),
    "preimage-revealed": (REVEAL, PREIMAGE_MADE_PUBLIC),
    "claimed-other-hashlock-business": (CLAIM_OTHER_BIZ, unchanged_everywhere()),
    "claimed-other-hashlock-payment": (CLAIM_OTHER_PAY, unchanged_everywhere()),
    "wrong-preimage-revealed": (REVEAL_WRONG, unchanged_everywhere()),
    "delivery-refunded": (REFUND_DLV, every(
        proposed=same(), agreed=same(), payment_locked=same(),
        delivery_locked=to("delivery_refunded", changed("delivery_locked", "delivery_refunded")),
        delivered=CONTRADICTORY, settled=CONTRADICTORY,
        delivery_refunded=same(), payment_refunded=same(),
        rejected=same(), cancelled=same(), expired=same(),
        paid_without_delivery=same(), delivered_unpaid=CONTRADICTORY,
    )),
    "payment-refunded": (REFUND_PAY, every(
        proposed=same(), agreed=same(),
        payment_locked=to("payment_refunded", changed("payment_locked", "payment_refunded")),
        delivery_locked=to("payment_refunded", changed("delivery_locked", "payment_refunded")),
        delivered=same(),  # the buyer has the title: "delivered_unpaid" once T_pay has passed
        settled=CONTRADICTORY,
        delivery_refunded=to("payment_refunded",
                             changed("delivery_refunded", "payment_refunded")),
        payment_refunded=same(), rejected=same(), cancelled=same(), expired=same(),
        paid_without_delivery=CONTRADICTORY, delivered_unpaid=same(),
    )),
    "payment-block-early": (PAY_EARLY, unchanged_everywhere()),
    "payment-block-claim-unsafe": (PAY_RISKY, unchanged_everywhere()),  # pending claim stays
    "payment-block-last-second": (PAY_LAST, every(**{
        p: same(at_risk(T_PAY - 1, sent=False)) if p == "delivered" else same()
        for p in PHASES})),
    "payment-block-at-t_pay": (PAY_AT, payment_deadline(T_PAY)),
    "payment-block-after-t_pay": (PAY_AFTER, payment_deadline(T_PAY + 100)),
    "business-block-before-t_deliver": (BIZ_BEFORE, unchanged_everywhere()),
    "business-block-at-t_deliver": (BIZ_AT, DELIVERY_DEADLINE),
    "business-block-after-t_deliver": (BIZ_AFTER, DELIVERY_DEADLINE),
}

CHAIN_CASES = [
    pytest.param(phase, inp, expected, id=f"{phase}-{name}")
    for name, (inp, rows) in CHAIN_TABLE.items()
    for phase, expected in rows.items()
]


@pytest.mark.parametrize(("phase", "inp", "expected"), CHAIN_CASES)
def test_chain_input(phase: str, inp: Input, expected: Expected) -> None:
    state = trade_in(phase)
    if expected == CONTRADICTORY:
        assert isinstance(inp, ContractReceiveClaimed | ContractReceiveRefunded)
        after, out = step(state, inp)
        # The leg keeps its status and the trade is flagged; a preimage in the log is public
        # all the same (a node cannot forge one), so it may still pay the seller.
        claims = [e for e in out if isinstance(e, ContractSendPaymentClaim)]
        assert out == claims and after.phase is state.phase
        assert (after.payment, after.delivery) == (state.payment, state.delivery)
        assert after.flags == (*state.flags, f"contradictory_exit:{inp.lock_id.hex()}")
        assert after.pending == state.pending | {c.key for c in claims}
        return
    new_phase, effects = expected
    after, out = step(state, inp)
    assert after.phase is Phase(new_phase or phase)
    assert out == effects
    # Pending is exactly what was outstanding and is still called for, plus what was emitted.
    assert {e.key for e in sends(out)} <= after.pending
    assert not {e.key for e in sends(out)} & state.pending


# --- the table: actions ---------------------------------------------------------------------

RAISES = "raises"
ACTION_TABLE: dict[str, tuple[Input, bool, dict[str, Expected | str]]] = {
    "accept": (ACCEPT, False, {p: to("agreed", changed("proposed", "agreed"))
                               if p == "proposed" else RAISES for p in PHASES}),
    "cancel": (CANCEL, False, {p: to("cancelled", changed(p, "cancelled"))
                               if p in ("proposed", "agreed") else RAISES for p in PHASES}),
    "take-delivery-self-custody-buyer": (TAKE, False, {p: RAISES for p in PHASES}),
    "take-delivery-managed-buyer": (TAKE, True, {p: same(DLV_CLAIM)
                                                 if p == "delivery_locked" else RAISES
                                                 for p in PHASES}),
    "propose-again": (ActionProposeTrade(TRADE_ID, TERMS), False, {p: RAISES for p in PHASES}),
}
ACTION_CASES = [
    pytest.param(phase, inp, managed_buyer, expected, id=f"{phase}-{name}")
    for name, (inp, managed_buyer, rows) in ACTION_TABLE.items()
    for phase, expected in rows.items()
]


@pytest.mark.parametrize(("phase", "action", "managed_buyer", "expected"), ACTION_CASES)
def test_action(phase: str, action: Input, managed_buyer: bool, expected: Expected) -> None:
    state = trade_in(phase, managed_buyer=managed_buyer)
    snapshot = encode(state)
    if expected == RAISES:
        with pytest.raises(InvalidTransition) as info:
            step(state, action)
        assert info.value.phase is state.phase
        assert encode(state) == snapshot
        return
    new_phase, effects = expected
    after, out = step(state, action)
    assert after.phase is Phase(new_phase or phase)
    assert out == effects


def test_take_delivery_uses_the_private_secret_only_for_the_delivery_claim() -> None:
    state = trade_in("delivery_locked", managed_buyer=True)
    after, out = step(state, TAKE)
    assert out == [DLV_CLAIM]
    assert after.preimage is None  # the secret is not public until the claim is mined
    assert after.pending == {DLV_CLAIM.key}
    # Nothing else makes the payment claimable: time passing, duplicates, the action again.
    for inp in (PAY_EARLY, DLV_OK, PAY_OK, Block(BUSINESS, 5, T_DELIVER - DLEAD - 1), TAKE):
        after, out = step(after, inp)
        assert out == []
        assert not any(k.startswith("payment_claim") for k in after.pending)
    # The claim mined on the business chain makes the preimage public: now the seller is paid.
    after, out = step(after, CLAIM_DLV)
    assert out == [changed("delivery_locked", "delivered"), ContractSendPaymentClaim(
        TRADE_ID, PAY_ID, PAY_LOCK, SECRET)]
    assert after.pending == {PAY_CLAIM.key}


def test_take_delivery_after_t_deliver_is_refused() -> None:
    state = run(trade_in("delivery_locked", managed_buyer=True), BIZ_AT)
    assert state.pending == {DLV_REFUND.key}
    with pytest.raises(InvalidTransition, match="too close to T_deliver"):
        step(state, TAKE)


@pytest.mark.parametrize("business_time", [T_DELIVER - DLEAD, T_DELIVER - 2, T_DELIVER - 1])
def test_managed_buyer_secret_is_not_broadcast_when_the_claim_cannot_be_final(
        business_time: int) -> None:
    """Too close to T_deliver the claim might not be mined and final in time: it would only
    publish the buyer's secret. The action is refused and the state left as it was."""
    state = run(trade_in("delivery_locked", managed_buyer=True), Block(BUSINESS, 5, business_time))
    with pytest.raises(InvalidTransition, match="too close to T_deliver") as info:
        step(state, TAKE)
    assert info.value.phase is Phase.DELIVERY_LOCKED


def test_take_delivery_boundary_follows_the_business_chain_lead_time() -> None:
    ok = run(trade_in("delivery_locked", managed_buyer=True),
             Block(BUSINESS, 5, T_DELIVER - DLEAD - 1))
    assert step(ok, TAKE)[1] == [DLV_CLAIM]
    # The business chain's own numbers decide, not the payment chain's.
    slow = TimingPolicy(business_block_time=20)  # delivery lead 3 * 20 + 15 = 75 s
    assert slow.delivery_claim_lead_time == 75 and slow.claim_lead_time == 51
    state = run(trade_in("delivery_locked", managed_buyer=True), Block(BUSINESS, 5, T_DELIVER - 60))
    assert step(state, TAKE)[1] == [DLV_CLAIM]
    with pytest.raises(InvalidTransition):
        step(state, TAKE, slow)


def test_pending_take_delivery_is_forgotten_once_it_could_not_be_final() -> None:
    """The claim was asked for in time; once the business chain is within the lead time of
    T_deliver it is not asked for again (a restart re-sends nothing), and at T_deliver the
    title goes back to the seller."""
    state = run(trade_in("delivery_locked", managed_buyer=True), TAKE)
    assert state.pending == {DLV_CLAIM.key}
    state, out = step(state, Block(BUSINESS, 5, T_DELIVER - DLEAD))
    assert out == [] and state.pending == frozenset()
    state, out = step(state, BIZ_AT)
    assert out == [DLV_REFUND] and state.preimage is None


@pytest.mark.parametrize("public", [False, True], ids=["private-secret", "after-a-reorg"])
def test_managed_buyer_takes_no_delivery_once_the_seller_can_no_longer_be_paid(
        public: bool) -> None:
    state = trade_in("delivery_locked", managed_buyer=True)
    if public:
        # The buyer's claim was mined, then reorganised away: the secret is public. For a
        # self-custody buyer the title claim is dropped at T_pay (see
        # test_title_claim_is_dropped_when_the_seller_can_no_longer_be_paid).
        state = run(state, TAKE, REVEAL, PAY_AT)
        assert PAY_REFUND.key in state.pending
        assert DLV_CLAIM.key not in state.pending
        return
    state = run(state, PAY_AT)  # the business chain is still far from T_deliver
    assert state.pending == {PAY_REFUND.key}
    try:
        after, out = step(state, TAKE)
    except InvalidTransition:
        return
    assert not any(isinstance(e, ContractSendDeliveryClaim) for e in out)
    assert not any(k.startswith("delivery_claim") for k in after.pending)


def test_managed_buyer_lock_mined_after_cancel_is_refunded() -> None:
    """Once the buyer's lock would leave the seller no time, it is no longer pending and the
    trade may be cancelled; should the transaction still be mined, it is this trade's no more
    and goes back to the buyer at its timelock."""
    state = run(propose(managed_buyer=True), ACCEPT, Block(PAYMENT, 3, T_DELIVER - LEAD))
    state, _ = step(state, CANCEL)
    state, out = step(state, PAY_OK)
    assert state.phase is Phase.CANCELLED
    assert out == [lock_rejected(PAYMENT, PAY_ID, "trade is cancelled")]
    assert step(state, PAY_AT)[1] == [PAY_REFUND]


def test_cancel_is_refused_once_a_lock_or_a_transaction_exists() -> None:
    for state in (run(propose(), PAY_OK), run(propose(), DLV_OK), run(propose(), ACCEPT, DLV_OK),
                  run(propose(managed_buyer=True), ACCEPT)):
        with pytest.raises(InvalidTransition):
            step(state, CANCEL)
    # A foreign or a mismatched lock does not bind the trade: it can still be cancelled.
    state, out = step(run(propose(), PAY_FOREIGN, DLV_BAD), CANCEL)
    assert state.phase is Phase.CANCELLED and out == [changed("proposed", "cancelled")]


# --- duplicates and strays ------------------------------------------------------------------

DUPLICATE_CASES = [
    pytest.param(phase, inp, id=f"{phase}-{type(inp).__name__}-{i}")
    for phase, inputs in BUILD.items()
    for i, inp in enumerate(inputs)
    if not isinstance(inp, ActionAcceptTrade | ActionCancelTrade)
]


@pytest.mark.parametrize(("phase", "inp"), DUPLICATE_CASES)
def test_duplicate_chain_input_is_a_noop(phase: str, inp: Input) -> None:
    state = trade_in(phase)
    after, out = step(state, inp)
    assert after == state
    assert out == []


@pytest.mark.parametrize("phase", PHASES)
def test_whole_history_replayed_changes_nothing(phase: str) -> None:
    state = trade_in(phase)
    chain_inputs = [i for i in BUILD[phase] if not isinstance(i, ActionAcceptTrade
                                                              | ActionCancelTrade)]
    after = state
    for inp in reversed(chain_inputs):  # in any order
        after, out = step(after, inp)
        assert out == []
    assert after == state


STRAYS = [CLAIM_OTHER_BIZ, CLAIM_OTHER_PAY, REVEAL_WRONG, refunded(BUSINESS, STRAY_ID),
          refunded(PAYMENT, STRAY_ID), Block(PAYMENT, 1, T0 - 100), Block(BUSINESS, 1, T0)]


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("inp", STRAYS, ids=lambda i: type(i).__name__)
def test_input_not_concerning_the_trade_changes_nothing(phase: str, inp: Input) -> None:
    state = trade_in(phase)
    assert step(state, inp) == (state, [])


FLAGGED_DUPLICATES = [
    pytest.param("agreed", PAY_FOREIGN, id="foreign-payment-lock"),
    pytest.param("payment_locked", DLV_BAD, id="mismatched-delivery-lock"),
    pytest.param("delivery_locked", DLV_SECOND, id="second-delivery-lock"),
    pytest.param("proposed", PAY_FOREIGN, id="foreign-payment-lock-while-proposed"),
    pytest.param("proposed", DLV_BAD, id="mismatched-delivery-lock-while-proposed"),
    pytest.param("settled", DLV_SECOND, id="second-delivery-lock-when-settled"),
    pytest.param("payment_locked", PAY_AMOUNT, id="rejected-payment-lock"),
    pytest.param("payment_locked", PAY_SECOND, id="second-payment-lock"),
]


@pytest.mark.parametrize(("phase", "inp"), FLAGGED_DUPLICATES)
def test_duplicate_of_a_flagged_lock_keeps_the_state(phase: str, inp: Input) -> None:
    once, _ = step(trade_in(phase), inp)
    twice, _ = step(once, inp)
    assert twice == once


@pytest.mark.parametrize(("phase", "inp"), FLAGGED_DUPLICATES)
def test_duplicate_of_a_flagged_lock_emits_nothing(phase: str, inp: Input) -> None:
    once, first = step(trade_in(phase), inp)
    assert len(first) == 1 and isinstance(first[0], EventLockRejected)
    _, again = step(once, inp)
    assert again == []


def test_flags_record_strays() -> None:
    state = run(propose(), ACCEPT, PAY_FOREIGN, DLV_BAD, DLV_OK)
    assert f"foreign_payment_lock:{PAY_FOREIGN_ID.hex()}" in state.flags
    assert f"mismatched_delivery:{DLV_BAD_ID.hex()}" in state.flags
    assert "delivery_locked_before_payment" in state.flags
    assert state.payment is None and state.delivery is not None
    assert state.delivery.lock_id == DLV_ID


def test_claim_with_a_preimage_not_opening_the_known_lock_never_pays_the_seller() -> None:
    """No contract logs such a claim (it checks sha256(preimage) == hashlock). Whatever the
    machine makes of it, the preimage is not learnt and no payment claim is asked for."""
    for phase in ("payment_locked", "delivery_locked"):
        for inp in (claimed(PAYMENT, PAY_ID, OTHER_SECRET), claimed(BUSINESS, DLV_ID,
                                                                     OTHER_SECRET)):
            try:
                after, out = step(trade_in(phase), inp)
            except InvariantViolated:
                continue
            assert after.preimage is None
            assert not any(isinstance(e, ContractSendPaymentClaim) for e in out)


# --- lock checks ----------------------------------------------------------------------------

MISMATCHES = [
    pytest.param(replace(PAY_LOCK, amount=AMOUNT - 1),
                 (f"amount {AMOUNT - 1} is not the agreed {AMOUNT}",), id="amount"),
    pytest.param(BENEFICIARY_LOCK, (R_BENEFICIARY,), id="beneficiary"),
    pytest.param(replace(PAY_LOCK, hashlock=sha256(OTHER_SECRET)),
                 ("hashlock is not the agreed hashlock",), id="hashlock"),
    pytest.param(replace(PAY_LOCK, timelock=T_PAY + 60),
                 (f"timelock {T_PAY + 60} is not the agreed T_pay {T_PAY}",), id="timelock"),
    pytest.param(replace(PAY_LOCK, timelock=T_DELIVER + MARGIN - 1),
                 (f"timelock {T_DELIVER + MARGIN - 1} is not the agreed T_pay {T_PAY}",
                  f"margin {MARGIN - 1} s after T_deliver is below the required {MARGIN} s"),
                 id="too-little-margin"),
    pytest.param(replace(PAY_LOCK, amount=0, beneficiary=MALLORY),
                 (R_BENEFICIARY, f"amount 0 is not the agreed {AMOUNT}"), id="several"),
]


@pytest.mark.parametrize(("lock", "reasons"), MISMATCHES)
def test_mismatching_payment_lock_is_flagged_and_the_right_one_still_counts(lock, reasons) -> None:
    """A lock off the terms is rejected and refunded at its timelock, but it does not end the
    trade: the buyer's correct lock, made later, is the trade's payment (issue 10 §3: the first
    lock used to make the trade `rejected` for good, and the correct one was never claimed)."""
    state, out = step(trade_in("agreed", managed_seller=True), pay_locked(PAY_AMOUNT_ID, lock))
    assert state.phase is Phase.AGREED
    assert out == [lock_rejected(PAYMENT, PAY_AMOUNT_ID, *reasons)]
    assert state.payment is None and [leg.lock_id for leg in state.rejected_payments] == [
        PAY_AMOUNT_ID]
    right, out = step(state, PAY_OK)
    assert right.phase is Phase.PAYMENT_LOCKED and right.payment.lock_id == PAY_ID
    assert out == [changed("agreed", "payment_locked"), SEND_DLV_LOCK]
    # The buyer's rejected lock is refunded at its own timelock, whatever the phase.
    later, out = step(state, Block(PAYMENT, 9, max(lock.timelock, T0 + 1)))
    assert ContractSendPaymentRefund(TRADE_ID, PAY_AMOUNT_ID, lock) in out
    later, out = step(later, refunded(PAYMENT, PAY_AMOUNT_ID))
    assert later.rejected_payments[0].status is LegStatus.REFUNDED
    assert not any(k.startswith("payment_refund") for k in later.pending)
    # Without a right lock by T_pay the trade ends rejected.
    assert run(state, PAY_AT).phase is Phase.REJECTED

@pytest.mark.parametrize(("lock", "reasons"), MISMATCHES)
def test_mismatching_payment_lock_seen_while_proposed_is_only_flagged(lock, reasons) -> None:
    state, out = step(propose(managed_seller=True), pay_locked(PAY_AMOUNT_ID, lock))
    assert state.phase is Phase.PROPOSED
    assert out == [lock_rejected(PAYMENT, PAY_AMOUNT_ID, *reasons)]
    # A matching lock later is this trade's payment, acceptance then finds it locked.
    state, out = step(state, PAY_OK)
    assert out == [] and state.payment is not None and state.payment.lock_id == PAY_ID
    state, out = step(state, ACCEPT)
    assert state.phase is Phase.PAYMENT_LOCKED
    assert out == [changed("proposed", "payment_locked"), SEND_DLV_LOCK]


def test_accepting_after_a_mismatching_lock_waits_for_the_right_one() -> None:
    state, out = step(run(propose(), PAY_AMOUNT), ACCEPT)
    assert state.phase is Phase.AGREED
    assert out == [changed("proposed", "agreed")]


DELIVERY_MISMATCHES = [
    pytest.param(name, value, id=name)
    for name, value in (("seller", MALLORY), ("buyer", MALLORY), ("token_id", TOKEN_ID + 1),
                        ("document_hash", sha256(b"another document")),
                        ("trade_id", sha256(b"trade 2")), ("hashlock", sha256(OTHER_SECRET)),
                        ("timelock", T_DELIVER + 1))
]

@pytest.mark.parametrize(("field", "value"), DELIVERY_MISMATCHES)
def test_mismatching_delivery_lock_is_flagged_not_matched(field: str, value: Any) -> None:
    state = trade_in("payment_locked", managed_seller=True)
    assert state.pending == {SEND_DLV_LOCK.key}
    after, out = step(state, dlv_locked(DLV_BAD_ID, replace(DLV_LOCK, **{field: value})))
    assert out == [lock_rejected(BUSINESS, DLV_BAD_ID, f"{field} does not match the terms")]
    assert after.phase is Phase.PAYMENT_LOCKED and after.delivery is None
    assert after.pending == {SEND_DLV_LOCK.key}  # the managed seller's own lock is still due
    after, out = step(after, DLV_OK)
    assert after.phase is Phase.DELIVERY_LOCKED and after.pending == frozenset()


# --- deadlines and reconciliation -----------------------------------------------------------


def test_contract_sends_are_emitted_once() -> None:
    state, out = step(trade_in("delivered"), PAY_EARLY)
    assert out == [] and state.pending == {PAY_CLAIM.key}
    state, out = step(trade_in("delivery_locked"), BIZ_AT)
    assert out == [DLV_REFUND]
    for later in (BIZ_AT, BIZ_AFTER, PAY_EARLY, DLV_OK, Block(BUSINESS, 99, T_DELIVER + 500)):
        state, out = step(state, later)
        assert out == []
    assert state.pending == {DLV_REFUND.key}


def test_pending_effect_is_dropped_when_the_chain_shows_its_result() -> None:
    state = trade_in("delivered")
    assert state.pending == {PAY_CLAIM.key}
    state, out = step(state, CLAIM_PAY)
    assert out == [changed("delivered", "settled")] and state.pending == frozenset()

    state = run(trade_in("delivery_locked"), BIZ_AT)
    assert state.pending == {DLV_REFUND.key}
    state, _ = step(state, REFUND_DLV)
    assert state.pending == frozenset()

    state = run(trade_in("agreed", managed_buyer=True))
    assert state.pending == {SEND_PAY_LOCK.key}
    state, _ = step(state, PAY_OK)
    assert state.pending == frozenset()


def test_claim_in_the_unsafe_window_is_sent_with_a_warning() -> None:
    state = run(trade_in("delivery_locked"), PAY_RISKY)
    state, out = step(state, CLAIM_DLV)
    assert out == [changed("delivery_locked", "delivered"), PAY_CLAIM,
                   at_risk(T_PAY - LEAD, sent=True)]
    state, out = step(state, Block(PAYMENT, 12, T_PAY - LEAD + 12))
    assert out == []


def test_claim_that_cannot_be_mined_before_t_pay_is_not_sent_and_warned_once() -> None:
    state = run(trade_in("delivery_locked"), PAY_LAST)
    state, out = step(state, CLAIM_DLV)
    assert out == [changed("delivery_locked", "delivered"), at_risk(T_PAY - 1, sent=False)]
    assert state.pending == frozenset()
    for again in (PAY_LAST, CLAIM_DLV, REVEAL, BIZ_BEFORE):
        state, out = step(state, again)
        assert out == []
    state, out = step(state, PAY_AT)  # the buyer's payment goes back to the buyer
    assert out == [changed("delivered", "delivered_unpaid"), PAY_REFUND]
    assert state.pending == {PAY_REFUND.key}


def test_claim_boundaries_follow_the_policy() -> None:
    state = trade_in("delivery_locked")
    for t, expected in (
            (T_PAY - LEAD - 1, [PAY_CLAIM, DLV_CLAIM]),  # safe: mined and final before T_pay
            (T_PAY - LEAD, [PAY_CLAIM, DLV_CLAIM, at_risk(T_PAY - LEAD, sent=True)]),
            (T_PAY - 2, [PAY_CLAIM, DLV_CLAIM, at_risk(T_PAY - 2, sent=True)]),  # next block
            # The next block is >= T_pay: the payment claim is abandoned. The payment lock is
            # still open before its timelock, which is all the title claim asks for.
            (T_PAY - 1, [DLV_CLAIM, at_risk(T_PAY - 1, sent=False)]),
            # The block itself asked for the payment refund; the seller can no longer be paid,
            # so the public preimage does not claim the title for the buyer either.
            (T_PAY, [at_risk(T_PAY, sent=False)])):
        _, out = step(run(state, Block(PAYMENT, 20, t)), REVEAL)
        assert out == expected, t


def test_payment_is_refunded_after_t_pay_even_with_a_known_preimage() -> None:
    state, out = step(trade_in("delivered"), PAY_AFTER)
    assert out == [changed("delivered", "delivered_unpaid"), PAY_REFUND,
                   at_risk(T_PAY + 100, sent=False)]
    assert f"at_risk:{PAY_CLAIM.key}" in state.flags
    assert state.pending == {PAY_REFUND.key} and state.preimage == SECRET
    # The buyer has the title and will have its money back: never "payment_refunded", an
    # alert phase.
    assert state.phase is Phase.DELIVERED_UNPAID
    state, out = step(state, REFUND_PAY)
    assert state.phase is Phase.DELIVERED_UNPAID and out == []

def test_abandoned_payment_claim_is_always_reported() -> None:
    state = run(trade_in("delivery_locked"), PAY_AT)
    _, out = step(state, CLAIM_DLV)
    assert at_risk(T_PAY, sent=False) in out


def test_delivery_deadlines() -> None:
    state = trade_in("delivery_locked")
    for t, expected in ((T_DELIVER - 1, []), (T_DELIVER, [DLV_REFUND])):
        assert step(state, Block(BUSINESS, 5, t))[1] == expected
    # Before T_deliver a public preimage claims the title for the buyer, and the payment for
    # the seller; at T_deliver the title goes back to the seller, but the secret is public:
    # only the buyer chose it, so the seller is paid all the same.
    assert step(run(state, BIZ_BEFORE), REVEAL)[1] == [PAY_CLAIM, DLV_CLAIM]
    after, out = step(run(state, BIZ_AT), REVEAL)
    assert out == [PAY_CLAIM] and after.pending == {DLV_REFUND.key, PAY_CLAIM.key}

def test_preimage_revealed_makes_both_open_legs_claimable() -> None:
    state, out = step(trade_in("delivery_locked"), REVEAL)
    assert out == [PAY_CLAIM, DLV_CLAIM]
    assert state.phase is Phase.DELIVERY_LOCKED and state.preimage == SECRET
    assert state.pending == {PAY_CLAIM.key, DLV_CLAIM.key}
    state, out = step(state, CLAIM_DLV)
    assert out == [changed("delivery_locked", "delivered")]
    assert state.pending == {PAY_CLAIM.key}
    state, out = step(state, CLAIM_PAY)
    assert out == [changed("delivered", "settled")] and state.pending == frozenset()


# --- the claims are tied --------------------------------------------------------------------


def test_public_preimage_pays_the_seller_without_a_delivery_lock() -> None:
    state, out = step(trade_in("payment_locked"), REVEAL)
    assert out == [PAY_CLAIM] and state.preimage == SECRET
    # The seller's lock, once seen, gives the buyer the title too.
    state, out = step(state, DLV_OK)
    assert out == [changed("payment_locked", "delivery_locked"), DLV_CLAIM]

def test_buyer_taking_a_delivery_off_the_terms_pays_the_seller() -> None:
    """Issue 10 §3: the buyer claims a title from a delivery lock that does not match the terms
    (another timelock, trade id, token...): its secret is public and the seller is paid."""
    early = replace(DLV_LOCK, timelock=T_DELIVER - 100)  # safer for the seller
    state, out = step(run(trade_in("payment_locked"), dlv_locked(DLV_BAD_ID, early, n=3)),
                      claimed(BUSINESS, DLV_BAD_ID))
    assert out == [changed("payment_locked", "delivered"), PAY_CLAIM]
    state, out = step(state, CLAIM_PAY)
    assert state.phase is Phase.SETTLED and out == [changed("delivered", "settled")]
    # A claim of a lock the gateway never saw locked: the secret is public all the same.
    state, out = step(trade_in("payment_locked"), CLAIM_STRAY_BIZ)
    assert out == [PAY_CLAIM] and state.phase is Phase.PAYMENT_LOCKED

def test_public_secret_still_pays_the_seller_after_the_title_went_back() -> None:
    state = run(trade_in("delivery_locked"), REVEAL)
    assert state.pending == {PAY_CLAIM.key, DLV_CLAIM.key}
    state, out = step(state, BIZ_AT)  # the title claim was not mined before T_deliver
    assert out == [DLV_REFUND] and state.pending == {DLV_REFUND.key, PAY_CLAIM.key}
    state, out = step(state, REFUND_DLV)
    assert out == [changed("delivery_locked", "delivery_refunded")]
    state, out = step(state, CLAIM_PAY)
    # The seller holds both: never "settled", an alert phase an operator acts on.
    assert state.phase is Phase.PAID_WITHOUT_DELIVERY
    assert out == [changed("delivery_refunded", "paid_without_delivery")]
    assert not is_active(state)

def test_title_claim_is_dropped_when_the_seller_can_no_longer_be_paid() -> None:
    state = run(trade_in("delivery_locked"), REVEAL)
    state, out = step(state, PAY_AT)  # the payment claim was not mined before T_pay
    assert out == [PAY_REFUND, at_risk(T_PAY, sent=False)]
    assert state.pending == {PAY_REFUND.key}
    state, out = step(state, REFUND_PAY)
    assert out == [changed("delivery_locked", "payment_refunded")]
    assert state.pending == frozenset()  # the delivery is still open, but not claimed
    state, out = step(state, BIZ_AT)
    assert out == [DLV_REFUND]  # the title goes back to the seller


def test_payment_past_its_deadline_ties_the_title_claim() -> None:
    state, out = step(run(trade_in("delivery_locked"), PAY_AT), REVEAL)
    assert out == [at_risk(T_PAY, sent=False)]
    assert state.pending == {PAY_REFUND.key}


def test_claimed_leg_keeps_the_other_claim_wanted_past_its_own_deadline() -> None:
    # The seller has been paid: the title is claimed for the buyer whatever the payment clock.
    state, out = step(trade_in("delivery_locked"), CLAIM_PAY)
    assert out == [changed("delivery_locked", "delivered"), DLV_CLAIM]
    state, out = step(state, PAY_AFTER)
    assert out == [] and state.pending == {DLV_CLAIM.key}
    # The buyer has the title: the payment is claimed for the seller whatever the business
    # clock.
    state, out = step(trade_in("delivered"), BIZ_AFTER)
    assert out == [] and state.pending == {PAY_CLAIM.key}


def test_abandoned_claim_is_reported_once() -> None:
    state, out = step(run(trade_in("payment_locked"), PAY_LAST), REVEAL)
    assert out == [at_risk(T_PAY - 1, sent=False)]
    assert f"at_risk:{PAY_CLAIM.key}" in state.flags
    state, out = step(state, DLV_OK)
    assert out == [changed("payment_locked", "delivery_locked"), DLV_CLAIM]
    state, out = step(state, PAY_AT)
    assert out == [PAY_REFUND] and state.pending == {PAY_REFUND.key, DLV_CLAIM.key} - {
        DLV_CLAIM.key}

def test_abandoned_claim_is_reported_whatever_became_of_the_title() -> None:
    for phase in ("payment_locked", "delivery_refunded"):
        state = run(trade_in(phase), PAY_LAST)
        reports = []
        for inp in (REVEAL, PAY_AT):
            state, out = step(state, inp)
            reports += [e for e in out if isinstance(e, EventClaimAtRisk)]
        assert reports == [at_risk(T_PAY - 1, sent=False)], phase

# --- contradictory exits --------------------------------------------------------------------


def test_contradictory_exits_are_ignored_and_flagged_once() -> None:
    state = trade_in("settled")
    for inp in (REFUND_PAY, REFUND_DLV, REFUND_PAY, REFUND_DLV, CLAIM_PAY):
        state, out = step(state, inp)
        assert out == []
    assert state.phase is Phase.SETTLED and not is_active(state)
    assert state.payment.status is LegStatus.CLAIMED
    assert state.delivery.status is LegStatus.CLAIMED
    assert state.flags == (f"contradictory_exit:{PAY_ID.hex()}",
                           f"contradictory_exit:{DLV_ID.hex()}")


def test_contradictory_claim_with_a_wrong_preimage_teaches_nothing() -> None:
    for phase, inp, lid in (
            ("payment_refunded", claimed(PAYMENT, PAY_ID, OTHER_SECRET), PAY_ID),
            ("payment_refunded", claimed(BUSINESS, DLV_ID, OTHER_SECRET), DLV_ID),
            ("delivery_refunded", claimed(BUSINESS, DLV_ID, OTHER_SECRET), DLV_ID)):
        before = trade_in(phase)
        state, out = step(before, inp)
        assert out == [] and state.preimage is None
        assert state == replace(before, flags=(f"contradictory_exit:{lid.hex()}",))


def test_contradictory_claim_of_a_refunded_delivery_still_makes_the_secret_public() -> None:
    state, out = step(trade_in("delivery_refunded"), CLAIM_DLV)
    assert out == [PAY_CLAIM] and state.delivery.status is LegStatus.REFUNDED
    assert f"contradictory_exit:{DLV_ID.hex()}" in state.flags

def test_contradictory_exit_of_a_rejected_payment_lock_is_ignored_and_flagged() -> None:
    state = run(trade_in("rejected"), PAY_AT, refunded(PAYMENT, PAY_BENEFICIARY_ID))
    assert state.rejected_payments[0].status is LegStatus.REFUNDED
    after, out = step(state, claimed(PAYMENT, PAY_BENEFICIARY_ID))
    assert out == []
    assert after.rejected_payments[0].status is LegStatus.REFUNDED
    assert f"contradictory_exit:{PAY_BENEFICIARY_ID.hex()}" in after.flags


# --- acting for managed parties -------------------------------------------------------------


def test_managed_buyer_locks_the_payment_on_acceptance() -> None:
    state, out = step(propose(managed_buyer=True), ACCEPT)
    assert out == [changed("proposed", "agreed"), SEND_PAY_LOCK]
    assert state.pending == {SEND_PAY_LOCK.key}
    state, out = step(state, PAY_EARLY)
    assert out == []
    state, out = step(state, PAY_OK)
    assert out == [changed("agreed", "payment_locked")] and state.pending == frozenset()


def test_managed_buyer_does_not_lock_when_the_seller_would_have_no_time() -> None:
    just_in_time = run(propose(managed_buyer=True), Block(PAYMENT, 2, T_DELIVER - LEAD - 1))
    assert step(just_in_time, ACCEPT)[1] == [changed("proposed", "agreed"), SEND_PAY_LOCK]
    too_late = run(propose(managed_buyer=True), Block(PAYMENT, 2, T_DELIVER - LEAD))
    assert step(too_late, ACCEPT)[1] == [changed("proposed", "agreed")]
    # A pending lock is forgotten (not re-sent) once it would leave the seller no time.
    state = run(propose(managed_buyer=True), ACCEPT)
    state, out = step(state, Block(PAYMENT, 3, T_DELIVER - LEAD))
    assert out == [] and state.pending == frozenset()


def test_self_custody_parties_get_no_lock_transactions() -> None:
    state = run(propose(), ACCEPT, PAY_OK)
    assert state.pending == frozenset()


def test_managed_seller_locks_delivery_only_after_a_verified_payment_lock() -> None:
    state, out = step(propose(managed_seller=True), ACCEPT)
    assert out == [changed("proposed", "agreed")]
    for stray in (PAY_FOREIGN, DLV_BAD, PAY_EARLY, REVEAL_WRONG):
        state, out = step(state, stray)
        assert not sends(out)
    state, out = step(state, PAY_OK)
    assert out == [changed("agreed", "payment_locked"), SEND_DLV_LOCK]
    state, out = step(state, PAY_OK)
    assert out == []
    state, out = step(state, DLV_OK)
    assert out == [changed("payment_locked", "delivery_locked")]
    assert state.pending == frozenset()


def test_managed_seller_does_not_lock_for_a_mismatching_payment() -> None:
    state, out = step(run(propose(managed_seller=True), ACCEPT), PAY_AMOUNT)
    assert state.phase is Phase.AGREED and not sends(out)

def test_managed_seller_waits_for_acceptance() -> None:
    state, out = step(propose(managed_seller=True), PAY_OK)
    assert out == [] and state.pending == frozenset() and state.phase is Phase.PROPOSED
    state, out = step(state, PAY_EARLY)
    assert out == []
    state, out = step(state, ACCEPT)
    assert out == [changed("proposed", "payment_locked"), SEND_DLV_LOCK]


def test_managed_seller_does_not_lock_when_the_buyer_would_have_no_time() -> None:
    late = run(propose(managed_seller=True), ACCEPT, Block(BUSINESS, 2, T_DELIVER - DLEAD))
    assert step(late, PAY_OK)[1] == [changed("agreed", "payment_locked")]
    ok = run(propose(managed_seller=True), ACCEPT, Block(BUSINESS, 2, T_DELIVER - DLEAD - 1))
    assert step(ok, PAY_OK)[1] == [changed("agreed", "payment_locked"), SEND_DLV_LOCK]
    # The business chain's lead time decides: a slower business chain needs more.
    slow = TimingPolicy(business_block_time=20)  # delivery lead 75 s, payment lead still 51 s
    at = run(propose(managed_seller=True), ACCEPT, Block(BUSINESS, 2, T_DELIVER - 60))
    assert step(at, PAY_OK)[1] == [changed("agreed", "payment_locked"), SEND_DLV_LOCK]
    assert step(at, PAY_OK, slow)[1] == [changed("agreed", "payment_locked")]


def test_pending_delivery_lock_is_forgotten_once_the_buyer_would_have_no_time() -> None:
    state = run(propose(managed_seller=True), ACCEPT, PAY_OK)
    assert state.pending == {SEND_DLV_LOCK.key}
    state, out = step(state, Block(BUSINESS, 2, T_DELIVER - DLEAD))
    assert out == [] and state.pending == frozenset()
    # Should the transaction still be mined, the lock is the trade's and refunded in time.
    state, out = step(state, DLV_OK)
    assert out == [changed("payment_locked", "delivery_locked")]
    assert step(state, BIZ_AT)[1] == [DLV_REFUND]


@pytest.mark.parametrize("when", ["lock-pending-at-t_pay", "accepted-at-t_pay-1"])
def test_managed_seller_locks_no_title_once_the_payment_cannot_be_claimed(when: str) -> None:
    if when == "lock-pending-at-t_pay":
        state = run(propose(managed_seller=True), ACCEPT, PAY_OK)
        assert state.pending == {SEND_DLV_LOCK.key}
        state, out = step(state, PAY_AT)  # the business chain is still at T0
        assert out == [PAY_REFUND]
        assert state.pending == {PAY_REFUND.key}
    else:
        state, out = step(run(propose(managed_seller=True), PAY_OK, PAY_LAST), ACCEPT)
        assert state.phase is Phase.PAYMENT_LOCKED
        assert out == [changed("proposed", "payment_locked")]


def test_fully_managed_trade_settles_by_executing_its_own_effects() -> None:
    state = propose(managed_buyer=True, managed_seller=True)
    state, out = step(state, ACCEPT)
    assert out == [changed("proposed", "agreed"), SEND_PAY_LOCK]
    state, out = step(state, PAY_OK)
    assert out == [changed("agreed", "payment_locked"), SEND_DLV_LOCK]
    state, out = step(state, DLV_OK)
    assert out == [changed("payment_locked", "delivery_locked")]
    state, out = step(state, TAKE)
    assert out == [DLV_CLAIM]
    state, out = step(state, CLAIM_DLV)
    assert out == [changed("delivery_locked", "delivered"), PAY_CLAIM]
    state, out = step(state, CLAIM_PAY)
    assert out == [changed("delivered", "settled")]
    assert state.pending == frozenset() and not is_active(state)


# --- phases that should end ------------------------------------------------------------------


@pytest.mark.parametrize(("inputs", "final"), [
    pytest.param((ACCEPT, DLV_OK, BIZ_AT, REFUND_DLV), "expired", id="agreed-delivery-refunded"),
    pytest.param((DLV_OK, BIZ_AT, REFUND_DLV), "expired", id="never-accepted-delivery-refunded"),
    pytest.param((ACCEPT, DLV_OK, CLAIM_DLV), "delivered_unpaid",
                 id="delivered-without-payment"),
])
def test_trade_whose_legs_all_exited_ends_final(inputs: tuple[Input, ...], final: str) -> None:
    state = run(propose(), *inputs)
    # Before T_pay a payment may still be locked or claimed: the trade is not over.
    assert state.phase in (Phase.DELIVERED, Phase.DELIVERY_REFUNDED, Phase.PROPOSED)
    assert is_active(state)
    before = state.phase
    state, out = step(state, PAY_AT)
    assert state.phase is Phase(final) and not is_active(state)
    assert out == [EventPhaseChanged(TRADE_ID, before, Phase(final))]


@pytest.mark.parametrize("inputs", [
    pytest.param((ACCEPT, PAY_OK, DLV_OK, BIZ_AT, REFUND_DLV, REVEAL, CLAIM_PAY),
                 id="payment-claimed-delivery-refunded"),
    pytest.param((ACCEPT, PAY_OK, REVEAL, CLAIM_PAY), id="payment-claimed-without-delivery"),
])
def test_payment_claimed_without_the_title_is_never_settled(inputs: tuple[Input, ...]) -> None:
    """Issue 10 §1: the seller was paid and the buyer has no title (a seller who chose the
    hashlock claims the buyer's payment itself): an alert phase, never `settled`."""
    state = run(propose(), *inputs)
    assert state.phase is Phase.PAID_WITHOUT_DELIVERY and not is_active(state)
    assert run(state, PAY_AT).phase is Phase.PAID_WITHOUT_DELIVERY


def test_delivery_lock_after_a_payment_without_one_is_claimed_for_the_buyer() -> None:
    state = run(propose(), ACCEPT, PAY_OK, REVEAL, CLAIM_PAY, PAY_AT)
    assert state.phase is Phase.PAID_WITHOUT_DELIVERY and state.delivery is None
    after, out = step(state, DLV_OK)  # business chain at T0, far before T_deliver
    assert out == [DLV_CLAIM] and after.phase is Phase.PAID_WITHOUT_DELIVERY
    after, out = step(after, CLAIM_DLV)
    assert after.phase is Phase.SETTLED
    assert out == [changed("paid_without_delivery", "settled")]


def test_trade_final_with_a_rejected_lock_still_open_stays_active_until_it_is_refunded() -> None:
    state = run(propose(), ACCEPT, DLV_OK, PAY_AMOUNT)
    assert state.phase is Phase.AGREED
    state = run(state, BIZ_AT, REFUND_DLV)
    assert is_active(state)  # the rejected lock is still open
    state, out = step(state, PAY_AT)
    assert state.phase is Phase.REJECTED
    assert out == [changed("delivery_refunded", "rejected"),
                   ContractSendPaymentRefund(TRADE_ID, PAY_AMOUNT_ID, AMOUNT_LOCK)]
    state, out = step(state, refunded(PAYMENT, PAY_AMOUNT_ID))
    assert state.phase is Phase.REJECTED and not is_active(state)


# --- before acceptance ----------------------------------------------------------------------

PROPOSED_FACTS = [
    pytest.param((PAY_OK, DLV_OK), "proposed", id="both-locked"),
    pytest.param((PAY_OK, DLV_OK, BIZ_AT, REFUND_DLV), "proposed", id="delivery-refunded"),
    pytest.param((DLV_OK, BIZ_AT, REFUND_DLV), "proposed", id="only-delivery-refunded"),
    pytest.param((PAY_AMOUNT, PAY_FOREIGN, DLV_BAD, DLV_OK), "proposed", id="strays"),
    pytest.param((PAY_OK, DLV_OK, CLAIM_DLV), "delivered", id="delivery-claimed"),
    pytest.param((DLV_OK, CLAIM_DLV), "delivered", id="delivery-claimed-without-payment"),
    pytest.param((PAY_OK, REVEAL, CLAIM_PAY), "paid_without_delivery", id="payment-claimed"),
    pytest.param((PAY_OK, DLV_OK, CLAIM_PAY, CLAIM_DLV), "settled", id="both-claimed"),
    # The refund log of the first block at T_pay, handed over before that block itself.
    pytest.param((PAY_OK, REFUND_PAY), "payment_refunded", id="payment-refunded"),
    pytest.param((PAY_AT,), "expired", id="deadline"),
    pytest.param((PAY_OK, DLV_OK, PAY_AT), "expired", id="deadline-with-locks"),
    pytest.param((DLV_OK, BIZ_AT, REFUND_DLV, PAY_AT), "expired",
                 id="deadline-delivery-refunded"),
    pytest.param((PAY_OK, REVEAL, CLAIM_PAY, PAY_AT), "paid_without_delivery",
                 id="deadline-payment-claimed"),
]


@pytest.mark.parametrize(("inputs", "phase"), PROPOSED_FACTS)
def test_proposed_trade_moves_only_on_claims_refunds_of_the_payment_and_t_pay(
        inputs: tuple[Input, ...], phase: str) -> None:
    state = run(propose(managed_seller=True), *inputs)
    assert state.phase is Phase(phase)
    assert not any(k in ("payment_lock", "delivery_lock") for k in state.pending)


def test_refund_of_a_delivery_lock_seen_before_acceptance_keeps_the_trade_proposed() -> None:
    state, out = step(run(propose(), DLV_OK, BIZ_AT), REFUND_DLV)
    assert state.phase is Phase.PROPOSED and out == [] and state.pending == frozenset()


def test_claims_are_relayed_before_acceptance() -> None:
    """Both parties locked as agreed: their claims are relayed although nobody accepted."""
    state, out = step(run(propose(), PAY_OK, DLV_OK), CLAIM_DLV)
    assert out == [changed("proposed", "delivered"), PAY_CLAIM]
    with pytest.raises(InvalidTransition):
        step(state, ACCEPT)  # the trade is no longer a proposal


ACCEPT_AFTER_FACTS = [
    pytest.param((), "agreed", id="nothing"),
    pytest.param((PAY_OK,), "payment_locked", id="payment-locked"),
    pytest.param((DLV_OK,), "agreed", id="delivery-locked-before-payment"),
    pytest.param((PAY_OK, DLV_OK), "delivery_locked", id="both-locked"),
    pytest.param((DLV_OK, BIZ_AT, REFUND_DLV), "delivery_refunded", id="delivery-refunded"),
    pytest.param((PAY_OK, DLV_OK, BIZ_AT, REFUND_DLV), "delivery_refunded",
                 id="payment-locked-delivery-refunded"),
    pytest.param((PAY_AMOUNT,), "agreed", id="mismatching-payment"),
    pytest.param((PAY_FOREIGN, DLV_BAD), "agreed", id="strays"),
]


@pytest.mark.parametrize(("inputs", "phase"), ACCEPT_AFTER_FACTS)
def test_accepting_derives_the_phase_from_the_facts(inputs: tuple[Input, ...],
                                                    phase: str) -> None:
    state, out = step(run(propose(), *inputs), ACCEPT)
    assert state.phase is Phase(phase)
    assert out[0] == changed("proposed", phase)


def test_final_phases_stay_final_under_every_input() -> None:
    inputs = [inp for inp, _ in CHAIN_TABLE.values()] + [ACCEPT, CANCEL, TAKE]
    for phase in FINAL_PHASES:
        state = trade_in(phase.value, managed_buyer=True)
        for inp in inputs:
            try:
                after, _ = step(state, inp)
            except InvalidTransition:
                assert isinstance(inp, ActionAcceptTrade | ActionCancelTrade
                                  | ActionTakeDelivery)
                continue
            assert after.phase is phase, (phase, inp)


def test_check_invariants_refuses_broken_states() -> None:
    state = trade_in("delivered")
    with pytest.raises(InvariantViolated):
        check_invariants(state, replace(state, preimage=OTHER_SECRET))
    with pytest.raises(InvariantViolated):
        check_invariants(state, replace(state, preimage=None))
    settled = trade_in("settled")
    with pytest.raises(InvariantViolated):
        check_invariants(settled, replace(settled, phase=Phase.DELIVERED))
    check_invariants(state, state)


# --- terms, proposals and the policy --------------------------------------------------------

BAD_TERMS = [
    pytest.param({"amount": 0}, "amount", id="zero-amount"),
    pytest.param({"amount": -5}, "amount", id="negative-amount"),
    pytest.param({"amount": 2**256}, "amount", id="amount-overflow"),
    pytest.param({"hashlock": bytes(32)}, "hashlock", id="zero-hashlock"),
    pytest.param({"hashlock": HASHLOCK[:31]}, "hashlock", id="short-hashlock"),
    pytest.param({"document_hash": bytes(32)}, "document_hash", id="zero-document"),
    pytest.param({"document_hash": b"\x01" * 33}, "document_hash", id="long-document"),
    pytest.param({"token_id": -1}, "token_id", id="negative-token"),
    pytest.param({"token_id": 2**256}, "token_id", id="token-overflow"),
    pytest.param({"t_pay": T_DELIVER + MARGIN - 1}, "t_pay", id="margin-one-second-short"),
    pytest.param({"t_pay": T_DELIVER - 10}, "t_pay", id="t_pay-before-t_deliver"),
]


@pytest.mark.parametrize(("change", "field"), BAD_TERMS)
def test_bad_terms_are_refused(change: dict[str, Any], field: str) -> None:
    terms = replace(TERMS, **change)
    assert [f for f, _ in terms_problems(terms, POLICY)] == [field]
    with pytest.raises(ValueError, match=f"^{field}: "):
        new_trade(ActionProposeTrade(TRADE_ID, terms), POLICY)


def test_margin_exactly_at_the_minimum_is_accepted() -> None:
    terms = replace(TERMS, t_pay=T_DELIVER + MARGIN)
    assert terms_problems(terms, POLICY) == []
    assert terms_problems(TERMS, POLICY) == []
    message = dict(terms_problems(replace(TERMS, t_pay=T_DELIVER + 100), POLICY))["t_pay"]
    assert message == "T_pay - T_deliver is 100 s; the minimum safety margin is 162 s"
    # The margin is the policy's: a stricter policy refuses what the default accepts.
    strict = TimingPolicy(reaction_budget=60 + 1)
    assert [f for f, _ in terms_problems(terms, strict)] == ["t_pay"]


def test_every_problem_is_listed() -> None:
    terms = replace(TERMS, amount=0, hashlock=bytes(32), t_pay=T_DELIVER)
    assert [f for f, _ in terms_problems(terms, POLICY)] == ["amount", "hashlock", "t_pay"]


def test_buyer_secret_enters_the_state_only_with_take_delivery() -> None:
    """No stored state holds a managed buyer's secret while the seller could still use it to
    be paid without delivering: it comes with the take-delivery action, and only then."""
    state = trade_in("delivery_locked", managed_buyer=True)
    assert state.buyer_secret is None
    with pytest.raises(ValueError, match="secret must be 32 bytes"):
        step(state, ActionTakeDelivery(TRADE_ID, OTHER_SECRET))
    with pytest.raises(ValueError, match="secret must be 32 bytes"):
        step(state, ActionTakeDelivery(TRADE_ID))
    after, _ = step(state, TAKE)
    assert after.buyer_secret == SECRET and after.preimage is None
    assert "SECRET" not in repr(TAKE) and SECRET.hex() not in repr(TAKE)


@pytest.mark.parametrize("secret", [b"too short", SECRET[:31], SECRET + b"\x00", b"",
                                    b"\x01" * 64], ids=lambda s: f"{len(s)}-bytes")
def test_buyer_secret_of_the_wrong_length_is_refused(secret: bytes) -> None:
    """The contracts take only 32-byte preimages: such a secret could never be used, even if
    its sha256 is the hashlock."""
    terms = replace(TERMS, hashlock=sha256(secret))
    assert terms_problems(terms, POLICY) == []
    state = trade_in("delivery_locked", managed_buyer=True)
    state = replace(state, terms=terms)
    with pytest.raises(ValueError, match="^take delivery: the secret must be 32 bytes"):
        step(state, ActionTakeDelivery(TRADE_ID, secret))


def test_new_trade_starts_proposed() -> None:
    state, out = new_trade(ActionProposeTrade(TRADE_ID, TERMS, managed_seller=True), POLICY)
    assert out == [EventPhaseChanged(TRADE_ID, None, Phase.PROPOSED)]
    assert state == TradeState(TRADE_ID, TERMS, Phase.PROPOSED, managed_seller=True)
    assert is_active(state)


def test_policy_margin_formula_by_hand() -> None:
    default = TimingPolicy()
    # reveal final: (2 + 1) * 12; reaction 60; claim final: (2 + 1) * 12; drift 2 * 15
    assert default.required_margin == 36 + 60 + 36 + 30 == 162
    assert default.claim_lead_time == 36 + 15 == 51
    fast_payment = TimingPolicy(payment_confirmations=5, business_confirmations=10,
                                payment_block_time=2, business_block_time=6,
                                reaction_budget=30, drift_allowance=7)
    # (10 + 1) * 6 + 30 + (5 + 1) * 2 + 2 * 7
    assert fast_payment.required_margin == 66 + 30 + 12 + 14 == 122
    assert fast_payment.claim_lead_time == 12 + 7 == 19
    assert TimingPolicy(0, 0, 0, 0, 0, 0).required_margin == 0
    assert TimingPolicy(0, 0, 0, 0, 0, 0).claim_lead_time == 0
    # Each parameter counts where the formula says: one more confirmation costs a block.
    assert TimingPolicy(business_confirmations=3).required_margin == 162 + 12
    assert TimingPolicy(drift_allowance=16).required_margin == 162 + 2


def test_policy_refuses_negative_parameters() -> None:
    for name in ("payment_confirmations", "business_confirmations", "payment_block_time",
                 "business_block_time", "reaction_budget", "drift_allowance"):
        with pytest.raises(ValueError, match=name):
            TimingPolicy(**{name: -1})


def test_policy_time_checks_are_strict() -> None:
    p = TimingPolicy()
    assert p.claim_is_safe(1000 - 52, 1000) and not p.claim_is_safe(1000 - 51, 1000)
    assert p.leaves_time(1000 - 52, 1000) and not p.leaves_time(1000 - 51, 1000)
    assert p.claim_is_possible(998, 1000) and not p.claim_is_possible(999, 1000)


# --- codec ----------------------------------------------------------------------------------


def roundtrip(tp: Any, value: Any) -> Any:
    return decode(tp, json.loads(json.dumps(encode(value))))


def rich_state() -> TradeState:
    state = run(propose(managed_buyer=True, managed_seller=True), ACCEPT, PAY_OK, PAY_AMOUNT,
                PAY_FOREIGN, DLV_BAD, DLV_OK, TAKE)
    assert state.pending and state.flags and state.rejected_payments and state.buyer_secret
    return state


def test_codec_round_trips_trade_states() -> None:
    for phase in PHASES:
        for managed in (False, True):
            state = trade_in(phase, managed_buyer=managed, managed_seller=managed)
            assert roundtrip(TradeState, state) == state
    state = rich_state()
    back = roundtrip(TradeState, state)
    assert back == state
    assert isinstance(back.pending, frozenset) and isinstance(back.flags, tuple)
    assert back.phase is state.phase and back.payment.status is LegStatus.OPEN
    encoded = json.dumps(encode(state))
    assert json.dumps(encode(back)) == encoded


ALL_INPUTS = [
    ActionProposeTrade(TRADE_ID, TERMS, True, True), ActionProposeTrade(TRADE_ID, TERMS),
    ACCEPT, CANCEL, TAKE, PAY_OK, PAY_FOREIGN, DLV_OK, DLV_BAD, CLAIM_DLV, CLAIM_PAY,
    REFUND_DLV, REFUND_PAY, REVEAL, PAY_AT, BIZ_AT,
    EffectRefused(TRADE_ID, "payment_lock", "buyer balance 1 < amount 1000"),
    ChainDisagrees(TRADE_ID, PAYMENT, PAY_ID, "open", "none"),
]
ALL_EFFECTS = [
    SEND_PAY_LOCK, SEND_DLV_LOCK, PAY_CLAIM, DLV_CLAIM, PAY_REFUND, DLV_REFUND,
    EventPhaseChanged(TRADE_ID, None, Phase.PROPOSED), changed("delivered", "settled"),
    lock_rejected(PAYMENT, PAY_ID, R_AMOUNT, R_BENEFICIARY), lock_rejected(BUSINESS, DLV_ID),
    at_risk(T_PAY - 1, sent=False), at_risk(T_PAY - LEAD, sent=True),
    EventTradeFlagged(TRADE_ID, "payment_lock_failed", "buyer balance 1 < amount 1000"),
]


def test_codec_covers_every_input_and_effect_type() -> None:
    assert {type(i) for i in ALL_INPUTS} == set(Input.__args__)  # type: ignore[attr-defined]
    assert {type(e) for e in ALL_EFFECTS} == set(Effect.__args__)  # type: ignore[attr-defined]


@pytest.mark.parametrize("inp", ALL_INPUTS, ids=lambda i: type(i).__name__)
def test_codec_round_trips_inputs(inp: Input) -> None:
    back = roundtrip(Input, inp)
    assert back == inp and type(back) is type(inp)


@pytest.mark.parametrize("effect", ALL_EFFECTS, ids=lambda e: type(e).__name__)
def test_codec_round_trips_effects(effect: Effect) -> None:
    back = roundtrip(Effect, effect)
    assert back == effect and type(back) is type(effect)
    if isinstance(effect, ContractSend):
        assert roundtrip(ContractSend, effect) == effect


def test_decoded_inputs_drive_the_machine_like_the_originals() -> None:
    state = propose()
    for inp in (ACCEPT, PAY_OK, DLV_OK, CLAIM_DLV, BIZ_AT, CLAIM_PAY):
        expected = step(state, inp)
        assert step(state, roundtrip(Input, inp)) == expected
        state = expected[0]
    assert state.phase is Phase.SETTLED


# --- operator alert ---------------------------------------------------------------------------


def test_deadline_without_progress_names_the_deadline_at_stake() -> None:
    horizon = 100
    locked = trade_in("delivery_locked")
    assert deadline_without_progress(locked, horizon) is None  # chains at T0, far from T_deliver
    near = run(locked, Block(BUSINESS, 5, T_DELIVER - horizon))
    assert deadline_without_progress(near, horizon) == "delivery"
    assert deadline_without_progress(run(locked, Block(BUSINESS, 5, T_DELIVER - horizon - 1)),
                                     horizon) is None
    delivered = run(locked, CLAIM_DLV)
    assert delivered.phase is Phase.DELIVERED
    assert deadline_without_progress(delivered, horizon) is None
    late = replace(delivered, payment_time=T_PAY - horizon)  # claim still not seen on chain
    assert deadline_without_progress(late, horizon) == "payment"
    settled = run(delivered, CLAIM_PAY)
    assert deadline_without_progress(replace(settled, payment_time=T_PAY - 1), horizon) is None


# --- finality (trust rule 2) ------------------------------------------------------------------

FINAL_POLICY = replace(POLICY, payment_finality=POLICY.payment_confirmations + 5)


def test_a_managed_seller_delivers_only_against_a_final_payment_lock() -> None:
    """Issue 10 §2: the title was locked once the payment lock was `confirmations` deep; a
    deeper reorg then removed the payment lock and the buyer took the title for free."""
    state = run(propose(managed_seller=True), ACCEPT)
    state, out = step(state, PAY_OK, FINAL_POLICY)  # mined in payment block 101
    assert state.phase is Phase.AGREED and state.payment is not None and out == []
    assert wake_times(state, FINAL_POLICY)[0] == 0  # every payment block may make it final
    state, out = step(state, Block(PAYMENT, 105, T0 + 5, finalized=100), FINAL_POLICY)
    assert state.phase is Phase.AGREED and out == []
    state, out = step(state, Block(PAYMENT, 106, T0 + 6, finalized=101), FINAL_POLICY)
    assert state.phase is Phase.PAYMENT_LOCKED
    assert out == [changed("agreed", "payment_locked"), SEND_DLV_LOCK]
    # A clock brought from a cursor says nothing of finality (finalized=0): nothing moves back.
    again, out = step(state, Block(PAYMENT, 107, T0 + 7, finalized=0), FINAL_POLICY)
    assert again.payment_finalized == 101 and out == []


def test_finality_deeper_than_the_confirmations_widens_the_margin() -> None:
    deep = replace(POLICY, payment_finality=POLICY.payment_confirmations + 10)
    assert deep.required_margin == POLICY.required_margin + 10 * POLICY.payment_block_time
    assert deep.claim_lead_time == POLICY.claim_lead_time + 10 * POLICY.payment_block_time
    shallow = replace(POLICY, payment_finality=0)  # never below the confirmations
    assert shallow.required_margin == POLICY.required_margin
    assert not shallow.waits_for_payment_finality and deep.waits_for_payment_finality


def test_an_effect_held_for_a_missing_lock_is_flagged_until_it_is_done() -> None:
    state = run(trade_in("delivered"))
    assert state.pending == {PAY_CLAIM.key}
    state, out = step(state, EffectRefused(TRADE_ID, PAY_CLAIM.key, "lock not on chain",
                                           final=False))
    assert state.flags[-1] == f"blocked:{PAY_CLAIM.key}" and state.pending == {PAY_CLAIM.key}
    assert out == [EventTradeFlagged(TRADE_ID, f"blocked:{PAY_CLAIM.key}", "lock not on chain")]
    state, out = step(state, CLAIM_PAY)  # the lock came back and the claim was mined
    assert state.phase is Phase.SETTLED and not any(f.startswith("blocked:")
                                                     for f in state.flags)


def test_a_lock_that_cannot_be_made_is_given_up_and_the_trade_can_be_cancelled() -> None:
    state = run(propose(managed_buyer=True), ACCEPT)
    assert state.pending == {SEND_PAY_LOCK.key}
    state, out = step(state, EffectRefused(TRADE_ID, SEND_PAY_LOCK.key, "buyer balance 1 < 1000"))
    assert "payment_lock_failed" in state.flags and state.pending == frozenset()
    assert out == [EventTradeFlagged(TRADE_ID, "payment_lock_failed", "buyer balance 1 < 1000")]
    assert step(state, CANCEL)[0].phase is Phase.CANCELLED


def test_a_lock_for_someone_else_claimed_with_the_public_secret_is_no_delivery() -> None:
    """Found by the Hypothesis model: once the secret is public anyone can claim a lock under
    the hashlock; one paying another address (the seller's title to a friend) is not the
    buyer's delivery: the seller is paid all the same, and the trade says the buyer has none."""
    other = replace(DLV_LOCK, buyer=MALLORY)
    state = run(trade_in("payment_locked"), dlv_locked(DLV_BAD_ID, other, n=3))
    state, out = step(state, claimed(BUSINESS, DLV_BAD_ID))
    assert out == [PAY_CLAIM] and state.phase is Phase.PAYMENT_LOCKED
    state, out = step(state, CLAIM_PAY)
    assert state.phase is Phase.PAID_WITHOUT_DELIVERY


def test_the_buyer_takes_delivery_only_against_a_final_title_lock() -> None:
    deep = replace(POLICY, business_finality=POLICY.business_confirmations + 5)
    state = run(propose(managed_buyer=True), ACCEPT, PAY_OK)
    state, out = step(state, DLV_OK, deep)  # mined in business block 101
    assert state.phase is Phase.PAYMENT_LOCKED and out == []
    with pytest.raises(InvalidTransition):
        step(state, TAKE, deep)
    state, out = step(state, Block(BUSINESS, 106, T0 + 6, finalized=101), deep)
    assert state.phase is Phase.DELIVERY_LOCKED
    assert step(state, TAKE, deep)[1] == [DLV_CLAIM]


@pytest.mark.parametrize("end", [CANCEL, PAY_AT], ids=["cancelled", "expired"])
def test_a_sellers_proposal_awaiting_the_buyers_hashlock_can_end(end: Input) -> None:
    """Found by the exhaustive exploration: a proposal without its hashlock yet could neither
    be cancelled (the API answered 500) nor expire."""
    action = ActionProposeTrade(TRADE_ID, replace(TERMS, hashlock=AWAITING_HASHLOCK))
    state, _ = new_trade(action, POLICY)
    state = run(state, Block(PAYMENT, 1, T0), Block(BUSINESS, 1, T0))
    state, out = step(state, end)
    assert state.phase in (Phase.CANCELLED, Phase.EXPIRED) and not is_active(state)


def test_another_title_locked_for_the_buyer_is_no_delivery() -> None:
    other = replace(DLV_LOCK, token_id=TOKEN_ID + 1, trade_id=sha256(b"trade 2"))
    state = run(trade_in("payment_locked"), dlv_locked(DLV_BAD_ID, other, n=3))
    state, out = step(state, claimed(BUSINESS, DLV_BAD_ID))
    assert out == [PAY_CLAIM] and state.phase is Phase.PAYMENT_LOCKED
    assert step(state, CLAIM_PAY)[0].phase is Phase.PAID_WITHOUT_DELIVERY
