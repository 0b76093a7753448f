"""The configured JSON-RPC nodes, checked before `dvp-gateway relayer run` or `dvp-gateway
api` starts: reachable, the expected and distinct chain ids, the expected contract code, and
the HTLCs bound to the configured asset contracts."""

from __future__ import annotations

from gateway.cli.common import _fail
from gateway.config import Settings


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
    _check_contracts(settings, clients)
    return clients


def _check_contracts(settings: Settings, clients: dict) -> None:
    """The HTLCs' deployed code, and the asset contracts they are bound to when configured
    (DVP_PAYMENT_TOKEN, DVP_TITLE_REGISTRY)."""
    from gateway.chain.calls import htlc_titles, htlc_token
    from gateway.chain.verify import WrongContractError, verify_contract

    for client, address, artifact in (
            (clients["payment"], settings.payment_htlc, "PaymentHTLC"),
            (clients["business"], settings.delivery_htlc, "DeliveryHTLC")):
        try:
            verify_contract(client, address, artifact)  # type: ignore[arg-type]
        except WrongContractError as exc:
            _fail(str(exc))
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
