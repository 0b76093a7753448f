"""New-block notifications over a node's WebSocket (`gateway.chain.heads`): every head wakes
the relayer; a node that goes away is reconnected to, with backoff, once it is back."""

from __future__ import annotations

import threading

from structlog.testing import capture_logs

from gateway.chain.heads import HeadWatcher
from tests.postgres.waiting import wait_for


def test_heads_wake_the_relayer_and_the_watch_survives_a_node_restart(anvil_devnet) -> None:
    chain = anvil_devnet.payment
    woken = threading.Event()
    with capture_logs() as logs:
        watcher = HeadWatcher("payment", chain.node.ws_url, woken.set).start()
        try:
            wait_for(lambda: any(e["event"] == "head_watch_connected" for e in list(logs)),
                     timeout=30, what="subscribed")
            chain.mine()
            assert woken.wait(10)
            seen = watcher.heads_seen
            assert seen >= 1

            chain.node.restart(kill=True)  # same port; the socket dies with the process
            wait_for(lambda: sum(e["event"] == "head_watch_connected" for e in list(logs)) >= 2,
                     timeout=60, what="subscribed again")
            assert any(e["event"] == "head_watch_lost" for e in list(logs))
            woken.clear()
            chain.mine()
            assert woken.wait(10)
            assert watcher.heads_seen > seen
        finally:
            watcher.stop()
    assert not watcher._thread.is_alive()  # noqa: SLF001 - stopped, not left running
