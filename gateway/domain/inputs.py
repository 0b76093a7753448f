"""Inputs of the trade machine: actions from the API, logs from the chains (`ContractReceive*`),
blocks (the only clock), and what the executor and reconciler learn from the chains.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from gateway.domain.locks import DeliveryLock, PaymentLock
from gateway.domain.marks import EffectKey
from gateway.domain.state import Chain, Terms


@dataclass(frozen=True)
class Route:
    """How a chain log finds its trade: by the lock id a trade recorded (on the log's chain),
    then by hashlock; whichever is given, in that order. Every log kind says its own, so the
    dispatcher routes every kind with one function (`gateway.engine.dispatcher.route`)."""

    lock_id: bytes | None = None
    hashlock: bytes | None = None


@dataclass(frozen=True)
class ChainRef:
    """Where a log came from: (chain_id, tx_hash, log_index) identifies it uniquely."""

    chain_id: int
    block_number: int
    tx_hash: bytes
    log_index: int


@dataclass(frozen=True)
class ActionProposeTrade:
    trade_id: bytes
    terms: Terms
    managed_buyer: bool = False
    managed_seller: bool = False


@dataclass(frozen=True)
class ActionAcceptTrade:
    """The counterparty accepts. A trade proposed without a hashlock (a seller's proposal to a
    buyer that keeps its own secret) gets it here, from the buyer: trust rule 1, the secret
    holder alone sets the hashlock."""

    trade_id: bytes
    hashlock: bytes | None = None


@dataclass(frozen=True)
class ActionCancelTrade:
    trade_id: bytes


@dataclass(frozen=True)
class ActionTakeDelivery:
    """A managed buyer performs: claim the delivery with its secret, which the caller takes
    from the encrypted secret store. The input log records this action without it."""

    trade_id: bytes
    secret: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ContractReceivePaymentLocked:
    lock_id: bytes
    lock: PaymentLock
    ref: ChainRef

    @property
    def route(self) -> Route:
        return Route(hashlock=self.lock.hashlock)  # a new lock: only its hashlock names a trade


@dataclass(frozen=True)
class ContractReceiveDeliveryLocked:
    lock_id: bytes
    lock: DeliveryLock
    ref: ChainRef

    @property
    def route(self) -> Route:
        return Route(hashlock=self.lock.hashlock)


@dataclass(frozen=True)
class ContractReceiveClaimed:
    chain: Chain
    lock_id: bytes
    preimage: bytes
    ref: ChainRef

    @property
    def route(self) -> Route:
        """The trade that recorded the lock, else the trade of the secret's hashlock (a claim
        of a lock the trade never recorded still makes the secret public to it)."""
        return Route(lock_id=self.lock_id, hashlock=hashlib.sha256(self.preimage).digest())


@dataclass(frozen=True)
class ContractReceiveRefunded:
    chain: Chain
    lock_id: bytes
    ref: ChainRef

    @property
    def route(self) -> Route:
        return Route(lock_id=self.lock_id)


@dataclass(frozen=True)
class Block:
    """Time passing on a chain, and how far it is final: `finalized` is the highest block
    number final by the chain's finality rule (confirmations or the node's `finalized` tag);
    None: this block itself is (observation is finality); 0: no news of finality."""

    chain: Chain
    number: int
    timestamp: int
    finalized: int | None = None


@dataclass(frozen=True)
class PreimageRevealed:
    """The preimage was made public on a chain, in a block since reorganised away: it is still
    public (the transaction may be mined again by anyone), so both legs may be claimed with it."""

    preimage: bytes


@dataclass(frozen=True)
class EffectRefused:
    """The executor checked an effect against the chain before sending it and found that it
    cannot succeed: sending would only revert (a managed party's balance, allowance or title
    does not cover a lock) or its lock does not exist on chain. `final`: the effect is given up
    (the trade is flagged `<kind>_failed`, e.g. `payment_lock_failed`); otherwise it stays
    pending, is not sent while the chain says no, and the trade is flagged `blocked:<key>`."""

    trade_id: bytes
    key: EffectKey
    reason: str
    final: bool = True


@dataclass(frozen=True)
class ChainDisagrees:
    """The reconciler read a leg's status from its contract and it differs from the trade's
    record (a reorg or a node that came back short changed the chain under the gateway). The
    trade is flagged `chain_disagrees:<lock id>`; the chain's own logs still decide the legs."""

    trade_id: bytes
    chain: Chain
    lock_id: bytes
    recorded: str  # the leg's status in the trade: open / claimed / refunded
    on_chain: str  # the contract's: none / open / claimed / refunded


@dataclass(frozen=True)
class ChainBatch:
    """What a poller hands over: the logs of blocks (cursor, block.number] in order, the last
    block, and, after a reorganisation, the fork point to rewind to first. `checkpoints` are
    (number, hash) of blocks inside the batch to remember besides its last one, so that a fork
    point can be found close to where it is after a batch of many blocks."""

    chain: Chain
    chain_id: int
    inputs: list[ContractReceive]
    block: Block
    block_hash: bytes
    rewind_to: int | None = None
    checkpoints: tuple[tuple[int, bytes], ...] = ()


Action = ActionProposeTrade | ActionAcceptTrade | ActionCancelTrade | ActionTakeDelivery
ContractReceive = (ContractReceivePaymentLocked | ContractReceiveDeliveryLocked
                   | ContractReceiveClaimed | ContractReceiveRefunded)
Input = (Action | ContractReceive | Block | PreimageRevealed | EffectRefused
         | ChainDisagrees)
