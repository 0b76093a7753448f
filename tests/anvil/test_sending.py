"""Transactions on a real node: fee bumps of a stuck claim, rebroadcast of a dropped one, a
nonce gap repaired, a nonce taken by someone else, and a fee cap that stops replacements
without a loop. Each test ends with the trade settled and exact balances on both chains."""

from __future__ import annotations

from sqlalchemy import select

from gateway.chain.client import Fees, decode_signed
from gateway.db.models import AttemptRow
from gateway.engine.executor import SendPolicy
from tests.integration.harness import AMOUNT, Trade, World, make_gateway

BUMP = SendPolicy(replace_after=0, bump_percent=12)  # any unmined transaction is stuck
NEVER = SendPolicy(replace_after=3600, bump_percent=12)


def _world(devnet, database_url, policy: SendPolicy) -> World:  # noqa: ANN001
    return World(devnet, make_gateway(devnet, database_url, send_policy=policy))


def _attempts(world: World) -> list[AttemptRow]:
    with world.gateway.session_factory() as session:
        return list(session.scalars(select(AttemptRow).order_by(AttemptRow.id)))


def _fees(attempt: AttemptRow) -> Fees:
    return decode_signed(bytes.fromhex(attempt.raw_tx)).fees


def _delivered(world: World) -> tuple[Trade, dict[str, int]]:
    """A trade up to the buyer taking delivery, with the payment chain not mining."""
    before = {a: world.token_balance(a) for a in (world.buyer.address, world.seller.address)}
    trade = world.agree()
    world.lock_payment(trade)
    world.lock_delivery(trade)
    world.run_until_phase(trade, "delivery_locked")
    world.devnet.payment.set_automine(False)
    world.take_delivery(trade)  # the business chain still mines: the secret is public
    return trade, before


def _assert_settled(world: World, trade: Trade, before: dict[str, int]) -> None:
    world.run_until_phase(trade, "settled")
    assert world.token_balance(world.buyer.address) == before[world.buyer.address] - AMOUNT
    assert world.token_balance(world.seller.address) == before[world.seller.address] + AMOUNT
    assert world.token_balance(world.devnet.payment_htlc.address) == 0
    assert world.title_owner(trade) == world.buyer.address
    assert not world.state(trade).pending


def test_stuck_claim_is_fee_bumped_at_the_same_nonce_and_mined_before_t_pay(
        anvil_devnet, database_url) -> None:
    world = _world(anvil_devnet, database_url, BUMP)
    payment = anvil_devnet.payment
    trade, before = _delivered(world)
    world.gateway.relayer.step()  # sees the secret, sends the claim: it sits in the pool
    (first,) = _attempts(world)
    assert payment.pending_transactions() == [bytes.fromhex(first.tx_hash)]

    world.gateway.relayer.step()  # still unmined: replaced with higher fees
    world.gateway.relayer.step()  # and once more
    attempts = _attempts(world)
    assert [a.nonce for a in attempts] == [first.nonce] * 3
    assert [a.status for a in attempts] == ["replaced", "replaced", "sent"]
    for old, new in zip(attempts, attempts[1:], strict=False):
        assert _fees(new).at_least(10, _fees(old)), (_fees(old), _fees(new))
        assert decode_signed(bytes.fromhex(new.raw_tx)).data == \
            decode_signed(bytes.fromhex(old.raw_tx)).data
    assert payment.pending_transactions() == [bytes.fromhex(attempts[-1].tx_hash)]

    payment.mine()
    receipt = payment.client.receipt(bytes.fromhex(attempts[-1].tx_hash))
    assert receipt is not None and receipt.succeeded
    assert payment.w3.eth.get_block(receipt.block_number)["timestamp"] < trade.terms.t_pay
    _assert_settled(world, trade, before)
    assert [a.status for a in _attempts(world)] == ["replaced", "replaced", "mined"]


def test_fee_cap_stops_replacements_without_a_loop(anvil_devnet, database_url) -> None:
    world = _world(anvil_devnet, database_url, BUMP)
    payment = anvil_devnet.payment
    trade, before = _delivered(world)
    payment.client.fee_cap = payment.client.suggest_fees().max_fee_per_gas  # no room at all
    for _ in range(4):
        world.gateway.relayer.step()
    attempts = _attempts(world)
    assert len(attempts) == 1 and attempts[0].status == "sent"
    assert _fees(attempts[0]).max_fee_per_gas <= payment.client.fee_cap
    payment.mine()
    _assert_settled(world, trade, before)


