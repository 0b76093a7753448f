"""The Alembic migration head and the SQLAlchemy models describe the same schema; a database
of the previous release, trades in flight, is upgraded and its trades settle."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import JSON, func, inspect, select, text, update
from sqlalchemy import column as sa_column
from sqlalchemy import table as sa_table

from gateway.db import migrate
from gateway.db.models import AttemptRow, Base, InputRow, OutboxRow, TradeEventRow, TradeRow
from gateway.db.session import make_engine
from tests.integration.harness import AMOUNT, World, make_gateway


def test_models_match_migration_head(database_url) -> None:
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"


def test_upgrade_is_idempotent_and_records_head(database_url) -> None:
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    migrate.upgrade(engine)
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(migrate.alembic_config(str(engine.url))).get_current_head()
    assert migrate.current_revision(engine) == head
    tables = set(inspect(engine).get_table_names())
    assert {"trades", "inputs", "outbox", "tx_attempts", "cursors", "locks"} <= tables


def test_constraint_names_follow_the_naming_convention(database_url) -> None:
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    uniques = {u["name"] for u in inspect(engine).get_unique_constraints("inputs")}
    assert "uq_inputs_chain_id_tx_hash_log_index" in uniques


def test_0004_fills_trade_amounts_from_stored_states(database_url) -> None:
    """Trades made before 0004 get their amount beside the parties (the exposure cap reads
    it there), exactly, however large."""
    from sqlalchemy import text

    engine = make_engine(database_url)
    migrate.upgrade(engine, "0003")
    amount = 2**200 + 7  # above any float's exact range
    with engine.begin() as c:
        for n in (1, 2):
            c.execute(text("INSERT INTO enterprises (id, name, managed, payment_address, "
                           "business_address) VALUES (:id, :id, false, :a, :a)"),
                      {"id": f"e{n}", "a": f"0x{n:040x}"})
        c.execute(text("INSERT INTO trades (id, hashlock, phase, active, state) VALUES "
                       "(:id, :h, 'proposed', true, :state)"),
                  {"id": "ab" * 32, "h": "cd" * 32,
                   "state": f'{{"terms": {{"amount": {amount}}}}}'})
        c.execute(text("INSERT INTO trade_parties (trade_id, buyer_id, seller_id, proposer_id) "
                       "VALUES (:id, 'e1', 'e2', 'e2')"), {"id": "ab" * 32})
    migrate.upgrade(engine)
    with engine.connect() as c:
        assert c.execute(text("SELECT amount FROM trade_parties")).scalar_one() == str(amount)


# --- an upgrade with trades in flight ---------------------------------------------------------

PREVIOUS_RELEASE = json.loads(
    (Path(__file__).parent / "data" / "stored_fields_18a43a2.json").read_text())


def _as_previous_release(value: Any) -> Any:
    """A stored JSON value as release 18a43a2 wrote it: every tagged object with exactly the
    fields its class had then (the codec writes all of them), none added since (e.g.
    `TradeState.other_deliveries`, `payment_finalized`, `PaymentLeg.block_number`,
    `ActionAcceptTrade.hashlock`), and no `_clock` in an input's payload."""
    if isinstance(value, list):
        return [_as_previous_release(v) for v in value]
    if not isinstance(value, dict):
        return value
    tag = value["__type__"]
    fields = PREVIOUS_RELEASE["fields"].get(tag)
    assert fields is not None, f"{tag} did not exist in the previous release"
    assert set(fields) <= set(value), f"{tag} lost a field since: {set(fields) - set(value)}"
    return {**{name: _as_previous_release(value[name]) for name in fields}, "__type__": tag}


def _rewrite_as_previous_release(engine) -> Counter:  # noqa: ANN001
    """Every stored state, input, outbox effect and timeline event in the previous release's
    shape; how many rows changed, by table."""
    changed: Counter = Counter()
    with engine.begin() as c:
        for table, column in ((TradeRow.__table__, "state"), (InputRow.__table__, "payload"),
                              (OutboxRow.__table__, "payload"),
                              (TradeEventRow.__table__, "payload")):
            for row_id, value in c.execute(select(table.c.id, table.c[column])).all():
                old = _as_previous_release(value)
                if old != value:
                    c.execute(update(table).where(table.c.id == row_id).values({column: old}))
                    changed[table.name] += 1
    return changed


