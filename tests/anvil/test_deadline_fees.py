"""Deadlines on a real node (issue 10). A payment claim near T_pay is priced by the time left:
its offer rises to the fee cap by the last moment a claim can still be final, whatever the
replacement delay, and an alert says when even the cap is below the base fee (the claim goes
out once the base fee falls back). A managed buyer's own secret is never revealed by a
delivery claim that the node's latest block leaves no time to be final before T_deliver."""

from __future__ import annotations

from dataclasses import replace

from prometheus_client import REGISTRY
from sqlalchemy import select
from structlog.testing import capture_logs

from gateway.chain.client import Fees
from gateway.chain.devnet import BUYER, RELAYER
from gateway.chain.htlc import GAS_BATCH_BASE, GAS_BATCH_PER_LOCK, GAS_CLAIM
from gateway.db.models import AttemptRow
from gateway.db.repository import Repository
from gateway.domain.trade import ActionTakeDelivery
from tests.anvil.test_sending import NEVER, _assert_settled, _attempts, _delivered, _fees, _world
from tests.integration.harness import TEST_POLICY, World, make_gateway

GWEI = 10**9
# TEST_POLICY: the window runs from T_pay - required_margin to T_pay - claim_lead_time.
START = TEST_POLICY.required_margin  # 32 s before T_pay
LAST = TEST_POLICY.claim_lead_time  # 1 s before T_pay
# A full block is full of other transactions, as on a real chain, not the node's block gas
# limit lowered around it: that limit is node-wide state, the pool checks every broadcast
# against it, and anvil writes back the limit it read when it started a block once the block
# is done, so any block built meanwhile brings a lowered limit back after its restore. The
# relayer's claim is then refused ("intrinsic gas too high -- tx.gas_limit >
# env.block.gas_limit"), not replaced on schedule, and never mined.
# Fillers call a contract that burns all the gas it is given, from a development account no
# role uses, priced far above any claim (the node fills a block best price first) with the
# node's own suggested tip (so the relayer's suggestion does not change).
BURNER = "0x" + "00" * 19 + "b0"
BURN_CODE = "0x5b600056"  # JUMPDEST PUSH1 0 JUMP
FILLER = 9  # devnet accounts 0..3 are the issuer, buyer, seller and relayer
FILLERS = 2  # each under a transaction's gas cap (EIP-7825, 2**24)
FILLER_FEES = Fees(1_000 * GWEI, GWEI)
ROOM = min(GAS_CLAIM, GAS_BATCH_BASE + GAS_BATCH_PER_LOCK) - 1  # gas left: no claim fits


def _claim_pending(world: World, cap: int):  # noqa: ANN202
    """A delivered trade whose payment claim waits in the payment node's pool (automine off),
    offered at 2 x 1 gwei + 1 gwei, well before its deadline window; replacements only after
    an hour (`NEVER`)."""
    payment = world.devnet.payment
    trade, before = _delivered(world)
    payment.client.fee_cap = cap
    _block(payment, base_fee=GWEI)
    world.gateway.relayer.step()  # sees the secret, sends the claim
    (claim,) = _attempts(world)
    assert payment.pending_transactions() == [bytes.fromhex(claim.tx_hash)]
    assert _fees(claim).max_fee_per_gas < cap // 2
    return trade, before


def _block(chain, *, base_fee: int, at: int | None = None, full: bool = False) -> None:  # noqa: ANN001
    """Mine one block with this base fee (at this time), and check on chain that it is the
    next block and the one asked for; `full`: fillers use up its gas (no room for any claim),
    they are all it holds."""
    number = chain.w3.eth.block_number
    fillers = _fillers(chain) if full else []
    chain.rpc("anvil_setNextBlockBaseFeePerGas", [hex(base_fee)])
    if at is not None:
        chain.set_next_block_timestamp(at)
    chain.mine()
    block = chain.w3.eth.get_block("latest")
    assert (block["number"], block["baseFeePerGas"]) == (number + 1, base_fee), \
        (number, dict(block))
    assert at is None or block["timestamp"] == at, (at, dict(block))
    if full:
        assert [bytes(h) for h in block["transactions"]] == fillers, dict(block)
        assert block["gasLimit"] - block["gasUsed"] <= ROOM, dict(block)


