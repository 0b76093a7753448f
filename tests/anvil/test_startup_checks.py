"""The relayer and the API refuse to start against the wrong chains or the wrong contracts:
checked against real nodes (what `dvp-gateway relayer run` and `dvp-gateway api` call)."""

from __future__ import annotations

import pytest

from gateway.chain.anvil import AnvilChain
from gateway.cli import _rpc_clients
from gateway.config import Settings
from gateway.contracts import load_artifact
from gateway.engine.build import build_gateway


def _settings(devnet, **overrides) -> Settings:  # noqa: ANN001
    values = {
        "payment_rpc_url": devnet.payment.node.url, "business_rpc_url": devnet.business.node.url,
        "payment_chain_id": devnet.info.payment.chain_id,
        "business_chain_id": devnet.info.business.chain_id,
        "payment_htlc": devnet.info.payment.htlc, "delivery_htlc": devnet.info.business.htlc,
        "relayer_key": "0x" + devnet.account(3).key.hex(),
    }
    return Settings(**{**values, **overrides})


def _refused(settings: Settings, capsys) -> str:  # noqa: ANN001
    with pytest.raises(SystemExit) as exit_info:
        _rpc_clients(settings, relayer=True)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_the_right_chains_and_contracts_are_accepted(anvil_devnet) -> None:
    clients = _rpc_clients(_settings(anvil_devnet), relayer=True)
    assert {c.chain_id for c in clients.values()} == {71_001, 71_002}


def test_a_node_with_another_chain_id_is_refused(anvil_devnet, capsys, database_url) -> None:
    twin = AnvilChain("twin", anvil_devnet.info.payment.chain_id, fund=False)
    try:
        error = _refused(_settings(anvil_devnet, business_rpc_url=twin.node.url), capsys)
        assert "business chain" in error and "has chain id 71001, expected 71002" in error
        with pytest.raises(ValueError, match="both chains report chain id 71001"):
            build_gateway(database_url=database_url, payment=anvil_devnet.payment.client,
                          business=twin.client, payment_htlc=anvil_devnet.info.payment.htlc,
                          delivery_htlc=anvil_devnet.info.business.htlc,
                          relayer_key=anvil_devnet.account(3))
    finally:
        twin.close()


def test_a_different_contract_at_the_configured_address_is_refused(anvil_devnet,
                                                                   capsys) -> None:
    error = _refused(_settings(anvil_devnet, payment_htlc=anvil_devnet.info.payment.token),
                     capsys)
    assert "is not a PaymentHTLC of this release" in error
    error = _refused(_settings(anvil_devnet, delivery_htlc=anvil_devnet.account(5).address),
                     capsys)
    assert "no contract at" in error


def test_same_length_code_that_differs_in_one_byte_is_refused(anvil_devnet, capsys) -> None:
    """A length check would pass this: the artifact's code with one opcode changed."""
    code = bytearray(bytes.fromhex(load_artifact("DeliveryHTLC").deployed_bytecode[2:]))
    code[100] ^= 0x01
    impostor = anvil_devnet.account(6).address
    anvil_devnet.business.rpc("anvil_setCode", [impostor, "0x" + code.hex()])
    error = _refused(_settings(anvil_devnet, delivery_htlc=impostor), capsys)
    assert "is not a DeliveryHTLC of this release" in error
