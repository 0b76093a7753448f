"""Typed proxies for PaymentHTLC and DeliveryHTLC, and pure decoding of their logs.

Gas limits are explicit (see `gateway.chain.client`); they are upper bounds with headroom over
the measured costs (`make bench`), never estimates made per transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from web3.contract import Contract

from gateway.chain.client import (
    ChainClient,
    Log,
    Receipt,
    RevertError,
    _call_errors,
    checksum,
)
from gateway.chain.words import address_word, bytes32_word, uint_word
from gateway.contracts import Artifact, load_artifact
from gateway.domain.locks import (
    DeliveryLock,
    DeliveryLocked,
    LockClaimed,
    LockEvent,
    LockRefunded,
    PaymentLock,
    PaymentLocked,
)

__all__ = ["DeliveryHTLCProxy", "PaymentHTLCProxy", "decode_htlc_log", "decode_receipt",
           "revert_abi", "statuses_of"]

GAS_LOCK = 150_000
GAS_CLAIM = 120_000
GAS_REFUND = 120_000
GAS_DELIVERY_LOCK = 250_000
GAS_DELIVERY_EXIT = 150_000
GAS_BATCH_BASE = 60_000
GAS_BATCH_PER_LOCK = 40_000

PAYMENT_LOCK_TYPES = ["address", "address", "uint256", "bytes32", "uint64"]
DELIVERY_LOCK_TYPES = ["address", "address", "uint256", "bytes32", "bytes32", "bytes32", "uint64"]

TOPIC_PAYMENT_LOCKED = keccak(text="Locked(address,address,uint256,bytes32,uint64)")
TOPIC_DELIVERY_LOCKED = keccak(
    text="Locked(bytes32,bytes32,bytes32,address,address,uint256,bytes32,uint64)"
)
TOPIC_CLAIMED = keccak(text="Claimed(bytes32,bytes32)")
TOPIC_REFUNDED = keccak(text="Refunded(bytes32)")


PAYMENT_LOCK_TUPLE = "(" + ",".join(PAYMENT_LOCK_TYPES) + ")"
DELIVERY_LOCK_TUPLE = "(" + ",".join(DELIVERY_LOCK_TYPES) + ")"


class _Call:
    """One contract function's calldata, encoded directly: web3's generic encoder (ABI lookup,
    argument normalisation) costs about ten times the encoding itself."""

    def __init__(self, name: str, types: list[str]) -> None:
        self.types = types
        self.selector = keccak(text=f"{name}({','.join(types)})")[:4]

    def __call__(self, *args: object) -> bytes:
        return self.selector + abi_encode(self.types, list(args))


_PAYMENT_LOCK = _Call("lock", ["address", "uint256", "bytes32", "uint64"])
_PAYMENT_CLAIM = _Call("claim", [PAYMENT_LOCK_TUPLE, "bytes"])
_PAYMENT_REFUND = _Call("refund", [PAYMENT_LOCK_TUPLE])
_CLAIM_MANY = _Call("claimMany", [f"{PAYMENT_LOCK_TUPLE}[]", "bytes32[]"])
_REFUND_MANY = _Call("refundMany", [f"{PAYMENT_LOCK_TUPLE}[]"])
_DELIVERY_LOCK = _Call("lock", ["address", "uint256", "bytes32", "bytes32", "bytes32", "uint64"])
_DELIVERY_CLAIM = _Call("claim", [DELIVERY_LOCK_TUPLE, "bytes"])
_DELIVERY_REFUND = _Call("refund", [DELIVERY_LOCK_TUPLE])


def payment_lock_calldata(beneficiary: str, amount: int, hashlock: bytes,
                          timelock: int) -> bytes:
    return _PAYMENT_LOCK(beneficiary, amount, hashlock, timelock)


def payment_claim_calldata(lock: PaymentLock, preimage: bytes) -> bytes:
    return _PAYMENT_CLAIM(lock.as_tuple(), preimage)


def payment_refund_calldata(lock: PaymentLock) -> bytes:
    return _PAYMENT_REFUND(lock.as_tuple())


def claim_many_calldata(locks: list[PaymentLock], preimages: list[bytes]) -> bytes:
    """`claimMany(locks, preimages)`, its words written here: the relayer's batch of up to
    50 claims took eth_abi about 10 ms (it validates and encodes value by value); this is
    under 1 ms, and checks every value as eth_abi does (ValueError). Arrays of different
    lengths encode, as with eth_abi: the contract's refusal of them is tested."""
    locks_at = 64  # two offsets, then the locks array, then the preimages array
    preimages_at = locks_at + 32 + 160 * len(locks)
    return b"".join([_CLAIM_MANY.selector, uint_word(locks_at, 256), uint_word(preimages_at, 256),
                     _payment_locks(locks), uint_word(len(preimages), 256),
                     *(bytes32_word(p) for p in preimages)])


