"""The Alembic migration head and the SQLAlchemy models describe the same schema."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from gateway.db import migrate
from gateway.db.models import Base
from gateway.db.session import make_engine


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
