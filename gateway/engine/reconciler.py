"""The reconciler: every few relayer steps, each open trade's legs against their contracts.

The chain's logs are what move a trade's legs; the reconciler only checks that what they
taught us still holds. For each chain it reads, in one batched request (`read_statuses`), the
contract status of every lock that an open trade records on that chain (its payment leg,
rejected payment locks, its delivery leg) and compares it with the recorded status (open /
claimed / refunded).

It reads at the block the poller has processed (the chain's cursor), so a log not yet polled
is never taken for a disagreement. That read is *verified* when the node's block at that height
still has the cursor's hash: any difference is then a fact (a log the poller never applied)
and is reported at once. Otherwise - the chain reorganised under the cursor, or came back
shorter than it (a node restarted without its latest blocks), or the node has no state for
that block any more, in which case it reads at its head - a difference is reported only when
the next run sees it again: the poller, which runs in between, rewinds ordinary reorgs and
the records follow the chain. A leg recorded open that such a read shows exited is the chain
being ahead of the poller, never reported.

A reported disagreement is a `chain_disagrees` critical log line (trade, chain, lock id,
recorded, on_chain), `dvp_chain_disagreements_total{chain}`, `dvp_trades_disagreeing_chain
{chain}` and, once per (trade, lock), a `ChainDisagrees` input through the dispatcher, which
flags the trade `chain_disagrees:<lock id hex>`. The reconciler never changes a leg.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from sqlalchemy.orm import Session, sessionmaker

from gateway.chain.htlc import STATUS_NAMES, read_statuses
from gateway.chain.poller import ChainPoller
from gateway.db.repository import Repository
from gateway.domain.marks import Flag, FlagKind
from gateway.domain.trade import (
    Chain,
    ChainDisagrees,
    DeliveryLeg,
    LegStatus,
    PaymentLeg,
    TradeState,
)
from gateway.engine import metrics
from gateway.engine.dispatcher import Dispatcher
from gateway.logs import trade_ref

log = structlog.get_logger("gateway.reconciler")

_EXITED = frozenset({"claimed", "refunded"})


@dataclass(frozen=True)
class Disagreement:
    trade_id: bytes
    chain: Chain
    lock_id: bytes
    recorded: str  # open / claimed / refunded
    on_chain: str  # none / open / claimed / refunded


def legs_on(state: TradeState, chain: Chain) -> list[PaymentLeg | DeliveryLeg]:
    """The legs a trade records on `chain`."""
    if chain is Chain.PAYMENT:
        return [leg for leg in (state.payment, *state.rejected_payments) if leg is not None]
    return [state.delivery] if state.delivery is not None else []


def flag_for(lock_id: bytes) -> Flag:
    return Flag.of(FlagKind.CHAIN_DISAGREES, lock_id)


class Reconciler:
    def __init__(self, session_factory: sessionmaker[Session], dispatcher: Dispatcher) -> None:
        self.session_factory = session_factory
        self.dispatcher = dispatcher
        self._last: dict[Chain, set[Disagreement]] = {}  # each chain's previous run
        self._reported: set[Disagreement] = set()  # logged and counted by this process

    def run_chain(self, chain: Chain, poller: ChainPoller) -> list[Disagreement]:
        """Compare one chain's open legs with its contract; returns the disagreements
        reported by this run (every one still standing, not only new ones)."""
        client = poller.client
        with self.session_factory() as session:
            repo = Repository(session)
            cursor = repo.cursor(client.chain_id)
            trades = repo.active_trades_with_locks(chain.value) if cursor is not None else []
        legs = [(state, leg) for state in trades for leg in legs_on(state, chain)]
        if cursor is None or not legs:
            self._last[chain] = set()
            metrics.TRADES_DISAGREEING.labels(chain.value).set(0)
            return []
        lock_ids = list(dict.fromkeys(leg.lock_id for _, leg in legs))
        block = cursor.block_number
        read = read_statuses(client, poller.htlc_address, lock_ids, block)
        verified = read is not None and read[0].hex() == cursor.block_hash
        if read is None:  # above the head (a chain that came back short), or pruned state
            block = poller.head()
            read = read_statuses(client, poller.htlc_address, lock_ids, block)
            if read is None:
                raise RuntimeError(f"{chain.value}: cannot read lock statuses at the head "
                                   f"(block {block})")
        on_chain = dict(zip(lock_ids, read[1], strict=True))
        found: set[Disagreement] = set()
        for state, leg in legs:
            code = on_chain[leg.lock_id]
            status = STATUS_NAMES[code] if code < len(STATUS_NAMES) else str(code)
            if status == leg.status.value:
                continue
            if not verified and leg.status is LegStatus.OPEN and status in _EXITED:
                continue  # the chain ahead of the poller: its logs will say so
            found.add(Disagreement(state.trade_id, chain, leg.lock_id, leg.status.value,
                                   status))
        standing = found if verified else found & self._last.get(chain, set())
        self._last[chain] = found
        flagged = {(s.trade_id, leg.lock_id) for s, leg in legs if flag_for(leg.lock_id)
                   in s.flags}
        for d in sorted(standing, key=lambda d: (d.trade_id, d.lock_id)):
            if d not in self._reported:
                self._reported.add(d)
                metrics.CHAIN_DISAGREEMENTS.labels(chain.value).inc()
                log.critical("chain_disagrees", trade=trade_ref(d.trade_id),
                             chain=chain.value, lock_id="0x" + d.lock_id.hex(),
                             recorded=d.recorded, on_chain=d.on_chain, block=block,
                             verified=verified)
            if (d.trade_id, d.lock_id) not in flagged:
                self._flag(d)
        # One that goes away and comes back is reported again.
        self._reported = {d for d in self._reported if d.chain is not chain} | standing
        metrics.TRADES_DISAGREEING.labels(chain.value).set(len({d.trade_id for d in standing}))
        return sorted(standing, key=lambda d: (d.trade_id, d.lock_id))

    def _flag(self, d: Disagreement) -> None:
        try:
            with self.dispatcher.unit() as unit:
                state = unit.trades([d.trade_id]).get(d.trade_id)
                if state is None or flag_for(d.lock_id) in state.flags:
                    return  # flagged meanwhile (another relayer's reconciler)
                unit.apply(ChainDisagrees(d.trade_id, d.chain, d.lock_id, d.recorded,
                                          d.on_chain))
        except Exception as exc:  # noqa: BLE001 - the alert is out; the flag is tried next run
            log.error("chain_disagrees_flag_failed", trade=trade_ref(d.trade_id),
                      error=f"{type(exc).__name__}: {exc}"[:500])
