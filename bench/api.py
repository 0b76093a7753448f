"""HTTP API benchmark: a real uvicorn server on loopback, a pool of threads each with its own
httpx client, a fixed concurrency; prints JSON.

Three workloads, one after the other, against the system `build_system` makes (in-process
chains, SQLite, the two demo enterprises; rate limit raised out of the way):
- create: POST /v1/trades, each with a new Idempotency-Key (a write: dispatcher, SQLite);
- get: GET /v1/trades/{id} of the trades just made (with their timeline);
- list: GET /v1/trades?limit=50 (a page of trades);
- batch create: POST /v1/trades/batch of BATCH_SIZE proposals each (one transaction per
  batch), reported also as trades per second.
Requests per second are completed requests over the workload's wall-clock time; latencies
are per request, from send to the last byte, in milliseconds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway import logs  # noqa: E402
from gateway.api.context import Limits  # noqa: E402
from gateway.config import Settings  # noqa: E402
from gateway.runner import System, build_system  # noqa: E402
from tests.e2e.test_api_server import serve  # noqa: E402

CONCURRENCY = 8
REQUESTS = 400  # per workload
WARMUP = 20
BATCH_SIZE = 100  # proposals per batch request (DVP_BATCH_MAX's default)
BATCHES = 20  # batch requests in the batch workload


def _summary(latencies: list[float], wall: float, errors: int) -> dict:
    ordered = sorted(latencies)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"requests": len(latencies), "errors": errors,
            "rps": round(len(latencies) / wall, 1),
            "p50_ms": round(cuts[49] * 1000, 2), "p99_ms": round(cuts[98] * 1000, 2),
            "max_ms": round(ordered[-1] * 1000, 2)}


def _run(pool: ThreadPoolExecutor, client: Callable[[], httpx.Client], n: int,
         request: Callable[[httpx.Client, int], httpx.Response], ok: int) -> tuple[dict, list]:
    def one(i: int) -> tuple[float, httpx.Response]:
        http = client()
        started = time.perf_counter()
        response = request(http, i)
        return time.perf_counter() - started, response

    started = time.perf_counter()
    results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - started
    errors = sum(1 for _, r in results if r.status_code != ok)
    return _summary([t for t, _ in results], wall, errors), [r for _, r in results]


def measure(concurrency: int = CONCURRENCY, requests: int = REQUESTS,
            workdir: Path | None = None) -> dict:
    """Run the three workloads; returns their numbers."""
    with tempfile.TemporaryDirectory(prefix="dvp-bench-api-") as tmp:
        system = build_system(Settings(_env_file=None), (workdir or Path(tmp)) / "run",
                              limits=Limits(rate_per_second=1e9, burst=10**9))
        try:
            return _measure(system, concurrency, requests)
        finally:
            system.close()


def _issue_titles(system: System, holder: str, n: int) -> list[dict]:
    """`n` new titles held by `holder` (a batch offers each of its titles once)."""
    import hashlib

    from gateway.chain.devnet import ISSUER

    d, out = system.devnet, []
    for i in range(n):
        doc = hashlib.sha256(f"bench bill {i}".encode()).digest()
        assert d.business.client.transact(d.account(ISSUER), to=d.titles.address, gas=300_000,
                                          data=d.titles.encode_abi("issue", [holder, doc])
                                          ).succeeded
        out.append({"token_id": str(d.titles.functions.issuedCount().call()),
                    "document_hash": "0x" + doc.hex()})
    return out


def _measure(system: System, concurrency: int, requests: int) -> dict:
    ents = system.demo["enterprises"]
    seller = {"Authorization": f"Bearer {ents['seller']['api_key']}"}
    titles = ents["seller"]["titles"]
    batch_titles = _issue_titles(system, ents["seller"]["business_address"], BATCH_SIZE)
    now = max(system.ctx.payment.now(), system.ctx.business.now())
    token = system.devnet.info.payment.token

    def proposal(i: int, titles: list[dict] = titles) -> dict:
        title = titles[i % len(titles)]
        return {"role": "seller", "counterparty": ents["buyer"]["id"],
                "payment": {"token": token, "amount": str(1000 + i)},
                "delivery": {"token_id": title["token_id"],
                             "document_hash": title["document_hash"]},
                "deadlines": {"delivery": now + 3600, "payment": now + 7200}}

    local = threading.local()
    clients: list[httpx.Client] = []
    lock = threading.Lock()

    with serve(system.app) as base_url:
        def client() -> httpx.Client:
            if not hasattr(local, "http"):
                local.http = httpx.Client(base_url=base_url, timeout=30,
                                          headers=seller)
                with lock:
                    clients.append(local.http)
            return local.http

        counter = itertools.count()

        def create(http: httpx.Client, _: int) -> httpx.Response:
            i = next(counter)
            return http.post("/v1/trades", json=proposal(i),
                             headers={"Idempotency-Key": str(uuid.uuid4())})

        def create_batch(http: httpx.Client, _: int) -> httpx.Response:
            return http.post("/v1/trades/batch",
                             json={"trades": [proposal(i, batch_titles)
                                              for i in range(BATCH_SIZE)]},
                             headers={"Idempotency-Key": str(uuid.uuid4())})

        try:
            with ThreadPoolExecutor(concurrency, thread_name_prefix="bench") as pool:
                _run(pool, client, WARMUP, create, 201)
                created, responses = _run(pool, client, requests, create, 201)
                ids = [r.json()["id"] for r in responses if r.status_code == 201]
                got, _ = _run(pool, client, requests,
                              lambda http, i: http.get(f"/v1/trades/{ids[i % len(ids)]}"), 200)
                listed, _ = _run(pool, client, requests,
                                 lambda http, i: http.get("/v1/trades",
                                                          params={"limit": 50}), 200)
                _run(pool, client, 2, create_batch, 201)  # warm-up
                batched, _ = _run(pool, client, BATCHES, create_batch, 201)
                batched["batch_size"] = BATCH_SIZE
                batched["trades_per_s"] = round(batched["rps"] * BATCH_SIZE, 1)
        finally:
            for http in clients:
                http.close()
    return {"server": "uvicorn on 127.0.0.1, in-process chains, SQLite",
            "concurrency": concurrency,
            "trades_in_database": WARMUP + requests,
            "create_trade": created, "get_trade": got, "list_trades_limit_50": listed,
            "batch_create_100": batched}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--requests", type=int, default=REQUESTS)
    args = parser.parse_args()
    logs.configure(json=True, level=40)
    print(json.dumps(measure(args.concurrency, args.requests), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
