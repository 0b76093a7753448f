"""What the API needs of the running system, built once at start-up (never at import)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from gateway.api.secrets import Cipher
from gateway.chain.client import ChainClient
from gateway.domain.policy import TimingPolicy
from gateway.engine.dispatcher import Dispatcher

MAX_DEADLINE_AHEAD = 30 * 24 * 3600  # the contracts' MAX_LOCK_DURATION


@dataclass
class ChainView:
    """One chain as the API sees it: a client and the contracts that matter."""

    client: ChainClient
    htlc: str
    asset: str  # payment token or title registry

    @property
    def chain_id(self) -> int:
        return self.client.chain_id

    def now(self) -> int:
        """The latest block's timestamp: deadlines are judged by chain time."""
        return int(self.client.w3.eth.get_block("latest")["timestamp"])


@dataclass
class Limits:
    max_body_bytes: int = 64 * 1024
    max_page_size: int = 100
    rate_per_second: float = 50.0
    burst: int = 100
    exposure_cap: int = 10**15  # payment units an enterprise may have locked-in as buyer


class RateLimiter:
    """A token bucket per API key, in process memory."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = defaultdict(lambda: (burst, 0.0))
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 if allowed, else the seconds to wait."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets[key]
            tokens = min(self.burst, tokens + (now - last) * self.rate if last else tokens)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate


@dataclass
class ApiContext:
    session_factory: sessionmaker[Session]
    dispatcher: Dispatcher
    policy: TimingPolicy
    payment: ChainView
    business: ChainView
    cipher: Cipher | None
    limits: Limits = field(default_factory=Limits)
    relayer_lag: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rate_limiter = RateLimiter(self.limits.rate_per_second, self.limits.burst)


def check_title(ctx: ApiContext, seller_business_address: str, token_id: str,
                document_hash: str) -> None:
    """A proposal's title, read on the business chain: it exists, the seller's business address
    holds it (a title locked in the DeliveryHTLC is the HTLC's, so it is refused too) and it
    carries the document hash of the terms. 422 naming delivery.token_id or
    delivery.document_hash otherwise."""
    from gateway.api.problems import Problem
    from gateway.chain.titles import title_problems

    problems = title_problems(ctx.business.client, ctx.business.asset, int(token_id),
                              seller_business_address, bytes.fromhex(document_hash[2:]))
    if problems:
        raise Problem(422, problems[0][1], errors=[
            {"field": f"delivery.{name}", "message": message} for name, message in problems])