def _fillers(chain) -> list[bytes]:  # noqa: ANN001
    """Send the transactions that fill the next block (see FILLER_FEES); their hashes."""
    chain.rpc("anvil_setCode", [BURNER, BURN_CODE])
    sender = chain.accounts[FILLER]
    nonce = chain.w3.eth.get_transaction_count(sender.address, "pending")
    gas = (chain.w3.eth.get_block("latest")["gasLimit"] - ROOM) // FILLERS + 1
    return [chain.client.send_raw(chain.client.sign_with_nonce(
        sender, to=BURNER, data=b"", gas=gas, nonce=nonce + i, fees=FILLER_FEES))
        for i in range(FILLERS)]


def _mined(world: World) -> AttemptRow:
    (mined,) = [a for a in _attempts(world) if a.status == "mined"]
    return mined


def test_claim_in_full_blocks_with_a_rising_base_fee_reaches_the_cap_and_is_mined_in_time(
        anvil_devnet, database_url) -> None:
    """Blocks full (no room for the claim) while the base fee rises 12.5% a block through the
    deadline window: the pending claim is replaced as the window passes (not after the hour
    of `NEVER`), at the cap before the last moment, and mined in the last block that can
    hold it, whose base fee is above what the claim was first offered."""
    cap = 20 * GWEI
    world = _world(anvil_devnet, database_url, NEVER)
    payment = anvil_devnet.payment
    trade, before = _claim_pending(world, cap)
    t_pay = trade.terms.t_pay
    base = GWEI
    with capture_logs() as logs:
        for k in range(1, 11):  # a full block every 3 s, from T_pay - 29 to T_pay - 2
            base = base * 9 // 8
            _block(payment, base_fee=base, at=t_pay - START + 3 * k, full=True)
            world.gateway.relayer.step()
    assert [e for e in logs if e["event"] in ("broadcast_failed", "rebroadcast_refused")] == []
    attempts = _attempts(world)
    assert len(attempts) >= 4 and {a.nonce for a in attempts} == {attempts[0].nonce}
    for old, new in zip(attempts, attempts[1:], strict=False):
        assert _fees(new).at_least(12, _fees(old)), (_fees(old), _fees(new))
    assert _fees(attempts[-1]) == Fees(cap, cap)  # the offer is the cap before the end
    assert payment.pending_transactions() == [bytes.fromhex(attempts[-1].tx_hash)]

    base = base * 9 // 8
    assert base > _fees(attempts[0]).max_fee_per_gas  # the first offer would not do
    _block(payment, base_fee=base, at=t_pay - LAST)  # the last block before T_pay: room
    receipt = payment.client.receipt(bytes.fromhex(attempts[-1].tx_hash))
    assert receipt is not None and receipt.succeeded
    assert payment.w3.eth.get_block(receipt.block_number)["timestamp"] < t_pay
    _assert_settled(world, trade, before)
    assert _mined(world).tx_hash == attempts[-1].tx_hash


