"""dvp-gateway command line: swap | devnet | db upgrade | relayer run."""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

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


@click.group()
@click.version_option(package_name="dvp-gateway")
def main() -> None:
    """Cross-chain delivery-versus-payment gateway."""


# --- swap -------------------------------------------------------------------------------------


@main.command()
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

        def report(entry) -> None:  # noqa: ANN001
            if not as_json:
                where = f"{entry.chain:8} block {entry.block:>3}" if entry.block is not None \
                    else f"{entry.chain:18}"
                tx = f"  ({entry.tx_hash[:12]}…)" if entry.tx_hash else ""
                click.echo(f"  [{where}] {entry.what}{tx}")

        result = run_swap(devnet, gateway, units, take_delivery=not refund, report=report)
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


# --- run ---------------------------------------------------------------------------------------


@main.command()
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
        from gateway.api.app import create_app
        from gateway.api.ops import create_ops_app, serve_in_thread

        system.app = create_app(system.ctx, webhook_egress=system.webhook_egress,
                                ops_routes=False)
        try:
            stop_ops = serve_in_thread(create_ops_app(system.ctx), settings.ops_host,
                                       settings.ops_port)
        except OSError as exc:
            system.close()
            _fail(f"cannot serve the operator endpoints on {settings.ops_host}:"
                  f"{settings.ops_port} (DVP_OPS_HOST/DVP_OPS_PORT): {exc}")
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


@main.command()
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


# --- devnet -----------------------------------------------------------------------------------


@main.command()
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
    from gateway.chain.devnet import (
        BUYER,
        DEV_KEYS_NOTE,
        ISSUER,
        RELAYER,
        SELLER,
        asset_env,
        shared_address_notes,
    )

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
        roles = ", ".join(f"{name} {net.account(i).address}" for name, i in (
            ("issuer", ISSUER), ("buyer", BUYER), ("seller", SELLER), ("relayer", RELAYER)))
        click.echo(f"# dvp-gateway devnet: anvil pids {net.payment.node.pid} (payment), "
                   f"{net.business.node.pid} (business); roles: {roles}")
        click.echo(f"# {DEV_KEYS_NOTE} (DVP_RELAYER_KEY below is one of them)")
        click.echo(f"# payment token {net.info.payment.token} (DVP_PAYMENT_TOKEN), title "
                   f"registry {net.info.business.titles} (DVP_TITLE_REGISTRY)")
        for note in shared_address_notes(net.info):
            click.echo(f"# {note}")
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


# --- db ---------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema and backups."""


@db.command("upgrade")
@click.option("--database-url", help="SQLAlchemy URL (default: DVP_DATABASE_URL).")
def db_upgrade(database_url: str | None) -> None:
    """Apply every pending migration."""
    from gateway.db import migrate
    from gateway.db.session import make_engine

    settings = _settings(database_url=database_url)
    engine = make_engine(settings.database_url, synchronous=settings.sqlite_synchronous)
    try:
        migrate.upgrade(engine)
        click.echo(f"database at revision {migrate.current_revision(engine)}")
    except Exception as exc:  # noqa: BLE001 - a CLI reports, it does not trace back
        click.echo(f"error: cannot upgrade {engine.url!r}: {exc}", err=True)
        sys.exit(1)
    finally:
        engine.dispose()


