"""Dirty chain: trades settled by relayer processes while one killer thread SIGKILLs the
relayers AND crashes the anvil nodes (SIGKILL, restart from their `--state` file), so that
both chains come back shorter than what the relayer had seen and acted on.

Per chunk of trades the parties lock both legs; both nodes then write their state files
(SIGTERM restart: every lock is in them, no claim yet); the buyer takes delivery and the relayer
claims the payments. The payment node is SIGKILLed, at a random moment of the relayer's
claims or once the chunk is settled (its restart loses the relayer's claims mined since the
state file: they must be mined again, once); once the chunk is settled the business node is
SIGKILLed (its restart loses the buyer's claims of the titles: the relayer, which knows the
secrets, must claim each title for the buyer). In two random chunks, and while the idle
trades are refunded, a relayer process is SIGKILLed at a random moment of its work and
replaced at once by one that did its imports ahead (`Standbys`), as a supervisor restarts a
service. Random choices come from a seed printed on failure (`DVP_CHAOS_SEED` replays them).

At the end every trade is in its final phase with exact balances on both chains, and every
PaymentHTLC and DeliveryHTLC log of the whole chains (eth_getLogs, decoded by
`decode_htlc_log`) is checked: one `Locked` per lock, exactly one `Claimed` per performed
trade's lock (with the trade's secret), one `Refunded` per idle trade's lock, never both. No
relayer transaction reverted (the receipt of every recorded attempt), every attempt recorded
as mined is on the chain as it is, and no relayer ever halted a chain (no node comes back
more than a chunk's blocks short, well within DVP_MAX_REORG_DEPTH).

Nodes are restarted on the killer thread only while the test's parties wait, so the parties
never lose a transaction of theirs but the buyer's claims that the test means to lose; waits
are on chain and database state. No node is crashed after the final time jump: anvil does not
keep an `evm_increaseTime` offset in its state file, so a node restarted after one mines
blocks back in time.
"""
from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gateway.chain.anvil import AnvilChain, devnet_env
from gateway.chain.devnet import RELAYER
from gateway.chain.htlc import STATUS_NAMES, decode_htlc_log
from gateway.db.models import AttemptRow, OutboxRow
from gateway.domain.locks import DeliveryLocked, LockClaimed, LockRefunded, PaymentLocked
from tests.anvil.test_chaos import Relayers
from tests.databases import create_database, drop_database, on_postgres
from tests.helpers import terminate
from tests.integration.harness import AMOUNT, Trade, World, make_gateway

CHUNKS = 4
CHUNK = 6  # trades per chunk; the first IDLE of each are never performed (both legs refunded)
IDLE = 1
# Chunks in which a relayer is SIGKILLed while it claims (and once more while it refunds); each
# kill costs the run a relayer's startup, seconds on a loaded machine.
KILLED_CHUNKS = 2
# A restarted node is at most a chunk's claims short; the relayer must rewind, not halt.
REORG_DEPTH = 32
SETTLE_TIMEOUT = 60.0
SEED = int(os.environ.get("DVP_CHAOS_SEED", time.time_ns() % 10**6))
# A relayer process waiting to be started, as a supervisor would start one at once: its imports
# (seconds of CPU, many more on a loaded machine) are done ahead; it runs `dvp-gateway relayer
# run --json-logs` with the environment it then reads from stdin (one JSON line; EOF: exit).
# It creates the file named by its argument once its imports are done.
STANDBY = """
import json, os, sys
import alembic.command, gateway.cli, gateway.chain.heads, gateway.chain.verify
import gateway.engine.build, gateway.engine.webhooks, websockets.sync.client
open(sys.argv[1], "w").close()
line = sys.stdin.readline()
if not line.strip():
    sys.exit(0)
os.environ.update(json.loads(line))
sys.argv = ["dvp-gateway", "relayer", "run", "--json-logs"]
gateway.cli.main()
"""
# A relayer started while a node is down refuses to start (exit 2, "unreachable") or dies in
# its startup checks: a supervisor starts it again. Any other exit is a failure.
STARTUP_REFUSALS = ("unreachable", "onnection")


