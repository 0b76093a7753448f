"""The transactions to sign now, effect by effect (items 1 to 3 of gateway.engine.executor's
docstring): an effect done on chain is skipped, one in flight waited for, one known to revert
refused and its trade told; payment claims due together go out as `claimMany`."""

from __future__ import annotations

import structlog

from gateway.chain.htlc import revert_abi, statuses_of
from gateway.db.models import OutboxRow
from gateway.db.repository import Repository
from gateway.domain.marks import Flag, FlagKind
from gateway.domain.policy import TimingPolicy
from gateway.domain.trade import (
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
from gateway.engine.transactions import (
    ChainEndpoint,
    KeyError_,
    Keys,
    PlannedTx,
    approval_tx,
    claim_tx,
    describe_revert,
    effect_tx,
)
from gateway.logs import trade_ref

log = structlog.get_logger("gateway.executor")

OPEN, NONE = 1, 0
# What the chain says of an effect's result (`_on_chain`): already there, its lock missing (a
# claim or refund whose lock the chain does not have), or still to be done.
DONE, MISSING, TO_DO = "done", "missing", "to_do"
MAX_BATCH = 50

Pending = tuple[OutboxRow, ContractSend, bool]  # (row, effect, retry: an earlier attempt failed)


class Planner:
    """Plans one chain's pending effects inside the executor's planning transaction. Refusals
    are collected for the executor to apply once that transaction has committed;
    `tells_trades`: they are applied (else only logged)."""

    def __init__(self, keys: Keys, policy: TimingPolicy | None = None,
                 max_batch: int = MAX_BATCH, *, tells_trades: bool = False) -> None:
        self.keys = keys
        self.policy = policy
        self.max_batch = max_batch
        self.tells_trades = tells_trades
        self._reported: set[tuple[bytes, str]] = set()  # refusals logged by this process

    def plan(self, ep: ChainEndpoint, repo: Repository,
             refusals: list[EffectRefused]) -> list[PlannedTx]:
        """The transactions to sign now. An effect the chain says cannot succeed is not sent:
        its refusal is added to `refusals` (applied to its trade once this transaction has
        committed), see `_refuse`."""
        claims: list[tuple[OutboxRow, ContractSendPaymentClaim]] = []
        txs: list[PlannedTx] = []
        # New effects, and retries of one whose attempt was mined without its result,
        # reverted or dropped; none with a transaction in flight.
        pending: list[Pending] = repo.unsent_effects(ep.chain.value)
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
            if isinstance(effect, ContractSendPaymentClaim):
                claims.append((row, effect))
                continue
            try:
                txs.extend(self._effect_txs(ep, repo, row, effect, refusals))
            except KeyError_ as exc:
                row.status, row.last_error = "failed", str(exc)
                log.error("effect_failed", trade=trade_ref(row.trade_id), key=row.key,
                          error=str(exc))
        return txs + self._claim_txs(ep, repo, claims, statuses, refusals)

    def _effect_txs(self, ep: ChainEndpoint, repo: Repository, row: OutboxRow,
                    effect: ContractSend, refusals: list[EffectRefused]) -> list[PlannedTx]:
        """A lock, refund or delivery claim not done on chain: its transaction (after the
        approval it needs), or none if it must not or cannot succeed now (refused)."""
        if isinstance(effect, ContractSendDeliveryClaim) and \
                (reason := self._reveal_too_late(ep, repo, effect)) is not None:
            self._refuse(ep, repo, effect, reason, refusals, final=True)
            return []
        tx = effect_tx(ep, row, effect, self.keys)
        approval = approval_tx(ep, effect, tx.sender)
        reason = self._preflight(ep, effect, tx, approval)
        if reason is not None:
            # A lock that cannot be made is given up (the trade can be cancelled); a
            # claim or refund stays pending and is checked again on the next pass.
            self._refuse(ep, repo, effect, reason, refusals,
                         final=isinstance(effect, ContractSendPaymentLock
                                          | ContractSendDeliveryLock))
            return []
        return [approval, tx] if approval else [tx]

    def _claim_txs(self, ep: ChainEndpoint, repo: Repository,
                   claims: list[tuple[OutboxRow, ContractSendPaymentClaim]],
                   statuses: dict[tuple[str, bytes], int],
                   refusals: list[EffectRefused]) -> list[PlannedTx]:
        """The payment claims due, `max_batch` a transaction. Two or more go out as
        claimMany without a check each: the contract itself skips a lock someone else claimed
        meanwhile, so a lost race costs a little gas, not a revert, and the check would cost
        a read per lock. A claim sent alone is checked on chain and simulated first: it would
        revert."""
        if len(claims) == 1:
            (_, claim), = claims
            found = self._on_chain(ep, claim, statuses)
            if found == MISSING:
                self._refuse(ep, repo, claim, _missing(claim), refusals, final=False,
                             missing=True)
            if found != TO_DO:
                claims = []
        txs: list[PlannedTx] = []
        for start in range(0, len(claims), self.max_batch):
            batch = claims[start:start + self.max_batch]
            tx = claim_tx(ep, batch, self.keys.relayer)
            if len(batch) == 1 and (reason := _simulate(ep, tx)) is not None:
                self._refuse(ep, repo, batch[0][1], reason, refusals, final=False)
                continue
            txs.append(tx)
        return txs

    def _statuses(self, ep: ChainEndpoint, pending: list[Pending],
                  ) -> dict[tuple[str, bytes], int]:
        """The lock status (`statusOf`) of every effect `plan` checks this pass, read in one
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

    def _preflight(self, ep: ChainEndpoint, effect: ContractSend, tx: PlannedTx,
                   approval: PlannedTx | None) -> str | None:
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
        return _simulate(ep, tx)

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
        if seen in self._reported and (told or not self.tells_trades):
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


def _simulate(ep: ChainEndpoint, tx: PlannedTx) -> str | None:
    error = ep.client.simulate(tx.sender.address, tx.to, tx.data, gas=tx.gas,
                               abi=revert_abi())
    return None if error is None else f"reverts when simulated: {describe_revert(error)}"


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
