"""Is the contract at a configured address the one this release was built from?

The code on chain must equal the artifact's deployed bytecode exactly, except where the
compiler left room for immutables (zeros in the artifact): there the chain's code may only
hold the values the contract itself reports through its public getters (PaymentHTLC.token,
DeliveryHTLC.titles). A length check alone would accept any contract of the same size.
"""

from __future__ import annotations

from gateway.chain.client import ChainClient
from gateway.contracts import Artifact, load_artifact

IMMUTABLE_GETTERS = {"PaymentHTLC": ("token",), "DeliveryHTLC": ("titles",)}


class WrongContractError(ValueError):
    pass


def _immutable_words(client: ChainClient, address: str, artifact: Artifact) -> list[bytes]:
    contract = client.contract(address, artifact)
    words = []
    for getter in IMMUTABLE_GETTERS.get(artifact.contract_name, ()):
        try:
            value = getattr(contract.functions, getter)().call()
        except Exception:  # noqa: BLE001 - not this contract: the comparison will fail
            continue
        words.append(bytes.fromhex(value[2:]).rjust(32, b"\0"))
    return words


def code_matches(code: bytes, expected: bytes, immutables: list[bytes]) -> bool:
    if len(code) != len(expected):
        return False
    masked = bytearray(code)
    for word in immutables:
        start = masked.find(word)
        while start != -1:
            if expected[start:start + 32] == b"\0" * 32:
                masked[start:start + 32] = b"\0" * 32
            start = masked.find(word, start + 1)
    return bytes(masked) == expected


def verify_contract(client: ChainClient, address: str, name: str) -> None:
    """Raise WrongContractError unless `address` holds this release's `name` contract."""
    artifact = load_artifact(name)
    code = bytes(client.w3.eth.get_code(address))
    expected = bytes.fromhex(artifact.deployed_bytecode.removeprefix("0x"))
    if not code:
        raise WrongContractError(f"no contract at {address} on the {client.name} chain")
    if not code_matches(code, expected, _immutable_words(client, address, artifact)):
        raise WrongContractError(
            f"{address} on the {client.name} chain is not a {name} of this release "
            f"({len(code)} bytes of code, expected {len(expected)} bytes matching the artifact)")
