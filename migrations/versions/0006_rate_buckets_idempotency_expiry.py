"""rate_buckets; idempotency_keys.created_at indexed

The API's rate limits were token buckets in each process's memory, taken only after
authentication: every API process had its own budget, and requests with unknown keys were never
limited. Buckets now live in `rate_buckets`, one row per client address and per enterprise,
taken and refilled by one upsert per request (gateway.api.ratelimit), so every API process on
the database shares them. A bucket idle long enough to be full again is deleted: swept by
`updated_at`.

Idempotency keys expire (DVP_IDEMPOTENCY_TTL, 24 h by default): the API sweeps expired ones by
`created_at`, which is indexed here.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('rate_buckets',
    sa.Column('key', sa.String(length=128), nullable=False),
    sa.Column('tokens', sa.Double(), nullable=False),
    sa.Column('allowed', sa.Boolean(), nullable=False),
    sa.Column('updated_at', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_rate_buckets'))
    )
    with op.batch_alter_table('rate_buckets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rate_buckets_updated_at'), ['updated_at'],
                              unique=False)
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_idempotency_keys_created_at'), ['created_at'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_idempotency_keys_created_at'))
    with op.batch_alter_table('rate_buckets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rate_buckets_updated_at'))
    op.drop_table('rate_buckets')
