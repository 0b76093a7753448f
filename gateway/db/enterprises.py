"""Enterprises, their API keys and managed signing keys (`enterprises`, `api_keys`,
`managed_keys`): every query of that aggregate. No commits here: callers own the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Row, bindparam, select
from sqlalchemy.orm import Session

from gateway.db.models import ApiKeyRow, EnterpriseRow, ManagedKeyRow

# What a request needs of an enterprise, read as plain rows: the two reads every proposal
# makes (the caller by its key, the counterparty by id) are statements built once, run on the
# session's connection (Core): through the ORM, and built per call, they cost several times
# the database's work.
_E, _K = EnterpriseRow.__table__.c, ApiKeyRow.__table__.c
_FIELDS = select(_E.id, _E.name, _E.managed, _E.payment_address, _E.business_address)
_BY_ID = _FIELDS.where(_E.id == bindparam("id"))
_BY_IDS = _FIELDS.where(_E.id.in_(bindparam("ids", expanding=True)))
_BY_KEY = _FIELDS.join(ApiKeyRow.__table__, _K.enterprise_id == _E.id).where(
    _K.key_hash == bindparam("key_hash"), _K.revoked_at.is_(None))

_BY_KEYS = select(*_FIELDS.selected_columns, _K.key_hash).join(
    ApiKeyRow.__table__, _K.enterprise_id == _E.id).where(
    _K.key_hash.in_(bindparam("key_hashes", expanding=True)), _K.revoked_at.is_(None))


class EnterpriseRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    # --- enterprises ---

    def get(self, enterprise_id: str) -> EnterpriseRow | None:
        return self.session.get(EnterpriseRow, enterprise_id)

    def fields(self, enterprise_id: str) -> Row | None:
        """The enterprise's id, name, managed flag and addresses (`_FIELDS`), if it exists."""
        return self.session.connection().execute(_BY_ID, {"id": enterprise_id}).first()

    def fields_many(self, ids: set[str]) -> dict[str, Row]:
        """`fields` of each of these enterprises that exists, in one statement."""
        return {row.id: row for row in self.session.connection().execute(
            _BY_IDS, {"ids": sorted(ids)})} if ids else {}

    def by_ids(self, ids: set[str]) -> dict[str, EnterpriseRow]:
        return {e.id: e for e in self.session.scalars(
            select(EnterpriseRow).where(EnterpriseRow.id.in_(ids)))} if ids else {}

    def by_name(self, name: str) -> EnterpriseRow | None:
        return self.session.scalar(select(EnterpriseRow).where(EnterpriseRow.name == name))

    def name_taken(self, name: str) -> bool:
        return bool(self.session.scalar(select(EnterpriseRow.id)
                                        .where(EnterpriseRow.name == name)))

    def all(self) -> Sequence[EnterpriseRow]:
        """Every enterprise, oldest first (then by name)."""
        return self.session.scalars(select(EnterpriseRow).order_by(
            EnterpriseRow.created_at, EnterpriseRow.name)).all()

    def add(self, enterprise_id: str, name: str, *, managed: bool, payment_address: str,
            business_address: str) -> None:
        """A new enterprise, flushed (its id can be referred to at once)."""
        self.session.add(EnterpriseRow(id=enterprise_id, name=name, managed=managed,
                                       payment_address=payment_address,
                                       business_address=business_address))
        self.session.flush()

    # --- API keys ---

    def add_api_key(self, key_id: str, enterprise_id: str, prefix: str, key_hash: str) -> None:
        self.session.add(ApiKeyRow(id=key_id, enterprise_id=enterprise_id, prefix=prefix,
                                   key_hash=key_hash))

    def api_key(self, key_id: str) -> ApiKeyRow | None:
        return self.session.get(ApiKeyRow, key_id)

    def api_keys(self, enterprise_id: str) -> Sequence[ApiKeyRow]:
        """The enterprise's keys, revoked ones too, oldest first."""
        return self.session.scalars(select(ApiKeyRow).where(
            ApiKeyRow.enterprise_id == enterprise_id).order_by(ApiKeyRow.created_at)).all()

    def by_active_api_key(self, key_hash: str) -> Row | None:
        """The fields (`_FIELDS`) of the enterprise holding an unrevoked key with this hash,
        if any (one query: every API request asks)."""
        return self.session.connection().execute(_BY_KEY, {"key_hash": key_hash}).first()

    def by_active_api_keys(self, key_hashes: set[str]) -> dict[str, Row]:
        """`by_active_api_key` of several key hashes in one query: by key hash, those found."""
        return {row.key_hash: row for row in self.session.connection().execute(
            _BY_KEYS, {"key_hashes": sorted(key_hashes)})} if key_hashes else {}

    def revoke_api_keys(self, enterprise_id: str, at: datetime) -> None:
        """Revoke every active key of the enterprise, as of `at`."""
        for row in self.session.scalars(select(ApiKeyRow).where(
                ApiKeyRow.enterprise_id == enterprise_id, ApiKeyRow.revoked_at.is_(None))):
            row.revoked_at = at

    # --- managed signing keys (encrypted at rest) ---

    def add_managed_key(self, enterprise_id: str, address: str, encrypted_key: str) -> None:
        self.session.add(ManagedKeyRow(enterprise_id=enterprise_id, address=address,
                                       encrypted_key=encrypted_key))

    def managed_key(self, enterprise_id: str) -> str | None:
        """The enterprise's encrypted signing key; None for an enterprise that signs itself."""
        row = self.session.get(ManagedKeyRow, enterprise_id)
        return row.encrypted_key if row is not None else None

    def managed_key_of_address(self, address: str) -> str | None:
        """The encrypted signing key of the managed account at `address` (as stored:
        checksummed), if the gateway holds one."""
        return self.session.scalar(select(ManagedKeyRow.encrypted_key)
                                   .where(ManagedKeyRow.address == address))
