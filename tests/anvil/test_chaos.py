"""Chaos: many trades on two anvil nodes while relayer processes are SIGKILLed at random
moments and restarted. Every trade must end in its right phase with exact balances on both
chains, and no payment lock may be claimed twice.

Each kill lands wherever the relayer happens to be: between a recorded and a broadcast
transaction, inside a batch's database transaction, while polling. The random moments come
from a seed printed on failure, so a failing run can be replayed. On PostgreSQL
(`DVP_TEST_DATABASE_URL`) two relayers run side by side; on SQLite one at a time.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from eth_utils import keccak
from sqlalchemy import select

from gateway.chain.anvil import devnet_env
from gateway.chain.devnet import RELAYER
from gateway.db.models import AttemptRow, TradeRow
from tests.databases import create_database, drop_database, on_postgres
from tests.helpers import terminate
from tests.integration.harness import AMOUNT, World, make_gateway

TRADES = 120  # 6 chunks: six kills at random moments, each while the relayers work
NEVER_PERFORMED = 12  # the buyer never takes delivery: both legs are refunded
SEED = int(os.environ.get("DVP_CHAOS_SEED", time.time_ns() % 10**6))
CLAIMED_TOPIC = keccak(text="Claimed(bytes32,bytes32)")
MAX_KILLS = 25
CHUNK = 20  # trades the parties lock and perform between two kills


class Relayers:
    """`dvp-gateway relayer run` processes, killed with SIGKILL and restarted at random."""

    def __init__(self, env: dict[str, str], count: int, logs: Path, rng: random.Random) -> None:
        self.env, self.logs, self.rng = env, logs, rng
        self.procs: list[subprocess.Popen | None] = [None] * count
        self.started_at = [0] * count  # log offset of each process's own lines
        self.kills = 0
        self.error: BaseException | None = None
        self.killed = threading.Condition()
        self.stop = threading.Event()
        for n in range(count):
            self._start(n)

    def _start(self, n: int) -> None:
        with (self.logs / f"relayer-{n}.log").open("a") as log:
            self.started_at[n] = log.tell()
            self.procs[n] = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "relayer", "run", "--json-logs"],
                env=self.env, stdout=subprocess.DEVNULL, stderr=log)

    def wait_for_kills(self, count: int, timeout: float) -> None:
        with self.killed:
            assert self.killed.wait_for(lambda: self.kills >= count or self.error, timeout), \
                f"no kill in {timeout} s: " + self.tail(0)

    def up(self, n: int) -> bool:
        """Relayer `n` (its current process) has started working."""
        log = (self.logs / f"relayer-{n}.log").read_text()[self.started_at[n]:]
        return '"relayer_started"' in log

    def chaos(self) -> None:
        try:
            self._chaos()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def _chaos(self) -> None:
        """Kill a relayer at a random moment of its working life (never while it is still
        importing: that would test nothing and starve the run on a slow machine), restart it,
        and so on up to MAX_KILLS times."""
        while self.kills < MAX_KILLS and not self.stop.is_set():
            n = self.rng.randrange(len(self.procs))
            proc = self.procs[n]
            assert proc is not None
            while not self.up(n) and proc.poll() is None and not self.stop.wait(0.02):
                pass
            if self.stop.wait(self.rng.uniform(0.0, 1.2)):
                return
            if proc.poll() is not None:
                raise AssertionError(f"relayer {n} exited by itself ({proc.returncode}): "
                                     + self.tail(n))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            with self.killed:
                self.kills += 1
                self.killed.notify_all()
            self._start(n)

    def tail(self, n: int) -> str:
        return (self.logs / f"relayer-{n}.log").read_text()[-3000:]

    def shutdown(self) -> list[int | None]:
        """SIGTERM each relayer once it is up (one killed and restarted an instant ago may
        still be importing, before it handles signals), and collect the exit codes."""
        self.stop.set()
        codes = []
        for n, proc in enumerate(self.procs):
            deadline = time.monotonic() + 30
            while proc is not None and proc.poll() is None and time.monotonic() < deadline \
                    and not self.up(n):
                time.sleep(0.05)
            if proc is not None and proc.poll() is None:
                terminate(proc)
            codes.append(proc.returncode if proc else None)
        return codes


def _wait_for(predicate, what: str, timeout: float, relayers: Relayers) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, \
            f"{what} not reached in {timeout} s (seed {SEED}, {relayers.kills} kills)\n" + \
            relayers.tail(0)
        time.sleep(0.2)


def test_relayers_killed_at_random_settle_every_trade_exactly_once(anvil_devnet,
                                                                     tmp_path) -> None:
    net = anvil_devnet
    rng = random.Random(SEED)
    database_url = create_database(tmp_path, "chaos")
    world = World(net, make_gateway(net, database_url))
    env = {**os.environ, **dict(line.split("=", 1)
                                for line in devnet_env(net, net.account(RELAYER).key, None)),
           "DVP_DATABASE_URL": database_url, "DVP_POLL_INTERVAL": "0.05",
           "DVP_REACTION_BUDGET": "30", "DVP_DRIFT_ALLOWANCE": "0"}
    buyer, seller = world.buyer.address, world.seller.address
    before = {a: world.token_balance(a) for a in (buyer, seller)}

    trades = [world.agree() for _ in range(TRADES)]
    relayers = Relayers(env, 2 if on_postgres() else 1, tmp_path, rng)
    killer = threading.Thread(target=relayers.chaos, name="chaos", daemon=True)
    killer.start()
    try:
        # The parties act on chain in chunks, and each chunk waits for one more kill: the
        # relayers are killed while they work, however fast a machine settles everything.
        performed, idle = trades[NEVER_PERFORMED:], trades[:NEVER_PERFORMED]
        for start in range(0, TRADES, CHUNK):
            chunk = trades[start:start + CHUNK]
            for trade in chunk:
                world.lock_payment(trade)
                world.lock_delivery(trade)
            for trade in chunk:
                if trade in performed:
                    world.take_delivery(trade)
            relayers.wait_for_kills(min(relayers.kills + 1, MAX_KILLS), timeout=60)

        def phases() -> Counter:
            with world.gateway.session_factory() as session:
                return Counter(session.scalars(select(TradeRow.phase)))

        _wait_for(lambda: phases()["settled"] == len(performed), "every performed trade "
                  "settled", 240, relayers)
        # Chain time passes both deadlines of the idle trades: both legs come back.
        for chain in (net.business, net.payment):
            chain.increase_time(trades[0].terms.t_pay - chain.latest_block_timestamp() + 1)
            chain.mine()
        # A trade shows `payment_refunded` once its payment refund is seen, which can be
        # before its title's refund is (a relayer killed between the two): wait for the
        # chain to hold every title back with the seller too.
        _wait_for(lambda: phases() == Counter(settled=len(performed),
                                              payment_refunded=len(idle))
                  and all(world.title_owner(trade) == seller for trade in idle),
                  "the idle trades refunded, titles included", 240, relayers)
    finally:
        relayers.stop.set()
        killer.join(30)  # no kill races the shutdown below (it saw a relayer SIGKILLed once)
        codes = relayers.shutdown()
    assert relayers.error is None, relayers.error
    assert relayers.kills >= min(TRADES // CHUNK, MAX_KILLS), relayers.kills
    assert all(code == 0 for code in codes), (codes, relayers.tail(0))

    # Money: the buyer paid exactly the performed trades, once each; nothing is left locked.
    paid = AMOUNT * len(performed)
    assert world.token_balance(buyer) == before[buyer] - paid
    assert world.token_balance(seller) == before[seller] + paid
    assert world.token_balance(net.payment_htlc.address) == 0
    for trade in performed:
        assert world.title_owner(trade) == buyer
    for trade in idle:
        assert world.title_owner(trade) == seller
    # No payment lock was claimed twice: one Claimed log per performed trade's lock.
    logs = net.payment.w3.eth.get_logs({"fromBlock": 0, "toBlock": "latest",
                                        "address": net.payment_htlc.address,
                                        "topics": [CLAIMED_TOPIC]})
    claimed = Counter(bytes(log["topics"][1]) for log in logs)
    assert len(claimed) == len(performed) and set(claimed.values()) == {1}
    # Every signed relayer transaction was mined, replaced or superseded: none left unsettled
    # that a later run could still send.
    with world.gateway.session_factory() as session:
        statuses = Counter(session.scalars(select(AttemptRow.status)))
    assert statuses["reverted"] == 0, statuses
    drop_database(database_url)
