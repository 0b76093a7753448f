"""Webhooks must not reach inside (issue 11): where the gateway lets a tenant's webhook go.

Names are resolved at registration and at every delivery, every address must be public (or
on the operator's DVP_WEBHOOK_ALLOW_HOSTS), the request goes to the address that was checked
(no second lookup: DNS rebinding cannot move it), no redirect is followed, the deliveries view
never tells a closed port from a filtered one, and the README shows a receiver rejecting
replays. Real sockets on loopback stand in for the network: `Net` answers name lookups as a
test says and routes "public" addresses to loopback receivers, recording every connection.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import ipaddress
import re
import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import structlog
from pydantic import ValidationError
from sqlalchemy import select

from gateway.config import Settings
from gateway.db.models import WebhookDeliveryRow
from gateway.engine.egress import Egress, EgressRefused, is_public, parse_allow
from gateway.engine.webhooks import NO_RESPONSE, NOT_PUBLIC, WebhookSender
from gateway.runner import build_system
from tests.e2e.conftest import auth
from tests.e2e.test_webhooks import deliveries, propose_and_accept
from tests.helpers import free_port

T0 = datetime(2030, 1, 1, tzinfo=UTC)
PUBLIC_IP = "93.184.216.34"  # a public address; `Net` routes it to a loopback receiver
README = Path(__file__).resolve().parents[2] / "README.md"


# --- the network ------------------------------------------------------------------------------


class Net:
    """`socket.getaddrinfo` answers names from `names` (a list of addresses, or a function of
    whether the lookup is made to connect); `socket.create_connection` resolves a name it is
    given through that, sends connections for an address in `routes` to that loopback port
    instead, records every one as (asked host, asked port, reached host, reached port), and
    reaches nothing but loopback (no test touches the real network)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: dict[str, object] = {}
        self.routes: dict[str, int] = {}
        self.connections: list[tuple[str, int, str, int]] = []
        self.lookups: list[tuple[str, bool]] = []
        self._local = threading.local()
        self._getaddrinfo, self._create_connection = socket.getaddrinfo, socket.create_connection
        monkeypatch.setattr(socket, "getaddrinfo", self.getaddrinfo)
        monkeypatch.setattr(socket, "create_connection", self.create_connection)

    def getaddrinfo(self, host, port, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
        name = host.decode() if isinstance(host, bytes) else host
        if name not in self.names:
            if isinstance(name, str) and name.endswith((".test", ".example", ".internal")):
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return self._getaddrinfo(host, port, *args, **kwargs)
        connecting = getattr(self._local, "connecting", False)
        self.lookups.append((name, connecting))
        answer = self.names[name]
        addresses = answer(connecting) if callable(answer) else answer
        port = int(port or 0)
        out = []
        for a in addresses:
            if ipaddress.ip_address(a).version == 6:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port, 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)))
        return out

    def create_connection(self, address, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
        host, port = address[0], int(address[1])
        try:
            ip = str(ipaddress.ip_address(host))
        except ValueError:  # a name: looked up to connect
            self._local.connecting = True
            try:
                ip = self.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][4][0]
            finally:
                self._local.connecting = False
        reached = ("127.0.0.1", self.routes[ip]) if ip in self.routes else (ip, port)
        self.connections.append((host, port, *reached))
        if not ipaddress.ip_address(reached[0]).is_loopback:
            raise OSError(errno.ENETUNREACH, "no network in tests")
        return self._create_connection(reached, *args, **kwargs)

    def reached(self, port: int) -> bool:
        return any(c[3] == port for c in self.connections)


