"""Idempotency keys (`idempotency_keys`): the stored answer of a request, and its expiry.
Keys expire after DVP_IDEMPOTENCY_TTL, judged by `created_at` (indexed for the sweep). No
commits here: callers own the transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, delete, insert, select, tuple_
from sqlalchemy.orm import Session

from gateway.db.models import IdempotencyRow

_KEYS = IdempotencyRow.__table__
# Core statements built once, run on the session's connection: every proposal reads a key
# and writes one, and the ORM's get and unit of work, or a statement built per call, cost
# more than the statements themselves.
_STORED = select(_KEYS.c.request_hash, _KEYS.c.status_code, _KEYS.c.response,
                 _KEYS.c.created_at).where(_KEYS.c.enterprise_id == bindparam("enterprise_id"),
                                           _KEYS.c.key == bindparam("key"))
_STORE = insert(_KEYS)


@dataclass(frozen=True)
class StoredAnswer:
    """An earlier request's hash and the answer stored for it."""

    request_hash: str
    status_code: int
    response: dict


class IdempotencyKeys:
    def __init__(self, session: Session) -> None:
        self.session = session

    def stored(self, enterprise_id: str, key: str, stored_before: datetime
               ) -> StoredAnswer | None:
        """The earlier request with this key, if any (its request hash and answer). A row
        stored before `stored_before` has expired: it is deleted (by primary key, so a reused
        key is new even before the sweep reaches it, and the new answer can take its place in
        this transaction) and None returned."""
        row = self.session.connection().execute(_STORED, {"enterprise_id": enterprise_id,
                                                         "key": key}).first()
        if row is None:
            return None
        if row.created_at < stored_before:
            self._delete_expired(enterprise_id, key, stored_before)
            return None
        return StoredAnswer(row.request_hash, row.status_code, row.response)

    def stored_many(self, keys: list[tuple[str, str]], stored_before: datetime
                    ) -> dict[tuple[str, str], StoredAnswer]:
        """`stored` of several (enterprise id, key) pairs in one statement: those found and
        not expired (an expired one is deleted, as `stored` does)."""
        if not keys:
            return {}
        found: dict[tuple[str, str], StoredAnswer] = {}
        for row in self.session.connection().execute(select(
                _KEYS.c.enterprise_id, _KEYS.c.key, _KEYS.c.request_hash, _KEYS.c.status_code,
                _KEYS.c.response, _KEYS.c.created_at).where(
                tuple_(_KEYS.c.enterprise_id, _KEYS.c.key).in_(keys))):
            if row.created_at < stored_before:
                self._delete_expired(row.enterprise_id, row.key, stored_before)
                continue
            found[(row.enterprise_id, row.key)] = StoredAnswer(
                row.request_hash, row.status_code, row.response)
        return found

    def _delete_expired(self, enterprise_id: str, key: str, stored_before: datetime) -> None:
        self.session.execute(delete(_KEYS).where(
            _KEYS.c.enterprise_id == enterprise_id, _KEYS.c.key == key,
            _KEYS.c.created_at < stored_before))

    def store(self, enterprise_id: str, key: str, request_hash: str, status_code: int,
              response: dict) -> None:
        """Written in the transaction of the request's effects: a concurrent request with the
        same key loses on the primary key (IntegrityError here, or at its commit)."""
        self.session.connection().execute(_STORE, {
            "enterprise_id": enterprise_id, "key": key, "request_hash": request_hash,
            "status_code": status_code, "response": response})

    def store_many(self, answers: list[tuple[str, str, str, int, dict]]) -> None:
        """`store` of several answers, each (enterprise id, key, request hash, status code,
        response), in one statement."""
        if answers:
            self.session.connection().execute(_STORE, [
                {"enterprise_id": enterprise_id, "key": key, "request_hash": request_hash,
                 "status_code": status_code, "response": response}
                for enterprise_id, key, request_hash, status_code, response in answers])

    def prune(self, stored_before: datetime, limit: int) -> int:
        """Delete up to `limit` rows stored before `stored_before`, oldest first (bounded, so
        one sweep never holds the table for long); how many."""
        expired = (select(_KEYS.c.enterprise_id, _KEYS.c.key)
                   .where(_KEYS.c.created_at < stored_before)
                   .order_by(_KEYS.c.created_at).limit(limit))
        result = self.session.execute(delete(_KEYS).where(
            tuple_(_KEYS.c.enterprise_id, _KEYS.c.key).in_(expired)))
        return result.rowcount or 0
