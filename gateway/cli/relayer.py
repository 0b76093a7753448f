"""`dvp-gateway relayer run`: the settlement relayer as a process of its own."""

from __future__ import annotations

import signal
import threading
from dataclasses import replace
from typing import Any

import click

from gateway.cli.common import _cipher, _fail, _settings
from gateway.cli.nodes import _rpc_clients
from gateway.config import Settings


@click.group()
def relayer() -> None:
    """The settlement relayer."""


@relayer.command("run")
@click.option("--devnet", is_flag=True,
              help="Run against two fresh in-process chains (demo; nothing else can reach them).")
@click.option("--database-url", help="DVP_DATABASE_URL")
@click.option("--payment-rpc", "payment_rpc_url", help="DVP_PAYMENT_RPC_URL")
@click.option("--business-rpc", "business_rpc_url", help="DVP_BUSINESS_RPC_URL")
@click.option("--payment-htlc", help="DVP_PAYMENT_HTLC")
@click.option("--delivery-htlc", help="DVP_DELIVERY_HTLC")
@click.option("--confirmations", type=click.IntRange(0, 1000),
              help="Confirmation depth on both chains (DVP_*_CONFIRMATIONS).")
@click.option("--poll-interval", type=click.FloatRange(0.01, 600), help="DVP_POLL_INTERVAL")
@click.option("--json-logs/--console-logs", default=None, help="Log format (default: JSON "
              "unless stderr is a terminal).")
def relayer_run(devnet: bool, confirmations: int | None, json_logs: bool | None,
                **options: Any) -> None:
    """Watch both chains and settle trades until SIGTERM or SIGINT."""
    from gateway import logs
    from gateway.chain.heads import HeadWatcher
    from gateway.engine.egress import Egress
    from gateway.engine.webhooks import WebhookSender

    if confirmations is not None:
        options["payment_confirmations"] = options["business_confirmations"] = confirmations
    settings = _settings(**options)
    logs.configure(json=json_logs)
    gateway = _devnet_gateway(settings) if devnet else _rpc_gateway(settings)
    stop = threading.Event()
    webhooks = WebhookSender(gateway.session_factory, _cipher(settings),
                             egress=Egress(settings.webhook_allow_hosts))
    threading.Thread(target=webhooks.run_forever, args=(stop, 1.0), name="webhooks",
                     daemon=True).start()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = _serve_metrics(settings, gateway)
    watchers = [HeadWatcher(name, url, gateway.relayer.nudge).start()
                for name, url in (("payment", settings.payment_ws_url),
                                  ("business", settings.business_ws_url)) if url and not devnet]
    try:
        gateway.relayer.run_forever(stop, settings.poll_interval)
    finally:
        for watcher in watchers:
            watcher.stop()
        if server is not None:
            server.shutdown()
        gateway.engine.dispose()


def _serve_metrics(settings: Settings, gateway):  # noqa: ANN001, ANN202 - server or None
    """Every metric on DVP_METRICS_HOST:DVP_METRICS_PORT when that is set, to the bearer of
    DVP_OPS_TOKEN when that is set."""
    if settings.metrics_port is None:
        return None
    from gateway.engine import metrics

    try:
        return metrics.serve(gateway.session_factory, {
            chain.value: chain_id for chain, chain_id
            in gateway.dispatcher.chain_ids.items()}, settings.metrics_host,
            settings.metrics_port,
            settings.ops_token.get_secret_value() if settings.ops_token else None)
    except OSError as exc:
        _fail(f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port} "
              f"(DVP_METRICS_HOST/DVP_METRICS_PORT): {exc}")


def _devnet_gateway(settings: Settings):  # noqa: ANN202
    from gateway.chain.devnet import RELAYER, start_devnet
    from gateway.engine.build import build_gateway

    devnet = start_devnet(settings.payment_chain_id, settings.business_chain_id)
    return build_gateway(
        database_url=settings.database_url, payment=devnet.payment.client,
        business=devnet.business.client, payment_htlc=devnet.info.payment.htlc,
        delivery_htlc=devnet.info.business.htlc, relayer_key=devnet.account(RELAYER),
        # In-process chains never reorganise: what the poller sees is final.
        policy=replace(settings.timing_policy(), payment_finality=None, business_finality=None),
        payment_confirmations=0, business_confirmations=0)


def _rpc_gateway(settings: Settings):  # noqa: ANN202
    from gateway.chain.accounts import load_account
    from gateway.engine.build import build_gateway
    from gateway.engine.executor import SendPolicy

    clients = _rpc_clients(settings, relayer=True)
    try:
        key = load_account(settings.relayer_key.get_secret_value())  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 - never echo the key
        _fail("DVP_RELAYER_KEY is not a valid private key")
    return build_gateway(
        database_url=settings.database_url, payment=clients["payment"],
        business=clients["business"], payment_htlc=settings.payment_htlc,  # type: ignore[arg-type]
        delivery_htlc=settings.delivery_htlc, relayer_key=key,  # type: ignore[arg-type]
        policy=settings.timing_policy(), payment_confirmations=settings.payment_confirmations,
        business_confirmations=settings.business_confirmations,
        start_blocks=(settings.payment_start_block, settings.business_start_block),
        max_batch=settings.claim_batch_size, cipher=_cipher(settings),
        send_policy=SendPolicy(settings.tx_replace_after, settings.fee_bump_percent),
        max_reorg_depth=settings.max_reorg_depth, stall_after=settings.stall_alert_after,
        reconcile_every=settings.reconcile_every,
        finality=(settings.finality_rule("payment"), settings.finality_rule("business")))