@pytest.mark.parametrize("devnet", ["eth-tester"], indirect=True)
def test_trades_in_flight_from_the_previous_release_settle_after_upgrade(
        devnet, database_url) -> None:
    """Trades the previous release left in flight: payment locked; title locked too; title
    taken with the payment claim still pending in the outbox. Their rows are rewritten to what
    18a43a2 stored (state without the fields added since, inputs without `_clock`, schema at
    0005); the new release starts on that database (`migrate.upgrade`, `build_gateway`) and
    settles every trade exactly once, one of them through a business-chain reorg whose replay
    reads the old input rows."""
    world = World(devnet, make_gateway(devnet, database_url))
    buyer, seller = world.buyer.address, world.seller.address
    buyer_before, seller_before = world.token_balance(buyer), world.token_balance(seller)
    locked = world.agree(amount=AMOUNT)
    world.lock_payment(locked)
    delivering = world.agree(amount=AMOUNT + 1)
    world.lock_payment(delivering)
    world.lock_delivery(delivering)
    delivered = world.agree(amount=AMOUNT + 2)
    world.lock_payment(delivered)
    world.lock_delivery(delivered)
    world.run_until_phase(delivered, "delivery_locked")
    world.take_delivery(delivered)
    world.gateway.relayer.poll()  # the claim is seen; the payment claim is not sent yet
    trades = (locked, delivering, delivered)
    assert [world.phase(t) for t in trades] == ["payment_locked", "delivery_locked",
                                                "delivered"]
    with world.gateway.session_factory() as session:
        outbox = session.scalars(select(OutboxRow)).all()
    assert [(o.trade_id, o.key.partition(":")[0], o.status, o.attempt_id) for o in outbox] == \
        [(delivered.trade_id.hex(), "payment_claim", "pending", None)]

    world.gateway.engine.dispose()  # the previous release stops; its rows, as it wrote them:
    engine = make_engine(database_url)
    changed = _rewrite_as_previous_release(engine)
    with engine.begin() as c:
        inputs = c.execute(select(func.count()).select_from(InputRow.__table__)).scalar_one()
        # its head: the schema as 0005 left it
        config = migrate.alembic_config(database_url)
        config.attributes["connection"] = c
        command.downgrade(config, "0005")
    assert changed == {"trades": 3, "inputs": inputs}, changed  # new fields, `_clock`
    engine.dispose()

    world.gateway = make_gateway(devnet, database_url)  # the new release: upgrade, start
    head = ScriptDirectory.from_config(migrate.alembic_config(database_url)).get_current_head()
    assert migrate.current_revision(world.gateway.engine) == head
    assert [world.phase(t) for t in trades] == ["payment_locked", "delivery_locked",
                                                "delivered"]
    world.run_until_phase(delivered, "settled")  # the old outbox row's claim is sent

    business = devnet.business
    snapshot = business.snapshot()
    world.take_delivery(delivering)
    world.run_until_phase(delivering, "settled")
    business.revert(snapshot)  # the buyer's claim is orphaned: the trade is replayed from
    business.mine(3)           # its input log, the previous release's rows included
    assert world.title_owner(delivering) == devnet.delivery_htlc.address
    world.gateway.relayer.run_until(
        lambda: world.title_owner(delivering) == buyer and world.phase(delivering) == "settled")

    world.lock_delivery(locked)
    world.run_until_phase(locked, "delivery_locked")
    world.take_delivery(locked)
    world.run_until_phase(locked, "settled")

    total = sum(t.terms.amount for t in trades)
    assert world.token_balance(buyer) == buyer_before - total
    assert world.token_balance(seller) == seller_before + total
    assert world.token_balance(devnet.payment_htlc.address) == 0
    assert [world.title_owner(t) for t in trades] == [buyer] * 3
    with world.gateway.session_factory() as session:
        claims = Counter(
            (row.trade_id, row.chain_id) for row in session.scalars(select(InputRow).where(
                InputRow.kind == "ContractReceiveClaimed", InputRow.orphaned.is_(False))))
        attempts = session.scalars(select(AttemptRow)).all()
    for t in trades:  # one payment claim and one title claim on chain each
        assert claims[(t.trade_id.hex(), devnet.payment.client.chain_id)] == 1
        assert claims[(t.trade_id.hex(), devnet.business.client.chain_id)] == 1
    # The relayer's transactions: three payment claims and the reorged trade's title claim.
    assert sorted(a.status for a in attempts) == ["mined"] * 4, \
        [(a.status, a.chain_id, a.nonce) for a in attempts]


