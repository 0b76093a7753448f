"""End-to-end benchmark on the in-process chains; prints JSON.

Two runs of the same N trades, each on fresh chains, in one process:
- raw: the parties' transactions and the payment claims (claimMany, same batch size) sent
  directly, with nothing else: the bound the chains themselves set;
- gateway: the same transactions, with the relayer watching both chains, verifying the locks,
  and sending the payment claims itself, everything persisted in SQLite.
Settlements per second and the ratio of the two; then the latency from the secret being
revealed (the buyer's delivery claim mined) to the relayer's payment claim mined, per trade,
with the relayer polling continuously.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway import logs  # noqa: E402
from gateway.chain.devnet import BUYER, ISSUER, RELAYER, SELLER, Devnet, start_devnet  # noqa: E402
from gateway.domain.locks import hashlock_of  # noqa: E402
from gateway.domain.policy import TimingPolicy  # noqa: E402
from gateway.domain.trade import ActionAcceptTrade, ActionProposeTrade, Terms  # noqa: E402
from gateway.engine.build import Gateway, build_gateway  # noqa: E402

POLICY = TimingPolicy(payment_confirmations=0, business_confirmations=0, payment_block_time=1,
                      business_block_time=1, reaction_budget=30, drift_allowance=0)
AMOUNT = 1_000_00
BATCH = 50


class Parties:
    """The buyer, the seller and the carrier, with what they need set up."""

    def __init__(self, devnet: Devnet, n: int) -> None:
        self.d = devnet
        self.buyer, self.seller = devnet.account(BUYER), devnet.account(SELLER)
        issuer = devnet.account(ISSUER)
        pay, biz = devnet.payment.client, devnet.business.client
        assert pay.transact(self.buyer, to=devnet.payment_token.address, gas=100_000,
                            data=devnet.payment_token.encode_abi(
                                "approve", [devnet.payment_htlc.address, 2**256 - 1])).succeeded
        assert biz.transact(self.seller, to=devnet.titles.address, gas=100_000,
                            data=devnet.titles.encode_abi(
                                "setApprovalForAll", [devnet.delivery_htlc.address, True]))
        self.docs = []
        for i in range(n):
            doc = hashlib.sha256(b"doc %d" % i).digest()
            assert biz.transact(issuer, to=devnet.titles.address, gas=300_000,
                                data=devnet.titles.encode_abi("issue", [self.seller.address,
                                                                        doc])).succeeded
            self.docs.append(doc)
        start = max(devnet.payment.next_block_timestamp(), devnet.business.next_block_timestamp())
        self.terms = []
        for i in range(n):
            secret = hashlib.sha256(b"secret %d" % i).digest()
            t_deliver = start + 3_600
            self.terms.append((secret, Terms(self.buyer.address, self.seller.address,
                                             self.buyer.address, self.seller.address, AMOUNT,
                                             i + 1, self.docs[i], hashlock_of(secret), t_deliver,
                                             t_deliver + 3_600)))

    def trade_id(self, i: int) -> bytes:
        return hashlib.sha256(b"trade %d" % i).digest()

    def lock_payment(self, i: int):  # noqa: ANN201
        _, t = self.terms[i]
        receipt, lock = self.d.payment_htlc.lock(self.buyer, t.seller_payment, t.amount,
                                                 t.hashlock, t.t_pay)
        assert receipt.succeeded
        return lock

    def lock_delivery(self, i: int):  # noqa: ANN201
        _, t = self.terms[i]
        receipt, lock = self.d.delivery_htlc.lock(self.seller, t.buyer_business, t.token_id,
                                                  t.document_hash, self.trade_id(i), t.hashlock,
                                                  t.t_deliver)
        assert receipt.succeeded
        return lock

    def take_delivery(self, i: int, lock) -> float:  # noqa: ANN001
        receipt = self.d.delivery_htlc.claim(self.buyer, lock, self.terms[i][0])
        assert receipt.succeeded
        return time.perf_counter()


def raw_run(n: int) -> float:
    devnet = start_devnet()
    parties = Parties(devnet, n)
    relayer = devnet.account(RELAYER)
    started = time.perf_counter()
    pay_locks = [parties.lock_payment(i) for i in range(n)]
    dlv_locks = [parties.lock_delivery(i) for i in range(n)]
    for i in range(n):
        parties.take_delivery(i, dlv_locks[i])
    for start in range(0, n, BATCH):
        chunk = range(start, min(n, start + BATCH))
        receipt = devnet.payment_htlc.claim_many(relayer, [pay_locks[i] for i in chunk],
                                                 [parties.terms[i][0] for i in chunk])
        assert receipt.succeeded
    return time.perf_counter() - started


def make_gateway(devnet: Devnet, tmp: str, max_batch: int = BATCH,
                 database_url: str | None = None) -> Gateway:
    """The gateway the benchmarks measure (SQLite in `tmp` unless `database_url` is given);
    also bench/anvil_bench.py's."""
    return build_gateway(database_url=database_url or f"sqlite:///{Path(tmp) / 'bench.db'}",
                         payment=devnet.payment.client, business=devnet.business.client,
                         payment_htlc=devnet.info.payment.htlc,
                         delivery_htlc=devnet.info.business.htlc,
                         relayer_key=devnet.account(RELAYER), policy=POLICY,
                         max_batch=max_batch)