@db.command("backup")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
@click.option("--database-url", help="SQLAlchemy URL (default: DVP_DATABASE_URL).")
def db_backup(path: str, force: bool, database_url: str | None) -> None:
    """Copy a SQLite database to PATH, consistently, while the gateway runs (SQLite's online
    backup API), check the copy (PRAGMA integrity_check) and print its schema revision.
    PostgreSQL: use pg_dump (the command is printed)."""
    from sqlalchemy.engine import URL, make_url
    from sqlalchemy.exc import ArgumentError

    settings = _settings(database_url=database_url)
    try:
        url = make_url(settings.database_url)
    except ArgumentError as exc:
        _fail(f"DVP_DATABASE_URL is not a database URL: {exc}")
    if url.get_backend_name() == "postgresql":
        libpq = URL.create("postgresql", username=url.username, host=url.host, port=url.port,
                           database=url.database, query=url.query).render_as_string(
                               hide_password=False)  # libpq's form, without the password
        _fail("db backup copies SQLite files; back up PostgreSQL with pg_dump, online and "
              f"consistent:\n  pg_dump --format=custom --file={_shell_quote(path)} "
              f"--dbname={_shell_quote(libpq)}\n(the password from PGPASSWORD or ~/.pgpass; "
              "restore into an empty database with pg_restore --dbname=URL FILE)")
    if url.get_backend_name() != "sqlite":
        _fail(f"db backup supports SQLite (and names the command for PostgreSQL), not "
              f"{url.get_backend_name()}")
    if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
        _fail(f"db backup needs a SQLite database file, not {url.database or 'memory'!r}")
    from gateway.db.session import BackupError, backup_sqlite

    try:
        revision, size = backup_sqlite(Path(url.database), Path(path), force=force)
    except BackupError as exc:
        _fail(str(exc))
    click.echo(f"backed up {url.database} to {path}: {size} bytes, integrity_check ok, "
               f"alembic revision {revision or 'none (not a migrated gateway database?)'}")


def _shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


# --- enterprises -----------------------------------------------------------------------------


@main.command("secrets-key")
def secrets_key() -> None:
    """Print a new key for DVP_SECRETS_KEY (encryption at rest of managed keys)."""
    from gateway.keys import Cipher

    click.echo(Cipher.generate_key())


@main.group("secrets")
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
    first, second = passes
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
                  if cipher.key_count > 1 else ""))


@main.group()
def enterprise() -> None:
    """Enterprises (API tenants) and their API keys."""


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


# --- self-custody buyer: take delivery ----------------------------------------------------------


@main.command("take-delivery-tx")
@click.option("--instructions", "instructions_file", required=True, type=click.File("r"),
              help="The JSON document GET /v1/trades/{id}/instructions returned at step "
                   "take_delivery (a file, or - for standard input).")
@click.option("--secret", help="Your 32-byte secret, 0x and 64 hex digits (its sha256 is the "
              "trade's hashlock). Prefer --secret-file: a command line is visible to others.")
@click.option("--secret-file", type=click.File("r"), help="A file holding the secret.")
@click.option("--rpc-url", help="The business chain's JSON-RPC node: check the chain id, the "
              "time left and the claim itself (eth_call) there before printing or sending.")
@click.option("--key-file", type=click.File("r"), help="With --send: a file holding your "
              "business-chain private key (0x and 64 hex digits).")
@click.option("--send", is_flag=True, help="Sign with --key-file, send through --rpc-url and "
              "wait for the receipt.")
def take_delivery_tx(instructions_file: Any, secret: str | None, secret_file: Any,
                     rpc_url: str | None, key_file: Any, send: bool) -> None:
    """Build the business-chain transaction with which a self-custody buyer takes delivery:
    claim(lock, secret) on the DeliveryHTLC. Checks sha256(secret) against the lock's hashlock
    before anything else (a claim with a wrong secret reverts, costs its fee and publishes
    the wrong secret only; one mined after T_deliver publishes the right one for nothing), and
    prints the transaction (chain_id, to, data) for your wallet, or sends it."""
    from gateway.chain.htlc import GAS_DELIVERY_EXIT

    if (secret is None) == (secret_file is None):
        _fail("give the secret with --secret or --secret-file (one of them)")
    if send and (rpc_url is None or key_file is None):
        _fail("--send needs --rpc-url and --key-file")
    if key_file is not None and not send:
        _fail("--key-file is only used with --send")
    preimage = _hex32(secret if secret is not None else secret_file.read(), "the secret")
    lock, tx = _claim_template(instructions_file)
    from gateway.chain.htlc import delivery_claim_calldata
    from gateway.domain.locks import hashlock_of

    if hashlock_of(preimage) != lock.hashlock:
        _fail(f"sha256 of this secret is 0x{hashlock_of(preimage).hex()}, not the trade's "
              f"hashlock 0x{lock.hashlock.hex()}: a claim with it would revert (and cost its "
              "fee). Check that this is the secret of trade 0x" + lock.trade_id.hex())
    data = delivery_claim_calldata(lock, preimage)
    out = {"chain": "business", "chain_id": tx["chain_id"], "to": tx["to"],
           "data": "0x" + data.hex(), "value": "0", "gas": GAS_DELIVERY_EXIT,
           "description": f"take delivery of title #{lock.token_id}: claim it with your "
                          f"secret before T_deliver {lock.timelock} (unix seconds, chain time)"}
    if rpc_url is None:
        click.echo(json.dumps(out, indent=2))
        click.echo("note: sending this publishes your secret, which releases your payment to "
                   f"the seller; it must be mined before T_deliver {lock.timelock}", err=True)
        return
    _send_claim(rpc_url, out, lock, key_file.read() if key_file is not None else None, send)


