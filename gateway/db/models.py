"""SQLAlchemy models. The schema is owned by the Alembic migrations in `migrations/`;
`tests/integration/test_migrations.py` checks that these models and the migration head agree.

Hex strings (`0x`-less, lowercase) for hashes and ids keep rows readable in any SQL client and
identical on SQLite and PostgreSQL. Domain values are stored as JSON via `gateway.domain.codec`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

HEX32 = String(64)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC instant on every database.

    SQLite has no time zones and stores text: values are bound as naive UTC in one format
    (so comparisons are exact, to the microsecond) and read back as aware UTC; PostgreSQL
    stores `timestamptz`. An aware value in any zone is converted to UTC on the way in.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):  # noqa: ANN001, ANN201
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):  # noqa: ANN001, ANN201
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class JSONText(str):
    """A JSON value given as its text, serialized already: `StoredJSON` writes it as it is."""


class StoredJSON(TypeDecorator):
    """JSON that may also be given as its text (`JSONText`), written as that text instead of
    being serialized again. The dispatcher serializes each trade state it writes once and keeps
    the text: a row read back as that same text is that same state, known without parsing it
    (`gateway.db.trade_store`). Any other value is written as JSON writes it."""

    impl = JSON
    cache_ok = True

    def bind_processor(self, dialect):  # noqa: ANN001, ANN201
        inner = self.impl_instance.bind_processor(dialect)
        if dialect.name == "sqlite":
            as_text = str  # SQLite stores JSON as its text
        elif dialect.name == "postgresql" and dialect.driver == "psycopg":
            from psycopg.types.json import Json

            def as_text(value):  # noqa: ANN001, ANN202 - psycopg writes the text as it is
                return Json(value, dumps=str)
        else:  # another driver: parsed, then written as JSON writes any value
            def as_text(value):  # noqa: ANN001, ANN202
                return json.loads(value) if inner is None else inner(json.loads(value))

        def process(value):  # noqa: ANN001, ANN202
            if type(value) is JSONText:
                return as_text(value)
            return value if inner is None else inner(value)
        return process


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TradeRow(Base):
    __tablename__ = "trades"
    __table_args__ = (Index("ix_trades_active_wake_payment", "active", "wake_payment"),
                      Index("ix_trades_active_wake_business", "active", "wake_business"))

    id: Mapped[str] = mapped_column(HEX32, primary_key=True)
    # The trade's id until the buyer gives its hashlock (`Repository._trade_values`).
    hashlock: Mapped[str] = mapped_column(HEX32, unique=True)
    phase: Mapped[str] = mapped_column(String(32), index=True)
    active: Mapped[bool] = mapped_column(Boolean, index=True)  # not final, or effects pending
    state: Mapped[dict] = mapped_column(StoredJSON)
    # The earliest block timestamp per chain at which a block could change the trade beyond
    # its clock (`gateway.domain.trade.wake_times`); NULL: never. Chain batches read by them.
    wake_payment: Mapped[int | None] = mapped_column(BigInteger)
    wake_business: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(),
                                                 default=utcnow, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(),
                                                 default=utcnow, server_default=func.now(),
                                                 onupdate=utcnow)


class LockRow(Base):
    """Every lock id seen on chain that belongs to a trade (matched or rejected)."""

    __tablename__ = "locks"

    lock_id: Mapped[str] = mapped_column(HEX32, primary_key=True)
    chain: Mapped[str] = mapped_column(String(16), primary_key=True)
    trade_id: Mapped[str] = mapped_column(ForeignKey("trades.id"), index=True)


class InputRow(Base):
    """Append-only log of every input applied. Chain inputs are unique per log."""

    __tablename__ = "inputs"
    __table_args__ = (UniqueConstraint("chain_id", "tx_hash", "log_index"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    trade_id: Mapped[str | None] = mapped_column(HEX32, index=True)
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict] = mapped_column(JSON)
    chain_id: Mapped[int | None] = mapped_column(BigInteger)
    block_number: Mapped[int | None] = mapped_column(BigInteger)
    tx_hash: Mapped[str | None] = mapped_column(HEX32)
    log_index: Mapped[int | None] = mapped_column(Integer)
    orphaned: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(),
                                                 default=utcnow, server_default=func.now())
    # Set only while no trade claims the log (trade_id NULL): the keys it routes by, so that a
    # trade that gets its hashlock later (a buyer locking before it accepts or proposes)
    # adopts the logs mined before (gateway.engine.dispatcher `_adopt_early_logs`).
    route_hashlock: Mapped[str | None] = mapped_column(HEX32, index=True)
    route_lock_id: Mapped[str | None] = mapped_column(HEX32, index=True)


class OutboxRow(Base):
    """A transaction the state machine asked for. Done when its result is seen on chain."""

    __tablename__ = "outbox"
    __table_args__ = (UniqueConstraint("trade_id", "key"),
                      Index("ix_outbox_status_chain", "status", "chain"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    trade_id: Mapped[str] = mapped_column(ForeignKey("trades.id"))
    key: Mapped[str] = mapped_column(String(160))
    kind: Mapped[str] = mapped_column(String(64))
    chain: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict] = mapped_column(JSON)
    # pending -> (attempts) -> done | cancelled | failed
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempt_id: Mapped[int | None] = mapped_column(ForeignKey("tx_attempts.id"))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(),
                                                 default=utcnow, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(),
                                                 default=utcnow, server_default=func.now(),
                                                 onupdate=utcnow)


class AttemptRow(Base):
    """One signed transaction, recorded before it is sent (so a restart can resend it)."""

    __tablename__ = "tx_attempts"
    __table_args__ = (UniqueConstraint("chain_id", "sender", "nonce", "tx_hash"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    chain_id: Mapped[int] = mapped_column(BigInteger)
    sender: Mapped[str] = mapped_column(String(42))
    nonce: Mapped[int] = mapped_column(BigInteger)
    tx_hash: Mapped[str] = mapped_column(HEX32)
    raw_tx: Mapped[str] = mapped_column(Text)
    # signed (recorded, maybe not sent) -> sent -> mined | reverted | dropped; mined ->
    # orphaned when the chain no longer holds it (a reorg, a node that came back short)
    status: Mapped[str] = mapped_column(String(16), default="signed")
    block_number: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(),
                                                 default=utcnow, server_default=func.now())


class CursorRow(Base):
    """Per chain: the last block whose logs were applied, and its hash (reorg detection)."""

    __tablename__ = "cursors"

    chain_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    block_number: Mapped[int] = mapped_column(BigInteger)
    block_hash: Mapped[str] = mapped_column(HEX32)
    block_timestamp: Mapped[int] = mapped_column(BigInteger)


class BlockHashRow(Base):
    """Recent cursor positions per chain, to find the fork point after a reorg."""

    __tablename__ = "block_hashes"

    chain_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    block_number: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    block_hash: Mapped[str] = mapped_column(HEX32)


class TradeEventRow(Base):
    """Notifications (Event*) per trade: the trade's timeline."""

    __tablename__ = "trade_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    trade_id: Mapped[str] = mapped_column(ForeignKey("trades.id"), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict] = mapped_column(JSON)
    chain_id: Mapped[int | None] = mapped_column(BigInteger)
    block_number: Mapped[int | None] = mapped_column(BigInteger)
    tx_hash: Mapped[str | None] = mapped_column(HEX32)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(),
                                                 default=utcnow, server_default=func.now())


