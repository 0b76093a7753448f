"""`dvp-gateway swap`: one trade on two in-process chains, printed as a timeline."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click

from gateway.cli.common import _settings


@click.command()
@click.option("--amount", default="250000.00", show_default=True,
              help="Payment amount in currency units (2 decimals), e.g. 1234.56.")
@click.option("--refund", is_flag=True, help="The buyer never takes delivery: both legs refund.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def swap(amount: str, refund: bool, as_json: bool) -> None:
    """Run one DvP trade on two in-process chains, settled by the relayer, with its timeline."""
    from gateway import logs
    from gateway.chain.devnet import RELAYER, start_devnet
    from gateway.engine.build import build_gateway
    from gateway.swap import run_swap

    units = _parse_amount(amount)
    settings = _settings()
    logs.configure(json=True, level=40)  # the timeline is the output; only errors logged
    devnet = start_devnet(settings.payment_chain_id, settings.business_chain_id)
    if not as_json:
        click.echo(f"payment chain  id {devnet.info.payment.chain_id}: token "
                   f"{devnet.info.payment.token}, PaymentHTLC {devnet.info.payment.htlc}")
        click.echo(f"business chain id {devnet.info.business.chain_id}: titles "
                   f"{devnet.info.business.titles}, DeliveryHTLC {devnet.info.business.htlc}")
    with tempfile.TemporaryDirectory(prefix="dvp-swap-") as tmp:
        from gateway.domain.policy import TimingPolicy

        gateway = build_gateway(
            database_url=f"sqlite:///{Path(tmp) / 'swap.db'}", payment=devnet.payment.client,
            business=devnet.business.client, payment_htlc=devnet.info.payment.htlc,
            delivery_htlc=devnet.info.business.htlc, relayer_key=devnet.account(RELAYER),
            policy=TimingPolicy(payment_confirmations=0, business_confirmations=0,
                                payment_block_time=1, business_block_time=1))
        result = run_swap(devnet, gateway, units, take_delivery=not refund,
                          report=None if as_json else _report)
        gateway.engine.dispose()
    if as_json:
        click.echo(json.dumps({
            "trade_id": result.trade_id, "phase": result.phase, "buyer_paid": result.buyer_paid,
            "seller_received": result.seller_received, "title_owner": result.title_owner,
            "token_id": result.token_id, "timeline": [e.__dict__ for e in result.timeline],
        }, indent=2))
        return
    who = {devnet.info.buyer: "buyer", devnet.info.seller: "seller"}
    click.echo(f"{result.phase}: buyer paid {_format(result.buyer_paid)}, seller received "
               f"{_format(result.seller_received)}, title #{result.token_id} held by "
               f"{who.get(result.title_owner, result.title_owner)}")


def _report(entry) -> None:  # noqa: ANN001 - a timeline entry
    where = f"{entry.chain:8} block {entry.block:>3}" if entry.block is not None \
        else f"{entry.chain:18}"
    tx = f"  ({entry.tx_hash[:12]}…)" if entry.tx_hash else ""
    click.echo(f"  [{where}] {entry.what}{tx}")


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