def test_base_fee_above_the_cap_near_the_deadline_alerts_once_then_the_claim_is_mined(
        anvil_devnet, database_url) -> None:
    """The base fee spikes above the cap late in the window: the claim is priced at the cap,
    a critical alert names the trade with the base fee and the cap (once, counted), nothing
    loops; when the base fee falls back, the claim goes out at the cap and is mined in time.
    (anvil drops a transaction its block's base fee excludes; the gateway sends it again.)"""
    cap = 20 * GWEI
    spike = 40 * GWEI
    world = _world(anvil_devnet, database_url, NEVER)
    payment = anvil_devnet.payment
    metric = {"chain": "payment"}
    alerts_before = REGISTRY.get_sample_value("dvp_claim_fee_cap_insufficient_total",
                                              metric) or 0.0
    trade, before = _claim_pending(world, cap)
    t_pay = trade.terms.t_pay
    _block(payment, base_fee=spike, at=t_pay - START + 25)
    with capture_logs() as logs:
        for _ in range(4):
            world.gateway.relayer.step()
    first, at_cap = _attempts(world)  # one replacement, however many passes
    assert _fees(at_cap) == Fees(cap, cap)
    (alert,) = [e for e in logs if e["event"] == "claim_fee_cap_insufficient"]
    assert alert["log_level"] == "critical"
    assert alert["trades"] == ("0x" + trade.trade_id.hex(),) and len(alert["trades"][0]) == 66
    assert (alert["base_fee"], alert["cap"]) == (spike, cap)
    assert REGISTRY.get_sample_value("dvp_claim_fee_cap_insufficient_total",
                                     metric) == alerts_before + 1

    _block(payment, base_fee=GWEI, at=t_pay - START + 27)  # the base fee falls back
    world.gateway.relayer.step()  # the claim at the cap goes out again
    assert payment.pending_transactions() == [bytes.fromhex(at_cap.tx_hash)]
    _block(payment, base_fee=GWEI, at=t_pay - START + 28)
    receipt = payment.client.receipt(bytes.fromhex(at_cap.tx_hash))
    assert receipt is not None and receipt.succeeded
    assert payment.w3.eth.get_block(receipt.block_number)["timestamp"] < t_pay
    _assert_settled(world, trade, before)
    assert len(_attempts(world)) == 2


def test_managed_buyer_secret_is_not_revealed_when_the_node_is_within_the_lead_time(
        anvil_devnet, database_url) -> None:
    """The buyer takes delivery while the relayer's cursor (one block behind the head) still
    leaves time; the node's latest block is already within the delivery claim's lead time of
    T_deliver. The claim is not signed: no transaction, the secret never on chain, the trade
    flagged delivery_claim_failed."""
    devnet, business = anvil_devnet, anvil_devnet.business
    buyer = devnet.account(BUYER)
    policy = replace(TEST_POLICY, business_block_time=20)  # delivery claim lead time: 20 s
    world = World(devnet, make_gateway(devnet, database_url, policy=policy,
                                       managed_keys={buyer.address: buyer},
                                       business_confirmations=1))
    trade = world.agree(managed_buyer=True)
    world.run_until_phase(trade, "payment_locked")
    world.lock_delivery(trade)
    business.mine()  # the lock is now a confirmed block below the head
    world.run_until_phase(trade, "delivery_locked")
    world.gateway.dispatcher.apply_action(ActionTakeDelivery(trade.trade_id, trade.secret))
    t_deliver = trade.terms.t_deliver
    business.set_next_block_timestamp(t_deliver - 10)
    business.mine()  # the head: within 20 s of T_deliver
    senders = [devnet.account(RELAYER).address, buyer.address]
    nonces = [business.w3.eth.get_transaction_count(a) for a in senders]

    with capture_logs() as logs:
        for _ in range(3):
            world.gateway.relayer.step()

    with world.gateway.session_factory() as session:
        cursor = Repository(session).cursor(business.chain_id)
        attempts = list(session.scalars(select(AttemptRow).where(
            AttemptRow.chain_id == business.chain_id)))
    head = business.w3.eth.block_number
    for number in range(head + 1):
        for tx in business.w3.eth.get_block(number, full_transactions=True)["transactions"]:
            assert trade.secret not in bytes(tx["input"])
    assert attempts == []
    assert [business.w3.eth.get_transaction_count(a) for a in senders] == nonces
    assert cursor is not None and cursor.block_timestamp + 20 < t_deliver  # cursor: time left
    state = world.state(trade)
    assert "delivery_claim_failed" in state.flags and state.preimage is None
    (refused,) = [e for e in logs if e["event"] == "effect_refused"]
    assert (refused["key"].partition(":")[0], refused["final"]) == ("delivery_claim", True)
    assert world.title_owner(trade) == devnet.delivery_htlc.address
