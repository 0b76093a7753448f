"""What the API needs of the running system, built once at start-up (never at import)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from gateway.api.problems import Problem
from gateway.api.ratelimit import Network, RateLimiter, parse_networks
from gateway.chain.client import ChainClient
from gateway.chain.titles import Title
from gateway.domain.policy import TimingPolicy
from gateway.engine.dispatcher import Dispatcher
from gateway.keys import Cipher

if TYPE_CHECKING:
    from gateway.api.schemas import Deadlines
    from gateway.config import Settings

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
        return self.client.head()[0]


@dataclass
class Limits:
    max_body_bytes: int = 64 * 1024
    max_page_size: int = 100
    # Rate limits (gateway.api.ratelimit), shared by every API process on the database: per
    # enterprise, once authenticated...
    rate_per_second: float = 50.0
    burst: int = 100
    # ...and per client address, before authentication (None: twice the enterprise's).
    client_rate_per_second: float | None = None
    client_burst: int | None = None
    exposure_cap: int = 10**15  # payment units an enterprise may have locked-in as buyer
    idempotency_ttl: float = 24 * 3600.0  # seconds an Idempotency-Key is remembered
    ops_cache_seconds: float = 2.0  # /readyz, /metrics' stored gauges: at most once per this
    batch_max: int = 100  # trades in one batch request (DVP_BATCH_MAX)
    request_group_max: int = 32  # requests handled together (DVP_REQUEST_GROUP_MAX)

    @property
    def client_rate(self) -> float:
        return self.client_rate_per_second or 2 * self.rate_per_second

    @property
    def client_capacity(self) -> int:
        return self.client_burst or 2 * self.burst

    def bucket_refill_seconds(self) -> float:
        """How long an untouched bucket of either kind takes to be full again."""
        return max(self.burst / self.rate_per_second,
                   self.client_capacity / self.client_rate)

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(rate_per_second=settings.rate_limit_per_second,
                   burst=settings.rate_limit_burst,
                   client_rate_per_second=settings.client_rate_limit_per_second,
                   client_burst=settings.client_rate_limit_burst,
                   idempotency_ttl=float(settings.idempotency_ttl),
                   ops_cache_seconds=settings.ops_cache_seconds,
                   batch_max=settings.batch_max, max_body_bytes=settings.max_body_bytes,
                   request_group_max=settings.request_group_max)


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
    # DVP_OPS_TOKEN: when set, /readyz and /metrics require it as a Bearer token.
    ops_token: str | None = None
    # DVP_TRUSTED_PROXIES: peers whose X-Forwarded-For names the client (gateway.api.ratelimit).
    trusted_proxies: tuple[Network, ...] = ()
    clock: Callable[[], float] = time.time  # Unix seconds: rate buckets, key expiry

    def __post_init__(self) -> None:
        from gateway.api.housekeeping import Housekeeping

        self.rate_limiter = RateLimiter(self.clock)
        self.housekeeping = Housekeeping(self)

    def configure(self, settings: Settings) -> ApiContext:
        """The operator settings of the API (DVP_OPS_TOKEN, DVP_TRUSTED_PROXIES); the limits
        are `Limits.from_settings`."""
        self.ops_token = (settings.ops_token.get_secret_value()
                          if settings.ops_token is not None else None)
        self.trusted_proxies = parse_networks(settings.trusted_proxies)
        return self


def check_title(ctx: ApiContext, seller_business_address: str, token_id: str,
                document_hash: str, title: Title | None) -> None:
    """A proposal's title, read on the business chain: it exists, the seller's business address
    holds it (a title locked in the DeliveryHTLC is the HTLC's, so it is refused too) and it
    carries the document hash of the terms. 422 naming delivery.token_id or
    delivery.document_hash otherwise. `title`: as `read_titles_and_now` read it."""
    from gateway.chain.titles import problems_of

    problems = problems_of(title, int(token_id), ctx.business.asset, seller_business_address,
                           bytes.fromhex(document_hash[2:]))
    if problems:
        raise Problem(422, problems[0][1], errors=[
            {"field": f"delivery.{name}", "message": message} for name, message in problems])


def read_titles_and_now(ctx: ApiContext, token_ids: list[int]
                        ) -> tuple[int, dict[int, Title | None]]:
    """Chain time, by which deadlines are judged (the later of the two chains' latest
    blocks), and the titles of a batch of proposals (`gateway.chain.titles.read_titles_and_time`):
    the business chain's time is read in the titles' batch request, one round trip to
    each node."""
    from gateway.chain.titles import read_titles_and_time

    ids = sorted(set(token_ids))
    business_now, titles = read_titles_and_time(ctx.business.client, ctx.business.asset, ids)
    return (max(ctx.payment.now(), business_now),
            dict(zip(ids, titles, strict=True)))


def deadline_problems(ctx: ApiContext, deadlines: Deadlines, now: int) -> list[Problem]:
    problems = []
    for name, value in (("deadlines.delivery", deadlines.delivery),
                         ("deadlines.payment", deadlines.payment)):
        if value <= now + ctx.policy.claim_lead_time:
            problems.append(Problem(
                422, f"must be in the future, after {now + ctx.policy.claim_lead_time}"
                     f" (chain time now {now})", field=name))
        elif value > now + MAX_DEADLINE_AHEAD:
            problems.append(Problem(422, f"at most {MAX_DEADLINE_AHEAD} s ahead of chain time "
                                         f"(latest allowed {now + MAX_DEADLINE_AHEAD})",
                                    field=name))
    return problems
