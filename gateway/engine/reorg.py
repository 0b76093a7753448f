"""A reorg under a chain batch: what blocks above the fork point taught us is undone by
replaying each affected trade's remaining inputs at the chain times they were first applied
at; every preimage ever seen is kept (it was public); a lock the gateway had acted on and the
chain took back is a critical flag on its trade (trust rule 8)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import structlog

from gateway.db.repository import Clock
from gateway.domain.policy import TimingPolicy
from gateway.domain.trade import (
    ActionProposeTrade,
    ActionTakeDelivery,
    Block,
    Chain,
    ChainBatch,
    ChainDisagrees,
    ContractReceiveClaimed,
    ContractSend,
    Effect,
    Input,
    InvalidTransition,
    Phase,
    PreimageRevealed,
    TradeState,
    new_trade,
    state_transition,
)
from gateway.engine.results import Work, clock_of
from gateway.logs import trade_ref

log = structlog.get_logger("gateway.dispatcher")
Transition = Callable[[TradeState, Input], tuple[TradeState, list[Effect]]]


def rewind(work: Work, batch: ChainBatch, effects: dict[bytes, list[Effect]],
           policy: TimingPolicy, transition: Transition) -> None:
    """Undo what blocks above the fork point taught us, by replaying each affected trade's
    remaining inputs. A preimage seen in an orphaned block stays known: it was public."""
    fork = batch.rewind_to
    assert fork is not None
    orphaned = work.repo.orphan_inputs_after(batch.chain_id, fork)
    work.repo.forget_block_hashes_after(batch.chain_id, fork)
    log.warning("reorg_rewind", chain=batch.chain.value, fork_block=fork,
                orphaned_inputs=len(orphaned))
    touched = sorted({t for t, _ in orphaned})
    work.load_many(touched)  # the trades in one query, their remaining inputs in another
    histories = work.repo.inputs_for_trades(touched)
    lost_inputs = []
    for trade_id in touched:
        old = work.states.get(trade_id)
        if old is None:
            continue
        revealed = [i.preimage for t, i in orphaned
                    if t == trade_id and isinstance(i, ContractReceiveClaimed)]
        state, out = replay(histories[trade_id], old, revealed, batch, policy)
        for lost in acted_on_and_lost(old, state):
            # Trust rule 8: the chain took back a lock the gateway had acted on (reported
            # it verified, delivered against it): a critical alert on the trade.
            state, more = transition(state, lost)
            out.extend(more)
            lost_inputs.append((trade_id, lost, None, clock_of(state)))
        work.states[trade_id] = state
        # Every effect the replayed facts call for is enqueued again: rows already pending
        # stay as they are, rows whose result the reorg undid start afresh.
        effects.setdefault(trade_id, []).extend(
            e for e in out if isinstance(e, ContractSend) and e.key in state.pending)
        effects[trade_id].extend(e for e in out if not isinstance(e, ContractSend))
    work.repo.record_inputs(lost_inputs)


def replay(inputs: list[tuple[Input, Clock | None]], old: TradeState, revealed: list[bytes],
           batch: ChainBatch, policy: TimingPolicy) -> tuple[TradeState, list[Effect]]:
    """The trade rebuilt from the inputs still on chain, each applied at the chain times it
    was first applied at (recorded with it), so time-dependent decisions (an accepted
    cancel, an expiry) come out as they did; then every preimage ever seen (it was public)
    and the chains' current times."""
    (first, _), *rest = inputs
    assert isinstance(first, ActionProposeTrade)
    state, out = new_trade(first, policy)
    # Finality does not go back: a reorg below a final block halts the chain instead.
    for chain, final in ((Chain.PAYMENT, old.payment_finalized),
                         (Chain.BUSINESS, old.business_finalized)):
        state, _ = state_transition(state, Block(chain, 0, 0, finalized=final), policy)
    for inp, clock in rest:
        if clock is not None:
            for chain, at in zip((Chain.PAYMENT, Chain.BUSINESS), clock, strict=True):
                state, more = state_transition(state, Block(chain, 0, at), policy)
                out.extend(more)
        if isinstance(inp, ActionTakeDelivery):
            inp = replace(inp, secret=old.buyer_secret)  # logged without it
        try:
            state, more = state_transition(state, inp, policy)
        except (InvalidTransition, ValueError):
            log.warning("replay_refused_action", trade=trade_ref(old.trade_id),
                        action=type(inp).__name__)
            continue  # an action that only the orphaned facts had allowed
        out.extend(more)
    if old.preimage is not None:
        revealed = [*revealed, old.preimage]
    for preimage in revealed:
        state, more = state_transition(state, PreimageRevealed(preimage), policy)
        out.extend(more)
    times = {Chain.PAYMENT: old.payment_time, Chain.BUSINESS: old.business_time}
    times[batch.chain] = batch.block.timestamp
    for chain, timestamp in times.items():
        state, more = state_transition(state, Block(chain, 0, timestamp), policy)
        out.extend(more)
    return state, out


def acted_on_and_lost(old: TradeState, new: TradeState) -> list[ChainDisagrees]:
    """Legs a reorg removed after the trade had moved on from them: a payment lock reported
    verified (or delivered against), a delivery lock the buyer was told to take."""
    lost = []
    acted = {Chain.PAYMENT: old.phase not in (Phase.PROPOSED, Phase.AGREED),
             Chain.BUSINESS: old.phase not in (Phase.PROPOSED, Phase.AGREED,
                                               Phase.PAYMENT_LOCKED)}
    for chain, before, after in ((Chain.PAYMENT, old.payment, new.payment),
                                 (Chain.BUSINESS, old.delivery, new.delivery)):
        if before is not None and acted[chain] and (after is None
                                                    or after.lock_id != before.lock_id):
            lost.append(ChainDisagrees(old.trade_id, chain, before.lock_id,
                                       before.status.value, "removed by a reorg"))
    return lost
