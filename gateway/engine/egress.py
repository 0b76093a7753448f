"""Where the gateway may send webhooks: public addresses only, checked where it connects.

A webhook URL names a host chosen by a tenant; without a check the gateway would POST (and
report the outcome of) requests to its own loopback, the private network around it or a
cloud metadata service. `Egress` judges a URL:

* a literal address (`10.1.2.3`, `[::1]`, and the legacy forms a resolver accepts: `127.1`,
  `2130706433`, `0x7f.0.0.1`) is judged as it is, with no lookup;
* a host name is resolved, and every address it resolves to must be public; names that never
  name a public host (`localhost`, `*.localhost`, `*.local`, `*.internal`, `*.home.arpa`,
  `metadata.google.internal`, ...) are refused whatever they resolve to; a name that does not
  resolve is refused with the same message (a tenant cannot tell an internal name that
  exists from one that does not).

Not public: loopback, private (RFC 1918, unique local), link-local, CGNAT (100.64/10),
multicast, unspecified, reserved and documentation ranges, IPv4-compatible IPv6 (`::/96`),
NAT64 local-use (`64:ff9b:1::/48`); the IPv6 forms that carry an IPv4 address (IPv4-mapped
`::ffff:0:0/96`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`, Teredo `2001::/32`) are judged by the
IPv4 address they carry.

`destination(url)` resolves once and returns the URL to request with the host replaced by the
checked address, plus the original host for the `Host` header and TLS (SNI and certificate
verification): the connection goes to the address that was checked, so a name that resolves
to a public address for the check and to a private one a moment later (DNS rebinding) cannot
move it. The operator's allow-list (`DVP_WEBHOOK_ALLOW_HOSTS`: host names, IP addresses or
networks) admits receivers that are not public; it is empty by default.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# host name, port -> the addresses it resolves to (as strings), in the resolver's order.
Resolver = Callable[[str, int], list[str]]

LEGACY_IPV4 = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$", re.I)
HOST_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_-]{1,63})*$", re.I)

# Names that never name a public host, refused whatever a resolver says of them.
INTERNAL_NAMES = frozenset({"localhost", "metadata", "metadata.google.internal",
                            "metadata.goog", "instance-data", "instance-data.ec2.internal"})
INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".home.arpa", ".localdomain")

_V4_NOT_PUBLIC = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
    "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
))
_V6_NOT_PUBLIC = tuple(ipaddress.IPv6Network(n) for n in (
    "::/96",  # unspecified, loopback and the deprecated IPv4-compatible form (::127.0.0.1)
    "64:ff9b:1::/48",  # NAT64 local use (RFC 8215)
    "100::/64",  # discard
    "2001:2::/48", "2001:10::/28", "2001:20::/28",  # benchmarking, ORCHID
    "2001:db8::/32", "3fff::/20",  # documentation
    "5f00::/16",  # SRv6 segment identifiers
    "fc00::/7", "fe80::/10", "fec0::/10",  # unique local, link-local, site-local
    "ff00::/8",  # multicast
))
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # SIIT (RFC 6052 / 2765)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIXTOFOUR = ipaddress.IPv6Network("2002::/16")
_TEREDO = ipaddress.IPv6Network("2001::/32")

PUBLIC_ONLY = "must be a public address, not a private, loopback or reserved one"
PUBLIC_NAME = "must name a host that resolves only to public addresses"


class EgressRefused(ValueError):
    """The URL's host is not one the gateway may reach. The message is safe to show a
    tenant: it says nothing of what, if anything, the name resolved to."""


def _v4_is_public(address: ipaddress.IPv4Address) -> bool:
    return (address.is_global and not address.is_multicast and not address.is_reserved
            and not any(address in network for network in _V4_NOT_PUBLIC))


def embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...] | None:
    """The IPv4 addresses an IPv6 transition form carries (mapped, SIIT, NAT64, 6to4, Teredo
    server and client), or None for a plain IPv6 address."""
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    if address in _MAPPED or address in _TRANSLATED or address in _NAT64:
        return (low32,)
    if address in _SIXTOFOUR:
        return (ipaddress.IPv4Address((int(address) >> 80) & 0xFFFF_FFFF),)
    if address in _TEREDO:
        server, client = address.teredo  # type: ignore[misc]
        return (server, client)
    return None


def is_public(address: IPAddress) -> bool:
    """Whether `address` is a public unicast address (IPv6 forms judged by what they carry)."""
    if isinstance(address, ipaddress.IPv4Address):
        return _v4_is_public(address)
    address = ipaddress.IPv6Address(int(address))  # without a %scope
    if any(address in network for network in _V6_NOT_PUBLIC):
        return False
    carried = embedded_ipv4(address)
    if carried is not None:
        return all(_v4_is_public(a) for a in carried)
    return (address.is_global and not address.is_multicast and not address.is_reserved
            and not address.is_site_local)


def literal_address(host: str) -> IPAddress | None:
    """The address a host that is a literal stands for (legacy IPv4 forms included, as the
    system resolver reads them), else None."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if LEGACY_IPV4.match(host):
        try:  # what the resolver makes of 127.1, 2130706433 or 0x7f.0.0.1
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def parse_allow(value: str | Iterable[str]) -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
    """`DVP_WEBHOOK_ALLOW_HOSTS`: comma-separated host names, addresses and networks (CIDR)."""
    entries = value.split(",") if isinstance(value, str) else list(value)
    names: set[str] = set()
    networks: list[IPNetwork] = []
    for raw in entries:
        entry = raw.strip().strip("[]").lower().rstrip(".")
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
            continue
        except ValueError:
            pass
        if not HOST_NAME.match(entry):
            raise ValueError(f"{raw.strip()!r} is neither a host name nor an IP address or "
                             "network (CIDR)")
        names.add(entry)
    return frozenset(names), tuple(networks)


