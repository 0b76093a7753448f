"""What became of every signed or sent transaction of one chain (gateway.engine.executor's
docstring): mined (siblings replaced; a revert reported), its nonce used by another (dropped),
unknown to the node (the same raw bytes again), stuck, underpriced or near its deadline
(replaced), or queued behind a nonce gap (filled with self-transfers)."""

from __future__ import annotations

import structlog

from gateway.chain.client import (
    SEND_KNOWN,
    SEND_NONCE_TOO_LOW,
    SEND_UNDERPRICED,
    Receipt,
    classify_send_error,
    decode_signed,
)
from gateway.chain.htlc import revert_abi
from gateway.db.models import AttemptRow
from gateway.db.repository import Repository
from gateway.engine import metrics
from gateway.engine.replacing import Replacer
from gateway.engine.transactions import ChainEndpoint, KeyError_, Keys, describe_revert
from gateway.logs import trade_ref

log = structlog.get_logger("gateway.executor")

GAS_FILLER = 21_000
LIVE = ("signed", "sent")


def orphan_lost_mined(ep: ChainEndpoint, repo: Repository, sender: str, nonce: int) -> None:
    """Before `nonce` is handed out again: our transactions recorded as mined at it or above
    are no longer on chain (a reorg, or a node that came back short, took them), and the
    records say so (`orphaned`), not a block the chain no longer has."""
    for attempt in repo.orphan_mined_attempts(ep.chain_id, sender, nonce):
        log.warning("mined_attempt_orphaned", chain=ep.chain.value, nonce=attempt.nonce,
                    tx=attempt.tx_hash, block=attempt.block_number)


class Settler:
    """Settles one chain's transactions inside the executor's settling transaction: what it
    broadcasts again is recorded already; the replacements and fillers it records are
    broadcast by the executor once that transaction has committed."""

    def __init__(self, keys: Keys, replacer: Replacer) -> None:
        self.keys = keys
        self.replacer = replacer

    def settle(self, ep: ChainEndpoint, repo: Repository) -> tuple[int, list[int]]:
        """How many transactions were broadcast again, and the ids of the replacements and
        fillers recorded (to broadcast once committed)."""
        sent = 0
        to_send: list[int] = []
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
                outcome = self._rebroadcast(ep, attempt)
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
            due = underpriced or self.replacer.stuck(attempt)
            deadline = self.replacer.claim_deadline(ep, repo, attempt, head)
            if deadline is not None:
                self.replacer.check_cap(ep, attempt, deadline, head[0][1])
            if due or deadline is not None:
                replacement = self.replacer.replace(ep, repo, attempt, deadline, due=due)
                if replacement is not None:
                    to_send.append(replacement.id)
        to_send += [a.id for a in self._fill_gaps(ep, repo, latest)]
        return sent, to_send

    def _rebroadcast(self, ep: ChainEndpoint, attempt: AttemptRow) -> str | None:
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
            reason = describe_revert(error) if error is not None else \
                "unknown (no revert when replayed on its parent block)"
        except Exception as exc:  # noqa: BLE001 - a node without that block's state
            reason = f"unknown ({type(exc).__name__})"
        metrics.TX_REVERTED.labels(ep.chain.value).inc()
        log.warning("tx_reverted", chain=ep.chain.value, tx=attempt.tx_hash, nonce=attempt.nonce,
                    sender=attempt.sender, block=receipt.block_number, gas_used=receipt.gas_used,
                    reason=reason, trades=sorted({trade_ref(r.trade_id) for r in rows}),
                    effects=[r.key for r in rows])

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
                key = self.keys.of(sender)
            except KeyError_:
                continue
            orphan_lost_mined(ep, repo, sender, mined)
            fees = ep.client.suggest_fees()
            for nonce in range(mined, low):
                raw = ep.client.sign_with_nonce(key, to=sender, data=b"", gas=GAS_FILLER,
                                                nonce=nonce, fees=fees)
                fillers.append(repo.add_attempt(ep.chain_id, sender, nonce,
                                                ep.client.tx_hash(raw), raw))
                log.warning("nonce_gap_filled", chain=ep.chain.value, sender=sender,
                            nonce=nonce)
        return fillers
