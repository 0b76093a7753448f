"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('block_hashes',
    sa.Column('chain_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('block_number', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('block_hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('chain_id', 'block_number', name=op.f('pk_block_hashes'))
    )
    op.create_table('cursors',
    sa.Column('chain_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('block_number', sa.BigInteger(), nullable=False),
    sa.Column('block_hash', sa.String(length=64), nullable=False),
    sa.Column('block_timestamp', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('chain_id', name=op.f('pk_cursors'))
    )
    op.create_table('inputs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('trade_id', sa.String(length=64), nullable=True),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('chain_id', sa.BigInteger(), nullable=True),
    sa.Column('block_number', sa.BigInteger(), nullable=True),
    sa.Column('tx_hash', sa.String(length=64), nullable=True),
    sa.Column('log_index', sa.Integer(), nullable=True),
    sa.Column('orphaned', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_inputs')),
    sa.UniqueConstraint('chain_id', 'tx_hash', 'log_index', name=op.f('uq_inputs_chain_id_tx_hash_log_index'))
    )
    with op.batch_alter_table('inputs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_inputs_trade_id'), ['trade_id'], unique=False)

    op.create_table('trades',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('hashlock', sa.String(length=64), nullable=False),
    sa.Column('phase', sa.String(length=32), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('state', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trades')),
    sa.UniqueConstraint('hashlock', name=op.f('uq_trades_hashlock'))
    )
    with op.batch_alter_table('trades', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_trades_active'), ['active'], unique=False)
        batch_op.create_index(batch_op.f('ix_trades_phase'), ['phase'], unique=False)

    op.create_table('tx_attempts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('chain_id', sa.BigInteger(), nullable=False),
    sa.Column('sender', sa.String(length=42), nullable=False),
    sa.Column('nonce', sa.BigInteger(), nullable=False),
    sa.Column('tx_hash', sa.String(length=64), nullable=False),
    sa.Column('raw_tx', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('block_number', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tx_attempts')),
    sa.UniqueConstraint('chain_id', 'sender', 'nonce', 'tx_hash', name=op.f('uq_tx_attempts_chain_id_sender_nonce_tx_hash'))
    )
    op.create_table('locks',
    sa.Column('lock_id', sa.String(length=64), nullable=False),
    sa.Column('chain', sa.String(length=16), nullable=False),
    sa.Column('trade_id', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['trade_id'], ['trades.id'], name=op.f('fk_locks_trade_id_trades')),
    sa.PrimaryKeyConstraint('lock_id', 'chain', name=op.f('pk_locks'))
    )
    with op.batch_alter_table('locks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_locks_trade_id'), ['trade_id'], unique=False)

    op.create_table('outbox',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('trade_id', sa.String(length=64), nullable=False),
    sa.Column('key', sa.String(length=160), nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('chain', sa.String(length=16), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempt_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['attempt_id'], ['tx_attempts.id'], name=op.f('fk_outbox_attempt_id_tx_attempts')),
    sa.ForeignKeyConstraint(['trade_id'], ['trades.id'], name=op.f('fk_outbox_trade_id_trades')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox')),
    sa.UniqueConstraint('trade_id', 'key', name=op.f('uq_outbox_trade_id_key'))
    )
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_status_chain', ['status', 'chain'], unique=False)

    op.create_table('trade_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('trade_id', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('chain_id', sa.BigInteger(), nullable=True),
    sa.Column('block_number', sa.BigInteger(), nullable=True),
    sa.Column('tx_hash', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['trade_id'], ['trades.id'], name=op.f('fk_trade_events_trade_id_trades')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trade_events'))
    )
    with op.batch_alter_table('trade_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_trade_events_trade_id'), ['trade_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('trade_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_trade_events_trade_id'))

    op.drop_table('trade_events')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_status_chain')

    op.drop_table('outbox')
    with op.batch_alter_table('locks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_locks_trade_id'))

    op.drop_table('locks')
    op.drop_table('tx_attempts')
    with op.batch_alter_table('trades', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_trades_phase'))
        batch_op.drop_index(batch_op.f('ix_trades_active'))

    op.drop_table('trades')
    with op.batch_alter_table('inputs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_inputs_trade_id'))

    op.drop_table('inputs')
    op.drop_table('cursors')
    op.drop_table('block_hashes')
