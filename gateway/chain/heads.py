"""New-block notifications over WebSocket (`eth_subscribe` "newHeads"): a nudge, never a source.

The relayer polls over HTTP every `DVP_POLL_INTERVAL` seconds and reads everything it acts on
that way. With a node's WebSocket endpoint configured it also steps as soon as a chain has a
new block, so the poll interval can be long (little load on the nodes) without making
settlement wait for it. A notification carries nothing the relayer trusts: it only wakes the
loop, which then polls as usual. A lost connection is logged and retried with backoff; polling
goes on meanwhile, so losing the socket costs latency, never correctness.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger("gateway.heads")

MAX_BACKOFF = 30.0


class HeadWatcher:
    """A thread that calls `on_head()` for every new block a WebSocket endpoint announces."""

    def __init__(self, name: str, url: str, on_head: Callable[[], None]) -> None:
        self.name = name
        self.url = url
        self.on_head = on_head
        self.heads_seen = 0
        self._stop = threading.Event()
        self._connection = None  # the open socket, so that stop() can close it
        self._thread = threading.Thread(target=self._run, name=f"heads-{name}", daemon=True)

    def start(self) -> HeadWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        connection = self._connection
        if connection is not None:
            connection.close()
        self._thread.join(10)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._watch()
                backoff = 0.5
            except Exception as exc:  # noqa: BLE001 - the node or the network: retry
                if self._stop.is_set():
                    break
                log.warning("head_watch_lost", chain=self.name, url=self.url,
                            error=f"{type(exc).__name__}: {exc}"[:300], retry_in=backoff)
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _watch(self) -> None:
        from websockets.sync.client import connect

        with connect(self.url, open_timeout=10, proxy=None) as connection:
            self._connection = connection
            try:
                connection.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe",
                                            "params": ["newHeads"]}))
                reply = json.loads(connection.recv(timeout=10))
                if "error" in reply:
                    raise RuntimeError(f"eth_subscribe refused: {reply['error']}")
                subscription = reply["result"]
                log.info("head_watch_connected", chain=self.name, url=self.url)
                for message in connection:
                    note = json.loads(message)
                    if note.get("params", {}).get("subscription") == subscription:
                        self.heads_seen += 1
                        self.on_head()
            finally:
                self._connection = None
