"""Encryption at rest: the columns that hold ciphertext, and key rotation
(`dvp-gateway secrets rotate`)."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session


def encrypted_columns():  # noqa: ANN201 - [(table name, key column, ciphertext column)]
    """Every column that holds `gateway.keys.Cipher` output: managed accounts' signing
    keys, managed buyers' unrevealed trade secrets, webhook endpoints' signing secrets."""
    from gateway.db.models import ManagedKeyRow, SecretRow, WebhookEndpointRow

    return [(ManagedKeyRow.__table__, "enterprise_id", "encrypted_key"),
            (SecretRow.__table__, "trade_id", "encrypted_secret"),
            (WebhookEndpointRow.__table__, "id", "encrypted_secret")]


class UndecryptableError(ValueError):
    """A stored ciphertext that no configured key decrypts."""


def rotate_encrypted(session: Session, cipher) -> dict[str, tuple[int, int]]:  # noqa: ANN001
    """Re-encrypt every stored ciphertext that is not under the cipher's newest key, in the
    caller's transaction. Per table: (rows rewritten, rows already under the newest key).
    Raises UndecryptableError (naming the row, never its content) when no key decrypts one:
    the caller rolls back, and nothing is half-rotated."""
    counts: dict[str, tuple[int, int]] = {}
    for table, key_name, column_name in encrypted_columns():
        key, column = table.c[key_name], table.c[column_name]
        rewritten = current = 0
        for row_key, token in session.execute(select(key, column).order_by(key)).all():
            if cipher.is_current(token):
                current += 1
                continue
            try:
                new = cipher.rotate(token)
            except ValueError:
                raise UndecryptableError(
                    f"{table.name}.{column_name} of {key_name} {row_key}: no key of "
                    "DVP_SECRETS_KEY decrypts it (is the key it was written with missing?)"
                ) from None
            # Compare-and-set: a row changed meanwhile is left as it is (rotate again).
            done = session.execute(update(table).where(key == row_key, column == token)
                                   .values({column_name: new}))
            rewritten += done.rowcount
        counts[table.name] = (rewritten, current)
    return counts
