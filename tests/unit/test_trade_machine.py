"""Stateful property test of the pure trade state machine against a model of both chains.

Hypothesis drives one trade (self-custody or managed buyer and/or seller) with random
sequences of actions, chain logs, blocks, reorganisations and restarts. The rules only feed
what the chains could produce:

* each chain is a list of HTLC locks with their status; every log is mined in a new block
  (timestamp strictly above the previous one) and the machine sees the log, then the block;
* a lock is mined only while `now < timelock`, a claim only for an open lock, while
  `now < timelock` and by someone who knows the preimage (the self-custody buyer always knows
  the secret; anybody once it is public; the creator of an unrelated lock its own preimage),
  a refund only for an open lock at `now >= timelock`;
* the buyer's and the seller's own addresses sign only for themselves: a managed party's locks
  and claims are only ever the relayer's `ContractSend*` effects being mined (at any later
  time, even after the machine stopped asking for them, as long as the contract accepts them);
* `PreimageRevealed` (a claim mined, then reorganised away) only once the secret has left the
  buyer: the self-custody buyer may do it at any time, a managed buyer's secret leaves the
  gateway only in a delivery claim transaction.

Reorganisations and restarts (issue 10 §10). A run has either the default policy (finality at
the confirmation depth: what the poller hands over is final, so no reorg reaches it) or one
whose finality is deeper than the confirmations, as production's `DVP_MAX_REORG_DEPTH` makes it:
blocks carry `Block.finalized` `lag` blocks below the head, and `reorg` withdraws the most
recent log(s) of one chain from blocks not final yet (within `lag` blocks and `lag` block times
of the head: a deeper reach means blocks slower than the policy's block time). The model's
chain forgets them (a lock vanishes, a claim or refund is undone) and the machine is rebuilt as
the dispatcher rebuilds it (`gateway.engine.reorg.rewind`): the input log, kept as the
repository stores it (JSON payloads with `_clock`), loses the orphaned inputs, and
`gateway.engine.reorg.replay` (pure) replays the rest at their recorded clocks, every preimage
ever seen, then the chains' times; a
leg the gateway had acted on and lost is `ChainDisagrees`, and the effects the replayed state
has pending are the outbox's. A withdrawn transaction is public: `withdrawn_mined_again` mines
it again later (the same transaction: its logged input is revived in its place) while the
contract accepts it, but for a party that `withholds` its own (it spent the nonce on something
else: a deviation). `restart` takes the state through the codec and JSON as the database does,
and the outbox's pending effects likewise: they stay pending and are not emitted again.

After every step the machine's view must agree with the chains, and the safety invariants of
the brief hold (see `check_send`, `feed` and the `invariant` methods). A public secret pays
the seller: once it is on chain, one payment lock of the trade's terms is claimed for the
seller whatever the phase says (only the buyer chose it, so only the buyer made it public); the
title is claimed for the buyer from a public preimage only while the seller has or can still get
paid. `settled` only when both went to the right parties; one side only is an alert phase.

The end of time (`teardown`, in runs with a live relayer, which mines every effect the machine
has pending in the next block of its chain, on live chains, which mine a withdrawn transaction
again in the next block while the contract accepts it): both chains run past every timelock,
and then every lock of the trade is closed, `settled` means the seller was paid by the buyer
and the title went to the buyer, and no honest party (a managed one; a self-custody one that
did only what /instructions tells it, at the times the machine lets a managed party do it)
holds neither its asset nor the counter-asset. The last holds under the timing policy's
assumptions (`unfair` otherwise): the chains' clocks stay within `2 * drift + block time` of
each other while the seller's title is locked.

Two findings of this model, both fixed: the buyer was told to take delivery against a title
lock that was not final (a reorg, a seller that does not lock again: the buyer lost), and a
mismatched delivery lock claimed by anyone with the public secret counted as the buyer's
delivery (`settled` without the title). See the test at the end of this file and
`test_trade_transitions.py`.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, replace

import hypothesis
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gateway.db.input_log import _clock as logged_clock
from gateway.db.input_log import _payload as logged_payload
from gateway.domain.codec import decode, encode
from gateway.domain.locks import DeliveryLock, PaymentLock
from gateway.domain.policy import TimingPolicy
from gateway.domain.trade import (
    FINAL_PHASES,
    ActionAcceptTrade,
    ActionCancelTrade,
    ActionProposeTrade,
    ActionTakeDelivery,
    Block,
    Chain,
    ChainBatch,
    ChainRef,
    ContractReceive,
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
    EventClaimAtRisk,
    EventPhaseChanged,
    Input,
    InvalidTransition,
    LegStatus,
    Phase,
    PreimageRevealed,
    Terms,
    TradeState,
    block_transition,
    buyer_took_delivery,
    check_invariants,
    is_active,
    new_trade,
    payment_to_claim,
    pays_seller,
    seller_paid,
    state_transition,
    wake_times,
)
from gateway.engine.reorg import acted_on_and_lost as _acted_on_and_lost
from gateway.engine.reorg import replay

PAYMENT, BUSINESS = Chain.PAYMENT, Chain.BUSINESS
OPEN, CLAIMED, REFUNDED = LegStatus.OPEN, LegStatus.CLAIMED, LegStatus.REFUNDED
POLICY = TimingPolicy()  # finality = the confirmations: no reorg reaches what is handed over
# Finality 3 blocks below what the poller hands over (production: DVP_MAX_REORG_DEPTH), and
# longer blocks, so that a reorg within the finality depth spans a minute of chain time.
REORG_POLICY = TimingPolicy(payment_finality=5, business_finality=5, payment_block_time=20,
                            business_block_time=20)
CHAIN_IDS = {PAYMENT: 71_001, BUSINESS: 71_002}
# What a proposed trade may become without being accepted: only facts that perform or end it.
PROPOSED_MOVES_TO = frozenset({Phase.PROPOSED, Phase.DELIVERED, Phase.SETTLED,
                               Phase.PAYMENT_REFUNDED, Phase.EXPIRED,
                               Phase.PAID_WITHOUT_DELIVERY, Phase.DELIVERED_UNPAID})


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def note(message: str) -> None:
    """Hypothesis's `note`, and silence when a test drives the model step by step."""
    if currently_in_test_context():
        hypothesis.note(message)


def event(value: str) -> None:
    if currently_in_test_context():
        hypothesis.event(value)


SECRET = b"\x5a" * 32
HASHLOCK = sha256(SECRET)
STRANGER_SECRET = b"\x33" * 32  # known to whoever made a lock under another hashlock
TRADE_ID = sha256(b"machine trade")
T0 = 1_800_000_000
BUYER_PAY, SELLER_PAY = "0x" + "b0" * 20, "0x" + "5e" * 20
BUYER_BIZ, SELLER_BIZ = "0x" + "b1" * 20, "0x" + "51" * 20
MALLORY = "0x" + "ee" * 20
TITLE = 42

PAYMENT_CORRUPTIONS = ("amount", "beneficiary", "hashlock", "timelock_later", "timelock_earlier")
DELIVERY_CORRUPTIONS = ("seller", "buyer", "token_id", "document_hash", "trade_id", "hashlock",
                        "timelock")


@dataclass
class OnChain:
    """A lock as its contract holds it."""

    chain: Chain
    lock_id: bytes
    lock: PaymentLock | DeliveryLock
    status: LegStatus = OPEN

    @property
    def under_trade_hashlock(self) -> bool:
        return self.lock.hashlock == HASHLOCK


@dataclass
class Mined:
    """A log in a block of a chain, and who sent its transaction: buyer, seller, stranger,
    anyone (a claim with the public secret, a refund), relayer, or relayer:<n> (the lock effect
    `sent[n]`)."""

    number: int
    at: int
    log: ContractReceive
    owner: str

    @property
    def chain(self) -> Chain:
        return PAYMENT if self.log.ref.chain_id == CHAIN_IDS[PAYMENT] else BUSINESS


