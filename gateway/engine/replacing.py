"""Replacing a pending transaction at its nonce with higher fees (gateway.engine.executor's
docstring): by `bump_percent` when it is stuck or refused as underpriced; a payment claim near
its deadline by the deadline schedule, as soon as that is a bump above the pending offer; never
above the cap, and at the cap not at all (it waits)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from gateway.chain.client import Fees, decode_signed
from gateway.db.models import AttemptRow
from gateway.db.repository import Repository
from gateway.domain.codec import decode
from gateway.domain.policy import TimingPolicy
from gateway.domain.trade import ContractSend, ContractSendPaymentClaim
from gateway.engine import metrics
from gateway.engine.transactions import ChainEndpoint, KeyError_, Keys
from gateway.logs import trade_ref

log = structlog.get_logger("gateway.executor")


@dataclass(frozen=True)
class SendPolicy:
    """When a pending transaction is replaced, and by how much its fees go up."""

    replace_after: float = 60.0  # seconds since it was signed, still not mined
    bump_percent: int = 12  # on both fee fields; at least 10 (geth's replacement rule)


@dataclass(frozen=True)
class Deadline:
    """A payment claim inside its deadline window (see gateway.engine.executor's docstring)."""

    fraction: float  # of the window used: 0 at its start, 1 at the last moment and after
    trades: tuple[str, ...]  # 0x-prefixed trade ids


def deadline_window(policy: TimingPolicy | None, now: int, timelocks: tuple[int, ...],
                    trades: tuple[str, ...]) -> Deadline | None:
    """How far into its deadline window a claim of locks with these timelocks is at chain time
    `now`; None before the window opens (or without a policy)."""
    if policy is None or not timelocks:
        return None
    margin, lead = policy.required_margin, policy.claim_lead_time
    fraction = max((now - (t - margin)) / (margin - lead) if margin > lead
                   else 1.0 if now >= t - lead else -1.0 for t in timelocks)
    return Deadline(min(fraction, 1.0), trades) if fraction >= 0 else None


class Replacer:
    """Decides and records replacements; the executor broadcasts them once committed."""

    def __init__(self, send_policy: SendPolicy, policy: TimingPolicy | None,
                 keys: Keys) -> None:
        self.send_policy = send_policy
        self.policy = policy
        self.keys = keys
        self._cap_short: set[tuple[int, str, int]] = set()  # (chain, sender, nonce) alerted

    def stuck(self, attempt: AttemptRow) -> bool:
        created = attempt.created_at
        if created is None:
            return False
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        return (datetime.now(UTC) - created).total_seconds() >= self.send_policy.replace_after

    def claim_deadline(self, ep: ChainEndpoint, repo: Repository, attempt: AttemptRow,
                       head: list[tuple[int, int]]) -> Deadline | None:
        """The deadline window of a pending payment claim (or claimMany) of the relayer's;
        `head` caches the node's latest (timestamp, base fee) for the pass."""
        if self.policy is None or ep.payment_htlc is None or \
                attempt.sender != self.keys.relayer.address:
            return None
        claims = [effect for row in repo.outbox_rows_for_attempt(attempt.id)
                  if row.status == "pending" and isinstance(
                      effect := decode(ContractSend, row.payload), ContractSendPaymentClaim)]
        if not claims:
            return None
        if not head:
            head.append(ep.client.head())
        return deadline_window(self.policy, head[0][0], tuple(c.lock.timelock for c in claims),
                               tuple(sorted({trade_ref(c.trade_id) for c in claims})))

    def check_cap(self, ep: ChainEndpoint, attempt: AttemptRow, deadline: Deadline,
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

    def replace(self, ep: ChainEndpoint, repo: Repository, attempt: AttemptRow,
                deadline: Deadline | None = None, *, due: bool = True) -> AttemptRow | None:
        """The same transaction at the same nonce with higher fees, recorded (not sent): by
        the deadline schedule when its target is `bump_percent` above the pending offer, else
        (when `due`: stuck or underpriced) by the usual bump; None if neither applies."""
        siblings = repo.attempts_at_nonce(attempt.chain_id, attempt.sender, attempt.nonce)
        fields = decode_signed(bytes.fromhex(attempt.raw_tx))
        highest = _highest_offer(siblings)
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
            key = self.keys.of(attempt.sender)
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


def _highest_offer(siblings: list[AttemptRow]) -> Fees:
    """The highest of each fee field offered at one nonce: a replacement must beat both."""
    return Fees(
        max(decode_signed(bytes.fromhex(a.raw_tx)).fees.max_fee_per_gas for a in siblings),
        max(decode_signed(bytes.fromhex(a.raw_tx)).fees.max_priority_fee_per_gas
            for a in siblings))
