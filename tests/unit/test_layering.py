"""The layers of shared/ARCHITECTURE.md, checked on the source: data flows down, never back up.

domain (pure) <- chain, db <- engine <- api <- cli/runner. Each rule reads every module's
imports (top level and inside functions) with `ast`, so a late import cannot slip through.
Where the code does not yet keep a rule, the exceptions are listed by name: the list may only
shrink (a module that stops needing its exception fails the test until it is struck off).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "gateway"
CHAIN_LIBRARIES = ("web3", "eth_account", "eth_utils", "eth_abi", "eth_typing", "hexbytes",
                   "eth_tester", "eth", "coincurve", "eth_keys")

# Modules outside gateway/chain that still touch the EVM libraries (issue 12 §2 sealed them:
# addresses and keys are gateway.chain.accounts', calldata and reads gateway.chain.calls').
CHAIN_LIBRARY_EXCEPTIONS: set[str] = set()


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in it (absolute names)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


MODULES = _modules()


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_domain_is_pure() -> None:
    """The trade machine imports only the standard library and itself: no I/O, no clock."""
    stdlib = sys.stdlib_module_names
    for name, path in MODULES.items():
        if not _within(name, "gateway.domain"):
            continue
        for imported in _imports(path):
            top = imported.split(".")[0]
            assert top in stdlib or top == "__future__" or _within(imported, "gateway.domain"), \
                f"{name} imports {imported}"


@pytest.mark.parametrize("lower", ["gateway.domain", "gateway.chain", "gateway.db",
                                   "gateway.engine"])
def test_no_layer_imports_the_api_or_the_cli(lower: str) -> None:
    for name, path in MODULES.items():
        if not _within(name, lower):
            continue
        for imported in _imports(path):
            assert not any(_within(imported, upper) for upper in
                           ("gateway.api", "gateway.cli", "gateway.runner", "gateway.demo")), \
                f"{name} imports {imported}: data flows down, never back up"


def test_the_chain_layer_does_not_import_the_engine_or_the_database() -> None:
    for name, path in MODULES.items():
        if _within(name, "gateway.chain"):
            for imported in _imports(path):
                assert not _within(imported, "gateway.engine") and \
                    not _within(imported, "gateway.db"), f"{name} imports {imported}"


def test_only_the_chain_layer_imports_the_evm_libraries() -> None:
    offenders = set()
    for name, path in MODULES.items():
        if _within(name, "gateway.chain") or _within(name, "gateway.contracts"):
            continue
        if any(imported.split(".")[0] in CHAIN_LIBRARIES for imported in _imports(path)):
            offenders.add(name)
    assert offenders <= CHAIN_LIBRARY_EXCEPTIONS, \
        f"outside gateway/chain, new users of the EVM libraries: " \
        f"{sorted(offenders - CHAIN_LIBRARY_EXCEPTIONS)}"
    assert CHAIN_LIBRARY_EXCEPTIONS <= offenders, \
        f"no longer needed, strike them off: {sorted(CHAIN_LIBRARY_EXCEPTIONS - offenders)}"


# Attributes that only a web3 object has here: `client.w3`, `w3.eth`, `contract.functions`,
# `contract.encode_abi`, and `ChainClient.contract` (which hands out a web3 contract).
WEB3_ATTRIBUTES = {"w3", "eth", "functions", "encode_abi", "contract"}
# Modules outside gateway/chain that may reach into web3 objects: none (issue 12 §2).
WEB3_OBJECT_EXCEPTIONS: set[str] = set()


def _web3_attributes(path: Path) -> set[str]:
    return {node.attr for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Attribute) and node.attr in WEB3_ATTRIBUTES}


def test_only_the_chain_layer_uses_web3_objects() -> None:
    """Above gateway/chain nothing holds a web3 object: no `client.w3`, `w3.eth`,
    `contract.functions`, `encode_abi` or `client.contract(...)`; the chain layer offers what
    is needed (ChainClient methods, gateway.chain.calls, the HTLC proxies)."""
    offenders = {}
    for name, path in MODULES.items():
        if _within(name, "gateway.chain") or _within(name, "gateway.contracts"):
            continue
        if used := _web3_attributes(path):
            offenders[name] = sorted(used)
    new = {name: used for name, used in offenders.items() if name not in WEB3_OBJECT_EXCEPTIONS}
    assert not new, f"outside gateway/chain, web3 objects used: {new}"
    assert WEB3_OBJECT_EXCEPTIONS <= offenders.keys(), \
        f"no longer needed, strike them off: {sorted(WEB3_OBJECT_EXCEPTIONS - offenders.keys())}"


def test_settings_load_without_web3() -> None:
    """`Settings()` is read by every command first: it must not pay for loading web3 (about a
    second) nor tie configuration to the chain library."""
    code = textwrap.dedent("""
        import sys
        from gateway.config import Settings
        Settings()
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("web3", "eth_account"))
        print(",".join(loaded))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT.parent, env={"PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "", f"loading settings loads {out.stdout.strip()[:200]}"


SQL_BUILDERS = {"select", "insert", "update", "delete", "text", "func", "and_", "or_", "tuple_",
                "case", "bindparam", "exists"}
# Modules outside gateway/db that still build SQL (issue 12 §1 moves every query into a
# repository per aggregate); the list may only shrink.
SQL_EXCEPTIONS: set[str] = set()


def _builds_sql(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and \
                node.module.startswith("sqlalchemy"):
            if "dialects" in node.module or \
                    any(alias.name in SQL_BUILDERS for alias in node.names):
                return True
    return False


def test_only_the_database_layer_builds_sql() -> None:
    offenders = {name for name, path in MODULES.items()
                 if not _within(name, "gateway.db") and _builds_sql(path)}
    assert offenders <= SQL_EXCEPTIONS, \
        f"queries belong in gateway/db: {sorted(offenders - SQL_EXCEPTIONS)}"
    assert SQL_EXCEPTIONS <= offenders, \
        f"no longer needed, strike them off: {sorted(SQL_EXCEPTIONS - offenders)}"


MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60  # decorators included


def test_modules_and_functions_stay_small() -> None:
    """Issue 12's newcomer test: a module is read in one sitting (<= 400 lines) and a function
    on one screen (<= 60 lines); something bigger is two things."""
    too_big = []
    for name, path in MODULES.items():
        source = path.read_text()
        if (lines := len(source.splitlines())) > MAX_MODULE_LINES:
            too_big.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([d.lineno for d in node.decorator_list] + [node.lineno])
                if (length := node.end_lineno - start + 1) > MAX_FUNCTION_LINES:
                    too_big.append(f"{name}.{node.name}: {length} lines")
    assert not too_big, too_big
