"""The HTLC contracts are anyone's to use: on a public chain most of their logs may be other
users' locks and claims, naming no trade of this gateway. Applying a batch costs the same
queries however many of those it holds: every log is routed in memory, by the batch's trades
and by the database's routes for the batch's keys read once. (Before, each log that named no
trade cost one or two SELECTs of its own: 12 SELECTs to apply the batch below with one other
user's lock and claim, 27 with six.)"""

from __future__ import annotations

import hashlib

from sqlalchemy import event, func, select

from gateway.db.models import InputRow
from gateway.domain.locks import new_secret
from gateway.domain.trade import Chain
from gateway.engine.relayer import StepResult
from tests.integration.harness import World


def _others_lock_and_claim(world: World, count: int) -> None:
    """`count` locks of another buyer's payments on the same contract, each claimed by
    its beneficiary: a `Locked` and a `Claimed` log each, naming no trade."""
    htlc, payment = world.devnet.payment_htlc, world.devnet.payment
    deadline = payment.next_block_timestamp() + 3_600
    for _ in range(count):
        secret = new_secret()
        receipt, lock = htlc.lock(world.buyer, beneficiary=world.seller.address, amount=1,
                                  hashlock=hashlib.sha256(secret).digest(), timelock=deadline)
        assert receipt.succeeded
        assert htlc.claim(world.seller, lock, secret).succeeded


def _selects_to_apply(world: World) -> int:
    """The SELECT statements one relayer poll of the payment chain makes."""
    seen: list[str] = []

    def count(conn, cursor, statement, *_) -> None:  # noqa: ANN001
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    engine = world.gateway.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        relayer = world.gateway.relayer
        relayer._poll_chain(Chain.PAYMENT, relayer.pollers[Chain.PAYMENT], StepResult())
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return len(seen)


def test_other_users_logs_cost_no_query_each(world: World) -> None:
    trade = world.agree()
    world.gateway.relayer.step()  # the cursors caught up
    _others_lock_and_claim(world, 1)
    world.lock_payment(trade)
    one = _selects_to_apply(world)
    assert world.phase(trade) == "payment_locked"  # the trade's own log still applied

    _others_lock_and_claim(world, 6)
    six = _selects_to_apply(world)
    assert six <= one, (one, six)
    # Their logs are kept as every log is, unmatched (a trade may yet claim one): 14.
    with world.gateway.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(InputRow).where(
            InputRow.trade_id.is_(None))) == 14
    state = world.state(trade)
    assert state.payment is not None and state.payment.lock_id == \
        world.devnet.payment_htlc.lock_id(trade.payment_lock)
