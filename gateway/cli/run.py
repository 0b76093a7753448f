"""`dvp-gateway run` (everything in one process on the embedded default) and `dvp-gateway
demo` (complete trades driven through the HTTP API, as an enterprise would)."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path

import click

from gateway.cli.common import _fail, _settings


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workdir", default=".dvp", show_default=True, type=click.Path(file_okay=False),
              help="Where the database, the demo keys (demo.json) and the demo secrets key go.")
@click.option("--poll-interval", default=0.5, show_default=True,
              type=click.FloatRange(0.01, 60))
def run(host: str, port: int, workdir: str, poll_interval: float) -> None:
    """Start everything on the embedded default: two in-process chains, SQLite, the relayer
    and the API, with two funded demo enterprises."""
    import uvicorn

    from gateway import logs
    from gateway.api.context import Limits
    from gateway.runner import build_system

    settings = _settings()
    logs.configure(json=None)
    system = build_system(settings, Path(workdir), limits=Limits.from_settings(settings))
    system.ctx.configure(settings)  # DVP_OPS_TOKEN, DVP_TRUSTED_PROXIES
    stop_ops = None
    base = ops = f"http://{host}:{port}"
    if settings.ops_port is not None:  # /healthz, /readyz, /metrics there, not on --port
        stop_ops = _serve_ops(system, settings)
        ops = f"http://{settings.ops_host}:{settings.ops_port}"
    demo = system.demo["enterprises"]
    click.echo(f"dvp-gateway running: payment chain {system.devnet.info.payment.chain_id}, "
               f"business chain {system.devnet.info.business.chain_id}, "
               f"database {Path(workdir) / 'gateway.db'}")
    click.echo(f"  API   {base}/v1    docs {base}/docs    metrics {ops}/metrics")
    click.echo(f"  demo buyer  {demo['buyer']['id']}  key {demo['buyer']['api_key']}")
    click.echo(f"  demo seller {demo['seller']['id']}  key {demo['seller']['api_key']}")
    click.echo(f"  (also in {Path(workdir) / 'demo.json'}; try: dvp-gateway demo --api {base})")
    system.start_relayer(poll_interval)
    system.start_webhooks()
    system.start_block_producer(1.0)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal again with the
    # handler found before it: exit 0 there, after the threads and the database are closed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(system.app, host=host, port=port, log_level="warning")
    except KeyboardInterrupt:
        pass
    finally:
        if stop_ops is not None:
            stop_ops()
        system.close()


def _serve_ops(system, settings):  # noqa: ANN001, ANN202 - (System, Settings) -> stop
    """The operator endpoints on DVP_OPS_HOST:DVP_OPS_PORT, and the API without them."""
    from gateway.api.app import create_app
    from gateway.api.ops import create_ops_app, serve_in_thread

    system.app = create_app(system.ctx, webhook_egress=system.webhook_egress, ops_routes=False)
    try:
        return serve_in_thread(create_ops_app(system.ctx), settings.ops_host, settings.ops_port)
    except OSError as exc:
        system.close()
        _fail(f"cannot serve the operator endpoints on {settings.ops_host}:"
              f"{settings.ops_port} (DVP_OPS_HOST/DVP_OPS_PORT): {exc}")


@click.command()
@click.option("--api", "api_url", help="URL of the running gateway to drive (default: "
              "http://127.0.0.1:8000, where `dvp-gateway run` / `make run` listens); its demo "
              "keys are read from --workdir/demo.json.")
@click.option("--workdir", default=".dvp", show_default=True, type=click.Path(file_okay=False),
              help="The --workdir of the running gateway's `dvp-gateway run`.")
@click.option("--own-gateway", is_flag=True, help="Start a gateway of its own for the demo "
              "(in-process chains, a temporary directory) instead of driving a running one.")
@click.option("--no-refund", is_flag=True, help="Only the trade that settles.")
def demo(api_url: str | None, workdir: str, own_gateway: bool, no_refund: bool) -> None:
    """Drive complete trades through the HTTP API as an enterprise would, on the gateway that
    `dvp-gateway run` (`make run`) started; if none is running, say so (--own-gateway: start
    one for the demo)."""
    import httpx

    from gateway import demo as demo_module
    from gateway import logs
    from gateway.demo import Api, DemoFailed, run_demo
    from gateway.logs import trade_ref

    logs.configure(json=True, level=40)
    server = None
    if own_gateway:
        if api_url:
            _fail("--own-gateway starts a gateway of its own: it takes no --api")
        server, api_url, info, where = _start_own_gateway()
        click.echo(f"started a gateway of its own for this demo at {api_url} (workdir {where}, "
                   "stopped at the end)")
    else:
        api_url = (api_url or demo_module.DEFAULT_API).rstrip("/")
        try:
            info = demo_module.connect(api_url, Path(workdir))
        except (DemoFailed, httpx.HTTPError, ValueError, KeyError) as exc:
            _fail(str(exc))
        click.echo(f"driving the gateway running at {api_url} (demo keys from "
                   f"{Path(workdir) / 'demo.json'})")
    ent = info["enterprises"]
    try:
        with httpx.Client(base_url=api_url, timeout=30) as client:
            api = Api(client, ent["buyer"]["api_key"], ent["seller"]["api_key"])
            results = run_demo(api, info, click.echo, refund=not no_refund)
    except (DemoFailed, httpx.HTTPError) as exc:
        _fail(f"demo failed: {exc}")
    finally:
        if server is not None:
            server()
    click.echo("\n" + "\n".join(f"trade {trade_ref(r['id'])}: {r['phase']}" for r in results))


def _start_own_gateway():  # noqa: ANN202
    """A whole gateway for the demo alone (`demo --own-gateway`): (stop, URL, demo keys,
    workdir). Its demo.json is readable by its owner only from its creation."""
    import socket
    import tempfile

    import uvicorn

    from gateway.keys import write_private_file
    from gateway.runner import build_system, create_demo_enterprises

    tmp = Path(tempfile.mkdtemp(prefix="dvp-demo-"))
    system = build_system(_settings(), tmp, demo=False)
    system.demo = create_demo_enterprises(system.devnet, system.gateway.session_factory,
                                          system.ctx.cipher)
    write_private_file(tmp / "demo.json", json.dumps(system.demo, indent=2))  # API keys
    system.start_relayer(0.2)
    system.start_block_producer(1.0)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(system.app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)

    def stop() -> None:
        server.should_exit = True
        thread.join(10)
        system.close()

    return stop, f"http://127.0.0.1:{port}", system.demo, tmp
