"""dvp-gateway command line: run | demo | swap | devnet | api | relayer run | enterprise |
db upgrade/backup | secrets | take-delivery-tx.

One module per command group; this one assembles them into `main` (the `dvp-gateway` entry
point, also `python -m gateway.cli`). The names `gateway.cli.api`, `gateway.cli.run`, ... are
those modules (the commands are attributes of them). Commands import what they need when they
run, so that `--help` and light commands do not load web3 or the database layer.
"""

from __future__ import annotations

import click

from gateway.cli import api, db, devnet, enterprise, relayer, run, secrets, swap, tx
from gateway.cli.common import _cipher, _fail, _session, _settings
from gateway.cli.devnet import _write_demo
from gateway.cli.nodes import _rpc_clients

__all__ = ["main", "_cipher", "_fail", "_rpc_clients", "_session", "_settings", "_write_demo"]


@click.group()
@click.version_option(package_name="dvp-gateway")
def main() -> None:
    """Cross-chain delivery-versus-payment gateway."""


for _command in (swap.swap, run.run, run.demo, devnet.devnet, db.db, secrets.secrets_key,
                 secrets.secrets_group, enterprise.enterprise, tx.take_delivery_tx,
                 relayer.relayer, api.api):
    main.add_command(_command)
