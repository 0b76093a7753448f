"""Wiring: a relayer from chain clients, contract addresses, keys and a database URL."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from gateway.chain.accounts import Signer, load_account
from gateway.chain.client import ChainClient
from gateway.chain.htlc import DeliveryHTLCProxy, PaymentHTLCProxy
from gateway.chain.poller import ChainPoller
from gateway.db import migrate
from gateway.db.enterprises import EnterpriseRepository
from gateway.db.repository import Repository
from gateway.db.session import make_engine, make_session_factory
from gateway.domain.policy import TimingPolicy
from gateway.domain.trade import Chain
from gateway.engine.dispatcher import Dispatcher
from gateway.engine.executor import ChainEndpoint, Executor, SendPolicy
from gateway.engine.relayer import Relayer
from gateway.keys import Cipher

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


def managed_key_lookup(session_factory: sessionmaker[Session],
                       cipher: Cipher) -> Callable[[str], Signer | None]:
    """The signing key of a managed enterprise's account by its address, read from the
    database and decrypted with `cipher` when asked (the executor asks once per address and
    keeps it); None for an address whose key the gateway does not hold."""

    def lookup(address: str) -> Signer | None:
        with session_factory() as session:
            encrypted = EnterpriseRepository(session).managed_key_of_address(address)
        return load_account(cipher.decrypt(encrypted)) if encrypted is not None else None

    return lookup


def build_gateway(*, database_url: str, payment: ChainClient, business: ChainClient,
                  payment_htlc: str, delivery_htlc: str, relayer_key: Signer,
                  managed_keys: dict[str, Signer] | None = None,
                  policy: TimingPolicy | None = None, payment_confirmations: int = 0,
                  business_confirmations: int = 0, start_blocks: tuple[int, int] = (0, 0),
                  max_batch: int = 50,
                  key_lookup: Callable[[str], Signer | None] | None = None,
                  cipher: Cipher | None = None,
                  send_policy: SendPolicy | None = None, max_reorg_depth: int | None = None,
                  stall_after: float | None = None,
                  reconcile_every: int = RECONCILE_EVERY,
                  finality: tuple[int | str | None, int | str | None] | None = None) -> Gateway:
    """`finality`: each chain's finality rule for the pollers (a depth or a node tag); by
    default the policy's finality depths. `cipher` (DVP_SECRETS_KEY): managed enterprises'
    signing keys are looked up in the database by address (`managed_key_lookup`) when no
    `key_lookup` is given."""
    if payment.chain_id == business.chain_id:
        raise ValueError(f"both chains report chain id {payment.chain_id}")
    policy = policy or TimingPolicy(payment_confirmations=payment_confirmations,
                                    business_confirmations=business_confirmations)
    finality = finality or (policy.payment_finality, policy.business_finality)
    engine, session_factory = open_database(database_url)
    if key_lookup is None and cipher is not None:
        key_lookup = managed_key_lookup(session_factory, cipher)
    with session_factory.begin() as session:  # wake times are never trusted across starts
        repo = Repository(session)
        repo.lock_trade_writes()
        repo.wake_all_active()
    dispatcher = Dispatcher(session_factory, policy, chain_ids={
        Chain.PAYMENT: payment.chain_id, Chain.BUSINESS: business.chain_id})
    pay_proxy = PaymentHTLCProxy.at(payment, payment_htlc)
    dlv_proxy = DeliveryHTLCProxy.at(business, delivery_htlc)
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