def test_dropped_claim_is_rebroadcast(anvil_devnet, database_url) -> None:
    world = _world(anvil_devnet, database_url, NEVER)
    payment = anvil_devnet.payment
    trade, before = _delivered(world)
    world.gateway.relayer.step()
    (claim,) = _attempts(world)
    payment.drop_transaction(bytes.fromhex(claim.tx_hash))
    assert payment.pending_transactions() == []

    world.gateway.relayer.step()  # unknown to the node: the recorded bytes go out again
    assert payment.pending_transactions() == [bytes.fromhex(claim.tx_hash)]
    payment.mine()
    _assert_settled(world, trade, before)
    assert [(a.tx_hash, a.status) for a in _attempts(world)] == [(claim.tx_hash, "mined")]


def test_nonce_gap_left_by_a_dropped_foreign_transaction_is_filled(anvil_devnet,
                                                                    database_url) -> None:
    """Someone else used the relayer key: its transaction took the next nonce, so the claim
    was signed one above; then that transaction was dropped. The claim is queued behind a
    gap until the gateway fills it."""
    world = _world(anvil_devnet, database_url, NEVER)
    payment = anvil_devnet.payment
    relayer = world.gateway.relayer.executor.relayer
    trade, before = _delivered(world)
    nonce = payment.w3.eth.get_transaction_count(relayer.address, "pending")
    foreign = payment.client.sign_with_nonce(relayer, to=relayer.address, data=b"", gas=21_000,
                                             nonce=nonce)
    payment.client.send_raw(foreign)
    world.gateway.relayer.step()
    (claim,) = _attempts(world)
    assert claim.nonce == nonce + 1
    payment.drop_transaction(payment.client.tx_hash(foreign))

    world.gateway.relayer.step()  # the gap at `nonce` is filled with a self-transfer
    attempts = _attempts(world)
    assert [(a.nonce, a.status) for a in attempts] == [(nonce + 1, "sent"), (nonce, "sent")]
    filler = decode_signed(bytes.fromhex(attempts[1].raw_tx))
    assert (filler.to, filler.value, filler.data) == (relayer.address, 0, b"")
    payment.mine()
    _assert_settled(world, trade, before)
    assert {a.status for a in _attempts(world)} == {"mined"}


def test_nonce_taken_by_a_foreign_replacement_claim_sent_again(anvil_devnet,
                                                               database_url) -> None:
    """Someone with the relayer key replaced the pending claim at its nonce: the claim's
    nonce is used by another transaction, the claim is sent again at the next nonce."""
    world = _world(anvil_devnet, database_url, NEVER)
    payment = anvil_devnet.payment
    relayer = world.gateway.relayer.executor.relayer
    trade, before = _delivered(world)
    world.gateway.relayer.step()
    (claim,) = _attempts(world)
    high = Fees(_fees(claim).max_fee_per_gas * 2, _fees(claim).max_priority_fee_per_gas * 2)
    payment.client.send_raw(payment.client.sign_with_nonce(
        relayer, to=relayer.address, data=b"", gas=21_000, nonce=claim.nonce, fees=high))
    payment.mine()  # the foreign transaction, not the claim

    world.gateway.relayer.step()  # the claim's nonce is used: dropped, planned again
    world.gateway.relayer.step()
    attempts = _attempts(world)
    assert [(a.nonce, a.status) for a in attempts][:1] == [(claim.nonce, "dropped")]
    assert attempts[1].nonce == claim.nonce + 1
    payment.mine()
    _assert_settled(world, trade, before)
    assert [a.status for a in _attempts(world)] == ["dropped", "mined"]


def test_underpriced_rebroadcast_against_a_richer_foreign_transaction_is_bounded(
        anvil_devnet, database_url) -> None:
    """A foreign transaction priced above our cap holds the claim's nonce in the pool: our
    rebroadcast is refused as underpriced, replacements stop at the cap (a bounded number of
    attempts however many passes), and once the foreign one is mined the claim goes out at
    the next nonce."""
    world = _world(anvil_devnet, database_url, NEVER)
    payment = anvil_devnet.payment
    relayer = world.gateway.relayer.executor.relayer
    trade, before = _delivered(world)
    world.gateway.relayer.step()
    (claim,) = _attempts(world)
    payment.drop_transaction(bytes.fromhex(claim.tx_hash))
    cap = payment.client.fee_cap = _fees(claim).max_fee_per_gas * 2
    high = Fees(cap * 4, cap)
    payment.client.send_raw(payment.client.sign_with_nonce(
        relayer, to=relayer.address, data=b"", gas=21_000, nonce=claim.nonce, fees=high))
    for _ in range(10):  # 12% a pass from ~cap/2: at the cap within 7 replacements
        world.gateway.relayer.step()
    attempts = _attempts(world)
    assert 2 <= len(attempts) <= 8, [(_fees(a), a.status) for a in attempts]
    assert all(_fees(a).max_fee_per_gas <= cap for a in attempts)
    for _ in range(3):  # at the cap: no further attempts, however many passes
        world.gateway.relayer.step()
    assert len(_attempts(world)) == len(attempts)
    payment.set_automine(True)
    payment.mine()  # the foreign transaction; the claim follows at the next nonce
    _assert_settled(world, trade, before)
    statuses = [a.status for a in _attempts(world)]
    assert statuses[-1] == "mined" and statuses.count("mined") == 1


