"""A chain batch's block goes only to the trades it wakes (`wake_times`) and to those its logs
name: idle open trades cost nothing per batch, and still change exactly at their deadlines."""

from __future__ import annotations

from sqlalchemy import select

from gateway.db.models import TradeRow
from gateway.db.repository import Repository
from tests.integration.harness import World, make_gateway


def _wakes(world: World, trade) -> tuple[int | None, int | None]:  # noqa: ANN001
    with world.gateway.session_factory() as session:
        wake_payment, wake_business = session.execute(select(
            TradeRow.wake_payment, TradeRow.wake_business).where(
            TradeRow.id == trade.trade_id.hex())).one()
        return wake_payment, wake_business


def test_idle_trades_sleep_until_a_deadline_and_expire_on_it(world: World,
                                                             monkeypatch) -> None:
    idle = [world.agree() for _ in range(3)]
    busy = world.agree()
    world.gateway.relayer.step()
    t = idle[0].terms
    lead = world.gateway.policy.claim_lead_time
    assert _wakes(world, idle[0]) == (t.t_deliver - lead,
                                      t.t_deliver - world.gateway.policy.delivery_claim_lead_time)

    woken: list[set[bytes]] = []  # per batch: the trades its block woke
    due = Repository.due_trades

    def recording(self, chain, timestamp):  # noqa: ANN001, ANN202
        found = due(self, chain, timestamp)
        woken.append({state.trade_id for state, _ in found})
        return found

    monkeypatch.setattr(Repository, "due_trades", recording)
    ids = {x.trade_id for x in idle}
    world.lock_payment(busy)  # a log for one trade; a block for nobody else
    world.devnet.business.mine()
    world.gateway.relayer.step()
    assert world.phase(busy) == "payment_locked"
    assert woken and not any(ids & batch for batch in woken), woken

    payment = world.devnet.payment
    # The first threshold of every idle trade (anvil's trades differ by a second or so).
    payment.set_next_block_timestamp(max(x.terms.t_deliver for x in idle) - lead)
    payment.mine()
    woken.clear()
    world.gateway.relayer.step()
    assert ids <= woken[0]
    assert [world.phase(x) for x in idle] == ["agreed"] * 3  # nothing was due at it
    assert _wakes(world, idle[0])[0] == t.t_pay  # stored: the next threshold

    payment.set_next_block_timestamp(min(x.terms.t_pay for x in idle) - 1)
    payment.mine()
    woken.clear()
    world.gateway.relayer.step()
    assert not ids & woken[0]
    assert [world.phase(x) for x in idle] == ["agreed"] * 3

    payment.set_next_block_timestamp(max(x.terms.t_pay for x in idle))
    payment.mine()
    world.gateway.relayer.step()
    assert [world.phase(x) for x in idle] == ["expired"] * 3
    with world.gateway.session_factory() as session:  # over: never loaded by a batch again
        assert not any(session.scalars(select(TradeRow.active).where(
            TradeRow.id.in_([x.trade_id.hex() for x in idle]))))


def test_a_restarted_relayer_wakes_every_open_trade_once(world: World, database_url) -> None:
    """Wake times depend on the timing policy: a relayer started with another one must not
    trust the stored times, so every open trade is woken by the next block."""
    trade = world.agree()
    world.gateway.relayer.step()
    assert _wakes(world, trade) != (0, 0)
    world.gateway.engine.dispose()
    world.gateway = make_gateway(world.devnet, database_url)
    assert _wakes(world, trade) == (0, 0)
    world.devnet.payment.mine()
    world.devnet.business.mine()
    world.gateway.relayer.step()
    assert _wakes(world, trade) != (0, 0)
    assert world.phase(trade) == "agreed"
