"""PaymentHTLC (and PaymentToken) contract tests on the in-process payment chain.

Every test checks the state a call leaves behind (token balances, lock statuses, decoded
events), not only whether it reverted. Reverts are asserted twice by `expect_revert`: simulated
against the pending block and mined (status 0). Time boundaries are exact: the transaction under
test is mined in a block whose timestamp the test chose.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, replace

import pytest
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from web3.contract import Contract

from gateway.chain.client import RevertError, decode_revert
from gateway.chain.devnet import INITIAL_BALANCE, Devnet, InProcessChain
from gateway.chain.htlc import PaymentHTLCProxy, decode_receipt, payment_lock_id
from gateway.contracts import load_artifact
from gateway.domain.locks import (
    LockClaimed,
    LockRefunded,
    PaymentLock,
    PaymentLocked,
    hashlock_of,
    new_secret,
)
from tests.helpers import (
    MAX_UINT256,
    Status,
    approve,
    at,
    balance_of,
    double_artifact,
    expect_revert,
    mined_at,
    values,
    with_errors,
)

HOUR = 3600
MAX_LOCK_DURATION = 30 * 24 * HOUR
ZERO_ADDRESS = "0x" + "00" * 20
ZERO_BYTES32 = b"\x00" * 32
AMOUNT = 250_000_00  # 250,000.00


# --------------------------------------------------------------------------------------------
# helpers


def as_bytes(hex_data: str) -> bytes:
    return bytes.fromhex(hex_data.removeprefix("0x"))


def do_lock(htlc: PaymentHTLCProxy, sender: LocalAccount, beneficiary: str, *,
            amount: int = AMOUNT, hashlock: bytes | None = None,
            timelock: int | None = None, chain: InProcessChain | None = None
            ) -> tuple[PaymentLock, bytes]:
    """Lock successfully; returns the lock and its id (checked against the contract)."""
    if hashlock is None:
        hashlock = hashlock_of(new_secret())
    if timelock is None:
        assert chain is not None
        timelock = chain.next_block_timestamp() + HOUR
    receipt, lock = htlc.lock(sender, beneficiary, amount, hashlock, timelock)
    assert receipt.succeeded
    lock_id = htlc.lock_id(lock)
    assert decode_receipt(receipt, htlc.address, htlc.client.chain_id) == [
        PaymentLocked(lock_id, lock)]
    assert htlc.status(lock_id) == Status.OPEN
    return lock, lock_id


@dataclass
class Balances:
    token: Contract
    holders: dict[str, str]

    def read(self) -> dict[str, int]:
        return {name: balance_of(self.token, addr) for name, addr in self.holders.items()}


def balances(devnet: Devnet, token: Contract | None = None, htlc: str | None = None,
             **extra: str) -> Balances:
    holders = {
        "buyer": devnet.info.buyer,
        "seller": devnet.info.seller,
        "relayer": devnet.info.relayer,
        "htlc": htlc or devnet.payment_htlc.address,
        **extra,
    }
    return Balances(token if token is not None else devnet.payment_token, holders)


def changed(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The non-zero balance deltas."""
    return {k: after[k] - before[k] for k in before if after[k] != before[k]}


@dataclass
class Rig:
    """A PaymentHTLC bound to a test-double token, with funded and approving holders."""

    token: Contract
    htlc: PaymentHTLCProxy


def deploy_rig(devnet: Devnet, double: str, holders: list[LocalAccount],
               amount: int = INITIAL_BALANCE) -> Rig:
    client, deployer = devnet.payment.client, devnet.payment.accounts[0]
    token = client.deploy(deployer, double_artifact(double))
    htlc = client.deploy(deployer, load_artifact("PaymentHTLC"), token.address)
    for holder in holders:
        assert client.transact(deployer, to=token.address, gas=100_000,
                               data=token.encode_abi("mint", [holder.address, amount])).succeeded
        approve(client, holder, token, htlc.address)
    return Rig(token, PaymentHTLCProxy(client, htlc))


