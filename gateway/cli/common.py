"""What every command shares: settings from DVP_* variables, the error exit, the database and
the secrets cipher."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import click
from pydantic import ValidationError

from gateway import logs
from gateway.config import Settings


def _settings(**overrides: Any) -> Settings:
    """Settings from DVP_* variables, with command-line options (when given) on top."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(p) for p in error["loc"]) or "settings"
            click.echo(f"error: DVP_{field.upper()}: {error['msg']}", err=True)
        sys.exit(2)
    logs.keep_secret(logs.url_secrets(settings.database_url, path_is_secret=False))
    for url in (settings.payment_rpc_url, settings.business_rpc_url, settings.payment_ws_url,
                settings.business_ws_url):
        logs.keep_secret(logs.url_secrets(url))
    return settings


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {logs.redact(message)}", err=True)
    sys.exit(2)


def _session(settings: Settings):  # noqa: ANN202
    from gateway.engine.build import open_database

    try:
        engine, factory = open_database(settings.database_url)
    except Exception as exc:  # noqa: BLE001
        _fail(f"cannot open the database {settings.database_url!r}: {exc}")
    return engine, factory


def _cipher(settings: Settings):  # noqa: ANN202
    from gateway.keys import Cipher

    if settings.secrets_key is None:
        return None
    try:
        return Cipher(settings.secrets_key.get_secret_value())
    except ValueError as exc:
        _fail(str(exc))