def test_0006_adds_rate_buckets_and_indexes_idempotency_keys_by_age(database_url) -> None:
    """0006 on a 0005 database: the shared rate-limit buckets, and the index the sweep of
    expired idempotency keys reads; its downgrade removes both."""
    engine = make_engine(database_url)
    migrate.upgrade(engine, "0005")
    assert "rate_buckets" not in inspect(engine).get_table_names()
    migrate.upgrade(engine, "0006")
    assert migrate.current_revision(engine) == "0006"
    assert "rate_buckets" in inspect(engine).get_table_names()
    assert "ix_idempotency_keys_created_at" in {
        i["name"] for i in inspect(engine).get_indexes("idempotency_keys")}
    with engine.begin() as c:
        config = migrate.alembic_config(database_url)
        config.attributes["connection"] = c
        command.downgrade(config, "0005")
    assert "rate_buckets" not in inspect(engine).get_table_names()
    assert "ix_idempotency_keys_created_at" not in {
        i["name"] for i in inspect(engine).get_indexes("idempotency_keys")}
    engine.dispose()


def test_0007_makes_unmatched_logs_findable_by_their_keys(database_url) -> None:
    """0007 on a 0006 database: logs kept with no trade get the hashlock and lock id they
    route by, read from their payloads; logs of a trade get none."""
    engine = make_engine(database_url)
    migrate.upgrade(engine, "0006")
    hashlock, lock_id, preimage = "ab" * 32, "cd" * 32, bytes(range(32))
    locked = {"__type__": "ContractReceivePaymentLocked", "lock_id": "0x" + lock_id,
              "lock": {"hashlock": "0x" + hashlock}}
    claimed = {"__type__": "ContractReceiveClaimed", "lock_id": "0x" + lock_id,
               "preimage": "0x" + preimage.hex()}
    refunded = {"__type__": "ContractReceiveRefunded", "lock_id": "0x" + "ef" * 32}
    inputs = sa_table("inputs", sa_column("id"), sa_column("trade_id"), sa_column("kind"),
                      sa_column("payload", JSON), sa_column("orphaned"),
                      sa_column("created_at"))
    with engine.begin() as c:
        for n, (trade, payload) in enumerate([(None, locked), (None, claimed),
                                              (None, refunded), ("01" * 32, locked)], 1):
            c.execute(inputs.insert().values(id=n, trade_id=trade, kind=payload["__type__"],
                                             payload=payload, orphaned=False,
                                             created_at=datetime(2026, 12, 1)))
    migrate.upgrade(engine)
    with engine.connect() as c:
        keys = dict(c.execute(text(
            "SELECT id, route_hashlock || '/' || COALESCE(route_lock_id, '') FROM inputs "
            "WHERE route_hashlock IS NOT NULL")).all())
        refunded_key = c.execute(text("SELECT route_lock_id FROM inputs WHERE id = 3")).scalar()
        of_trade = c.execute(text("SELECT route_hashlock, route_lock_id FROM inputs "
                                  "WHERE id = 4")).one()
    assert keys == {1: f"{hashlock}/", 2: f"{hashlib.sha256(preimage).hexdigest()}/{lock_id}"}
    assert refunded_key == "ef" * 32
    assert tuple(of_trade) == (None, None)
    engine.dispose()