class Standbys:
    """Relayer processes importing ahead of need, `depth` per relayer slot (each slot's
    processes write to its log file), one importing at a time (the others' imports would slow
    the relayer at work on a loaded machine); any left at the end get EOF and exit."""

    def __init__(self, logs: Path, count: int, depth: int = 2) -> None:
        self.logs = logs
        self.depth = depth
        self.spawned = 0
        self.waiting: list[list[tuple[subprocess.Popen, Path]]] = [[] for _ in range(count)]
        for n in range(count):
            self._spawn(n)

    def _spawn(self, n: int) -> None:
        self.spawned += 1
        ready = self.logs / f"standby-{self.spawned}.ready"
        with (self.logs / f"relayer-{n}.log").open("a") as log:
            self.waiting[n].append((subprocess.Popen(
                [sys.executable, "-c", STANDBY, str(ready)], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=log, text=True), ready))

    def tick(self) -> None:
        """Start importing one more process if none is importing and a slot is short."""
        if any(proc.poll() is None and not ready.exists()
               for waiting in self.waiting for proc, ready in waiting):
            return
        for n, waiting in enumerate(self.waiting):
            if len(waiting) < self.depth:
                self._spawn(n)
                return

    def take(self, n: int) -> subprocess.Popen:
        """The oldest waiting process of slot `n` (started now if there is none)."""
        if not self.waiting[n]:
            self._spawn(n)
        return self.waiting[n].pop(0)[0]

    def close(self) -> None:
        """EOF to each waiting process; one still importing is SIGKILLed (by its pid)."""
        procs = [proc for waiting in self.waiting for proc, _ in waiting]
        for proc, ready in (item for waiting in self.waiting for item in waiting):
            if not ready.exists():
                proc.kill()
            try:
                proc.stdin.close()  # type: ignore[union-attr]
            except BrokenPipeError:
                pass
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                terminate(proc)


@pytest.fixture
def standbys(tmp_path):  # noqa: ANN001, ANN201
    """Requested before the nodes: the relayers import while the nodes start and deploy."""
    pool = Standbys(tmp_path, 2 if on_postgres() else 1)
    yield pool
    pool.close()


