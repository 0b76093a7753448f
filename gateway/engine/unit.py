"""A unit of work on named trades (`Dispatcher.unit`): one writing transaction in which a caller
(an API request, the reconciler) reads the trades it names with their rows locked, judges its
request on them, applies it through the machine and writes rows of its own; one commit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from gateway.db.repository import Clock, Repository
from gateway.domain.trade import (
    ActionProposeTrade,
    Chain,
    ChainRef,
    Effect,
    Input,
    InvalidTransition,
    TradeState,
    is_hashlock,
    new_trade,
    state_transition,
    wake_times,
)
from gateway.engine.results import Work, Writes, clock_of
from gateway.logs import trade_ref

if TYPE_CHECKING:
    from gateway.engine.dispatcher import Dispatcher


class UnknownTrade(LookupError):
    pass


class ActionsRefused(Exception):
    """`Dispatcher.apply_actions` applied nothing: `refused` holds (index of the action, its
    UnknownTrade, InvalidTransition or ValueError) for every action that could not be."""

    def __init__(self, refused: list[tuple[int, Exception]]) -> None:
        super().__init__("; ".join(f"[{i}] {exc}" for i, exc in refused))
        self.refused = refused


class Unit:
    """One writing transaction on named trades, for a caller that writes rows of its own in it
    and builds its answer from it (an API request: `Dispatcher.unit`). It reads the trades it
    is asked about with their rows locked, so what the caller checks (`trades`) is what the
    action is applied to; then one write (`propose`, `propose_many`, `apply`, `apply_many`)
    and the caller's own writes commit together, or nothing does."""

    def __init__(self, dispatcher: Dispatcher, session: Session) -> None:
        self.dispatcher = dispatcher
        self.session = session
        self.repo = Repository(session)
        self._work = Work(self.repo, lock_rows=True)

    def lock_name(self, name: str) -> None:
        """See `Repository.lock_name` (a buyer's exposure, read and committed to here)."""
        self.repo.lock_name(name)

    def trades(self, trade_ids: list[bytes]) -> dict[bytes, TradeState]:
        """The current states of these trades (those that exist), locked for this unit."""
        self._work.load_many(trade_ids)
        return {t: self._work.states[t] for t in trade_ids if t in self._work.states}

    def propose(self, action: ActionProposeTrade) -> TradeState:
        return self.propose_many([action])[0]

    def propose_many(self, actions: list[ActionProposeTrade]) -> list[TradeState]:
        """Create trades (a proposal, or a batch of them: all or none)."""
        d, repo = self.dispatcher, self.repo
        clocks = d._clocks(repo, (Chain.PAYMENT, Chain.BUSINESS))
        made: list[tuple[TradeState, list[Effect]]] = []
        for action in actions:
            state, effects = new_trade(action, d.policy)
            state, more = d._catch_up(state, clocks)
            made.append((state, effects + more))
        repo.add_trades([(state, wake_times(state, d.policy)) for state, _ in made])
        repo.record_inputs([(state.trade_id, action, None, clock_of(state))
                            for (state, _), action in zip(made, actions, strict=True)])
        waiting = {inp.route.hashlock for _, inp in repo.unmatched_inputs(
            hashlocks=[s.terms.hashlock for s, _ in made if is_hashlock(s.terms.hashlock)])
            }  # one query for the whole batch: adopt only where logs wait
        for n, (state, effects) in enumerate(made):
            if state.terms.hashlock not in waiting:
                continue
            adopted, more = d._adopt_early_logs(repo, state)
            if adopted is not state:
                made[n] = (adopted, effects + more)
                repo.save_trades([(adopted, wake_times(adopted, d.policy))])
        writes = Writes(new_trades=frozenset(state.trade_id for state, _ in made))
        for state, effects in made:
            d._store_effects(writes, state, effects, None)
        writes.flush(repo)
        return [state for state, _ in made]

    def apply(self, action: Input) -> TradeState:
        """Accept, cancel, take delivery. Raises UnknownTrade or InvalidTransition."""
        try:
            return self.apply_many([action])[0]
        except ActionsRefused as exc:
            raise exc.refused[0][1] from None

    def apply_many(self, actions: list[Input]) -> list[TradeState]:
        """Several actions (a batch of accepts), all or none, in order. Raises ActionsRefused
        naming, by index, every action whose trade is unknown or that its machine refuses."""
        d, work = self.dispatcher, self._work
        ids: list[bytes] = [a.trade_id for a in actions]  # type: ignore[attr-defined]
        work.load_many(ids)
        unknown = [(i, UnknownTrade(trade_ref(t))) for i, t in enumerate(ids)
                   if t not in work.states]
        if unknown:
            raise ActionsRefused(unknown)  # type: ignore[arg-type]
        clocks = d._clocks(work.repo, (Chain.PAYMENT, Chain.BUSINESS))
        effects: dict[bytes, list[Effect]] = {}
        inputs: list[tuple[bytes | None, Input, ChainRef | None, Clock | None]] = []
        refused: list[tuple[int, Exception]] = []
        given: list[bytes] = []  # trades given their hashlock by these actions
        for i, (trade_id, action) in enumerate(zip(ids, actions, strict=True)):
            state, early = d._catch_up(work.states[trade_id], clocks)
            try:
                new_state, out = state_transition(state, action, d.policy)
            except (InvalidTransition, ValueError) as exc:
                refused.append((i, exc))
                continue
            inputs.append((trade_id, action, None, clock_of(state)))
            if new_state.terms.hashlock != state.terms.hashlock:
                work.repo.set_trade_hashlock(trade_id, new_state.terms.hashlock)
                given.append(trade_id)
            work.states[trade_id] = new_state
            effects.setdefault(trade_id, []).extend(early + out)
        if refused:
            raise ActionsRefused(refused)
        work.repo.record_inputs(inputs)
        for trade_id in given:
            work.states[trade_id], more = d._adopt_early_logs(work.repo, work.states[trade_id])
            effects[trade_id].extend(more)
        d._finish(work, effects, None)
        return [work.states[t] for t in ids]
