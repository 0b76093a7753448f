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