class DirtyChain(Relayers):
    """Relayer processes and both nodes, under one killer thread (`chaos`). The relayers are
    SIGKILLed at random moments; the nodes are restarted when the test asks (`node`), on the
    killer thread too, which therefore outlives every read of the chains: anvil nodes die with
    the thread that started them (parent-death signal)."""

    def __init__(self, env: dict[str, str], standbys: Standbys, rng: random.Random,
                 chains: dict[str, AnvilChain]) -> None:
        self.standbys = standbys
        self.chains = chains
        self.jobs: queue.Queue = queue.Queue()
        self.dumped: dict[str, tuple[int, bytes]] = {}  # chain -> head in its state file
        self.lost: dict[str, list[int]] = {name: [] for name in chains}  # blocks per crash
        self.faults: list[str] = []  # what happened when, for failure messages
        self.started = time.monotonic()
        self.refusals = 0
        self.allowed = 0  # relayer kills the test has asked for so far
        self.loop_done = threading.Event()
        self.released = threading.Event()  # the thread may end (and the nodes with it)
        super().__init__(env, len(standbys.waiting), standbys.logs, rng)

    # --- relayer processes ----------------------------------------------------------------

    def _start(self, n: int) -> None:
        """Relayer `n` runs from now (a waiting process of its slot, given its settings)."""
        proc = self.standbys.take(n)
        self.started_at[n] = (self.logs / f"relayer-{n}.log").stat().st_size
        assert proc.stdin is not None
        try:
            proc.stdin.write(json.dumps(self.env) + "\n")
            proc.stdin.close()
        except BrokenPipeError:  # it died while waiting: seen as an exit by `_check_exited`
            pass
        self.procs[n] = proc

    # --- the killer thread ----------------------------------------------------------------

    def chaos(self) -> None:
        try:
            self._chaos()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.loop_done.set()
            self._fail_jobs()
            self.released.wait()

    def _chaos(self) -> None:
        """Kill a random relayer at a random moment of its working life (never while it is
        still importing), restart it, as many times as the test allows (`kill`: a relayer
        killed again and again before its first step would never settle anything on a slow
        machine); serve the node faults the test asks for meanwhile."""
        while not self.stop.is_set():
            if self.allowed <= self.kills:
                self._serve(0.05)
                for n in range(len(self.procs)):
                    self._check_exited(n)
                continue
            n = self.rng.randrange(len(self.procs))
            while not self.stop.is_set() and not self.up(n):
                self._serve(0.05)
                self._check_exited(n)
            deadline = time.monotonic() + self.rng.uniform(0.1, 1.5)
            while not self.stop.is_set() and (left := deadline - time.monotonic()) > 0:
                self._serve(left)
            if self.stop.is_set():
                return
            if self._check_exited(n) or not self.up(n):
                continue
            proc = self.procs[n]
            assert proc is not None
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            with self.killed:
                self.kills += 1
                self.killed.notify_all()
            self.note(f"relayer {n} SIGKILLed")
            self._start(n)
            # No node fault while it starts (it would refuse to start: another restart).
            while not self.stop.is_set() and not self.up(n):
                self._check_exited(n)
                self.stop.wait(0.05)
            self.note(f"relayer {n} up again")

    def note(self, what: str) -> None:
        self.faults.append(f"{time.monotonic() - self.started:.1f}s {what}")

    def kill(self) -> None:
        """One more relayer SIGKILL, at a random moment from now; wait until it is done."""
        self.allowed += 1
        self.wait_for_kills(self.allowed, timeout=SETTLE_TIMEOUT)

    def _check_exited(self, n: int) -> bool:
        """Relayer `n` exited by itself: started again if it was a startup refusal while a
        node was down, a failure otherwise."""
        proc = self.procs[n]
        assert proc is not None
        if proc.poll() is None:
            return False
        log = (self.logs / f"relayer-{n}.log").read_text()[self.started_at[n]:]
        if self.up(n) or not any(word in log for word in STARTUP_REFUSALS):
            raise AssertionError(f"relayer {n} exited by itself ({proc.returncode}): "
                                 + self.tail(n))
        self.refusals += 1
        self._start(n)
        return True

    def _serve(self, timeout: float) -> None:
        self.standbys.tick()
        try:
            job, done = self.jobs.get(timeout=timeout)
        except queue.Empty:
            return
        try:
            done.put(job())
        except BaseException as exc:  # noqa: BLE001 - raised in the test's thread
            done.put(exc)

    def _fail_jobs(self) -> None:
        while True:
            try:
                _, done = self.jobs.get_nowait()
            except queue.Empty:
                return
            done.put(AssertionError(f"killer thread stopped: {self.error!r}"))

    # --- node faults (run on the killer thread) -------------------------------------------

    def node(self, name: str, *, crash: bool, after: float = 0.0) -> int:
        """Restart node `name` on the killer thread and wait for it: SIGTERM (it writes its
        state file) or, with `crash`, SIGKILL `after` seconds from now (it comes back from its
        last state file: returns the blocks it lost)."""
        done: queue.Queue = queue.Queue(1)
        job = (lambda: self._crash(name, after)) if crash else (lambda: self._dump(name))
        self.jobs.put((job, done))
        while True:
            try:
                result = done.get(timeout=0.2)
            except queue.Empty:
                if self.loop_done.is_set():
                    self._fail_jobs()
                continue
            if isinstance(result, BaseException):
                raise result
            return result

    def _dump(self, name: str) -> int:
        chain = self.chains[name]
        head = chain.w3.eth.block_number
        chain.node.stop(remove=False)  # SIGTERM: anvil writes its state file
        chain.node.start()
        back = _state_file_head(chain)  # the relayer may have mined a block since `head`
        assert back >= head, f"{name} node came back at {back} after a clean stop above {head}"
        self.dumped[name] = (back, bytes(chain.w3.eth.get_block(back)["hash"]))
        self.note(f"{name} node: state written at block {back}")
        return 0

    def _crash(self, name: str, after: float) -> int:
        chain = self.chains[name]
        self.stop.wait(after)
        head = chain.w3.eth.block_number
        chain.node.stop(remove=False, kill=True)  # SIGKILL: nothing is written
        chain.node.start()
        chain.forget_nonces()  # the parties' cached nonces may be ahead of the chain now
        back = _state_file_head(chain)
        dumped, dumped_hash = self.dumped[name]
        assert back == dumped and bytes(chain.w3.eth.get_block(back)["hash"]) == dumped_hash, \
            f"{name} node came back at {back}, not at its state file's block {dumped}"
        self.lost[name].append(head - back)
        self.note(f"{name} node: SIGKILLed at block {head}, came back at {back}")
        return head - back

    # --- waiting and reporting --------------------------------------------------------------

    def _lines(self, *words: str) -> list[str]:
        return [line for n in range(len(self.procs))
                for line in (self.logs / f"relayer-{n}.log").read_text().splitlines()
                if any(word in line for word in words)]

    def report(self) -> str:
        alerts = self._lines('"critical"', "tx_reverted")
        return (f"seed {SEED} (DVP_CHAOS_SEED), {self.kills} relayer kills, {self.refusals} "
                f"startup refusals; timeline: {self.faults}\nrelayer alerts (last 10 of "
                f"{len(alerts)}): {alerts[-10:]}\nrelayer 0 log tail:\n{self.tail(0)}")

    def wait_for(self, predicate, what: str, timeout: float = SETTLE_TIMEOUT) -> None:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        polls = 0
        while not predicate():
            assert self.error is None, f"killer thread failed: {self.error!r}\n{self.report()}"
            polls += 1
            if polls % 10 == 0:
                # Every crash here leaves the chain at most a chunk's blocks short, well
                # within DVP_MAX_REORG_DEPTH: a relayer that halts a chain is a gateway bug
                # (it then never settles what that chain holds).
                halted = self._lines('"chain_halted"')
                assert not halted, (
                    f"{what}: a relayer halted a chain although no node came back more than "
                    f"{max(max(lost, default=0) for lost in self.lost.values())} blocks short "
                    f"(DVP_MAX_REORG_DEPTH={REORG_DEPTH}): {halted}\n{self.report()}")
            assert time.monotonic() < deadline, \
                f"{what}: not reached in {timeout} s\n{self.report()}"
            time.sleep(0.1)