class Server:
    """A real HTTP (or HTTPS) receiver on loopback that records what reaches it."""

    def __init__(self, status: int = 204, headers: dict[str, str] | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[dict] = []
        self.server_names: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_one(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                outer.requests.append({"method": self.command, "path": self.path,
                                       "headers": dict(self.headers.items()),
                                       "body": self.rfile.read(length)})
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", "0")
                self.send_header("Connection", "close")
                self.end_headers()

            do_POST = do_GET = handle_one

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            tls.sni_callback = lambda sock, name, ctx: outer.server_names.append(name)
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def net(monkeypatch) -> Net:
    return Net(monkeypatch)


@pytest.fixture
def servers():
    made: list[Server] = []

    def start(**kwargs) -> Server:  # noqa: ANN003
        made.append(Server(**kwargs))
        return made[-1]

    yield start
    for server in made:
        server.close()


@pytest.fixture
def webhook_allow_hosts() -> str:
    """DVP_WEBHOOK_ALLOW_HOSTS for the system; a test parametrizes it to allow loopback."""
    return ""


@pytest.fixture
def system(tmp_path, database_url, monkeypatch, webhook_allow_hosts):  # noqa: ANN201
    monkeypatch.setenv("DVP_WEBHOOK_ALLOW_HOSTS", webhook_allow_hosts)
    system = build_system(Settings(_env_file=None), tmp_path / "run", database_url=database_url)
    yield system
    system.close()


@pytest.fixture
def buyer_key(system) -> str:
    return system.demo["enterprises"]["buyer"]["api_key"]


def register(client, key: str, url: str) -> httpx.Response:
    return client.post("/v1/webhooks", json={"url": url}, headers=auth(key))


def registered(client, key: str, url: str) -> dict:
    r = register(client, key, url)
    assert r.status_code == 201, r.text
    return r.json()


def sender(system, **kwargs) -> WebhookSender:  # noqa: ANN003
    """The sender as the system runs it: its egress policy, the default HTTP client."""
    return WebhookSender(system.gateway.session_factory, system.ctx.cipher,
                         egress=system.webhook_egress, **kwargs)


def teredo(server: str, client: str) -> str:
    """The Teredo address (2001::/32) of a client behind `server` (client bits inverted)."""
    s, c = int(ipaddress.IPv4Address(server)), int(ipaddress.IPv4Address(client))
    return str(ipaddress.IPv6Address((0x2001_0000 << 96) | (s << 64) | (c ^ 0xFFFF_FFFF)))


# --- which addresses are public ---------------------------------------------------------------

NOT_PUBLIC_ADDRESSES = [
    "127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
    "169.254.169.254", "100.64.0.1", "100.127.255.254", "0.0.0.0", "0.1.2.3",
    "255.255.255.255", "224.0.0.1", "239.255.255.250", "240.0.0.1", "192.0.0.9", "192.0.2.1",
    "198.18.0.1", "198.51.100.7", "203.0.113.9", "192.88.99.1",
    "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "fec0::1", "ff02::1", "ff05::2",
    "2001:db8::1", "100::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",  # IPv4-mapped
    "::ffff:0:7f00:1",  # SIIT-translated
    "::7f00:1", "::10.0.0.1", "::8.8.8.8",  # IPv4-compatible (deprecated: all refused)
    "64:ff9b::7f00:1", "64:ff9b::a00:1", "64:ff9b::a9fe:a9fe",  # NAT64 of inside addresses
    "64:ff9b:1::1", "64:ff9b:1::808:808",  # NAT64 local-use prefix
    "2002:7f00:1::", "2002:a00:1::1", "2002:a9fe:a9fe::", "2002:6440:1::",  # 6to4
    teredo("8.8.8.8", "127.0.0.1"), teredo("8.8.8.8", "10.0.0.1"),  # Teredo client inside
    teredo("10.0.0.1", "8.8.8.8"),  # Teredo server inside
]
PUBLIC_ADDRESSES = [
    "8.8.8.8", "93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1", teredo("8.8.4.4", "8.8.8.8"),
]


@pytest.mark.parametrize("address", NOT_PUBLIC_ADDRESSES)
def test_addresses_inside_and_their_ipv6_forms_are_not_public(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(EgressRefused):
        Egress().check(f"https://{host}/hook")


@pytest.mark.parametrize("address", PUBLIC_ADDRESSES)
def test_public_addresses_and_their_ipv6_forms_are_public(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))
    host = f"[{address}]" if ":" in address else address
    Egress().check(f"https://{host}/hook")


def test_the_allow_list_takes_names_addresses_and_networks() -> None:
    names, networks = parse_allow(" hooks.corp.example., 127.0.0.1,10.20.0.0/16 ,[::1],, ")
    assert names == {"hooks.corp.example"}
    assert [str(n) for n in networks] == ["127.0.0.1/32", "10.20.0.0/16", "::1/128"]
    assert Settings(_env_file=None).webhook_allow_hosts == ""  # off by default
    for bad in ("*.corp.example", "http://hooks.example", "10.0.0.0/33"):
        with pytest.raises(ValidationError, match="WEBHOOK_ALLOW_HOSTS|webhook_allow_hosts"):
            Settings(_env_file=None, webhook_allow_hosts=bad)

    allowed = Egress("127.0.0.1,10.20.0.0/16,receiver.corp",
                     resolver=lambda host, port: {"receiver.corp": ["10.99.0.1"],
                                                  "other.corp": ["10.20.3.4"],
                                                  "third.corp": ["10.21.0.1"]}[host])
    allowed.check("http://127.0.0.1:9000/hook")
    allowed.check("http://[::ffff:127.0.0.1]:9000/hook")
    allowed.check("http://receiver.corp/hook")  # an allowed name: whatever it resolves to
    allowed.check("http://other.corp/hook")  # resolves into an allowed network
    for refused in ("http://127.0.0.2/hook", "http://third.corp/hook", "http://[::1]/hook"):
        with pytest.raises(EgressRefused):
            allowed.check(refused)


# --- registration -----------------------------------------------------------------------------


def test_registration_resolves_names_and_refuses_any_inside_address(system, client, net,
                                                                     buyer_key) -> None:
    net.names.update({
        "vm.test": ["127.0.0.1"], "private.test": ["10.0.0.7"], "cgnat.test": ["100.64.0.9"],
        "linklocal.test": ["169.254.169.254"], "v6.test": ["::1"], "ula.test": ["fd00::5"],
        "mapped.test": ["::ffff:127.0.0.1"], "nat64.test": ["64:ff9b::7f00:1"],
        "sixtofour.test": ["2002:a9fe:a9fe::1"], "teredo.test": [teredo("8.8.8.8", "10.0.0.1")],
        "mixed.test": [PUBLIC_IP, "192.168.1.1"],  # one inside address is enough to refuse
        "metadata.google.internal": [PUBLIC_IP],  # refused by name, whatever it resolves to
        "public.test": [PUBLIC_IP], "public6.test": ["2606:4700:4700::1111"],
    })
    names = ["vm.test", "private.test", "cgnat.test", "linklocal.test", "v6.test", "ula.test",
             "mapped.test", "nat64.test", "sixtofour.test", "teredo.test", "mixed.test",
             "metadata.google.internal", "nowhere.test", "localhost", "db.localhost"]
    messages = set()
    for host in names:
        r = register(client, buyer_key, f"http://{host}:8080/hook")
        assert r.status_code == 422, (host, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert [e["field"] for e in r.json()["errors"]] == ["url"], r.json()
        messages.add(r.json()["errors"][0]["message"])
    # A name that resolves inside and one that does not resolve get the same answer: a
    # tenant learns nothing about the gateway's internal names.
    assert len(messages) == 1, messages
    for literal in ("[::7f00:1]", "[64:ff9b::7f00:1]", "[2002:7f00:1::]", "100.64.0.1",
                    "224.0.0.1", "[::ffff:7f00:1]", "[64:ff9b:1::808:808]",
                    f"[{teredo('8.8.8.8', '127.0.0.1')}]", "[fe80::1%25eth0]"):
        r = register(client, buyer_key, f"http://{literal}/hook")
        assert r.status_code == 422, (literal, r.text)
        assert [e["field"] for e in r.json()["errors"]] == ["url"], r.json()
    assert client.get("/v1/webhooks", headers=auth(buyer_key)).json()["items"] == []

    for url in ("https://public.test/hook", "https://public6.test:8443/hook",
                "https://8.8.8.8/hook", "https://[64:ff9b::808:808]/hook"):
        assert register(client, buyer_key, url).status_code == 201, url
    assert ("public.test", False) in net.lookups
    assert net.connections == []  # registration resolves; it never connects


# --- delivery ---------------------------------------------------------------------------------


def test_a_name_that_turns_inside_after_registration_reaches_nothing(system, client, net,
                                                                     servers,
                                                                     buyer_key) -> None:
    inside = servers()
    net.names["flip.test"] = [PUBLIC_IP]
    endpoint = registered(client, buyer_key, f"http://flip.test:{inside.port}/hook")
    net.names["flip.test"] = ["127.0.0.1"]  # the tenant's DNS now points inside
    propose_and_accept(system, client)
    webhooks = sender(system)
    assert webhooks.run_once(T0) == 1  # one attempt, refused before any connection
    assert inside.requests == [] and net.connections == []
    oldest = deliveries(client, buyer_key, endpoint["id"])["items"][-1]
    assert (oldest["status"], oldest["attempts"], oldest["last_status_code"]) == \
        ("pending", 1, None)
    assert oldest["last_error"] == NOT_PUBLIC
    assert datetime.fromisoformat(oldest["next_attempt_at"]) == T0 + timedelta(seconds=5)


def test_dns_rebinding_cannot_move_the_connection(system, client, net, servers,
                                                  buyer_key) -> None:
    """The name resolves to a public address for every check and to the loopback for any
    lookup made while connecting (TTL 0, the rebinding attacker's DNS): the delivery goes to
    the checked address, and nothing reaches the loopback receiver."""
    outside, inside = servers(), servers()
    net.routes[PUBLIC_IP] = outside.port  # the public address is, here, the outside server
    net.names["rebind.test"] = lambda connecting: ["127.0.0.1"] if connecting else [PUBLIC_IP]
    url = f"http://rebind.test:{inside.port}/hook"
    endpoint = registered(client, buyer_key, url)
    propose_and_accept(system, client)

    webhooks = sender(system)
    assert webhooks.run_once(T0) == 2
    assert not net.reached(inside.port) and inside.requests == []
    assert [(c[0], c[1]) for c in net.connections] == [(PUBLIC_IP, inside.port)] * 2
    assert [r["headers"]["Host"] for r in outside.requests] == [f"rebind.test:{inside.port}"] * 2
    assert [r["path"] for r in outside.requests] == ["/hook"] * 2
    # one lookup at registration, one per delivery (the check), none to connect
    assert net.lookups == [("rebind.test", False)] * 3
    items = deliveries(client, buyer_key, endpoint["id"])["items"]
    assert [(d["status"], d["last_status_code"]) for d in items] == [("delivered", 204)] * 2


@pytest.mark.parametrize("webhook_allow_hosts", ["127.0.0.1,receiver.corp"])
def test_a_loopback_receiver_needs_the_operator_allow_list(system, client, net, servers,
                                                           buyer_key) -> None:
    receiver = servers()
    net.names["receiver.corp"] = ["127.0.0.1"]
    net.names["elsewhere.corp"] = ["10.0.0.1"]  # resolves inside, off the list
    by_address = registered(client, buyer_key, f"http://127.0.0.1:{receiver.port}/a")
    by_name = registered(client, buyer_key, f"http://receiver.corp:{receiver.port}/b")
    for url in (f"http://127.0.0.2:{receiver.port}/c", f"http://[::1]:{receiver.port}/c",
                f"http://elsewhere.corp:{receiver.port}/c"):
        r = register(client, buyer_key, url)
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "url", url
    propose_and_accept(system, client)
    assert sender(system).run_once(T0) == 4
    assert sorted((r["path"], r["headers"]["Host"]) for r in receiver.requests) == [
        ("/a", f"127.0.0.1:{receiver.port}")] * 2 + [("/b", f"receiver.corp:{receiver.port}")] * 2
    for endpoint in (by_address, by_name):
        items = deliveries(client, buyer_key, endpoint["id"])["items"]
        assert [d["status"] for d in items] == ["delivered"] * 2


@pytest.mark.parametrize("webhook_allow_hosts", ["127.0.0.1"])
def test_redirects_are_not_followed(system, client, net, servers, buyer_key) -> None:
    inside = servers()
    redirector = servers(status=307, headers={
        "Location": f"http://127.0.0.1:{inside.port}/internal"})
    endpoint = registered(client, buyer_key, f"http://127.0.0.1:{redirector.port}/hook")
    propose_and_accept(system, client)
    # Even with a client that would follow redirects, the sender does not.
    following = httpx.Client(follow_redirects=True, timeout=5.0)
    assert sender(system, client=following).run_once(T0) == 1  # held back: order per endpoint
    assert len(redirector.requests) == 1 and inside.requests == []
    oldest = deliveries(client, buyer_key, endpoint["id"])["items"][-1]
    assert (oldest["status"], oldest["last_status_code"], oldest["last_error"]) == \
        ("pending", 307, "HTTP 307")


@pytest.mark.parametrize("webhook_allow_hosts", ["127.0.0.1"])
def test_the_deliveries_view_tells_answers_not_transport_errors(system, client, net, servers,
                                                                buyer_key) -> None:
    answering = servers(status=401)
    closed = free_port()
    endpoints = {name: registered(client, buyer_key, f"http://127.0.0.1:{port}/hook")["id"]
                 for name, port in (("answering", answering.port), ("closed", closed))}
    propose_and_accept(system, client)
    with structlog.testing.capture_logs() as logs:
        assert sender(system).run_once(T0) == 2

    def oldest(name: str) -> dict:
        return deliveries(client, buyer_key, endpoints[name])["items"][-1]

    assert (oldest("answering")["last_status_code"], oldest("answering")["last_error"]) == \
        (401, "HTTP 401")  # it answered, and with what
    assert (oldest("closed")["last_status_code"], oldest("closed")["last_error"]) == \
        (None, NO_RESPONSE)  # not "Connection refused": a closed port looks like a filtered one
    attempts = {e["delivery"]: e for e in logs if e["event"] == "webhook_attempt"}
    detail = attempts[oldest("closed")["id"]]["detail"]
    assert "ConnectError" in detail  # the operator's log keeps the transport detail
    assert attempts[oldest("closed")["id"]]["address"] == "127.0.0.1"

    # A timeout is "no response" too, and how long an attempt took does not show: it is
    # recorded at the time it started (a filtered port's timeout and a closed port's refusal
    # give the same next attempt).
    clock = [T0 + timedelta(seconds=5)]
    started: dict[int, datetime] = {}
    ports = {"answering": answering.port, "closed": closed}

    def hangs(request: httpx.Request) -> httpx.Response:
        started[request.url.port] = clock[0]
        clock[0] += timedelta(seconds=4.9)  # the attempt takes 4.9 s, then times out
        raise httpx.ConnectTimeout("timed out", request=request)

    slow = sender(system, client=httpx.Client(transport=httpx.MockTransport(hangs)),
                  clock=lambda: clock[0])
    assert slow.run_once() == 2
    for name in endpoints:
        item = oldest(name)
        assert (item["attempts"], item["last_status_code"], item["last_error"]) == \
            (2, None, NO_RESPONSE)
        assert datetime.fromisoformat(item["next_attempt_at"]) == \
            started[ports[name]] + slow.backoff(2)

    # A transport error stored by an earlier version is shown as "no response" too.
    with system.gateway.session_factory.begin() as session:
        row = session.scalar(select(WebhookDeliveryRow).where(
            WebhookDeliveryRow.id == oldest("closed")["id"]))
        row.last_error = "ConnectError: [Errno 111] Connection refused"
    assert oldest("closed")["last_error"] == NO_RESPONSE


def _tls_contexts(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with a certificate for `name` from a test CA, client context trusting
    that CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)

    def cert(subject: str, key, issuer: str, issuer_key, ca: bool):  # noqa: ANN001, ANN202
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(hours=1))
                   .not_valid_after(now + timedelta(hours=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca = cert("dvp test CA", ca_key, "dvp test CA", ca_key, True)
    leaf = cert(name, leaf_key, "dvp test CA", ca_key, False)
    pem = serialization.Encoding.PEM
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(pem) + leaf_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "leaf.pem")
    client = ssl.create_default_context(cadata=ca.public_bytes(pem).decode())
    return server, client


def test_https_goes_to_the_checked_address_and_verifies_the_url_host(
        system, client, net, servers, buyer_key, tmp_path) -> None:
    server_tls, trusting = _tls_contexts(tmp_path, "hooks.test")
    receiver = servers(tls=server_tls)
    net.routes[PUBLIC_IP] = receiver.port
    net.names["hooks.test"] = [PUBLIC_IP]
    net.names["impostor.test"] = [PUBLIC_IP]  # same address, a name the certificate lacks
    good = registered(client, buyer_key, "https://hooks.test/hook")
    bad = registered(client, buyer_key, "https://impostor.test/hook")
    propose_and_accept(system, client)
    webhooks = sender(system, client=httpx.Client(verify=trusting, timeout=5.0))
    assert webhooks.run_once(T0) == 3  # hooks.test twice; impostor.test once, held back
    assert [(c[0], c[1]) for c in net.connections] == [(PUBLIC_IP, 443)] * 3
    # SNI and Host name the URL's host; the certificate was verified for it.
    assert receiver.server_names.count("hooks.test") == 2
    assert [r["headers"]["Host"] for r in receiver.requests] == ["hooks.test"] * 2
    assert [d["status"] for d in deliveries(client, buyer_key, good["id"])["items"]] == \
        ["delivered"] * 2
    refused = deliveries(client, buyer_key, bad["id"])["items"][-1]
    assert (refused["status"], refused["last_error"]) == ("pending", NO_RESPONSE)
    assert "impostor.test" in receiver.server_names  # it got as far as the handshake


# --- signatures and replays -------------------------------------------------------------------


def test_the_readme_shows_a_receiver_rejecting_replays(system, client, buyer_key) -> None:
    section = re.search(r"^### Webhooks\n(.*?)(?=^## )", README.read_text(), re.S | re.M)
    assert section, "README: no '### Webhooks' subsection"
    snippet = re.search(r"```python\n(.*?)```", section.group(1), re.S)
    assert snippet, "README: the Webhooks subsection has no Python receiver snippet"
    receiver: dict = {}
    exec(compile(snippet.group(1), "README.md", "exec"), receiver)  # noqa: S102
    verify, tolerance = receiver["verify"], receiver["TOLERANCE"]
    assert 0 < tolerance <= 600

    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        request.read()
        sent.append(request)
        return httpx.Response(204)

    secret = registered(client, buyer_key, "https://8.8.8.8/hook")["secret"]
    propose_and_accept(system, client)
    webhooks = sender(system, client=httpx.Client(transport=httpx.MockTransport(record)))
    assert webhooks.run_once(T0) == 2
    request = sent[0]
    headers, body = request.headers, request.content
    at = int(headers["X-DVP-Timestamp"])
    assert at == int(T0.timestamp())

    assert verify(secret, headers, body, now=at + 5)
    assert verify(secret, headers, body, now=at + tolerance)
    assert not verify(secret, headers, body, now=at + tolerance + 1)  # a replay, too late
    assert not verify(secret, headers, body, now=at - tolerance - 1)  # from the future
    assert not verify(secret, headers, body + b" ", now=at)  # tampered body
    assert not verify("whsec_other", headers, body, now=at)  # another endpoint's secret
    # The timestamp is signed: moving it (to replay an old body as fresh) breaks the signature.
    moved = headers.copy()
    moved["X-DVP-Timestamp"] = str(at + 3600)
    assert not verify(secret, moved, body, now=at + 3600)
    body_only = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-DVP-Signature"] != body_only
