"""Rate limits of the HTTP API: token buckets stored in the database (`rate_buckets`), so that
every API process on one database draws on one budget.

Two buckets answer for a `/v1` request (gateway.api.app `caller`):

- one per client address, taken first, before the API key is even read: every request
  counts, requests with a missing, unknown or revoked key included, so key guessing (and any
  flood of unauthenticated requests) from one address is throttled;
- one per enterprise, taken once its key is known.

Either empty: 429 problem+json with Retry-After. A bucket is taken, refilled and read back by
one statement (an upsert with RETURNING, atomic on SQLite and PostgreSQL: gateway.db.ratelimit),
committed at once.

The client address is the TCP peer (`request.client.host`). Behind a reverse proxy that is the
proxy, and every client would share its bucket: list the proxy in DVP_TRUSTED_PROXIES and the
address it appends to X-Forwarded-For is used instead (the right-most address that is not a
trusted proxy; what a client writes to the left of it is ignored, as it can be forged). An
IPv6 client is limited by its /64 network: one host usually holds all of it.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable

from sqlalchemy.orm import Session

from gateway.db.ratelimit import RateBuckets

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...]:
    """Comma-separated addresses and networks (CIDR), e.g. "10.0.0.5, 10.1.0.0/16"; raises
    ValueError on an entry that is neither."""
    networks = []
    for entry in (e.strip() for e in text.split(",")):
        if entry:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network") from None
    return tuple(networks)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _trusted(address: str, proxies: Iterable[Network]) -> bool:
    ip = _ip(address)
    return ip is not None and any(ip in net for net in proxies)


def client_address(peer: str | None, forwarded_for: list[str],
                   trusted_proxies: tuple[Network, ...]) -> str:
    """The client's address: the TCP peer, unless the peer is a trusted proxy, then the
    right-most X-Forwarded-For address that is not one (`forwarded_for`: the header's values,
    in order)."""
    address = peer or "unknown"
    if not trusted_proxies or not _trusted(address, trusted_proxies):
        return address
    hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        if _ip(hop) is None:
            return address  # a proxy wrote garbage: limit the proxy, never a forged key
        if not _trusted(hop, trusted_proxies):
            return hop
    return hops[0] if hops else address


def client_bucket(address: str) -> str:
    """The bucket of a client address: the address, or an IPv6 address's /64."""
    ip = _ip(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        address = str(ipaddress.ip_network(f"{ip}/64", strict=False))
    elif isinstance(ip, ipaddress.IPv6Address):
        address = str(ip.ipv4_mapped)
    return f"client:{address}"[:128]


def enterprise_bucket(enterprise_id: str) -> str:
    return f"enterprise:{enterprise_id}"[:128]


class RateLimiter:
    """Token buckets in the database; `clock` gives Unix seconds (the same clock on every API
    process, as far as NTP keeps them: a bucket is never refilled for time going backwards)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock

    def begin(self, session: Session) -> None:
        """Before the takes of a transaction (see `RateBuckets.commit_without_waiting`)."""
        RateBuckets(session).commit_without_waiting()

    def take(self, session: Session, key: str, rate: float, burst: int) -> float:
        """Take a token from bucket `key` (refilled at `rate` per second up to `burst`): 0 if
        allowed, else the seconds until a token is there. One statement; the caller commits
        (at once: the bucket's row stays locked until then)."""
        tokens, allowed = RateBuckets(session).take(key, self.clock(), float(rate),
                                                    float(burst))
        if allowed:
            return 0.0
        return max(1.0 - tokens, 0.0) / rate

    def take_all(self, session: Session, key: str, n: int, rate: float, burst: int) -> bool:
        """Take `n` tokens from bucket `key` if it holds as many (requests admitted together);
        none if not (then take them one by one: `take`). One statement, as `take`."""
        return RateBuckets(session).take(key, self.clock(), float(rate), float(burst), n)[1]

    def prune(self, session: Session, idle_for: float, limit: int = 500) -> int:
        """Delete up to `limit` buckets untouched for `idle_for` seconds (by then full: the
        same as none). The caller commits."""
        return RateBuckets(session).prune_idle(self.clock() - idle_for, limit)
