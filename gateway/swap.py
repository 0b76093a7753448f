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
from gateway.domain.locks import hashlock_of, new_secret
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
    buyer, seller, issuer = devnet.account(BUYER), devnet.account(SELLER), devnet.account(ISSUER)
    pay, biz = devnet.payment.client, devnet.business.client
    token, titles = devnet.info.payment.token, devnet.info.business.titles
    names = {devnet.info.payment.chain_id: "payment", devnet.info.business.chain_id: "business"}
    timeline: list[TimelineEntry] = []

    def note(entry: TimelineEntry) -> None:
        timeline.append(entry)
        if report:
            report(entry)

    def party(chain: str, receipt: Receipt, what: str) -> None:
        if not receipt.succeeded:
            raise SwapFailed(f"{what}: transaction 0x{receipt.tx_hash.hex()} reverted")
        note(TimelineEntry(chain, receipt.block_number, "0x" + receipt.tx_hash.hex(), what))

    def relay_until(phase: Phase) -> None:
        seen = len(events())
        gateway.relayer.run_until(lambda: current_phase() in (phase,), max_steps=20)
        for row in events()[seen:]:
            what = _describe(row.kind, row.payload)
            note(TimelineEntry(names.get(row.chain_id, "gateway"), row.block_number,
                               "0x" + row.tx_hash if row.tx_hash else None, "gateway: " + what))

    def events():  # noqa: ANN202
        with gateway.session_factory() as session:
            return Repository(session).events_for_trade(trade_id)

    def current_phase() -> Phase:
        with gateway.session_factory() as session:
            state = Repository(session).get_trade(trade_id)
        assert state is not None
        return state.phase

    def balance(address: str) -> int:
        return token_balance(pay, token, address)

    buyer_before, seller_before = balance(buyer.address), balance(seller.address)
    trade_id = new_secret()
    document_hash = hashlib.sha256(b"bill of lading for trade " + trade_id.hex().encode()).digest()
    party("business", biz.transact(issuer, to=titles, gas=300_000,
                                   data=title_issue_calldata(seller.address, document_hash)),
          "carrier issues the bill of lading to the seller")
    token_id = titles_issued(biz, titles)

    secret = new_secret()
    t_deliver = max(devnet.business.next_block_timestamp(),
                    devnet.payment.next_block_timestamp()) + delivery_window
    t_pay = t_deliver + max(gateway.policy.required_margin, 600)
    terms = Terms(buyer.address, seller.address, buyer.address, seller.address, amount,
                  token_id, document_hash, hashlock_of(secret), t_deliver, t_pay)
    gateway.dispatcher.propose(ActionProposeTrade(trade_id, terms))
    gateway.dispatcher.apply_action(ActionAcceptTrade(trade_id))
    note(TimelineEntry("gateway", None, None,
                       f"trade {trade_ref(trade_id)} agreed: {amount} units against title "
                       f"#{token_id}, T_deliver {t_deliver}, T_pay {t_pay} "
                       f"(margin {t_pay - t_deliver} s >= {gateway.policy.required_margin} s)"))

    party("payment", pay.transact(buyer, to=token, gas=100_000,
                                  data=token_approve_calldata(devnet.payment_htlc.address,
                                                              MAX_UINT256)),
          "buyer approves the payment HTLC")
    receipt, _ = devnet.payment_htlc.lock(buyer, seller.address, amount, terms.hashlock, t_pay)
    party("payment", receipt, f"buyer locks {amount} units for the seller until T_pay")
    relay_until(Phase.PAYMENT_LOCKED)

    party("business", biz.transact(seller, to=titles, gas=100_000,
                                   data=title_approve_calldata(devnet.delivery_htlc.address,
                                                               token_id)),
          "seller approves the delivery HTLC for the title")
    receipt, delivery_lock = devnet.delivery_htlc.lock(seller, buyer.address, token_id,
                                                       document_hash, trade_id, terms.hashlock,
                                                       t_deliver)
    party("business", receipt, f"seller locks title #{token_id} for the buyer until T_deliver")
    relay_until(Phase.DELIVERY_LOCKED)

    if take_delivery:
        party("business", devnet.delivery_htlc.claim(buyer, delivery_lock, secret),
              "buyer takes delivery: title to the buyer, secret now public")
        relay_until(Phase.SETTLED)
    else:
        devnet.business.set_next_block_timestamp(t_deliver)
        devnet.business.mine()
        note(TimelineEntry("business", None, None, "T_deliver passes, the buyer never performed"))
        relay_until(Phase.DELIVERY_REFUNDED)
        devnet.payment.set_next_block_timestamp(t_pay)
        devnet.payment.mine()
        note(TimelineEntry("payment", None, None, "T_pay passes"))
        relay_until(Phase.PAYMENT_REFUNDED)

    return SwapResult(
        trade_id=trade_ref(trade_id),
        phase=current_phase().value,
        timeline=tuple(timeline),
        buyer_paid=buyer_before - balance(buyer.address),
        seller_received=balance(seller.address) - seller_before,
        title_owner=title_owner(biz, titles, token_id),
        token_id=token_id,
    )


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
