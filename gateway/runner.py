"""The whole system in one process on the embedded default: two in-process chains with the
contracts, a migrated SQLite database, the relayer (a background thread) and the API. Demo
enterprises (a managed buyer and a managed seller, funded with test tokens and titles) are
created and their API keys written to `<workdir>/demo.json`."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from gateway.api.app import create_app
from gateway.api.context import ApiContext, ChainView, Limits
from gateway.api.enterprises import create_enterprise
from gateway.chain.calls import title_issue_calldata, titles_issued, token_mint_calldata
from gateway.chain.devnet import ISSUER, RELAYER, Devnet, start_devnet
from gateway.config import Settings
from gateway.domain.policy import TimingPolicy
from gateway.engine.build import Gateway, build_gateway
from gateway.engine.egress import Egress
from gateway.keys import Cipher, write_private_file

DEMO_FUNDS = 10_000_000_00  # 10,000,000.00 payment units for the demo buyer
DEMO_TITLES = 5
GAS_FUNDS = 10 * 10**18


@dataclass
class System:
    devnet: Devnet
    gateway: Gateway
    ctx: ApiContext
    app: FastAPI
    workdir: Path
    demo: dict = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    webhook_egress: Egress = field(default_factory=Egress)  # DVP_WEBHOOK_ALLOW_HOSTS

    def start_relayer(self, poll_interval: float) -> threading.Thread:
        thread = threading.Thread(target=self.gateway.relayer.run_forever,
                                  args=(self.stop, poll_interval), name="relayer", daemon=True)
        thread.start()
        return thread

    def start_webhooks(self, interval: float = 1.0) -> threading.Thread:
        """Deliver trade events to registered webhook endpoints (durable, retried)."""
        from gateway.engine.webhooks import WebhookSender

        sender = WebhookSender(self.gateway.session_factory, self.ctx.cipher,
                               egress=self.webhook_egress)
        thread = threading.Thread(target=sender.run_forever, args=(self.stop, interval),
                                  name="webhooks", daemon=True)
        thread.start()
        return thread

    def start_block_producer(self, interval: float = 1.0) -> threading.Thread:
        """Mine an empty block on each chain every `interval` seconds, so chain time follows
        the wall clock as on a real network (eth-tester otherwise mines only on transactions,
        and deadlines would never pass on an idle chain)."""

        def produce() -> None:
            while not self.stop.wait(interval):
                for chain in (self.devnet.payment, self.devnet.business):
                    chain.client.mine()

        thread = threading.Thread(target=produce, name="block-producer", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.stop.set()
        self.gateway.engine.dispose()


def _cipher(settings: Settings, workdir: Path) -> Cipher:
    if settings.secrets_key is not None:
        return Cipher(settings.secrets_key.get_secret_value())
    key_file = workdir / "secrets.key"  # demo only: production sets DVP_SECRETS_KEY
    if not key_file.exists():
        write_private_file(key_file, Cipher.generate_key())
    return Cipher(key_file.read_text().strip())


def build_system(settings: Settings, workdir: Path, *, demo: bool = True,
                 policy: TimingPolicy | None = None, limits: Limits | None = None,
                 database_url: str | None = None, devnet: Devnet | None = None) -> System:
    """`database_url`: an empty database to use instead of a new SQLite file in `workdir`
    (the chains are new, so the database must be too). `devnet`: chains already started
    and deployed (two anvil nodes, say) instead of new in-process ones; the caller stops
    them."""
    workdir.mkdir(parents=True, exist_ok=True)
    database = workdir / "gateway.db"
    for stale in (database, workdir / "gateway.db-wal", workdir / "gateway.db-shm"):
        stale.unlink(missing_ok=True)  # the in-process chains are new: so is their history
    cipher = _cipher(settings, workdir)
    devnet = devnet or start_devnet(settings.payment_chain_id, settings.business_chain_id)
    policy = policy or TimingPolicy(payment_confirmations=0, business_confirmations=0,
                                    payment_block_time=1, business_block_time=1,
                                    reaction_budget=30, drift_allowance=0)
    gateway = build_gateway(
        database_url=database_url or f"sqlite:///{database}", payment=devnet.payment.client,
        business=devnet.business.client, payment_htlc=devnet.info.payment.htlc,
        delivery_htlc=devnet.info.business.htlc, relayer_key=devnet.account(RELAYER),
        policy=policy, cipher=cipher)
    ctx = ApiContext(
        session_factory=gateway.session_factory, dispatcher=gateway.dispatcher, policy=policy,
        payment=ChainView(devnet.payment.client, devnet.info.payment.htlc,
                          devnet.info.payment.token),
        business=ChainView(devnet.business.client, devnet.info.business.htlc,
                           devnet.info.business.titles),
        cipher=cipher, limits=limits or Limits())
    egress = Egress(settings.webhook_allow_hosts)
    system = System(devnet, gateway, ctx, create_app(ctx, webhook_egress=egress), workdir,
                    webhook_egress=egress)
    if demo:
        system.demo = create_demo_enterprises(devnet, gateway.session_factory, cipher)
        write_private_file(workdir / "demo.json", json.dumps(system.demo, indent=2))
    return system


def create_demo_enterprises(devnet: Devnet, session_factory: sessionmaker[Session],
                            cipher: Cipher) -> dict:
    """A managed buyer with money and a managed seller with title documents, in the database
    and on the chains (in-process or real nodes); what `demo.json` holds."""
    issuer = devnet.account(ISSUER)
    out = {"payment_token": devnet.info.payment.token, "titles": devnet.info.business.titles,
           "payment_chain_id": devnet.info.payment.chain_id,
           "business_chain_id": devnet.info.business.chain_id, "enterprises": {}}
    with session_factory.begin() as session:
        buyer, buyer_key = create_enterprise(session, "Demo Buyer", managed=True,
                                             cipher=cipher)
        seller, seller_key = create_enterprise(session, "Demo Seller", managed=True,
                                               cipher=cipher)
    for ent in (buyer, seller):
        for chain in (devnet.payment, devnet.business):
            assert chain.client.transact(issuer, to=ent.payment_address, data=b"", gas=21_000,
                                         value=GAS_FUNDS).succeeded
    token, titles = devnet.info.payment.token, devnet.info.business.titles
    assert devnet.payment.client.transact(
        issuer, to=token, gas=100_000,
        data=token_mint_calldata(buyer.payment_address, DEMO_FUNDS)).succeeded
    documents = []
    for n in range(DEMO_TITLES):
        doc = hashlib.sha256(b"demo bill of lading %d" % n).digest()
        assert devnet.business.client.transact(
            issuer, to=titles, gas=300_000,
            data=title_issue_calldata(seller.business_address, doc)).succeeded
        documents.append({"token_id": str(titles_issued(devnet.business.client, titles)),
                          "document_hash": "0x" + doc.hex()})
    out["enterprises"] = {
        "buyer": {"id": buyer.id, "name": buyer.name, "api_key": buyer_key,
                  "payment_address": buyer.payment_address,
                  "business_address": buyer.business_address},
        "seller": {"id": seller.id, "name": seller.name, "api_key": seller_key,
                   "payment_address": seller.payment_address,
                   "business_address": seller.business_address, "titles": documents},
    }
    return out