def refund_many_calldata(locks: list[PaymentLock]) -> bytes:
    return b"".join([_REFUND_MANY.selector, uint_word(32, 256), _payment_locks(locks)])


def _payment_locks(locks: list[PaymentLock]) -> bytes:
    """A `(address,address,uint256,bytes32,uint64)[]`'s length and elements (static tuples:
    five words each, in place)."""
    return b"".join([uint_word(len(locks), 256), *(
        b"".join((address_word(lk.sender), address_word(lk.beneficiary), uint_word(lk.amount, 256),
                  bytes32_word(lk.hashlock), uint_word(lk.timelock, 64))) for lk in locks)])


def delivery_lock_calldata(buyer: str, token_id: int, document_hash: bytes, trade_id: bytes,
                           hashlock: bytes, timelock: int) -> bytes:
    return _DELIVERY_LOCK(buyer, token_id, document_hash, trade_id, hashlock, timelock)


def delivery_claim_calldata(lock: DeliveryLock, preimage: bytes) -> bytes:
    return _DELIVERY_CLAIM(lock.as_tuple(), preimage)


def delivery_refund_calldata(lock: DeliveryLock) -> bytes:
    return _DELIVERY_REFUND(lock.as_tuple())


def payment_lock_id(chain_id: int, htlc: str, lock: PaymentLock) -> bytes:
    return keccak(abi_encode(["uint256", "address", *PAYMENT_LOCK_TYPES],
                             [chain_id, htlc, *lock.as_tuple()]))


def delivery_lock_id(chain_id: int, htlc: str, lock: DeliveryLock) -> bytes:
    return keccak(abi_encode(["uint256", "address", *DELIVERY_LOCK_TYPES],
                             [chain_id, htlc, *lock.as_tuple()]))


_STATUS_OF = _Call("statusOf", ["bytes32"])
STATUS_NAMES = ("none", "open", "claimed", "refunded")  # the contracts' `Status` enum, in order


def read_statuses(client: ChainClient, htlc: str, lock_ids: list[bytes],
                  block: int) -> tuple[bytes, list[int]] | None:
    """`statusOf` of every lock of a PaymentHTLC or DeliveryHTLC at block number `block` (see
    STATUS_NAMES), and that block's hash, in one batched read (`ChainClient.call_many`); None
    when the node cannot read at that block."""
    found = client.call_many([(htlc, _STATUS_OF(lock_id)) for lock_id in lock_ids], block)
    if found is None:
        return None
    block_hash, results = found
    return block_hash, [abi_decode(["uint8"], result)[0] for result in results]


def statuses_of(client: ChainClient, locks: list[tuple[str, bytes]]) -> list[int]:
    """`statusOf` of every (HTLC address, lock id), PaymentHTLC or DeliveryHTLC, at the latest
    block (see STATUS_NAMES), in order: one batched read (`ChainClient.calls`), one call each
    on eth-tester."""
    results = client.calls([(htlc, _STATUS_OF(lock_id)) for htlc, lock_id in locks])
    return [abi_decode(["uint8"], result)[0] for result in results]


_ADDRESS_PAD, _UINT64_PAD = bytes(12), bytes(24)


def _canonical_lock_data(data: bytes) -> bool:
    """Both `Locked` logs carry five static words: (address, address, uint256, bytes32,
    uint64). Canonically encoded (as the contracts emit them), they are read by slicing;
    anything else goes through the ABI decoder, which refuses it as before."""
    return len(data) == 160 and data[:12] == _ADDRESS_PAD and data[32:44] == _ADDRESS_PAD \
        and data[128:152] == _UINT64_PAD