def settled(gw: Gateway, n: int) -> bool:
    return in_phase(gw, "settled") == n


def in_phase(gw: Gateway, phase: str) -> int:
    """How many trades the gateway's database shows in `phase`."""
    from sqlalchemy import func, select

    from gateway.db.models import TradeRow

    with gw.session_factory() as session:
        return session.scalar(select(func.count()).select_from(TradeRow).where(
            TradeRow.phase == phase)) or 0


def gateway_run(n: int, tmp: str) -> float:
    devnet = start_devnet()
    parties = Parties(devnet, n)
    gw = make_gateway(devnet, tmp)
    started = time.perf_counter()
    for i in range(n):
        gw.dispatcher.propose(ActionProposeTrade(parties.trade_id(i), parties.terms[i][1]))
        gw.dispatcher.apply_action(ActionAcceptTrade(parties.trade_id(i)))
    for i in range(n):
        parties.lock_payment(i)
    gw.relayer.step()
    dlv_locks = [parties.lock_delivery(i) for i in range(n)]
    gw.relayer.step()
    for i in range(n):
        parties.take_delivery(i, dlv_locks[i])
    gw.relayer.run_until(lambda: settled(gw, n), max_steps=20)
    elapsed = time.perf_counter() - started
    gw.engine.dispose()
    return elapsed


def latency_run(m: int, tmp: str) -> list[float]:
    devnet = start_devnet()
    parties = Parties(devnet, m)
    gw = make_gateway(devnet, tmp)
    for i in range(m):
        gw.dispatcher.propose(ActionProposeTrade(parties.trade_id(i), parties.terms[i][1]))
        gw.dispatcher.apply_action(ActionAcceptTrade(parties.trade_id(i)))
        parties.lock_payment(i)
    dlv_locks = [parties.lock_delivery(i) for i in range(m)]
    gw.relayer.step()
    latencies = []
    token, seller = devnet.payment_token, parties.seller.address
    for i in range(m):
        before = token.functions.balanceOf(seller).call()
        revealed = parties.take_delivery(i, dlv_locks[i])
        while token.functions.balanceOf(seller).call() == before:  # claim not mined yet
            gw.relayer.step()
        latencies.append(time.perf_counter() - revealed)
    gw.engine.dispose()
    return latencies


def measure(n: int = 100, latency_samples: int = 30, rounds: int = 2) -> dict:
    raws, gateways = [], []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            raws.append(raw_run(n))
            gateways.append(gateway_run(n, tmp))
    raw, gateway = min(raws), min(gateways)
    with tempfile.TemporaryDirectory() as tmp:
        lat = sorted(latency_run(latency_samples, tmp))
    p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
    return {
        "trades": n,
        "rounds": rounds,
        "transactions_per_trade": 3 + 1 / BATCH,
        "raw_chain": {"seconds": round(raw, 3), "settlements_per_s": round(n / raw, 1)},
        "gateway": {"seconds": round(gateway, 3), "settlements_per_s": round(n / gateway, 1)},
        "gateway_over_raw_time_ratio": round(gateway / raw, 3),
        "overhead_pct": round(100 * (gateway / raw - 1), 1),
        "overhead_aim_pct": 25,
        "reveal_to_claim_mined_ms": {
            "samples": len(lat), "p50": round(1000 * statistics.median(lat), 1),
            "p99": round(1000 * p99, 1), "max": round(1000 * lat[-1], 1)},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trades", type=int, default=100)
    parser.add_argument("--latency-samples", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2,
                        help="raw and gateway runs alternate this many times; the fastest of "
                             "each is kept (filters out noise from other processes)")
    args = parser.parse_args()
    logs.configure(json=True, level=40)
    result = measure(args.trades, args.latency_samples, args.rounds)
    print(json.dumps({"e2e_in_process": result}, indent=2))


if __name__ == "__main__":
    main()
