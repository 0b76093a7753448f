"""`dvp-gateway demo` as an enterprise runs it: two trades through the HTTP API against a
running system (relayer and block producer in threads), one settled and one refunded, with
balances checked on both chains."""

from __future__ import annotations

from fastapi.testclient import TestClient

from gateway.config import Settings
from gateway.demo import Api, money, run_demo
from gateway.domain.policy import TimingPolicy
from gateway.runner import build_system

# Blocks come every few milliseconds (chain time runs ahead of the wall clock), so the
# refunded trade's deadlines pass in seconds; the margin the demo asks for is this policy's.
FAST = TimingPolicy(payment_confirmations=0, business_confirmations=0, payment_block_time=1,
                    business_block_time=1, reaction_budget=10, drift_allowance=0)


def test_demo_settles_one_trade_and_refunds_the_other(tmp_path, database_url) -> None:
    system = build_system(Settings(_env_file=None), tmp_path / "run", policy=FAST,
                          database_url=database_url)
    try:
        demo = system.demo
        buyer, seller = demo["enterprises"]["buyer"], demo["enterprises"]["seller"]
        token, titles = system.devnet.payment_token, system.devnet.titles
        before = {who["payment_address"]: token.functions.balanceOf(who["payment_address"])
                  .call() for who in (buyer, seller)}
        system.start_relayer(0.02)
        system.start_block_producer(0.02)
        lines: list[str] = []
        with TestClient(system.app) as client:
            api = Api(client, buyer["api_key"], seller["api_key"])
            settled, refunded = run_demo(api, demo, lines.append, timeout=90)
    finally:
        system.close()
    assert (settled["phase"], refunded["phase"]) == ("settled", "payment_refunded")
    assert token.functions.balanceOf(buyer["payment_address"]).call() == \
        before[buyer["payment_address"]] - 123456  # paid once, the other payment came back
    assert token.functions.balanceOf(seller["payment_address"]).call() == \
        before[seller["payment_address"]] + 123456
    assert titles.functions.ownerOf(int(settled["delivery"]["token_id"])).call() == \
        buyer["business_address"]
    assert titles.functions.ownerOf(int(refunded["delivery"]["token_id"])).call() == \
        seller["business_address"]
    text = "\n".join(lines)
    assert "delivered -> settled" in text and "delivery_refunded -> payment_refunded" in text
    assert "business chain 71002 block" in text and "payment chain 71001 block" in text
    assert f"for {money(123456)}" in text


def test_money_is_exact_in_base_units() -> None:
    assert money(123456) == "1,234.56"
    assert money(5) == "0.05"
    assert money(10**24 + 1) == "10,000,000,000,000,000,000,000.01"  # no float rounding
    assert money(-250) == "-2.50"
