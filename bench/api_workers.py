"""The API as an operator runs it: `dvp-gateway api --workers N` processes on PostgreSQL and two
anvil nodes; prints JSON (the `api_workers` part of `make bench`).

For 1 and then 2 workers, each on a new database: POST /v1/trades (a self-custody seller's
proposal to a self-custody buyer, its title read on the business node) over CONCURRENCY
kept-alive connections, requests per second over the workload's wall-clock time, and how many
proposals a group wrote on average (gateway.api.proposal_groups, from the API's /metrics);
the same over WIDE connections; then POST
/v1/trades/batch of BATCH proposals (DVP_BATCH_MAX and DVP_MAX_BODY_BYTES raised for it),
seconds per batch. The load generator runs on the same machine: one asyncio loop writing
requests built before the clock starts, so it takes little CPU from the workers.
Skipped without a PostgreSQL server (DVP_TEST_DATABASE_URL, as `make bench` sets it).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.chain.anvil import devnet_env, running_anvil_devnet  # noqa: E402
from gateway.chain.calls import title_issue_calldata  # noqa: E402
from gateway.chain.devnet import (  # noqa: E402
    BUYER,
    DEFAULT_BUSINESS_CHAIN_ID,
    DEFAULT_PAYMENT_CHAIN_ID,
    ISSUER,
    RELAYER,
    SELLER,
)
from tests.databases import ADMIN_URL, create_database, drop_database  # noqa: E402
from tests.e2e.test_run_command import _free_port, _wait_healthy  # noqa: E402
from tests.helpers import listening_sockets, terminate  # noqa: E402
from tests.postgres.waiting import wait_for  # noqa: E402

CONCURRENCY = 16
WIDE = 64  # connections of a second run: how the groups grow with the load
CREATES = 1000
WARMUP = 40
BATCH = 500
BATCHES = 3
CLI = [sys.executable, "-m", "gateway.cli"]


def _enterprise(env: dict, name: str, address: str) -> tuple[str, str]:
    made = subprocess.run([*CLI, "enterprise", "create", "--name", name, "--payment-address",
                           address, "--business-address", address],
                          env=env, capture_output=True, text=True, timeout=120, check=True)
    lines = made.stdout.splitlines()
    return lines[0].split()[1], lines[-1].split()[2]


def _issue_titles(devnet, owner: str, n: int) -> list[dict]:  # noqa: ANN001
    """`n` titles for `owner`, their issue transactions sent as JSON-RPC batches."""
    client, issuer = devnet.business.client, devnet.account(ISSUER)
    first = devnet.titles.functions.issuedCount().call() + 1
    nonce = client.pending_nonce(issuer.address)
    docs = [hashlib.sha256(f"bench title {first + i}".encode()).digest() for i in range(n)]
    raws = [client.sign_with_nonce(issuer, to=devnet.titles.address,
                                   data=title_issue_calldata(owner, doc), gas=300_000,
                                   nonce=nonce + i) for i, doc in enumerate(docs)]
    provider = client.w3.provider
    for start in range(0, n, 100):
        provider.make_batch_request([("eth_sendRawTransaction", ["0x" + raw.hex()])
                                     for raw in raws[start:start + 100]])
    assert client.wait(client.tx_hash(raws[-1])).succeeded
    return [{"token_id": str(first + i), "document_hash": "0x" + doc.hex()}
            for i, doc in enumerate(docs)]


def _run_workers(devnet, workers: int, titles: list[dict], tmp: Path) -> dict:  # noqa: ANN001
    url = create_database(tmp)
    env = {**os.environ, "DVP_DATABASE_URL": url, "DVP_BATCH_MAX": str(BATCH),
           "DVP_MAX_BODY_BYTES": str(1024 * 1024), "DVP_RATE_LIMIT_PER_SECOND": "1000000",
           "DVP_RATE_LIMIT_BURST": "1000000"}
    env.update(line.split("=", 1) for line in
               devnet_env(devnet, devnet.account(RELAYER).key, None))
    try:
        buyer_id, _ = _enterprise(env, "Bench Buyer", devnet.account(BUYER).address)
        _, seller_key = _enterprise(env, "Bench Seller", devnet.account(SELLER).address)
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        with (tmp / f"api-{workers}.log").open("w") as out:
            api = subprocess.Popen([*CLI, "api", "--workers", str(workers), "--port", str(port)],
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_healthy(base, api, timeout=120)
            wait_for(lambda: listening_sockets(port) == workers, timeout=120,
                     what=f"{workers} workers listening")
            return _load(base, seller_key, buyer_id, devnet, titles)
        finally:
            terminate(api, timeout=60)
    finally:
        drop_database(url)


def _request(port: int, key: str, body: dict) -> bytes:
    """One POST /v1/trades as bytes on the wire, built before the clock starts."""
    payload = json.dumps(body).encode()
    return (f"POST /v1/trades HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {key}\r\nIdempotency-Key: {uuid.uuid4()}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
            ).encode() + payload


async def _post_all(port: int, requests: list[bytes],
                    connections: int = CONCURRENCY) -> list[int]:
    """Send `requests` over `connections` kept-alive connections, each taking the next one
    when its last answer is in; the status codes. A load generator that costs the machine little
    (an HTTP client library in threads took about a third of these two cores)."""
    todo = iter(range(len(requests)))
    codes = [0] * len(requests)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in todo:
                writer.write(requests[i])
                codes[i] = int((await reader.readline()).split()[1])
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return codes


def _load(base: str, key: str, buyer_id: str, devnet, titles: list[dict]) -> dict:  # noqa: ANN001
    chain_now = max(devnet.payment.client.head()[0], devnet.business.client.head()[0])
    token = devnet.info.payment.token
    headers = {"Authorization": f"Bearer {key}"}

    def proposal(i: int) -> dict:
        return {"role": "seller", "counterparty": buyer_id,
                "payment": {"token": token, "amount": str(1000 + i)},
                "delivery": titles[i % len(titles)],
                "deadlines": {"delivery": chain_now + 3600, "payment": chain_now + 7200}}

    port = int(base.rsplit(":", 1)[1])
    warmup = [_request(port, key, proposal(i)) for i in range(WARMUP)]
    assert set(asyncio.run(_post_all(port, warmup))) == {201}
    rates = {}
    for connections in (CONCURRENCY, WIDE):
        creates = [_request(port, key, proposal(i)) for i in range(CREATES)]
        groups_before = _groups(base)
        started = time.perf_counter()
        codes = asyncio.run(_post_all(port, creates, connections))
        wall = time.perf_counter() - started
        assert set(codes) == {201}, codes[:5]
        grouped, groups = (after - before for after, before in
                           zip(_groups(base), groups_before, strict=True))
        rates[connections] = {"create_rps": round(CREATES / wall, 1),
                              "proposals_per_group": round(grouped / groups, 1)
                              if groups else 1.0}
    with httpx.Client(base_url=base, timeout=60, headers=headers) as http:
        batches = []
        for _ in range(BATCHES):
            body = {"trades": [proposal(i) for i in range(BATCH)]}
            started = time.perf_counter()
            r = http.post("/v1/trades/batch", json=body,
                          headers={"Idempotency-Key": str(uuid.uuid4())})
            batches.append(time.perf_counter() - started)
            assert r.status_code == 201, r.text[:500]
    return {"create_rps": rates[CONCURRENCY]["create_rps"],
            "proposals_per_group": rates[CONCURRENCY]["proposals_per_group"],
            f"create_rps_{WIDE}_connections": rates[WIDE]["create_rps"],
            f"proposals_per_group_{WIDE}_connections": rates[WIDE]["proposals_per_group"],
            f"batch_{BATCH}_s": {"median": round(statistics.median(batches), 3),
                                 "min": round(min(batches), 3)}}


def _groups(base: str) -> tuple[float, float]:
    """(proposals written in groups, groups) so far, from the API's /metrics (every worker's:
    a group of one is not counted)."""
    text = httpx.get(base + "/metrics", timeout=30).text
    found = {name: float(value) for name, _, value in
             (line.partition(" ") for line in text.splitlines())
             if name in ("dvp_proposal_group_size_sum", "dvp_proposal_group_size_count")}
    return (found.get("dvp_proposal_group_size_sum", 0.0),
            found.get("dvp_proposal_group_size_count", 0.0))


def measure() -> dict:
    if ADMIN_URL is None:
        return {"skipped": "no PostgreSQL server (DVP_TEST_DATABASE_URL unset)"}
    with running_anvil_devnet(DEFAULT_PAYMENT_CHAIN_ID, DEFAULT_BUSINESS_CHAIN_ID) as devnet, \
            tempfile.TemporaryDirectory() as tmp:
        titles = _issue_titles(devnet, devnet.account(SELLER).address, BATCH)
        runs = {f"{n}_workers": _run_workers(devnet, n, titles, Path(tmp)) for n in (1, 2)}
    return {"setup": "dvp-gateway api --workers N, PostgreSQL, two anvil nodes; "
                     f"{CONCURRENCY} (then {WIDE}) connections from one asyncio client on the "
                     "same machine",
            **runs, "target": {"create_rps_2_workers": 250, f"batch_{BATCH}_s": 1.0}}


if __name__ == "__main__":
    print(json.dumps({"api_workers": measure()}, indent=2))
