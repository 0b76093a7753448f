"""`make bench`: every benchmark, one JSON document on stdout.

Exits non-zero when a gas target is missed (gas is deterministic); the end-to-end overhead
aim and the anvil throughput target are reported, not enforced (wall-clock time depends on
the machine's load).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import anvil_bench  # noqa: E402
import api  # noqa: E402
import api_workers  # noqa: E402
import backlog  # noqa: E402
import e2e  # noqa: E402
import gas  # noqa: E402

from gateway import logs  # noqa: E402


def main() -> int:
    logs.configure(json=True, level=40)
    gas_result = gas.measure()
    print(json.dumps({"gas": gas_result, "e2e_in_process": e2e.measure(),
                      "api": api.measure(), "api_workers": api_workers.measure(),
                      "backlog": backlog.measure(),
                      "anvil": anvil_bench.measure()}, indent=2))
    return 0 if all(gas_result["within_targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
