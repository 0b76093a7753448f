"""Upkeep of the API's own tables, done by the API processes as they serve (nothing else needs
to run for it): idempotency keys expire after DVP_IDEMPOTENCY_TTL, and rate-limit buckets idle
long enough to be full again are deleted.

- A key reused after it expired is a new key: a proposal (`POST /v1/trades`, the batch) that
  finds the caller's row for its Idempotency-Key expired (`idempotency_cutoff`) deletes it in
  its own transaction and is answered as new, whether or not the sweep has reached it yet.
- The sweep: at most once a minute per API process, the first authenticated request deletes
  a batch of expired keys (by the `created_at` index) and of idle buckets; a full batch makes
  the next request sweep again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from gateway.db.idempotency import IdempotencyKeys


def _cutoff(now: float, ttl: float) -> datetime:
    return datetime.fromtimestamp(now - ttl, UTC)


def idempotency_cutoff(ctx) -> datetime:  # noqa: ANN001 - an ApiContext
    """Idempotency keys stored before this instant have expired (DVP_IDEMPOTENCY_TTL, by the
    rate limiter's clock)."""
    return _cutoff(ctx.rate_limiter.clock(), ctx.limits.idempotency_ttl)


def prune_idempotency_keys(session: Session, ttl: float, now: float, limit: int = 500) -> int:
    """Delete up to `limit` expired keys, oldest first; how many. The caller commits."""
    return IdempotencyKeys(session).prune(_cutoff(now, ttl), limit)


class Housekeeping:
    """When the sweep is due in this process, and the sweep itself."""

    def __init__(self, ctx, *, interval: float = 60.0, batch: int = 500,  # noqa: ANN001
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self.interval, self.batch = interval, batch
        self._monotonic = monotonic
        self._next = 0.0  # due at once: a process that serves little still sweeps
        self._lock = threading.Lock()

    def due(self) -> bool:
        """True for one caller once `interval` has passed since the last sweep."""
        with self._lock:
            now = self._monotonic()
            if now < self._next:
                return False
            self._next = now + self.interval
            return True

    def make_due(self) -> None:
        with self._lock:
            self._next = 0.0

    def sweep(self, session: Session) -> tuple[int, int]:
        """Delete a batch of expired idempotency keys and one of idle buckets, and commit:
        (keys, buckets) deleted."""
        limits, limiter = self.ctx.limits, self.ctx.rate_limiter
        keys = prune_idempotency_keys(session, limits.idempotency_ttl, limiter.clock(),
                                      self.batch)
        buckets = limiter.prune(session, limits.bucket_refill_seconds(), self.batch)
        session.commit()
        if keys >= self.batch or buckets >= self.batch:
            self.make_due()  # more to do: the next request sweeps again
        return keys, buckets
