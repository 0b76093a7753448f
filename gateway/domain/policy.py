"""Timelock policy: how far apart the two deadlines must be for the seller to be safe.

The seller's risk window opens when the buyer reveals the secret at the last moment, in the
last business-chain block before `T_deliver`. The seller is paid only if the relayer's claim is
mined on the payment chain before `T_pay`, and it must stay mined, so

    T_pay - T_deliver >= margin, with

    margin = (business_final_depth + 1) * business_block_time     reveal mined and final
           + reaction_budget                                        poll, decide, sign, send
           + (payment_final_depth + 1) * payment_block_time         claim mined and final
           + 2 * drift_allowance                                    each chain's clock may
                                                                    be off real time by drift

where a chain's final depth is the larger of its confirmations and its finality depth (the
depth no reorg the gateway handles can reach: `DVP_MAX_REORG_DEPTH` or deeper).

Block times are upper bounds (the slowest block interval to plan for), not averages. The same
numbers tell the relayer when a claim can no longer be confirmed in time (`claim_is_safe`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TimingPolicy:
    payment_confirmations: int = 2
    business_confirmations: int = 2
    payment_block_time: int = 12
    business_block_time: int = 12
    reaction_budget: int = 60
    drift_allowance: int = 15
    # Finality depth: how many blocks below the head a block is final (no reorg the gateway
    # handles can undo it). None: the confirmation depth, i.e. what the poller hands over is
    # final. Deeper than the confirmations, the gateway sees locks early (and relays secrets
    # early) but delivers against a payment lock only once it is final, and plans claims to be
    # final before T_pay.
    payment_finality: int | None = None
    business_finality: int | None = None

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")

    @property
    def payment_final_depth(self) -> int:
        return max(self.payment_confirmations, self.payment_finality or 0)

    @property
    def business_final_depth(self) -> int:
        return max(self.business_confirmations, self.business_finality or 0)

    @property
    def waits_for_business_finality(self) -> bool:
        return self.business_final_depth > self.business_confirmations

    @property
    def waits_for_payment_finality(self) -> bool:
        """Locks seen by the poller may still be undone: the chain's finality decides."""
        return self.payment_final_depth > self.payment_confirmations

    @property
    def required_margin(self) -> int:
        return (
            (self.business_final_depth + 1) * self.business_block_time
            + self.reaction_budget
            + (self.payment_final_depth + 1) * self.payment_block_time
            + 2 * self.drift_allowance
        )

    @property
    def claim_lead_time(self) -> int:
        """How long before `T_pay` a claim must be sent to be mined and final in time."""
        return (self.payment_final_depth + 1) * self.payment_block_time + self.drift_allowance

    def claim_is_safe(self, payment_time: int, t_pay: int) -> bool:
        return payment_time + self.claim_lead_time < t_pay

    def leaves_time(self, chain_time: int, deadline: int) -> bool:
        """A payment lock made now still leaves a claim window before `deadline`."""
        return chain_time + self.claim_lead_time < deadline

    @property
    def delivery_claim_lead_time(self) -> int:
        """How long before `T_deliver` a business-chain transaction must be sent to be mined
        and final in time."""
        return (self.business_final_depth + 1) * self.business_block_time + self.drift_allowance

    def delivery_claim_is_safe(self, business_time: int, t_deliver: int) -> bool:
        return business_time + self.delivery_claim_lead_time < t_deliver

    def claim_is_possible(self, payment_time: int, t_pay: int) -> bool:
        """A claim can still be mined: the next payment block may still be before `T_pay`."""
        return payment_time + 1 < t_pay
