"""Fees of type-2 (EIP-1559) transactions: the offer, a replacement's, a late claim's.

`offered_fees()` is `2 x base + priority`, never more than the configured cap. `bumped_fees()`
raises both fields by at least the bump percentage (>= 10%, what geth requires of a replacement
at the same nonce), and at least to the current suggestion; it answers None when the cap leaves
no room, so a caller never loops on a replacement the node must refuse. `fees_toward_cap()`
prices a claim near its deadline: a given fraction of the way from the suggestion up to the cap
(the cap itself on both fields at the end). `ChainClient` asks the node; the arithmetic is here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_MAX_FEE_PER_GAS = 100 * 10**9
DEFAULT_PRIORITY_FEE_PER_GAS = 10**9
DEFAULT_FEE_CAP = 500 * 10**9
MIN_BUMP_PERCENT = 10


@dataclass(frozen=True)
class Fees:
    max_fee_per_gas: int
    max_priority_fee_per_gas: int

    def at_least(self, percent: int, than: Fees) -> bool:
        """Both fields at least `percent` above `than`'s (integer wei, rounded up)."""
        return (self.max_fee_per_gas >= raised(than.max_fee_per_gas, percent) and
                self.max_priority_fee_per_gas >= raised(than.max_priority_fee_per_gas, percent))


def raised(value: int, percent: int) -> int:
    """`value` raised by `percent`, rounded up (a replacement must not fall a wei short)."""
    return (value * (100 + percent) + 99) // 100


def offered_fees(base: int, priority: int, cap: int) -> Fees:
    """`2 x base + priority`, capped; the priority fee never above the max fee."""
    max_fee = min(cap, 2 * base + priority)
    return Fees(max_fee, min(priority, max_fee))


def bumped_fees(previous: Fees, now: Fees, cap: int, percent: int) -> Fees | None:
    """A replacement's fees: both fields at least `percent` (>= 10) above `previous` and at
    least `now` (the current suggestion), capped; None if the cap leaves no valid replacement."""
    percent = max(percent, MIN_BUMP_PERCENT)
    max_fee = min(cap, max(raised(previous.max_fee_per_gas, percent), now.max_fee_per_gas))
    priority = min(max_fee, max(raised(previous.max_priority_fee_per_gas, percent),
                                now.max_priority_fee_per_gas))
    fees = Fees(max_fee, priority)
    return fees if fees.at_least(MIN_BUMP_PERCENT, previous) else None


def fees_toward_cap(now: Fees, cap: int, fraction: float, percent: int) -> Fees:
    """`fraction` (0 to 1) of the way from `now` up to the cap, on both fields; the cap itself
    once less than `percent` below it (no replacement could fit in between), and at 1."""
    f = min(max(fraction, 0.0), 1.0)
    max_fee = now.max_fee_per_gas + math.ceil(f * (cap - now.max_fee_per_gas))
    if raised(max_fee, max(percent, MIN_BUMP_PERCENT)) > cap:
        return Fees(cap, cap)
    priority = now.max_priority_fee_per_gas + math.ceil(
        f * (cap - now.max_priority_fee_per_gas))
    return Fees(max_fee, min(priority, max_fee))