def _hex32(text: str, what: str) -> bytes:
    value = text.strip()
    body = value[2:] if value[:2] in ("0x", "0X") else value
    if len(body) != 64 or any(c not in "0123456789abcdefABCDEF" for c in body):
        _fail(f"{what} must be 32 bytes: 0x and 64 hex digits")  # never echo it
    return bytes.fromhex(body)


def _claim_template(instructions_file: Any):  # noqa: ANN202 - (DeliveryLock, tx dict)
    """The DeliveryHTLC claim in an instructions document, decoded: its lock and its tx."""
    from gateway.chain.accounts import is_address, to_checksum
    from gateway.chain.calls import decode_delivery_claim

    try:
        doc = json.load(instructions_file)
    except (ValueError, OSError) as exc:
        _fail(f"--instructions is not a JSON document: {exc}")
    if not isinstance(doc, dict) or not isinstance(doc.get("transactions"), list):
        _fail("--instructions is not an instructions document (GET "
              "/v1/trades/{id}/instructions): no transactions list")
    if doc.get("step") != "take_delivery":
        _fail(f"these instructions are for step {doc.get('step')!r}, not take_delivery"
              + (f": {doc['note']}" if doc.get("note") else ""))
    claims = [t for t in doc["transactions"] if isinstance(t, dict)
              and t.get("chain") == "business"]
    if len(claims) != 1 or len(doc["transactions"]) != 1:
        _fail("a take_delivery step has exactly one business-chain transaction; this one has "
              f"{len(doc['transactions'])}")
    (tx,) = claims
    try:
        data = bytes.fromhex(str(tx.get("data", "")).removeprefix("0x"))
        lock, placeholder = decode_delivery_claim(data)
        if not is_address(tx.get("to")) or not isinstance(tx.get("chain_id"), int):
            raise ValueError("no contract address or chain id")
    except Exception as exc:  # noqa: BLE001 - any malformed document
        _fail(f"the take_delivery transaction is not a DeliveryHTLC claim: {exc}")
    if len(placeholder) != 32:
        _fail("the take_delivery transaction's secret placeholder is not 32 bytes")
    return lock, {**tx, "to": to_checksum(tx["to"])}


