"""JSON-RPC over HTTP to a node on kept-alive `http.client` connections, one per thread.

web3's HTTPProvider posts through `requests`, which costs about 2 ms of CPU a request here:
it reads the whole environment for proxy settings on every request and merges settings through
several layers. A node request is the API's and the relayer's most frequent I/O (an API
proposal reads both chains' heads and its titles), and a kept-alive `http.client` connection
does the same POST for about 0.2 ms. `NodeProvider` is web3's HTTPProvider with that
transport underneath, so everything above it (web3's encoding, its request cache, retries,
batches, `gateway.chain.rpc`) is unchanged.

Where an environment proxy applies to the node's URL (HTTP_PROXY/HTTPS_PROXY and NO_PROXY, read
once), requests' transport is kept: it knows proxies, this does not. TLS is verified against
the bundle requests would use (REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, else certifi's). A user and
password in the URL are sent as Basic authorization, as requests sends them.
"""

from __future__ import annotations

import base64
import http.client
import os
import ssl
import threading
import urllib.request
from typing import Any
from urllib.parse import unquote, urlsplit

from web3 import HTTPProvider
from web3.providers.rpc.utils import ExceptionRetryConfiguration

# A connection the server closed while idle fails on its next request this way; the request
# is sent once more on a new connection (JSON-RPC reads are safe to repeat, and a repeated
# eth_sendRawTransaction is answered "already known": gateway.chain.sending).
_STALE = (http.client.RemoteDisconnected, http.client.BadStatusLine, BrokenPipeError,
          ConnectionResetError, ConnectionAbortedError)


class NodeHTTPError(ConnectionError):
    """The node's HTTP server answered with an error status (not a JSON-RPC error): the node
    is unavailable for this request, as when it does not answer (gateway.chain.sending)."""


class NodeProvider(HTTPProvider):
    """web3's HTTPProvider posting on this module's kept-alive connections (requests' where
    an environment proxy applies to the URL)."""

    def __init__(self, url: str, *, timeout: float = 30) -> None:
        super().__init__(url, request_kwargs={"timeout": timeout})
        if not _proxied(url):
            # web3 retries what requests raised for a timeout or an error status (not a refused
            # connection): the same failures of this transport.
            self.exception_retry_configuration = ExceptionRetryConfiguration(
                errors=(TimeoutError, NodeHTTPError))
            self._request_session_manager = _Connections(url, timeout)  # type: ignore[assignment]


class _Connections:
    """The part of web3's HTTPSessionManager that HTTPProvider calls (`make_post_request`),
    over one kept-alive connection per thread to one URL."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.timeout = timeout
        self.auth = None
        if parts.username is not None:
            token = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.auth = "Basic " + base64.b64encode(token.encode()).decode()
        self.tls = _tls_context() if parts.scheme == "https" else None  # None: plain HTTP
        self.local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self.local, "connection", None)
        if connection is None:
            if self.tls is not None:
                connection = http.client.HTTPSConnection(self.host, self.port,
                                                         timeout=self.timeout, context=self.tls)
            else:
                connection = http.client.HTTPConnection(self.host, self.port,
                                                        timeout=self.timeout)
            self.local.connection = connection
        return connection

    def make_post_request(self, endpoint_uri: str, data: bytes | str, *,
                          headers: dict[str, str] | None = None, **_: Any) -> bytes:
        """POST `data` to the node; the response body. An error status raises NodeHTTPError;
        a timeout TimeoutError; a refused or broken connection ConnectionError."""
        body = data.encode() if isinstance(data, str) else data
        sent = {"Content-Type": "application/json", **(headers or {})}
        if self.auth is not None:
            sent["Authorization"] = self.auth
        for attempt in (1, 2):
            connection = self._connection()
            fresh = connection.sock is None
            try:
                connection.request("POST", self.path, body, sent)
                response = connection.getresponse()
                content = response.read()
            except _STALE:
                connection.close()
                if fresh or attempt == 2:
                    raise
                continue
            except BaseException:
                connection.close()  # a half-read response would poison the next request
                raise
            if not 200 <= response.status < 300:
                raise NodeHTTPError(f"{self.url}: HTTP {response.status} {response.reason}")
            return content
        raise AssertionError("unreachable")


def _proxied(url: str) -> bool:
    """Whether requests would send a request to `url` through an environment proxy."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(parts.hostname or "")


def _tls_context() -> ssl.SSLContext:
    """The CA bundle requests verifies against, with the same environment overrides."""
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if not bundle:
        import certifi

        bundle = certifi.where()
    if os.path.isdir(bundle):
        return ssl.create_default_context(capath=bundle)
    return ssl.create_default_context(cafile=bundle)
