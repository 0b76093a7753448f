"""Chain cursors: the last block each chain's poller applied, and recent block hashes for
finding a fork point."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import bindparam, delete, select
from sqlalchemy.orm import Session

from gateway.db import bulk
from gateway.db.models import (
    BlockHashRow,
    CursorRow,
)

RECENT_HASHES = 256  # cursor positions kept per chain for finding a fork point

# The hot writes are Core statements: the ORM's unit of work costs several times the SQL.
_CURSORS = CursorRow.__table__
_BLOCK_HASHES = BlockHashRow.__table__
_CURSOR_TIMES = select(_CURSORS.c.chain_id, _CURSORS.c.block_number,
                       _CURSORS.c.block_timestamp).where(
    _CURSORS.c.chain_id.in_(bindparam("ids", expanding=True)))


class ChainCursors:
    """Where each chain's poller is (a part of `Repository`)."""

    session: Session

    # --- cursors --------------------------------------------------------------------------

    def cursor(self, chain_id: int) -> CursorRow | None:
        return self.session.get(CursorRow, chain_id)

    def cursors(self, chain_ids: list[int]):  # noqa: ANN201 - rows of the three columns
        """(chain_id, block_number, block_timestamp) of these chains' cursors."""
        return list(self.session.execute(_CURSOR_TIMES, {"ids": chain_ids}))

    def set_cursor(self, chain_id: int, number: int, block_hash: bytes, timestamp: int,
                   checkpoints: Iterable[tuple[int, bytes]] = ()) -> None:
        """Move the cursor and remember its block hash, with those of `checkpoints` (blocks
        below it that its batch covered: `ChainBatch.checkpoints`), for finding a fork point;
        hashes of blocks `RECENT_HASHES` or more below the cursor are forgotten. Three
        statements: the cursor and the block hashes are written whether or not they are there
        (ON CONFLICT DO UPDATE), not read first and written at the flush."""
        bulk.insert_rows(self.session, _CURSORS, [
            {"chain_id": chain_id, "block_number": number, "block_hash": block_hash.hex(),
             "block_timestamp": timestamp}], upsert_on=("chain_id",))
        loaded = self.session.identity_map.get(self.session.identity_key(CursorRow, chain_id))
        if loaded is not None:
            self.session.expire(loaded)  # read again from the row just written
        self.session.execute(delete(BlockHashRow).where(
            BlockHashRow.chain_id == chain_id,
            BlockHashRow.block_number <= number - RECENT_HASHES))
        kept = {n: h for n, h in checkpoints if number - RECENT_HASHES < n < number}
        kept[number] = block_hash
        bulk.insert_rows(self.session, _BLOCK_HASHES, [
            {"chain_id": chain_id, "block_number": n, "block_hash": h.hex()}
            for n, h in sorted(kept.items())], upsert_on=("chain_id", "block_number"))

    def recent_block_hashes(self, chain_id: int) -> list[tuple[int, bytes]]:
        rows = self.session.execute(select(BlockHashRow.block_number, BlockHashRow.block_hash)
                                    .where(BlockHashRow.chain_id == chain_id)
                                    .order_by(BlockHashRow.block_number.desc()))
        return [(n, bytes.fromhex(h)) for n, h in rows]

    def forget_block_hashes_after(self, chain_id: int, number: int) -> None:
        self.session.execute(delete(BlockHashRow).where(
            BlockHashRow.chain_id == chain_id, BlockHashRow.block_number > number))
