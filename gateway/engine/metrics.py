"""Prometheus metrics. Counters and histograms are updated where things happen; gauges that
describe stored state (trades by phase, outbox depth) are read from the database at scrape
time, so every process that serves /metrics reports the same truth."""

from __future__ import annotations

import collections
import hmac
import json
import os
import threading
from dataclasses import replace
from datetime import UTC, datetime

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy.orm import Session, sessionmaker

RELAYER_LAG = Gauge("dvp_relayer_lag_blocks", "Chain head minus the last processed block",
                    ["chain"])
TRADE_ALERTS = Counter(
    "dvp_trade_alerts_total",
    "Alerts on trades: an exchange on one side only (phase), a flag an operator must act on",
    ["kind"])
REORGS = Counter("dvp_reorgs_total", "Chain reorganisations detected", ["chain"])
CHAIN_DISAGREEMENTS = Counter(
    "dvp_chain_disagreements_total",
    "ALERT: legs of open trades whose contract status differs from the trade's record "
    "(reconciler; once per trade, lock and pair of statuses found by this process)", ["chain"])
TRADES_DISAGREEING = Gauge(
    "dvp_trades_disagreeing_chain",
    "ALERT: open trades with a leg whose contract status differs from the trade's record, "
    "as of the reconciler's last run", ["chain"])
TX_SENT = Counter("dvp_transactions_sent_total", "Transactions broadcast by the relayer",
                  ["chain"])
FEE_BUMPS = Counter("dvp_fee_bumps_total",
                    "Pending transactions replaced at the same nonce with higher fees", ["chain"])
CLAIM_FEE_CAP_INSUFFICIENT = Counter(
    "dvp_claim_fee_cap_insufficient_total",
    "ALERT: payment claims near their deadline that cannot be mined even at the fee cap (the "
    "chain's base fee is above DVP_MAX_FEE_PER_GAS); once per pending claim and rise",
    ["chain"])
EFFECTS_REFUSED = Counter(
    "dvp_effects_refused_total",
    "Effects not sent because the chain says they would revert (checked and simulated before "
    "signing); kind is the effect's (payment_lock, payment_claim, ...)", ["chain", "kind"])
LOCKS_MISSING = Counter(
    "dvp_locks_missing_total",
    "Claims and refunds held back because their lock does not exist on chain (a reorg or a "
    "node short of blocks)", ["chain", "kind"])
TX_REVERTED = Counter("dvp_transactions_reverted_total",
                      "Relayer transactions mined but reverted", ["chain"])
SETTLEMENT_SECONDS = Histogram(
    "dvp_settlement_latency_seconds",
    "From the batch that saw the secret revealed to the payment claim being broadcast",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300))
DEADLINE_HORIZON = 300  # seconds of chain time before a deadline that the alert looks ahead

HTTP_REQUESTS = Counter("dvp_http_requests_total", "HTTP requests", ["method", "route", "status"])
HTTP_SECONDS = Histogram("dvp_http_request_seconds", "HTTP request latency", ["route"])
PROPOSAL_GROUPS = Counter(
    "dvp_proposal_groups_total", "Groups of concurrent POST /v1/trades requests of an API "
    "process: written together in one transaction, or (something failed the group) each alone",
    ["outcome"])
PROPOSAL_GROUP_SIZE = Histogram(
    "dvp_proposal_group_size", "Requests written together in one proposal group",
    buckets=(2, 4, 8, 16, 32, 64))


