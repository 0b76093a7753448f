"""What one dispatcher transaction writes besides trade states, and the work it loads: the
trades it read (as read, for what changed) and the outbox rows, effect closures, events and
alerts their transitions call for, written in a few statements (one per kind)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from gateway.db.repository import Clock, Repository, Wakes
from gateway.domain.marks import EffectKey, EffectKind, Flag
from gateway.domain.trade import (
    ALERT_PHASES,
    ChainRef,
    ContractSend,
    Effect,
    EventPhaseChanged,
    EventTradeFlagged,
    LegStatus,
    Phase,
    TradeState,
)
from gateway.engine import metrics
from gateway.logs import trade_ref

log = structlog.get_logger("gateway.dispatcher")


@dataclass
class Work:
    repo: Repository
    lock_rows: bool = False  # a shared trade-writes lock: lock each trade's row as it loads
    states: dict[bytes, TradeState] = field(default_factory=dict)
    before: dict[bytes, TradeState] = field(default_factory=dict)
    wakes: dict[bytes, Wakes] = field(default_factory=dict)  # as stored

    def load(self, trade_id: bytes) -> TradeState | None:
        if trade_id not in self.states:
            self.load_many([trade_id])
        return self.states.get(trade_id)

    def load_many(self, trade_ids: list[bytes]) -> None:
        wanted = [t for t in trade_ids if t not in self.states]
        if not wanted:
            return
        for state, wakes in self.repo.load_trades(wanted, lock_rows=self.lock_rows).values():
            self.add(state, wakes)

    def add(self, state: TradeState, wakes: Wakes) -> None:
        if state.trade_id not in self.states:
            self.states[state.trade_id] = self.before[state.trade_id] = state
            self.wakes[state.trade_id] = wakes


@dataclass
class Writes:
    """What one dispatcher transaction writes besides trade states, gathered over all its
    trades and written in a few statements (one per kind) instead of a few per trade."""

    new_trades: frozenset[bytes] = frozenset()
    enqueue: list[tuple[bytes, ContractSend, str]] = field(default_factory=list)
    close: list[tuple[bytes, str, str]] = field(default_factory=list)
    events: list[tuple[bytes, Effect, ChainRef | None]] = field(default_factory=list)
    settled: list[bytes] = field(default_factory=list)

    def flush(self, repo: Repository) -> None:
        repo.enqueue_many(self.enqueue, self.new_trades)
        repo.close_effects_many(self.close)
        repo.add_events_many(self.events)
        if self.settled:
            now = datetime.now(UTC)
            for revealed_at in repo.phases_reached_at(self.settled,
                                                      Phase.DELIVERED.value).values():
                metrics.SETTLEMENT_SECONDS.observe(max(0.0, (now - revealed_at).total_seconds()))


ALERT_ADVICE = {
    Phase.PAID_WITHOUT_DELIVERY: "the seller was paid and the buyer holds no title: the seller "
                                 "knew the secret, or a reorg took the title's lock or claim "
                                 "(then it settles once the title is claimed for the buyer); "
                                 "contact both parties",
    Phase.DELIVERED_UNPAID: "the buyer has the title and its payment back: the payment claim "
                            "was not mined before T_pay; contact both parties",
}


def alert(note: Effect) -> None:
    """Critical log lines and the alert counter for what an operator must act on."""
    if isinstance(note, EventPhaseChanged) and note.new in ALERT_PHASES:
        metrics.TRADE_ALERTS.labels(note.new.value).inc()
        log.critical("trade_alert", trade=trade_ref(note.trade_id), phase=note.new.value,
                     advice=ALERT_ADVICE[note.new])
    elif isinstance(note, EventTradeFlagged):
        metrics.TRADE_ALERTS.labels(Flag(note.flag).name).inc()
        log.critical("trade_flagged", trade=trade_ref(note.trade_id), flag=note.flag,
                     reason=note.reason)


def result_seen(state: TradeState, key: EffectKey) -> bool:
    if key.kind is EffectKind.PAYMENT_LOCK:
        return state.payment is not None or bool(state.rejected_payments)
    if key.kind is EffectKind.DELIVERY_LOCK:
        return state.delivery is not None
    legs = [state.payment, state.delivery, *state.rejected_payments]
    return any(leg is not None and leg.lock_id == key.lock_id
               and leg.status is not LegStatus.OPEN for leg in legs)


def clock_of(state: TradeState) -> Clock:
    """The chain times a trade decided at: recorded with each input, replayed at them."""
    return (state.payment_time, state.business_time)