def decode_htlc_log(log: Log, chain_id: int) -> LockEvent | None:
    """Decode one PaymentHTLC/DeliveryHTLC log; None for a log that is not one of ours.

    Pure: the caller has already checked that the log comes from the right contract address.
    PaymentHTLC's `Locked` does not repeat the lock id, so it is derived here from the chain
    id, the emitting contract and the parameters, exactly as the contract derives it.
    """
    if not log.topics:
        return None
    topic = log.topics[0]
    if topic == TOPIC_PAYMENT_LOCKED and len(log.topics) == 1:
        if _canonical_lock_data(log.data):
            # The lock id is keccak(abi.encode(chainid, htlc, lock)): the log's data IS the
            # lock's encoding, so no decoding and re-encoding.
            d = log.data
            lock = PaymentLock(checksum("0x" + d[12:32].hex()), checksum("0x" + d[44:64].hex()),
                               int.from_bytes(d[64:96]), d[96:128], int.from_bytes(d[128:]))
            return PaymentLocked(keccak(chain_id.to_bytes(32) + bytes(12)
                                        + bytes.fromhex(log.address[2:]) + d), lock)
        sender, beneficiary, amount, hashlock, timelock = abi_decode(PAYMENT_LOCK_TYPES, log.data)
        lock = PaymentLock(checksum(sender), checksum(beneficiary), amount, hashlock,
                           timelock)
        return PaymentLocked(payment_lock_id(chain_id, log.address, lock), lock)
    if topic == TOPIC_DELIVERY_LOCKED and len(log.topics) == 4:
        if _canonical_lock_data(log.data):
            d = log.data
            return DeliveryLocked(log.topics[1], DeliveryLock(
                checksum("0x" + d[12:32].hex()), checksum("0x" + d[44:64].hex()),
                int.from_bytes(d[64:96]), d[96:128], log.topics[3], log.topics[2],
                int.from_bytes(d[128:])))
        seller, buyer, token_id, document_hash, timelock = abi_decode(
            ["address", "address", "uint256", "bytes32", "uint64"], log.data)
        lock = DeliveryLock(checksum(seller), checksum(buyer), token_id, document_hash,
                            log.topics[3], log.topics[2], timelock)
        return DeliveryLocked(log.topics[1], lock)
    if topic == TOPIC_CLAIMED and len(log.topics) == 2 and len(log.data) == 32:
        return LockClaimed(log.topics[1], log.data)
    if topic == TOPIC_REFUNDED and len(log.topics) == 2:
        return LockRefunded(log.topics[1])
    return None


def decode_receipt(receipt: Receipt, address: str, chain_id: int) -> list[LockEvent]:
    address = to_checksum_address(address)
    ours = (log for log in receipt.logs if to_checksum_address(log.address) == address)
    return [event for log in ours if (event := decode_htlc_log(log, chain_id)) is not None]


@lru_cache(maxsize=1)
def revert_abi() -> tuple[dict[str, Any], ...]:
    """The custom errors of every contract the gateway sends to (the HTLCs, the payment token,
    the title registry): enough to name the revert of any of its transactions."""
    return tuple(item for name in ("PaymentHTLC", "PaymentToken", "DeliveryHTLC",
                                   "TitleDocument")
                 for item in _artifact(name).abi if item["type"] == "error")


@lru_cache(maxsize=8)
def _artifact(name: str) -> Artifact:
    return load_artifact(name)


@dataclass
class PaymentHTLCProxy:
    client: ChainClient
    htlc: Contract
    _token: Contract | None = field(default=None, init=False, repr=False)

    @classmethod
    def at(cls, client: ChainClient, address: str) -> PaymentHTLCProxy:
        """The PaymentHTLC at `address` on `client`'s chain."""
        return cls(client, client.contract(address, _artifact("PaymentHTLC")))

    @property
    def address(self) -> str:
        return self.htlc.address

    @property
    def token(self) -> Contract:
        """The ERC-20 this HTLC locks (fixed at its deployment: read once)."""
        if self._token is None:
            self._token = self.client.contract(self.htlc.functions.token().call(
                self.client.view_params()),
                                               _artifact("PaymentToken"))
        return self._token

    def balance_of(self, owner: str, block: str | int = "latest") -> int:
        return self.token.functions.balanceOf(owner).call(self.client.view_params(),
                                                          block_identifier=block)

    def allowance(self, owner: str, block: str | int = "latest") -> int:
        """What this HTLC may pull from `owner`."""
        return self.token.functions.allowance(owner, self.address).call(
            self.client.view_params(), block_identifier=block)

    def approve_calldata(self) -> tuple[str, bytes]:
        """(token address, calldata) of a standing approval of this HTLC."""
        return self.token.address, self.token.encode_abi("approve",
                                                         [self.address, 2**256 - 1])

    def simulate(self, sender: str, data: bytes, gas: int | None = None) -> RevertError | None:
        """A call of this HTLC by `sender` as eth_call at the latest block (see
        `ChainClient.simulate`)."""
        return self.client.simulate(sender, self.address, data, gas=gas, abi=revert_abi())

    def lock_id(self, lock: PaymentLock) -> bytes:
        return payment_lock_id(self.client.chain_id, self.address, lock)

    def lock(self, sender: LocalAccount, beneficiary: str, amount: int, hashlock: bytes,
             timelock: int) -> tuple[Receipt, PaymentLock]:
        data = payment_lock_calldata(beneficiary, amount, hashlock, timelock)
        receipt = self.client.transact(sender, to=self.address, data=data, gas=GAS_LOCK)
        return receipt, PaymentLock(sender.address, to_checksum_address(beneficiary), amount,
                                    hashlock, timelock)

    def claim(self, caller: LocalAccount, lock: PaymentLock, preimage: bytes) -> Receipt:
        data = payment_claim_calldata(lock, preimage)
        return self.client.transact(caller, to=self.address, data=data, gas=GAS_CLAIM)

    def refund(self, caller: LocalAccount, lock: PaymentLock) -> Receipt:
        data = payment_refund_calldata(lock)
        return self.client.transact(caller, to=self.address, data=data, gas=GAS_REFUND)

    def claim_many(self, caller: LocalAccount, locks: list[PaymentLock],
                   preimages: list[bytes]) -> Receipt:
        data = claim_many_calldata(locks, preimages)
        gas = GAS_BATCH_BASE + GAS_BATCH_PER_LOCK * len(locks)
        return self.client.transact(caller, to=self.address, data=data, gas=gas)

    def refund_many(self, caller: LocalAccount, locks: list[PaymentLock]) -> Receipt:
        data = refund_many_calldata(locks)
        gas = GAS_BATCH_BASE + GAS_BATCH_PER_LOCK * len(locks)
        return self.client.transact(caller, to=self.address, data=data, gas=gas)

    def status(self, lock_id: bytes) -> int:
        return self.htlc.functions.statusOf(lock_id).call(self.client.view_params())


