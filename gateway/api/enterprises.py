"""Enterprises and their API keys, used by the operator CLI and by API authentication."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Row
from sqlalchemy.orm import Session

from gateway.api.secrets import display_prefix, hash_api_key, new_api_key
from gateway.chain.accounts import (
    Signer,
    is_address,
    load_account,
    new_account,
    private_key,
    to_checksum,
)
from gateway.db.enterprises import EnterpriseRepository
from gateway.db.models import EnterpriseRow
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
    def from_row(cls, row: EnterpriseRow | Row) -> Enterprise:
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
    repo = EnterpriseRepository(session)
    if repo.name_taken(name):
        raise EnterpriseError("name", f"an enterprise named {name!r} exists")
    enterprise_id = str(uuid.uuid4())
    if managed:
        if payment_address or business_address:
            raise EnterpriseError("managed", "a managed enterprise gets addresses generated")
        if cipher is None:
            raise EnterpriseError("managed", "DVP_SECRETS_KEY is required to store keys")
        account = new_account()
        payment_address = business_address = account.address
        repo.add(enterprise_id, name, managed=True, payment_address=payment_address,
                 business_address=business_address)
        repo.add_managed_key(enterprise_id, account.address,
                             cipher.encrypt(private_key(account)))
    else:
        addresses = {}
        for field, value in (("payment_address", payment_address),
                             ("business_address", business_address)):
            if value is None or not is_address(value):
                raise EnterpriseError(field, "a 0x-prefixed 20-byte address is required")
            addresses[field] = to_checksum(value)
        repo.add(enterprise_id, name, managed=False, **addresses)
    key = issue_key(session, enterprise_id)
    return Enterprise.from_row(repo.get(enterprise_id)), key  # type: ignore[arg-type]


def issue_key(session: Session, enterprise_id: str) -> str:
    key = new_api_key()
    EnterpriseRepository(session).add_api_key(str(uuid.uuid4()), enterprise_id,
                                              display_prefix(key), hash_api_key(key))
    return key


def find_enterprise(session: Session, ident: str) -> EnterpriseRow:
    repo = EnterpriseRepository(session)
    row = repo.get(ident) or repo.by_name(ident)
    if row is None:
        raise EnterpriseError("enterprise", f"no enterprise with id or name {ident!r}")
    return row


def list_enterprises(session: Session) -> list[Enterprise]:
    return [Enterprise.from_row(r) for r in EnterpriseRepository(session).all()]


def list_keys(session: Session, enterprise_id: str) -> list[KeyInfo]:
    rows = EnterpriseRepository(session).api_keys(enterprise_id)
    return [KeyInfo(r.id, r.enterprise_id, r.prefix, r.created_at, r.revoked_at) for r in rows]


def revoke_key(session: Session, key_id: str) -> None:
    row = EnterpriseRepository(session).api_key(key_id)
    if row is None:
        raise EnterpriseError("key", f"no API key {key_id!r}")
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)


def rotate_keys(session: Session, enterprise_id: str) -> str:
    """Revoke every active key of the enterprise and issue a new one."""
    EnterpriseRepository(session).revoke_api_keys(enterprise_id, datetime.now(UTC))
    return issue_key(session, enterprise_id)


def authenticate(session: Session, token: str) -> Enterprise | None:
    enterprise = EnterpriseRepository(session).by_active_api_key(hash_api_key(token))
    return Enterprise.from_row(enterprise) if enterprise else None


def authenticate_many(session: Session, tokens: set[str]) -> dict[str, Enterprise]:
    """`authenticate` of several API keys in one query: by key, those that are known."""
    hashes = {hash_api_key(token): token for token in tokens}
    return {hashes[key_hash]: Enterprise.from_row(row) for key_hash, row in
            EnterpriseRepository(session).by_active_api_keys(set(hashes)).items()}


def managed_account(session: Session, enterprise_id: str, cipher: Cipher) -> Signer | None:
    """A managed enterprise's signing key, decrypted; None for one that signs itself."""
    encrypted = EnterpriseRepository(session).managed_key(enterprise_id)
    return load_account(cipher.decrypt(encrypted)) if encrypted is not None else None
