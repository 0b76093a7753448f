"""trades.wake_payment / wake_business: when a chain's next block can change a trade

Every chain batch used to hand its block to every open trade (decoded from JSON, transitioned,
compared), so a batch cost grew with the number of open trades however idle. The dispatcher now
stores, per trade, the earliest block timestamp of each chain at which a block could change it
(`gateway.domain.trade.wake_times`) and gives a batch's block only to the trades it wakes and
to those its logs concern. NULL: no block of that chain ever can.

Existing open trades are set to 0 (woken by the next block, which stores their real times);
relayers do the same at every start, so a changed timing policy is never applied to times
computed under the old one.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('trades', schema=None) as batch_op:
        batch_op.add_column(sa.Column('wake_payment', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('wake_business', sa.BigInteger(), nullable=True))
        batch_op.create_index('ix_trades_active_wake_payment', ['active', 'wake_payment'])
        batch_op.create_index('ix_trades_active_wake_business', ['active', 'wake_business'])
    op.execute(sa.text("UPDATE trades SET wake_payment = 0, wake_business = 0 WHERE active"))


def downgrade() -> None:
    with op.batch_alter_table('trades', schema=None) as batch_op:
        batch_op.drop_index('ix_trades_active_wake_business')
        batch_op.drop_index('ix_trades_active_wake_payment')
        batch_op.drop_column('wake_business')
        batch_op.drop_column('wake_payment')