@dataclass
class Logged:
    """A row of the gateway's input log (`InputRow`): the payload as stored, and for a chain
    log where it was mined."""

    payload: dict
    tx: tuple[int, bytes, int] | None = None  # (chain id, tx hash, log index)
    block_number: int | None = None
    orphaned: bool = False


class TradeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.locks: dict[bytes, OnChain] = {}
        self.now = {PAYMENT: T0, BUSINESS: T0}
        self.height = {PAYMENT: 1, BUSINESS: 1}
        self.finalized = {PAYMENT: 0, BUSINESS: 0}  # as the machine was told
        self.log_index = 0
        self.lock_count = 0
        self.history: list[Input] = []  # chain inputs fed so far, for duplicates
        self.sent: list[ContractSend] = []  # every ContractSend ever emitted
        self.mined_sends: set[int] = set()  # indexes into `sent` of lock effects mined
        self.revealed = False  # the secret was made public on chain (as the machine was told)
        self.final: Phase | None = None
        self.abandoned = 0  # EventClaimAtRisk(sent=False) seen
        self.statuses_seen: dict[bytes, set[LegStatus]] = {}
        self.mined: dict[Chain, list[Mined]] = {PAYMENT: [], BUSINESS: []}
        self.withdrawn: list[Mined] = []  # taken back by a reorg, not mined again yet
        self.withheld: list[Mined] = []  # ... whose sender spent the nonce otherwise
        self.input_log: list[Logged] = []
        self.deviated: set[str] = set()  # "buyer", "seller": did what no instruction says
        self.locked_by: set[str] = set()  # the parties that made a lock of the terms
        self.unfair: set[str] = set()  # assumptions of the timing policy a run broke
        self.flushing = False
        self.tolerate_known_findings = False  # see `check_the_end` (none is known now)

    # --- set-up -------------------------------------------------------------------------

    @initialize(managed_buyer=st.booleans(), managed_seller=st.booleans(),
                to_deliver=st.sampled_from([0, 1_200, 1_200, 3_000]),
                slack=st.sampled_from([0, 1, 40, 600]), accept_at_once=st.booleans(),
                finality=st.sampled_from([False, True, True]), live=st.booleans())
    def propose(self, managed_buyer: bool, managed_seller: bool, to_deliver: int,
                slack: int, accept_at_once: bool, finality: bool, live: bool) -> None:
        """`to_deliver` 0: T_deliver just beyond the claim lead time."""
        self.policy = p = REORG_POLICY if finality else POLICY
        self.lead, self.dlead = p.claim_lead_time, p.delivery_claim_lead_time
        self.lag = {PAYMENT: p.payment_final_depth - p.payment_confirmations,
                    BUSINESS: p.business_final_depth - p.business_confirmations}
        self.block_time = {PAYMENT: p.payment_block_time, BUSINESS: p.business_block_time}
        # Each chain's clock is within drift of real time and a block is at most a block time
        # old: the chains' latest timestamps are this close (the margin's "same pace").
        self.max_skew = 2 * p.drift_allowance + max(self.block_time.values())
        self.live = live
        t_deliver = T0 + (to_deliver or self.lead + 20)
        self.terms = Terms(BUYER_PAY, SELLER_PAY, BUYER_BIZ, SELLER_BIZ, amount=500,
                           token_id=TITLE, document_hash=sha256(b"title"), hashlock=HASHLOCK,
                           t_deliver=t_deliver, t_pay=t_deliver + p.required_margin + slack)
        self.managed_buyer, self.managed_seller = managed_buyer, managed_seller
        proposal = ActionProposeTrade(TRADE_ID, self.terms, managed_buyer, managed_seller)
        self.state, effects = new_trade(proposal, p)
        assert not [e for e in effects if isinstance(e, ContractSend)]
        for chain in (PAYMENT, BUSINESS):
            self.feed(self.head(chain))
        self.record(proposal, (T0, T0))
        if accept_at_once:
            self.feed(ActionAcceptTrade(TRADE_ID))
            self.record(ActionAcceptTrade(TRADE_ID), (T0, T0))
            self.flush()

    # --- feeding the machine ------------------------------------------------------------

    def feed(self, inp: Input) -> list[Effect]:
        before = self.state
        if isinstance(inp, ContractReceiveClaimed | PreimageRevealed) and \
                inp.preimage == SECRET:
            self.revealed = True  # the input itself makes the secret public
        after, effects = state_transition(before, inp, self.policy)
        note(f"{type(inp).__name__}: {before.phase} -> {after.phase}; "
             f"{[type(e).__name__ for e in effects]}")
        check_invariants(before, after)
        sends = [e for e in effects if isinstance(e, ContractSend)]
        keys = [e.key for e in sends]
        assert len(keys) == len(set(keys)), f"emitted twice in one step: {keys}"
        for e in sends:
            assert e.key not in before.pending, f"{e.key} re-emitted while pending"
            assert e.key in after.pending
            assert e.trade_id == TRADE_ID
            self.check_send(e, after)
        self.sent.extend(sends)
        changes = [e for e in effects if isinstance(e, EventPhaseChanged)]
        assert changes == ([EventPhaseChanged(TRADE_ID, before.phase, after.phase)]
                           if after.phase is not before.phase else [])
        for e in effects:
            if isinstance(e, EventClaimAtRisk):
                self.check_at_risk(e, after, sends)
        self.abandoned += sum(isinstance(e, EventClaimAtRisk) and not e.sent for e in effects)
        assert self.abandoned <= 1, "EventClaimAtRisk(sent=False) raised twice"
        for e in sends:
            if isinstance(e, ContractSendPaymentClaim) and \
                    not self.policy.claim_is_safe(after.payment_time, e.lock.timelock):
                assert EventClaimAtRisk(TRADE_ID, after.payment_time, e.lock.timelock,
                                        sent=True) in effects
        if before.phase is Phase.PROPOSED and not isinstance(inp, ActionAcceptTrade
                                                             | ActionCancelTrade):
            assert after.phase in PROPOSED_MOVES_TO, f"a proposed trade moved to {after.phase}"
        self.state = after
        if not isinstance(inp, ActionAcceptTrade | ActionCancelTrade | ActionTakeDelivery):
            self.history.append(inp)
        return effects

    def record(self, inp: Input, clock: tuple[int, int]) -> None:
        """The dispatcher's input log (`Repository.record_inputs`, `revive_input`): each input
        with the trade's chain times when it was applied, stored as JSON; a log orphaned by a
        reorg and mined again (same transaction) is revived in its place."""
        payload = json.loads(json.dumps(logged_payload(inp, clock)))
        ref = getattr(inp, "ref", None)
        if ref is None:
            self.input_log.append(Logged(payload))
            return
        tx = (ref.chain_id, ref.tx_hash, ref.log_index)
        for row in self.input_log:
            if row.tx == tx:
                assert row.orphaned, "a log applied twice"
                row.payload, row.block_number, row.orphaned = payload, ref.block_number, False
                return
        self.input_log.append(Logged(payload, tx, ref.block_number))

    def flush(self) -> None:
        """A live relayer: every effect the machine has pending that the contract accepts is
        mined in the next block of its chain; and live chains: a transaction a reorg withdrew
        is mined again in the next block if the contract accepts it (nodes put them back in
        their pools; the relayer and honest parties send theirs again)."""
        if not self.live or self.flushing:
            return
        self.flushing = True
        try:
            for _ in range(100):
                again = [w for w in self.withdrawn if self.valid_again(w, self.now[w.chain] + 1)]
                due = [n for n in self.executable() if self.sent[n].key in self.state.pending]
                if again:
                    self.mine_again(again[0], self.now[again[0].chain] + 1)
                elif due:
                    note(f"relayer mines {self.sent[due[0]].key}")
                    self.execute(due[0], 1)
                else:
                    return
            raise AssertionError("the relayer never runs out of work")
        finally:
            self.flushing = False

    # --- the tie between the claims -----------------------------------------------------
    # Judged by the legs' status on chain and by chain time as the machine has seen it: a log
    # is handed over before its block, so while it is fed the chain may already be later.

    def seller_gets_paid(self, s: TradeState) -> bool:
        """The seller has the buyer's payment of the terms or can still get it: a lock of the
        terms but perhaps its timelock (`pays_seller`) claimed, or open before its timelock."""
        legs = [leg for leg in (s.payment, *s.rejected_payments)
                if leg is not None and pays_seller(leg.lock, self.terms)]
        status = {leg.lock_id: self.locks[leg.lock_id].status for leg in legs}
        return any(status[leg.lock_id] is CLAIMED for leg in legs) or any(
            status[leg.lock_id] is OPEN and s.payment_time < leg.lock.timelock for leg in legs)

    def own_delivery_claim(self, s: TradeState, lock: DeliveryLock) -> bool:
        """A managed buyer's delivery claim with its own secret is wanted (rule 4), while the
        seller can still be paid in time (rule 1)."""
        return self.managed_buyer and "take_delivery" in s.flags and \
            self.policy.delivery_claim_is_safe(s.business_time, lock.timelock) and \
            self.seller_paid_in_time(s)

    def seller_paid_in_time(self, s: TradeState) -> bool:
        """The payment is claimed, or open with a claim's lead time left before T_pay."""
        pay = s.payment
        return pay is not None and (pay.status is CLAIMED or (
            pay.status is OPEN and self.policy.claim_is_safe(s.payment_time, pay.lock.timelock)))

    def safe_to_deliver(self, s: TradeState) -> bool:
        """A managed seller locks the title only if a reveal at the last moment before
        T_deliver still leaves the payment claim its lead time before T_pay."""
        t, p = self.terms, self.policy
        return s.payment is not None and s.payment.status is OPEN and \
            p.delivery_claim_is_safe(s.business_time, t.t_deliver) and \
            p.claim_is_safe(s.payment_time, t.t_pay) and \
            (t.t_pay - s.payment_time) - (t.t_deliver - s.business_time) >= p.claim_lead_time

    def check_at_risk(self, e: EventClaimAtRisk, after: TradeState,
                      sends: list[ContractSend]) -> None:
        p = self.policy
        pay = payment_to_claim(after)
        assert pay is not None and self.locks[pay.lock_id].status is OPEN
        assert self.revealed
        assert (e.payment_time, e.t_pay) == (after.payment_time, pay.lock.timelock)
        if e.sent:  # the claim goes out now, inside the window where it may not be final
            assert any(isinstance(c, ContractSendPaymentClaim) for c in sends)
            assert not p.claim_is_safe(e.payment_time, e.t_pay)
            assert p.claim_is_possible(e.payment_time, e.t_pay)
        else:  # abandoned: it could not be mined any more
            assert not p.claim_is_possible(e.payment_time, e.t_pay)
            assert f"at_risk:payment_claim:{pay.lock_id.hex()}" in after.flags

    def check_send(self, e: ContractSend, after: TradeState) -> None:
        """What the relayer asks for is something the contracts would accept right now, and
        something the rules allow."""
        p = self.policy
        match e:
            case ContractSendPaymentClaim():
                assert self.revealed, "payment claim before the secret was public on chain"
                assert e.preimage == SECRET
                leg = payment_to_claim(after)
                assert leg is not None and e.lock_id == leg.lock_id
                assert pays_seller(e.lock, self.terms), "not the buyer's money for the seller"
                assert self.locks[e.lock_id].status is OPEN
                assert p.claim_is_possible(after.payment_time, e.lock.timelock)
            case ContractSendDeliveryClaim():
                assert e.preimage == SECRET
                assert after.delivery is not None and e.lock_id == after.delivery.lock_id
                assert self.locks[e.lock_id].status is OPEN
                assert after.business_time < e.lock.timelock
                if not self.own_delivery_claim(after, e.lock):
                    assert self.revealed, "the buyer's secret is not public"
                    assert self.seller_gets_paid(after), "the buyer would get the title free"
            case ContractSendPaymentRefund():
                assert self.locks[e.lock_id].status is OPEN
                assert after.payment_time >= e.lock.timelock
                assert e.lock.sender == BUYER_PAY
            case ContractSendDeliveryRefund():
                assert self.locks[e.lock_id].status is OPEN
                assert after.business_time >= e.lock.timelock
            case ContractSendPaymentLock():
                assert self.managed_buyer and after.phase is Phase.AGREED
                assert e.lock == self.terms.expected_payment_lock()
                assert p.leaves_time(after.payment_time, self.terms.t_deliver)
            case ContractSendDeliveryLock():
                assert self.managed_seller
                assert after.phase is Phase.PAYMENT_LOCKED and after.payment is not None
                assert e.lock == self.terms.expected_delivery_lock(TRADE_ID)
                assert self.safe_to_deliver(after)


    # --- the chains ---------------------------------------------------------------------

    def head(self, chain: Chain) -> Block:
        """The chain's latest block as the poller hands it over, with how far it is final."""
        if not self.lag[chain]:
            return Block(chain, self.height[chain], self.now[chain])  # final as it is seen
        self.finalized[chain] = max(self.finalized[chain], self.height[chain] - self.lag[chain])
        return Block(chain, self.height[chain], self.now[chain], finalized=self.finalized[chain])

    def mine(self, chain: Chain, at: int, *logs: ContractReceive, owner: str = "anyone") -> None:
        """A new block on `chain` at timestamp `at` holding `logs`: logs first, then the block."""
        assert at > self.now[chain]
        self.now[chain] = at
        self.height[chain] += 1
        for log in logs:
            assert log.ref.block_number == self.height[chain]
            self.mined[chain].append(Mined(self.height[chain], at, log, owner))
            self.record(log, (self.state.payment_time, self.state.business_time))
            self.feed(log)
        self.feed(self.head(chain))
        self.check_pace()
        self.flush()

    def check_pace(self) -> None:
        """The margin assumes both chains' clocks run at the same pace: while the seller's
        title is locked, a payment clock further ahead than drift and a block time allow is
        outside the policy's assumptions (a buyer could then reveal before T_deliver by the
        business clock when T_pay has passed by the payment clock)."""
        exposed = any(h.chain is BUSINESS and h.status is OPEN and h.lock.seller == SELLER_BIZ
                      and h.lock.token_id == TITLE for h in self.locks.values())
        if exposed and self.now[PAYMENT] - self.now[BUSINESS] > self.max_skew:
            self.unfair.add("clocks apart while the title is locked")

    def ref(self, chain: Chain) -> ChainRef:
        self.log_index += 1
        return ChainRef(CHAIN_IDS[chain], self.height[chain] + 1,
                        sha256(b"tx %d" % self.log_index), self.log_index % 4)

    def new_lock_id(self) -> bytes:
        self.lock_count += 1
        return sha256(b"lock %d" % self.lock_count)

    def create_lock(self, chain: Chain, lock: PaymentLock | DeliveryLock, dt: int,
                    owner: str) -> bytes | None:
        at = self.now[chain] + dt
        if at >= lock.timelock:  # TimelockNotInFuture: the transaction reverts, no log
            self.mine(chain, at)
            return None
        lock_id = self.new_lock_id()
        self.locks[lock_id] = OnChain(chain, lock_id, lock)
        log_type = ContractReceivePaymentLocked if chain is PAYMENT else \
            ContractReceiveDeliveryLocked
        self.mine(chain, at, log_type(lock_id, lock, self.ref(chain)), owner=owner)
        return lock_id

    def claim(self, lock_id: bytes, preimage: bytes, dt: int, owner: str = "anyone") -> None:
        held = self.locks[lock_id]
        at = min(self.now[held.chain] + dt, held.lock.timelock - 1)
        assert held.status is OPEN and self.now[held.chain] < at < held.lock.timelock
        assert sha256(preimage) == held.lock.hashlock
        held.status = CLAIMED
        self.mine(held.chain, at,
                  ContractReceiveClaimed(held.chain, lock_id, preimage, self.ref(held.chain)),
                  owner=owner)

    def refund(self, lock_id: bytes, extra: int, owner: str = "anyone") -> None:
        held = self.locks[lock_id]
        at = max(self.now[held.chain] + 1, held.lock.timelock) + extra
        assert held.status is OPEN
        held.status = REFUNDED
        self.mine(held.chain, at, ContractReceiveRefunded(held.chain, lock_id,
                                                          self.ref(held.chain)), owner=owner)

    def valid_again(self, w: Mined, at: int) -> bool:
        """The contract accepts a withdrawn transaction again in a block at `at`."""
        log = w.log
        if isinstance(log, ContractReceivePaymentLocked | ContractReceiveDeliveryLocked):
            return log.lock_id not in self.locks and at < log.lock.timelock
        held = self.locks.get(log.lock_id)
        if held is None or held.status is not OPEN:
            return False
        if isinstance(log, ContractReceiveClaimed):
            return at < held.lock.timelock
        return at >= held.lock.timelock

    def mine_again(self, w: Mined, at: int) -> None:
        """The same transaction in a new block: the same log, at a new place."""
        assert self.valid_again(w, at)
        self.withdrawn = [x for x in self.withdrawn if x is not w]
        log = w.log
        match log:
            case ContractReceivePaymentLocked() | ContractReceiveDeliveryLocked():
                self.locks[log.lock_id] = OnChain(w.chain, log.lock_id, log.lock)
            case ContractReceiveClaimed():
                self.locks[log.lock_id].status = CLAIMED
            case ContractReceiveRefunded():
                self.locks[log.lock_id].status = REFUNDED
        note(f"mined again: {type(log).__name__} sent by {w.owner}")
        self.mine(w.chain, at, replace(log, ref=replace(log.ref,
                                                        block_number=self.height[w.chain] + 1)),
                  owner=w.owner)

    # --- who can do what ----------------------------------------------------------------

    def knows(self, lock: OnChain) -> bytes | None:
        """The preimage someone able to act could claim `lock` with, if any."""
        if not lock.under_trade_hashlock:
            return STRANGER_SECRET if lock.lock.hashlock == sha256(STRANGER_SECRET) else None
        if self.revealed or not self.managed_buyer:
            return SECRET
        return None

    def claimable(self, chain: Chain) -> list[bytes]:
        return [i for i, held in self.locks.items()
                if held.chain is chain and held.status is OPEN and self.knows(held)
                and self.now[chain] + 1 < held.lock.timelock]

    def refundable(self) -> list[bytes]:
        return [i for i, held in self.locks.items() if held.status is OPEN]

    def executable(self) -> list[int]:
        out = []
        for n, e in enumerate(self.sent):
            match e:
                case ContractSendPaymentLock() | ContractSendDeliveryLock():
                    if n not in self.mined_sends:
                        out.append(n)
                case ContractSendPaymentClaim() | ContractSendDeliveryClaim():
                    chain = PAYMENT if isinstance(e, ContractSendPaymentClaim) else BUSINESS
                    held = self.locks.get(e.lock_id)
                    if held is not None and held.status is OPEN and \
                            self.now[chain] + 1 < e.lock.timelock:
                        out.append(n)
                case ContractSendPaymentRefund() | ContractSendDeliveryRefund():
                    held = self.locks.get(e.lock_id)
                    if held is not None and held.status is OPEN:
                        out.append(n)
        return out

    def deviate(self, party: str, why: str) -> None:
        if party not in self.deviated:
            note(f"the {party} deviates: {why}")
            self.deviated.add(party)

    def honest_buyer_claim(self, lock_id: bytes) -> bool:
        """What /instructions hands a self-custody buyer (`take_delivery`: the agreed lock once
        the trade is `delivery_locked`), at the times the machine lets a managed buyer take
        delivery (a claim mined and final before T_deliver)."""
        s = self.state
        return s.phase is Phase.DELIVERY_LOCKED and s.delivery is not None and \
            s.delivery.lock_id == lock_id and \
            self.policy.delivery_claim_is_safe(s.business_time, s.delivery.lock.timelock)

    def claim_as(self, lock_id: bytes, dt: int) -> None:
        """Whoever can claims `lock_id`: before the secret is public only the self-custody
        buyer can claim under the trade's hashlock, honestly only as `honest_buyer_claim`."""
        held = self.locks[lock_id]
        preimage = self.knows(held)
        assert preimage is not None
        if not held.under_trade_hashlock:
            owner = "stranger"
        elif self.revealed:
            owner = "anyone"
        else:
            owner = "buyer"
            if self.honest_buyer_claim(lock_id):
                dt = min(dt, self.block_time[BUSINESS])  # mined within a block time
            else:
                self.deviate("buyer", f"revealed the secret claiming {lock_id.hex()[:8]}")
        self.claim(lock_id, preimage, dt, owner)

    # --- actions ------------------------------------------------------------------------

    def act(self, action: Input, allowed: bool) -> None:
        before = self.state
        try:
            self.feed(action)
        except InvalidTransition as error:
            assert not allowed, f"{type(action).__name__} refused in {before.phase}: {error}"
            assert self.state is before
            return
        assert allowed, f"{type(action).__name__} allowed in {before.phase}"
        self.record(action, (before.payment_time, before.business_time))
        self.flush()

    @rule()
    def accept(self) -> None:
        self.act(ActionAcceptTrade(TRADE_ID), self.state.phase is Phase.PROPOSED)

    @rule(now=st.integers(0, 7))
    def cancel(self, now: int) -> None:
        if now:  # rarely: a cancelled trade has little left to explore
            return
        s = self.state
        self.act(ActionCancelTrade(TRADE_ID), s.phase in (Phase.PROPOSED, Phase.AGREED)
                 and s.payment is None and s.delivery is None and not s.pending)

    @rule()
    def take_delivery(self) -> None:
        s = self.state
        allowed = self.managed_buyer and s.phase is Phase.DELIVERY_LOCKED and \
            s.delivery is not None and s.delivery.status is OPEN and \
            self.policy.delivery_claim_is_safe(s.business_time, s.delivery.lock.timelock) and \
            self.seller_paid_in_time(s)
        self.act(ActionTakeDelivery(TRADE_ID, SECRET), allowed)
        if allowed:  # the claim carries the buyer's secret, asked for now or already pending
            key = f"delivery_claim:{s.delivery.lock_id.hex()}"
            claims = [e for e in self.sent if e.key == key]
            assert claims and claims[-1].preimage == SECRET
            if not self.live:
                assert key in self.state.pending

    # --- the parties on chain -----------------------------------------------------------

    @precondition(lambda self: not self.managed_buyer)
    @rule(corruption=st.sampled_from((None,) * 5 + PAYMENT_CORRUPTIONS),
          dt=st.integers(1, 120))
    def buyer_locks_payment(self, corruption: str | None, dt: int) -> None:
        lock = self.terms.expected_payment_lock()
        match corruption:
            case "amount":
                lock = replace(lock, amount=lock.amount + 1)
            case "beneficiary":
                lock = replace(lock, beneficiary=MALLORY)
            case "hashlock":
                lock = replace(lock, hashlock=sha256(STRANGER_SECRET))
            case "timelock_later":
                lock = replace(lock, timelock=lock.timelock + 30)
            case "timelock_earlier":
                lock = replace(lock, timelock=self.terms.t_deliver +
                               self.policy.required_margin - 1)
        s = self.state
        if corruption is not None or s.phase is not Phase.AGREED or s.payment is not None or \
                "buyer" in self.locked_by:
            self.deviate("buyer", f"locked a payment ({corruption}) in {s.phase}")
        if self.create_lock(PAYMENT, lock, dt, "buyer") and corruption is None:
            self.locked_by.add("buyer")

    @rule(honest_terms=st.booleans(), dt=st.integers(1, 120), now=st.integers(0, 2))
    def stranger_locks_payment(self, honest_terms: bool, dt: int, now: int) -> None:
        """Anyone can lock under the public hashlock; it is never this trade's payment."""
        if now:
            return
        lock = replace(self.terms.expected_payment_lock(), sender=MALLORY)
        if not honest_terms:
            lock = replace(lock, amount=1)
        self.create_lock(PAYMENT, lock, dt, "stranger")

    @precondition(lambda self: not self.managed_seller)
    @rule(corruption=st.sampled_from((None,) * 5 + DELIVERY_CORRUPTIONS),
          dt=st.integers(1, 120))
    def seller_locks_delivery(self, corruption: str | None, dt: int) -> None:
        lock = self.terms.expected_delivery_lock(TRADE_ID)
        if corruption is not None:
            wrong = {"seller": MALLORY, "buyer": MALLORY, "token_id": lock.token_id + 1,
                     "document_hash": sha256(b"other title"), "trade_id": sha256(b"other"),
                     "hashlock": sha256(STRANGER_SECRET), "timelock": lock.timelock + 7}
            lock = replace(lock, **{corruption: wrong[corruption]})
        s = self.state
        if corruption is not None or s.phase is not Phase.PAYMENT_LOCKED or \
                s.delivery is not None or "seller" in self.locked_by:
            self.deviate("seller", f"locked a title ({corruption}) in {s.phase}")
        if self.create_lock(BUSINESS, lock, dt, "seller") and corruption is None:
            self.locked_by.add("seller")

    @precondition(lambda self: self.claimable(BUSINESS))
    @rule(data=st.data(), dt=st.integers(1, 200))
    def delivery_claimed(self, data: st.DataObject, dt: int) -> None:
        self.claim_as(data.draw(st.sampled_from(self.claimable(BUSINESS)),
                                label="delivery lock"), dt)

    @precondition(lambda self: self.claimable(PAYMENT))
    @rule(data=st.data(), dt=st.integers(1, 200))
    def payment_claimed(self, data: st.DataObject, dt: int) -> None:
        self.claim_as(data.draw(st.sampled_from(self.claimable(PAYMENT)),
                                label="payment lock"), dt)

    @precondition(lambda self: self.refundable())
    @rule(data=st.data(), extra=st.sampled_from([0, 0, 1, 30, 500]))
    def refunded(self, data: st.DataObject, extra: int) -> None:
        self.refund(data.draw(st.sampled_from(self.refundable()), label="lock"), extra)

    @precondition(lambda self: self.executable())
    @rule(data=st.data(), dt=st.integers(1, 120))
    def relayer_transaction_mined(self, data: st.DataObject, dt: int) -> None:
        n = data.draw(st.sampled_from(self.executable()), label="effect")
        note(f"mining {self.sent[n].key}")
        self.execute(n, dt)

    def execute(self, n: int, dt: int) -> None:
        e = self.sent[n]
        match e:
            case ContractSendPaymentLock() | ContractSendDeliveryLock():
                self.mined_sends.add(n)
                self.create_lock(PAYMENT if isinstance(e, ContractSendPaymentLock) else BUSINESS,
                                 e.lock, dt, f"relayer:{n}")
            case ContractSendPaymentClaim() | ContractSendDeliveryClaim():
                self.claim(e.lock_id, e.preimage, dt, "relayer")
            case ContractSendPaymentRefund() | ContractSendDeliveryRefund():
                self.refund(e.lock_id, dt - 1, "relayer")

    @rule(dt=st.integers(1, 60), moves=st.integers(1, 3))
    def honest_next_moves(self, dt: int, moves: int) -> None:
        """The next steps of a cooperative settlement, so that runs get deep into the protocol
        while the other rules interleave strays, duplicates, reorgs, refunds and time."""
        for _ in range(moves):
            self.honest_next_move(dt)

    def honest_next_move(self, dt: int) -> None:
        s = self.state
        pending = [n for n in self.executable() if self.sent[n].key in s.pending]
        if s.phase is Phase.PROPOSED and not self.managed_buyer and s.payment is None and \
                dt % 5 == 0:
            self.buyer_locks_payment(None, dt)  # the buyer may lock before the seller accepts
        elif s.phase is Phase.PROPOSED:
            self.accept()
        elif s.phase is Phase.AGREED and not self.managed_buyer:
            self.buyer_locks_payment(None, dt)
        elif s.phase is Phase.PAYMENT_LOCKED and not self.managed_seller:
            self.seller_locks_delivery(None, dt)
        elif s.phase is Phase.DELIVERY_LOCKED and not self.managed_buyer and \
                s.delivery.lock_id in self.claimable(BUSINESS) and \
                self.honest_buyer_claim(s.delivery.lock_id):
            self.claim_as(s.delivery.lock_id, dt)
        elif s.phase is Phase.DELIVERY_LOCKED and self.managed_buyer and \
                "take_delivery" not in s.flags:
            self.take_delivery()
        elif pending:
            e = self.sent[pending[0]]
            note(f"mining {e.key}")
            self.execute(pending[0], dt)

    @precondition(lambda self: not self.managed_buyer or self.revealed or any(
        isinstance(e, ContractSendDeliveryClaim) for e in self.sent))
    @rule(right=st.sampled_from([True, False, False, False]))
    def preimage_revealed(self, right: bool) -> None:
        if right:
            if not self.managed_buyer and not self.revealed:
                self.deviate("buyer", "published the secret")
            self.feed(PreimageRevealed(SECRET))
            self.flush()
        else:  # the self-custody buyer keeps its secret for a while; strays change nothing
            before = self.state
            assert self.feed(PreimageRevealed(STRANGER_SECRET)) == []
            assert self.state == before


    # --- time ---------------------------------------------------------------------------

    def deadlines(self, chain: Chain) -> list[int]:
        t, lead, dlead = self.terms, self.lead, self.dlead
        if chain is PAYMENT:
            return [t.t_deliver - lead - 1, t.t_deliver - lead, t.t_pay - lead - 1,
                    t.t_pay - lead, t.t_pay - 2, t.t_pay - 1, t.t_pay, t.t_pay + 1]
        return [t.t_deliver - dlead - 1, t.t_deliver - dlead, t.t_deliver - 2, t.t_deliver - 1,
                t.t_deliver, t.t_deliver + 1]  # the managed parties' business-chain bound

    @rule(chain=st.sampled_from(Chain), dt=st.integers(1, 40))
    def block(self, chain: Chain, dt: int) -> None:
        self.mine(chain, self.now[chain] + dt)

    @rule(chain=st.sampled_from(Chain), dt=st.integers(100, 1_500), now=st.integers(0, 2))
    def long_pause(self, chain: Chain, dt: int, now: int) -> None:
        if not now:
            self.mine(chain, self.now[chain] + dt)

    @rule(data=st.data(), chain=st.sampled_from(Chain))
    def block_on_a_deadline(self, data: st.DataObject, chain: Chain) -> None:
        ahead = [t for t in self.deadlines(chain) if t > self.now[chain]][:2]  # the next ones
        if ahead:
            self.mine(chain, data.draw(st.sampled_from(ahead), label="deadline"))

    # --- duplicates, reorganisations, restarts ------------------------------------------

    @precondition(lambda self: self.history)
    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        """A log or block handed over again (restart, overlapping poll), flagged locks
        included: a no-op that emits nothing."""
        inp = data.draw(st.sampled_from(self.history), label="duplicate")
        before = self.state
        effects = self.feed(inp)
        assert self.state == before
        assert effects == [], effects

    def reorgable(self, chain: Chain) -> list[Mined]:
        """The logs a reorg the gateway handles can take back: in blocks not final yet, no
        older than the finality depth's worth of block times."""
        if not self.lag[chain]:
            return []
        reach = self.now[chain] - self.lag[chain] * self.block_time[chain]
        return [m for m in self.mined[chain] if m.number > self.finalized[chain] and m.at >= reach]

    @precondition(lambda self: self.reorgable(PAYMENT) or self.reorgable(BUSINESS))
    @rule(data=st.data(), depth=st.integers(1, 3), dt=st.integers(1, 20),
          withholds=st.sampled_from([None, None, "buyer", "seller"]))
    def reorg(self, data: st.DataObject, depth: int, dt: int, withholds: str | None) -> None:
        """The most recent log(s) of one chain are withdrawn: the chain forks below their
        block and a longer branch without them becomes the head (one block later, at `dt`).
        Their senders send them again, but for the party that `withholds` its own: it spent
        the transaction's nonce on something else, which no instruction tells it to do."""
        chain = data.draw(st.sampled_from([c for c in Chain if self.reorgable(c)]),
                          label="chain")
        mined = self.reorgable(chain)
        fork = mined[-min(depth, len(mined))].number - 1
        gone = [m for m in self.mined[chain] if m.number > fork]
        self.mined[chain] = [m for m in self.mined[chain] if m.number <= fork]
        event(f"reorg: {chain} chain")
        for m in gone:
            event(f"reorg takes back {type(m.log).__name__} sent by {m.owner.partition(':')[0]}")
        for m in reversed(gone):
            note(f"reorg takes back {type(m.log).__name__} sent by {m.owner}")
            log = m.log
            if isinstance(log, ContractReceivePaymentLocked | ContractReceiveDeliveryLocked):
                del self.locks[log.lock_id]
            else:
                self.locks[log.lock_id].status = OPEN
            if m.owner == withholds:
                self.deviate(m.owner, "spent the nonce of its withdrawn transaction otherwise")
                self.withheld.append(m)
            else:
                self.withdrawn.insert(0, m)
        self.history = [h for h in self.history if not any(h is m.log for m in gone)]
        self.now[chain] += dt
        self.height[chain] += 1
        self.rewind(chain, fork)

    def claims_to_take_back(self) -> list[tuple[Chain, int]]:
        """(chain, depth) of every reorgable claim: how many logs a reorg takes back to reach
        it, or the lock it claimed too."""
        out = []
        for chain in Chain:
            mined = self.reorgable(chain)
            for depth, m in enumerate(reversed(mined), 1):
                if isinstance(m.log, ContractReceiveClaimed):
                    out.append((chain, depth))
                    if depth < len(mined):
                        out.append((chain, depth + 1))
        return out

    @precondition(lambda self: self.claims_to_take_back())
    @rule(data=st.data(), dt=st.integers(1, 20),
          withholds=st.sampled_from([None, None, "buyer", "seller"]))
    def reorg_takes_back_a_claim(self, data: st.DataObject, dt: int,
                                 withholds: str | None) -> None:
        """`reorg`, reaching a claim (a secret made public) or the lock it claimed: the cases
        where a reorg matters most, made as likely as the others."""
        chain, depth = data.draw(st.sampled_from(self.claims_to_take_back()), label="reorg")
        self.reorg(Picks(chain), depth, dt, withholds)

    def rewind(self, chain: Chain, fork: int) -> None:
        """`gateway.engine.reorg.rewind` on the model's input log, then the batch's block."""
        chain_id, old = CHAIN_IDS[chain], self.state
        orphaned = [row for row in self.input_log if not row.orphaned and row.tx is not None
                    and row.tx[0] == chain_id and row.block_number > fork]
        for row in orphaned:  # `Repository.orphan_inputs_after`
            row.orphaned = True
        revealed = [inp.preimage for inp in (decode(Input, row.payload) for row in orphaned)
                    if isinstance(inp, ContractReceiveClaimed)]
        inputs = [(decode(Input, row.payload), logged_clock(row.payload))  # `inputs_for_trade`
                  for row in self.input_log if not row.orphaned]
        head = self.head(chain)
        batch = ChainBatch(chain, chain_id, [], head, bytes(32), rewind_to=fork)
        state, out = replay(inputs, old, revealed, batch, self.policy)
        for lost in _acted_on_and_lost(old, state):
            state, more = state_transition(state, lost, self.policy)
            out.extend(more)
            self.record(lost, (state.payment_time, state.business_time))
        note(f"rewound to block {fork} of the {chain} chain: {old.phase} -> {state.phase}; "
             f"pending {sorted(state.pending)}; flags {state.flags}")
        assert state.terms == old.terms
        self.state = state
        # The outbox: every effect the replayed facts call for is pending (rows already pending
        # stay, rows whose result the reorg undid start afresh). A lock effect still in flight,
        # or whose transaction was withdrawn, is sent at the same nonce: one lock at most.
        wanted = {e.key: e for e in out if isinstance(e, ContractSend) and e.key in state.pending}
        in_flight = {self.sent[n].key for n in range(len(self.sent)) if n not in self.mined_sends}
        in_flight |= {self.sent[int(w.owner[8:])].key for w in self.withdrawn
                      if w.owner.startswith("relayer:")}
        for key, e in wanted.items():
            self.check_send(e, state)
            if not (isinstance(e, ContractSendPaymentLock | ContractSendDeliveryLock)
                    and key in in_flight):
                self.sent.append(e)
        # What a reorg may undo: a final phase left, a leg's exit, the reported abandonment.
        self.final = None
        self.statuses_seen.clear()
        self.abandoned = int(any(f.startswith("at_risk:payment_claim:") for f in state.flags))
        self.feed(head)
        self.check_pace()
        self.flush()

    def remineable(self) -> list[Mined]:
        return [w for w in self.withdrawn if self.valid_again(w, self.now[w.chain] + 1)]

    @precondition(lambda self: self.remineable())
    @rule(data=st.data(), dt=st.integers(1, 60))
    def withdrawn_mined_again(self, data: st.DataObject, dt: int) -> None:
        """A withdrawn transaction is public: anybody may send it again while the contract
        accepts it."""
        w = data.draw(st.sampled_from(self.remineable()), label="withdrawn")
        at = self.now[w.chain] + dt
        self.mine_again(w, at if self.valid_again(w, at) else self.now[w.chain] + 1)

    @rule()
    def restart(self) -> None:
        """A new process: the trade as the database returns it, the outbox's pending effects
        as the executor reads them. The relayer wakes every open trade with the next block of
        each chain (`wake_all_active`); the trade has seen those times: nothing changes, and
        no effect is emitted again (they stay pending)."""
        stored = json.loads(json.dumps(encode(self.state)))
        state = decode(TradeState, stored)
        assert state == self.state, "the codec does not give back the stored state"
        self.state = state
        for key in state.pending:
            n = max(n for n, e in enumerate(self.sent) if e.key == key)
            effect = decode(ContractSend, json.loads(json.dumps(encode(self.sent[n]))))
            assert effect == self.sent[n]
            self.sent[n] = effect
        for chain in (PAYMENT, BUSINESS):
            assert self.feed(self.head(chain)) == []
            assert self.state == state
        event("restart")


    # --- the end of time ----------------------------------------------------------------

    def teardown(self) -> None:
        if sys.exc_info()[0] is not None or not hasattr(self, "state") or not self.live:
            return  # a failing run reports its own error; the end needs a live relayer
        self.run_to_the_end()
        self.check_the_end()

    def run_to_the_end(self) -> None:
        """Only the relayer and honest resends act now; both chains advance, each block on
        the chain behind, never further than the pace allows, stopping at every deadline,
        until both are past every timelock."""
        for _ in range(1_000):
            self.flush()
            ends = {c: max([*(h.lock.timelock for h in self.locks.values() if h.chain is c),
                            *(w.log.lock.timelock for w in self.withdrawn if w.chain is c
                              and hasattr(w.log, "lock")),
                            self.terms.t_pay if c is PAYMENT else self.terms.t_deliver])
                    for c in Chain}
            behind = [c for c in Chain if self.now[c] <= ends[c]]
            if not behind:
                return
            chain = min(behind, key=lambda c: self.now[c])
            other = BUSINESS if chain is PAYMENT else PAYMENT
            stops = [*self.deadlines(chain), ends[chain] + 1,
                     *(h.lock.timelock for h in self.locks.values() if h.chain is chain)]
            if other in behind:  # in step with the other chain
                stops.append(max(self.now[chain] + 1, self.now[other] + self.max_skew // 2))
            self.mine(chain, min(t for t in stops if t > self.now[chain]))
        raise AssertionError("the end of time never came")

    def check_the_end(self) -> None:
        s, terms = self.state, self.terms
        pays = [h for h in self.locks.values() if h.chain is PAYMENT]
        titles = [h for h in self.locks.values() if h.chain is BUSINESS]
        buyer_paid_out = any(h.lock.sender == BUYER_PAY and h.status is CLAIMED for h in pays)
        seller_was_paid = any(h.lock.beneficiary == SELLER_PAY and h.status is CLAIMED
                              and h.lock.amount >= terms.amount for h in pays)
        title_gone = any(h.status is CLAIMED and h.lock.seller == SELLER_BIZ
                         and h.lock.token_id == TITLE for h in titles)
        buyer_has_title = any(h.status is CLAIMED and h.lock.buyer == BUYER_BIZ
                              and h.lock.token_id == TITLE for h in titles)
        honest = {"buyer": self.managed_buyer or "buyer" not in self.deviated,
                  "seller": self.managed_seller or "seller" not in self.deviated}
        note(f"the end: {s.phase}, honest {honest}, unfair {self.unfair}; buyer paid out "
             f"{buyer_paid_out}, has the title {buyer_has_title}; seller paid "
             f"{seller_was_paid}, title gone {title_gone}")
        event(f"end: {s.phase}")
        event(f"end: honest {sorted(p for p, h in honest.items() if h)}"
              f"{' (unfair)' if self.unfair else ''}")
        # The relayer has done everything, every lock of the trade is closed.
        assert not [n for n in self.executable() if self.sent[n].key in s.pending]
        assert s.phase in FINAL_PHASES, s.phase
        assert not is_active(s), (s.pending, s.phase)
        assert (s.phase is Phase.SETTLED) == (seller_paid(s) and buyer_took_delivery(s))
        # Settled: the buyer's payment went to the seller, the title to the buyer (or what a
        # deviating buyer chose to take instead: it alone could claim before its secret was
        # public).
        delivered_to_buyer = buyer_has_title or (not honest["buyer"] and any(
            leg.status is CLAIMED and leg.lock.buyer == BUYER_BIZ
            for leg in (s.delivery, *s.other_deliveries) if leg is not None))
        if self.tolerate_known_findings and s.phase is Phase.SETTLED and \
                not delivered_to_buyer and \
                any(leg.status is CLAIMED for leg in s.other_deliveries):
            # Known, unfixed: `buyer_took_delivery` counts any claimed delivery lock of the
            # trade's hashlock, whoever it pays and whatever token it holds.
            event("known finding: settled by a mismatched delivery lock")
            return  # see test_a_mismatched_delivery_lock_claimed_by_anyone_settles_the_trade
        if s.phase is Phase.SETTLED:
            assert delivered_to_buyer and any(
                h.status is CLAIMED and pays_seller(h.lock, terms) for h in pays), \
                "settled, but the legs did not both go to the right parties"
        if self.unfair:
            return
        if self.tolerate_known_findings and honest["buyer"] and buyer_paid_out and \
                not buyer_has_title and self.withheld_title():
            event("known finding: the buyer revealed against a title lock a reorg took back")
            return  # see test_buyer_reveals_against_a_title_lock_a_reorg_takes_back
        if honest["buyer"]:
            assert not (buyer_paid_out and not buyer_has_title), \
                "the honest buyer ends with neither its money nor the title"
        if honest["seller"]:
            assert not (title_gone and not seller_was_paid), \
                "the honest seller ends with neither its title nor the payment"

    def withheld_title(self) -> bool:
        """Known, unfixed: the gateway has the buyer reveal its secret (`delivery_locked`,
        take delivery) against a title lock that is not final yet; a reorg within the finality
        depth takes the lock (and the claim) back, the seller does not send its lock again,
        and the public secret pays the seller. The machine ends in `paid_without_delivery`.
        (This tells that the seller withheld its title lock.)"""
        return any(isinstance(w.log, ContractReceiveDeliveryLocked) and w.owner == "seller"
                   and w.log.lock.token_id == TITLE for w in self.withheld)

    # --- invariants ---------------------------------------------------------------------

    @invariant()
    def machine_agrees_with_the_chains(self) -> None:
        s = self.state
        assert s.payment_time == self.now[PAYMENT] and s.business_time == self.now[BUSINESS]
        for leg in (s.payment, s.delivery, *s.rejected_payments, *s.other_deliveries):
            if leg is not None:
                assert leg.lock_id in self.locks, f"a leg for {leg.lock_id.hex()}: no such lock"
                assert leg.status is self.locks[leg.lock_id].status
        assert (s.preimage is not None) == self.revealed
        assert s.preimage in (None, SECRET)

    @invariant()
    def blocks_before_the_wake_time_change_only_the_clock(self) -> None:
        """What lets the dispatcher give a batch's block only to the trades it wakes: any
        block earlier than a chain's wake time moves that clock and nothing else."""
        s = self.state
        for chain, now, wake in zip((PAYMENT, BUSINESS), (s.payment_time, s.business_time),
                                    wake_times(s, self.policy), strict=True):
            if wake == 0:
                continue  # woken by every block
            assert wake is None or wake > now
            last = wake - 1 if wake is not None else now + 10**7
            clock = "payment_time" if chain is PAYMENT else "business_time"
            for t in sorted({now + 1, (now + 1 + last) // 2, last}):
                if now < t <= last:
                    after, effects = state_transition(s, Block(chain, 0, t), self.policy)
                    assert (after, effects) == (replace(s, **{clock: t}), []), (chain, t, wake)

    @invariant()
    def the_dispatchers_block_shortcut_is_the_rules(self) -> None:
        """`block_transition` skips the rules for a block before its chain's wake time: it
        must give what the rules give for any block, before, at and after the wake time,
        stale or new, with or without news of finality (a block that finalizes the trade's
        own lock must run the rules)."""
        s = self.state
        for chain, now, wake in zip((PAYMENT, BUSINESS), (s.payment_time, s.business_time),
                                    wake_times(s, self.policy), strict=True):
            final = s.payment_finalized if chain is PAYMENT else s.business_finalized
            times = {max(0, now - 1), now, now + 1}
            if wake:
                times |= {wake - 1, wake, wake + 1}
            for t in sorted(times):
                for number, finalized in ((0, 0), (final + 3, None), (final + 9, final + 5),
                                          (max(0, final - 1), None)):
                    block = Block(chain, number, t, finalized)
                    assert block_transition(s, block, self.policy) == \
                        state_transition(s, block, self.policy), (chain, t, wake, block)

    @invariant()
    def legs_exit_once(self) -> None:
        """... on the chain as it stands: a reorg may take an exit back, and then the lock may
        exit the other way."""
        s = self.state
        for leg in (s.payment, s.delivery, *s.rejected_payments):
            if leg is not None:
                seen = self.statuses_seen.setdefault(leg.lock_id, set())
                seen.add(leg.status)
                assert not {CLAIMED, REFUNDED} <= seen, f"{leg.lock_id.hex()} claimed+refunded"

    @invariant()
    def final_phase_is_final(self) -> None:
        """A final phase is left only when the chains overturn it: an exchange completed after
        a cancel, a rejection or an expiry, or the missing side of an alert phase (or a reorg
        takes back what made it final)."""
        phase = self.state.phase
        if self.final is not None and phase is not self.final:
            assert self.final is not Phase.SETTLED and phase in (
                Phase.DELIVERED, Phase.SETTLED, Phase.PAID_WITHOUT_DELIVERY,
                Phase.DELIVERED_UNPAID), (self.final, phase)
            assert seller_paid(self.state) or buyer_took_delivery(self.state)
        self.final = phase if phase in FINAL_PHASES else None

    @invariant()
    def payment_claimed_only_with_a_public_preimage(self) -> None:
        s = self.state
        if s.payment is not None and s.payment.status is CLAIMED:
            assert self.revealed
        if any(k.startswith("payment_claim") for k in s.pending):
            assert self.revealed and s.preimage == SECRET

    @invariant()
    def public_preimage_is_relayed_while_t_pay_is_ahead(self) -> None:
        """... whatever the phase: a public secret pays the seller."""
        s = self.state
        leg = payment_to_claim(s)
        if self.revealed and leg is not None and s.payment_time + self.lead < leg.lock.timelock:
            assert f"payment_claim:{leg.lock_id.hex()}" in s.pending

    @invariant()
    def public_preimage_claims_the_title_while_the_seller_can_be_paid(self) -> None:
        s = self.state
        if self.revealed and s.delivery is not None and s.delivery.status is OPEN and \
                s.business_time < s.delivery.lock.timelock and self.seller_gets_paid(s):
            assert f"delivery_claim:{s.delivery.lock_id.hex()}" in s.pending

    @invariant()
    def open_locks_are_refunded_at_their_timelock(self) -> None:
        s = self.state
        rejected = [(PAYMENT, leg, "payment_refund") for leg in s.rejected_payments]
        for chain, leg, kind in ((PAYMENT, s.payment, "payment_refund"),
                                 (BUSINESS, s.delivery, "delivery_refund"), *rejected):
            if leg is not None and leg.status is OPEN and self.now[chain] >= leg.lock.timelock:
                assert f"{kind}:{leg.lock_id.hex()}" in s.pending

    @invariant()
    def abandoned_claim_is_reported_exactly_once(self) -> None:
        s = self.state
        pay = payment_to_claim(s)
        flagged = any(f.startswith("at_risk:payment_claim:") for f in s.flags)
        assert flagged == (self.abandoned == 1)
        if self.revealed and pay is not None and \
                not self.policy.claim_is_possible(s.payment_time, pay.lock.timelock):
            assert flagged

    @invariant()
    def trade_with_every_lock_exited_is_over_at_t_pay(self) -> None:
        s = self.state
        legs = (s.payment, s.delivery, *s.rejected_payments, *s.other_deliveries)
        if s.payment_time >= self.terms.t_pay and \
                all(leg is None or leg.status is not OPEN for leg in legs):
            assert s.phase in FINAL_PHASES, s.phase
            assert is_active(s) == any(leg.status is OPEN for leg in (
                *s.rejected_payments, *s.other_deliveries))

    @invariant()
    def settled_only_when_both_legs_went_to_the_right_parties(self) -> None:
        """Trust rule 4: never "settled" unless the seller was paid the agreed amount and the
        buyer took a title; one side only is an alert phase once nothing can change it."""
        s = self.state
        if s.phase is Phase.SETTLED:
            assert seller_paid(s) and buyer_took_delivery(s)
        if s.phase is Phase.PAID_WITHOUT_DELIVERY:
            assert seller_paid(s) and not buyer_took_delivery(s)
        if s.phase is Phase.DELIVERED_UNPAID:
            assert buyer_took_delivery(s) and not seller_paid(s)

    @invariant()
    def pending_is_what_the_facts_call_for(self) -> None:
        s, p = self.state, self.policy
        for key in s.pending:
            kind, _, hex_id = key.partition(":")
            assert kind in ("payment_lock", "delivery_lock", "payment_claim", "delivery_claim",
                            "payment_refund", "delivery_refund")
            if hex_id:
                assert self.locks[bytes.fromhex(hex_id)].status is OPEN
            if kind == "payment_claim":
                leg = payment_to_claim(s)
                assert self.revealed and s.preimage == SECRET
                assert leg is not None and leg.lock_id.hex() == hex_id
                assert p.claim_is_possible(s.payment_time, leg.lock.timelock)
            elif kind == "delivery_claim":
                assert s.business_time < s.delivery.lock.timelock
                assert (self.revealed and self.seller_gets_paid(s)) or \
                    self.own_delivery_claim(s, s.delivery.lock)
            elif kind == "payment_lock":
                assert s.phase is Phase.AGREED and s.payment is None
                assert p.leaves_time(s.payment_time, self.terms.t_deliver)
            elif kind == "delivery_lock":
                assert s.phase is Phase.PAYMENT_LOCKED and s.delivery is None
                assert self.safe_to_deliver(s)
        if s.phase in (Phase.CANCELLED, Phase.REJECTED, Phase.EXPIRED):
            assert not {"payment_lock", "delivery_lock"} & s.pending

    @invariant()
    def managed_parties_act_only_after_agreement(self) -> None:
        if self.state.phase is Phase.PROPOSED:
            assert not any(isinstance(e, ContractSendPaymentLock | ContractSendDeliveryLock)
                           for e in self.sent)


TradeMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=50,
                                          deadline=None)
TestTradeMachine = TradeMachine.TestCase


class KnownFinding(Exception):
    pass


class Picks:
    """`st.data()` for a test that drives the model: the given values, in order."""

    def __init__(self, *values: object) -> None:
        self.values = list(values)

    def draw(self, strategy: object, label: str | None = None) -> object:
        return self.values.pop(0)


@pytest.mark.parametrize("managed_buyer", [False, True], ids=["self-custody", "managed"])
def test_the_buyer_is_not_told_to_take_a_title_a_reorg_can_take_back(managed_buyer: bool) -> None:
    """The model's trace of a finding, now closed. Finality 5 blocks, confirmations 2 (a
    reorg the gateway rewinds can reach 3 blocks back). The seller locks the title; before the
    fix the trade was `delivery_locked` at once, the buyer (or the gateway for it) took
    delivery, a business reorg inside the finality depth took back the lock and the claim, the
    seller did not lock again, and the public secret paid the seller: `paid_without_delivery`,
    the buyer with neither its money nor the title. Now the title lock counts only once final
    (trust rule 2 on both chains): the reorg takes it back before the secret leaves the buyer,
    and at the end of time the buyer has its money back."""
    machine = TradeMachine()
    machine.propose(managed_buyer=managed_buyer, managed_seller=False, to_deliver=1_200,
                    slack=0, accept_at_once=True, finality=True, live=True)
    if not managed_buyer:
        machine.buyer_locks_payment(None, 1)
    for _ in range(3):
        machine.block(PAYMENT, 1)
    assert machine.state.phase is Phase.PAYMENT_LOCKED
    machine.seller_locks_delivery(None, 1)
    assert machine.state.delivery is not None
    assert machine.state.phase is Phase.PAYMENT_LOCKED  # seen, not final: nothing to take
    machine.reorg(Picks(BUSINESS), depth=1, dt=1, withholds="seller")
    assert machine.state.delivery is None and machine.state.preimage is None
    machine.tolerate_known_findings = False
    machine.teardown()  # the honest buyer ends with its money
