"""The relayer: pollers feed the dispatcher, the executor sends what the outbox holds.

`step()` is one full pass and is what tests drive directly (deterministic, no threads, no
sleeps); the daemon (`run_forever`) is `step()` in a loop with a stop event.

Several relayers may share one PostgreSQL database (and the same chains and keys). Each step
polls a chain only while holding that chain's poll lock and runs a chain's outbox only while
holding its execute lock (PostgreSQL session advisory locks, `gateway.db.locks`, never waited
for: a chain whose lock another relayer holds is skipped this step); every dispatcher
transaction holds the trade-writes lock, and every executor transaction that records
transactions holds its chain's send lock. So each chain's logs are applied by one relayer at a
time, each signing key's nonces on a chain are handed out by one transaction at a time (even if
two passes overlap), and a relayer that dies releases its chains to the others with its
connections. On SQLite (a single
relayer) the locks are no-ops. A relayer that cannot reach the database or a node backs off
(`run_forever`) and resumes where the database says it was. Every `reconcile_every` steps,
after polling, the reconciler checks open trades' legs against the contracts
(`gateway.engine.reconciler`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import structlog
from sqlalchemy.orm import Session, sessionmaker

from gateway.chain.poller import ChainPoller, Cursor, DeepReorgError
from gateway.db.locks import AdvisoryLocks, execute_lock, poll_lock
from gateway.db.repository import Repository
from gateway.domain.trade import Chain
from gateway.engine import metrics
from gateway.engine.dispatcher import Dispatcher
from gateway.engine.executor import Executor
from gateway.engine.reconciler import Disagreement, Reconciler

log = structlog.get_logger("gateway.relayer")


@dataclass
class StepResult:
    inputs: int = 0
    batches: int = 0
    sent: int = 0


class ChainHalted(RuntimeError):
    pass


class Relayer:
    def __init__(self, session_factory: sessionmaker[Session], dispatcher: Dispatcher,
                 pollers: dict[Chain, ChainPoller], executor: Executor,
                 reconcile_every: int = 0) -> None:
        self.session_factory = session_factory
        self.dispatcher = dispatcher
        self.pollers = pollers
        self.executor = executor
        self.halted: dict[Chain, str] = {}
        self.locks = AdvisoryLocks(session_factory.kw["bind"])
        self.wake = threading.Event()  # set by nudge(): step now, not at the next interval
        self.reconciler = Reconciler(session_factory, dispatcher)
        self.reconcile_every = reconcile_every  # steps between reconciliations; 0: never
        self.steps = 0

    def nudge(self) -> None:
        """Something happened on a chain (a new block, `gateway.chain.heads`): the daemon
        steps at once instead of waiting out its poll interval."""
        self.wake.set()

    def poll(self) -> StepResult:
        """Apply every batch the chains have, up to their confirmed heads."""
        result = StepResult()
        for chain, poller in self.pollers.items():
            if chain in self.halted:
                continue
            with self.locks.hold(poll_lock(poller.client.chain_id)) as held:
                if held:
                    self._poll_chain(chain, poller, result)
        return result

    def _poll_chain(self, chain: Chain, poller: ChainPoller, result: StepResult) -> None:
        while True:
            with self.session_factory() as session:
                repo = Repository(session)
                row = repo.cursor(poller.client.chain_id)
                cursor = (Cursor(row.block_number, bytes.fromhex(row.block_hash))
                          if row else None)
                recent = repo.recent_block_hashes(poller.client.chain_id)
            try:
                batch = poller.next_batch(cursor, recent)
            except DeepReorgError as exc:
                self.halted[chain] = str(exc)
                log.critical("chain_halted", chain=chain.value, reason=str(exc))
                break
            if batch is None:
                metrics.RELAYER_LAG.labels(chain.value).set(
                    max(0, poller.head() - (cursor.number if cursor else 0)))
                break
            if batch.rewind_to is not None:
                metrics.REORGS.labels(chain.value).inc()
            self.dispatcher.apply_chain_batch(batch)
            result.batches += 1
            result.inputs += len(batch.inputs)
            if batch.inputs:
                log.info("batch_applied", chain=chain.value, to_block=batch.block.number,
                         inputs=len(batch.inputs), rewound_to=batch.rewind_to)

    def execute(self) -> int:
        """Run the outbox of every chain whose execute lock this relayer gets."""
        sent = 0
        for chain, endpoint in self.executor.endpoints.items():
            with self.locks.hold(execute_lock(endpoint.chain_id)) as held:
                if held:
                    sent += self.executor.run_chain(chain)
        return sent

    def reconcile(self) -> list[Disagreement]:
        """Compare every open trade's legs with the contracts (`gateway.engine.reconciler`),
        chain by chain, each while holding that chain's poll lock: no batch of it is applied
        meanwhile, so its cursor and its legs are read as one. A failed read is logged and
        retried at the next run: it never stops the relayer."""
        found: list[Disagreement] = []
        for chain, poller in self.pollers.items():
            with self.locks.hold(poll_lock(poller.client.chain_id)) as held:
                if not held:
                    continue
                try:
                    found += self.reconciler.run_chain(chain, poller)
                except Exception as exc:  # noqa: BLE001 - a node or the database hiccup
                    log.error("reconcile_failed", chain=chain.value,
                              error=f"{type(exc).__name__}: {exc}"[:500])
        return found

    def step(self) -> StepResult:
        result = self.poll()
        self.steps += 1
        if self.reconcile_every and self.steps % self.reconcile_every == 0:
            self.reconcile()
        result.sent = self.execute()
        return result

    def run_until(self, done, max_steps: int = 50) -> int:  # noqa: ANN001
        """Step until `done()` holds; returns the steps taken. For tests and tools."""
        for steps in range(1, max_steps + 1):
            self.step()
            if done():
                return steps
        raise TimeoutError(f"condition not reached after {max_steps} relayer steps")

    def run_forever(self, stop: threading.Event, poll_interval: float) -> None:
        log.info("relayer_started", chains=[c.value for c in self.pollers],
                 poll_interval=poll_interval)
        threading.Thread(target=lambda: (stop.wait(), self.wake.set()), daemon=True,
                         name="relayer-stop").start()  # a stop ends the pause below too
        backoff = poll_interval
        while not stop.is_set():
            started = time.monotonic()
            self.wake.clear()  # what happens from here on is seen by this step or wakes the next
            if stop.is_set():  # (its wake may have just been cleared)
                break
            try:
                result = self.step()
                backoff = poll_interval
                if result.inputs or result.sent:
                    log.info("relayer_step", inputs=result.inputs, sent=result.sent)
            except Exception as exc:  # noqa: BLE001 - a node or the database is down: retry
                backoff = min(backoff * 2, 30.0)
                log.error("relayer_step_failed", error=f"{type(exc).__name__}: {exc}"[:500],
                          retry_in=backoff)
                stop.wait(backoff)
                continue
            self.wake.wait(max(0.0, poll_interval - (time.monotonic() - started)))
        log.info("relayer_stopped")
