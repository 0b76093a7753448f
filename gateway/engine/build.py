"""Wiring: a relayer from chain clients, contract addresses, keys and a database URL."""

from __future__ import annotations

from dataclasses import dataclass

from eth_account.signers.local import LocalAccount
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from gateway.chain.client import ChainClient
from gateway.chain.htlc import DeliveryHTLCProxy, PaymentHTLCProxy
from gateway.chain.poller import ChainPoller
from gateway.contracts import load_artifact
from gateway.db import migrate
from gateway.db.repository import Repository
from gateway.db.session import make_engine, make_session_factory
from gateway.domain.policy import TimingPolicy
from gateway.domain.trade import Chain
from gateway.engine.dispatcher import Dispatcher
from gateway.engine.executor import ChainEndpoint, Executor, SendPolicy
from gateway.engine.relayer import Relayer

RECONCILE_EVERY = 10  # relayer steps between reconciliations (`DVP_RECONCILE_EVERY`)


@dataclass
class Gateway:
    engine: Engine
    session_factory: sessionmaker[Session]
    dispatcher: Dispatcher
    relayer: Relayer
    policy: TimingPolicy


def open_database(url: str, *, upgrade: bool = True) -> tuple[Engine, sessionmaker[Session]]:
    engine = make_engine(url)
    if upgrade:
        migrate.upgrade(engine)
    return engine, make_session_factory(engine)


def build_gateway(*, database_url: str, payment: ChainClient, business: ChainClient,
                  payment_htlc: str, delivery_htlc: str, relayer_key: LocalAccount,
                  managed_keys: dict[str, LocalAccount] | None = None,
                  policy: TimingPolicy | None = None, payment_confirmations: int = 0,
                  business_confirmations: int = 0, start_blocks: tuple[int, int] = (0, 0),
                  max_batch: int = 50, key_lookup=None,  # noqa: ANN001
                  send_policy: SendPolicy | None = None, max_reorg_depth: int | None = None,
                  stall_after: float | None = None,
                  reconcile_every: int = RECONCILE_EVERY,
                  finality: tuple[int | str | None, int | str | None] | None = None) -> Gateway:
    """`finality`: each chain's finality rule for the pollers (a depth or a node tag); by
    default the policy's finality depths."""
    if payment.chain_id == business.chain_id:
        raise ValueError(f"both chains report chain id {payment.chain_id}")
    policy = policy or TimingPolicy(payment_confirmations=payment_confirmations,
                                    business_confirmations=business_confirmations)
    finality = finality or (policy.payment_finality, policy.business_finality)
    engine, session_factory = open_database(database_url)
    with session_factory.begin() as session:  # wake times are never trusted across starts
        repo = Repository(session)
        repo.lock_trade_writes()
        repo.wake_all_active()
    dispatcher = Dispatcher(session_factory, policy, chain_ids={
        Chain.PAYMENT: payment.chain_id, Chain.BUSINESS: business.chain_id})
    pay_proxy = PaymentHTLCProxy(payment, payment.contract(payment_htlc,
                                                           load_artifact("PaymentHTLC")))
    dlv_proxy = DeliveryHTLCProxy(business, business.contract(delivery_htlc,
                                                              load_artifact("DeliveryHTLC")))
    pollers = {
        Chain.PAYMENT: ChainPoller(Chain.PAYMENT, payment, payment_htlc,
                                   confirmations=payment_confirmations,
                                   start_block=start_blocks[0], max_reorg_depth=max_reorg_depth,
                                   stall_after=stall_after, finality=finality[0]),
        Chain.BUSINESS: ChainPoller(Chain.BUSINESS, business, delivery_htlc,
                                    confirmations=business_confirmations,
                                    start_block=start_blocks[1],
                                    max_reorg_depth=max_reorg_depth, stall_after=stall_after,
                                    finality=finality[1]),
    }
    executor = Executor(session_factory, {
        Chain.PAYMENT: ChainEndpoint(Chain.PAYMENT, payment, payment_htlc=pay_proxy),
        Chain.BUSINESS: ChainEndpoint(Chain.BUSINESS, business, delivery_htlc=dlv_proxy),
    }, relayer_key, managed_keys, max_batch=max_batch, key_lookup=key_lookup,
        send_policy=send_policy, on_refused=dispatcher.apply_action, policy=policy)
    relayer = Relayer(session_factory, dispatcher, pollers, executor,
                      reconcile_every=reconcile_every)
    return Gateway(engine, session_factory, dispatcher, relayer, policy)
