"""DeliveryHTLC (and TitleDocument) contract tests on the in-process business chain.

Every test checks where the title is afterwards (ownerOf), the lock's status and the decoded
events, not only whether a call reverted. Reverts are asserted by `expect_revert`: simulated
against the pending block and mined (status 0). Time boundaries are exact.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, replace

import pytest
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address

from gateway.chain.client import Receipt, RevertError
from gateway.chain.devnet import Devnet
from gateway.chain.htlc import DeliveryHTLCProxy, decode_receipt, delivery_lock_id
from gateway.contracts import load_artifact
from gateway.domain.locks import (
    DeliveryLock,
    DeliveryLocked,
    LockClaimed,
    LockRefunded,
    hashlock_of,
    new_secret,
)
from tests.helpers import Status, at, expect_revert, mined_at, values, with_errors

HOUR = 3600
MAX_LOCK_DURATION = 30 * 24 * HOUR
ZERO_ADDRESS = "0x" + "00" * 20
ZERO_BYTES32 = b"\x00" * 32
TOPIC_DOCUMENT_ISSUED = keccak(text="DocumentIssued(uint256,bytes32,address)")


# --------------------------------------------------------------------------------------------
# helpers


def doc_hash(label: str) -> bytes:
    return hashlib.sha256(f"bill of lading bundle {label}".encode()).digest()


def issue(devnet: Devnet, holder: str, document_hash: bytes) -> tuple[int, Receipt]:
    chain, titles = devnet.business, devnet.titles
    receipt = chain.client.transact(chain.accounts[0], to=titles.address, gas=300_000,
                                    data=titles.encode_abi("issue", [holder, document_hash]))
    assert receipt.succeeded
    return titles.functions.issuedCount().call(), receipt


def approve_title(devnet: Devnet, owner: LocalAccount, token_id: int,
                  mode: str = "approve") -> None:
    titles, spender = devnet.titles, devnet.delivery_htlc.address
    data = (titles.encode_abi("approve", [spender, token_id]) if mode == "approve"
            else titles.encode_abi("setApprovalForAll", [spender, True]))
    assert devnet.business.client.transact(owner, to=titles.address, gas=100_000,
                                           data=data).succeeded


def owner_of(devnet: Devnet, token_id: int) -> str:
    return devnet.titles.functions.ownerOf(token_id).call()


@dataclass(frozen=True)
class Title:
    token_id: int
    document_hash: bytes


def new_title(devnet: Devnet, holder: LocalAccount, label: str = "A",
              mode: str = "approve") -> Title:
    """A title issued to `holder`, who approves the DeliveryHTLC for it."""
    document_hash = doc_hash(label)
    token_id, _ = issue(devnet, holder.address, document_hash)
    approve_title(devnet, holder, token_id, mode)
    return Title(token_id, document_hash)


def do_lock(devnet: Devnet, seller: LocalAccount, buyer: str, title: Title, *,
            hashlock: bytes | None = None, timelock: int | None = None,
            trade_id: bytes | None = None) -> tuple[DeliveryLock, bytes]:
    chain, htlc = devnet.business, devnet.delivery_htlc
    hashlock = hashlock if hashlock is not None else hashlock_of(new_secret())
    timelock = timelock if timelock is not None else chain.next_block_timestamp() + HOUR
    trade_id = trade_id if trade_id is not None else secrets.token_bytes(32)
    receipt, lock = htlc.lock(seller, buyer, title.token_id, title.document_hash, trade_id,
                              hashlock, timelock)
    assert receipt.succeeded
    lock_id = htlc.lock_id(lock)
    assert decode_receipt(receipt, htlc.address, chain.chain_id) == [
        DeliveryLocked(lock_id, lock)]
    assert htlc.status(lock_id) == Status.OPEN
    assert owner_of(devnet, title.token_id) == htlc.address
    return lock, lock_id


@pytest.fixture
def title(devnet: Devnet, seller: LocalAccount) -> Title:
    return new_title(devnet, seller)


# --------------------------------------------------------------------------------------------
# TitleDocument


def test_issue_binds_each_token_to_its_document_hash(devnet: Devnet, seller: LocalAccount,
                                                     buyer: LocalAccount) -> None:
    titles = devnet.titles
    assert titles.functions.issuer().call() == devnet.business.accounts[0].address
    assert titles.functions.issuedCount().call() == 0
    issued = []
    for holder, label in ((seller, "first"), (buyer, "second"), (seller, "third")):
        token_id, receipt = issue(devnet, holder.address, doc_hash(label))
        issued.append((token_id, holder.address, doc_hash(label)))
        (log,) = [lg for lg in receipt.logs if lg.topics[0] == TOPIC_DOCUMENT_ISSUED]
        assert log.topics[1:] == (token_id.to_bytes(32, "big"), doc_hash(label),
                                  bytes(12) + bytes.fromhex(holder.address[2:]))
    assert [t for t, _, _ in issued] == [1, 2, 3]  # ids start at 1
    for token_id, holder, document_hash in issued:
        assert titles.functions.documentHash(token_id).call() == document_hash
        assert titles.functions.ownerOf(token_id).call() == holder
    assert titles.functions.balanceOf(seller.address).call() == 2
    assert titles.functions.issuedCount().call() == 3


def test_only_the_issuer_issues(devnet: Devnet, relayer: LocalAccount) -> None:
    chain, titles = devnet.business, devnet.titles
    err = expect_revert(chain.client, relayer, titles, "issue",
                        [relayer.address, doc_hash("forged")], "NotIssuer")
    assert values(err) == (relayer.address,)
    assert titles.functions.issuedCount().call() == 0
    assert titles.functions.balanceOf(relayer.address).call() == 0


def test_zero_document_hash_is_refused(devnet: Devnet, seller: LocalAccount) -> None:
    chain, titles = devnet.business, devnet.titles
    expect_revert(chain.client, chain.accounts[0], titles, "issue",
                  [seller.address, ZERO_BYTES32], "ZeroDocumentHash")
    assert titles.functions.issuedCount().call() == 0
    assert titles.functions.balanceOf(seller.address).call() == 0


@pytest.mark.parametrize("token_id", [0, 2, 2**256 - 1])
def test_document_hash_of_a_never_issued_token_reverts(devnet: Devnet, seller: LocalAccount,
                                                       token_id: int) -> None:
    issue(devnet, seller.address, doc_hash("only"))  # token 1 exists
    with pytest.raises(RevertError) as info:
        devnet.business.client.call(devnet.titles, "documentHash", token_id)
    assert (info.value.name, info.value.values) == ("ERC721NonexistentToken", (token_id,))


def test_the_issuer_has_no_power_over_issued_titles(devnet: Devnet, seller: LocalAccount,
                                                    title: Title) -> None:
    chain, titles = devnet.business, devnet.titles
    issuer = chain.accounts[0]
    err = expect_revert(chain.client, issuer, titles, "transferFrom",
                        [seller.address, issuer.address, title.token_id],
                        "ERC721InsufficientApproval")
    assert values(err) == (issuer.address, title.token_id)
    assert owner_of(devnet, title.token_id) == seller.address


# --------------------------------------------------------------------------------------------
# constructor and constants


def test_constants_and_constructor(devnet: Devnet) -> None:
    htlc = devnet.delivery_htlc.htlc
    assert htlc.functions.MAX_LOCK_DURATION().call() == MAX_LOCK_DURATION
    assert htlc.functions.titles().call() == devnet.titles.address
    with pytest.raises(RuntimeError, match="deploying DeliveryHTLC"):
        devnet.business.client.deploy(devnet.business.accounts[0],
                                      load_artifact("DeliveryHTLC"), ZERO_ADDRESS)


# --------------------------------------------------------------------------------------------
# lock


@pytest.mark.parametrize("mode", ["approve", "approval_for_all"])
def test_lock_moves_the_title_and_emits_the_trade(devnet: Devnet, seller: LocalAccount,
                                                  buyer: LocalAccount, mode: str) -> None:
    chain, htlc, titles = devnet.business, devnet.delivery_htlc, devnet.titles
    title = new_title(devnet, seller, mode=mode)
    trade_id, hashlock = secrets.token_bytes(32), hashlock_of(new_secret())
    timelock = chain.next_block_timestamp() + 2 * HOUR
    args = [buyer.address, title.token_id, title.document_hash, trade_id, hashlock, timelock]
    simulated_id = chain.client.call(htlc.htlc, "lock", *args, sender=seller.address,
                                     block="pending")

    receipt, lock = htlc.lock(seller, *args)

    assert receipt.succeeded
    assert owner_of(devnet, title.token_id) == htlc.address
    assert titles.functions.balanceOf(seller.address).call() == 0
    assert lock == DeliveryLock(seller.address, buyer.address, title.token_id,
                                title.document_hash, trade_id, hashlock, timelock)
    events = decode_receipt(receipt, htlc.address, chain.chain_id)
    assert len(events) == 1 and isinstance(events[0], DeliveryLocked)
    locked = events[0]
    assert locked.lock == lock  # tradeId, documentHash, hashlock, seller, buyer, ...
    on_chain_id = htlc.htlc.functions.lockIdOf(lock.as_tuple()).call()
    assert locked.lock_id == on_chain_id == htlc.lock_id(lock) == simulated_id
    assert htlc.status(on_chain_id) == Status.OPEN
    (log,) = [lg for lg in receipt.logs if lg.address == htlc.address]
    assert log.topics[1:] == (on_chain_id, hashlock, trade_id)  # indexed: id, hashlock, trade


def test_lock_with_a_document_hash_mismatch_reverts(devnet: Devnet, seller: LocalAccount,
                                                    buyer: LocalAccount, title: Title) -> None:
    chain, htlc = devnet.business, devnet.delivery_htlc
    claimed_hash = doc_hash("a different bundle")
    err = expect_revert(chain.client, seller, htlc.htlc, "lock",
                        [buyer.address, title.token_id, claimed_hash, secrets.token_bytes(32),
                         hashlock_of(new_secret()), chain.next_block_timestamp() + HOUR],
                        "DocumentMismatch")
    assert err.values == (title.token_id, claimed_hash, title.document_hash)
    assert owner_of(devnet, title.token_id) == seller.address


@pytest.mark.parametrize("token_id", [0, 2, 999])
def test_lock_of_an_unknown_token_reverts(devnet: Devnet, seller: LocalAccount,
                                          buyer: LocalAccount, title: Title,
                                          token_id: int) -> None:
    chain, htlc = devnet.business, devnet.delivery_htlc
    err = expect_revert(chain.client, seller, with_errors(chain.client, htlc.htlc, devnet.titles),
                        "lock", [buyer.address, token_id, title.document_hash,
                                 secrets.token_bytes(32), hashlock_of(new_secret()),
                                 chain.next_block_timestamp() + HOUR],
                        "ERC721NonexistentToken")
    assert err.values == (token_id,)
    assert owner_of(devnet, title.token_id) == seller.address


def test_lock_without_approval_reverts(devnet: Devnet, seller: LocalAccount,
                                       buyer: LocalAccount) -> None:
    chain, htlc = devnet.business, devnet.delivery_htlc
    token_id, _ = issue(devnet, seller.address, doc_hash("unapproved"))
    trade_id, hashlock = secrets.token_bytes(32), hashlock_of(new_secret())
    timelock = chain.next_block_timestamp() + HOUR
    err = expect_revert(chain.client, seller, with_errors(chain.client, htlc.htlc, devnet.titles),
                        "lock", [buyer.address, token_id, doc_hash("unapproved"), trade_id,
                                 hashlock, timelock], "ERC721InsufficientApproval")
    assert values(err) == (htlc.address, token_id)
    assert owner_of(devnet, token_id) == seller.address
    lock = DeliveryLock(seller.address, buyer.address, token_id, doc_hash("unapproved"),
                        trade_id, hashlock, timelock)
    assert htlc.status(htlc.lock_id(lock)) == Status.NONE


@pytest.mark.parametrize("mode", ["approve", "approval_for_all"])
def test_nobody_but_the_owner_can_lock_an_approved_title(
        devnet: Devnet, seller: LocalAccount, relayer: LocalAccount, mode: str) -> None:
    """The seller's approval of the HTLC must not let anyone else lock the seller's title."""
    chain, htlc = devnet.business, devnet.delivery_htlc
    title = new_title(devnet, seller, mode=mode)
    trade_id, hashlock = secrets.token_bytes(32), hashlock_of(new_secret())
    timelock = chain.next_block_timestamp() + HOUR
    err = expect_revert(chain.client, relayer, with_errors(chain.client, htlc.htlc, devnet.titles),
                        "lock", [relayer.address, title.token_id, title.document_hash, trade_id,
                                 hashlock, timelock], "ERC721IncorrectOwner")
    assert values(err) == (relayer.address, title.token_id, seller.address)
    assert owner_of(devnet, title.token_id) == seller.address
    lock = DeliveryLock(relayer.address, relayer.address, title.token_id, title.document_hash,
                        trade_id, hashlock, timelock)
    assert htlc.status(htlc.lock_id(lock)) == Status.NONE


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("zero_buyer", "ZeroAddress"),
        ("zero_hashlock", "ZeroHashlock"),
        ("timelock_now", "TimelockNotInFuture"),
        ("timelock_past", "TimelockNotInFuture"),
        ("timelock_just_too_far", "TimelockTooFar"),
        ("timelock_uint64_max", "TimelockTooFar"),
    ],
)
def test_lock_rejects_invalid_arguments(devnet: Devnet, seller: LocalAccount,
                                        buyer: LocalAccount, title: Title, case: str,
                                        error: str) -> None:
    chain, htlc = devnet.business, devnet.delivery_htlc
    now = chain.next_block_timestamp()
    args = {"buyer": buyer.address, "token_id": title.token_id,
            "document_hash": title.document_hash, "trade_id": secrets.token_bytes(32),
            "hashlock": hashlock_of(new_secret()), "timelock": now + HOUR}
    match case:
        case "zero_buyer":
            args["buyer"] = ZERO_ADDRESS
        case "zero_hashlock":
            args["hashlock"] = ZERO_BYTES32
        case "timelock_now":
            args["timelock"] = now
        case "timelock_past":
            args["timelock"] = now - 1
        case "timelock_just_too_far":
            args["timelock"] = now + MAX_LOCK_DURATION + 1
        case "timelock_uint64_max":
            args["timelock"] = 2**64 - 1

    err = expect_revert(chain.client, seller, htlc.htlc, "lock", list(args.values()), error)

    if error == "TimelockNotInFuture":
        assert err.values == (args["timelock"], now)
    elif error == "TimelockTooFar":
        assert err.values == (args["timelock"], now + MAX_LOCK_DURATION)
    else:
        assert err.values == ()
    assert chain.next_block_timestamp() == now + 1  # the reverted tx was mined at `now`
    assert owner_of(devnet, title.token_id) == seller.address
    lock = DeliveryLock(seller.address, to_checksum_address(args["buyer"]), *list(
        args.values())[1:])
    assert htlc.status(htlc.lock_id(lock)) == Status.NONE


@pytest.mark.parametrize("duration", [1, MAX_LOCK_DURATION], ids=["next_second", "max"])
def test_lock_timelock_bounds_are_inclusive(devnet: Devnet, seller: LocalAccount,
                                            buyer: LocalAccount, title: Title,
                                            duration: int) -> None:
    chain = devnet.business
    now = chain.next_block_timestamp()
    do_lock(devnet, seller, buyer.address, title, timelock=now + duration)
    assert chain.next_block_timestamp() == now + 1  # the lock was mined at `now`


@pytest.mark.parametrize("when", ["while_open", "after_claim"])
def test_identical_lock_twice_reverts_lock_exists(devnet: Devnet, seller: LocalAccount,
                                                  buyer: LocalAccount, relayer: LocalAccount,
                                                  title: Title, when: str) -> None:
    """(After a refund the identical lock is refused earlier: its timelock has passed.)"""
    chain, htlc = devnet.business, devnet.delivery_htlc
    secret = new_secret()
    lock, lock_id = do_lock(devnet, seller, buyer.address, title, hashlock=hashlock_of(secret))
    expected_owner, status = htlc.address, Status.OPEN
    if when == "after_claim":
        assert htlc.claim(relayer, lock, secret).succeeded
        expected_owner, status = buyer.address, Status.CLAIMED

    err = expect_revert(chain.client, seller, htlc.htlc, "lock", list(lock.as_tuple()[1:]),
                        "LockExists")

    assert err.values == (lock_id,)
    assert owner_of(devnet, title.token_id) == expected_owner
    assert htlc.status(lock_id) == status


# --------------------------------------------------------------------------------------------
# claim


@pytest.mark.parametrize("claimer", ["buyer", "relayer", "seller"])
def test_claim_gives_the_title_to_the_buyer_and_publishes_the_preimage(
        devnet: Devnet, seller: LocalAccount, buyer: LocalAccount, relayer: LocalAccount,
        title: Title, claimer: str) -> None:
    chain, htlc = devnet.business, devnet.delivery_htlc
    secret = new_secret()
    lock, lock_id = do_lock(devnet, seller, buyer.address, title, hashlock=hashlock_of(secret))
    caller = {"buyer": buyer, "relayer": relayer, "seller": seller}[claimer]

    receipt = htlc.claim(caller, lock, secret)

    assert receipt.succeeded
    assert owner_of(devnet, title.token_id) == buyer.address
    assert devnet.titles.functions.balanceOf(caller.address).call() == (
        1 if caller is buyer else 0)
    assert htlc.status(lock_id) == Status.CLAIMED
    (claimed,) = decode_receipt(receipt, htlc.address, chain.chain_id)
    assert claimed == LockClaimed(lock_id, secret)
    assert hashlib.sha256(claimed.preimage).digest() == lock.hashlock == claimed.hashlock


def test_claim_one_second_before_the_timelock_succeeds_and_at_it_fails(
        devnet: Devnet, seller: LocalAccount, buyer: LocalAccount) -> None:
    chain, htlc = devnet.business, devnet.delivery_htlc
    early_title, late_title = new_title(devnet, seller, "early"), new_title(devnet, seller, "late")
    secret, trade_id = new_secret(), secrets.token_bytes(32)
    timelock = chain.next_block_timestamp() + HOUR
    early, early_id = do_lock(devnet, seller, buyer.address, early_title,
                              hashlock=hashlock_of(secret), timelock=timelock, trade_id=trade_id)
    late, late_id = do_lock(devnet, seller, buyer.address, late_title,
                            hashlock=hashlock_of(secret), timelock=timelock, trade_id=trade_id)

    at(chain, timelock - 1)
    receipt = htlc.claim(buyer, early, secret)
    assert receipt.succeeded and mined_at(chain, receipt) == timelock - 1
    assert chain.next_block_timestamp() == timelock
    err = expect_revert(chain.client, buyer, htlc.htlc, "claim", [late.as_tuple(), secret],
                        "LockExpired")

    assert err.values == (late_id, timelock)
    assert chain.next_block_timestamp() == timelock + 1
    assert owner_of(devnet, early_title.token_id) == buyer.address
    assert owner_of(devnet, late_title.token_id) == htlc.address
    assert (htlc.status(early_id), htlc.status(late_id)) == (Status.CLAIMED, Status.OPEN)


def test_preimage_of_any_length_but_32_is_rejected(devnet: Devnet, seller: LocalAccount,
                                                   buyer: LocalAccount, title: Title) -> None:
    chain, htlc = devnet.business, devnet.delivery_htlc
    secret = new_secret()
    lock, lock_id = do_lock(devnet, seller, buyer.address, title, hashlock=hashlock_of(secret))

    def preimage(n: int) -> bytes:  # starts with the real secret when n >= 32
        return (secret * (n // 32 + 1))[:n]

    for n in [*range(0, 32), *range(33, 97), 128, 1024]:
        with pytest.raises(RevertError) as info:
            chain.client.call(htlc.htlc, "claim", lock.as_tuple(), preimage(n),
                              sender=buyer.address, block="pending")
        assert (info.value.name, info.value.values) == ("InvalidPreimageLength", (n,))
    for n in (0, 31, 33, 64):
        err = expect_revert(chain.client, buyer, htlc.htlc, "claim",
                            [lock.as_tuple(), preimage(n)], "InvalidPreimageLength")
        assert err.values == (n,)
    assert owner_of(devnet, title.token_id) == htlc.address
    assert htlc.status(lock_id) == Status.OPEN
    assert htlc.claim(buyer, lock, secret).succeeded
    assert owner_of(devnet, title.token_id) == buyer.address


def test_claim_with_a_wrong_preimage_reverts_hashlock_mismatch(
        devnet: Devnet, seller: LocalAccount, buyer: LocalAccount, title: Title) -> None:
    chain, htlc = devnet.business, devnet.delivery_htlc
    secret = new_secret()
    lock, lock_id = do_lock(devnet, seller, buyer.address, title, hashlock=hashlock_of(secret))
    for wrong in (new_secret(), lock.hashlock):
        err = expect_revert(chain.client, buyer, htlc.htlc, "claim", [lock.as_tuple(), wrong],
                            "HashlockMismatch")
        assert err.values == (lock_id,)
    assert owner_of(devnet, title.token_id) == htlc.address
    assert htlc.status(lock_id) == Status.OPEN


TAMPERINGS = {
    "seller": lambda lk, other: replace(lk, seller=other),
    "buyer": lambda lk, other: replace(lk, buyer=other),
    "token_id": lambda lk, other: replace(lk, token_id=lk.token_id + 1),
    "document_hash": lambda lk, other: replace(lk, document_hash=doc_hash("other")),
    "trade_id": lambda lk, other: replace(lk, trade_id=bytes(32)),
    "hashlock": lambda lk, other: replace(lk, hashlock=hashlock_of(b"\x42" * 32)),
    "timelock": lambda lk, other: replace(lk, timelock=lk.timelock - HOUR // 2),
}


@pytest.mark.parametrize("field", TAMPERINGS)
def test_a_lock_with_tampered_parameters_cannot_be_claimed(
        devnet: Devnet, seller: LocalAccount, buyer: LocalAccount, relayer: LocalAccount,
        field: str) -> None:
    chain, htlc = devnet.business, devnet.delivery_htlc
    title = new_title(devnet, seller, "A")
    new_title(devnet, seller, "B")  # token_id + 1 exists too
    secret = new_secret()
    lock, lock_id = do_lock(devnet, seller, buyer.address, title, hashlock=hashlock_of(secret))
    tampered = TAMPERINGS[field](lock, relayer.address)
    preimage = b"\x42" * 32 if field == "hashlock" else secret
    tampered_id = htlc.lock_id(tampered)
    assert tampered_id != lock_id

    err = expect_revert(chain.client, relayer, htlc.htlc, "claim",
                        [tampered.as_tuple(), preimage], "LockNotOpen")

    assert err.values == (tampered_id, Status.NONE)
    assert owner_of(devnet, title.token_id) == htlc.address
    assert htlc.status(lock_id) == Status.OPEN


@pytest.mark.parametrize("field", ["seller", "timelock"])
def test_a_lock_with_tampered_parameters_cannot_be_refunded(
        devnet: Devnet, seller: LocalAccount, buyer: LocalAccount, relayer: LocalAccount,
        title: Title, field: str) -> None:
    chain, htlc = devnet.business, devnet.delivery_htlc
    lock, lock_id = do_lock(devnet, seller, buyer.address, title,
                            hashlock=secrets.token_bytes(32))
    tampered = TAMPERINGS[field](lock, relayer.address)
    at(chain, lock.timelock - 1)  # a copy claiming an earlier timelock would be "expired"

    err = expect_revert(chain.client, relayer, htlc.htlc, "refund", [tampered.as_tuple()],
                        "LockNotOpen")

    assert err.values == (htlc.lock_id(tampered), Status.NONE)
    assert owner_of(devnet, title.token_id) == htlc.address
    assert htlc.status(lock_id) == Status.OPEN


def test_unknown_lock_cannot_be_claimed_or_refunded(devnet: Devnet, seller: LocalAccount,
                                                     buyer: LocalAccount, title: Title) -> None:
    chain, htlc = devnet.business, devnet.delivery_htlc
    do_lock(devnet, seller, buyer.address, title)  # the HTLC holds the title of another lock
    secret = new_secret()
    ghost = DeliveryLock(seller.address, buyer.address, title.token_id, title.document_hash,
                         secrets.token_bytes(32), hashlock_of(secret),
                         chain.next_block_timestamp() + HOUR)
    ghost_id = htlc.lock_id(ghost)
    err = expect_revert(chain.client, buyer, htlc.htlc, "claim", [ghost.as_tuple(), secret],
                        "LockNotOpen")
    assert err.values == (ghost_id, Status.NONE)
    at(chain, ghost.timelock)
    err = expect_revert(chain.client, seller, htlc.htlc, "refund", [ghost.as_tuple()],
                        "LockNotOpen")
    assert err.values == (ghost_id, Status.NONE)
    assert owner_of(devnet, title.token_id) == htlc.address


# --------------------------------------------------------------------------------------------
# refund and exits


def test_refund_fails_one_second_before_the_timelock_and_returns_the_title_at_it(
        devnet: Devnet, seller: LocalAccount, buyer: LocalAccount, relayer: LocalAccount,
        title: Title) -> None:
    """No preimage exists anywhere: the hashlock is random bytes."""
    chain, htlc = devnet.business, devnet.delivery_htlc
    timelock = chain.next_block_timestamp() + HOUR
    lock, lock_id = do_lock(devnet, seller, buyer.address, title,
                            hashlock=secrets.token_bytes(32), timelock=timelock)

    at(chain, timelock - 1)
    err = expect_revert(chain.client, relayer, htlc.htlc, "refund", [lock.as_tuple()],
                        "LockNotExpired")
    assert err.values == (lock_id, timelock)
    assert owner_of(devnet, title.token_id) == htlc.address

    assert chain.next_block_timestamp() == timelock
    receipt = htlc.refund(relayer, lock)  # a third party refunds; the seller gets the title
    assert receipt.succeeded and mined_at(chain, receipt) == timelock
    assert owner_of(devnet, title.token_id) == seller.address
    assert htlc.status(lock_id) == Status.REFUNDED
    assert decode_receipt(receipt, htlc.address, chain.chain_id) == [LockRefunded(lock_id)]


@pytest.mark.parametrize(
    ("first", "second", "status"),
    [
        ("claim", "claim", Status.CLAIMED),
        ("claim", "refund", Status.CLAIMED),
        ("refund", "claim", Status.REFUNDED),
        ("refund", "refund", Status.REFUNDED),
    ],
)
def test_a_lock_has_exactly_one_exit(devnet: Devnet, seller: LocalAccount, buyer: LocalAccount,
                                     relayer: LocalAccount, title: Title, first: str,
                                     second: str, status: Status) -> None:
    chain, htlc = devnet.business, devnet.delivery_htlc
    secret = new_secret()
    lock, lock_id = do_lock(devnet, seller, buyer.address, title, hashlock=hashlock_of(secret))
    if first == "claim":
        assert htlc.claim(buyer, lock, secret).succeeded
        holder = buyer.address
    else:
        at(chain, lock.timelock)
        assert htlc.refund(relayer, lock).succeeded
        holder = seller.address
    if second == "refund":
        at(chain, max(lock.timelock, chain.next_block_timestamp()))
    args = [lock.as_tuple(), secret] if second == "claim" else [lock.as_tuple()]

    err = expect_revert(chain.client, relayer, htlc.htlc, second, args, "LockNotOpen")

    assert err.values == (lock_id, status)
    assert htlc.status(lock_id) == status
    assert owner_of(devnet, title.token_id) == holder


def test_lock_id_is_bound_to_the_chain_and_the_contract(devnet: Devnet, seller: LocalAccount,
                                                        buyer: LocalAccount) -> None:
    htlc = devnet.delivery_htlc
    lock = DeliveryLock(seller.address, buyer.address, 1, doc_hash("A"), b"\x01" * 32,
                        hashlock_of(b"\x02" * 32), 2**40)
    on_chain = htlc.htlc.functions.lockIdOf(lock.as_tuple()).call()
    assert on_chain == delivery_lock_id(devnet.business.chain_id, htlc.address, lock)
    assert on_chain != delivery_lock_id(devnet.payment.chain_id, htlc.address, lock)
    other = devnet.business.client.deploy(devnet.business.accounts[0],
                                          load_artifact("DeliveryHTLC"), devnet.titles.address)
    assert DeliveryHTLCProxy(devnet.business.client, other).lock_id(lock) == (
        other.functions.lockIdOf(lock.as_tuple()).call()) != on_chain