def preimage_of_length(secret: bytes, n: int) -> bytes:
    """`n` bytes that start with the real secret when n >= 32 (a truncating contract would
    accept them), or are a prefix of it."""
    return (secret * (n // 32 + 1))[:n]


# --------------------------------------------------------------------------------------------
# PaymentToken


def test_payment_token_has_two_decimals_and_funded_dev_accounts(devnet: Devnet) -> None:
    token = devnet.payment_token
    assert token.functions.decimals().call() == 2
    assert token.functions.issuer().call() == devnet.info.issuer
    for account in devnet.payment.accounts:
        assert balance_of(token, account.address) == INITIAL_BALANCE == 100_000_000
    assert token.functions.totalSupply().call() == INITIAL_BALANCE * len(devnet.payment.accounts)


def test_only_the_issuer_mints(devnet: Devnet, relayer: LocalAccount) -> None:
    client, token = devnet.payment.client, devnet.payment_token
    supply = token.functions.totalSupply().call()
    err = expect_revert(client, relayer, token, "mint", [relayer.address, 1_000], "NotIssuer")
    assert values(err) == (relayer.address,)
    assert balance_of(token, relayer.address) == INITIAL_BALANCE
    assert token.functions.totalSupply().call() == supply

    issuer = devnet.payment.accounts[0]
    assert client.transact(issuer, to=token.address, gas=100_000,
                           data=token.encode_abi("mint", [relayer.address, 1_000])).succeeded
    assert balance_of(token, relayer.address) == INITIAL_BALANCE + 1_000
    assert token.functions.totalSupply().call() == supply + 1_000


# --------------------------------------------------------------------------------------------
# constructor and constants


def test_constants_and_constructor(devnet: Devnet) -> None:
    htlc = devnet.payment_htlc.htlc
    assert htlc.functions.MAX_LOCK_DURATION().call() == MAX_LOCK_DURATION
    assert htlc.functions.token().call() == devnet.payment_token.address
    with pytest.raises(RuntimeError, match="deploying PaymentHTLC"):
        devnet.payment.client.deploy(devnet.payment.accounts[0], load_artifact("PaymentHTLC"),
                                     ZERO_ADDRESS)


# --------------------------------------------------------------------------------------------
# lock


def test_lock_moves_exact_amount_and_emits_every_parameter(
        devnet: Devnet, approved_buyer: LocalAccount, seller: LocalAccount) -> None:
    chain, htlc = devnet.payment, devnet.payment_htlc
    hashlock = hashlock_of(new_secret())
    timelock = chain.next_block_timestamp() + 2 * HOUR
    bal = balances(devnet)
    before = bal.read()

    # The simulated return value is the id the mined lock gets.
    simulated_id = chain.client.call(htlc.htlc, "lock", seller.address, AMOUNT, hashlock,
                                     timelock, sender=approved_buyer.address, block="pending")
    receipt, lock = htlc.lock(approved_buyer, seller.address, AMOUNT, hashlock, timelock)
    assert receipt.succeeded

    assert changed(before, bal.read()) == {"buyer": -AMOUNT, "htlc": AMOUNT}
    assert lock == PaymentLock(approved_buyer.address, seller.address, AMOUNT, hashlock, timelock)

    events = decode_receipt(receipt, htlc.address, chain.chain_id)
    assert len(events) == 1 and isinstance(events[0], PaymentLocked)
    locked = events[0]
    assert locked.lock == lock  # sender, beneficiary, amount, hashlock, timelock
    on_chain_id = htlc.htlc.functions.lockIdOf(lock.as_tuple()).call()
    assert locked.lock_id == on_chain_id == htlc.lock_id(lock) == simulated_id
    assert htlc.status(on_chain_id) == Status.OPEN

    # The Locked log has no indexed topic: the id is not in it, only derivable from it.
    (log,) = [lg for lg in receipt.logs if lg.address == htlc.address]
    assert len(log.topics) == 1 and on_chain_id not in log.data


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("zero_beneficiary", "ZeroAddress"),
        ("zero_amount", "ZeroAmount"),
        ("zero_hashlock", "ZeroHashlock"),
        ("everything_invalid", "ZeroAddress"),  # the first failing rule is reported
        ("timelock_now", "TimelockNotInFuture"),
        ("timelock_past", "TimelockNotInFuture"),
        ("timelock_zero", "TimelockNotInFuture"),
        ("timelock_just_too_far", "TimelockTooFar"),
        ("timelock_uint64_max", "TimelockTooFar"),
    ],
)
def test_lock_rejects_invalid_arguments(devnet: Devnet, approved_buyer: LocalAccount,
                                        seller: LocalAccount, case: str, error: str) -> None:
    chain, htlc = devnet.payment, devnet.payment_htlc
    now = chain.next_block_timestamp()  # the simulation and the mined tx both run at `now`
    args = {"beneficiary": seller.address, "amount": AMOUNT,
            "hashlock": hashlock_of(new_secret()), "timelock": now + HOUR}
    match case:
        case "zero_beneficiary":
            args["beneficiary"] = ZERO_ADDRESS
        case "zero_amount":
            args["amount"] = 0
        case "zero_hashlock":
            args["hashlock"] = ZERO_BYTES32
        case "everything_invalid":
            args = {"beneficiary": ZERO_ADDRESS, "amount": 0, "hashlock": ZERO_BYTES32,
                    "timelock": 0}
        case "timelock_now":
            args["timelock"] = now
        case "timelock_past":
            args["timelock"] = now - 1
        case "timelock_zero":
            args["timelock"] = 0
        case "timelock_just_too_far":
            args["timelock"] = now + MAX_LOCK_DURATION + 1
        case "timelock_uint64_max":
            args["timelock"] = 2**64 - 1
    bal = balances(devnet)
    before = bal.read()

    err = expect_revert(chain.client, approved_buyer, htlc.htlc, "lock", list(args.values()),
                        error)

    if error == "TimelockNotInFuture":
        assert err.values == (args["timelock"], now)
    elif error == "TimelockTooFar":
        assert err.values == (args["timelock"], now + MAX_LOCK_DURATION)
    else:
        assert err.values == ()
    assert chain.next_block_timestamp() == now + 1  # the reverted tx was mined at `now`
    assert bal.read() == before
    lock = PaymentLock(approved_buyer.address, to_checksum_address(args["beneficiary"]),
                       args["amount"], args["hashlock"], args["timelock"])
    assert htlc.status(htlc.lock_id(lock)) == Status.NONE


@pytest.mark.parametrize(("word", "dirt"), [(0, 1 << 160), (3, 1 << 64)],
                         ids=["beneficiary", "timelock"])
def test_lock_rejects_non_canonical_calldata(devnet: Devnet, approved_buyer: LocalAccount,
                                             seller: LocalAccount, word: int, dirt: int) -> None:
    """`lock` hashes its raw calldata into the lock id, so the ABI decoder must refuse dirty
    high bits: otherwise the stored id would differ from the one derived from the event."""
    chain, htlc = devnet.payment, devnet.payment_htlc
    lock = PaymentLock(approved_buyer.address, seller.address, AMOUNT,
                       hashlock_of(new_secret()), chain.next_block_timestamp() + HOUR)
    data = bytearray(as_bytes(htlc.htlc.encode_abi("lock", list(lock.as_tuple()[1:]))))
    start = 4 + 32 * word
    value = int.from_bytes(data[start:start + 32], "big") + dirt
    data[start:start + 32] = value.to_bytes(32, "big")
    before = balances(devnet).read()

    receipt = chain.client.transact(approved_buyer, to=htlc.address, data=bytes(data),
                                    gas=200_000)

    assert receipt.status == 0 and receipt.logs == ()
    assert balances(devnet).read() == before
    assert htlc.status(htlc.lock_id(lock)) == Status.NONE


