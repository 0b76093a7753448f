"""Relayer work per chain batch against a backlog of idle open trades; prints JSON.

Operators keep many trades open for hours (T_deliver is far ahead) while a few move. A chain
batch should cost what it concerns, not what is open: each batch's block goes only to the trades
it wakes (`gateway.domain.trade.wake_times`) and to those its logs name. Measured on the
in-process chains with SQLite, the same run with no backlog and with one:
- `empty_batch_ms`: a relayer step that applies one new block with no logs of ours;
- `locks_batch_ms`: a relayer step that applies one batch of 50 blocks holding 50 payment locks
  (50 trades move to payment_locked), the buyer's transactions mined before the clock starts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from e2e import AMOUNT, make_gateway  # noqa: E402 - bench/ is the script's own folder

from gateway import logs  # noqa: E402
from gateway.chain.devnet import BUYER, SELLER, start_devnet  # noqa: E402
from gateway.chain.htlc import GAS_LOCK  # noqa: E402
from gateway.domain.locks import hashlock_of  # noqa: E402
from gateway.domain.trade import ActionAcceptTrade, ActionProposeTrade, Terms  # noqa: E402

BUSY = 50


def run(idle: int, repeats: int = 5) -> dict:
    devnet = start_devnet()
    buyer, seller = devnet.account(BUYER), devnet.account(SELLER)
    pay, token, htlc = devnet.payment.client, devnet.payment_token, devnet.payment_htlc
    assert pay.transact(buyer, to=token.address, gas=100_000, data=token.encode_abi(
        "approve", [htlc.address, 2**256 - 1])).succeeded
    start = max(devnet.payment.next_block_timestamp(), devnet.business.next_block_timestamp())
    with tempfile.TemporaryDirectory() as tmp:
        gw = make_gateway(devnet, tmp)
        terms = []
        for i in range(idle + BUSY):
            secret = hashlib.sha256(b"backlog secret %d" % i).digest()
            t = Terms(buyer.address, seller.address, buyer.address, seller.address, AMOUNT,
                      1_000_000 + i, hashlib.sha256(b"doc %d" % i).digest(),
                      hashlock_of(secret), start + 36_000, start + 72_000)
            trade_id = hashlib.sha256(b"backlog trade %d" % i).digest()
            gw.dispatcher.propose(ActionProposeTrade(trade_id, t))
            gw.dispatcher.apply_action(ActionAcceptTrade(trade_id))
            terms.append(t)
        gw.relayer.step()
        empty = []
        for _ in range(repeats):
            devnet.payment.mine()
            started = time.perf_counter()
            gw.relayer.step()
            empty.append(time.perf_counter() - started)
        for t in terms[idle:]:  # a block each: the step below applies them as one batch
            assert pay.transact(buyer, to=htlc.address, gas=GAS_LOCK, data=htlc.htlc.encode_abi(
                "lock", [t.seller_payment, t.amount, t.hashlock, t.t_pay])).succeeded
        started = time.perf_counter()
        gw.relayer.step()
        locks = time.perf_counter() - started
        from sqlalchemy import func, select

        from gateway.db.models import TradeRow

        with gw.session_factory() as session:
            moved = session.scalar(select(func.count()).select_from(TradeRow).where(
                TradeRow.phase == "payment_locked"))
        assert moved == BUSY, moved
        gw.engine.dispose()
    return {"idle_open_trades": idle, "empty_batch_ms": round(1000 * min(empty), 2),
            "locks_batch_ms": round(1000 * locks, 1)}


def measure(idle: int = 2_000) -> dict:
    without, backlog = run(0), run(idle)
    return {"busy_trades": BUSY, "no_backlog": without, "backlog": backlog,
            "locks_batch_backlog_over_none_ratio": round(
                backlog["locks_batch_ms"] / without["locks_batch_ms"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle", type=int, default=2_000)
    args = parser.parse_args()
    logs.configure(json=True, level=40)
    print(json.dumps({"backlog": measure(args.idle)}, indent=2))


if __name__ == "__main__":
    main()