def _send_claim(rpc_url: str, out: dict, lock, key_text: str | None,  # noqa: ANN001
                send: bool) -> None:
    """Check the claim against the node (chain id, time left, eth_call); send it if asked."""
    from gateway.chain.accounts import load_account
    from gateway.chain.client import http_client
    from gateway.contracts import load_artifact

    logs.keep_secret(logs.url_secrets(rpc_url))
    account = None
    if key_text is not None:
        try:
            account = load_account(_hex32(key_text, "the key in --key-file"))
        except ValueError:
            _fail("--key-file does not hold a valid private key")
    client = http_client(rpc_url, "business", out["chain_id"], timeout=30)
    try:
        actual = client.node_chain_id()
        now = client.head()[0]
    except Exception as exc:  # noqa: BLE001
        _fail(f"the node at {rpc_url} is unreachable: {exc}")
    if actual != out["chain_id"]:
        _fail(f"the node at {rpc_url} is chain {actual}, the claim is for chain "
              f"{out['chain_id']}")
    if now + 1 >= lock.timelock:
        _fail(f"too late: the next block cannot be before T_deliver {lock.timelock} (chain "
              f"time {now}); do not send the claim: it would revert and still publish your "
              "secret. The title and your payment go back to their owners.")
    data = bytes.fromhex(out["data"][2:])
    sender = account.address if account is not None else lock.buyer
    try:
        revert = client.simulate(sender, out["to"], data, gas=out["gas"],
                                 abi=load_artifact("DeliveryHTLC").abi)
    except Exception as exc:  # noqa: BLE001
        _fail(f"cannot check the claim at {rpc_url}: {exc}")
    if revert is not None:
        _fail(f"the claim would revert on chain ({revert.name}{revert.values!r}); not sent")
    if not send:
        click.echo(json.dumps(out, indent=2))
        click.echo(f"checked at {rpc_url}: the claim succeeds now (chain time {now}, T_deliver "
                   f"{lock.timelock}); sending it publishes your secret", err=True)
        return
    assert account is not None
    try:
        raw = client.sign_with_nonce(account, to=out["to"], data=data, gas=out["gas"],
                                     nonce=client.pending_nonce(account.address),
                                     fees=client.suggest_fees())
        receipt = client.wait(client.send_raw(raw))
    except Exception as exc:  # noqa: BLE001
        _fail(f"sending the claim failed: {exc}")
    click.echo(json.dumps({**out, "tx_hash": "0x" + receipt.tx_hash.hex(),
                           "block_number": receipt.block_number,
                           "status": "succeeded" if receipt.succeeded else "reverted"},
                          indent=2))
    if not receipt.succeeded:
        sys.exit(1)


# --- relayer ----------------------------------------------------------------------------------


@main.group()
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

    if confirmations is not None:
        options["payment_confirmations"] = options["business_confirmations"] = confirmations
    settings = _settings(**options)
    logs.configure(json=json_logs)
    gateway = _devnet_gateway(settings) if devnet else _rpc_gateway(settings)
    stop = threading.Event()
    from gateway.engine.egress import Egress
    from gateway.engine.webhooks import WebhookSender

    webhooks = WebhookSender(gateway.session_factory, _cipher(settings),
                             egress=Egress(settings.webhook_allow_hosts))
    threading.Thread(target=webhooks.run_forever, args=(stop, 1.0), name="webhooks",
                     daemon=True).start()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = None
    if settings.metrics_port is not None:
        from gateway.engine import metrics

        try:
            server = metrics.serve(gateway.session_factory, {
                chain.value: chain_id for chain, chain_id
                in gateway.dispatcher.chain_ids.items()}, settings.metrics_host,
                settings.metrics_port)
        except OSError as exc:
            _fail(f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port} "
                  f"(DVP_METRICS_HOST/DVP_METRICS_PORT): {exc}")
    from gateway.chain.heads import HeadWatcher

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


def _fail(message: str) -> None:
    click.echo(f"error: {logs.redact(message)}", err=True)
    sys.exit(2)


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


