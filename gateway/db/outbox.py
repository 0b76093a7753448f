"""The outbox: the effects trades call for, the transactions sent for them (attempts), and
their replacements (fee bumps at the same nonce)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from gateway.db import bulk
from gateway.db.models import (
    AttemptRow,
    OutboxRow,
    utcnow,
)
from gateway.domain.codec import decode, encode
from gateway.domain.trade import ContractSend

# The hot writes are Core statements (the ORM's unit of work costs several times the SQL), one
# per kind of row however many rows (`gateway.db.bulk`).
_OUTBOX = OutboxRow.__table__


class Outbox:
    """Effects to send and what was sent for them (a part of `Repository`)."""

    session: Session

    # --- outbox ---------------------------------------------------------------------------

    def enqueue_many(self, items: Iterable[tuple[bytes, ContractSend, str]],
                     new_trades: frozenset[bytes] = frozenset()) -> None:
        """Put effects in the outbox, in order. One already there and pending stays as it is;
        one there but finished (a reorg undid its result) starts afresh. `new_trades` were
        created in this transaction: they have no rows to look for."""
        wanted: dict[tuple[str, str], tuple[ContractSend, str]] = {}
        for trade_id, effect, chain in items:
            wanted.setdefault((trade_id.hex(), effect.key), (effect, chain))
        if not wanted:
            return
        look_in = {t for t, _ in wanted} - {t.hex() for t in new_trades}
        existing = {(r.trade_id, r.key): r for r in self.session.scalars(select(OutboxRow).where(
            OutboxRow.trade_id.in_(look_in)))} if look_in else {}
        rows, now = [], utcnow()
        for (trade_hex, key), (effect, chain) in wanted.items():
            row = existing.get((trade_hex, key))
            if row is None:
                rows.append({"trade_id": trade_hex, "key": key, "kind": type(effect).__name__,
                             "chain": chain, "payload": encode(effect), "status": "pending",
                             "created_at": now, "updated_at": now})
            elif row.status != "pending":
                row.status, row.payload, row.attempt_id, row.last_error = (
                    "pending", encode(effect), None, None)
        bulk.insert_rows(self.session, _OUTBOX, rows)

    def close_effects_many(self, items: Iterable[tuple[bytes, str, str]]) -> None:
        """Mark pending effects (trade id, key) finished with a status, in one statement (an
        effect named twice: the first status, as the second finds it no longer pending)."""
        now = utcnow()
        rows = [{"trade_id": t.hex(), "key": k, "status": s, "updated_at": now}
                for t, k, s in items]
        bulk.update_rows(self.session, _OUTBOX, rows, keys=("trade_id", "key"),
                         where={"status": "pending"}, keep="first")

    def link_effects(self, links: Iterable[tuple[OutboxRow, int]]) -> None:
        """Point each effect's row at the attempt sent for it, in one statement (the ORM's
        flush of these rows, one by one, cost more than signing their transaction)."""
        now = utcnow()
        rows = [{"id": row.id, "attempt_id": attempt_id, "updated_at": now}
                for row, attempt_id in links]
        bulk.update_rows(self.session, _OUTBOX, rows, keys=("id",))
        for row, attempt_id in links:  # the loaded rows say so too, without a second write
            set_committed_value(row, "attempt_id", attempt_id)

    def unsent_effects(self, chain: str) -> list[tuple[OutboxRow, ContractSend, bool]]:
        """The chain's pending effects with no transaction in flight (signed or sent), in
        order, each with whether an earlier attempt failed (mined without its result,
        reverted, dropped). Those in flight are left in the database, not read and decoded
        on every executor pass while they wait to be mined."""
        query = select(OutboxRow).outerjoin(
            AttemptRow, OutboxRow.attempt_id == AttemptRow.id).where(
            OutboxRow.status == "pending", OutboxRow.chain == chain,
            or_(AttemptRow.id.is_(None), AttemptRow.status.not_in(("signed", "sent")))
        ).order_by(OutboxRow.id)
        return [(row, decode(ContractSend, row.payload), row.attempt_id is not None)
                for row in self.session.scalars(query)]

    def outbox_pending_by_chain(self) -> dict[str, tuple[int, datetime]]:
        """Per chain: how many effects wait to be done on chain, and since when the oldest."""
        from sqlalchemy import func

        rows = self.session.execute(select(
            OutboxRow.chain, func.count(), func.min(OutboxRow.created_at)).where(
            OutboxRow.status == "pending").group_by(OutboxRow.chain))
        return {chain: (count, oldest) for chain, count, oldest in rows}  # min() keeps UTC

    def outbox_depth(self) -> int:
        from sqlalchemy import func

        return self.session.scalar(select(func.count()).select_from(OutboxRow).where(
            OutboxRow.status == "pending")) or 0

    # --- transaction attempts -------------------------------------------------------------

    def add_attempt(self, chain_id: int, sender: str, nonce: int, tx_hash: bytes,
                    raw_tx: bytes) -> AttemptRow:
        existing = self.session.scalar(select(AttemptRow).where(
            AttemptRow.chain_id == chain_id, AttemptRow.sender == sender,
            AttemptRow.nonce == nonce, AttemptRow.tx_hash == tx_hash.hex()))
        if existing is not None:
            # The very same transaction again (a reorg dropped it after it was mined).
            existing.status, existing.block_number = "signed", None
            return existing
        row = AttemptRow(chain_id=chain_id, sender=sender, nonce=nonce, tx_hash=tx_hash.hex(),
                         raw_tx=raw_tx.hex(), status="signed")
        self.session.add(row)
        self.session.flush()
        return row

    def get_attempts(self, attempt_ids: list[int]) -> list[AttemptRow]:
        """These attempts (every one must exist), in the order given, in one query."""
        found = {row.id: row for row in self.session.scalars(select(AttemptRow).where(
            AttemptRow.id.in_(attempt_ids)))}
        return [found[attempt_id] for attempt_id in attempt_ids]

    def max_inflight_nonce(self, chain_id: int, sender: str) -> int | None:
        """Highest nonce of our transactions not yet seen mined (signed or sent). Mined ones
        are counted by the chain's own nonce, which also forgets those a reorg removed."""
        from sqlalchemy import func

        return self.session.scalar(select(func.max(AttemptRow.nonce)).where(
            AttemptRow.chain_id == chain_id, AttemptRow.sender == sender,
            AttemptRow.status.in_(("signed", "sent"))))

    def orphan_mined_attempts(self, chain_id: int, sender: str,
                              from_nonce: int) -> list[AttemptRow]:
        """Attempts recorded as mined at `from_nonce` or above, which the chain's nonce says
        are not on chain any more: marked `orphaned`; returns them."""
        rows = list(self.session.scalars(select(AttemptRow).where(
            AttemptRow.chain_id == chain_id, AttemptRow.sender == sender,
            AttemptRow.nonce >= from_nonce, AttemptRow.status == "mined")))
        for row in rows:
            row.status = "orphaned"
        return rows

    def unsettled_attempts(self, chain_id: int) -> list[AttemptRow]:
        return list(self.session.scalars(select(AttemptRow).where(
            AttemptRow.chain_id == chain_id, AttemptRow.status.in_(("signed", "sent"))
        ).order_by(AttemptRow.nonce)))

    # --- transaction replacement (executor) -----------------------------------------------

    def attempts_at_nonce(self, chain_id: int, sender: str, nonce: int) -> list[AttemptRow]:
        """Every transaction we signed at this nonce: the first and its replacements."""
        return list(self.session.scalars(select(AttemptRow).where(
            AttemptRow.chain_id == chain_id, AttemptRow.sender == sender,
            AttemptRow.nonce == nonce).order_by(AttemptRow.id)))

    def outbox_rows_for_attempt(self, attempt_id: int) -> list[OutboxRow]:
        return list(self.session.scalars(select(OutboxRow).where(
            OutboxRow.attempt_id == attempt_id)))
