"""A poller per chain: logs from the cursor up to `head - confirmations`, decoded into domain
inputs, with the last block of the batch (time passing) and a reorg check.

Pure reads: it never writes the database; the dispatcher stores what it returns together
with the new cursor. A reorganisation is noticed when the stored cursor's block hash is no
longer the chain's block at that height; the poller then finds the fork point among the
remembered block positions and asks the dispatcher to rewind to the highest one still on the
chain (at or below the true fork point: blocks rewound that did not change are only read
again). It never skips silently: a fork older than every position it remembers is raised as
DeepReorgError, and so is one deeper than `max_reorg_depth` blocks below the cursor.

Remembered positions are each batch's last block (the cursor) and, with `max_reorg_depth` set,
for a batch of more than two blocks, every other block of its last `max_reorg_depth` (the
batch's `checkpoints`, at most 255 blocks down: positions are kept for 256 blocks below the
cursor, `RECENT_HASHES`). So within `max_reorg_depth` blocks below the cursor they are never
more than two blocks apart, however large the batches were (a catch-up batch spans up to
`batch_blocks`): a fork point is found at most one block below where it is, every reorg
shallower than `max_reorg_depth` is rewound, and one exactly `max_reorg_depth` deep may be
judged one block deeper and halt (the safe side). A batch of one or two blocks costs no extra
call; a larger one one `eth_getBlockByNumber` per checkpoint (at most `max_reorg_depth / 2`).
Without `max_reorg_depth` there are no checkpoints: the fork point is known only to one batch.

Only the watched contract's logs are applied: the node's `address` filter is not trusted (a
buggy or hostile node can return another contract's logs, with the same event topics: a
"lock" on a contract of anyone's making). Each log's emitter is compared with the HTLC's
address (case-insensitively); any other is dropped, logged (`foreign_logs_dropped`, a
warning) and counted in `dvp_foreign_logs_total{chain}`.

Chain time is watched too: when the newest block is older than `stall_after` seconds of wall
clock, a `chain_stalled` alert is logged (once per stall) and `dvp_chain_head_age_seconds`
says by how much. Wall-clock time is only ever used for that alert: deadlines are judged by
block timestamps, so a stalled chain never makes anything expire.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog
from eth_utils import to_checksum_address
from prometheus_client import Counter, Gauge
from web3.exceptions import BlockNotFound

from gateway.chain.client import ChainClient, Log
from gateway.chain.htlc import decode_htlc_log
from gateway.domain.locks import DeliveryLocked, LockClaimed, LockRefunded, PaymentLocked
from gateway.domain.trade import (
    Block,
    Chain,
    ChainBatch,
    ChainRef,
    ContractReceive,
    ContractReceiveClaimed,
    ContractReceiveDeliveryLocked,
    ContractReceivePaymentLocked,
    ContractReceiveRefunded,
)

log = structlog.get_logger("gateway.poller")

CHAIN_HEAD_AGE = Gauge("dvp_chain_head_age_seconds",
                       "Wall-clock seconds since the newest block's timestamp", ["chain"])
FOREIGN_LOGS = Counter(
    "dvp_foreign_logs_total",
    "Logs the node returned for the HTLC's log filter that another contract emitted (a buggy "
    "or hostile node): dropped by the poller, never applied", ["chain"])


# Block hashes are kept for 256 blocks below the cursor (`gateway.db.repository.RECENT_HASHES`):
# no fork deeper than that can be rewound, so no checkpoint is fetched further down.
MAX_CHECKPOINT_DEPTH = 255


class DeepReorgError(RuntimeError):
    """The chain forked below every block position we remember: processing must halt."""


@dataclass(frozen=True)
class Cursor:
    number: int
    block_hash: bytes


def to_input(chain: Chain, log: Log, chain_id: int, block_number: int,
             tx_hash: bytes) -> ContractReceive | None:
    event = decode_htlc_log(log, chain_id)
    ref = ChainRef(chain_id, block_number, tx_hash, log.log_index)
    match event:
        case PaymentLocked() if chain is Chain.PAYMENT:
            return ContractReceivePaymentLocked(event.lock_id, event.lock, ref)
        case DeliveryLocked() if chain is Chain.BUSINESS:
            return ContractReceiveDeliveryLocked(event.lock_id, event.lock, ref)
        case LockClaimed():
            return ContractReceiveClaimed(chain, event.lock_id, event.preimage, ref)
        case LockRefunded():
            return ContractReceiveRefunded(chain, event.lock_id, ref)
    return None


class ChainPoller:
    def __init__(self, chain: Chain, client: ChainClient, htlc_address: str, *,
                 confirmations: int = 0, batch_blocks: int = 2_000, start_block: int = 0,
                 max_reorg_depth: int | None = None, stall_after: float | None = None,
                 finality: int | str | None = None) -> None:
        self.chain = chain
        # The chain's finality rule: a depth below the head, or the node's block tag
        # ("finalized", "safe"); None: what the poller hands over (confirmations) is final.
        self.finality = finality
        self.client = client
        self.htlc_address = to_checksum_address(htlc_address)
        self._htlc_lower = self.htlc_address.lower()
        self.confirmations = confirmations
        self.batch_blocks = batch_blocks
        self.start_block = start_block
        self.max_reorg_depth = max_reorg_depth
        self.stall_after = stall_after
        self.stalled = False

    def _watch_head(self) -> int:
        """The head's number; alert when its timestamp lags the wall clock by too much."""
        if self.stall_after is None:
            return self.head()
        (block,) = self.client.blocks(["latest"])
        assert block is not None
        age = time.time() - block.timestamp
        CHAIN_HEAD_AGE.labels(self.chain.value).set(age)
        if age > self.stall_after and not self.stalled:
            self.stalled = True
            log.critical("chain_stalled", chain=self.chain.value, head=block.number,
                         head_age_seconds=round(age), threshold=self.stall_after)
        elif age <= self.stall_after and self.stalled:
            self.stalled = False
            log.warning("chain_resumed", chain=self.chain.value, head=block.number)
        return block.number

    def head(self) -> int:
        return self.client.block_number()

    def confirmed_head(self) -> int:
        return self.head() - self.confirmations

    def _block_hash(self, number: int) -> bytes | None:
        """The block's hash; None when the node has no such block (above its head after a
        reorg or a restart). A node that cannot be reached raises: that is no fork, and the
        relayer retries the step (judging it a fork halted chains on a node's restart)."""
        (block,) = self.client.blocks([number])
        return block.hash if block is not None else None

    def find_fork(self, recent: list[tuple[int, bytes]], cursor: int | None = None) -> int:
        """Highest remembered position still on the chain (recent is newest first), at most
        `max_reorg_depth` below `cursor`; a position is at or below the true fork point."""
        for number, block_hash in recent:
            if cursor is not None and self.max_reorg_depth is not None and \
                    cursor - number > self.max_reorg_depth:
                break
            if self._block_hash(number) == block_hash:
                return number
        if cursor is not None and self.max_reorg_depth is not None:
            raise DeepReorgError(
                f"{self.chain.value} chain forked more than {self.max_reorg_depth} blocks "
                f"below block {cursor} (the configured maximum reorg depth)")
        raise DeepReorgError(
            f"{self.chain.value} chain forked below block {recent[-1][0] if recent else '?'}: "
            "no remembered block is still canonical")

    def next_batch(self, cursor: Cursor | None,
                   recent: list[tuple[int, bytes]]) -> ChainBatch | None:
        head = self._watch_head()
        target = head - self.confirmations
        rewind_to = None
        if cursor is None:
            start = self.start_block
        elif self._block_hash(cursor.number) != cursor.block_hash:
            rewind_to = self.find_fork(recent, cursor.number)
            start = rewind_to + 1
        else:
            start = cursor.number + 1
        if start > target:
            if rewind_to is None:
                return None
            end = rewind_to
        else:
            end = min(target, start + self.batch_blocks - 1)
        inputs = self._inputs(start, end) if start <= end else []
        # The checkpoints and the last block in one batch, the last block read last: if a
        # reorg lands between the reads, its hash is the newest thing read, so the
        # checkpoints never come from a newer chain than it.
        numbers = self._checkpoint_numbers(start, end)
        *marks, block = self.client.blocks([*numbers, end])
        if block is None or any(m is None for m in marks):
            raise BlockNotFound(f"{self.chain.value} block {end} or below is gone: read again")
        return ChainBatch(chain=self.chain, chain_id=self.client.chain_id, inputs=inputs,
                          block=Block(self.chain, end, block.timestamp,
                                      finalized=self._finalized(head, end)),
                          block_hash=block.hash, rewind_to=rewind_to,
                          checkpoints=tuple((m.number, m.hash) for m in marks
                                            if m is not None))

    def _finalized(self, head: int, end: int) -> int | None:
        """The highest block of this batch that is final by the chain's rule (None: all)."""
        if self.finality is None or (isinstance(self.finality, int)
                                     and self.finality <= self.confirmations):
            return None
        if isinstance(self.finality, int):
            final = head - self.finality
        else:
            (tagged,) = self.client.blocks([self.finality])
            if tagged is None:
                raise BlockNotFound(f"the {self.chain.value} node has no {self.finality!r} block")
            final = tagged.number
        return max(0, min(final, end))

    def _checkpoint_numbers(self, start: int, end: int) -> list[int]:
        """Every other block below `end` in the batch's last `max_reorg_depth` blocks, whose
        hashes are remembered so that positions stay two blocks apart near the cursor (with
        the previous cursor, `start - 1`, a batch of one or two blocks already does: it needs
        none)."""
        if self.max_reorg_depth is None or end - start < 2:
            return []
        lowest = max(start, end - min(self.max_reorg_depth, MAX_CHECKPOINT_DEPTH))
        return list(range(end - 2, lowest - 1, -2))

    def _inputs(self, start: int, end: int) -> list[ContractReceive]:
        inputs = []
        foreign: list[str] = []
        for found in self.client.get_logs(start, end, self.htlc_address):
            if str(found.log.address).lower() != self._htlc_lower:
                foreign.append(str(found.log.address))
                continue
            if found.removed:
                continue
            inp = to_input(self.chain, found.log, self.client.chain_id, found.block_number,
                           found.tx_hash)
            if inp is not None:
                inputs.append(inp)
        if foreign:
            FOREIGN_LOGS.labels(self.chain.value).inc(len(foreign))
            log.warning("foreign_logs_dropped", chain=self.chain.value, count=len(foreign),
                        emitters=sorted(set(foreign))[:5], expected=self.htlc_address,
                        from_block=start, to_block=end)
        inputs.sort(key=lambda i: (i.ref.block_number, i.ref.log_index))
        return inputs
