"""The outbox executor: turns pending effects into transactions, exactly once in effect.

For every pending effect, in order:
1. Is its result already on chain (whoever caused it)? Then there is nothing to send: the
   poller will bring the log and the dispatcher will close the effect. A claim or refund
   whose lock does not exist on chain (status None: a reorg or a node short of blocks removed
   it) is not done: it is not sent (it would revert), the trade is told once
   (`EffectRefused(final=False)`, flag `blocked:<key>`, logged critical `lock_missing`), and
   it goes out when the lock is back. The statuses of every effect a pass checks are read
   together, one JSON-RPC batch request per pass and chain (`statuses_of`).
2. Is a transaction for it in flight? Then wait for it (or resend it after a restart).
3. Would it revert? Never send a transaction known to revert: a managed party's lock is
   checked at the latest block (the buyer's balance covers the amount, the seller owns the
   title) and every transaction sent alone (not a `claimMany`, which skips lost races by
   design) is simulated with `eth_call`, except a lock that an approval precedes in the same
   pass. A lock that cannot be made is given up (`EffectRefused(final=True)`: the trade is
   flagged `<kind>_failed` and can be cancelled); a claim or refund stays pending and is
   checked again each pass. A managed buyer's own delivery claim (its private secret, not yet
   public) is signed only if the business node's latest block, not the relayer's cursor,
   leaves the claim time to be mined and final before its timelock
   (`TimingPolicy.delivery_claim_is_safe`): a claim that reverts still publishes its preimage,
   so otherwise it is given up (`delivery_claim_failed`) and the secret is never revealed.
   Refusals are logged (`effect_refused`), counted (`dvp_effects_refused_total`) and applied
   through the dispatcher after the planning transaction commits.
4. Otherwise sign a new transaction, record it (raw bytes, hash, nonce) in the database and
   commit, and only then broadcast it. A crash between the two leaves a recorded, unsent
   transaction that the next run broadcasts; a crash after leaves one that is found mined.

Payment claims due on the same chain go out together as one `claimMany`. Claims and refunds
are sent from the relayer key (the contracts pay only the named party, whoever calls);
locks for managed parties are sent from their own keys.

What becomes of a sent transaction (`_settle_attempts`, every pass, per chain; the receipts
of all of them read in one batch request, `ChainClient.receipts`):
- mined (by its hash, or a sibling at the same nonce was): recorded, siblings `replaced`; one
  that reverted is a warning (`tx_reverted`, with the revert reason replayed on its parent
  block when the node can) and its effects are planned again (and checked: item 3 above);
- its nonce used by another transaction: `dropped` (the effect is re-planned; done on chain
  or sent again with a new nonce);
- unknown to the node (dropped from its pool, or recorded before a crash): the same raw bytes
  are broadcast again;
- pending longer than `SendPolicy.replace_after`, or refused as underpriced: replaced at the
  same nonce with both fee fields bumped by `bump_percent` (>= 10%) and never above the
  configured cap. The replacement is recorded (a new AttemptRow, the old one `replaced`, the
  effects pointed at it) and committed before it is broadcast. At the cap no replacement is
  made: the transaction waits, once logged per pass, never in a loop.
- a payment claim near its deadline (`_Deadline`): from `T_pay - required_margin` (the policy's
  latest reveal) to the last moment a claim can be sent and still be final in time (`T_pay -
  claim_lead_time`), by the payment node's latest block time, the offer rises with the
  fraction of that window used from the current suggestion to the cap (`toward_cap`), the cap
  itself at the end. The pending claim is replaced as soon as that target is `bump_percent`
  above it, without waiting for `replace_after`; a claim first signed in the window is priced
  the same way. When the base fee is above the cap the claim cannot be mined at all: logged
  critical (`claim_fee_cap_insufficient`, naming the trades) and counted, once per rise; it
  waits, and goes out when the base fee falls back.
- a nonce gap (our lowest live nonce above the chain's, nothing pending below it: a
  transaction of this key made elsewhere was dropped) is filled with zero-value self-transfers,
  recorded before they are sent, so the queued transactions can be mined.
Refusals are classified (`classify_send_error`): "already known" is success, "nonce too low"
is settled from the chain's nonce on the next pass, "underpriced" leads to a replacement.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from sqlalchemy.orm import Session, sessionmaker

from gateway.chain.accounts import Signer
from gateway.chain.client import (
    SEND_KNOWN,
    SEND_NONCE_TOO_LOW,
    SEND_UNDERPRICED,
    ChainClient,
    Fees,
    Receipt,
    RevertError,
    classify_send_error,
    decode_signed,
)
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
    delivery_claim_calldata,
    delivery_lock_calldata,
    delivery_refund_calldata,
    payment_claim_calldata,
    payment_lock_calldata,
    payment_refund_calldata,
    revert_abi,
    statuses_of,
)
from gateway.db.models import AttemptRow, OutboxRow
from gateway.db.repository import Repository
from gateway.domain.codec import decode
from gateway.domain.marks import Flag, FlagKind
from gateway.domain.policy import TimingPolicy
from gateway.domain.trade import (
    Chain,
    ContractSend,
    ContractSendDeliveryClaim,
    ContractSendDeliveryLock,
    ContractSendDeliveryRefund,
    ContractSendPaymentClaim,
    ContractSendPaymentLock,
    ContractSendPaymentRefund,
    EffectRefused,
)
from gateway.engine import metrics
from gateway.engine.crashpoints import reach
from gateway.logs import trade_ref

log = structlog.get_logger("gateway.executor")

OPEN, NONE = 1, 0
# What the chain says of an effect's result (`_on_chain`): already there, its lock missing (a
# claim or refund whose lock the chain does not have), or still to be done.
DONE, MISSING, TO_DO = "done", "missing", "to_do"
MAX_BATCH = 50
GAS_FILLER = 21_000
LIVE = ("signed", "sent")


@dataclass(frozen=True)
class SendPolicy:
    """When a pending transaction is replaced, and by how much its fees go up."""

    replace_after: float = 60.0  # seconds since it was signed, still not mined
    bump_percent: int = 12  # on both fee fields; at least 10 (geth's replacement rule)


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
    sender: Signer
    to: str
    data: bytes
    gas: int
    rows: list[OutboxRow] = field(default_factory=list)
    timelocks: tuple[int, ...] = ()  # a payment claim's locks: priced by its deadline


@dataclass(frozen=True)
class _Deadline:
    """A payment claim inside its deadline window (see the module docstring)."""

    fraction: float  # of the window used: 0 at its start, 1 at the last moment and after
    trades: tuple[str, ...]  # 0x-prefixed trade ids


class KeyError_(LookupError):
    pass


class Executor:
    def __init__(self, session_factory: sessionmaker[Session],
                 endpoints: dict[Chain, ChainEndpoint], relayer: Signer,
                 managed_keys: dict[str, Signer] | None = None,
                 max_batch: int = MAX_BATCH,
                 key_lookup: Callable[[str], Signer | None] | None = None,
                 send_policy: SendPolicy | None = None,
                 on_refused: Callable[[EffectRefused], object] | None = None,
                 policy: TimingPolicy | None = None) -> None:
        self.send_policy = send_policy or SendPolicy()
        # Deadlines: claims priced by the time left, a managed buyer's reveal checked against
        # the node's latest block. None: neither (every claim priced as any transaction).
        self.policy = policy
        self._cap_short: set[tuple[int, str, int]] = set()  # (chain, sender, nonce) alerted
        # Applies an EffectRefused to its trade (the dispatcher's apply_action), after the
        # planning transaction has committed.
        self.on_refused = on_refused
        self._reported: set[tuple[bytes, str]] = set()  # refusals logged by this process
        self.session_factory = session_factory
        self.endpoints = endpoints
        self.relayer = relayer
        self.keys = {relayer.address: relayer, **(managed_keys or {})}
        self.key_lookup = key_lookup
        self.max_batch = max_batch

    def run_once(self) -> int:
        """One pass over every chain; returns how many transactions were broadcast."""
        return sum(self._run_chain(ep) for ep in self.endpoints.values())

    def run_chain(self, chain: Chain) -> int:
        """One pass over one chain (the relayer runs it under that chain's lock)."""
        return self._run_chain(self.endpoints[chain])

    # --- one chain ------------------------------------------------------------------------

    def _run_chain(self, ep: ChainEndpoint) -> int:
        broadcast = self._settle_attempts(ep)
        refusals: list[EffectRefused] = []
        with self.session_factory.begin() as session:
            repo = Repository(session)
            repo.lock_chain_sends(ep.chain_id)  # first: plan from what others committed
            txs = self._plan(ep, repo, refusals)
            nonces: dict[str, int] = {}
            signed: list[AttemptRow] = []
            fees = ep.client.suggest_fees() if txs else None
            for tx in txs:
                nonce = nonces.get(tx.sender.address)
                if nonce is None:
                    nonce = self._next_nonce(ep, repo, tx.sender.address)
                deadline = self._deadline(ep.client.head()[0], tx.timelocks, ()) \
                    if tx.timelocks and self.policy is not None else None
                raw = ep.client.sign_with_nonce(
                    tx.sender, to=tx.to, data=tx.data, gas=tx.gas, nonce=nonce,
                    fees=fees if deadline is None else ep.client.toward_cap(
                        deadline.fraction, self.send_policy.bump_percent))
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
        self._apply_refusals(refusals)
        return broadcast + len(signed)

    def _apply_refusals(self, refusals: list[EffectRefused]) -> None:
        """Each refusal to its trade, in a dispatcher transaction of its own (the planning
        one has committed: SQLite has a single writer). One that fails is found again by the
        next pass: its effect is still pending and unsent."""
        if self.on_refused is None:
            return
        for refused in refusals:
            try:
                self.on_refused(refused)
            except Exception as exc:  # noqa: BLE001 - the next pass refuses it again
                log.error("effect_refusal_not_applied", trade=trade_ref(refused.trade_id),
                          key=refused.key, error=f"{type(exc).__name__}: {exc}"[:300])

    def _next_nonce(self, ep: ChainEndpoint, repo: Repository, sender: str) -> int:
        on_chain = ep.client.pending_nonce(sender)
        recorded = repo.max_inflight_nonce(ep.chain_id, sender)
        nonce = max(on_chain, recorded + 1 if recorded is not None else 0)
        # Our transactions recorded as mined at this nonce or above are no longer on chain (a
        # reorg, or a node that came back short, took them): the records say so.
        for attempt in repo.orphan_mined_attempts(ep.chain_id, sender, nonce):
            log.warning("mined_attempt_orphaned", chain=ep.chain.value, nonce=attempt.nonce,
                        tx=attempt.tx_hash, block=attempt.block_number)
        return nonce

    def _broadcast(self, ep: ChainEndpoint, attempt_id: int) -> None:
        with self.session_factory.begin() as session:
            attempt = Repository(session).get_attempt(attempt_id)
            assert attempt is not None
            raw = bytes.fromhex(attempt.raw_tx)
            try:
                ep.client.send_raw(raw)
                reach("executor.after_broadcast")
            except Exception as exc:  # noqa: BLE001 - node refused: decided by _settle_attempts
                log.warning("broadcast_failed", chain=ep.chain.value, nonce=attempt.nonce,
                            tx=attempt.tx_hash, reason=classify_send_error(exc),
                            error=str(exc)[:200])
            # Sent or not, it may be known to the node: its receipt, the chain's nonce and the
            # node's pool decide on the next pass.
            attempt.status = "sent"
        metrics.TX_SENT.labels(ep.chain.value).inc()
        log.info("tx_sent", chain=ep.chain.value, tx=attempt.tx_hash, nonce=attempt.nonce)

    def _settle_attempts(self, ep: ChainEndpoint) -> int:
        """Find out what became of every signed or sent transaction; rebroadcast, replace
        and fill gaps as needed (see the module docstring). Returns how many were sent."""
        sent = 0
        to_send: list[int] = []
        with self.session_factory.begin() as session:
            repo = Repository(session)
            repo.lock_chain_sends(ep.chain_id)
            latest: dict[str, int] = {}
            head: list[tuple[int, int]] = []  # the node's latest block, read once if needed
            live = repo.unsettled_attempts(ep.chain_id)
            # Every receipt in one batch request (one lookup each where the node takes none).
            receipts = ep.client.receipts([bytes.fromhex(a.tx_hash) for a in live])
            for attempt, receipt in zip(live, receipts, strict=True):
                if receipt is not None:
                    self._mined(ep, repo, attempt, receipt)
                    continue
                if attempt.sender not in latest:
                    latest[attempt.sender] = ep.client.mined_nonce(attempt.sender)
                if latest[attempt.sender] > attempt.nonce:
                    self._nonce_used(ep, repo, attempt)
                    continue
                underpriced = False
                if not ep.client.is_known(bytes.fromhex(attempt.tx_hash)):
                    # Dropped from the pool, or recorded before a crash: send it again.
                    outcome = self._send(ep, attempt)
                    if outcome is None or outcome == SEND_KNOWN:
                        attempt.status = "sent"
                        sent += 1
                        log.info("tx_rebroadcast", chain=ep.chain.value, tx=attempt.tx_hash,
                                 nonce=attempt.nonce)
                        continue
                    if outcome == SEND_NONCE_TOO_LOW:
                        continue  # the nonce was taken meanwhile: settled on the next pass
                    underpriced = outcome == SEND_UNDERPRICED
                    if not underpriced:
                        continue  # refused for now (node down, ...): retried next pass
                due = underpriced or self._stuck(attempt)
                deadline = self._claim_deadline(ep, repo, attempt, head)
                if deadline is not None:
                    self._check_cap(ep, attempt, deadline, head[0][1])
                if due or deadline is not None:
                    replacement = self._replace(ep, repo, attempt, deadline, due=due)
                    if replacement is not None:
                        to_send.append(replacement.id)
            to_send += [a.id for a in self._fill_gaps(ep, repo, latest)]
        for attempt_id in to_send:  # recorded and committed: a crash here is healed next pass
            reach("executor.after_replace_record")
            self._broadcast(ep, attempt_id)
        return sent + len(to_send)

    def _send(self, ep: ChainEndpoint, attempt: AttemptRow) -> str | None:
        """Broadcast a recorded transaction; None if accepted, else why it was refused."""
        try:
            ep.client.send_raw(bytes.fromhex(attempt.raw_tx))
            return None
        except Exception as exc:  # noqa: BLE001
            reason = classify_send_error(exc)
            if reason != SEND_KNOWN:
                log.warning("rebroadcast_refused", chain=ep.chain.value, tx=attempt.tx_hash,
                            nonce=attempt.nonce, reason=reason, error=str(exc)[:200])
            return reason

    def _mined(self, ep: ChainEndpoint, repo: Repository, attempt: AttemptRow,
               receipt: Receipt) -> None:
        attempt.status = "mined" if receipt.succeeded else "reverted"
        attempt.block_number = receipt.block_number
        if not receipt.succeeded:
            self._reverted(ep, repo, attempt, receipt, attempt.id)
        for other in repo.attempts_at_nonce(attempt.chain_id, attempt.sender, attempt.nonce):
            if other.id != attempt.id and other.status in LIVE:
                other.status = "replaced"

    def _nonce_used(self, ep: ChainEndpoint, repo: Repository, attempt: AttemptRow) -> None:
        """Its nonce is taken: by an earlier version of it (a replaced sibling), or by a
        transaction we do not know of."""
        for other in repo.attempts_at_nonce(attempt.chain_id, attempt.sender, attempt.nonce):
            if other.id == attempt.id or other.status != "replaced":
                continue
            receipt = ep.client.receipt(bytes.fromhex(other.tx_hash))
            if receipt is not None:
                other.status = "mined" if receipt.succeeded else "reverted"
                other.block_number = receipt.block_number
                if not receipt.succeeded:
                    self._reverted(ep, repo, other, receipt, attempt.id)
                attempt.status = "replaced"
                return
        attempt.status = "dropped"

    def _reverted(self, ep: ChainEndpoint, repo: Repository, attempt: AttemptRow,
                  receipt: Receipt, rows_of: int) -> None:
        """A transaction of ours was mined but reverted: a warning naming its effects and, when
        the node can replay it on its parent block, the revert reason. Its effects fall
        through to a new attempt, which is checked against the chain before it is signed."""
        rows = repo.outbox_rows_for_attempt(rows_of)
        try:
            fields = decode_signed(bytes.fromhex(attempt.raw_tx))
            error = ep.client.simulate(attempt.sender, fields.to or attempt.sender, fields.data,
                                       gas=fields.gas, value=fields.value,
                                       block=max(0, receipt.block_number - 1), abi=revert_abi())
            reason = _describe(error) if error is not None else \
                "unknown (no revert when replayed on its parent block)"
        except Exception as exc:  # noqa: BLE001 - a node without that block's state
            reason = f"unknown ({type(exc).__name__})"
        metrics.TX_REVERTED.labels(ep.chain.value).inc()
        log.warning("tx_reverted", chain=ep.chain.value, tx=attempt.tx_hash, nonce=attempt.nonce,
                    sender=attempt.sender, block=receipt.block_number, gas_used=receipt.gas_used,
                    reason=reason, trades=sorted({trade_ref(r.trade_id) for r in rows}),
                    effects=[r.key for r in rows])

    def _stuck(self, attempt: AttemptRow) -> bool:
        created = attempt.created_at
        if created is None:
            return False
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        return (datetime.now(UTC) - created).total_seconds() >= self.send_policy.replace_after

    def _deadline(self, now: int, timelocks: tuple[int, ...],
                  trades: tuple[str, ...]) -> _Deadline | None:
        """How far into its deadline window (module docstring) a claim of locks with these
        timelocks is at chain time `now`; None before the window opens (or without a
        policy)."""
        if self.policy is None or not timelocks:
            return None
        margin, lead = self.policy.required_margin, self.policy.claim_lead_time
        fraction = max((now - (t - margin)) / (margin - lead) if margin > lead
                       else 1.0 if now >= t - lead else -1.0 for t in timelocks)
        return _Deadline(min(fraction, 1.0), trades) if fraction >= 0 else None

    def _claim_deadline(self, ep: ChainEndpoint, repo: Repository, attempt: AttemptRow,
                        head: list[tuple[int, int]]) -> _Deadline | None:
        """The deadline window of a pending payment claim (or claimMany) of the relayer's;
        `head` caches the node's latest (timestamp, base fee) for the pass."""
        if self.policy is None or ep.payment_htlc is None or \
                attempt.sender != self.relayer.address:
            return None
        claims = [effect for row in repo.outbox_rows_for_attempt(attempt.id)
                  if row.status == "pending" and isinstance(
                      effect := decode(ContractSend, row.payload), ContractSendPaymentClaim)]
        if not claims:
            return None
        if not head:
            head.append(ep.client.head())
        return self._deadline(head[0][0], tuple(c.lock.timelock for c in claims),
                              tuple(sorted({trade_ref(c.trade_id) for c in claims})))

    def _check_cap(self, ep: ChainEndpoint, attempt: AttemptRow, deadline: _Deadline,
                   base_fee: int) -> None:
        """A claim near its deadline that the cap cannot get mined (base fee above it): a
        critical alert, once until the base fee falls back below the cap."""
        key = (attempt.chain_id, attempt.sender, attempt.nonce)
        if base_fee <= ep.client.fee_cap:
            self._cap_short.discard(key)
            return
        if key in self._cap_short:
            return
        self._cap_short.add(key)
        metrics.CLAIM_FEE_CAP_INSUFFICIENT.labels(ep.chain.value).inc()
        log.critical("claim_fee_cap_insufficient", chain=ep.chain.value, trades=deadline.trades,
                     base_fee=base_fee, cap=ep.client.fee_cap, tx=attempt.tx_hash,
                     nonce=attempt.nonce, window_used=round(deadline.fraction, 3))

    def _replace(self, ep: ChainEndpoint, repo: Repository, attempt: AttemptRow,
                 deadline: _Deadline | None = None, *, due: bool = True) -> AttemptRow | None:
        """The same transaction at the same nonce with higher fees, recorded (not sent): by
        the deadline schedule when its target is `bump_percent` above the pending offer, else
        (when `due`: stuck or underpriced) by the usual bump; None if neither applies."""
        siblings = repo.attempts_at_nonce(attempt.chain_id, attempt.sender, attempt.nonce)
        fields = decode_signed(bytes.fromhex(attempt.raw_tx))
        highest = Fees(
            max(decode_signed(bytes.fromhex(a.raw_tx)).fees.max_fee_per_gas for a in siblings),
            max(decode_signed(bytes.fromhex(a.raw_tx)).fees.max_priority_fee_per_gas
                for a in siblings))
        fees = None
        if deadline is not None:
            target = ep.client.toward_cap(deadline.fraction, self.send_policy.bump_percent)
            if target.at_least(self.send_policy.bump_percent, highest):
                fees = target
        if fees is None and not due:
            return None  # the schedule is not yet a bump above the pending offer
        if fees is None:
            fees = ep.client.bumped(highest, self.send_policy.bump_percent)
        if fees is None:
            log.warning("fee_cap_reached", chain=ep.chain.value, tx=attempt.tx_hash,
                        nonce=attempt.nonce, max_fee_per_gas=highest.max_fee_per_gas,
                        cap=ep.client.fee_cap)
            return None
        try:
            key = self._key(attempt.sender)
        except KeyError_:
            log.error("replacement_without_key", sender=attempt.sender, tx=attempt.tx_hash)
            return None
        raw = ep.client.sign_with_nonce(key, to=fields.to or attempt.sender, data=fields.data,
                                        gas=fields.gas, nonce=attempt.nonce,
                                        value=fields.value, fees=fees)
        replacement = repo.add_attempt(ep.chain_id, attempt.sender, attempt.nonce,
                                       ep.client.tx_hash(raw), raw)
        attempt.status = "replaced"
        for row in repo.outbox_rows_for_attempt(attempt.id):
            row.attempt_id = replacement.id
        metrics.FEE_BUMPS.labels(ep.chain.value).inc()
        log.warning("tx_fee_bumped", chain=ep.chain.value, nonce=attempt.nonce,
                    old_tx=attempt.tx_hash, tx=replacement.tx_hash,
                    max_fee_per_gas=fees.max_fee_per_gas,
                    max_priority_fee_per_gas=fees.max_priority_fee_per_gas,
                    deadline_window_used=None if deadline is None else
                    round(deadline.fraction, 3))
        return replacement

    def _fill_gaps(self, ep: ChainEndpoint, repo: Repository,
                   latest: dict[str, int]) -> list[AttemptRow]:
        """Zero-value self-transfers at the nonces below our lowest live one that nothing
        occupies (neither mined nor pending at the node), recorded before they are sent."""
        fillers: list[AttemptRow] = []
        lowest: dict[str, int] = {}
        for attempt in repo.unsettled_attempts(ep.chain_id):
            lowest[attempt.sender] = min(lowest.get(attempt.sender, attempt.nonce),
                                         attempt.nonce)
        for sender, low in lowest.items():
            mined = latest.get(sender)
            if mined is None or mined >= low:
                continue
            if ep.client.pending_nonce(sender) > mined:
                continue  # something pending at the next nonce: no gap (yet)
            try:
                key = self._key(sender)
            except KeyError_:
                continue
            fees = ep.client.suggest_fees()
            for nonce in range(mined, low):
                raw = ep.client.sign_with_nonce(key, to=sender, data=b"", gas=GAS_FILLER,
                                                nonce=nonce, fees=fees)
                fillers.append(repo.add_attempt(ep.chain_id, sender, nonce,
                                                ep.client.tx_hash(raw), raw))
                log.warning("nonce_gap_filled", chain=ep.chain.value, sender=sender,
                            nonce=nonce)
        return fillers

    # --- planning -------------------------------------------------------------------------

    def _plan(self, ep: ChainEndpoint, repo: Repository,
              refusals: list[EffectRefused] | None = None) -> list[_Tx]:
        """The transactions to sign now. An effect the chain says cannot succeed is not sent:
        its refusal is added to `refusals` (applied to its trade once this transaction has
        committed), see `_refuse`."""
        refusals = [] if refusals is None else refusals
        claims: list[tuple[OutboxRow, ContractSendPaymentClaim]] = []
        txs: list[_Tx] = []
        pending: list[tuple[OutboxRow, ContractSend, bool]] = []  # (row, effect, retry)
        for row, effect in repo.pending_effects(ep.chain.value):
            retry = False
            if row.attempt_id is not None:
                attempt = repo.get_attempt(row.attempt_id)
                if attempt is not None and attempt.status in ("signed", "sent"):
                    continue  # in flight
                retry = True
            pending.append((row, effect, retry))
        statuses = self._statuses(ep, pending)
        for row, effect, retry in pending:
            if isinstance(effect, ContractSendPaymentClaim) and not retry:
                claims.append((row, effect))  # checked below, as a batch or alone
                continue
            # Done on chain, by us or anyone: the poller brings the log. A mined attempt
            # whose result is absent (a batch skipped the entry, a reorg removed it) and a
            # reverted or dropped one all fall through to a new attempt.
            found = self._on_chain(ep, effect, statuses)
            if found == DONE:
                continue
            if found == MISSING:
                self._refuse(ep, repo, effect, _missing(effect), refusals, final=False,
                             missing=True)
                continue
            try:
                if isinstance(effect, ContractSendPaymentClaim):
                    claims.append((row, effect))
                    continue
                if isinstance(effect, ContractSendDeliveryClaim) and \
                        (reason := self._reveal_too_late(ep, repo, effect)) is not None:
                    self._refuse(ep, repo, effect, reason, refusals, final=True)
                    continue
                tx = self._tx_for(ep, row, effect)
                approval = self._approval(ep, effect, tx.sender)
                reason = self._preflight(ep, effect, tx, approval)
                if reason is not None:
                    # A lock that cannot be made is given up (the trade can be cancelled); a
                    # claim or refund stays pending and is checked again on the next pass.
                    self._refuse(ep, repo, effect, reason, refusals,
                                 final=isinstance(effect, ContractSendPaymentLock
                                                  | ContractSendDeliveryLock))
                    continue
                txs.extend([approval, tx] if approval else [tx])
            except KeyError_ as exc:
                row.status, row.last_error = "failed", str(exc)
                log.error("effect_failed", trade=trade_ref(row.trade_id), key=row.key,
                          error=str(exc))
        if len(claims) == 1:
            (_, claim), = claims
            found = self._on_chain(ep, claim, statuses)
            if found == MISSING:
                self._refuse(ep, repo, claim, _missing(claim), refusals, final=False,
                             missing=True)
            if found != TO_DO:
                claims = []
        # Two or more claims go out as claimMany without a check each: the contract itself
        # skips a lock someone else claimed meanwhile, so a lost race costs a little gas, not
        # a revert, and the check would cost a read per lock. A claim sent alone is
        # simulated first: it would revert.
        for start in range(0, len(claims), self.max_batch):
            batch = claims[start:start + self.max_batch]
            tx = self._claim_tx(ep, batch)
            if len(batch) == 1 and (reason := self._simulate(ep, tx)) is not None:
                self._refuse(ep, repo, batch[0][1], reason, refusals, final=False)
                continue
            txs.append(tx)
        return txs

    def _statuses(self, ep: ChainEndpoint, pending: list[tuple[OutboxRow, ContractSend, bool]],
                  ) -> dict[tuple[str, bytes], int]:
        """The lock status (`statusOf`) of every effect `_plan` checks this pass, read in one
        batch request: every effect not in flight but a first-time payment claim, which is
        checked only when it may go out alone (two or more go out as claimMany unchecked)."""
        fresh = sum(1 for _, effect, retry in pending
                    if isinstance(effect, ContractSendPaymentClaim) and not retry)
        locks = list(dict.fromkeys(
            lock for _, effect, retry in pending
            if retry or fresh == 1 or not isinstance(effect, ContractSendPaymentClaim)
            if (lock := _lock_of(ep, effect)) is not None))
        return dict(zip(locks, statuses_of(ep.client, locks), strict=True))

    def _on_chain(self, ep: ChainEndpoint, effect: ContractSend,
                  statuses: dict[tuple[str, bytes], int] | None = None) -> str:
        """DONE: the effect's result is on chain (whoever caused it). MISSING: a claim or
        refund whose lock does not exist on chain (a reorg or a node short of blocks removed
        it): not done, and sending it would revert. TO_DO: otherwise. The lock's status is
        taken from `statuses` (read by `_statuses` this pass), else read now."""
        lock = _lock_of(ep, effect)
        if lock is None:
            return TO_DO
        status = (statuses or {}).get(lock)
        if status is None:
            (status,) = statuses_of(ep.client, [lock])
        if isinstance(effect, ContractSendPaymentLock | ContractSendDeliveryLock):
            return DONE if status != NONE else TO_DO
        return MISSING if status == NONE else TO_DO if status == OPEN else DONE

    def _preflight(self, ep: ChainEndpoint, effect: ContractSend, tx: _Tx,
                   approval: _Tx | None) -> str | None:
        """Why `tx` would revert if it were sent now (at the latest block); None if it should
        succeed. A managed party's lock: the buyer's balance covers the amount, the seller
        owns the title (with the agreed document hash). Then the transaction is simulated with
        eth_call, unless an approval goes out before it (it would fail for want of it)."""
        match effect:
            case ContractSendPaymentLock(lock=lk):
                assert ep.payment_htlc is not None
                balance = ep.payment_htlc.balance_of(lk.sender)
                if balance < lk.amount:
                    return f"buyer balance {balance} < amount {lk.amount}"
            case ContractSendDeliveryLock(lock=lk):
                dh = ep.delivery_htlc
                assert dh is not None
                owner = dh.owner_of(lk.token_id)
                if owner is None:
                    return f"title {lk.token_id} does not exist"
                if owner.lower() != lk.seller.lower():
                    return f"seller {lk.seller} does not own title {lk.token_id} (owner {owner})"
                document = dh.document_hash(lk.token_id)
                if document != lk.document_hash:
                    return (f"title {lk.token_id} has document hash 0x{document.hex()}, "
                            f"not the agreed 0x{lk.document_hash.hex()}")
        if approval is not None:
            return None
        return self._simulate(ep, tx)

    def _reveal_too_late(self, ep: ChainEndpoint, repo: Repository,
                         effect: ContractSendDeliveryClaim) -> str | None:
        """Why a managed buyer's delivery claim must not reveal its private secret now: the
        business node's latest block (the relayer's cursor may lag it) leaves the claim no
        time to be mined and final before its timelock. A claim that reverts still publishes
        the preimage. None: safe, or the preimage is public already (nothing to keep)."""
        if self.policy is None:
            return None
        state = repo.get_trade(effect.trade_id)
        if state is None or state.preimage is not None or state.buyer_secret != effect.preimage:
            return None
        now = ep.client.head()[0]
        if self.policy.delivery_claim_is_safe(now, effect.lock.timelock):
            return None
        return (f"the business chain's latest block ({now}) is within "
                f"{self.policy.delivery_claim_lead_time} s of T_deliver "
                f"({effect.lock.timelock}): the claim could not be final in time and would "
                "reveal the buyer's secret")

    @staticmethod
    def _simulate(ep: ChainEndpoint, tx: _Tx) -> str | None:
        error = ep.client.simulate(tx.sender.address, tx.to, tx.data, gas=tx.gas,
                                   abi=revert_abi())
        return None if error is None else f"reverts when simulated: {_describe(error)}"

    def _refuse(self, ep: ChainEndpoint, repo: Repository, effect: ContractSend, reason: str,
                refusals: list[EffectRefused], *, final: bool, missing: bool = False) -> None:
        """Not sent. The trade is told once (EffectRefused: `<kind>_failed` if final, else
        `blocked:<key>`), which is logged and counted; an effect whose trade already carries
        the flag is only logged, once per process."""
        kind = effect.key.kind.value
        state = repo.get_trade(effect.trade_id)
        if state is None:
            return
        flag = Flag.failed(effect.key.kind) if final else Flag.of(FlagKind.BLOCKED, effect.key)
        told = flag in state.flags
        seen = (effect.trade_id, effect.key)
        if seen in self._reported and (told or self.on_refused is None):
            return
        self._reported.add(seen)
        fields = {"chain": ep.chain.value, "trade": trade_ref(effect.trade_id),
                  "key": effect.key, "reason": reason, "final": final,
                  "already_flagged": told}
        if missing:
            log.critical("lock_missing", lock=_lock_hex(effect), **fields)
        else:
            log.warning("effect_refused", **fields)
        if told:
            return
        metrics.EFFECTS_REFUSED.labels(ep.chain.value, kind).inc()
        if missing:
            metrics.LOCKS_MISSING.labels(ep.chain.value, kind).inc()
        refusals.append(EffectRefused(effect.trade_id, effect.key, reason, final=final))

    def _key(self, address: str) -> Signer:
        if address not in self.keys and self.key_lookup is not None:
            found = self.key_lookup(address)
            if found is not None:
                self.keys[address] = found
        try:
            return self.keys[address]
        except KeyError:
            raise KeyError_(f"no signing key configured for managed account {address}") from None

    def _approval(self, ep: ChainEndpoint, effect: ContractSend, sender: Signer,
                  ) -> _Tx | None:
        """A managed party's lock needs the HTLC approved to pull its tokens: the approval
        goes out first, from the same key, when it is missing."""
        if isinstance(effect, ContractSendPaymentLock) and ep.payment_htlc is not None:
            if ep.payment_htlc.allowance(sender.address) >= effect.lock.amount:
                return None
            to, data = ep.payment_htlc.approve_calldata()
            return _Tx(sender, to, data, 80_000)
        if isinstance(effect, ContractSendDeliveryLock) and ep.delivery_htlc is not None:
            if ep.delivery_htlc.is_approved_for_all(sender.address):
                return None
            to, data = ep.delivery_htlc.approve_calldata()
            return _Tx(sender, to, data, 80_000)
        return None

    def _tx_for(self, ep: ChainEndpoint, row: OutboxRow, effect: ContractSend) -> _Tx:
        match effect:
            case ContractSendPaymentLock(lock=lk):
                htlc = ep.payment_htlc
                assert htlc is not None
                data = payment_lock_calldata(lk.beneficiary, lk.amount, lk.hashlock,
                                             lk.timelock)
                return _Tx(self._key(lk.sender), htlc.address, data, GAS_LOCK, [row])
            case ContractSendDeliveryLock(lock=lk):
                dh = ep.delivery_htlc
                assert dh is not None
                data = delivery_lock_calldata(lk.buyer, lk.token_id, lk.document_hash,
                                              lk.trade_id, lk.hashlock, lk.timelock)
                return _Tx(self._key(lk.seller), dh.address, data, GAS_DELIVERY_LOCK, [row])
            case ContractSendPaymentRefund(lock=lk):
                assert ep.payment_htlc is not None
                data = payment_refund_calldata(lk)
                return _Tx(self.relayer, ep.payment_htlc.address, data, GAS_REFUND, [row])
            case ContractSendDeliveryClaim(lock=lk, preimage=preimage):
                assert ep.delivery_htlc is not None
                data = delivery_claim_calldata(lk, preimage)
                return _Tx(self.relayer, ep.delivery_htlc.address, data, GAS_DELIVERY_EXIT, [row])
            case ContractSendDeliveryRefund(lock=lk):
                assert ep.delivery_htlc is not None
                data = delivery_refund_calldata(lk)
                return _Tx(self.relayer, ep.delivery_htlc.address, data, GAS_DELIVERY_EXIT, [row])
        raise TypeError(f"no transaction for {type(effect).__name__}")

    def _claim_tx(self, ep: ChainEndpoint,
                  claims: list[tuple[OutboxRow, ContractSendPaymentClaim]]) -> _Tx:
        htlc = ep.payment_htlc
        assert htlc is not None
        rows = [row for row, _ in claims]
        if len(claims) == 1:
            (_, c), = claims
            data = payment_claim_calldata(c.lock, c.preimage)
            return _Tx(self.relayer, htlc.address, data, GAS_CLAIM, rows, (c.lock.timelock,))
        data = claim_many_calldata([c.lock for _, c in claims], [c.preimage for _, c in claims])
        gas = GAS_BATCH_BASE + GAS_BATCH_PER_LOCK * len(claims)
        return _Tx(self.relayer, htlc.address, data, gas, rows,
                   tuple(c.lock.timelock for _, c in claims))


def _lock_of(ep: ChainEndpoint, effect: ContractSend) -> tuple[str, bytes] | None:
    """(HTLC address, lock id) of the lock whose status says whether `effect` is done on
    chain: the lock a lock effect makes, the lock a claim or refund exits."""
    match effect:
        case ContractSendPaymentLock():
            assert ep.payment_htlc is not None
            return ep.payment_htlc.address, ep.payment_htlc.lock_id(effect.lock)
        case ContractSendDeliveryLock():
            assert ep.delivery_htlc is not None
            return ep.delivery_htlc.address, ep.delivery_htlc.lock_id(effect.lock)
        case ContractSendPaymentClaim() | ContractSendPaymentRefund():
            assert ep.payment_htlc is not None
            return ep.payment_htlc.address, effect.lock_id
        case ContractSendDeliveryClaim() | ContractSendDeliveryRefund():
            assert ep.delivery_htlc is not None
            return ep.delivery_htlc.address, effect.lock_id
    return None


def _lock_hex(effect: ContractSend) -> str:
    lock_id = effect.key.lock_id
    return "0x" + lock_id.hex() if lock_id is not None else "none"


def _missing(effect: ContractSend) -> str:
    return f"lock {_lock_hex(effect)} does not exist on chain"


def _describe(error: RevertError) -> str:
    """A decoded revert, readable: `LockNotOpen(0x12ab..., 0)`."""
    values = ", ".join("0x" + v.hex() if isinstance(v, bytes) else str(v) for v in error.values)
    return f"{error.name}({values})"
