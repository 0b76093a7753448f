"""enterprises api keys managed accounts

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('enterprises',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('managed', sa.Boolean(), nullable=False),
    sa.Column('payment_address', sa.String(length=42), nullable=False),
    sa.Column('business_address', sa.String(length=42), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_enterprises')),
    sa.UniqueConstraint('name', name=op.f('uq_enterprises_name'))
    )
    op.create_table('api_keys',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('enterprise_id', sa.String(length=36), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['enterprise_id'], ['enterprises.id'], name=op.f('fk_api_keys_enterprise_id_enterprises')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_api_keys_key_hash'))
    )
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_keys_enterprise_id'), ['enterprise_id'], unique=False)

    op.create_table('idempotency_keys',
    sa.Column('enterprise_id', sa.String(length=36), nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=False),
    sa.Column('response', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['enterprise_id'], ['enterprises.id'], name=op.f('fk_idempotency_keys_enterprise_id_enterprises')),
    sa.PrimaryKeyConstraint('enterprise_id', 'key', name=op.f('pk_idempotency_keys'))
    )
    op.create_table('managed_keys',
    sa.Column('enterprise_id', sa.String(length=36), nullable=False),
    sa.Column('address', sa.String(length=42), nullable=False),
    sa.Column('encrypted_key', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['enterprise_id'], ['enterprises.id'], name=op.f('fk_managed_keys_enterprise_id_enterprises')),
    sa.PrimaryKeyConstraint('enterprise_id', name=op.f('pk_managed_keys')),
    sa.UniqueConstraint('address', name=op.f('uq_managed_keys_address'))
    )
    op.create_table('trade_parties',
    sa.Column('trade_id', sa.String(length=64), nullable=False),
    sa.Column('buyer_id', sa.String(length=36), nullable=False),
    sa.Column('seller_id', sa.String(length=36), nullable=False),
    sa.Column('proposer_id', sa.String(length=36), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['buyer_id'], ['enterprises.id'], name=op.f('fk_trade_parties_buyer_id_enterprises')),
    sa.ForeignKeyConstraint(['proposer_id'], ['enterprises.id'], name=op.f('fk_trade_parties_proposer_id_enterprises')),
    sa.ForeignKeyConstraint(['seller_id'], ['enterprises.id'], name=op.f('fk_trade_parties_seller_id_enterprises')),
    sa.ForeignKeyConstraint(['trade_id'], ['trades.id'], name=op.f('fk_trade_parties_trade_id_trades')),
    sa.PrimaryKeyConstraint('trade_id', name=op.f('pk_trade_parties'))
    )
    with op.batch_alter_table('trade_parties', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_trade_parties_buyer_id'), ['buyer_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_trade_parties_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_trade_parties_seller_id'), ['seller_id'], unique=False)

    op.create_table('trade_secrets',
    sa.Column('trade_id', sa.String(length=64), nullable=False),
    sa.Column('encrypted_secret', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['trade_id'], ['trades.id'], name=op.f('fk_trade_secrets_trade_id_trades')),
    sa.PrimaryKeyConstraint('trade_id', name=op.f('pk_trade_secrets'))
    )


def downgrade() -> None:
    op.drop_table('trade_secrets')
    with op.batch_alter_table('trade_parties', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_trade_parties_seller_id'))
        batch_op.drop_index(batch_op.f('ix_trade_parties_created_at'))
        batch_op.drop_index(batch_op.f('ix_trade_parties_buyer_id'))

    op.drop_table('trade_parties')
    op.drop_table('managed_keys')
    op.drop_table('idempotency_keys')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_keys_enterprise_id'))

    op.drop_table('api_keys')
    op.drop_table('enterprises')
