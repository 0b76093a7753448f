"""The anvil part of `make bench` (`python bench/anvil_bench.py` alone): the gateway on two real
nodes (JSON-RPC over HTTP); prints JSON.

- settlements per second through the gateway, payment claims batched (`claimMany`, up to 50 a
  transaction) vs one `claim` per transaction: N trades proposed and accepted, both legs
  locked by the parties, the relayer verifying them, the buyer revealing every secret, until
  the relayer has every trade settled. `end_to_end` times all of it; `reveal_to_settled` only
  the relayer's part from the first secret revealed.
- latency from one secret revealed (the buyer's delivery claim mined) to the relayer's payment
  claim mined, the relayer stepping continuously.
The parties' transactions are signed locally and sent as JSON-RPC batches of 100 (anvil
automines each on arrival); the last receipt of every phase is awaited. The relayer sends its
own transactions one request each, as in production.
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

from e2e import AMOUNT, make_gateway, settled  # noqa: E402 - bench/ is the script's own folder

from gateway import logs  # noqa: E402
from gateway.chain.anvil import start_anvil_devnet  # noqa: E402
from gateway.chain.devnet import (  # noqa: E402
    BUYER,
    DEFAULT_BUSINESS_CHAIN_ID,
    DEFAULT_PAYMENT_CHAIN_ID,
    ISSUER,
    SELLER,
    Devnet,
)
from gateway.chain.htlc import GAS_DELIVERY_EXIT, GAS_DELIVERY_LOCK, GAS_LOCK  # noqa: E402
from gateway.domain.locks import DeliveryLock, hashlock_of  # noqa: E402
from gateway.domain.trade import ActionAcceptTrade, ActionProposeTrade, Terms  # noqa: E402
from gateway.engine.build import Gateway  # noqa: E402


class Parties:
    def __init__(self, devnet: Devnet, n: int) -> None:
        self.d = devnet
        self.buyer, self.seller = devnet.account(BUYER), devnet.account(SELLER)
        issuer = devnet.account(ISSUER)
        pay, biz = devnet.payment.client, devnet.business.client
        token, titles = devnet.payment_token, devnet.titles
        self._send(pay, [(self.buyer, token.address, token.encode_abi(
            "approve", [devnet.payment_htlc.address, 2**256 - 1]), 100_000)])
        self.docs = [hashlib.sha256(b"doc %d" % i).digest() for i in range(n)]
        first = titles.functions.issuedCount().call() + 1
        self._send(biz, [(self.seller, titles.address, titles.encode_abi(
            "setApprovalForAll", [devnet.delivery_htlc.address, True]), 100_000)] + [
            (issuer, titles.address, titles.encode_abi("issue", [self.seller.address, doc]),
             300_000) for doc in self.docs])
        start = max(devnet.payment.next_block_timestamp(), devnet.business.next_block_timestamp())
        self.secrets = [hashlib.sha256(b"secret %d" % i).digest() for i in range(n)]
        self.trade_ids = [hashlib.sha256(b"trade %d" % i).digest() for i in range(n)]
        self.terms = [Terms(self.buyer.address, self.seller.address, self.buyer.address,
                            self.seller.address, AMOUNT, first + i, self.docs[i],
                            hashlock_of(self.secrets[i]), start + 3_600, start + 7_200)
                      for i in range(n)]

    @staticmethod
    def _send(client, txs, chunk: int = 100) -> None:  # noqa: ANN001
        """Sign locally, send as JSON-RPC batches of `chunk` (in nonce order), then wait for
        the last one's receipt; every transaction must have been accepted."""
        raws = [client.sign(sender, to=to, data=data, gas=gas) for sender, to, data, gas in txs]
        provider = client.w3.provider
        for start in range(0, len(raws), chunk):
            responses = provider.make_batch_request(
                [("eth_sendRawTransaction", ["0x" + raw.hex()])
                 for raw in raws[start:start + chunk]])
            errors = [r["error"] for r in responses if "error" in r]
            assert not errors, errors[:3]
        if raws:
            assert client.wait(client.tx_hash(raws[-1])).succeeded

    def delivery_lock(self, i: int) -> DeliveryLock:
        t = self.terms[i]
        return DeliveryLock(self.seller.address, t.buyer_business, t.token_id, t.document_hash,
                            self.trade_ids[i], t.hashlock, t.t_deliver)

    def lock_payments(self, indices) -> None:  # noqa: ANN001
        htlc = self.d.payment_htlc.htlc
        self._send(self.d.payment.client, [(self.buyer, htlc.address, htlc.encode_abi(
            "lock", [t.seller_payment, t.amount, t.hashlock, t.t_pay]), GAS_LOCK)
            for t in (self.terms[i] for i in indices)])

    def lock_deliveries(self, indices) -> None:  # noqa: ANN001
        htlc = self.d.delivery_htlc.htlc
        self._send(self.d.business.client, [(self.seller, htlc.address, htlc.encode_abi(
            "lock", [t.buyer_business, t.token_id, t.document_hash, self.trade_ids[i],
                     t.hashlock, t.t_deliver]), GAS_DELIVERY_LOCK)
            for i, t in ((i, self.terms[i]) for i in indices)])

    def take_deliveries(self, indices) -> None:  # noqa: ANN001
        htlc = self.d.delivery_htlc.htlc
        self._send(self.d.business.client, [(self.buyer, htlc.address, htlc.encode_abi(
            "claim", [self.delivery_lock(i).as_tuple(), self.secrets[i]]), GAS_DELIVERY_EXIT)
            for i in indices])


