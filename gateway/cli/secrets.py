"""`dvp-gateway secrets-key` and `dvp-gateway secrets rotate`: encryption at rest
(DVP_SECRETS_KEY)."""

from __future__ import annotations

import sys

import click

from gateway.cli.common import _cipher, _fail, _session, _settings


@click.command("secrets-key")
def secrets_key() -> None:
    """Print a new key for DVP_SECRETS_KEY (encryption at rest of managed keys)."""
    from gateway.keys import Cipher

    click.echo(Cipher.generate_key())


@click.group("secrets")
def secrets_group() -> None:
    """Encryption at rest (DVP_SECRETS_KEY): managed accounts' keys, managed buyers' secrets,
    webhook signing secrets."""


@secrets_group.command("rotate")
@click.option("--database-url", help="DVP_DATABASE_URL")
def secrets_rotate(database_url: str | None) -> None:
    """Re-encrypt every stored secret with the newest key of DVP_SECRETS_KEY.

    Rotation: set DVP_SECRETS_KEY=NEW,OLD (newest first) on every process and restart them,
    run this, then set DVP_SECRETS_KEY=NEW. One transaction: all or nothing."""
    from gateway.db.repository import UndecryptableError, rotate_encrypted

    settings = _settings(database_url=database_url)
    cipher = _cipher(settings)
    if cipher is None:
        _fail("DVP_SECRETS_KEY is not set: give the new key and then the old one, "
              "comma-separated (DVP_SECRETS_KEY=NEW,OLD); `dvp-gateway secrets-key` makes one")
    engine, factory = _session(settings)
    try:
        passes = []
        for _ in range(2):  # the second finds what was written under an old key meanwhile
            with factory.begin() as session:
                passes.append(rotate_encrypted(session, cipher))
    except UndecryptableError as exc:
        _fail(f"{exc}. Nothing was changed by this pass.")
    except Exception as exc:  # noqa: BLE001 - a CLI reports, it does not trace back
        _fail(f"cannot rotate the secrets in {settings.database_url!r}: {exc}")
    finally:
        engine.dispose()
    _report(*passes, cipher.key_count)


def _report(first: dict, second: dict, key_count: int) -> None:
    """What the two passes did, per table; exit 1 if the second found secrets written under
    an older key meanwhile."""
    total = 0
    for table, (rewritten, current) in first.items():
        rewritten += second[table][0]
        total += rewritten + current
        click.echo(f"{table}: {rewritten} re-encrypted, {current} already under the newest key")
    late = sum(rewritten for rewritten, _ in second.values())
    if late:
        click.echo(f"warning: {late} secret(s) were written under an older key while this ran "
                   "(and are rotated now): is a process still running with the old "
                   "DVP_SECRETS_KEY? Restart it with the new key first, then run this again "
                   "before dropping the old key.", err=True)
        sys.exit(1)
    click.echo(f"all {total} stored secret(s) are under the newest key"
               + (": the older keys can now be removed from DVP_SECRETS_KEY"
                  if key_count > 1 else ""))
