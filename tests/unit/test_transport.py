"""The node transport (gateway.chain.transport) against a small local HTTP server: one
kept-alive connection per thread, a connection the server closed is replaced, an error status
and a refused connection are errors the relayer reads as "unavailable", and a proxy or a URL
with credentials is honoured."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from web3 import Web3

from gateway.chain.sending import SEND_UNAVAILABLE, classify_send_error
from gateway.chain.transport import NodeHTTPError, NodeProvider, _Connections


class _Node(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    seen: list[tuple[int, str | None, str]] = []  # (client port, Authorization, method)
    status = 200
    close_after = False

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        calls = request if isinstance(request, list) else [request]
        type(self).seen.append((self.client_address[1], self.headers.get("Authorization"),
                                "+".join(c["method"] for c in calls)))
        answers = [{"jsonrpc": "2.0", "id": c["id"], "result": "0x2a"} for c in calls]
        body = json.dumps(answers if isinstance(request, list) else answers[0]).encode()
        self.send_response(type(self).status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if type(self).close_after:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def node() -> Iterator[tuple[str, type[_Node]]]:
    handler = type("Node", (_Node,), {"seen": [], "status": 200, "close_after": False})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/rpc", handler
    finally:
        server.shutdown()
        server.server_close()


def test_requests_from_one_thread_share_one_connection(node) -> None:  # noqa: ANN001
    url, handler = node
    w3 = Web3(NodeProvider(url, timeout=5))
    assert [w3.provider.make_request("eth_blockNumber", [])["result"] for _ in range(3)] == \
        ["0x2a"] * 3
    assert [a["result"] for a in w3.provider.make_batch_request(
        [("eth_chainId", []), ("eth_blockNumber", [])])] == ["0x2a", "0x2a"]
    assert [m for _, _, m in handler.seen] == ["eth_blockNumber"] * 3 + \
        ["eth_chainId+eth_blockNumber"]
    assert len({port for port, _, _ in handler.seen}) == 1  # kept alive


def test_each_thread_has_its_own_connection(node) -> None:  # noqa: ANN001
    url, handler = node
    provider = NodeProvider(url, timeout=5)
    threads = [threading.Thread(target=provider.make_request, args=("eth_blockNumber", []))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({port for port, _, _ in handler.seen}) == 3


def test_a_connection_the_server_closed_is_replaced(node) -> None:  # noqa: ANN001
    url, handler = node
    handler.close_after = True  # every answer closes its connection
    provider = NodeProvider(url, timeout=5)
    for _ in range(3):
        assert provider.make_request("eth_blockNumber", [])["result"] == "0x2a"
    assert len({port for port, _, _ in handler.seen}) == 3


def test_an_idle_connection_dropped_by_the_server_is_retried_once(node) -> None:  # noqa: ANN001
    url, handler = node
    connections = _Connections(url, timeout=5)
    connections.make_post_request(url, b'{"jsonrpc":"2.0","id":1,"method":"a","params":[]}')
    connections._connection().sock.close()  # as if the server had timed it out
    connections._connection().sock = _DeadSocket()
    body = connections.make_post_request(url, b'{"jsonrpc":"2.0","id":2,"method":"b","params":[]}')
    assert json.loads(body)["result"] == "0x2a"
    assert [m for _, _, m in handler.seen] == ["a", "b"]


class _DeadSocket:
    """A socket whose peer has gone: sending fails as a reset connection does."""

    def sendall(self, data: bytes) -> None:
        raise ConnectionResetError("reset by peer")

    def close(self) -> None:
        pass


def test_an_error_status_is_an_unavailable_node(node) -> None:  # noqa: ANN001
    url, handler = node
    handler.status = 503
    provider = NodeProvider(url, timeout=5)
    provider.exception_retry_configuration.backoff_factor = 0  # retried, as requests' was
    with pytest.raises(NodeHTTPError, match="HTTP 503") as raised:
        provider.make_request("eth_blockNumber", [])
    assert classify_send_error(raised.value) == SEND_UNAVAILABLE
    assert len(handler.seen) == provider.exception_retry_configuration.retries


def test_a_refused_connection_is_an_unavailable_node() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        provider = NodeProvider(f"http://127.0.0.1:{port}", timeout=5)
        with pytest.raises(ConnectionError) as raised:
            provider.make_request("eth_sendRawTransaction", ["0x00"])
    assert classify_send_error(raised.value) == SEND_UNAVAILABLE


def test_credentials_in_the_url_are_sent_as_basic_authorization(node) -> None:  # noqa: ANN001
    url, handler = node
    NodeProvider(url.replace("http://", "http://ops:p%40ss@"), timeout=5).make_request(
        "eth_blockNumber", [])
    assert handler.seen[0][1] == "Basic " + base64.b64encode(b"ops:p@ss").decode()


def test_an_environment_proxy_keeps_requests_transport(node, monkeypatch) -> None:  # noqa: ANN001
    url, _ = node
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "")
    assert not isinstance(NodeProvider(url)._request_session_manager, _Connections)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert isinstance(NodeProvider(url)._request_session_manager, _Connections)


def test_only_http_urls() -> None:
    with pytest.raises(ValueError, match="not an http"):
        _Connections("ws://127.0.0.1:8545", timeout=1)


def test_https_verifies_against_requests_bundle(monkeypatch) -> None:  # noqa: ANN001
    import ssl

    import certifi

    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    connections = _Connections("https://node.invalid/rpc?key=1", timeout=1)
    assert (connections.port, connections.path) == (443, "/rpc?key=1")
    assert connections.tls.verify_mode == ssl.CERT_REQUIRED and connections.tls.check_hostname
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/bundle.pem")
    with pytest.raises(FileNotFoundError):  # the override is read, as requests reads it
        _Connections("https://node.invalid", timeout=1)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    assert _Connections("https://node.invalid", timeout=1).tls is not None


class _BatchProvider:
    """A provider answering one JSON-RPC batch as it is told to (an answer per request, a
    shorter list, or an exception)."""

    def __init__(self, answer) -> None:  # noqa: ANN001
        self.answer = answer
        self.requests: list = []

    def make_batch_request(self, requests):  # noqa: ANN001, ANN201
        self.requests.append(requests)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer(requests) if callable(self.answer) else self.answer


def test_a_batch_of_sends_tells_each_transactions_refusal() -> None:
    """`send_raw_batch`: every transaction in one request, in order; the node refusing one
    (nonce too low) is that one's refusal only; a node that does not answer, or answers
    other than once per transaction, refuses them all (the executor then settles each from
    the chain)."""
    from types import SimpleNamespace

    from gateway.chain.sending import SEND_NONCE_TOO_LOW, send_raw_batch

    raws = [b"\x02\x01", b"\x02\x02", b"\x02\x03"]
    provider = _BatchProvider(lambda requests: [
        {"jsonrpc": "2.0", "id": n, "error": {"code": -32000, "message": "nonce too low"}}
        if n == 1 else {"jsonrpc": "2.0", "id": n, "result": "0x" + "ab" * 32}
        for n, _ in enumerate(requests)])
    refused = send_raw_batch(SimpleNamespace(provider=provider), raws)
    assert provider.requests == [[("eth_sendRawTransaction", ["0x" + raw.hex()])
                                  for raw in raws]]
    assert refused[0] is None and refused[2] is None
    assert classify_send_error(refused[1]) == SEND_NONCE_TOO_LOW

    down = ConnectionRefusedError("refused")
    assert send_raw_batch(SimpleNamespace(provider=_BatchProvider(down)), raws) == [down] * 3
    assert classify_send_error(down) == SEND_UNAVAILABLE
    short = send_raw_batch(SimpleNamespace(provider=_BatchProvider([{"result": "0x"}])), raws)
    assert len(short) == 3 and all(isinstance(r, Exception) for r in short)