# --- enterprises (the API's tenants) -------------------------------------------------------


class EnterpriseRow(Base):
    __tablename__ = "enterprises"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    managed: Mapped[bool] = mapped_column(Boolean)
    payment_address: Mapped[str] = mapped_column(String(42))
    business_address: Mapped[str] = mapped_column(String(42))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(),
                                                 default=utcnow, server_default=func.now())


class ApiKeyRow(Base):
    """API keys are random 256-bit tokens: stored as their SHA-256 only (a slow hash adds
    nothing against guessing a 256-bit secret), shown once at creation."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    enterprise_id: Mapped[str] = mapped_column(ForeignKey("enterprises.id"), index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(HEX32, unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(),
                                                 default=utcnow, server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ManagedKeyRow(Base):
    """A managed enterprise's signing key, encrypted at rest (Fernet, key from settings)."""

    __tablename__ = "managed_keys"

    enterprise_id: Mapped[str] = mapped_column(ForeignKey("enterprises.id"), primary_key=True)
    address: Mapped[str] = mapped_column(String(42), unique=True)
    encrypted_key: Mapped[str] = mapped_column(Text)


class TradePartyRow(Base):
    """Which enterprises are the buyer and the seller of a trade (tenancy for the API)."""

    __tablename__ = "trade_parties"

    trade_id: Mapped[str] = mapped_column(ForeignKey("trades.id"), primary_key=True)
    buyer_id: Mapped[str] = mapped_column(ForeignKey("enterprises.id"), index=True)
    seller_id: Mapped[str] = mapped_column(ForeignKey("enterprises.id"), index=True)
    proposer_id: Mapped[str] = mapped_column(ForeignKey("enterprises.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(),
                                                 default=utcnow, server_default=func.now(),
                                                 index=True)
    amount: Mapped[str | None] = mapped_column(String(78))  # base units, for the exposure cap


class SecretRow(Base):
    """A managed buyer's trade secret, encrypted at rest until it is used (and public)."""

    __tablename__ = "trade_secrets"

    trade_id: Mapped[str] = mapped_column(ForeignKey("trades.id"), primary_key=True)
    encrypted_secret: Mapped[str] = mapped_column(Text)


class IdempotencyRow(Base):
    __tablename__ = "idempotency_keys"

    enterprise_id: Mapped[str] = mapped_column(ForeignKey("enterprises.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_hash: Mapped[str] = mapped_column(HEX32)
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict] = mapped_column(JSON)
    # Keys expire after DVP_IDEMPOTENCY_TTL: swept by this index (gateway.api.housekeeping).
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True,
                                                 default=utcnow, server_default=func.now())


class RateBucketRow(Base):
    """A token bucket of the API's rate limits (gateway.api.ratelimit), shared by every API
    process on this database: `tokens` left as of `updated_at` (Unix seconds, the API
    processes' clocks), and whether the request that last touched it was `allowed`. A bucket
    idle long enough to be full again is the same as none: swept by `updated_at`."""

    __tablename__ = "rate_buckets"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    tokens: Mapped[float] = mapped_column(Double)
    allowed: Mapped[bool] = mapped_column(Boolean)
    updated_at: Mapped[float] = mapped_column(Double, index=True)


# --- webhooks ----------------------------------------------------------------------------------


class WebhookEndpointRow(Base):
    """An enterprise's webhook receiver. Its signing secret is encrypted at rest (Fernet),
    shown once at creation; a deleted endpoint is kept, disabled, with its deliveries."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    enterprise_id: Mapped[str] = mapped_column(ForeignKey("enterprises.id"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    encrypted_secret: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(),
                                                 default=utcnow, server_default=func.now())
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WebhookDeliveryRow(Base):
    """One trade event owed to one endpoint: pending -> delivered | failed (retries spent)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (UniqueConstraint("endpoint_id", "trade_event_id"),
                      Index("ix_webhook_deliveries_status_next_attempt_at",
                            "status", "next_attempt_at"),
                      # an endpoint's oldest pending delivery, without scanning delivered ones
                      Index("ix_webhook_deliveries_endpoint_id_status_trade_event_id",
                            "endpoint_id", "status", "trade_event_id"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id"))
    trade_event_id: Mapped[int] = mapped_column(ForeignKey("trade_events.id"))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(),
                                                 default=utcnow, server_default=func.now())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WebhookCursorRow(Base):
    """A single row (id 1): the last trade_events.id fanned out into webhook deliveries."""

    __tablename__ = "webhook_cursor"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_event_id: Mapped[int] = mapped_column(BigInteger)