def system_resolver(host: str, port: int) -> list[str]:
    """The system resolver's addresses for `host` (looked up at call time, so tests can
    replace `socket.getaddrinfo`)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class Destination:
    """Where one request goes: `url` names the checked address; `host` is the URL's host
    (the `Host` header's name, and the name TLS verifies the certificate against)."""

    url: httpx.URL
    host: str
    host_header: str
    address: str

    @property
    def sni_hostname(self) -> str | None:
        if self.url.scheme != "https" or literal_address(self.host) is not None:
            return None
        return self.host

    def request_extensions(self) -> dict:
        sni = self.sni_hostname
        return {"sni_hostname": sni} if sni else {}


class Egress:
    def __init__(self, allow: str | Iterable[str] = "", *,
                 resolver: Resolver | None = None) -> None:
        self.allowed_names, self.allowed_networks = parse_allow(allow)
        self.resolver = resolver or system_resolver

    def _allowed(self, address: IPAddress) -> bool:
        if isinstance(address, ipaddress.IPv6Address):
            address = ipaddress.IPv6Address(int(address))
            if address.ipv4_mapped is not None and self._allowed(address.ipv4_mapped):
                return True
        return any(address in network for network in self.allowed_networks)

    def _acceptable(self, address: IPAddress) -> bool:
        return is_public(address) or self._allowed(address)

    def addresses(self, url: str | httpx.URL) -> tuple[httpx.URL, str, list[IPAddress]]:
        """The parsed URL, its host and the checked addresses to connect to (first first);
        raises `EgressRefused`."""
        try:
            parsed = httpx.URL(url)
            host = parsed.raw_host.decode("ascii").lower().rstrip(".")
        except (httpx.InvalidURL, UnicodeError):
            raise EgressRefused("not a valid URL") from None
        if parsed.scheme not in ("http", "https") or not host:
            raise EgressRefused("must be an http:// or https:// URL naming a host")
        literal = literal_address(host)
        if literal is not None:
            if not self._acceptable(literal):
                raise EgressRefused(PUBLIC_ONLY)
            return parsed, host, [literal]
        trusted_name = host in self.allowed_names
        if not trusted_name and (host in INTERNAL_NAMES or host.endswith(INTERNAL_SUFFIXES)):
            raise EgressRefused(PUBLIC_NAME)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            found = [ipaddress.ip_address(a.split("%", 1)[0]) for a in self.resolver(host, port)]
        except (OSError, UnicodeError, ValueError):
            raise EgressRefused(PUBLIC_NAME) from None
        if not found or not (trusted_name or all(self._acceptable(a) for a in found)):
            raise EgressRefused(PUBLIC_NAME)
        return parsed, host, found

    def check(self, url: str) -> None:
        """At registration: raises `EgressRefused` unless every address is acceptable."""
        self.addresses(url)

    def destination(self, url: str) -> Destination:
        """At delivery: resolve once, check, and pin the request to the first address."""
        parsed, host, found = self.addresses(url)
        address = found[0]
        return Destination(url=parsed.copy_with(host=str(address)), host=host,
                           host_header=parsed.netloc.decode("ascii"), address=str(address))
