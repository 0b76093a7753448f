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
- a payment claim near its deadline (`Deadline`): from `T_pay - required_margin` (the policy's
  latest reveal) to the last moment a claim can be sent and still be final in time (`T_pay -
  claim_lead_time`), by the payment node's latest block time, the offer rises with the
  fraction of that window used from the current suggestion to the cap (`toward_cap`), the cap
  itself at the end. The pending claim is replaced as soon as that target is `bump_percent`
  above it, without waiting for `replace_after`; a claim first signed in the window is priced
  the same way. When the base fee is above the cap the claim cannot be mined at all: logged
  critical (`claim_fee_cap_insufficient`, naming the trades) and counted, once per rise; it
  waits, and goes out when the base fee falls back.
- a nonce gap (our lowest live nonce above the chain's, nothing pending below it: a
  transaction of this key made elsewhere was dropped, or a node came back without our own
  mined ones) is filled with zero-value self-transfers, recorded before they are sent, so the
  queued transactions can be mined. Whenever a nonce is handed out again (a filler, or a new
  transaction at the chain's nonce), our attempts recorded as mined at it or above are marked
  `orphaned`: their blocks are gone, and their effects are planned again from the chain.
Refusals are classified (`classify_send_error`): "already known" is success, "nonce too low"
is settled from the chain's nonce on the next pass, "underpriced" leads to a replacement.

Here: signing, recording and broadcasting (the crash points), one chain at a time. What to
sign is planned in `gateway.engine.planning` (items 1 to 3, from the transactions of
`gateway.engine.transactions`); what became of sent transactions is settled in
`gateway.engine.settling`, their fees bumped in `gateway.engine.replacing`.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from sqlalchemy.orm import Session, sessionmaker

from gateway.chain.accounts import Signer
from gateway.chain.client import classify_send_error
from gateway.db.models import AttemptRow, OutboxRow
from gateway.db.repository import Repository
from gateway.domain.policy import TimingPolicy
from gateway.domain.trade import Chain, EffectRefused
from gateway.engine import metrics
from gateway.engine.crashpoints import reach
from gateway.engine.planning import DONE, MAX_BATCH, MISSING, NONE, OPEN, TO_DO, Planner
from gateway.engine.replacing import Replacer, SendPolicy, deadline_window
from gateway.engine.settling import GAS_FILLER, LIVE, Settler, orphan_lost_mined
from gateway.engine.transactions import ChainEndpoint, KeyError_, Keys
from gateway.logs import trade_ref

__all__ = ["DONE", "GAS_FILLER", "LIVE", "MAX_BATCH", "MISSING", "NONE", "OPEN", "TO_DO",
           "ChainEndpoint", "Executor", "KeyError_", "SendPolicy"]

log = structlog.get_logger("gateway.executor")


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
        # Applies an EffectRefused to its trade (the dispatcher's apply_action), after the
        # planning transaction has committed.
        self.on_refused = on_refused
        self.session_factory = session_factory
        self.endpoints = endpoints
        self.relayer = relayer
        self.keys = Keys(relayer, managed_keys, key_lookup)
        self._planner = Planner(self.keys, policy, max_batch,
                                tells_trades=on_refused is not None)
        self._settler = Settler(self.keys, Replacer(self.send_policy, policy, self.keys))

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
            txs = self._planner.plan(ep, repo, refusals)
            nonces: dict[str, int] = {}
            signed: list[AttemptRow] = []
            links: list[tuple[OutboxRow, int]] = []  # each effect's row and its attempt
            fees = ep.client.suggest_fees() if txs else None
            priced = self.policy is not None and any(tx.timelocks for tx in txs)
            now = ep.client.head()[0] if priced else 0  # the node's time, once a pass
            for tx in txs:
                nonce = nonces.get(tx.sender.address)
                if nonce is None:
                    nonce = self._next_nonce(ep, repo, tx.sender.address)
                deadline = deadline_window(self.policy, now, tx.timelocks, ()) \
                    if tx.timelocks and self.policy is not None else None
                raw = ep.client.sign_with_nonce(
                    tx.sender, to=tx.to, data=tx.data, gas=tx.gas, nonce=nonce,
                    fees=fees if deadline is None else ep.client.toward_cap(
                        deadline.fraction, self.send_policy.bump_percent))
                nonces[tx.sender.address] = nonce + 1
                attempt = repo.add_attempt(ep.chain_id, tx.sender.address, nonce,
                                           ep.client.tx_hash(raw), raw)
                links += [(row, attempt.id) for row in tx.rows]
                signed.append(attempt)
            repo.link_effects(links)
            if signed:
                reach("executor.before_record")
        # Recorded and committed: now send. A crash here is healed by _settle_attempts.
        if signed:
            reach("executor.after_record")
            self._broadcast(ep, [attempt.id for attempt in signed])
        self._apply_refusals(refusals)
        return broadcast + len(signed)

    def _settle_attempts(self, ep: ChainEndpoint) -> int:
        """Find out what became of every signed or sent transaction; rebroadcast, replace
        and fill gaps as needed (see the module docstring). Returns how many were sent."""
        with self.session_factory.begin() as session:
            repo = Repository(session)
            repo.lock_chain_sends(ep.chain_id)
            sent, to_send = self._settler.settle(ep, repo)
        if to_send:  # recorded and committed: a crash here is healed next pass
            reach("executor.after_replace_record")
            self._broadcast(ep, to_send)
        return sent + len(to_send)

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
        orphan_lost_mined(ep, repo, sender, nonce)
        return nonce

    def _broadcast(self, ep: ChainEndpoint, attempt_ids: list[int]) -> None:
        """Send these recorded transactions, in nonce order as recorded, in one request (a
        batch on a JSON-RPC node), and mark them sent in one transaction."""
        with self.session_factory.begin() as session:
            attempts = Repository(session).get_attempts(attempt_ids)
            refused = ep.client.send_raws([bytes.fromhex(a.raw_tx) for a in attempts])
            reach("executor.after_broadcast")
            for attempt, exc in zip(attempts, refused, strict=True):
                if exc is not None:  # the node refused: decided by _settle_attempts
                    log.warning("broadcast_failed", chain=ep.chain.value, nonce=attempt.nonce,
                                tx=attempt.tx_hash, reason=classify_send_error(exc),
                                error=str(exc)[:200])
                # Sent or not, it may be known to the node: its receipt, the chain's nonce
                # and the node's pool decide on the next pass.
                attempt.status = "sent"
        for attempt in attempts:
            metrics.TX_SENT.labels(ep.chain.value).inc()
            log.info("tx_sent", chain=ep.chain.value, tx=attempt.tx_hash, nonce=attempt.nonce)
