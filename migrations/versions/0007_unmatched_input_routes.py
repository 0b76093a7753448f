"""inputs.route_hashlock / route_lock_id: logs no trade claimed yet, findable by their keys

A chain log that names no known trade (a buyer locking before it proposes, or before it gives
its hashlock when it accepts a seller's proposal) is kept in the input log with no trade. The
trade that later gets that hashlock adopts it; these columns, set only on such rows, let it
find them (by hashlock, then by the lock ids of the locks it adopted). Rows stored before this
revision are filled from their payloads.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import hashlib
import json

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def _keys(payload: dict) -> tuple[str | None, str | None]:
    kind = payload.get("__type__")
    if kind in ("ContractReceivePaymentLocked", "ContractReceiveDeliveryLocked"):
        return payload["lock"]["hashlock"][2:], None
    if kind == "ContractReceiveClaimed":
        preimage = bytes.fromhex(payload["preimage"][2:])
        return hashlib.sha256(preimage).hexdigest(), payload["lock_id"][2:]
    if kind == "ContractReceiveRefunded":
        return None, payload["lock_id"][2:]
    return None, None


def upgrade() -> None:
    with op.batch_alter_table('inputs') as batch:
        batch.add_column(sa.Column('route_hashlock', sa.String(64), nullable=True))
        batch.add_column(sa.Column('route_lock_id', sa.String(64), nullable=True))
    op.create_index('ix_inputs_route_hashlock', 'inputs', ['route_hashlock'])
    op.create_index('ix_inputs_route_lock_id', 'inputs', ['route_lock_id'])
    bind = op.get_bind()
    inputs = sa.table('inputs', sa.column('id', sa.BigInteger), sa.column('payload', sa.JSON),
                      sa.column('trade_id', sa.String(64)),
                      sa.column('route_hashlock', sa.String(64)),
                      sa.column('route_lock_id', sa.String(64)))
    rows = bind.execute(sa.select(inputs.c.id, inputs.c.payload)
                        .where(inputs.c.trade_id.is_(None))).all()
    for row_id, payload in rows:
        if isinstance(payload, str):
            payload = json.loads(payload)
        hashlock, lock_id = _keys(payload or {})
        if hashlock or lock_id:
            bind.execute(inputs.update().where(inputs.c.id == row_id).values(
                route_hashlock=hashlock, route_lock_id=lock_id))


def downgrade() -> None:
    op.drop_index('ix_inputs_route_lock_id', table_name='inputs')
    op.drop_index('ix_inputs_route_hashlock', table_name='inputs')
    with op.batch_alter_table('inputs') as batch:
        batch.drop_column('route_lock_id')
        batch.drop_column('route_hashlock')
