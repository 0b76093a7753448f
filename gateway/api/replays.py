"""Idempotency-Key answers: what a request with a key used before replays."""

from __future__ import annotations

from gateway.api.context import ApiContext
from gateway.api.enterprises import Enterprise
from gateway.api.housekeeping import idempotency_cutoff
from gateway.api.problems import Problem
from gateway.db.idempotency import IdempotencyKeys, StoredAnswer
from gateway.db.trade_records import TradeRecords


def replay(ctx: ApiContext, records: TradeRecords, caller: Enterprise, key: str,
           request_hash: str) -> tuple[int, dict] | None:
    """The stored response of an earlier request with this key, or None if it is new (never
    used, or used more than DVP_IDEMPOTENCY_TTL ago: that row is deleted, as the request
    takes the key anew)."""
    return replayed(IdempotencyKeys(records.session).stored(caller.id, key,
                                                           idempotency_cutoff(ctx)),
                    request_hash)


def replayed(seen: StoredAnswer | None, request_hash: str) -> tuple[int, dict] | None:
    """The stored answer to replay (None: the key is new); a 422 naming the Idempotency-Key
    if it was used with another request."""
    if seen is None:
        return None
    if seen.request_hash != request_hash:
        raise Problem(422, "this Idempotency-Key was used with a different request body",
                      field="Idempotency-Key", kind="idempotency-key-reused")
    return seen.status_code, seen.response
