"""`dvp-gateway devnet`: two anvil nodes with every contract deployed, and the DVP_* lines
that `dvp-gateway api` and `dvp-gateway relayer run` read."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

import click

from gateway.cli.common import _cipher, _fail, _settings
from gateway.config import Settings


@click.command()
@click.option("--block-time", default=1.0, show_default=True, type=click.FloatRange(0, 60),
              help="Seconds between blocks (0: a block per transaction, anvil's automine).")
@click.option("--env-file", type=click.Path(dir_okay=False),
              help="Also write the DVP_* lines to this file.")
@click.option("--demo", "demo_dir", type=click.Path(file_okay=False),
              help="Also create a managed buyer (with test money) and a managed seller (with "
                   "titles) in DVP_DATABASE_URL, keys encrypted with DVP_SECRETS_KEY, and write "
                   "their API keys to DIR/demo.json, for `dvp-gateway demo --api URL "
                   "--workdir DIR`.")
def devnet(block_time: float, env_file: str | None, demo_dir: str | None) -> None:
    """Two anvil nodes on loopback with every contract deployed; prints the DVP_* settings
    for `dvp-gateway api` and `dvp-gateway relayer run`, and runs until Ctrl-C or SIGTERM."""
    from gateway.chain.anvil import AnvilError, devnet_env, start_anvil_devnet
    from gateway.chain.devnet import RELAYER, asset_env

    settings = _settings()
    cipher = _cipher(settings)
    if demo_dir is not None and cipher is None:
        _fail("--demo needs DVP_SECRETS_KEY (dvp-gateway secrets-key makes one): the managed "
              "enterprises' keys are stored encrypted with it")
    try:
        net = start_anvil_devnet(settings.payment_chain_id, settings.business_chain_id,
                                 block_time=block_time or None)
    except AnvilError as exc:
        _fail(str(exc))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        lines = devnet_env(net, net.account(RELAYER).key, block_time or None) + \
            asset_env(net.info)
        _print_header(net)
        if demo_dir is not None:
            lines.append(f"DVP_DATABASE_URL={settings.database_url}")
            _write_demo(net, settings, cipher, Path(demo_dir))
        click.echo("\n".join(lines), nl=True)
        if env_file:
            from gateway.keys import write_private_file

            try:
                write_private_file(Path(env_file), "\n".join(lines) + "\n")  # a relayer key
            except OSError as exc:
                _fail(f"cannot write --env-file {env_file}: {exc}")
        sys.stdout.flush()
        while not stop.is_set() and net.payment.node.running() and net.business.node.running():
            stop.wait(0.5)
        if not stop.is_set():
            click.echo("error: an anvil node exited", err=True)
    finally:
        net.payment.close()
        net.business.close()


def _print_header(net) -> None:  # noqa: ANN001 - an anvil devnet
    """The comment lines above the DVP_* settings: processes, roles, contracts."""
    from gateway.chain.devnet import (
        BUYER,
        DEV_KEYS_NOTE,
        ISSUER,
        RELAYER,
        SELLER,
        shared_address_notes,
    )

    roles = ", ".join(f"{name} {net.account(i).address}" for name, i in (
        ("issuer", ISSUER), ("buyer", BUYER), ("seller", SELLER), ("relayer", RELAYER)))
    click.echo(f"# dvp-gateway devnet: anvil pids {net.payment.node.pid} (payment), "
               f"{net.business.node.pid} (business); roles: {roles}")
    click.echo(f"# {DEV_KEYS_NOTE} (DVP_RELAYER_KEY below is one of them)")
    click.echo(f"# payment token {net.info.payment.token} (DVP_PAYMENT_TOKEN), title "
               f"registry {net.info.business.titles} (DVP_TITLE_REGISTRY)")
    for note in shared_address_notes(net.info):
        click.echo(f"# {note}")


def _write_demo(net, settings: Settings, cipher, workdir: Path) -> None:  # noqa: ANN001
    from gateway.engine.build import open_database
    from gateway.runner import create_demo_enterprises

    try:
        engine, factory = open_database(settings.database_url)
    except Exception as exc:  # noqa: BLE001
        _fail(f"cannot open the database {settings.database_url!r}: {exc}")
    try:
        demo = create_demo_enterprises(net, factory, cipher)
    finally:
        engine.dispose()
    workdir.mkdir(parents=True, exist_ok=True)
    from gateway.keys import write_private_file

    write_private_file(workdir / "demo.json", json.dumps(demo, indent=2))  # API keys
