"""Whether the database answers: the readiness probe's query (gateway.api.ops /readyz)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session


def ping(session: Session) -> None:
    """One round trip to the server; raises if the database does not answer."""
    session.execute(text("SELECT 1"))
