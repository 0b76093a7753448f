"""Compiled contract artifacts, committed to the package.

The Python side runs from these JSON files alone: no node or solc is needed to run or test
it. `make contracts` regenerates them from `solidity/`; `tests/contracts/test_artifacts.py`
fails when a source changed after its artifact was written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

ARTIFACTS_DIR = Path(__file__).parent / "artifacts"


@dataclass(frozen=True)
class Artifact:
    contract_name: str
    source_name: str
    compiler_version: str
    abi: list[dict[str, Any]]
    bytecode: str
    deployed_bytecode: str
    sources: dict[str, str]  # source path -> keccak256 of its content, as solc recorded it

    @classmethod
    def from_file(cls, path: Path) -> Artifact:
        raw = json.loads(path.read_text())
        return cls(
            contract_name=raw["contractName"],
            source_name=raw["sourceName"],
            compiler_version=raw["compiler"]["version"],
            abi=raw["abi"],
            bytecode=raw["bytecode"],
            deployed_bytecode=raw["deployedBytecode"],
            sources=raw["sources"],
        )


@cache
def load_artifact(name: str, directory: Path = ARTIFACTS_DIR) -> Artifact:
    path = directory / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no compiled artifact for contract {name!r} in {directory}")
    return Artifact.from_file(path)
