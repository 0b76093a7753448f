"""Configuration: one Settings object read from `DVP_*` environment variables.

Nothing is built at import time; callers construct `Settings()` when they start.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.chain.devnet import DEFAULT_BUSINESS_CHAIN_ID, DEFAULT_PAYMENT_CHAIN_ID
from gateway.domain.policy import TimingPolicy

FinalityRule = Annotated[int, Field(ge=0, le=10_000)] | Literal["finalized", "safe"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DVP_", extra="forbid")

    database_url: str = "sqlite:///dvp-gateway.db"

    payment_chain_id: int = Field(DEFAULT_PAYMENT_CHAIN_ID, gt=0, lt=2**64)
    business_chain_id: int = Field(DEFAULT_BUSINESS_CHAIN_ID, gt=0, lt=2**64)
    payment_rpc_url: str | None = None
    business_rpc_url: str | None = None
    # Optional WebSocket endpoints: new blocks wake the relayer at once (gateway.chain.heads).
    payment_ws_url: str | None = None
    business_ws_url: str | None = None
    payment_htlc: str | None = None
    delivery_htlc: str | None = None
    payment_start_block: int = Field(0, ge=0)
    business_start_block: int = Field(0, ge=0)
    relayer_key: SecretStr | None = None
    secrets_key: SecretStr | None = None  # Fernet key: managed keys and secrets at rest

    payment_confirmations: int = Field(2, ge=0, le=1000)
    business_confirmations: int = Field(2, ge=0, le=1000)
    payment_block_time: int = Field(12, ge=0)
    business_block_time: int = Field(12, ge=0)
    reaction_budget: int = Field(60, ge=0)
    drift_allowance: int = Field(15, ge=0)
    poll_interval: float = Field(2.0, gt=0, le=600)
    claim_batch_size: int = Field(50, ge=1, le=200)

    # Transaction fees (EIP-1559, wei): offered 2 x base fee + priority, never above the cap.
    max_fee_per_gas: int = Field(500 * 10**9, gt=0)
    priority_fee_per_gas: int | None = Field(None, ge=0)  # None: the node's suggestion
    fee_bump_percent: int = Field(12, ge=10, le=1000)  # replacement at the same nonce
    tx_replace_after: float = Field(60.0, ge=0)  # seconds unmined before a fee bump
    # A fork deeper than this many blocks below the processed cursor halts that chain (0:
    # any fork halts: a development node that never reorganises).
    max_reorg_depth: int = Field(64, ge=0, le=10_000)
    # Each chain's finality rule (trust rule 2): a depth in blocks below the head, or the
    # node's `finalized` / `safe` block tag. None: DVP_MAX_REORG_DEPTH blocks (at least the
    # confirmations). A depth shallower than DVP_MAX_REORG_DEPTH is refused: a lock "final" by
    # it could be undone by a reorg the gateway says it handles.
    payment_finality: FinalityRule | None = None
    business_finality: FinalityRule | None = None
    stall_alert_after: float = Field(300.0, gt=0)  # head older than this: chain_stalled alert
    # Relayer steps between two checks of open trades' legs against the contracts; 0: never.
    reconcile_every: int = Field(10, ge=0, le=1_000_000)
    # `relayer run` serves Prometheus metrics here when a port is set (the API has /metrics).
    metrics_port: int | None = Field(None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    # Webhook receivers that may be reached although they are not public: comma-separated host
    # names, IP addresses and networks (CIDR), e.g. "hooks.corp.example,10.20.0.0/16". Empty
    # (the default): public addresses only (gateway.engine.egress).
    webhook_allow_hosts: str = ""

    @field_validator("payment_htlc", "delivery_htlc")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from eth_utils import is_address, to_checksum_address

        if not is_address(value):
            raise ValueError(f"{value!r} is not an address")
        return to_checksum_address(value)

    @field_validator("webhook_allow_hosts")
    @classmethod
    def _webhook_allow_hosts(cls, value: str) -> str:
        from gateway.engine.egress import parse_allow

        parse_allow(value)  # raises on an entry that is neither a name nor an address
        return value

    @model_validator(mode="after")
    def _distinct_chains(self) -> Settings:
        if self.payment_chain_id == self.business_chain_id:
            raise ValueError(
                "DVP_PAYMENT_CHAIN_ID and DVP_BUSINESS_CHAIN_ID must differ "
                f"(both are {self.payment_chain_id})"
            )
        return self

    @model_validator(mode="after")
    def _finality_covers_the_reorg_depth(self) -> Settings:
        for chain in ("payment", "business"):
            finality = getattr(self, f"{chain}_finality")
            confirmations = getattr(self, f"{chain}_confirmations")
            if isinstance(finality, int) and finality < max(confirmations,
                                                              self.max_reorg_depth):
                raise ValueError(
                    f"DVP_{chain.upper()}_FINALITY ({finality} blocks) is shallower than "
                    f"DVP_MAX_REORG_DEPTH ({self.max_reorg_depth}) or "
                    f"DVP_{chain.upper()}_CONFIRMATIONS ({confirmations}): a lock final by "
                    "that rule could still be undone by a reorg the gateway handles")
        return self

    def finality_depth(self, chain: str) -> int:
        """Blocks below the head at which `chain` is final, for the timing policy (with a node
        tag: the reorg depth the operator declares for it)."""
        finality = getattr(self, f"{chain}_finality")
        confirmations = getattr(self, f"{chain}_confirmations")
        return finality if isinstance(finality, int) else max(confirmations,
                                                               self.max_reorg_depth)

    def finality_rule(self, chain: str) -> int | str:
        """What the poller reads finality by: a depth, or the node's block tag."""
        finality = getattr(self, f"{chain}_finality")
        return finality if isinstance(finality, str) else self.finality_depth(chain)

    def timing_policy(self) -> TimingPolicy:
        return TimingPolicy(
            payment_finality=self.finality_depth("payment"),
            business_finality=self.finality_depth("business"),
            payment_confirmations=self.payment_confirmations,
            business_confirmations=self.business_confirmations,
            payment_block_time=self.payment_block_time,
            business_block_time=self.business_block_time,
            reaction_budget=self.reaction_budget,
            drift_allowance=self.drift_allowance,
        )
