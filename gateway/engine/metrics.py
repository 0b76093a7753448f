"""Prometheus metrics. Counters and histograms are updated where things happen; gauges that
describe stored state (trades by phase, outbox depth) are read from the database at scrape
time, so every process that serves /metrics reports the same truth."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy.orm import Session, sessionmaker

RELAYER_LAG = Gauge("dvp_relayer_lag_blocks", "Chain head minus the last processed block",
                    ["chain"])
REORGS = Counter("dvp_reorgs_total", "Chain reorganisations detected", ["chain"])
TX_SENT = Counter("dvp_transactions_sent_total", "Transactions broadcast by the relayer",
                  ["chain"])
FEE_BUMPS = Counter("dvp_fee_bumps_total",
                    "Pending transactions replaced at the same nonce with higher fees", ["chain"])
SETTLEMENT_SECONDS = Histogram(
    "dvp_settlement_latency_seconds",
    "From the batch that saw the secret revealed to the payment claim being broadcast",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300))
HTTP_REQUESTS = Counter("dvp_http_requests_total", "HTTP requests", ["method", "route", "status"])
HTTP_SECONDS = Histogram("dvp_http_request_seconds", "HTTP request latency", ["route"])


class _StoredState:
    def __init__(self) -> None:
        self.session_factory: sessionmaker[Session] | None = None

    def collect(self):  # noqa: ANN201
        if self.session_factory is None:
            return
        from gateway.db.repository import Repository

        with self.session_factory() as session:
            repo = Repository(session)
            phases = repo.trade_counts_by_phase()
            depth = repo.outbox_depth()
        trades = GaugeMetricFamily("dvp_trades", "Trades by phase", labels=["phase"])
        for phase, count in sorted(phases.items()):
            trades.add_metric([phase], count)
        yield trades
        yield GaugeMetricFamily("dvp_outbox_depth", "Effects waiting to be done on chain",
                                value=depth)


_stored = _StoredState()
REGISTRY.register(_stored)


def render(session_factory: sessionmaker[Session]) -> tuple[bytes, str]:
    _stored.session_factory = session_factory
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