@pytest.mark.parametrize("duration", [1, MAX_LOCK_DURATION], ids=["next_second", "max"])
def test_lock_timelock_bounds_are_inclusive(devnet: Devnet, approved_buyer: LocalAccount,
                                            seller: LocalAccount, duration: int) -> None:
    chain, htlc = devnet.payment, devnet.payment_htlc
    now = chain.next_block_timestamp()
    bal = balances(devnet)
    before = bal.read()
    receipt, lock = htlc.lock(approved_buyer, seller.address, AMOUNT,
                              hashlock_of(new_secret()), now + duration)
    assert receipt.succeeded and mined_at(chain, receipt) == now
    assert htlc.status(htlc.lock_id(lock)) == Status.OPEN
    assert changed(before, bal.read()) == {"buyer": -AMOUNT, "htlc": AMOUNT}


def test_identical_lock_twice_reverts_lock_exists(devnet: Devnet, approved_buyer: LocalAccount,
                                                  seller: LocalAccount) -> None:
    chain, htlc = devnet.payment, devnet.payment_htlc
    lock, lock_id = do_lock(htlc, approved_buyer, seller.address, chain=chain)
    bal = balances(devnet)
    before = bal.read()

    err = expect_revert(chain.client, approved_buyer, htlc.htlc, "lock",
                        list(lock.as_tuple()[1:]), "LockExists")

    assert err.values == (lock_id,)
    assert bal.read() == before  # debited once only
    assert htlc.status(lock_id) == Status.OPEN


@pytest.mark.parametrize("allowance", [0, AMOUNT - 1], ids=["none", "one_short"])
def test_lock_without_enough_allowance_reverts_in_the_token(
        devnet: Devnet, buyer: LocalAccount, seller: LocalAccount, allowance: int) -> None:
    chain, htlc, token = devnet.payment, devnet.payment_htlc, devnet.payment_token
    if allowance:
        approve(chain.client, buyer, token, htlc.address, allowance)
    hashlock, timelock = hashlock_of(new_secret()), chain.next_block_timestamp() + HOUR
    bal = balances(devnet)
    before = bal.read()

    err = expect_revert(chain.client, buyer, with_errors(chain.client, htlc.htlc, token),
                        "lock", [seller.address, AMOUNT, hashlock, timelock],
                        "ERC20InsufficientAllowance")

    assert values(err) == (htlc.address, allowance, AMOUNT)
    assert bal.read() == before
    assert token.functions.allowance(buyer.address, htlc.address).call() == allowance
    lock = PaymentLock(buyer.address, seller.address, AMOUNT, hashlock, timelock)
    assert htlc.status(htlc.lock_id(lock)) == Status.NONE


def test_lock_beyond_balance_reverts_in_the_token(devnet: Devnet, approved_buyer: LocalAccount,
                                                   seller: LocalAccount) -> None:
    chain, htlc, token = devnet.payment, devnet.payment_htlc, devnet.payment_token
    amount = INITIAL_BALANCE + 1
    hashlock, timelock = hashlock_of(new_secret()), chain.next_block_timestamp() + HOUR
    bal = balances(devnet)
    before = bal.read()

    err = expect_revert(chain.client, approved_buyer, with_errors(chain.client, htlc.htlc, token),
                        "lock", [seller.address, amount, hashlock, timelock],
                        "ERC20InsufficientBalance")

    assert values(err) == (approved_buyer.address, INITIAL_BALANCE, amount)
    assert bal.read() == before
    lock = PaymentLock(approved_buyer.address, seller.address, amount, hashlock, timelock)
    assert htlc.status(htlc.lock_id(lock)) == Status.NONE


def test_fee_on_transfer_token_is_rejected(devnet: Devnet, buyer: LocalAccount,
                                           seller: LocalAccount) -> None:
    chain = devnet.payment
    rig = deploy_rig(devnet, "FeeOnTransferToken", [buyer])
    hashlock, timelock = hashlock_of(new_secret()), chain.next_block_timestamp() + HOUR
    bal = balances(devnet, rig.token, rig.htlc.address)
    before = bal.read()

    err = expect_revert(chain.client, buyer, rig.htlc.htlc, "lock",
                        [seller.address, 10_000, hashlock, timelock], "TransferAmountMismatch")

    assert err.values == (10_000, 9_900)  # 1% burnt on the way
    assert bal.read() == before
    lock = PaymentLock(buyer.address, seller.address, 10_000, hashlock, timelock)
    assert rig.htlc.status(rig.htlc.lock_id(lock)) == Status.NONE


# --------------------------------------------------------------------------------------------
# claim


def test_claim_by_a_third_party_pays_the_beneficiary_only(
        devnet: Devnet, approved_buyer: LocalAccount, seller: LocalAccount,
        relayer: LocalAccount) -> None:
    chain, htlc = devnet.payment, devnet.payment_htlc
    secret = new_secret()
    lock, lock_id = do_lock(htlc, approved_buyer, seller.address, hashlock=hashlock_of(secret),
                            chain=chain)
    bal = balances(devnet)
    before = bal.read()

    receipt = htlc.claim(relayer, lock, secret)

    assert receipt.succeeded
    assert changed(before, bal.read()) == {"seller": AMOUNT, "htlc": -AMOUNT}
    assert htlc.status(lock_id) == Status.CLAIMED
    events = decode_receipt(receipt, htlc.address, chain.chain_id)
    assert events == [LockClaimed(lock_id, secret)]
    assert events[0].hashlock == lock.hashlock


def test_claim_one_second_before_the_timelock_succeeds_and_at_it_fails(
        devnet: Devnet, approved_buyer: LocalAccount, seller: LocalAccount,
        relayer: LocalAccount) -> None:
    chain, htlc = devnet.payment, devnet.payment_htlc
    secret = new_secret()
    timelock = chain.next_block_timestamp() + HOUR
    early, early_id = do_lock(htlc, approved_buyer, seller.address, amount=100,
                              hashlock=hashlock_of(secret), timelock=timelock)
    late, late_id = do_lock(htlc, approved_buyer, seller.address, amount=200,
                            hashlock=hashlock_of(secret), timelock=timelock)
    bal = balances(devnet)
    before = bal.read()

    at(chain, timelock - 1)
    receipt = htlc.claim(relayer, early, secret)
    assert receipt.succeeded and mined_at(chain, receipt) == timelock - 1

    assert chain.next_block_timestamp() == timelock
    err = expect_revert(chain.client, relayer, htlc.htlc, "claim", [late.as_tuple(), secret],
                        "LockExpired")
    assert err.values == (late_id, timelock)
    assert chain.next_block_timestamp() == timelock + 1  # the failed claim was mined at T

    assert changed(before, bal.read()) == {"seller": 100, "htlc": -100}
    assert htlc.status(early_id) == Status.CLAIMED
    assert htlc.status(late_id) == Status.OPEN