@dataclass
class DeliveryHTLCProxy:
    client: ChainClient
    htlc: Contract
    _titles: Contract | None = field(default=None, init=False, repr=False)

    @classmethod
    def at(cls, client: ChainClient, address: str) -> DeliveryHTLCProxy:
        """The DeliveryHTLC at `address` on `client`'s chain."""
        return cls(client, client.contract(address, _artifact("DeliveryHTLC")))

    @property
    def address(self) -> str:
        return self.htlc.address

    @property
    def titles(self) -> Contract:
        """The ERC-721 title registry this HTLC locks (fixed at its deployment: read once)."""
        if self._titles is None:
            self._titles = self.client.contract(self.htlc.functions.titles().call(
                self.client.view_params()),
                                                _artifact("TitleDocument"))
        return self._titles

    def owner_of(self, token_id: int, block: str | int = "latest") -> str | None:
        """The title's owner; None if no such title exists."""
        try:
            return checksum(self.titles.functions.ownerOf(token_id).call(
                self.client.view_params(), block_identifier=block))
        except _call_errors():  # ERC721NonexistentToken
            return None

    def document_hash(self, token_id: int, block: str | int = "latest") -> bytes:
        return bytes(self.titles.functions.documentHash(token_id).call(
            self.client.view_params(), block_identifier=block))

    def is_approved_for_all(self, owner: str, block: str | int = "latest") -> bool:
        """May this HTLC take `owner`'s titles?"""
        return self.titles.functions.isApprovedForAll(owner, self.address).call(
            self.client.view_params(), block_identifier=block)

    def approve_calldata(self) -> tuple[str, bytes]:
        """(title registry address, calldata) of a standing approval of this HTLC."""
        return self.titles.address, self.titles.encode_abi("setApprovalForAll",
                                                           [self.address, True])

    def simulate(self, sender: str, data: bytes, gas: int | None = None) -> RevertError | None:
        """A call of this HTLC by `sender` as eth_call at the latest block (see
        `ChainClient.simulate`)."""
        return self.client.simulate(sender, self.address, data, gas=gas, abi=revert_abi())

    def lock_id(self, lock: DeliveryLock) -> bytes:
        return delivery_lock_id(self.client.chain_id, self.address, lock)

    def lock(self, seller: LocalAccount, buyer: str, token_id: int, document_hash: bytes,
             trade_id: bytes, hashlock: bytes, timelock: int) -> tuple[Receipt, DeliveryLock]:
        data = delivery_lock_calldata(buyer, token_id, document_hash, trade_id, hashlock,
                                      timelock)
        receipt = self.client.transact(seller, to=self.address, data=data, gas=GAS_DELIVERY_LOCK)
        return receipt, DeliveryLock(seller.address, to_checksum_address(buyer), token_id,
                                     document_hash, trade_id, hashlock, timelock)

    def claim(self, caller: LocalAccount, lock: DeliveryLock, preimage: bytes) -> Receipt:
        data = delivery_claim_calldata(lock, preimage)
        return self.client.transact(caller, to=self.address, data=data, gas=GAS_DELIVERY_EXIT)

    def refund(self, caller: LocalAccount, lock: DeliveryLock) -> Receipt:
        data = delivery_refund_calldata(lock)
        return self.client.transact(caller, to=self.address, data=data, gas=GAS_DELIVERY_EXIT)

    def status(self, lock_id: bytes) -> int:
        return self.htlc.functions.statusOf(lock_id).call(self.client.view_params())
