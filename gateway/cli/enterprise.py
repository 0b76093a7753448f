"""`dvp-gateway enterprise`: enterprises (API tenants) and their API keys."""

from __future__ import annotations

import click

from gateway.cli.common import _cipher, _fail, _session, _settings


@click.group()
def enterprise() -> None:
    """Enterprises (API tenants) and their API keys."""


@enterprise.command("create")
@click.option("--name", required=True, help="Unique name of the enterprise.")
@click.option("--managed", is_flag=True,
              help="The gateway generates and holds its chain keys (needs DVP_SECRETS_KEY).")
@click.option("--payment-address", help="Its own address on the payment chain (self-custody).")
@click.option("--business-address", help="Its own address on the business chain (self-custody).")
@click.option("--database-url", help="DVP_DATABASE_URL")
def enterprise_create(name: str, managed: bool, payment_address: str | None,
                      business_address: str | None, database_url: str | None) -> None:
    """Create an enterprise; prints its id and its API key (shown once)."""
    from gateway.api.enterprises import EnterpriseError, create_enterprise
    from gateway.chain.accounts import checksum_address

    if not managed:
        if not payment_address or not business_address:
            _fail("give --managed, or both --payment-address and --business-address")
        try:
            payment_address = checksum_address(payment_address)  # type: ignore[arg-type]
        except ValueError as exc:
            _fail(f"--payment-address: {exc}")
        try:
            business_address = checksum_address(business_address)  # type: ignore[arg-type]
        except ValueError as exc:
            _fail(f"--business-address: {exc}")
    settings = _settings(database_url=database_url)
    engine, factory = _session(settings)
    try:
        with factory.begin() as session:
            ent, key = create_enterprise(session, name, managed=managed,
                                         cipher=_cipher(settings),
                                         payment_address=payment_address,
                                         business_address=business_address)
    except EnterpriseError as exc:
        _fail(f"--{exc.field.replace('_', '-')}: {exc.args[0].split(': ', 1)[1]}")
    finally:
        engine.dispose()
    click.echo(f"enterprise {ent.id}  {ent.name}  {'managed' if ent.managed else 'self-custody'}")
    click.echo(f"payment address  {ent.payment_address}")
    click.echo(f"business address {ent.business_address}")
    click.echo(f"api key {key}   (shown once: store it now)")


@enterprise.command("list")
@click.option("--database-url", help="DVP_DATABASE_URL")
def enterprise_list(database_url: str | None) -> None:
    """List enterprises and their API keys (prefixes only, never secrets)."""
    from gateway.api.enterprises import list_enterprises, list_keys

    settings = _settings(database_url=database_url)
    engine, factory = _session(settings)
    with factory() as session:
        for ent in list_enterprises(session):
            click.echo(f"{ent.id}  {ent.name}  {'managed' if ent.managed else 'self-custody'}  "
                       f"{ent.payment_address}")
            for key in list_keys(session, ent.id):
                state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
                click.echo(f"    key {key.id}  {key.prefix}…  {state}")
    engine.dispose()


@enterprise.command("rotate-key")
@click.argument("enterprise_ref")
@click.option("--database-url", help="DVP_DATABASE_URL")
def enterprise_rotate(enterprise_ref: str, database_url: str | None) -> None:
    """Revoke the enterprise's active keys and print a new one (shown once)."""
    from gateway.api.enterprises import EnterpriseError, find_enterprise, rotate_keys

    settings = _settings(database_url=database_url)
    engine, factory = _session(settings)
    try:
        with factory.begin() as session:
            key = rotate_keys(session, find_enterprise(session, enterprise_ref).id)
    except EnterpriseError as exc:
        _fail(str(exc))
    finally:
        engine.dispose()
    click.echo(f"api key {key}   (shown once: store it now; older keys are revoked)")


@enterprise.command("revoke-key")
@click.argument("key_id")
@click.option("--database-url", help="DVP_DATABASE_URL")
def enterprise_revoke(key_id: str, database_url: str | None) -> None:
    """Revoke one API key by its id (see `enterprise list`)."""
    from gateway.api.enterprises import EnterpriseError, revoke_key

    settings = _settings(database_url=database_url)
    engine, factory = _session(settings)
    try:
        with factory.begin() as session:
            revoke_key(session, key_id)
    except EnterpriseError as exc:
        _fail(str(exc))
    finally:
        engine.dispose()
    click.echo(f"revoked {key_id}")
