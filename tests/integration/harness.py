"""End-to-end harness: two in-process chains, a migrated SQLite database and a relayer, plus
the buyer and seller acting on chain with their own keys (as a party's wallet would)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from gateway.chain.devnet import BUYER, ISSUER, RELAYER, SELLER, Devnet
from gateway.domain.locks import DeliveryLock, PaymentLock, hashlock_of, new_secret
from gateway.domain.policy import TimingPolicy
from gateway.domain.trade import ActionAcceptTrade, ActionProposeTrade, Terms, TradeState
from gateway.engine.build import Gateway, build_gateway
from tests.helpers import approve, balance_of

# Test chains mine a block per transaction, one second apart.
TEST_POLICY = TimingPolicy(payment_confirmations=0, business_confirmations=0,
                           payment_block_time=1, business_block_time=1, reaction_budget=30,
                           drift_allowance=0)
DELIVERY_WINDOW = 600  # T_deliver - now
MARGIN = 600  # T_pay - T_deliver (the policy requires 32)
AMOUNT = 1_234_56  # 1,234.56


def make_gateway(devnet: Devnet, database_url: str, **kwargs) -> Gateway:
    return build_gateway(
        database_url=database_url, payment=devnet.payment.client,
        business=devnet.business.client, payment_htlc=devnet.info.payment.htlc,
        delivery_htlc=devnet.info.business.htlc, relayer_key=devnet.account(RELAYER),
        policy=kwargs.pop("policy", TEST_POLICY), **kwargs)


@dataclass
class Trade:
    """One trade's secret and terms, and what the parties locked."""

    trade_id: bytes
    secret: bytes
    terms: Terms
    payment_lock: PaymentLock | None = None
    delivery_lock: DeliveryLock | None = None
    notes: dict = field(default_factory=dict)


class World:
    def __init__(self, devnet: Devnet, gateway: Gateway) -> None:
        self.devnet = devnet
        self.gateway = gateway
        self.buyer = devnet.account(BUYER)
        self.seller = devnet.account(SELLER)
        self.issuer = devnet.account(ISSUER)
        approve(devnet.payment.client, self.buyer, devnet.payment_token,
                devnet.payment_htlc.address)
        assert devnet.business.client.transact(
            self.seller, to=devnet.titles.address, gas=100_000,
            data=devnet.titles.encode_abi("setApprovalForAll",
                                          [devnet.delivery_htlc.address, True])).succeeded

    # --- parties --------------------------------------------------------------------------

    def issue_title(self) -> tuple[int, bytes]:
        doc = hashlib.sha256(new_secret()).digest()
        titles = self.devnet.titles
        assert self.devnet.business.client.transact(
            self.issuer, to=titles.address, gas=300_000,
            data=titles.encode_abi("issue", [self.seller.address, doc])).succeeded
        return titles.functions.issuedCount().call(), doc

    def agree(self, amount: int = AMOUNT, margin: int = MARGIN,
              delivery_window: int = DELIVERY_WINDOW, *, managed_seller: bool = False,
              managed_buyer: bool = False) -> Trade:
        token_id, doc = self.issue_title()
        secret = new_secret()
        now = max(self.devnet.payment.next_block_timestamp(),
                  self.devnet.business.next_block_timestamp())
        t_deliver = now + delivery_window
        terms = Terms(self.buyer.address, self.seller.address, self.buyer.address,
                      self.seller.address, amount, token_id, doc, hashlock_of(secret),
                      t_deliver, t_deliver + margin)
        trade = Trade(new_secret(), secret, terms)
        self.gateway.dispatcher.propose(ActionProposeTrade(
            trade.trade_id, terms, managed_buyer=managed_buyer, managed_seller=managed_seller))
        self.gateway.dispatcher.apply_action(ActionAcceptTrade(trade.trade_id))
        return trade

    def lock_payment(self, trade: Trade, **overrides) -> None:
        t = trade.terms
        args = {"beneficiary": t.seller_payment, "amount": t.amount, "hashlock": t.hashlock,
                "timelock": t.t_pay, **overrides}
        receipt, trade.payment_lock = self.devnet.payment_htlc.lock(self.buyer, **args)
        assert receipt.succeeded

    def lock_delivery(self, trade: Trade) -> None:
        t = trade.terms
        receipt, trade.delivery_lock = self.devnet.delivery_htlc.lock(
            self.seller, t.buyer_business, t.token_id, t.document_hash, trade.trade_id,
            t.hashlock, t.t_deliver)
        assert receipt.succeeded

    def take_delivery(self, trade: Trade, caller=None) -> None:  # noqa: ANN001
        assert trade.delivery_lock is not None
        receipt = self.devnet.delivery_htlc.claim(caller or self.buyer, trade.delivery_lock,
                                                  trade.secret)
        assert receipt.succeeded

    # --- observations ---------------------------------------------------------------------

    def state(self, trade: Trade) -> TradeState:
        with self.gateway.session_factory() as session:
            from gateway.db.repository import Repository

            state = Repository(session).get_trade(trade.trade_id)
        assert state is not None
        return state

    def phase(self, trade: Trade) -> str:
        return self.state(trade).phase.value

    def token_balance(self, address: str) -> int:
        return balance_of(self.devnet.payment_token, address)

    def title_owner(self, trade: Trade) -> str:
        return self.devnet.titles.functions.ownerOf(trade.terms.token_id).call()

    def run_until_phase(self, trade: Trade, phase: str, max_steps: int = 30) -> int:
        return self.gateway.relayer.run_until(lambda: self.phase(trade) == phase, max_steps)
