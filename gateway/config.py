"""Configuration: one Settings object read from `DVP_*` environment variables.

Nothing is built at import time; callers construct `Settings()` when they start.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.chain.ids import DEFAULT_BUSINESS_CHAIN_ID, DEFAULT_PAYMENT_CHAIN_ID
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
    # The asset contracts the HTLCs must be bound to. Optional; when set, `api` and `relayer run`
    # refuse to start unless PaymentHTLC.token() / DeliveryHTLC.titles() are these addresses
    # (`dvp-gateway devnet` writes both). On the devnet they may be one address: two chains.
    payment_token: str | None = None
    title_registry: str | None = None
    payment_start_block: int = Field(0, ge=0)
    business_start_block: int = Field(0, ge=0)
    relayer_key: SecretStr | None = None
    # Fernet key(s): managed keys and secrets at rest. Several, comma-separated, newest first,
    # while rotating: the newest encrypts, all decrypt (`dvp-gateway secrets rotate`).
    secrets_key: SecretStr | None = None
    # SQLite only: `PRAGMA synchronous`. "full" (default): every commit is on disk before it is
    # acknowledged, so an API response given or a transaction recorded survives power loss.
    # "normal": faster commits, but the last ones before a power cut (not a process crash) may
    # be lost, and the relayer may then have sent a transaction it has no record of.
    sqlite_synchronous: Literal["full", "normal"] = "full"
    # Database connections each process keeps open (gateway.db.session.DEFAULT_POOL_SIZE).
    database_pool_size: int = Field(20, ge=1, le=500)

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

    # --- the HTTP API (`dvp-gateway api`, `dvp-gateway run`) ---
    # Rate limits: token buckets in the database, shared by every API process on it (429
    # problem+json with Retry-After when empty). One per enterprise, taken once its key is
    # known: DVP_RATE_LIMIT_PER_SECOND refills it, up to DVP_RATE_LIMIT_BURST requests at once.
    rate_limit_per_second: float = Field(50.0, gt=0)
    rate_limit_burst: int = Field(100, ge=1)
    # And one per client address, taken before the API key is read: every /v1 request counts,
    # failed authentications included (key guessing is throttled). Unset: twice the above.
    client_rate_limit_per_second: float | None = Field(None, gt=0)
    client_rate_limit_burst: int | None = Field(None, ge=1)
    # The client address is the TCP peer. Behind reverse proxies, list them here (comma-
    # separated addresses and CIDR networks, e.g. "10.0.0.5,10.1.0.0/16"): for a request from
    # one of them, the right-most X-Forwarded-For address that is not one is the client. Empty
    # (the default): X-Forwarded-For is ignored, and every client behind a proxy shares its
    # bucket.
    trusted_proxies: str = ""
    # Seconds an Idempotency-Key is remembered: reused later, it is a new key. Expired keys are
    # deleted by the API processes as they serve (gateway.api.housekeeping).
    idempotency_ttl: int = Field(24 * 3600, ge=60)
    # Most trades in one batch request (`POST /v1/trades/batch`, `/v1/trades/accept-batch`):
    # each batch is one database transaction. A batch must also fit the body limit.
    batch_max: int = Field(100, ge=1, le=1000)
    # Most concurrent requests an API process handles together in one transaction: the
    # admissions of /v1 requests (gateway.api.auth) and single proposals
    # (gateway.api.proposal_groups); 1: each in a transaction of its own.
    request_group_max: int = Field(32, ge=1, le=1000)
    # Largest request body accepted (413 beyond; counted as it arrives, chunked or not):
    # 64 KiB holds a batch of about 190 proposals; raise it with DVP_BATCH_MAX (a proposal
    # with a hashlock is about 340 bytes).
    max_body_bytes: int = Field(64 * 1024, ge=4 * 1024, le=16 * 1024 * 1024)
    # Operator endpoints (gateway.api.ops). /healthz touches nothing; /readyz probes the
    # database and both nodes and /metrics reads the database, each at most once per
    # DVP_OPS_CACHE_SECONDS however often they are called. With DVP_OPS_TOKEN set (16
    # characters at least), /readyz and /metrics require `Authorization: Bearer <token>`, and so
    # does the relayer's metrics port (DVP_METRICS_PORT).
    # With DVP_OPS_PORT set, /healthz, /readyz and /metrics are served on
    # DVP_OPS_HOST:DVP_OPS_PORT only, not on the public port.
    ops_token: SecretStr | None = Field(None, min_length=16)
    ops_host: str = "127.0.0.1"
    ops_port: int | None = Field(None, ge=0, le=65535)
    ops_cache_seconds: float = Field(2.0, ge=0.1, le=60)

    @field_validator("sqlite_synchronous", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("payment_htlc", "delivery_htlc", "payment_token", "title_registry")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from gateway.chain.accounts import is_address, to_checksum

        if not is_address(value):
            raise ValueError(f"{value!r} is not an address")
        return to_checksum(value)

    @field_validator("webhook_allow_hosts")
    @classmethod
    def _webhook_allow_hosts(cls, value: str) -> str:
        from gateway.engine.egress import parse_allow

        parse_allow(value)  # raises on an entry that is neither a name nor an address
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted_proxies(cls, value: str) -> str:
        from gateway.api.ratelimit import parse_networks

        parse_networks(value)  # raises on an entry that is neither an address nor a network
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
