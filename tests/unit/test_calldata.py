"""Hand-encoded calldata equals web3's ABI encoding of the same call."""

from __future__ import annotations

from gateway.chain.htlc import claim_many_calldata
from gateway.domain.locks import PaymentLock


def test_claim_many_calldata_matches_abi_encoder(devnet) -> None:
    locks = [PaymentLock(devnet.info.buyer, devnet.info.seller, 5 + i, bytes([i + 1]) * 32,
                         10**9 + i) for i in range(3)]
    preimages = [bytes([9 + i]) * 32 for i in range(3)]
    expected = devnet.payment_htlc.htlc.encode_abi(
        "claimMany", [[lk.as_tuple() for lk in locks], preimages])
    assert claim_many_calldata(locks, preimages) == bytes.fromhex(expected[2:])
