"""`decode_htlc_log` reads both `Locked` logs by slicing their five static words (and derives
a payment lock's id from the log's data as it stands): the same answer as the ABI decoder for
every canonical encoding, and the ABI decoder's refusal for any other."""

from __future__ import annotations

import pytest
from eth_abi import encode as abi_encode
from eth_abi.exceptions import DecodingError
from hypothesis import given
from hypothesis import strategies as st

from gateway.chain.client import Log, checksum
from gateway.chain.htlc import (
    DELIVERY_LOCK_TYPES,
    PAYMENT_LOCK_TYPES,
    TOPIC_DELIVERY_LOCKED,
    TOPIC_PAYMENT_LOCKED,
    decode_htlc_log,
    delivery_lock_id,
    payment_lock_id,
)
from gateway.domain.locks import DeliveryLock, DeliveryLocked, PaymentLock, PaymentLocked

HTLC = checksum("0x" + "ab" * 20)
addresses = st.binary(min_size=20, max_size=20).map(lambda b: checksum("0x" + b.hex()))
words = st.binary(min_size=32, max_size=32)
uint256 = st.integers(min_value=0, max_value=2**256 - 1)
uint64 = st.integers(min_value=0, max_value=2**64 - 1)


@given(addresses, addresses, uint256, words, uint64, st.integers(1, 2**64))
def test_a_payment_lock_log_reads_as_the_abi_decoder_reads_it(sender, beneficiary, amount,
                                                             hashlock, timelock,
                                                             chain_id) -> None:
    lock = PaymentLock(sender, beneficiary, amount, hashlock, timelock)
    data = abi_encode(PAYMENT_LOCK_TYPES, list(lock.as_tuple()))
    got = decode_htlc_log(Log(HTLC, (TOPIC_PAYMENT_LOCKED,), data, 0), chain_id)
    assert got == PaymentLocked(payment_lock_id(chain_id, HTLC, lock), lock)


@given(addresses, addresses, uint256, words, words, words, uint64)
def test_a_delivery_lock_log_reads_as_the_abi_decoder_reads_it(seller, buyer, token_id,
                                                              document, trade_id, hashlock,
                                                              timelock) -> None:
    lock = DeliveryLock(seller, buyer, token_id, document, trade_id, hashlock, timelock)
    lock_id = delivery_lock_id(7, HTLC, lock)
    data = abi_encode(["address", "address", "uint256", "bytes32", "uint64"],
                      [seller, buyer, token_id, document, timelock])
    topics = (TOPIC_DELIVERY_LOCKED, lock_id, hashlock, trade_id)
    assert decode_htlc_log(Log(HTLC, topics, data, 0), 7) == DeliveryLocked(lock_id, lock)
    assert len(DELIVERY_LOCK_TYPES) == 7  # (the lock's own fields, for the id above)


@pytest.mark.parametrize("dirty", [0, 33, 150])  # an address's padding; the uint64's
def test_a_word_that_is_not_canonical_is_refused_as_before(dirty: int) -> None:
    lock = PaymentLock(checksum("0x" + "11" * 20), checksum("0x" + "22" * 20), 5, bytes(32), 9)
    data = bytearray(abi_encode(PAYMENT_LOCK_TYPES, list(lock.as_tuple())))
    data[dirty] = 1
    with pytest.raises(DecodingError):
        decode_htlc_log(Log(HTLC, (TOPIC_PAYMENT_LOCKED,), bytes(data), 0), 1)
