"""One complete DvP swap on the in-process devnet, settled by the relayer.

The buyer and the seller act with their own keys, as their wallets would; the gateway knows
the agreed terms, watches both chains and does the rest: it checks the payment lock against
the terms, and when the buyer takes delivery (publishing the secret on the business chain) it
claims the payment for the seller. With `take_delivery=False` the buyer never performs and the
relayer returns both legs to their owners once their deadlines pass. Every step is reported
as a timeline entry: which chain, which block, which transaction, what changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from gateway.chain.calls import (
    title_approve_calldata,
    title_issue_calldata,
    title_owner,
    titles_issued,
    token_approve_calldata,
    token_balance,
)
from gateway.chain.client import Receipt
from gateway.chain.devnet import BUYER, ISSUER, SELLER, Devnet
from gateway.db.repository import Repository
from gateway.domain.locks import DeliveryLock, hashlock_of, new_secret
from gateway.domain.trade import ActionAcceptTrade, ActionProposeTrade, Phase, Terms
from gateway.engine.build import Gateway
from gateway.logs import trade_ref

MAX_UINT256 = 2**256 - 1
CHAIN_NAMES: dict[int, str] = {}


@dataclass(frozen=True)
class TimelineEntry:
    chain: str
    block: int | None
    tx_hash: str | None
    what: str


@dataclass(frozen=True)
class SwapResult:
    trade_id: str
    phase: str
    timeline: tuple[TimelineEntry, ...]
    buyer_paid: int  # payment units that left the buyer
    seller_received: int
    title_owner: str
    token_id: int


class SwapFailed(RuntimeError):
    pass


def run_swap(devnet: Devnet, gateway: Gateway, amount: int = 250_000_00, *,
             take_delivery: bool = True, delivery_window: int = 3_600,
             report: Callable[[TimelineEntry], None] | None = None) -> SwapResult:
    """Run one swap; `amount` is in integer payment-token units (2 decimals)."""
    swap = _Swap(devnet, gateway, new_secret(), report)
    before = swap.balance(swap.buyer.address), swap.balance(swap.seller.address)
    token_id, document_hash = swap.issue_title()
    secret = new_secret()
    terms = swap.agree(amount, token_id, document_hash, hashlock_of(secret), delivery_window)
    swap.lock_payment(terms)
    delivery_lock = swap.lock_delivery(terms)
    if take_delivery:
        swap.take_delivery(delivery_lock, secret)
    else:
        swap.let_deadlines_pass(terms)
    return swap.result(token_id, before)


class _Swap:
    """One swap under way: the parties acting on the devnet, and the timeline so far (each
    entry also given to `report` as it happens)."""

    def __init__(self, devnet: Devnet, gateway: Gateway, trade_id: bytes,
                 report: Callable[[TimelineEntry], None] | None) -> None:
        self.devnet, self.gateway, self.trade_id, self.report = devnet, gateway, trade_id, report
        self.buyer, self.seller = devnet.account(BUYER), devnet.account(SELLER)
        self.issuer = devnet.account(ISSUER)
        self.pay, self.biz = devnet.payment.client, devnet.business.client
        self.token, self.titles = devnet.info.payment.token, devnet.info.business.titles
        self.names = {devnet.info.payment.chain_id: "payment",
                      devnet.info.business.chain_id: "business"}
        self.timeline: list[TimelineEntry] = []

    # --- the steps ------------------------------------------------------------------------

    def issue_title(self) -> tuple[int, bytes]:
        """The carrier issues the seller a title for this trade: its token id and document
        hash."""
        document_hash = hashlib.sha256(b"bill of lading for trade "
                                       + self.trade_id.hex().encode()).digest()
        self.party("business", self.biz.transact(
            self.issuer, to=self.titles, gas=300_000,
            data=title_issue_calldata(self.seller.address, document_hash)),
            "carrier issues the bill of lading to the seller")
        return titles_issued(self.biz, self.titles), document_hash

    def agree(self, amount: int, token_id: int, document_hash: bytes, hashlock: bytes,
              delivery_window: int) -> Terms:
        """The trade proposed and accepted at the gateway, its deadlines from the chains'
        next block times."""
        devnet, gateway = self.devnet, self.gateway
        t_deliver = max(devnet.business.next_block_timestamp(),
                        devnet.payment.next_block_timestamp()) + delivery_window
        t_pay = t_deliver + max(gateway.policy.required_margin, 600)
        terms = Terms(self.buyer.address, self.seller.address, self.buyer.address,
                      self.seller.address, amount, token_id, document_hash, hashlock,
                      t_deliver, t_pay)
        gateway.dispatcher.propose(ActionProposeTrade(self.trade_id, terms))
        gateway.dispatcher.apply_action(ActionAcceptTrade(self.trade_id))
        self.note(TimelineEntry(
            "gateway", None, None,
            f"trade {trade_ref(self.trade_id)} agreed: {amount} units against title "
            f"#{token_id}, T_deliver {t_deliver}, T_pay {t_pay} "
            f"(margin {t_pay - t_deliver} s >= {gateway.policy.required_margin} s)"))
        return terms

    def lock_payment(self, terms: Terms) -> None:
        self.party("payment", self.pay.transact(
            self.buyer, to=self.token, gas=100_000,
            data=token_approve_calldata(self.devnet.payment_htlc.address, MAX_UINT256)),
            "buyer approves the payment HTLC")
        receipt, _ = self.devnet.payment_htlc.lock(self.buyer, self.seller.address,
                                                   terms.amount, terms.hashlock, terms.t_pay)
        self.party("payment", receipt,
                   f"buyer locks {terms.amount} units for the seller until T_pay")
        self.relay_until(Phase.PAYMENT_LOCKED)

    def lock_delivery(self, terms: Terms) -> DeliveryLock:
        self.party("business", self.biz.transact(
            self.seller, to=self.titles, gas=100_000,
            data=title_approve_calldata(self.devnet.delivery_htlc.address, terms.token_id)),
            "seller approves the delivery HTLC for the title")
        receipt, delivery_lock = self.devnet.delivery_htlc.lock(
            self.seller, self.buyer.address, terms.token_id, terms.document_hash,
            self.trade_id, terms.hashlock, terms.t_deliver)
        self.party("business", receipt,
                   f"seller locks title #{terms.token_id} for the buyer until T_deliver")
        self.relay_until(Phase.DELIVERY_LOCKED)
        return delivery_lock

    def take_delivery(self, delivery_lock: DeliveryLock, secret: bytes) -> None:
        self.party("business", self.devnet.delivery_htlc.claim(self.buyer, delivery_lock, secret),
                   "buyer takes delivery: title to the buyer, secret now public")
        self.relay_until(Phase.SETTLED)

    def let_deadlines_pass(self, terms: Terms) -> None:
        """The buyer never performs: both chains' clocks run past their deadlines and the
        relayer returns both legs."""
        devnet = self.devnet
        devnet.business.set_next_block_timestamp(terms.t_deliver)
        devnet.business.mine()
        self.note(TimelineEntry("business", None, None,
                                "T_deliver passes, the buyer never performed"))
        self.relay_until(Phase.DELIVERY_REFUNDED)
        devnet.payment.set_next_block_timestamp(terms.t_pay)
        devnet.payment.mine()
        self.note(TimelineEntry("payment", None, None, "T_pay passes"))
        self.relay_until(Phase.PAYMENT_REFUNDED)

    def result(self, token_id: int, before: tuple[int, int]) -> SwapResult:
        buyer_before, seller_before = before
        return SwapResult(
            trade_id=trade_ref(self.trade_id),
            phase=self.current_phase().value,
            timeline=tuple(self.timeline),
            buyer_paid=buyer_before - self.balance(self.buyer.address),
            seller_received=self.balance(self.seller.address) - seller_before,
            title_owner=title_owner(self.biz, self.titles, token_id),
            token_id=token_id,
        )

    # --- the timeline and the gateway's view ------------------------------------------------

    def note(self, entry: TimelineEntry) -> None:
        self.timeline.append(entry)
        if self.report:
            self.report(entry)

    def party(self, chain: str, receipt: Receipt, what: str) -> None:
        if not receipt.succeeded:
            raise SwapFailed(f"{what}: transaction 0x{receipt.tx_hash.hex()} reverted")
        self.note(TimelineEntry(chain, receipt.block_number, "0x" + receipt.tx_hash.hex(), what))

    def relay_until(self, phase: Phase) -> None:
        seen = len(self.events())
        self.gateway.relayer.run_until(lambda: self.current_phase() in (phase,), max_steps=20)
        for row in self.events()[seen:]:
            what = _describe(row.kind, row.payload)
            self.note(TimelineEntry(self.names.get(row.chain_id, "gateway"), row.block_number,
                                    "0x" + row.tx_hash if row.tx_hash else None,
                                    "gateway: " + what))

    def events(self):  # noqa: ANN201
        with self.gateway.session_factory() as session:
            return Repository(session).events_for_trade(self.trade_id)

    def current_phase(self) -> Phase:
        with self.gateway.session_factory() as session:
            state = Repository(session).get_trade(self.trade_id)
        assert state is not None
        return state.phase

    def balance(self, address: str) -> int:
        return token_balance(self.pay, self.token, address)


PHASE_NEWS = {
    "payment_locked": "payment lock verified against the terms on chain",
    "delivery_locked": "delivery lock verified: the buyer can take delivery",
    "delivered": "secret seen on the business chain",
    "settled": "payment claimed for the seller with the secret: settled",
    "delivery_refunded": "title returned to the seller",
    "payment_refunded": "payment returned to the buyer",
}


def _describe(kind: str, payload: dict) -> str:
    if kind == "EventPhaseChanged":
        return PHASE_NEWS.get(payload["new"], f"trade is {payload['new']}")
    if kind == "EventLockRejected":
        return f"{payload['chain']} lock rejected: {'; '.join(payload['reasons'])}"
    if kind == "EventClaimAtRisk":
        return "payment claim at risk of missing T_pay"
    return kind
