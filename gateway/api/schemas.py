"""Request and response bodies. Unknown fields are rejected; amounts are decimal strings of
integer base units (never floats); addresses are normalised to checksummed form."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model

from gateway.chain.accounts import checksum_address

HEX32 = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")


# ASCII digits, one spelling per number: no sign, space, leading zero or other script's digits
# (str.isdigit and int() take "１２３" and "١٢" as 123 and 12).
DECIMAL = re.compile(r"0|[1-9][0-9]*")


def _uint256_string(value: str) -> str:
    if not DECIMAL.fullmatch(value):
        raise ValueError("must be a decimal string of ASCII digits 0-9 without leading zeros, "
                         "e.g. \"123456\"")
    number = int(value)
    if number <= 0 or number >= 2**256:
        raise ValueError("must be a positive integer below 2**256")
    return value


def _hex32(value: str) -> str:
    if not HEX32.match(value):
        raise ValueError("must be 32 bytes as 64 hex digits (0x-prefixed or not)")
    if int(value.removeprefix("0x"), 16) == 0:
        raise ValueError("must not be all zero")
    return "0x" + value.removeprefix("0x").lower()


Amount = Annotated[str, Field(max_length=80, examples=["12345600"]),
                   AfterValidator(_uint256_string)]
Hex32 = Annotated[str, Field(max_length=66, examples=["0x" + "ab" * 32]), AfterValidator(_hex32)]
Address = Annotated[str, Field(max_length=42), AfterValidator(checksum_address)]
TokenId = Annotated[str, Field(max_length=80, examples=["1"]), AfterValidator(_uint256_string)]
UnixTime = Annotated[int, Field(ge=0, lt=2**63)]
# An enterprise id as a client names one (a counterparty, a list filter): no control
# characters, which PostgreSQL cannot hold or compare in text (NUL) and no id contains.
ENTERPRISE_ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PaymentTerms(Strict):
    token: Address = Field(description="The payment token (the gateway's configured ERC-20).")
    amount: Amount = Field(description="Integer base units as a decimal string.")


class DeliveryTerms(Strict):
    token_id: TokenId = Field(description="The title document's token id (decimal string).")
    document_hash: Hex32 = Field(description="The hash the title token carries.")


class Deadlines(Strict):
    delivery: UnixTime = Field(description="T_deliver: unix seconds, judged by block time.")
    payment: UnixTime = Field(description="T_pay: unix seconds, judged by block time.")


class TradeCreate(Strict):
    role: Literal["buyer", "seller"] = Field(description="The caller's role in the trade.")
    counterparty: str = Field(min_length=1, max_length=64, pattern=ENTERPRISE_ID_PATTERN,
                              description="Enterprise id.")
    payment: PaymentTerms
    delivery: DeliveryTerms
    deadlines: Deadlines
    hashlock: Hex32 | None = Field(None, description=(
        "sha256 of the buyer's 32-byte secret. Only the buyer sets it: required when a buyer "
        "that keeps its own secret (self-custody) proposes; absent when the seller proposes "
        "(a self-custody buyer then gives it when it accepts) and when the gateway manages "
        "the buyer (it draws the secret)."))


class TradeAccept(Strict):
    hashlock: Hex32 | None = Field(None, description=(
        "sha256 of the buyer's 32-byte secret: required when a self-custody buyer accepts a "
        "seller's proposal (which carries none), refused otherwise."))


class TradeAcceptItem(Strict):
    id: str = Field(max_length=66, pattern=r"^(0x)?[0-9a-fA-F]{64}$",
                    description="The trade's id (0x + 64 hex digits).")
    hashlock: Hex32 | None = Field(None, description=(
        "As in `POST /v1/trades/{trade_id}/accept`: sha256 of the buyer's secret, given by a "
        "self-custody buyer accepting a seller's proposal, refused otherwise."))


def batch_models(max_items: int) -> tuple[type[BaseModel], type[BaseModel]]:
    """The request bodies of `POST /v1/trades/batch` and `POST /v1/trades/accept-batch`, with
    1..`max_items` (DVP_BATCH_MAX) items: (TradeBatch, TradeAcceptBatch)."""
    items = {"min_length": 1, "max_length": max_items}
    batch = create_model(
        "TradeBatch", __base__=Strict,
        __doc__=f"Up to {max_items} proposals, made all together or none.",
        trades=(list[TradeCreate], Field(description="The proposals, each as for "
                                                     "`POST /v1/trades`.", **items)))
    accepts = create_model(
        "TradeAcceptBatch", __base__=Strict,
        __doc__=f"Up to {max_items} proposals to accept, all together or none.",
        trades=(list[TradeAcceptItem], Field(description="The trades to accept, each at "
                                                         "most once.", **items)))
    return batch, accepts


class Party(BaseModel):
    enterprise_id: str
    payment_address: str
    business_address: str
    managed: bool


class Leg(BaseModel):
    """One lock on chain: where it was made and, once it exited, where it was claimed or
    refunded."""

    lock_id: str
    status: str = Field(description="open, claimed or refunded")
    tx_hash: str | None = Field(None, description="The transaction that made the lock.")
    block_number: int | None = None
    timelock: int
    exit_tx_hash: str | None = Field(None, description="The claim or refund transaction.")
    exit_block_number: int | None = None


class TimelineEvent(BaseModel):
    at: datetime
    kind: str
    detail: dict
    chain_id: int | None = None
    block_number: int | None = None
    tx_hash: str | None = None


class Trade(BaseModel):
    id: str
    phase: str
    role: Literal["buyer", "seller"]
    buyer: Party
    seller: Party
    payment: PaymentTerms
    delivery: DeliveryTerms
    hashlock: str | None = Field(description=(
        "sha256 of the buyer's secret; null until a self-custody buyer accepting a seller's "
        "proposal gives it."))
    deadlines: Deadlines
    margin: int = Field(description="T_pay - T_deliver, seconds.")
    required_margin: int
    legs: dict[str, Leg | None]
    pending: list[str]
    flags: list[str]
    created_at: datetime
    timeline: list[TimelineEvent] | None = None


class TradeBatchResult(BaseModel):
    trades: list[Trade] = Field(description="One view per item, in the request's order.")


class TradePage(BaseModel):
    items: list[Trade]
    next_cursor: str | None


class Balances(BaseModel):
    payment_token: str
    title_documents: int


class Me(BaseModel):
    id: str
    name: str
    managed: bool
    payment_address: str
    business_address: str
    balances: Balances | None


class Clock(BaseModel):
    chain_time: int = Field(description="Latest block timestamp (the later of the two chains).")
    payment_chain_time: int
    business_chain_time: int
    required_margin: int = Field(description="Minimum T_pay - T_deliver, seconds.")
    min_lead: int = Field(description="Deadlines must be at least this far after chain time.")
    max_ahead: int = Field(description="Deadlines at most this far after chain time.")


class UnsignedTx(BaseModel):
    chain: Literal["payment", "business"]
    chain_id: int
    to: str
    data: str
    value: str = "0"
    description: str


class Instructions(BaseModel):
    step: str
    transactions: list[UnsignedTx]
    note: str | None = None
