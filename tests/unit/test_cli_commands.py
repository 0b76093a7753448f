"""`gateway.cli` is a package of one module per command group (issue 12's size targets are
checked for every module by tests/unit/test_layering.py); `main` assembles every command."""

from __future__ import annotations

import click

from gateway.cli import main


def test_the_commands_are_those_of_dvp_gateway() -> None:
    def names(group: click.Group, prefix: str = "") -> set[str]:
        found = set()
        for name, command in group.commands.items():
            found.add(prefix + name)
            if isinstance(command, click.Group):
                found |= names(command, f"{prefix}{name} ")
        return found

    assert names(main) == {
        "api", "db", "db backup", "db upgrade", "demo", "devnet", "enterprise",
        "enterprise create", "enterprise list", "enterprise revoke-key", "enterprise rotate-key",
        "relayer", "relayer run", "run", "secrets", "secrets rotate", "secrets-key", "swap",
        "take-delivery-tx"}
