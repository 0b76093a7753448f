"""dvp-gateway command line."""

from __future__ import annotations

import json
import sys

import click
from pydantic import ValidationError

from gateway.config import Settings


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(p) for p in error["loc"]) or "settings"
            click.echo(f"error: configuration {field}: {error['msg']}", err=True)
        sys.exit(2)


@click.group()
@click.version_option(package_name="dvp-gateway")
def main() -> None:
    """Cross-chain delivery-versus-payment gateway."""


@main.command()
@click.option("--amount", default="250000.00", show_default=True,
              help="Payment amount in currency units (2 decimals), e.g. 1234.56.")
@click.option("--refund", is_flag=True, help="The buyer never takes delivery: both legs refund.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def swap(amount: str, refund: bool, as_json: bool) -> None:
    """Run one atomic DvP swap on two in-process chains and print its timeline."""
    from gateway.chain.devnet import start_devnet
    from gateway.swap import run_swap

    units = _parse_amount(amount)
    settings = _settings()
    devnet = start_devnet(settings.payment_chain_id, settings.business_chain_id)
    if not as_json:
        click.echo(f"payment chain  id {devnet.info.payment.chain_id}: token "
                   f"{devnet.info.payment.token}, PaymentHTLC {devnet.info.payment.htlc}")
        click.echo(f"business chain id {devnet.info.business.chain_id}: titles "
                   f"{devnet.info.business.titles}, DeliveryHTLC {devnet.info.business.htlc}")

    def report(entry) -> None:  # noqa: ANN001
        if not as_json:
            click.echo(f"  [{entry.chain:8} block {entry.block:>3}] {entry.what}"
                       f"  ({entry.tx_hash[:12]}…)")

    result = run_swap(devnet, units, take_delivery=not refund, report=report)
    if as_json:
        click.echo(json.dumps({
            "buyer_paid": result.buyer_paid, "seller_received": result.seller_received,
            "title_owner": result.title_owner, "token_id": result.token_id,
            "timeline": [e.__dict__ for e in result.timeline],
        }, indent=2))
        return
    who = {devnet.info.buyer: "buyer", devnet.info.seller: "seller"}
    outcome = "refunded" if refund else "settled"
    click.echo(f"{outcome}: buyer paid {_format(result.buyer_paid)}, seller received "
               f"{_format(result.seller_received)}, title #{result.token_id} held by "
               f"{who.get(result.title_owner, result.title_owner)}")


def _parse_amount(text: str) -> int:
    """Currency units with at most 2 decimals -> integer token units, exactly (no floats)."""
    whole, _, cents = text.strip().partition(".")
    if not whole.isdigit() or (cents and (not cents.isdigit() or len(cents) > 2)):
        raise click.BadParameter(f"{text!r} is not an amount with at most 2 decimals",
                                 param_hint="--amount")
    units = int(whole) * 100 + int(cents.ljust(2, "0") or 0)
    if units <= 0:
        raise click.BadParameter("must be positive", param_hint="--amount")
    return units


def _format(units: int) -> str:
    return f"{units // 100:,}.{units % 100:02d}"


if __name__ == "__main__":
    main()