def _state_file_head(chain: AnvilChain) -> int:
    """The head a restarted node loaded from its state file (a relayer may already have mined
    a block on top of it)."""
    return json.loads(chain.node.state_path.read_text())["best_block_number"]


def _htlc_events(chain: AnvilChain, address: str) -> list[tuple[object, int, bytes]]:
    """Every log of the contract on the whole chain, decoded: (event, block, tx hash)."""
    head = chain.w3.eth.block_number
    found = chain.client.get_logs(0, head, address)
    assert not [f for f in found if f.removed]
    events = [(decode_htlc_log(f.log, chain.chain_id), f.block_number, f.tx_hash)
              for f in found]
    assert all(event is not None for event, _, _ in events), events
    return events


def _check_htlc_logs(name: str, events: list, locks: dict[bytes, Trade],
                     performed: set[bytes], idle: set[bytes], locked_type: type) -> None:
    """One Locked per lock; exactly one Claimed (with the trade's secret) per performed lock
    and none for an idle one; exactly one Refunded per idle lock and none for a claimed one."""
    def where(lock_id: bytes, kind: type) -> list[str]:
        return [f"block {block} tx 0x{tx.hex()}" for event, block, tx in events
                if isinstance(event, kind) and event.lock_id == lock_id]

    locked = Counter(e.lock_id for e, _, _ in events if isinstance(e, locked_type))
    claimed = Counter(e.lock_id for e, _, _ in events if isinstance(e, LockClaimed))
    refunded = Counter(e.lock_id for e, _, _ in events if isinstance(e, LockRefunded))
    assert locked == Counter(locks.keys()), \
        f"{name}: Locked logs per lock {({i.hex(): n for i, n in locked.items()})}, " \
        f"expected one for each of {[i.hex() for i in locks]}"
    twice = {i.hex(): where(i, LockClaimed) for i, count in claimed.items() if count > 1}
    assert not twice, f"{name}: locks claimed more than once: {twice}"
    both = {i.hex(): (where(i, LockClaimed), where(i, LockRefunded))
            for i in set(claimed) & set(refunded)}
    assert not both, f"{name}: locks both claimed and refunded: {both}"
    assert set(claimed) == performed, \
        f"{name}: claimed {len(claimed)} locks, {len(performed)} performed; unclaimed: " \
        f"{[i.hex() for i in performed - set(claimed)]}, unexpected: " \
        f"{[i.hex() for i in set(claimed) - performed]}"
    assert set(refunded) == idle and set(refunded.values()) <= {1}, \
        f"{name}: refunded {dict(refunded)}, idle {[i.hex() for i in idle]}"
    for event, _, _ in events:
        if isinstance(event, LockClaimed):
            assert event.preimage == locks[event.lock_id].secret, name