def _devnet() -> Devnet:
    return start_anvil_devnet(DEFAULT_PAYMENT_CHAIN_ID, DEFAULT_BUSINESS_CHAIN_ID)


def _close(devnet: Devnet) -> None:
    devnet.payment.close()
    devnet.business.close()


def settle_run(n: int, max_batch: int) -> dict:
    devnet = _devnet()
    try:
        parties = Parties(devnet, n)
        with tempfile.TemporaryDirectory() as tmp:
            gw = make_gateway(devnet, tmp, max_batch)
            everything = range(n)
            started = time.perf_counter()
            for i in everything:
                gw.dispatcher.propose(ActionProposeTrade(parties.trade_ids[i], parties.terms[i]))
                gw.dispatcher.apply_action(ActionAcceptTrade(parties.trade_ids[i]))
            parties.lock_payments(everything)
            gw.relayer.step()
            parties.lock_deliveries(everything)
            gw.relayer.step()
            revealed = time.perf_counter()
            parties.take_deliveries(everything)
            gw.relayer.run_until(lambda: settled(gw, n), max_steps=200)
            done = time.perf_counter()
            claims = _payment_claim_transactions(gw)
            gw.engine.dispose()
        seller = devnet.payment_token.functions.balanceOf(parties.seller.address).call()
        assert seller >= n * AMOUNT
    finally:
        _close(devnet)
    return {"trades": n, "claim_transactions": claims,
            "end_to_end_s": round(done - started, 3),
            "end_to_end_settlements_per_s": round(n / (done - started), 1),
            "reveal_to_settled_s": round(done - revealed, 3),
            "reveal_to_settled_settlements_per_s": round(n / (done - revealed), 1)}


def _payment_claim_transactions(gw: Gateway) -> int:
    from sqlalchemy import func, select

    from gateway.db.models import AttemptRow

    with gw.session_factory() as session:
        return session.scalar(select(func.count()).select_from(AttemptRow).where(
            AttemptRow.chain_id == DEFAULT_PAYMENT_CHAIN_ID, AttemptRow.status == "mined")) or 0


def latency_run(m: int) -> list[float]:
    devnet = _devnet()
    try:
        parties = Parties(devnet, m)
        with tempfile.TemporaryDirectory() as tmp:
            gw = make_gateway(devnet, tmp, 50)
            for i in range(m):
                gw.dispatcher.propose(ActionProposeTrade(parties.trade_ids[i], parties.terms[i]))
                gw.dispatcher.apply_action(ActionAcceptTrade(parties.trade_ids[i]))
            parties.lock_payments(range(m))
            parties.lock_deliveries(range(m))
            gw.relayer.step()
            token, seller = devnet.payment_token, parties.seller.address
            latencies = []
            for i in range(m):
                before = token.functions.balanceOf(seller).call()
                parties.take_deliveries([i])
                revealed = time.perf_counter()
                while token.functions.balanceOf(seller).call() == before:
                    gw.relayer.step()
                latencies.append(time.perf_counter() - revealed)
            gw.engine.dispose()
    finally:
        _close(devnet)
    return latencies


def measure(n: int = 200, latency_samples: int = 30) -> dict:
    batched = settle_run(n, 50)
    single = settle_run(n, 1)
    lat = sorted(latency_run(latency_samples))
    p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
    return {
        "node": "anvil 1.7.1, two nodes on loopback, automine",
        "claim_many": batched,
        "one_claim_per_tx": single,
        "reveal_to_claim_mined_ms": {
            "samples": len(lat), "p50": round(1000 * statistics.median(lat), 1),
            "p99": round(1000 * p99, 1), "max": round(1000 * lat[-1], 1)},
        "target_settlements_per_s": 100,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trades", type=int, default=200)
    parser.add_argument("--latency-samples", type=int, default=30)
    args = parser.parse_args()
    logs.configure(json=True, level=40)
    print(json.dumps({"anvil": measure(args.trades, args.latency_samples)}, indent=2))


if __name__ == "__main__":
    main()