def _rpc_clients(settings: Settings, *, relayer: bool) -> dict:
    """Clients for both configured JSON-RPC nodes, after checking chain ids and contract code."""
    from gateway.chain.client import http_client

    needed = ["payment_rpc_url", "business_rpc_url", "payment_htlc", "delivery_htlc"]
    missing = [n for n in needed + (["relayer_key"] if relayer else [])
               if getattr(settings, n) is None]
    if missing:
        _fail("missing configuration: " + ", ".join(f"DVP_{m.upper()}" for m in missing))
    clients = {}
    for name, url, expected in (("payment", settings.payment_rpc_url, settings.payment_chain_id),
                                ("business", settings.business_rpc_url,
                                 settings.business_chain_id)):
        try:  # the node's chain id, asked now
            client = http_client(url, name, timeout=30,  # type: ignore[arg-type]
                                 fee_cap=settings.max_fee_per_gas,
                                 priority_fee=settings.priority_fee_per_gas)
        except Exception as exc:  # noqa: BLE001
            _fail(f"{name} chain at {url} is unreachable: {exc}")
        if client.chain_id != expected:
            _fail(f"{name} chain at {url} has chain id {client.chain_id}, expected {expected} "
                  f"(DVP_{name.upper()}_CHAIN_ID)")
        clients[name] = client
    if clients["payment"].chain_id == clients["business"].chain_id:
        _fail(f"both chains report chain id {clients['payment'].chain_id}: the payment and "
              "business chains must be distinct networks")
    from gateway.chain.verify import WrongContractError, verify_contract

    for client, address, artifact in (
            (clients["payment"], settings.payment_htlc, "PaymentHTLC"),
            (clients["business"], settings.delivery_htlc, "DeliveryHTLC")):
        try:
            verify_contract(client, address, artifact)  # type: ignore[arg-type]
        except WrongContractError as exc:
            _fail(str(exc))
    from gateway.chain.calls import htlc_titles, htlc_token

    for client, htlc, artifact, getter, setting, read in (
            (clients["payment"], settings.payment_htlc, "PaymentHTLC", "token",
             "payment_token", htlc_token),
            (clients["business"], settings.delivery_htlc, "DeliveryHTLC", "titles",
             "title_registry", htlc_titles)):
        expected = getattr(settings, setting)
        if expected is None:
            continue
        bound = read(client, htlc)  # type: ignore[arg-type]
        if bound.lower() != expected.lower():
            _fail(f"the {artifact} at {htlc} is bound to {getter} {bound}, not to "
                  f"DVP_{setting.upper()} {expected}")
    return clients


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


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
def api(host: str, port: int) -> None:
    """Serve the HTTP API against the configured nodes and database (the relayer runs
    separately: `dvp-gateway relayer run`)."""
    import uvicorn

    from gateway import logs
    from gateway.api.app import create_app
    from gateway.api.context import ApiContext, ChainView, Limits
    from gateway.api.ops import create_ops_app, serve_in_thread
    from gateway.chain.calls import htlc_titles, htlc_token
    from gateway.domain.trade import Chain
    from gateway.engine.build import open_database
    from gateway.engine.dispatcher import Dispatcher

    settings = _settings()
    logs.configure(json=None)
    clients = _rpc_clients(settings, relayer=False)
    pay_htlc, dlv_htlc = settings.payment_htlc, settings.delivery_htlc  # checksummed
    assert pay_htlc is not None and dlv_htlc is not None  # _rpc_clients requires both
    engine, factory = open_database(settings.database_url)  # migrated, as a relayer's
    policy = settings.timing_policy()
    ctx = ApiContext(
        session_factory=factory, dispatcher=Dispatcher(factory, policy, chain_ids={
            Chain.PAYMENT: clients["payment"].chain_id,
            Chain.BUSINESS: clients["business"].chain_id}), policy=policy,
        payment=ChainView(clients["payment"], pay_htlc, htlc_token(clients["payment"], pay_htlc)),
        business=ChainView(clients["business"], dlv_htlc,
                           htlc_titles(clients["business"], dlv_htlc)),
        cipher=_cipher(settings), limits=Limits.from_settings(settings)).configure(settings)
    stop_ops = None
    if settings.ops_port is not None:  # /healthz, /readyz, /metrics there, not on --port
        try:
            stop_ops = serve_in_thread(create_ops_app(ctx), settings.ops_host,
                                       settings.ops_port)
        except OSError as exc:
            engine.dispose()
            _fail(f"cannot serve the operator endpoints on {settings.ops_host}:"
                  f"{settings.ops_port} (DVP_OPS_HOST/DVP_OPS_PORT): {exc}")
    # As `run`: uvicorn's graceful shutdown re-raises the signal; exit 0 there instead.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        from gateway.engine.egress import Egress

        uvicorn.run(create_app(ctx, webhook_egress=Egress(settings.webhook_allow_hosts),
                               ops_routes=stop_ops is None),
                    host=host, port=port, log_level="warning")
    except KeyboardInterrupt:
        pass
    finally:
        if stop_ops is not None:
            stop_ops()
        engine.dispose()


if __name__ == "__main__":
    main()
