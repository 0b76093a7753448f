"""Hand-encoded calldata equals web3's ABI encoding of the same call, for every HTLC function
the gateway and its tools send."""

from __future__ import annotations

from gateway.chain import htlc as calls
from gateway.domain.locks import DeliveryLock, PaymentLock


def _abi(contract, fn: str, args: list) -> bytes:  # noqa: ANN001
    return bytes.fromhex(contract.encode_abi(fn, args)[2:])


def test_payment_htlc_calldata_matches_abi_encoder(devnet) -> None:
    pay = devnet.payment_htlc.htlc
    locks = [PaymentLock(devnet.info.buyer, devnet.info.seller, 5 + i, bytes([i + 1]) * 32,
                         10**9 + i) for i in range(3)]
    preimages = [bytes([9 + i]) * 32 for i in range(3)]
    lk = locks[0]
    assert calls.payment_lock_calldata(lk.beneficiary, 2**256 - 1, lk.hashlock, 2**64 - 1) == \
        _abi(pay, "lock", [lk.beneficiary, 2**256 - 1, lk.hashlock, 2**64 - 1])
    assert calls.payment_claim_calldata(lk, preimages[0]) == \
        _abi(pay, "claim", [lk.as_tuple(), preimages[0]])
    assert calls.payment_claim_calldata(lk, b"\x01" * 33) == \
        _abi(pay, "claim", [lk.as_tuple(), b"\x01" * 33])  # `bytes`: any length encodes
    assert calls.payment_refund_calldata(lk) == _abi(pay, "refund", [lk.as_tuple()])
    assert calls.claim_many_calldata(locks, preimages) == \
        _abi(pay, "claimMany", [[x.as_tuple() for x in locks], preimages])
    assert calls.refund_many_calldata(locks) == \
        _abi(pay, "refundMany", [[x.as_tuple() for x in locks]])


def test_delivery_htlc_calldata_matches_abi_encoder(devnet) -> None:
    dlv = devnet.delivery_htlc.htlc
    lk = DeliveryLock(devnet.info.seller, devnet.info.buyer, 7, b"\x0d" * 32, b"\x0e" * 32,
                      b"\x0f" * 32, 10**9)
    assert calls.delivery_lock_calldata(lk.buyer, lk.token_id, lk.document_hash, lk.trade_id,
                                        lk.hashlock, lk.timelock) == \
        _abi(dlv, "lock", [lk.buyer, lk.token_id, lk.document_hash, lk.trade_id, lk.hashlock,
                           lk.timelock])
    assert calls.delivery_claim_calldata(lk, b"\x05" * 32) == \
        _abi(dlv, "claim", [lk.as_tuple(), b"\x05" * 32])
    assert calls.delivery_refund_calldata(lk) == _abi(dlv, "refund", [lk.as_tuple()])


def test_batch_calldata_matches_eth_abi_for_any_batch() -> None:
    """claimMany and refundMany are written word by word (`htlc._payment_locks`): equal to
    eth_abi's encoding for 0 to 50 locks at the types' limits, and values eth_abi refuses
    are refused."""
    import random

    import pytest
    from eth_abi import encode

    rng = random.Random(7)
    tuple_type = "(address,address,uint256,bytes32,uint64)"
    for n in (0, 1, 2, 50):
        locks = [PaymentLock("0x" + rng.randbytes(20).hex(), "0x" + rng.randbytes(20).hex(),
                             rng.choice([0, 1, 2**256 - 1, rng.getrandbits(256)]),
                             rng.randbytes(32), rng.choice([0, 2**64 - 1, rng.getrandbits(64)]))
                 for _ in range(n)]
        preimages = [rng.randbytes(32) for _ in range(n)]
        tuples = [lk.as_tuple() for lk in locks]
        assert calls.claim_many_calldata(locks, preimages) == calls._CLAIM_MANY.selector + \
            encode([f"{tuple_type}[]", "bytes32[]"], [tuples, preimages])
        assert calls.refund_many_calldata(locks) == calls._REFUND_MANY.selector + \
            encode([f"{tuple_type}[]"], [tuples])
    good = PaymentLock("0x" + "11" * 20, "0x" + "22" * 20, 5, b"\x01" * 32, 9)
    for bad in (PaymentLock(good.sender, good.beneficiary, 2**256, good.hashlock, 9),
                PaymentLock(good.sender, good.beneficiary, -1, good.hashlock, 9),
                PaymentLock(good.sender, good.beneficiary, 5, good.hashlock, 2**64),
                PaymentLock(good.sender, good.beneficiary, 5, b"\x01" * 31, 9),
                PaymentLock("0x" + "11" * 19, good.beneficiary, 5, good.hashlock, 9),
                PaymentLock(good.sender, "11" * 20, 5, good.hashlock, 9)):
        with pytest.raises(ValueError):
            calls.claim_many_calldata([good, bad], [b"\x02" * 32] * 2)
        with pytest.raises(ValueError):
            calls.refund_many_calldata([bad])
    with pytest.raises(ValueError):
        calls.claim_many_calldata([good], [b"\x02" * 33])
    for preimages in ([], [b"\x02" * 32] * 2):  # lengths apart: the contract refuses them
        assert calls.claim_many_calldata([good], preimages) == calls._CLAIM_MANY.selector + \
            encode([f"{tuple_type}[]", "bytes32[]"], [[good.as_tuple()], preimages])
