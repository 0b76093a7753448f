"""Refusals that proposals and accepts share: a hashlock already in use, and a buyer's
exposure over its cap."""

from __future__ import annotations

from gateway.api.context import ApiContext
from gateway.api.problems import Problem
from gateway.db.trade_records import TradeRecords


def batch_over_cap(ctx: ApiContext, exposure: int) -> Problem:
    return Problem(409, f"the buyer's open exposure would exceed its cap of "
                        f"{ctx.limits.exposure_cap} units ({exposure} open, counting this "
                        f"batch's earlier items)", field="payment.amount", kind="exposure-cap")


HASHLOCK_IN_USE = ("this hashlock is already in use: every trade needs its own secret; draw a "
                   "new 32-byte secret and give its sha256")


def hashlock_in_use() -> Problem:
    """The answer to a hashlock that a trade already uses, at proposal or at accept.

    Uniqueness is enforced across all tenants (the unique `trades.hashlock` column): one secret
    opening two trades' locks is a money-safety fault (revealing it for one exposes the other),
    and the relayer routes chain events by hashlock. So a collision must be refused, and the
    refusal necessarily tells the caller one bit: "some trade uses this hashlock".

    Design: that bit is all it tells. The answer is one constant 409 (status, type, detail,
    `errors[0].field == "hashlock"`) whether the other trade is the caller's own or another
    tenant's: it never names, links or counts the other trade, its parties or its phase, and
    it is decided by the same database constraint in both cases (no separate lookup whose
    cost could differ). The remaining bit is harmless: a hashlock is sha256 of a buyer's
    32-byte secret, so nobody can guess one (2**-256); before it is locked on chain only the
    buyer that chose it (it first reaches the gateway in the very request that reserves it)
    and that trade's counterparty know it, both already parties to the trade; and once
    locked it is public anyway (every PaymentHTLC `Locked` event carries it). A tenant can
    only ask about a hashlock it already knows, and learns nothing about whom it belongs to."""
    return Problem(409, HASHLOCK_IN_USE, field="hashlock", kind="hashlock-reused")


def check_exposure(ctx: ApiContext, records: TradeRecords, buyer_id: str, amount: int) -> None:
    """409 `exposure-cap` (field payment.amount) when committing the buyer to `amount` more
    would take it over the cap. Decisive only inside a writing transaction that holds the
    buyer's exposure lock (`Unit.lock_name`): then no other proposal or accept of this buyer
    can commit between this read and this transaction's commit."""
    exposure = records.open_exposure(buyer_id)
    if exposure + amount > ctx.limits.exposure_cap:
        raise cap_problem(ctx, exposure)


def cap_problem(ctx: ApiContext, exposure: int) -> Problem:
    return Problem(409, f"the buyer's open exposure would exceed its cap of "
                        f"{ctx.limits.exposure_cap} units ({exposure} open)",
                   field="payment.amount", kind="exposure-cap")
