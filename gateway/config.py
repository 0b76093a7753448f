"""Configuration: one Settings object read from `DVP_*` environment variables.

Nothing is built at import time; callers construct `Settings()` when they start.
"""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.chain.devnet import DEFAULT_BUSINESS_CHAIN_ID, DEFAULT_PAYMENT_CHAIN_ID


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DVP_", extra="forbid")

    payment_chain_id: int = Field(DEFAULT_PAYMENT_CHAIN_ID, gt=0, lt=2**64)
    business_chain_id: int = Field(DEFAULT_BUSINESS_CHAIN_ID, gt=0, lt=2**64)

    @model_validator(mode="after")
    def _distinct_chains(self) -> Settings:
        if self.payment_chain_id == self.business_chain_id:
            raise ValueError(
                "DVP_PAYMENT_CHAIN_ID and DVP_BUSINESS_CHAIN_ID must differ "
                f"(both are {self.payment_chain_id})"
            )
        return self