class _StoredState:
    """Gauges read from one gateway's database. Bound to the app or server that serves them,
    never to the process-wide registry: a process may hold several gateways (tests, one API per
    database), and a scrape must never read a database that another one closed."""

    def __init__(self, session_factory: sessionmaker[Session], chain_ids: dict[str, int]) -> None:
        self.session_factory = session_factory
        self.chain_ids = chain_ids  # "payment"/"business" -> chain id
        self.deadline_horizon = DEADLINE_HORIZON

    def collect(self):  # noqa: ANN201
        from gateway.db.repository import Repository
        from gateway.domain.trade import deadline_without_progress

        with self.session_factory() as session:
            repo = Repository(session)
            phases = repo.trade_counts_by_phase()
            depth = repo.outbox_depth()
            pending = repo.outbox_pending_by_chain()
            # A trade's stored clocks move only when something else about it changes: judge
            # it by the chains' times as of the relayer's last applied blocks.
            times = {row.chain_id: row.block_timestamp
                     for row in repo.cursors(list(self.chain_ids.values()))}
            pay = times.get(self.chain_ids.get("payment", -1), 0)
            biz = times.get(self.chain_ids.get("business", -1), 0)
            near = collections.Counter(deadline_without_progress(
                replace(s, payment_time=max(s.payment_time, pay),
                        business_time=max(s.business_time, biz)), self.deadline_horizon)
                for s in repo.active_trades())
        trades = GaugeMetricFamily("dvp_trades", "Trades by phase", labels=["phase"])
        for phase, count in sorted(phases.items()):
            trades.add_metric([phase], count)
        yield trades
        yield GaugeMetricFamily("dvp_outbox_depth", "Effects waiting to be done on chain",
                                value=depth)
        by_chain = GaugeMetricFamily("dvp_outbox_pending", "Effects waiting, per chain",
                                     labels=["chain"])
        age = GaugeMetricFamily("dvp_outbox_oldest_pending_seconds",
                                "Age of the oldest effect still waiting, per chain",
                                labels=["chain"])
        now = datetime.now(UTC)
        for chain in ("payment", "business"):
            count, oldest = pending.get(chain, (0, None))
            by_chain.add_metric([chain], count)
            age.add_metric([chain], (now - oldest).total_seconds() if oldest else 0.0)
        yield by_chain
        yield age
        alert = GaugeMetricFamily(
            "dvp_trades_near_deadline_without_progress",
            f"ALERT: open trades within {self.deadline_horizon} s (chain time) of a deadline "
            "with what is due before it not done: delivery (title not taken before T_deliver) "
            "or payment (secret public, payment not claimed before T_pay)",
            labels=["deadline"])
        for deadline in ("delivery", "payment"):
            alert.add_metric([deadline], near.get(deadline, 0))
        yield alert


# Set (by `dvp-gateway api --workers`, or an operator) to a directory: every process started
# with it records its counters and histograms there (prometheus_client's multiprocess mode,
# chosen when it is imported), and /metrics adds them up over the processes.
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


class _ProcessMetrics:
    """The process-wide counters and histograms, as one collector of a per-gateway registry:
    this process's, or, in multiprocess mode, the sum over every process that recorded them
    (workers that died included: a counter never goes back when a worker is replaced)."""

    def collect(self):  # noqa: ANN201
        directory = os.environ.get(MULTIPROCESS_DIR_ENV)
        if directory:
            from prometheus_client.multiprocess import MultiProcessCollector

            yield from MultiProcessCollector(None, path=directory).collect()
        else:
            yield from REGISTRY.collect()


def registry(session_factory: sessionmaker[Session],
             chain_ids: dict[str, int] | None = None) -> CollectorRegistry:
    """What one gateway serves on /metrics: this process's counters plus its database's gauges."""
    served = CollectorRegistry()
    served.register(_ProcessMetrics())
    served.register(_StoredState(session_factory, chain_ids or {}))
    return served


def operator_token_given(authorization: str | None, expected: str | None) -> bool:
    """Whether a request may read operator endpoints: no token is set (DVP_OPS_TOKEN), or
    `authorization` is `Bearer <it>` (compared in constant time)."""
    if not expected:
        return True
    scheme, _, token = (authorization or "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                              expected.encode())


OPERATOR_TOKEN_NEEDED = "this endpoint needs the operator token: 'Authorization: Bearer " \
    "<DVP_OPS_TOKEN>'"
UNAUTHORIZED = json.dumps({
    "type": "https://dvp-gateway.dev/problems/unauthorized", "title": "Unauthorized",
    "status": 401, "detail": OPERATOR_TOKEN_NEEDED}).encode()


def serve(session_factory: sessionmaker[Session], chain_ids: dict[str, int], host: str,
          port: int, token: str | None = None):  # noqa: ANN201 - the server, for shutdown()
    """Serve every metric on /metrics over HTTP from a background thread (`dvp-gateway relayer
    run`): the relayer's own counters (lag, reorgs, fee bumps, transactions sent) live in its
    process. With `token` (DVP_OPS_TOKEN), only to `Authorization: Bearer <token>`: a 401
    problem otherwise, as the API's operator endpoints answer."""
    from http.server import ThreadingHTTPServer

    from prometheus_client.exposition import MetricsHandler

    exposed = MetricsHandler.factory(registry(session_factory, chain_ids))

    class Handler(exposed):  # type: ignore[valid-type, misc]
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path.split("?", 1)[0] != "/metrics":
                self._answer(404, b"", "text/plain")
            elif not operator_token_given(self.headers.get("Authorization"), token):
                self._answer(401, UNAUTHORIZED, "application/problem+json",
                             {"WWW-Authenticate": "Bearer"})
            else:
                super().do_GET()

        def _answer(self, status: int, body: bytes, content_type: str,
                    headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # scrapes are not worth a log line each

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def render(served: CollectorRegistry) -> tuple[bytes, str]:
    return generate_latest(served), CONTENT_TYPE_LATEST
