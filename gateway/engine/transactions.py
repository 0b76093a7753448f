"""What the executor's parts share: a chain's endpoint, the keys it signs with, and the
transaction each effect calls for (sender, contract, calldata, explicit gas)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.chain.accounts import Signer
from gateway.chain.client import ChainClient, RevertError
from gateway.chain.htlc import (
    GAS_BATCH_BASE,
    GAS_BATCH_PER_LOCK,
    GAS_CLAIM,
    GAS_DELIVERY_EXIT,
    GAS_DELIVERY_LOCK,
    GAS_LOCK,
    GAS_REFUND,
    DeliveryHTLCProxy,
    PaymentHTLCProxy,
    claim_many_calldata,
    delivery_claim_calldata,
    delivery_lock_calldata,
    delivery_refund_calldata,
    payment_claim_calldata,
    payment_lock_calldata,
    payment_refund_calldata,
)
from gateway.db.models import OutboxRow
from gateway.domain.trade import (
    Chain,
    ContractSend,
    ContractSendDeliveryClaim,
    ContractSendDeliveryLock,
    ContractSendDeliveryRefund,
    ContractSendPaymentClaim,
    ContractSendPaymentLock,
    ContractSendPaymentRefund,
)

GAS_APPROVAL = 80_000


@dataclass
class ChainEndpoint:
    """What the executor needs of one chain."""

    chain: Chain
    client: ChainClient
    payment_htlc: PaymentHTLCProxy | None = None
    delivery_htlc: DeliveryHTLCProxy | None = None

    @property
    def chain_id(self) -> int:
        return self.client.chain_id


@dataclass
class PlannedTx:
    """A transaction to sign, and the outbox rows whose effects it carries."""

    sender: Signer
    to: str
    data: bytes
    gas: int
    rows: list[OutboxRow] = field(default_factory=list)
    timelocks: tuple[int, ...] = ()  # a payment claim's locks: priced by its deadline


class KeyError_(LookupError):
    pass


class Keys:
    """The keys the executor signs with: the relayer's and managed parties' (configured, or
    found by `lookup` when first needed, then kept)."""

    def __init__(self, relayer: Signer, managed: dict[str, Signer] | None = None,
                 lookup: Callable[[str], Signer | None] | None = None) -> None:
        self.relayer = relayer
        self._known = {relayer.address: relayer, **(managed or {})}
        self._lookup = lookup

    def of(self, address: str) -> Signer:
        if address not in self._known and self._lookup is not None:
            found = self._lookup(address)
            if found is not None:
                self._known[address] = found
        try:
            return self._known[address]
        except KeyError:
            raise KeyError_(f"no signing key configured for managed account {address}") from None


def effect_tx(ep: ChainEndpoint, row: OutboxRow, effect: ContractSend, keys: Keys) -> PlannedTx:
    """The transaction of a lock (from the managed party's key), a refund or a delivery claim
    (from the relayer's: the contracts pay only the named party, whoever calls)."""
    match effect:
        case ContractSendPaymentLock(lock=lk):
            htlc = ep.payment_htlc
            assert htlc is not None
            data = payment_lock_calldata(lk.beneficiary, lk.amount, lk.hashlock, lk.timelock)
            return PlannedTx(keys.of(lk.sender), htlc.address, data, GAS_LOCK, [row])
        case ContractSendDeliveryLock(lock=lk):
            dh = ep.delivery_htlc
            assert dh is not None
            data = delivery_lock_calldata(lk.buyer, lk.token_id, lk.document_hash,
                                          lk.trade_id, lk.hashlock, lk.timelock)
            return PlannedTx(keys.of(lk.seller), dh.address, data, GAS_DELIVERY_LOCK, [row])
        case ContractSendPaymentRefund(lock=lk):
            assert ep.payment_htlc is not None
            data = payment_refund_calldata(lk)
            return PlannedTx(keys.relayer, ep.payment_htlc.address, data, GAS_REFUND, [row])
        case ContractSendDeliveryClaim(lock=lk, preimage=preimage):
            assert ep.delivery_htlc is not None
            data = delivery_claim_calldata(lk, preimage)
            return PlannedTx(keys.relayer, ep.delivery_htlc.address, data, GAS_DELIVERY_EXIT,
                             [row])
        case ContractSendDeliveryRefund(lock=lk):
            assert ep.delivery_htlc is not None
            data = delivery_refund_calldata(lk)
            return PlannedTx(keys.relayer, ep.delivery_htlc.address, data, GAS_DELIVERY_EXIT,
                             [row])
    raise TypeError(f"no transaction for {type(effect).__name__}")


def claim_tx(ep: ChainEndpoint, claims: list[tuple[OutboxRow, ContractSendPaymentClaim]],
             relayer: Signer) -> PlannedTx:
    """One payment claim, or a `claimMany` of several, from the relayer's key."""
    htlc = ep.payment_htlc
    assert htlc is not None
    rows = [row for row, _ in claims]
    if len(claims) == 1:
        (_, c), = claims
        data = payment_claim_calldata(c.lock, c.preimage)
        return PlannedTx(relayer, htlc.address, data, GAS_CLAIM, rows, (c.lock.timelock,))
    data = claim_many_calldata([c.lock for _, c in claims], [c.preimage for _, c in claims])
    gas = GAS_BATCH_BASE + GAS_BATCH_PER_LOCK * len(claims)
    return PlannedTx(relayer, htlc.address, data, gas, rows,
                     tuple(c.lock.timelock for _, c in claims))


def approval_tx(ep: ChainEndpoint, effect: ContractSend, sender: Signer) -> PlannedTx | None:
    """A managed party's lock needs the HTLC approved to pull its tokens: the approval
    goes out first, from the same key, when it is missing."""
    if isinstance(effect, ContractSendPaymentLock) and ep.payment_htlc is not None:
        if ep.payment_htlc.allowance(sender.address) >= effect.lock.amount:
            return None
        to, data = ep.payment_htlc.approve_calldata()
        return PlannedTx(sender, to, data, GAS_APPROVAL)
    if isinstance(effect, ContractSendDeliveryLock) and ep.delivery_htlc is not None:
        if ep.delivery_htlc.is_approved_for_all(sender.address):
            return None
        to, data = ep.delivery_htlc.approve_calldata()
        return PlannedTx(sender, to, data, GAS_APPROVAL)
    return None


def describe_revert(error: RevertError) -> str:
    """A decoded revert, readable: `LockNotOpen(0x12ab..., 0)`."""
    values = ", ".join("0x" + v.hex() if isinstance(v, bytes) else str(v) for v in error.values)
    return f"{error.name}({values})"
