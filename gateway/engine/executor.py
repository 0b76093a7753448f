"""The outbox executor: turns pending effects into transactions, exactly once in effect.

For every pending effect, in order:
1. Is its result already on chain (whoever caused it)? Then there is nothing to send: the
   poller will bring the log and the dispatcher will close the effect.
2. Is a transaction for it in flight? Then wait for it (or resend it after a restart).
3. Otherwise sign a new transaction, record it (raw bytes, hash, nonce) in the database and
   commit, and only then broadcast it. A crash between the two leaves a recorded, unsent
   transaction that the next run broadcasts; a crash after leaves one that is found mined.

Payment claims due on the same chain go out together as one `claimMany`. Claims and refunds
are sent from the relayer key (the contracts pay only the named party, whoever calls);
locks for managed parties are sent from their own keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from eth_account.signers.local import LocalAccount
from sqlalchemy.orm import Session, sessionmaker

from gateway.chain.client import ChainClient, Receipt
from gateway.chain.htlc import (
    GAS_BATCH_BASE,
    GAS_BATCH_PER_LOCK,
    GAS_CLAIM,
    GAS_DELIVERY_EXIT,
    GAS_DELIVERY_LOCK,
    GAS_LOCK,
    GAS_REFUND,
    DeliveryHTLCProxy,
    PaymentHTLCProxy,
    claim_many_calldata,
)
from gateway.db.models import AttemptRow, OutboxRow
from gateway.db.repository import Repository
from gateway.domain.trade import (
    Chain,
    ContractSend,
    ContractSendDeliveryClaim,
    ContractSendDeliveryLock,
    ContractSendDeliveryRefund,
    ContractSendPaymentClaim,
    ContractSendPaymentLock,
    ContractSendPaymentRefund,
)
from gateway.engine import metrics
from gateway.engine.crashpoints import reach

log = structlog.get_logger("gateway.executor")

OPEN, NONE = 1, 0
MAX_BATCH = 50


@dataclass
class ChainEndpoint:
    """What the executor needs of one chain."""

    chain: Chain
    client: ChainClient
    payment_htlc: PaymentHTLCProxy | None = None
    delivery_htlc: DeliveryHTLCProxy | None = None

    @property
    def chain_id(self) -> int:
        return self.client.chain_id


@dataclass
class _Tx:
    sender: LocalAccount
    to: str
    data: bytes
    gas: int
    rows: list[OutboxRow] = field(default_factory=list)


class KeyError_(LookupError):
    pass


class Executor:
    def __init__(self, session_factory: sessionmaker[Session],
                 endpoints: dict[Chain, ChainEndpoint], relayer: LocalAccount,
                 managed_keys: dict[str, LocalAccount] | None = None,
                 max_batch: int = MAX_BATCH,
                 key_lookup: Callable[[str], LocalAccount | None] | None = None) -> None:
        self.session_factory = session_factory
        self.endpoints = endpoints
        self.relayer = relayer
        self.keys = {relayer.address: relayer, **(managed_keys or {})}
        self.key_lookup = key_lookup
        self.max_batch = max_batch

    def run_once(self) -> int:
        """One pass over every chain; returns how many transactions were broadcast."""
        return sum(self._run_chain(ep) for ep in self.endpoints.values())

    # --- one chain ------------------------------------------------------------------------

    def _run_chain(self, ep: ChainEndpoint) -> int:
        broadcast = self._settle_attempts(ep)
        with self.session_factory.begin() as session:
            repo = Repository(session)
            txs = self._plan(ep, repo)
            nonces: dict[str, int] = {}
            signed: list[AttemptRow] = []
            for tx in txs:
                nonce = nonces.get(tx.sender.address)
                if nonce is None:
                    nonce = self._next_nonce(ep, repo, tx.sender.address)
                raw = ep.client.sign_with_nonce(tx.sender, to=tx.to, data=tx.data, gas=tx.gas,
                                                nonce=nonce)
                nonces[tx.sender.address] = nonce + 1
                attempt = repo.add_attempt(ep.chain_id, tx.sender.address, nonce,
                                           ep.client.tx_hash(raw), raw)
                for row in tx.rows:
                    row.attempt_id = attempt.id
                signed.append(attempt)
            if signed:
                reach("executor.before_record")
        # Recorded and committed: now send. A crash here is healed by _settle_attempts.
        for attempt in signed:
            reach("executor.after_record")
            self._broadcast(ep, attempt.id)
        return broadcast + len(signed)

    def _next_nonce(self, ep: ChainEndpoint, repo: Repository, sender: str) -> int:
        on_chain = ep.client.w3.eth.get_transaction_count(sender, "pending")
        recorded = repo.max_inflight_nonce(ep.chain_id, sender)
        return max(on_chain, recorded + 1 if recorded is not None else 0)

    def _broadcast(self, ep: ChainEndpoint, attempt_id: int) -> None:
        with self.session_factory.begin() as session:
            attempt = Repository(session).get_attempt(attempt_id)
            assert attempt is not None
            raw = bytes.fromhex(attempt.raw_tx)
            try:
                ep.client.send_raw(raw)
                reach("executor.after_broadcast")
                attempt.status = "sent"
            except Exception as exc:  # noqa: BLE001 - node refused: decided by _settle_attempts
                log.warning("broadcast_failed", chain=ep.chain.value, nonce=attempt.nonce,
                            tx=attempt.tx_hash, error=str(exc)[:200])
                attempt.status = "sent"  # it may still be known to the node; check its receipt
        metrics.TX_SENT.labels(ep.chain.value).inc()
        log.info("tx_sent", chain=ep.chain.value, tx=attempt.tx_hash, nonce=attempt.nonce)

    def _settle_attempts(self, ep: ChainEndpoint) -> int:
        """Find out what became of every signed or sent transaction."""
        resent = 0
        with self.session_factory.begin() as session:
            repo = Repository(session)
            for attempt in repo.unsettled_attempts(ep.chain_id):
                receipt: Receipt | None = ep.client.receipt(bytes.fromhex(attempt.tx_hash))
                if receipt is not None:
                    attempt.status = "mined" if receipt.succeeded else "reverted"
                    attempt.block_number = receipt.block_number
                    continue
                nonce_used = ep.client.w3.eth.get_transaction_count(attempt.sender, "latest")
                if nonce_used > attempt.nonce:
                    attempt.status = "dropped"  # another transaction took its nonce
                    continue
                try:  # recorded before a crash, or dropped from the mempool: send it again
                    ep.client.send_raw(bytes.fromhex(attempt.raw_tx))
                    attempt.status = "sent"
                    resent += 1
                except Exception as exc:  # noqa: BLE001
                    log.warning("rebroadcast_failed", tx=attempt.tx_hash, error=str(exc)[:200])
        return resent

    # --- planning -------------------------------------------------------------------------

    def _plan(self, ep: ChainEndpoint, repo: Repository) -> list[_Tx]:
        claims: list[tuple[OutboxRow, ContractSendPaymentClaim]] = []
        txs: list[_Tx] = []
        for row, effect in repo.pending_effects(ep.chain.value):
            retry = False
            if row.attempt_id is not None:
                attempt = repo.get_attempt(row.attempt_id)
                if attempt is not None and attempt.status in ("signed", "sent"):
                    continue  # in flight
                retry = True
            if isinstance(effect, ContractSendPaymentClaim) and not retry:
                claims.append((row, effect))  # checked below, as a batch or alone
                continue
            # Done on chain, by us or anyone: the poller brings the log. A mined attempt
            # whose result is absent (a batch skipped the entry, a reorg removed it) and a
            # reverted or dropped one all fall through to a new attempt.
            if self._satisfied(ep, effect):
                continue
            try:
                if isinstance(effect, ContractSendPaymentClaim):
                    claims.append((row, effect))
                else:
                    tx = self._tx_for(ep, row, effect)
                    approval = self._approval(ep, effect, tx.sender)
                    txs.extend([approval, tx] if approval else [tx])
            except KeyError_ as exc:
                row.status, row.last_error = "failed", str(exc)
                log.error("effect_failed", key=row.key, error=str(exc))
        if len(claims) == 1 and self._satisfied(ep, claims[0][1]):
            claims = []
        # Two or more claims go out as claimMany without a check each: the contract itself
        # skips a lock someone else claimed meanwhile, so a lost race costs a little gas, not
        # a revert, and the check would cost one call per lock.
        for start in range(0, len(claims), self.max_batch):
            txs.append(self._claim_tx(ep, claims[start:start + self.max_batch]))
        return txs

    def _satisfied(self, ep: ChainEndpoint, effect: ContractSend) -> bool:
        match effect:
            case ContractSendPaymentLock():
                assert ep.payment_htlc is not None
                return ep.payment_htlc.status(ep.payment_htlc.lock_id(effect.lock)) != NONE
            case ContractSendDeliveryLock():
                assert ep.delivery_htlc is not None
                return ep.delivery_htlc.status(ep.delivery_htlc.lock_id(effect.lock)) != NONE
            case ContractSendPaymentClaim() | ContractSendPaymentRefund():
                assert ep.payment_htlc is not None
                return ep.payment_htlc.status(effect.lock_id) != OPEN
            case ContractSendDeliveryClaim() | ContractSendDeliveryRefund():
                assert ep.delivery_htlc is not None
                return ep.delivery_htlc.status(effect.lock_id) != OPEN
        return False

    def _key(self, address: str) -> LocalAccount:
        if address not in self.keys and self.key_lookup is not None:
            found = self.key_lookup(address)
            if found is not None:
                self.keys[address] = found
        try:
            return self.keys[address]
        except KeyError:
            raise KeyError_(f"no signing key configured for managed account {address}") from None

    def _approval(self, ep: ChainEndpoint, effect: ContractSend, sender: LocalAccount,
                  ) -> _Tx | None:
        """A managed party's lock needs the HTLC approved to pull its tokens: the approval
        goes out first, from the same key, when it is missing."""
        from gateway.contracts import load_artifact

        if isinstance(effect, ContractSendPaymentLock) and ep.payment_htlc is not None:
            htlc = ep.payment_htlc
            token = ep.client.contract(htlc.htlc.functions.token().call(),
                                       load_artifact("PaymentToken"))
            if token.functions.allowance(sender.address, htlc.address).call() >= \
                    effect.lock.amount:
                return None
            return _Tx(sender, token.address,
                       token.encode_abi("approve", [htlc.address, 2**256 - 1]), 80_000)
        if isinstance(effect, ContractSendDeliveryLock) and ep.delivery_htlc is not None:
            dh = ep.delivery_htlc
            titles = ep.client.contract(dh.htlc.functions.titles().call(),
                                        load_artifact("TitleDocument"))
            if titles.functions.isApprovedForAll(sender.address, dh.address).call():
                return None
            return _Tx(sender, titles.address,
                       titles.encode_abi("setApprovalForAll", [dh.address, True]), 80_000)
        return None

    def _tx_for(self, ep: ChainEndpoint, row: OutboxRow, effect: ContractSend) -> _Tx:
        match effect:
            case ContractSendPaymentLock(lock=lk):
                htlc = ep.payment_htlc
                assert htlc is not None
                data = htlc.htlc.encode_abi("lock", [lk.beneficiary, lk.amount, lk.hashlock,
                                                     lk.timelock])
                return _Tx(self._key(lk.sender), htlc.address, data, GAS_LOCK, [row])
            case ContractSendDeliveryLock(lock=lk):
                dh = ep.delivery_htlc
                assert dh is not None
                data = dh.htlc.encode_abi("lock", [lk.buyer, lk.token_id, lk.document_hash,
                                                   lk.trade_id, lk.hashlock, lk.timelock])
                return _Tx(self._key(lk.seller), dh.address, data, GAS_DELIVERY_LOCK, [row])
            case ContractSendPaymentRefund(lock=lk):
                assert ep.payment_htlc is not None
                data = ep.payment_htlc.htlc.encode_abi("refund", [lk.as_tuple()])
                return _Tx(self.relayer, ep.payment_htlc.address, data, GAS_REFUND, [row])
            case ContractSendDeliveryClaim(lock=lk, preimage=preimage):
                assert ep.delivery_htlc is not None
                data = ep.delivery_htlc.htlc.encode_abi("claim", [lk.as_tuple(), preimage])
                return _Tx(self.relayer, ep.delivery_htlc.address, data, GAS_DELIVERY_EXIT, [row])
            case ContractSendDeliveryRefund(lock=lk):
                assert ep.delivery_htlc is not None
                data = ep.delivery_htlc.htlc.encode_abi("refund", [lk.as_tuple()])
                return _Tx(self.relayer, ep.delivery_htlc.address, data, GAS_DELIVERY_EXIT, [row])
        raise TypeError(f"no transaction for {type(effect).__name__}")

    def _claim_tx(self, ep: ChainEndpoint,
                  claims: list[tuple[OutboxRow, ContractSendPaymentClaim]]) -> _Tx:
        htlc = ep.payment_htlc
        assert htlc is not None
        rows = [row for row, _ in claims]
        if len(claims) == 1:
            (_, c), = claims
            data = htlc.htlc.encode_abi("claim", [c.lock.as_tuple(), c.preimage])
            return _Tx(self.relayer, htlc.address, data, GAS_CLAIM, rows)
        data = claim_many_calldata([c.lock for _, c in claims], [c.preimage for _, c in claims])
        gas = GAS_BATCH_BASE + GAS_BATCH_PER_LOCK * len(claims)
        return _Tx(self.relayer, htlc.address, data, gas, rows)
