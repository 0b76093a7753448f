"""The dispatcher: the only writer of trade state.

Each call is one database transaction that stores the inputs, the new trade states, the
effects they call for (outbox) and, for chain batches, the chain cursor, together: a crash
before the commit loses nothing (the batch is fetched again), a crash after it repeats nothing
(logs already recorded are skipped by their (chain id, tx hash, log index)).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import structlog
from sqlalchemy.orm import Session, sessionmaker

from gateway.db.repository import Clock, Repository
from gateway.db.trade_store import LogTrades
from gateway.domain.marks import Flag, FlagKind
from gateway.domain.policy import TimingPolicy
from gateway.domain.state import evolve
from gateway.domain.trade import (
    ActionProposeTrade,
    Block,
    Chain,
    ChainBatch,
    ChainRef,
    ContractReceiveDeliveryLocked,
    ContractReceivePaymentLocked,
    ContractSend,
    Effect,
    Input,
    InvariantViolated,
    Phase,
    TradeState,
    block_transition,
    is_active,
    is_hashlock,
    state_transition,
    wake_times,
)
from gateway.engine.crashpoints import reach
from gateway.engine.reorg import rewind
from gateway.engine.results import Work, Writes, alert, clock_of, result_seen
from gateway.engine.routing import RoutingIndex, effect_chain, log_keys, route
from gateway.engine.unit import Unit
from gateway.logs import trade_ref

log = structlog.get_logger("gateway.dispatcher")


class Dispatcher:
    def __init__(self, session_factory: sessionmaker[Session], policy: TimingPolicy,
                 on_effects: Callable[[TradeState, list[Effect]], None] | None = None,
                 chain_ids: dict[Chain, int] | None = None) -> None:
        self.session_factory = session_factory
        self.policy = policy
        self.on_effects = on_effects
        self.chain_ids = chain_ids or {}

    # --- chain time -------------------------------------------------------------------------

    def _clocks(self, repo: Repository, chains: tuple[Chain, ...]) -> list[Block]:
        """Each chain's time as of the relayer's last applied block (its cursor)."""
        ids = {self.chain_ids[c]: c for c in chains if c in self.chain_ids}
        return [Block(ids[row.chain_id], row.block_number, row.block_timestamp, finalized=0)
                for row in repo.cursors(list(ids))] if ids else []

    def _catch_up(self, state: TradeState, clocks: list[Block]) -> tuple[TradeState,
                                                                          list[Effect]]:
        """Bring a trade's chain times up to the cursors before it decides anything.

        A trade's stored times are saved only when something else about it changes, so a
        decision that weighs both chains' clocks (a managed seller's lock, taking delivery)
        would otherwise read one chain's time from long ago. Time still arrives only as
        `Block` inputs."""
        out: list[Effect] = []
        for block in clocks:
            known = state.payment_time if block.chain is Chain.PAYMENT else state.business_time
            if block.timestamp > known:
                state, more = self._transition(state, block)
                out.extend(more)
        return state, out

    # --- actions (API, reconciler, refused sends) -------------------------------------------

    @contextmanager
    def unit(self) -> Iterator[Unit]:
        """A writing transaction on named trades (`Unit`): the trade-writes lock shared (see
        `Repository.lock_trade_writes`), each trade's row locked as it is read. Commits when
        the block ends, rolls back if it raises."""
        with self.session_factory.begin() as session:
            Repository(session).lock_trade_writes(shared=True)
            yield Unit(self, session)

    def propose(self, action: ActionProposeTrade) -> TradeState:
        """Create the trade, in a transaction of its own."""
        with self.unit() as unit:
            return unit.propose(action)

    def propose_many(self, actions: list[ActionProposeTrade]) -> list[TradeState]:
        with self.unit() as unit:
            return unit.propose_many(actions)

    def apply_action(self, action: Input) -> TradeState:
        """Accept, cancel, take delivery, or a relayer's own input about a trade, in a
        transaction of its own. Raises UnknownTrade or InvalidTransition."""
        with self.unit() as unit:
            return unit.apply(action)

    def apply_actions(self, actions: list[Input]) -> list[TradeState]:
        with self.unit() as unit:
            return unit.apply_many(actions)

    def _adopt_early_logs(self, repo: Repository, state: TradeState) -> tuple[TradeState,
                                                                               list[Effect]]:
        """Apply the logs of this trade mined before it had its hashlock (the buyer locked
        before it proposed, or before it gave its hashlock accepting a seller's proposal):
        they were kept in the input log with no trade, and now move to the end of this
        trade's, so that a lock the gateway never routed is still claimed for the seller once
        the secret is public (trust rule 3). Locks first found by hashlock bring their claims
        and refunds, found by lock id. Called in the transaction that gives the trade its
        hashlock, after the action is logged."""
        if not is_hashlock(state.terms.hashlock):
            return state, []
        found = dict(repo.unmatched_inputs(hashlocks=[state.terms.hashlock]))
        lock_ids = [inp.lock_id for inp in found.values() if isinstance(
            inp, ContractReceivePaymentLocked | ContractReceiveDeliveryLocked)]
        found.update(repo.unmatched_inputs(lock_ids=lock_ids))
        if not found:
            return state, []
        chains = {chain_id: chain for chain, chain_id in self.chain_ids.items()}
        out: list[Effect] = []
        adopted = []
        for row, inp in sorted(found.items(), key=lambda item: item[0].id):
            clock = clock_of(state)
            state, more = self._transition(state, inp)
            out.extend(more)
            adopted.append((row, inp, clock))
            if isinstance(inp, ContractReceivePaymentLocked | ContractReceiveDeliveryLocked) \
                    and row.chain_id in chains:
                repo.link_locks(chains[row.chain_id].value, [(inp.lock_id, state.trade_id)])
        repo.adopt_inputs(state.trade_id, adopted)
        log.info("early_logs_adopted", trade=trade_ref(state.trade_id), logs=len(adopted))
        return state, out

    # --- chain batches (poller) -----------------------------------------------------------

    def apply_chain_batch(self, batch: ChainBatch) -> None:
        """The batch's logs to the trades they name, then its block to those and to the trades
        it wakes (`wake_times`): work in proportion to what the batch concerns, however many
        trades are open."""
        # No autoflush: nothing this batch writes is read back by it (inputs are checked
        # against one prefetch), so everything goes to the database in one flush at commit.
        with self.session_factory.begin() as session, session.no_autoflush:
            work = Work(Repository(session))
            work.repo.lock_trade_writes()
            effects: dict[bytes, list[Effect]] = {}
            refs: dict[bytes, object] = {}
            # Both chains' times as of their cursors, brought to every trade before it
            # decides: this chain's cursor is older than any log of the batch (but after a
            # reorg it may be a block that is gone: then only the other chain's).
            clocks = [c for c in self._clocks(work.repo, (Chain.PAYMENT, Chain.BUSINESS))
                      if c.chain is not batch.chain or batch.rewind_to is None]
            if batch.rewind_to is not None:
                rewind(work, batch, effects, self.policy, self._transition)
            named = work.repo.trades_for_logs(batch.chain.value, *log_keys(batch.inputs))
            for state, wakes in named.trades:
                work.add(state, wakes)
            for state, wakes in work.repo.due_trades(batch.chain.value, batch.block.timestamp):
                work.add(state, wakes)
            new_inputs, links = self._apply_logs(work, batch, clocks, effects, refs, named)
            for trade_id, state in list(work.states.items()):
                if not is_active(state) and trade_id not in effects:
                    continue
                state, early = self._catch_up(state, clocks)
                new_state, out = self._transition(state, batch.block)
                out = early + out
                work.states[trade_id] = new_state
                if out:
                    effects.setdefault(trade_id, []).extend(out)
            work.repo.record_inputs(new_inputs)
            work.repo.link_locks(batch.chain.value, links)
            work.repo.set_cursor(batch.chain_id, batch.block.number, batch.block_hash,
                                 batch.block.timestamp, batch.checkpoints)
            self._finish(work, effects, refs)
            reach("dispatcher.before_commit")
        reach("dispatcher.after_commit")

    def _apply_logs(self, work: Work, batch: ChainBatch, clocks: list[Block],
                    effects: dict[bytes, list[Effect]], refs: dict[bytes, object],
                    named: LogTrades,
                    ) -> tuple[list[tuple[bytes | None, Input, ChainRef, Clock | None]],
                               list[tuple[bytes, bytes]]]:
        """Each log of the batch to the trade it names, in chain order; a log seen before is
        skipped, one no trade claims yet is kept for the trade that will (`unmatched_log`).
        A log is routed by the batch's trades (and the links it learns), then by the
        database's routes for the batch's keys (`named`, read once for the batch). Returns
        the input rows to record and the (lock id, trade id) links learnt."""
        index = RoutingIndex(work.states.values())
        logged = work.repo.logged_inputs(batch.chain_id, (i.ref for i in batch.inputs))
        new_inputs: list[tuple[bytes | None, Input, ChainRef, Clock | None]] = []
        links: list[tuple[bytes, bytes]] = []
        for inp in batch.inputs:
            row = logged.get((inp.ref.tx_hash.hex(), inp.ref.log_index))
            if row is not None and not row.orphaned:
                continue  # applied before (a batch fetched again after a crash)
            trade_id = index.route(batch.chain, inp) or route(inp, named.by_lock.get,
                                                              named.by_hashlock.get)
            state = work.load(trade_id) if trade_id is not None else None
            if state is not None:
                state, early = self._catch_up(state, clocks)
            clock = clock_of(state) if state is not None else None
            if row is not None:
                work.repo.revive_input(row, trade_id, inp, inp.ref, clock)
            else:
                new_inputs.append((trade_id, inp, inp.ref, clock))
            if trade_id is None or state is None:
                log.info("unmatched_log", chain=batch.chain.value, kind=type(inp).__name__,
                         lock_id=inp.lock_id.hex(), tx=inp.ref.tx_hash.hex())
                continue
            if isinstance(inp, ContractReceivePaymentLocked | ContractReceiveDeliveryLocked):
                links.append((inp.lock_id, trade_id))
                index.add_lock(batch.chain, inp.lock_id, trade_id)
            new_state, out = self._transition(state, inp)
            work.states[trade_id] = new_state
            effects.setdefault(trade_id, []).extend(early + out)
            refs[trade_id] = inp.ref
        return new_inputs, links

    def _transition(self, state: TradeState, inp: Input) -> tuple[TradeState, list[Effect]]:
        """A chain input for one trade. A broken invariant (a bug, never a chain fact) is
        contained to that trade: logged as critical and flagged, the input not applied, and
        every other trade and the chain cursor move on. A block goes through
        `block_transition`: most only move the trade's clock."""
        try:
            if isinstance(inp, Block):
                return block_transition(state, inp, self.policy)
            return state_transition(state, inp, self.policy)
        except InvariantViolated as exc:
            log.critical("invariant_violated", trade=trade_ref(state.trade_id),
                         input=type(inp).__name__, error=str(exc))
            flag = Flag.of(FlagKind.INVARIANT_VIOLATED, type(inp).__name__)
            if flag in state.flags:
                return state, []
            return evolve(state, flags=(*state.flags, flag)), []

    # --- storing results ------------------------------------------------------------------

    def _finish(self, work: Work, effects: dict[bytes, list[Effect]],
                refs: dict[bytes, object] | None) -> None:
        changed = []
        writes = Writes()
        for trade_id, state in work.states.items():
            before = work.before.get(trade_id)
            wakes = wake_times(state, self.policy)
            if before is not None and not effects.get(trade_id) and \
                    wakes == work.wakes.get(trade_id) and evolve(
                    state, payment_time=before.payment_time,
                    business_time=before.business_time) == before:
                continue  # only chain time moved: the next batch that wakes it brings it again
            changed.append((state, wakes))
            self._store_effects(writes, state, effects.get(trade_id, []),
                                refs.get(trade_id) if refs else None, before)
        work.repo.save_trades(changed)
        writes.flush(work.repo)

    def _store_effects(self, writes: Writes, state: TradeState, effects: list[Effect],
                       ref: object, before: TradeState | None = None) -> None:
        for effect in effects:
            # Only what the final state still wants: a later input of the same batch (its
            # Block, say) may have withdrawn an effect an earlier one asked for.
            if isinstance(effect, ContractSend) and effect.key in state.pending:
                writes.enqueue.append((state.trade_id, effect, effect_chain(effect).value))
        if before is not None:
            for key in before.pending - state.pending:
                writes.close.append((state.trade_id, key,
                                     "done" if result_seen(state, key) else "cancelled"))
        notes = [e for e in effects if not isinstance(e, ContractSend)]
        if before is not None and before.phase is not state.phase and \
                state.phase is Phase.SETTLED:
            writes.settled.append(state.trade_id)
        writes.events.extend((state.trade_id, note, ref) for note in notes)  # type: ignore[misc]
        for note in notes:
            log.info("trade_event", trade=trade_ref(state.trade_id),
                     kind=type(note).__name__, phase=state.phase.value)
            alert(note)
        if self.on_effects and effects:
            self.on_effects(state, effects)