@pytest.mark.parametrize("wrong", ["random", "one_bit_flipped", "the_hashlock", "keccak_preimage"])
def test_claim_with_a_wrong_preimage_reverts_hashlock_mismatch(
        devnet: Devnet, approved_buyer: LocalAccount, seller: LocalAccount,
        relayer: LocalAccount, wrong: str) -> None:
    chain, htlc = devnet.payment, devnet.payment_htlc
    secret = new_secret()
    hashlock = hashlock_of(secret)
    preimage = {
        "random": new_secret(),
        "one_bit_flipped": bytes([secret[0] ^ 1]) + secret[1:],
        "the_hashlock": hashlock,
        "keccak_preimage": secret,
    }[wrong]
    if wrong == "keccak_preimage":  # a lock whose hashlock is keccak256(s): s must not open it
        hashlock = keccak(secret)
    lock, lock_id = do_lock(htlc, approved_buyer, seller.address, hashlock=hashlock, chain=chain)
    bal = balances(devnet)
    before = bal.read()

    err = expect_revert(chain.client, relayer, htlc.htlc, "claim", [lock.as_tuple(), preimage],
                        "HashlockMismatch")

    assert err.values == (lock_id,)
    assert bal.read() == before
    assert htlc.status(lock_id) == Status.OPEN


def test_preimage_of_any_length_but_32_is_rejected(
        devnet: Devnet, approved_buyer: LocalAccount, seller: LocalAccount,
        relayer: LocalAccount) -> None:
    chain, htlc = devnet.payment, devnet.payment_htlc
    secret = new_secret()
    lock, lock_id = do_lock(htlc, approved_buyer, seller.address, hashlock=hashlock_of(secret),
                            chain=chain)
    bal = balances(devnet)
    before = bal.read()

    for n in range(1025):
        if n == 32:
            continue
        with pytest.raises(RevertError) as info:
            chain.client.call(htlc.htlc, "claim", lock.as_tuple(), preimage_of_length(secret, n),
                              sender=relayer.address, block="pending")
        assert (info.value.name, info.value.values) == ("InvalidPreimageLength", (n,))
    for n in (0, 31, 33, 64):  # mined, not just simulated
        err = expect_revert(chain.client, relayer, htlc.htlc, "claim",
                            [lock.as_tuple(), preimage_of_length(secret, n)],
                            "InvalidPreimageLength")
        assert err.values == (n,)
    assert bal.read() == before
    assert htlc.status(lock_id) == Status.OPEN

    # The exact 32-byte secret (the prefix of every long preimage above) does open it.
    assert htlc.claim(relayer, lock, secret).succeeded
    assert changed(before, bal.read()) == {"seller": AMOUNT, "htlc": -AMOUNT}


@pytest.mark.parametrize(
    ("first", "second", "status"),
    [
        ("claim", "claim", Status.CLAIMED),
        ("claim", "refund", Status.CLAIMED),
        ("refund", "claim", Status.REFUNDED),
        ("refund", "refund", Status.REFUNDED),
    ],
)
def test_a_lock_has_exactly_one_exit(devnet: Devnet, approved_buyer: LocalAccount,
                                     seller: LocalAccount, relayer: LocalAccount,
                                     first: str, second: str, status: Status) -> None:
    chain, htlc = devnet.payment, devnet.payment_htlc
    secret = new_secret()
    timelock = chain.next_block_timestamp() + HOUR
    lock, lock_id = do_lock(htlc, approved_buyer, seller.address, hashlock=hashlock_of(secret),
                            timelock=timelock)
    bal = balances(devnet)
    before = bal.read()

    if first == "claim":
        assert htlc.claim(relayer, lock, secret).succeeded
        paid = {"seller": AMOUNT, "htlc": -AMOUNT}
    else:
        at(chain, timelock)
        assert htlc.refund(relayer, lock).succeeded
        paid = {"buyer": AMOUNT, "htlc": -AMOUNT}
    if second == "refund":
        at(chain, max(timelock, chain.next_block_timestamp()))  # refundable but for the status
    args = [lock.as_tuple(), secret] if second == "claim" else [lock.as_tuple()]

    err = expect_revert(chain.client, relayer, htlc.htlc, second, args, "LockNotOpen")

    assert err.values == (lock_id, status)
    assert htlc.status(lock_id) == status
    assert changed(before, bal.read()) == paid


def test_unknown_lock_cannot_be_claimed_or_refunded(devnet: Devnet, buyer: LocalAccount,
                                                     seller: LocalAccount,
                                                     relayer: LocalAccount) -> None:
    chain, htlc = devnet.payment, devnet.payment_htlc
    # The HTLC holds other people's money: an unknown lock must not be able to reach it.
    lock_holder = devnet.payment.accounts[5]
    approve(chain.client, lock_holder, devnet.payment_token, htlc.address)
    do_lock(htlc, lock_holder, seller.address, chain=chain)

    secret = new_secret()
    now = chain.next_block_timestamp()
    ghost = PaymentLock(buyer.address, relayer.address, AMOUNT, hashlock_of(secret), now + HOUR)
    ghost_id = htlc.lock_id(ghost)
    bal = balances(devnet)
    before = bal.read()

    err = expect_revert(chain.client, relayer, htlc.htlc, "claim", [ghost.as_tuple(), secret],
                        "LockNotOpen")
    assert err.values == (ghost_id, Status.NONE)
    at(chain, ghost.timelock)
    err = expect_revert(chain.client, relayer, htlc.htlc, "refund", [ghost.as_tuple()],
                        "LockNotOpen")
    assert err.values == (ghost_id, Status.NONE)
    assert bal.read() == before
    assert htlc.status(ghost_id) == Status.NONE


