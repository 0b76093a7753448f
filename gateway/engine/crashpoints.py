"""Named crash points for recovery tests (failpoints).

The engine calls `reach(name)` at the places where a process kill matters most: around each
database commit and each broadcast. Unarmed it costs one set lookup. A test arms a point to
raise `SimulatedCrash` on its n-th hit, abandons the engine objects (as a killed process would)
and starts fresh ones on the same database and chains.
"""

from __future__ import annotations

from collections import Counter

POINTS = (
    "dispatcher.before_commit",  # inputs applied in the transaction, not committed
    "dispatcher.after_commit",  # committed, caller not yet told
    "executor.before_record",  # transactions planned and signed, not recorded
    "executor.after_record",  # recorded and committed, not broadcast
    "executor.after_broadcast",  # broadcast, its status not yet updated
    "executor.after_replace_record",  # a fee-bumped replacement recorded, not broadcast
)

_armed: dict[str, int] = {}
_hits: Counter[str] = Counter()


class SimulatedCrash(BaseException):
    """Raised at an armed crash point. A BaseException, so no `except Exception` swallows it."""


def arm(name: str, on_hit: int = 1) -> None:
    if name not in POINTS:
        raise ValueError(f"unknown crash point {name!r}")
    _armed[name] = on_hit
    _hits[name] = 0


def disarm() -> None:
    _armed.clear()
    _hits.clear()


def reach(name: str) -> None:
    if name in _armed:
        _hits[name] += 1
        if _hits[name] == _armed[name]:
            del _armed[name]
            raise SimulatedCrash(name)
