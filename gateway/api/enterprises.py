"""Enterprises and their API keys, used by the operator CLI and by API authentication."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from eth_account import Account
from eth_utils import is_address, to_checksum_address
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.api.secrets import display_prefix, hash_api_key, new_api_key
from gateway.db.models import ApiKeyRow, EnterpriseRow, ManagedKeyRow
from gateway.keys import Cipher


class EnterpriseError(ValueError):
    """Bad operator input; `field` names the offending option."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Enterprise:
    id: str
    name: str
    managed: bool
    payment_address: str
    business_address: str

    @classmethod
    def from_row(cls, row: EnterpriseRow) -> Enterprise:
        return cls(row.id, row.name, row.managed, row.payment_address, row.business_address)


@dataclass(frozen=True)
class KeyInfo:
    id: str
    enterprise_id: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


def create_enterprise(session: Session, name: str, *, managed: bool, cipher: Cipher | None,
                      payment_address: str | None = None,
                      business_address: str | None = None) -> tuple[Enterprise, str]:
    """Returns the enterprise and its first API key (the only time the key is shown)."""
    name = name.strip()
    if not name or len(name) > 200:
        raise EnterpriseError("name", "must be 1 to 200 characters")
    if session.scalar(select(EnterpriseRow.id).where(EnterpriseRow.name == name)):
        raise EnterpriseError("name", f"an enterprise named {name!r} exists")
    enterprise_id = str(uuid.uuid4())
    if managed:
        if payment_address or business_address:
            raise EnterpriseError("managed", "a managed enterprise gets addresses generated")
        if cipher is None:
            raise EnterpriseError("managed", "DVP_SECRETS_KEY is required to store keys")
        account = Account.create()
        payment_address = business_address = account.address
        session.add(EnterpriseRow(id=enterprise_id, name=name, managed=True,
                                  payment_address=payment_address,
                                  business_address=business_address))
        session.flush()
        session.add(ManagedKeyRow(enterprise_id=enterprise_id, address=account.address,
                                  encrypted_key=cipher.encrypt(bytes(account.key))))
    else:
        addresses = {}
        for field, value in (("payment_address", payment_address),
                             ("business_address", business_address)):
            if value is None or not is_address(value):
                raise EnterpriseError(field, "a 0x-prefixed 20-byte address is required")
            addresses[field] = to_checksum_address(value)
        session.add(EnterpriseRow(id=enterprise_id, name=name, managed=False, **addresses))
        session.flush()
    key = issue_key(session, enterprise_id)
    return Enterprise.from_row(session.get(EnterpriseRow, enterprise_id)), key  # type: ignore[arg-type]


def issue_key(session: Session, enterprise_id: str) -> str:
    key = new_api_key()
    session.add(ApiKeyRow(id=str(uuid.uuid4()), enterprise_id=enterprise_id,
                          prefix=display_prefix(key), key_hash=hash_api_key(key)))
    return key


def find_enterprise(session: Session, ident: str) -> EnterpriseRow:
    row = session.get(EnterpriseRow, ident) or session.scalar(
        select(EnterpriseRow).where(EnterpriseRow.name == ident))
    if row is None:
        raise EnterpriseError("enterprise", f"no enterprise with id or name {ident!r}")
    return row


def list_enterprises(session: Session) -> list[Enterprise]:
    rows = session.scalars(select(EnterpriseRow).order_by(EnterpriseRow.created_at,
                                                          EnterpriseRow.name))
    return [Enterprise.from_row(r) for r in rows]


def list_keys(session: Session, enterprise_id: str) -> list[KeyInfo]:
    rows = session.scalars(select(ApiKeyRow).where(ApiKeyRow.enterprise_id == enterprise_id)
                           .order_by(ApiKeyRow.created_at))
    return [KeyInfo(r.id, r.enterprise_id, r.prefix, r.created_at, r.revoked_at) for r in rows]


def revoke_key(session: Session, key_id: str) -> None:
    row = session.get(ApiKeyRow, key_id)
    if row is None:
        raise EnterpriseError("key", f"no API key {key_id!r}")
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)


def rotate_keys(session: Session, enterprise_id: str) -> str:
    """Revoke every active key of the enterprise and issue a new one."""
    for row in session.scalars(select(ApiKeyRow).where(
            ApiKeyRow.enterprise_id == enterprise_id, ApiKeyRow.revoked_at.is_(None))):
        row.revoked_at = datetime.now(UTC)
    return issue_key(session, enterprise_id)


def authenticate(session: Session, token: str) -> Enterprise | None:
    row = session.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == hash_api_key(token),
                                                 ApiKeyRow.revoked_at.is_(None)))
    if row is None:
        return None
    enterprise = session.get(EnterpriseRow, row.enterprise_id)
    return Enterprise.from_row(enterprise) if enterprise else None


def managed_account(session: Session, enterprise_id: str, cipher: Cipher):  # noqa: ANN201
    row = session.get(ManagedKeyRow, enterprise_id)
    if row is None:
        return None
    return Account.from_key(cipher.decrypt(row.encrypted_key))