def test_dirty_chain_nodes_and_relayers_killed_every_lock_claimed_exactly_once(
        standbys, stateful_anvil_devnet, tmp_path) -> None:
    net = stateful_anvil_devnet
    rng = random.Random(SEED)
    database_url = create_database(tmp_path, "dirty")
    world = World(net, make_gateway(net, database_url))
    env = {**dict(line.split("=", 1) for line in devnet_env(net, net.account(RELAYER).key, None)),
           "DVP_DATABASE_URL": database_url, "DVP_POLL_INTERVAL": "0.05",
           "DVP_REACTION_BUDGET": "30", "DVP_DRIFT_ALLOWANCE": "0",
           # Nodes come back short: a fork the relayer rewinds, within this depth.
           "DVP_MAX_REORG_DEPTH": str(REORG_DEPTH)}
    buyer, seller = world.buyer.address, world.seller.address
    before = {a: world.token_balance(a) for a in (buyer, seller)}
    dirty = DirtyChain(env, standbys, rng, {"payment": net.payment, "business": net.business})
    killer = threading.Thread(target=dirty.chaos, name="dirty-chain", daemon=True)
    killer.start()
    performed: list[Trade] = []
    idle: list[Trade] = []

    def settled(trades: list[Trade]) -> bool:
        return all(world.phase(trade) == "settled" for trade in trades)

    def settled_on_chain(trades: list[Trade]) -> bool:
        """Settled by the chains, not only by the database (which says so until the relayer
        sees that a node came back without the claims): each title is the buyer's and each
        payment lock claimed."""
        return all(world.title_owner(trade) == buyer and
                   net.payment_htlc.status(net.payment_htlc.lock_id(trade.payment_lock)) ==
                   STATUS_NAMES.index("claimed") for trade in trades) and settled(trades)

    killed_chunks = set(rng.sample(range(CHUNKS), KILLED_CHUNKS))
    try:
        try:
            for number in range(CHUNKS):
                dirty.note(f"chunk {number}")
                chunk = [world.agree() for _ in range(CHUNK)]
                for trade in chunk:
                    world.lock_payment(trade)
                    world.lock_delivery(trade)
                idle += chunk[:IDLE]
                performed += chunk[IDLE:]
                # Both state files now hold every lock and no claim of this chunk.
                for name in rng.sample(["payment", "business"], 2):
                    dirty.node(name, crash=False)
                for trade in chunk[IDLE:]:
                    world.take_delivery(trade)
                if number in killed_chunks:
                    dirty.kill()  # while the relayer claims
                # The payment node dies at a random moment of the relayer's claims (the first
                # time once they are all mined: they are lost for sure).
                payment_early = number > 0 and rng.random() < 0.5
                if payment_early:
                    dirty.node("payment", crash=True, after=rng.uniform(0.0, 1.0))
                dirty.wait_for(lambda c=chunk[IDLE:]: settled(c), f"chunk {number} settled")
                # The relayer has every secret of the chunk: the business node may lose the
                # buyer's claims of the titles.
                crashes = ["business"] if payment_early else rng.sample(["payment",
                                                                         "business"], 2)
                for name in crashes:
                    dirty.node(name, crash=True)
            # Before chain time passes T_deliver, the relayer must have claimed every title
            # the business node lost.
            dirty.wait_for(lambda: settled_on_chain(performed),
                           "every performed trade settled again on both chains")
            dirty.note("every performed trade settled on both chains")

            # Chain time passes both deadlines of the idle trades: both legs come back.
            t_pay = max(trade.terms.t_pay for trade in idle)
            for chain in (net.business, net.payment):
                chain.increase_time(t_pay - chain.latest_block_timestamp() + 1)
                chain.mine()
            dirty.kill()  # while the relayer refunds

            def nothing_in_flight() -> bool:
                """The relayer has nothing left to send (a trade's phase can be final while an
                effect of it is still to go out: the title's refund after the payment's) and
                has recorded what became of every transaction it sent (a trade settles on the
                claim's log, a pass before its receipt is recorded)."""
                with world.gateway.session_factory() as session:
                    return not session.scalar(select(func.count()).select_from(OutboxRow)
                                              .where(OutboxRow.status == "pending")) \
                        and not session.scalar(select(func.count()).select_from(AttemptRow)
                                               .where(AttemptRow.status.in_(("signed",
                                                                             "sent"))))
            dirty.wait_for(lambda: settled(performed) and all(
                world.phase(trade) == "payment_refunded" for trade in idle)
                and nothing_in_flight(), "the idle trades refunded, nothing in flight")
        finally:
            dirty.stop.set()
            dirty.loop_done.wait(30)  # no kill races the shutdown below
            codes = dirty.shutdown()
            timeline = dirty.report().split("\nrelayer 0 log tail")[0]
            print(timeline)  # what the run did (pytest -s)
        assert dirty.error is None, f"{dirty.error!r}\n{dirty.report()}"
        assert all(code == 0 for code in codes), (codes, dirty.report())
        halted = dirty._lines('"chain_halted"')
        assert not halted, f"a relayer halted a chain (no node came back more than " \
            f"{REORG_DEPTH} blocks short): {halted}\n{timeline}"
        # The run did what it says: relayers killed, both nodes back short, every buyer's
        # claim of a title lost once and made again by the relayer.
        assert dirty.kills == KILLED_CHUNKS + 1, dirty.report()
        assert sum(dirty.lost["payment"]) >= 1, dirty.report()
        assert sum(dirty.lost["business"]) >= len(performed), dirty.report()

        # Money and titles: the buyer paid exactly the performed trades, once each.
        paid = AMOUNT * len(performed)
        assert world.token_balance(buyer) == before[buyer] - paid, dirty.report()
        assert world.token_balance(seller) == before[seller] + paid, dirty.report()
        assert world.token_balance(net.payment_htlc.address) == 0
        for trade in performed:
            assert world.title_owner(trade) == buyer, dirty.report()
        for trade in idle:
            assert world.title_owner(trade) == seller, dirty.report()
        assert net.titles.functions.balanceOf(net.delivery_htlc.address).call() == 0

        # Every log of both HTLCs over the whole chains.
        for name, chain, htlc, lock_of, locked_type in (
                ("PaymentHTLC", net.payment, net.payment_htlc,
                 lambda t: t.payment_lock, PaymentLocked),
                ("DeliveryHTLC", net.business, net.delivery_htlc,
                 lambda t: t.delivery_lock, DeliveryLocked)):
            locks = {htlc.lock_id(lock_of(t)): t for t in performed + idle}
            _check_htlc_logs(name, _htlc_events(chain, htlc.address), locks,
                             {htlc.lock_id(lock_of(t)) for t in performed},
                             {htlc.lock_id(lock_of(t)) for t in idle}, locked_type)

        # No relayer transaction reverted: the receipt of every recorded attempt that is on
        # chain says success; none is left in flight, nor in a node's pool.
        with world.gateway.session_factory() as session:
            attempts = list(session.scalars(select(AttemptRow).order_by(AttemptRow.id)))
        by_id = {net.payment.chain_id: net.payment, net.business.chain_id: net.business}
        receipts = {a.id: by_id[a.chain_id].client.receipt(bytes.fromhex(a.tx_hash))
                    for a in attempts}

        def describe(a: AttemptRow) -> str:
            receipt = receipts[a.id]
            return (f"attempt {a.id} 0x{a.tx_hash} chain {a.chain_id} nonce {a.nonce} "
                    f"recorded {a.status} at block {a.block_number}, on chain: "
                    + (f"block {receipt.block_number} status {receipt.status}" if receipt
                       else "no"))

        reverted = [describe(a) for a in attempts if a.status == "reverted" or
                    (receipts[a.id] is not None and not receipts[a.id].succeeded)]
        assert not reverted, f"relayer transactions reverted: {reverted}\n{dirty.report()}"
        in_flight = [describe(a) for a in attempts if a.status in ("signed", "sent")]
        assert not in_flight, f"relayer transactions left in flight: {in_flight}"
        for chain in (net.payment, net.business):
            assert chain.pending_transactions() == [], chain.name
        # Every attempt recorded as mined is mined on the chain as it is now. One the relayer
        # saw mined in a block that a node then came back without, and whose effects it then
        # sent in another transaction at the same nonce, stays "mined" in the database.
        orphaned = [a for a in attempts if a.status == "mined" and receipts[a.id] is None]
        assert not orphaned, (
            "gateway bug: relayer transactions recorded as mined are not on chain (their "
            "blocks were lost when a node came back short; the effects went out again in "
            "another transaction at the same nonce, and the old attempt was never marked "
            "dropped/replaced):\n" + "\n".join(
                describe(a) + "; on chain at that nonce: " + ", ".join(
                    describe(b) for b in attempts if b.chain_id == a.chain_id and
                    b.nonce == a.nonce and b.id != a.id) for a in orphaned) + "\n" + timeline)
    finally:
        dirty.released.set()
        killer.join(30)
    drop_database(database_url)
