"""The committed artifacts are exactly what `make contracts` would produce from `solidity/`.

Runs without node or solc: solc records the keccak256 of every source it compiled, so a source
edited after its artifact was written (or a new source never compiled) fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eth_utils import keccak

from gateway.contracts import ARTIFACTS_DIR, Artifact
from tests.helpers import TEST_ARTIFACTS

ROOT = Path(__file__).resolve().parents[2]
SOLIDITY = ROOT / "solidity"
PINNED = json.loads((SOLIDITY / "compiler.json").read_text())
LOCK = json.loads((SOLIDITY / "package-lock.json").read_text())

ARTIFACT_FILES = sorted(ARTIFACTS_DIR.glob("*.json")) + sorted(TEST_ARTIFACTS.glob("*.json"))


def test_every_production_contract_has_an_artifact() -> None:
    names = {p.stem for p in ARTIFACTS_DIR.glob("*.json")}
    assert {"PaymentHTLC", "DeliveryHTLC", "PaymentToken", "TitleDocument"} <= names


def test_every_solidity_source_was_compiled() -> None:
    compiled = {src for p in ARTIFACT_FILES for src in json.loads(p.read_text())["sources"]}
    on_disk = {str(p.relative_to(ROOT)) for p in SOLIDITY.glob("contracts/**/*.sol")}
    on_disk |= {str(p.relative_to(ROOT)) for p in SOLIDITY.glob("test/**/*.sol")}
    missing = on_disk - compiled
    assert not missing, f"sources with no artifact (run `make contracts`): {sorted(missing)}"


@pytest.mark.parametrize("path", ARTIFACT_FILES, ids=lambda p: p.stem)
def test_artifact_is_fresh(path: Path) -> None:
    raw = json.loads(path.read_text())
    artifact = Artifact.from_file(path)
    assert artifact.compiler_version.startswith(PINNED["solc"] + "+")
    assert raw["compiler"]["settings"] == PINNED["settings"]
    oz = LOCK["packages"]["node_modules/@openzeppelin/contracts"]["version"]
    assert raw["dependencies"]["@openzeppelin/contracts"] == oz
    stale = [
        src for src, digest in artifact.sources.items()
        if src.startswith("solidity/")
        and "0x" + keccak((ROOT / src).read_bytes()).hex() != digest
    ]
    assert not stale, f"{path.name} is stale relative to {stale}: run `make contracts`"
    assert artifact.bytecode.startswith("0x") and len(artifact.bytecode) > 2
