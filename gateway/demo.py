"""`dvp-gateway demo`: complete trades driven through the HTTP API, as an enterprise would.

Two trades between the demo enterprises: one settles (the buyer takes delivery and the
gateway releases the payment), one is refunded (the buyer never performs; after the
deadlines both legs go back). Progress is shown as it happens; each trade's timeline (which
chain, block and transaction, what changed) is printed at the end.

The demo drives a gateway that is already running: the one `dvp-gateway run` (`make run`)
started, at `DEFAULT_API` unless told another URL, with the demo enterprises' keys from the
`demo.json` that `run` wrote in its workdir (`connect`). When nothing answers there it says
so and stops; `dvp-gateway demo --own-gateway` starts a gateway of its own instead.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from gateway.logs import trade_ref

# Where `dvp-gateway run` (and so `make run`) listens by default.
DEFAULT_API = "http://127.0.0.1:8000"


class DemoFailed(RuntimeError):
    pass


@dataclass
class Api:
    client: httpx.Client
    buyer_key: str
    seller_key: str

    def call(self, method: str, path: str, key: str, **kwargs) -> dict:  # noqa: ANN003
        response = self.client.request(method, path,
                                       headers={"Authorization": f"Bearer {key}",
                                                **kwargs.pop("headers", {})}, **kwargs)
        if response.status_code >= 400:
            raise DemoFailed(f"{method} {path}: {response.status_code} {response.text}")
        return response.json()


def run_demo(api: Api, demo: dict, say: Callable[[str], None], *, refund: bool = True,
             timeout: float = 180) -> list[dict]:
    enterprises = demo["enterprises"]
    buyer, seller = enterprises["buyer"], enterprises["seller"]
    titles = seller["titles"]
    _balances(api, say)
    results = []
    scenarios = [("settles", True)] + ([("refunds", False)] if refund else [])
    used = {t["token_id"] for t in _list(api, api.seller_key)}
    free = [t for t in titles if t["token_id"] not in used]
    if len(free) < len(scenarios):
        raise DemoFailed("the demo seller has no unused title left: restart `dvp-gateway run`")
    for (name, perform), title in zip(scenarios, free, strict=False):
        say(f"\n== trade that {name}: title #{title['token_id']} for {money(123456)} ==")
        clock = api.call("GET", "/v1/clock", seller["api_key"])
        chain_now = int(clock["chain_time"])
        # Deadlines by chain time: a short delivery window so the refund is quick to watch,
        # and exactly the safety margin the gateway requires between the two deadlines.
        window = 600 if perform else 15
        margin = clock["required_margin"] + (300 if perform else 5)
        body = {"role": "seller", "counterparty": buyer["id"],
                "payment": {"token": demo["payment_token"], "amount": "123456"},
                "delivery": title,
                "deadlines": {"delivery": chain_now + window,
                              "payment": chain_now + window + margin}}
        trade = api.call("POST", "/v1/trades", api.seller_key, json=body,
                         headers={"Idempotency-Key": str(uuid.uuid4())})
        trade_id = trade["id"]
        say(f"seller proposed trade {trade_ref(trade_id)}  phase {trade['phase']}")
        api.call("POST", f"/v1/trades/{trade_id}/accept", api.buyer_key)
        say("buyer accepted: the gateway locks the buyer's payment, checks it on chain, and "
            "locks the seller's title")
        _wait(api, trade_id, {"delivery_locked"}, say, timeout)
        if perform:
            api.call("POST", f"/v1/trades/{trade_id}/take-delivery", api.buyer_key)
            say("buyer takes delivery: its secret goes on the business chain")
            final = _wait(api, trade_id, {"settled"}, say, timeout)
        else:
            say("buyer does nothing: waiting for the deadlines to pass (chain time)")
            final = _wait(api, trade_id, {"payment_refunded", "expired"}, say, timeout)
        _timeline(final, say, {demo.get("payment_chain_id"): "payment",
                               demo.get("business_chain_id"): "business"})
        results.append(final)
    say("")
    _balances(api, say)
    return results


def connect(url: str, workdir: Path) -> dict:
    """The running gateway at `url` and its demo keys (`workdir/demo.json`, as `dvp-gateway
    run --workdir` wrote them): what `demo.json` holds, once the gateway has answered and
    recognised the keys. DemoFailed, saying what to do, when it does not."""
    hint = ("start one in another terminal with `make run` (`dvp-gateway run`), pass --api "
            "URL for one elsewhere, or run `dvp-gateway demo --own-gateway` to start a gateway "
            "of its own")
    try:
        healthy = httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        healthy = False
    if not healthy:
        raise DemoFailed(f"no gateway is running at {url}: {hint}")
    keys = workdir / "demo.json"
    if not keys.exists():
        raise DemoFailed(f"a gateway answers at {url} but {keys} does not exist: pass the "
                         "--workdir its `dvp-gateway run` was started with")
    info = json.loads(keys.read_text())
    me = httpx.get(f"{url}/v1/me", timeout=10, headers={
        "Authorization": f"Bearer {info['enterprises']['buyer']['api_key']}"})
    if me.status_code == 401:
        raise DemoFailed(f"the gateway at {url} does not know the demo keys in {keys} (left "
                         "by an earlier `dvp-gateway run`?): pass the --workdir of the running "
                         "one")
    if me.status_code != 200:
        raise DemoFailed(f"{url} answers /v1/me with HTTP {me.status_code}: is it a "
                         "dvp-gateway?")
    return info


def money(units: int) -> str:
    """Integer base units of the 2-decimal demo currency, exactly (no floats)."""
    sign = "-" if units < 0 else ""
    units = abs(units)
    return f"{sign}{units // 100:,}.{units % 100:02d}"


def _balances(api: Api, say: Callable[[str], None]) -> None:
    for role, key in (("buyer ", api.buyer_key), ("seller", api.seller_key)):
        me = api.call("GET", "/v1/me", key)
        balances = me.get("balances") or {}
        say(f"{role} {me['name']} {me['payment_address']}: "
            f"{money(int(balances.get('payment_token', 0)))} in payment tokens, "
            f"{balances.get('title_documents', 0)} title document(s)")


def _list(api: Api, key: str) -> list[dict]:
    trades = api.call("GET", "/v1/trades", key, params={"limit": 100})["items"]
    return [t["delivery"] for t in trades]


def _wait(api: Api, trade_id: str, phases: set[str], say: Callable[[str], None],
          timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        trade = api.call("GET", f"/v1/trades/{trade_id}", api.buyer_key)
        if trade["phase"] != last:
            say(f"  … {trade['phase']}")
            last = trade["phase"]
        if trade["phase"] in phases:
            return trade
        time.sleep(0.25)
    raise DemoFailed(f"trade {trade_ref(trade_id)} did not reach {sorted(phases)} in "
                     f"{timeout} s")


def _timeline(trade: dict, say: Callable[[str], None], names: dict) -> None:
    say("  timeline:")
    for event in trade.get("timeline") or []:
        where = "API "
        if event.get("block_number") is not None:
            chain = names.get(event["chain_id"]) or "chain"
            where = (f"{chain} chain {event['chain_id']} block {event['block_number']} "
                     f"tx {event['tx_hash'][:14]}… ")
        detail = event["detail"]
        what = (f"{detail.get('old') or 'new'} -> {detail.get('new')}"
                if event["kind"] == "EventPhaseChanged" else event["kind"])
        say(f"    {where}{what}")