def test_crash_after_recording_a_replacement_it_is_sent_on_restart(anvil_devnet,
                                                                  database_url) -> None:
    from gateway.engine import crashpoints
    from gateway.engine.crashpoints import SimulatedCrash

    world = _world(anvil_devnet, database_url, BUMP)
    payment = anvil_devnet.payment
    trade, before = _delivered(world)
    world.gateway.relayer.step()  # the claim, pending
    crashpoints.arm("executor.after_replace_record")
    try:
        try:
            world.gateway.relayer.step()
            raise AssertionError("the crash point was not reached")
        except SimulatedCrash:
            pass
    finally:
        crashpoints.disarm()
    first, replacement = _attempts(world)
    assert (first.status, replacement.status) == ("replaced", "signed")  # recorded, unsent
    assert payment.pending_transactions() == [bytes.fromhex(first.tx_hash)]

    world.gateway.engine.dispose()
    world.gateway = make_gateway(anvil_devnet, database_url, send_policy=BUMP)  # restart
    world.gateway.relayer.step()  # the recorded replacement goes out
    assert payment.pending_transactions() == [bytes.fromhex(replacement.tx_hash)]
    payment.mine()
    _assert_settled(world, trade, before)
    statuses = [a.status for a in _attempts(world)]
    assert statuses.count("mined") == 1 and statuses[1] == "mined"


def test_nonce_gap_left_by_our_own_claim_a_node_lost_is_filled_and_the_claim_orphaned(
        anvil_devnet, database_url) -> None:
    """A node comes back without the block holding our mined claim and without the next claim
    we had sent: the rebroadcast claim is queued behind our own lost nonce, which is filled
    with a self-transfer. The lost claim is recorded `orphaned`, not left `mined` at a block
    the chain no longer has, and its payment goes out again."""
    world = World(anvil_devnet, make_gateway(anvil_devnet, database_url, send_policy=NEVER,
                                             max_reorg_depth=8))
    payment = anvil_devnet.payment
    before = {a: world.token_balance(a) for a in (world.buyer.address, world.seller.address)}
    first, second = world.agree(), world.agree()
    for trade in (first, second):
        world.lock_payment(trade)
        world.lock_delivery(trade)
        world.run_until_phase(trade, "delivery_locked")
    payment.set_automine(False)
    world.take_delivery(first)
    world.gateway.relayer.step()
    (lost,) = _attempts(world)
    payment.mine()  # the first claim is mined, and recorded so
    world.run_until_phase(first, "settled")
    world.take_delivery(second)
    world.gateway.relayer.step()
    assert [a.status for a in _attempts(world)] == ["mined", "sent"]
    queued = _attempts(world)[1]
    assert queued.nonce == lost.nonce + 1

    payment.reorg(1)  # the node lost the first claim's block ...
    payment.drop_transaction(bytes.fromhex(queued.tx_hash))  # ... and the second claim
    assert payment.client.receipt(bytes.fromhex(lost.tx_hash)) is None
    world.gateway.relayer.step()
    payment.mine()
    for trade in (first, second):
        world.run_until_phase(trade, "settled")
    attempts = {a.id: a for a in _attempts(world)}
    assert attempts[lost.id].status == "orphaned"
    fillers = [a for a in attempts.values() if a.nonce == lost.nonce and a.id != lost.id]
    assert [decode_signed(bytes.fromhex(a.raw_tx)).value for a in fillers] == [0]
    for attempt in attempts.values():  # every attempt recorded mined is on chain
        if attempt.status == "mined":
            receipt = payment.client.receipt(bytes.fromhex(attempt.tx_hash))
            assert receipt is not None and receipt.succeeded, attempt.nonce
    assert world.token_balance(world.buyer.address) == before[world.buyer.address] - 2 * AMOUNT
    assert world.token_balance(world.seller.address) == before[world.seller.address] + 2 * AMOUNT
    assert world.token_balance(anvil_devnet.payment_htlc.address) == 0
