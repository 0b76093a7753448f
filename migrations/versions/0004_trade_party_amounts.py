"""trade_parties.amount: the payment amount beside the parties, for the exposure cap

The API checks each buyer's open exposure on every proposal; reading the amount from each
open trade's JSON state made that check linear in decoded states. The amount is a decimal
string of integer base units (uint256 does not fit any SQL integer type).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('trade_parties', schema=None) as batch_op:
        batch_op.add_column(sa.Column('amount', sa.String(length=78), nullable=True))
    bind = op.get_bind()
    rows = bind.execute(sa.text(
        "SELECT p.trade_id, t.state FROM trade_parties p JOIN trades t ON t.id = p.trade_id"))
    for trade_id, state in rows.fetchall():
        state = json.loads(state) if isinstance(state, str) else state
        bind.execute(sa.text("UPDATE trade_parties SET amount = :amount WHERE trade_id = :id"),
                     {"amount": str(int(state["terms"]["amount"])), "id": trade_id})


def downgrade() -> None:
    with op.batch_alter_table('trade_parties', schema=None) as batch_op:
        batch_op.drop_column('amount')