TAMPERINGS = {
    "sender": lambda lk, other: replace(lk, sender=other),
    "beneficiary": lambda lk, other: replace(lk, beneficiary=other),
    "amount_plus_one": lambda lk, other: replace(lk, amount=lk.amount + 1),
    "amount_minus_one": lambda lk, other: replace(lk, amount=lk.amount - 1),
    "hashlock": lambda lk, other: replace(lk, hashlock=hashlock_of(b"\x42" * 32)),
    "timelock_later": lambda lk, other: replace(lk, timelock=lk.timelock + HOUR),
    "timelock_earlier": lambda lk, other: replace(lk, timelock=lk.timelock - HOUR // 2),
}


@pytest.mark.parametrize("field", TAMPERINGS)
def test_a_lock_with_tampered_parameters_cannot_be_claimed(
        devnet: Devnet, approved_buyer: LocalAccount, seller: LocalAccount,
        relayer: LocalAccount, field: str) -> None:
    chain, htlc = devnet.payment, devnet.payment_htlc
    secret = new_secret()
    lock, lock_id = do_lock(htlc, approved_buyer, seller.address, hashlock=hashlock_of(secret),
                            chain=chain)
    tampered = TAMPERINGS[field](lock, relayer.address)
    # With a tampered hashlock the attacker brings the matching preimage of their own.
    preimage = b"\x42" * 32 if field == "hashlock" else secret
    tampered_id = htlc.lock_id(tampered)
    assert tampered_id != lock_id
    bal = balances(devnet)
    before = bal.read()

    err = expect_revert(chain.client, relayer, htlc.htlc, "claim",
                        [tampered.as_tuple(), preimage], "LockNotOpen")

    assert err.values == (tampered_id, Status.NONE)
    assert bal.read() == before
    assert htlc.status(lock_id) == Status.OPEN
    assert htlc.claim(relayer, lock, secret).succeeded  # the genuine lock still claims
    assert changed(before, bal.read()) == {"seller": AMOUNT, "htlc": -AMOUNT}


@pytest.mark.parametrize("field", ["sender", "amount_plus_one", "timelock_earlier"])
def test_a_lock_with_tampered_parameters_cannot_be_refunded(
        devnet: Devnet, approved_buyer: LocalAccount, seller: LocalAccount,
        relayer: LocalAccount, field: str) -> None:
    chain, htlc = devnet.payment, devnet.payment_htlc
    lock, lock_id = do_lock(htlc, approved_buyer, seller.address,
                            hashlock=secrets.token_bytes(32), chain=chain)
    tampered = TAMPERINGS[field](lock, relayer.address)
    tampered_id = htlc.lock_id(tampered)
    bal = balances(devnet)
    before = bal.read()
    # Before the timelock, a copy claiming an earlier timelock would be "expired".
    at(chain, lock.timelock - 1)

    err = expect_revert(chain.client, relayer, htlc.htlc, "refund", [tampered.as_tuple()],
                        "LockNotOpen")

    assert err.values == (tampered_id, Status.NONE)
    assert bal.read() == before
    assert htlc.status(lock_id) == Status.OPEN


# --------------------------------------------------------------------------------------------
# refund


def test_refund_fails_one_second_before_the_timelock_and_succeeds_at_it(
        devnet: Devnet, approved_buyer: LocalAccount, seller: LocalAccount,
        relayer: LocalAccount) -> None:
    """No preimage exists anywhere: the hashlock is random bytes, never a secret's hash."""
    chain, htlc = devnet.payment, devnet.payment_htlc
    timelock = chain.next_block_timestamp() + HOUR
    bal = balances(devnet)
    start = bal.read()
    lock, lock_id = do_lock(htlc, approved_buyer, seller.address,
                            hashlock=secrets.token_bytes(32), timelock=timelock)
    before = bal.read()

    at(chain, timelock - 1)
    err = expect_revert(chain.client, relayer, htlc.htlc, "refund", [lock.as_tuple()],
                        "LockNotExpired")
    assert err.values == (lock_id, timelock)
    assert bal.read() == before and htlc.status(lock_id) == Status.OPEN

    assert chain.next_block_timestamp() == timelock
    receipt = htlc.refund(relayer, lock)  # a third party refunds; the sender is paid
    assert receipt.succeeded and mined_at(chain, receipt) == timelock

    assert changed(before, bal.read()) == {"buyer": AMOUNT, "htlc": -AMOUNT}
    assert bal.read() == start  # the buyer is made whole
    assert htlc.status(lock_id) == Status.REFUNDED
    assert decode_receipt(receipt, htlc.address, chain.chain_id) == [LockRefunded(lock_id)]


def test_refund_long_after_the_timelock(devnet: Devnet, approved_buyer: LocalAccount,
                                        seller: LocalAccount) -> None:
    chain, htlc = devnet.payment, devnet.payment_htlc
    lock, lock_id = do_lock(htlc, approved_buyer, seller.address,
                            hashlock=secrets.token_bytes(32), chain=chain)
    at(chain, lock.timelock + 365 * 24 * HOUR)
    before = balances(devnet).read()
    assert htlc.refund(seller, lock).succeeded  # even the beneficiary can only send it back
    assert changed(before, balances(devnet).read()) == {"buyer": AMOUNT, "htlc": -AMOUNT}
    assert htlc.status(lock_id) == Status.REFUNDED


# --------------------------------------------------------------------------------------------
# tokens that misbehave


def test_token_without_return_values_locks_claims_and_refunds(
        devnet: Devnet, buyer: LocalAccount, seller: LocalAccount,
        relayer: LocalAccount) -> None:
    chain = devnet.payment
    rig = deploy_rig(devnet, "NoReturnToken", [buyer])
    bal = balances(devnet, rig.token, rig.htlc.address)
    start = bal.read()
    secret = new_secret()
    timelock = chain.next_block_timestamp() + HOUR
    claimed, claimed_id = do_lock(rig.htlc, buyer, seller.address, amount=700,
                                  hashlock=hashlock_of(secret), timelock=timelock)
    refunded, refunded_id = do_lock(rig.htlc, buyer, seller.address, amount=300,
                                    hashlock=secrets.token_bytes(32), timelock=timelock)
    assert changed(start, bal.read()) == {"buyer": -1_000, "htlc": 1_000}

    assert rig.htlc.claim(relayer, claimed, secret).succeeded
    at(chain, timelock)
    assert rig.htlc.refund(relayer, refunded).succeeded

    assert changed(start, bal.read()) == {"buyer": -700, "seller": 700}
    assert rig.htlc.status(claimed_id) == Status.CLAIMED
    assert rig.htlc.status(refunded_id) == Status.REFUNDED


def test_reentrant_claim_of_the_same_lock_fails_and_pays_once(
        devnet: Devnet, buyer: LocalAccount, seller: LocalAccount,
        relayer: LocalAccount) -> None:
    chain = devnet.payment
    rig = deploy_rig(devnet, "ReentrantToken", [buyer])
    token, htlc = rig.token, rig.htlc
    secret = new_secret()
    lock, lock_id = do_lock(htlc, buyer, seller.address, hashlock=hashlock_of(secret),
                            chain=chain)
    reentry = as_bytes(htlc.htlc.encode_abi("claim", [lock.as_tuple(), secret]))
    assert chain.client.transact(chain.accounts[0], to=token.address, gas=300_000,
                                 data=token.encode_abi("arm", [htlc.address, reentry])).succeeded
    bal = balances(devnet, token, htlc.address)
    before = bal.read()

    receipt = chain.client.transact(relayer, to=htlc.address, gas=500_000,
                                    data=htlc.htlc.encode_abi("claim", [lock.as_tuple(), secret]))

    assert receipt.succeeded
    assert token.functions.attempted().call() is True
    assert token.functions.reentrySucceeded().call() is False
    reentry_error = decode_revert(token.functions.reentryResult().call(), htlc.htlc.abi)
    assert reentry_error.name == "ReentrancyGuardReentrantCall"
    assert changed(before, bal.read()) == {"seller": AMOUNT, "htlc": -AMOUNT}
    assert decode_receipt(receipt, htlc.address, chain.chain_id) == [
        LockClaimed(lock_id, secret)]
    assert htlc.status(lock_id) == Status.CLAIMED


def test_reentrant_refund_of_another_lock_during_a_claim_fails(
        devnet: Devnet, buyer: LocalAccount, seller: LocalAccount,
        relayer: LocalAccount) -> None:
    chain = devnet.payment
    rig = deploy_rig(devnet, "ReentrantToken", [buyer])
    token, htlc = rig.token, rig.htlc
    secret = new_secret()
    timelock = chain.next_block_timestamp() + HOUR
    expired, expired_id = do_lock(htlc, buyer, seller.address, amount=100,
                                  hashlock=secrets.token_bytes(32), timelock=timelock)
    lock, lock_id = do_lock(htlc, buyer, seller.address, amount=200,
                            hashlock=hashlock_of(secret), timelock=timelock + HOUR)
    reentry = as_bytes(htlc.htlc.encode_abi("refundMany", [[expired.as_tuple()]]))
    assert chain.client.transact(chain.accounts[0], to=token.address, gas=300_000,
                                 data=token.encode_abi("arm", [htlc.address, reentry])).succeeded
    at(chain, timelock)
    bal = balances(devnet, token, htlc.address)
    before = bal.read()

    receipt = chain.client.transact(relayer, to=htlc.address, gas=500_000,
                                    data=htlc.htlc.encode_abi("claim", [lock.as_tuple(), secret]))

    assert receipt.succeeded
    assert token.functions.reentrySucceeded().call() is False
    reentry_error = decode_revert(token.functions.reentryResult().call(), htlc.htlc.abi)
    assert reentry_error.name == "ReentrancyGuardReentrantCall"
    assert changed(before, bal.read()) == {"seller": 200, "htlc": -200}
    assert htlc.status(lock_id) == Status.CLAIMED
    assert htlc.status(expired_id) == Status.OPEN
    assert htlc.refund(relayer, expired).succeeded  # the guard was released after the claim


def test_nested_lock_during_lock_reverts_the_outer_lock(
        devnet: Devnet, buyer: LocalAccount, seller: LocalAccount) -> None:
    chain = devnet.payment
    rig = deploy_rig(devnet, "ReentrantToken", [buyer])
    token, htlc = rig.token, rig.htlc
    deployer = chain.accounts[0]
    # The token itself holds funds and has approved the HTLC: its nested lock would succeed.
    for data in (token.encode_abi("mint", [token.address, 5_000]),
                 token.encode_abi("approveFromSelf", [htlc.address, MAX_UINT256])):
        assert chain.client.transact(deployer, to=token.address, gas=100_000,
                                     data=data).succeeded
    timelock = chain.next_block_timestamp() + HOUR
    nested = PaymentLock(token.address, seller.address, 5_000, hashlock_of(new_secret()),
                         timelock)
    reentry = as_bytes(htlc.htlc.encode_abi("lock", list(nested.as_tuple()[1:])))
    assert chain.client.transact(deployer, to=token.address, gas=300_000,
                                 data=token.encode_abi("arm", [htlc.address, reentry])).succeeded
    outer = PaymentLock(buyer.address, seller.address, 1_000, hashlock_of(new_secret()),
                        timelock)
    bal = balances(devnet, token, htlc.address, token_itself=token.address)
    before = bal.read()

    err = expect_revert(chain.client, buyer, htlc.htlc, "lock", list(outer.as_tuple()[1:]),
                        "TransferAmountMismatch")

    # The nested lock's 5,000 arrived in the middle of the outer transfer: no double credit.
    assert err.values == (1_000, 6_000)
    assert bal.read() == before
    assert htlc.status(htlc.lock_id(outer)) == Status.NONE
    assert htlc.status(htlc.lock_id(nested)) == Status.NONE
    assert token.functions.attempted().call() is False  # rolled back with the outer lock


# --------------------------------------------------------------------------------------------
# batches


def _three_locks(devnet: Devnet, sender: LocalAccount, timelock: int,
                 amounts: tuple[int, ...] = (100, 200, 300)
                 ) -> tuple[list[PaymentLock], list[bytes], list[bytes]]:
    htlc = devnet.payment_htlc
    beneficiaries = [devnet.info.seller, devnet.info.relayer, devnet.info.seller]
    locks, ids, secrets_ = [], [], []
    for amount, beneficiary in zip(amounts, beneficiaries, strict=True):
        secret = new_secret()
        lock, lock_id = do_lock(htlc, sender, beneficiary, amount=amount,
                                hashlock=hashlock_of(secret), timelock=timelock)
        locks.append(lock)
        ids.append(lock_id)
        secrets_.append(secret)
    return locks, ids, secrets_


def test_claim_many_claims_every_valid_entry(devnet: Devnet, approved_buyer: LocalAccount,
                                             relayer: LocalAccount) -> None:
    chain, htlc = devnet.payment, devnet.payment_htlc
    locks, ids, preimages = _three_locks(devnet, approved_buyer,
                                         chain.next_block_timestamp() + HOUR)
    bal = balances(devnet)
    before = bal.read()
    tuples = [lk.as_tuple() for lk in locks]
    assert chain.client.call(htlc.htlc, "claimMany", tuples, preimages,
                             sender=relayer.address, block="pending") == 3

    receipt = htlc.claim_many(relayer, locks, preimages)

    assert receipt.succeeded
    assert decode_receipt(receipt, htlc.address, chain.chain_id) == [
        LockClaimed(i, s) for i, s in zip(ids, preimages, strict=True)]
    assert changed(before, bal.read()) == {"seller": 400, "relayer": 200, "htlc": -600}
    assert [htlc.status(i) for i in ids] == [Status.CLAIMED] * 3


@pytest.mark.parametrize(
    "bad", ["wrong_preimage", "already_claimed", "expired", "unknown_lock", "duplicate"])
def test_claim_many_skips_a_bad_entry_and_claims_the_others(
        devnet: Devnet, approved_buyer: LocalAccount, relayer: LocalAccount, bad: str) -> None:
    chain, htlc = devnet.payment, devnet.payment_htlc
    now = chain.next_block_timestamp()
    locks, ids, preimages = _three_locks(devnet, approved_buyer, now + 2 * HOUR)
    middle_status = Status.OPEN
    match bad:
        case "wrong_preimage":
            preimages[1] = preimages[0]  # a real preimage, of another lock
        case "already_claimed":
            assert htlc.claim(devnet.payment.accounts[7], locks[1], preimages[1]).succeeded
            middle_status = Status.CLAIMED
        case "expired":
            secret = new_secret()
            locks[1], ids[1] = do_lock(htlc, approved_buyer, relayer.address, amount=200,
                                       hashlock=hashlock_of(secret), timelock=now + HOUR)
            preimages[1] = secret
            at(chain, now + HOUR)
        case "unknown_lock":
            locks[1] = replace(locks[1], amount=locks[1].amount + 1)
            ids[1] = htlc.lock_id(locks[1])
            middle_status = Status.NONE
        case "duplicate":
            locks[1], preimages[1], ids[1] = locks[0], preimages[0], ids[0]
            middle_status = Status.CLAIMED  # by the first entry
    bal = balances(devnet)
    before = bal.read()
    tuples = [lk.as_tuple() for lk in locks]
    assert chain.client.call(htlc.htlc, "claimMany", tuples, preimages,
                             sender=relayer.address, block="pending") == 2

    receipt = htlc.claim_many(relayer, locks, preimages)

    assert receipt.succeeded
    assert decode_receipt(receipt, htlc.address, chain.chain_id) == [
        LockClaimed(ids[0], preimages[0]), LockClaimed(ids[2], preimages[2])]
    assert changed(before, bal.read()) == {"seller": 400, "htlc": -400}
    assert htlc.status(ids[0]) == htlc.status(ids[2]) == Status.CLAIMED
    assert htlc.status(ids[1]) == middle_status


def test_claim_many_with_mismatched_lengths_reverts(devnet: Devnet,
                                                    approved_buyer: LocalAccount,
                                                    relayer: LocalAccount) -> None:
    chain, htlc = devnet.payment, devnet.payment_htlc
    locks, ids, preimages = _three_locks(devnet, approved_buyer,
                                         chain.next_block_timestamp() + HOUR)
    before = balances(devnet).read()
    tuples = [lk.as_tuple() for lk in locks]
    for args in ([tuples, preimages[:2]], [tuples[:2], preimages], [[], preimages[:1]]):
        expect_revert(chain.client, relayer, htlc.htlc, "claimMany", args, "LengthMismatch")
    assert balances(devnet).read() == before
    assert [htlc.status(i) for i in ids] == [Status.OPEN] * 3
    # An empty batch is a no-op that claims nothing.
    assert chain.client.call(htlc.htlc, "claimMany", [], [], sender=relayer.address) == 0


def test_refund_many_refunds_expired_entries_and_skips_the_rest(
        devnet: Devnet, approved_buyer: LocalAccount, relayer: LocalAccount) -> None:
    chain, htlc = devnet.payment, devnet.payment_htlc
    now = chain.next_block_timestamp()
    expiring, expiring_ids, preimages = _three_locks(devnet, approved_buyer, now + HOUR,
                                                     amounts=(100, 200, 400))
    later, later_id = do_lock(htlc, approved_buyer, relayer.address, amount=800,
                              hashlock=secrets.token_bytes(32), timelock=now + HOUR + 1)
    assert htlc.claim(relayer, expiring[1], preimages[1]).succeeded  # exited before the batch
    unknown = replace(expiring[0], amount=1)
    batch = [expiring[0], later, expiring[1], unknown, expiring[2]]
    at(chain, now + HOUR)
    bal = balances(devnet)
    before = bal.read()
    assert chain.client.call(htlc.htlc, "refundMany", [lk.as_tuple() for lk in batch],
                             sender=relayer.address, block="pending") == 2

    receipt = htlc.refund_many(relayer, batch)

    assert receipt.succeeded
    assert decode_receipt(receipt, htlc.address, chain.chain_id) == [
        LockRefunded(expiring_ids[0]), LockRefunded(expiring_ids[2])]
    assert changed(before, bal.read()) == {"buyer": 500, "htlc": -500}
    assert [htlc.status(i) for i in expiring_ids] == [
        Status.REFUNDED, Status.CLAIMED, Status.REFUNDED]
    assert htlc.status(later_id) == Status.OPEN
    assert htlc.status(htlc.lock_id(unknown)) == Status.NONE
    # One second later the remaining lock is refundable too.
    assert htlc.refund_many(relayer, batch).succeeded
    assert htlc.status(later_id) == Status.REFUNDED
    assert changed(before, bal.read()) == {"buyer": 1_300, "htlc": -1_300}


# --------------------------------------------------------------------------------------------
# the lock-id domain: chain id and contract address


def test_same_parameters_at_the_same_address_on_another_chain_give_another_id(
        devnet: Devnet, approved_buyer: LocalAccount, seller: LocalAccount,
        relayer: LocalAccount) -> None:
    pay = devnet.payment
    # A third chain where the same deployer, at the same nonces, puts the token and the HTLC at
    # the very addresses they have on the payment chain: only the chain id differs.
    mirror = InProcessChain("mirror", 71_003)
    deployer = mirror.accounts[0]
    token = mirror.client.deploy(deployer, load_artifact("PaymentToken"), "Mirror", "MIR",
                                 deployer.address)
    raw_htlc = mirror.client.deploy(deployer, load_artifact("PaymentHTLC"), token.address)
    assert (token.address, raw_htlc.address) == (devnet.payment_token.address,
                                                 devnet.payment_htlc.address)
    mirror_htlc = PaymentHTLCProxy(mirror.client, raw_htlc)
    mirror_buyer = mirror.accounts[1]
    assert mirror_buyer.address == approved_buyer.address
    assert mirror.client.transact(deployer, to=token.address, gas=100_000, data=token.encode_abi(
        "mint", [mirror_buyer.address, AMOUNT])).succeeded
    approve(mirror.client, mirror_buyer, token, raw_htlc.address)

    secret = new_secret()
    timelock = max(pay.next_block_timestamp(), mirror.next_block_timestamp()) + HOUR
    args = dict(amount=AMOUNT, hashlock=hashlock_of(secret), timelock=timelock)
    lock, pay_id = do_lock(devnet.payment_htlc, approved_buyer, seller.address, **args)
    mirror_lock, mirror_id = do_lock(mirror_htlc, mirror_buyer, seller.address, **args)

    assert lock == mirror_lock
    assert pay_id != mirror_id
    assert pay_id == payment_lock_id(pay.chain_id, devnet.payment_htlc.address, lock)
    assert mirror_id == payment_lock_id(71_003, devnet.payment_htlc.address, lock)
    assert raw_htlc.functions.lockIdOf(lock.as_tuple()).call() == mirror_id
    assert devnet.payment_htlc.htlc.functions.lockIdOf(lock.as_tuple()).call() == pay_id
    assert devnet.payment_htlc.status(mirror_id) == Status.NONE
    assert mirror_htlc.status(pay_id) == Status.NONE

    # Each lock lives on its own chain only: claiming one leaves the other open.
    assert devnet.payment_htlc.claim(relayer, lock, secret).succeeded
    assert devnet.payment_htlc.status(pay_id) == Status.CLAIMED
    assert mirror_htlc.status(mirror_id) == Status.OPEN
    assert balance_of(token, raw_htlc.address) == AMOUNT


def test_a_claim_cannot_be_replayed_against_another_deployment(
        devnet: Devnet, approved_buyer: LocalAccount, seller: LocalAccount,
        relayer: LocalAccount) -> None:
    chain, htlc, token = devnet.payment, devnet.payment_htlc, devnet.payment_token
    other = PaymentHTLCProxy(chain.client, chain.client.deploy(
        chain.accounts[0], load_artifact("PaymentHTLC"), token.address))
    # The other deployment holds somebody else's funds, same token.
    holder = chain.accounts[6]
    approve(chain.client, holder, token, other.address)
    other_lock, other_id = do_lock(other, holder, seller.address, amount=AMOUNT, chain=chain)

    secret = new_secret()
    lock, lock_id = do_lock(htlc, approved_buyer, seller.address, hashlock=hashlock_of(secret),
                            chain=chain)
    assert htlc.claim(relayer, lock, secret).succeeded
    bal = balances(devnet, other=other.address)
    before = bal.read()

    # The very same calldata, sent to the other deployment, names a lock that does not exist.
    replay_id = other.lock_id(lock)
    assert replay_id != lock_id
    err = expect_revert(chain.client, relayer, other.htlc, "claim", [lock.as_tuple(), secret],
                        "LockNotOpen")
    assert err.values == (replay_id, Status.NONE)
    # ... and replayed against the original it finds the lock already claimed.
    err = expect_revert(chain.client, relayer, htlc.htlc, "claim", [lock.as_tuple(), secret],
                        "LockNotOpen")
    assert err.values == (lock_id, Status.CLAIMED)

    assert bal.read() == before
    assert balance_of(token, other.address) == AMOUNT
    assert other.status(other_id) == Status.OPEN
    assert other.status(lock_id) == Status.NONE


def test_lock_id_is_keccak_of_chain_id_contract_and_parameters(devnet: Devnet) -> None:
    htlc = devnet.payment_htlc
    lock = PaymentLock(devnet.info.buyer, devnet.info.seller, 12_345,
                       hashlib.sha256(b"x").digest(), 2**64 - 1)
    assert htlc.htlc.functions.lockIdOf(lock.as_tuple()).call() == htlc.lock_id(lock)
    # Every field takes part in the id.
    variants = {replace(lock, sender=devnet.info.relayer), replace(lock, beneficiary=ZERO_ADDRESS),
                replace(lock, amount=12_346), replace(lock, hashlock=ZERO_BYTES32),
                replace(lock, timelock=0)}
    ids = {htlc.htlc.functions.lockIdOf(v.as_tuple()).call() for v in variants}
    assert len(ids) == len(variants) and htlc.lock_id(lock) not in ids
