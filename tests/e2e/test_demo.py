"""`dvp-gateway demo` as an enterprise runs it: two trades through the HTTP API against a
running system (relayer and block producer in threads), one settled and one refunded, with
balances checked on both chains."""

from __future__ import annotations

import threading

from fastapi.testclient import TestClient

from gateway.config import Settings
from gateway.demo import Api, money, run_demo
from gateway.domain.policy import TimingPolicy
from gateway.runner import build_system

# Chain time runs ahead of the wall clock (a block every few milliseconds), so the refunded
# trade's deadlines pass in seconds; the margin the demo asks for is this policy's.
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
        _start_lockstep_blocks(system)
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


def _start_lockstep_blocks(system) -> threading.Thread:  # noqa: ANN001
    """Mine an empty block on both chains whenever the relayer has caught up with both heads
    and has no effect left to do: chain time then never outruns the gateway, however loaded
    the machine is (a wall-clock producer would let a deadline pass before the relayer acts,
    which is a slow machine, not a bug). A stuck effect stops time for at most 2 s."""
    from gateway.db.models import CursorRow
    from gateway.db.repository import Repository

    chains = (system.devnet.payment, system.devnet.business)

    def idle() -> bool:
        with system.gateway.session_factory() as session:
            if Repository(session).outbox_depth():
                return False
            for chain in chains:
                cursor = session.get(CursorRow, chain.chain_id)
                if cursor is None or cursor.block_number < chain.w3.eth.block_number:
                    return False
        return True

    def produce() -> None:
        waited = 0.0
        while not system.stop.wait(0.005):
            waited += 0.005
            if idle() or waited > 2:
                waited = 0.0
                for chain in chains:
                    chain.w3.provider.make_request("evm_mine", [1])

    thread = threading.Thread(target=produce, name="lockstep-blocks", daemon=True)
    thread.start()
    return thread


def test_money_is_exact_in_base_units() -> None:
    assert money(123456) == "1,234.56"
    assert money(5) == "0.05"
    assert money(10**24 + 1) == "10,000,000,000,000,000,000,000.01"  # no float rounding
    assert money(-250) == "-2.50"
