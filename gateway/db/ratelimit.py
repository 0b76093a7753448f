"""Rate-limit token buckets (`rate_buckets`, see gateway.api.ratelimit): taken, refilled and
read back by one upsert, and swept when idle. No commits here: callers own the transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Double, bindparam, case, delete, select, text
from sqlalchemy.orm import Session

from gateway.db.models import RateBucketRow

_BUCKETS = RateBucketRow.__table__


def _take_statement(dialect: str) -> Any:
    """INSERT a full bucket less `n` tokens, or on conflict refill the stored one for the time
    since it was last touched (never beyond `burst`) and take `n` tokens if there are as many
    (none if not); RETURNING what is left and whether they were taken. SET expressions see
    the row as it was, on both databases."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # the gateway supports these two databases only
        raise ValueError(f"the gateway runs on SQLite or PostgreSQL, not {dialect}")
    c = _BUCKETS.c
    now, rate, burst, n = (bindparam(name, type_=Double())
                           for name in ("now", "rate", "burst", "n"))
    elapsed = case((now > c.updated_at, now - c.updated_at), else_=0.0)
    filled = c.tokens + elapsed * rate
    refilled = case((filled > burst, burst), else_=filled)
    statement = insert(_BUCKETS).values(key=bindparam("key"),
                                        tokens=case((burst >= n, burst - n), else_=burst),
                                        allowed=burst >= n, updated_at=now)
    return statement.on_conflict_do_update(
        index_elements=[c.key],
        set_={"tokens": case((refilled >= n, refilled - n), else_=refilled),
              "allowed": refilled >= n, "updated_at": now},
    ).returning(c.tokens, c.allowed)


_TAKE: dict[str, Any] = {}  # the upsert, built once per dialect
_ASYNC_COMMIT = text("SET LOCAL synchronous_commit TO OFF")


class RateBuckets:
    def __init__(self, session: Session) -> None:
        self.session = session

    def commit_without_waiting(self) -> None:
        """The first statement of a transaction of bucket takes. A bucket need not outlive a
        crash (a few takes lost let a few more requests in): on PostgreSQL the commit does not
        wait for its WAL to reach the disk, so a bucket's row, which every request of the
        client or the enterprise takes in turn, is held for a statement, not for an fsync."""
        if self.session.get_bind().dialect.name == "postgresql":
            self.session.connection().execute(_ASYNC_COMMIT)

    def take(self, key: str, now: float, rate: float, burst: float, n: int = 1
             ) -> tuple[float, bool]:
        """Take `n` tokens from bucket `key` at `now` (Unix seconds), refilled at `rate` per
        second up to `burst`, all or none: (tokens left, whether they were taken). One atomic
        statement; the bucket's row stays locked until the caller commits."""
        dialect = self.session.get_bind().dialect.name
        statement = _TAKE.get(dialect)
        if statement is None:
            statement = _TAKE[dialect] = _take_statement(dialect)
        tokens, allowed = self.session.connection().execute(statement, {
            "key": key, "now": now, "rate": rate, "burst": burst, "n": float(n)}).one()
        return tokens, allowed

    def prune_idle(self, touched_before: float, limit: int) -> int:
        """Delete up to `limit` buckets last touched before `touched_before` (Unix seconds);
        how many."""
        stale = select(_BUCKETS.c.key).where(_BUCKETS.c.updated_at < touched_before).limit(limit)
        result = self.session.execute(delete(_BUCKETS).where(_BUCKETS.c.key.in_(stale)))
        return result.rowcount or 0
