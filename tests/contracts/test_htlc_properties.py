"""Stateful property test of PaymentHTLC against a Python model of every lock.

Hypothesis drives random sequences of lock / claim / refund / claimMany / refundMany / time
passing on the payment chain of one in-process devnet. The model decides every outcome from
the contract's documented rules alone, at the timestamp the transaction is actually mined at:

* lock succeeds iff the beneficiary, amount and hashlock are non-zero,
  `now < timelock <= now + MAX_LOCK_DURATION`, no lock with these parameters ever existed and
  the sender holds `amount`;
* claim succeeds iff the lock is open, `now < timelock` and the preimage is 32 bytes whose
  sha256 is the hashlock; the amount goes to the beneficiary, whoever sends the transaction;
* refund succeeds iff the lock is open and `now >= timelock`; the amount goes to the sender;
* claimMany / refundMany apply those rules entry by entry, in order, skipping (not reverting
  on) entries that fail them.

Each transaction's receipt status and HTLC events must match the prediction, and after every
step the chain must agree with the model: token supply conserved, every balance exact, every
lock's `statusOf` exact with at most one exit, and the HTLC holding exactly its open locks.

Speed: the devnet is started once per process and every example starts from a snapshot of it
(~2 ms instead of ~150 ms). The invariants read balances, supply and lock statuses straight
from py-evm's state, and call statusOf (through eth-tester, on pre-encoded calldata: ~1.5 ms,
a third of a web3 contract call) for the locks each step sent transactions about.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from functools import cache

from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_canonical_address
from hypothesis import event, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from gateway.chain.client import ChainClient, Receipt
from gateway.chain.devnet import DEV_ACCOUNTS, INITIAL_BALANCE, Devnet, InProcessChain, start_devnet
from gateway.chain.htlc import PaymentHTLCProxy, decode_receipt
from gateway.domain.locks import (
    LockClaimed,
    LockEvent,
    LockRefunded,
    PaymentLock,
    PaymentLocked,
)
from tests.helpers import approve

MAX_LOCK_DURATION = 30 * 24 * 3600  # PaymentHTLC.MAX_LOCK_DURATION
MAX_UINT64 = 2**64 - 1
NONE, OPEN, CLAIMED, REFUNDED = range(4)  # PaymentHTLC.Status
STATUS_NAMES = ("None", "Open", "Claimed", "Refunded")
ZERO_ADDRESS = "0x" + "00" * 20
ZERO_HASH = bytes(32)
INITIAL_TOTAL = DEV_ACCOUNTS * INITIAL_BALANCE

# Accounts 0..POOL-1 lock and receive (each approved the HTLC once); any of the ten may call
# claim/refund, so most exits are sent by a third party.
POOL = 5
# Secrets reused across locks: distinct locks under one hashlock, like the two legs of a trade.
SHARED_SECRETS = (b"\x01" * 32, b"\x02" * 32)
# eth-tester refuses to time-travel to or past this (January 1st 3017).
MAX_TRAVEL = 33_040_162_800
# Keeps chain time this far ahead of the wall clock. py-evm stamps a new block
# max(parent + 1, now), so from then on every block is exactly its parent + 1 s (or where we
# time-travel to): examples replay identically, whatever the wall clock says.
TIME_HEADROOM = 10**7


@dataclass(frozen=True)
class _Base:
    devnet: Devnet
    snapshot: int


# The invariants read storage straight from py-evm's state where they can: a dozen words in
# ~1 ms, where one eth-tester call costs ~1.5 ms. PaymentToken is OpenZeppelin's ERC20:
# `_balances` is the mapping at slot 0 and `_totalSupply` the word at slot 2 (`_base` checks
# them once against balanceOf/totalSupply, so a change of layout fails loudly instead of
# passing wrongly). PaymentHTLC keeps the status of lock `id` in the word at slot `id`.
BALANCES_SLOT, TOTAL_SUPPLY_SLOT = 0, 2


def _balance_slot(holder: str) -> int:
    key = bytes(12) + to_canonical_address(holder) + BALANCES_SLOT.to_bytes(32, "big")
    return int.from_bytes(keccak(key), "big")


def _storage(chain: InProcessChain, contract: str, slots: list[int]) -> list[int]:
    """Words of a contract's storage at the latest block."""
    evm = chain.tester.backend.chain
    state = evm.get_vm(evm.get_canonical_head()).state
    address = to_canonical_address(contract)
    return [state.get_storage(address, slot) for slot in slots]


@cache
def _base() -> _Base:
    """One devnet per process, with the pool approved and time moved ahead, snapshotted."""
    devnet = start_devnet()
    chain, token = devnet.payment, devnet.payment_token
    for account in chain.accounts[:POOL]:
        approve(chain.client, account, token, devnet.payment_htlc.address)
    holders = [a.address for a in chain.accounts] + [devnet.payment_htlc.address]
    raw = _storage(chain, token.address,
                   [_balance_slot(h) for h in holders] + [TOTAL_SUPPLY_SLOT])
    via_abi = [token.functions.balanceOf(h).call() for h in holders]
    via_abi.append(token.functions.totalSupply().call())
    assert raw == via_abi, "PaymentToken's storage layout is not OpenZeppelin ERC20's"
    chain.set_next_block_timestamp(chain.next_block_timestamp() + TIME_HEADROOM)
    return _Base(devnet, chain.tester.take_snapshot())


pool_members = st.integers(0, POOL - 1)
callers = st.integers(0, DEV_ACCOUNTS - 1)
noise = st.binary(min_size=32, max_size=32)

# --- strategies ------------------------------------------------------------------------------
# Each draws a `kind` in 0..19 first, so that most ways of making a lock invalid come up about
# one time in twenty (about two locks in three are valid); shrinking tends to kind 0, valid.


def _kind(draw: st.DrawFn) -> int:
    return draw(st.integers(0, 19))


@st.composite
def amounts(draw: st.DrawFn) -> int | str:
    """A token amount, or "all"/"over": the sender's whole balance / one unit more."""
    kind = _kind(draw)
    if kind <= 16:
        return draw(st.integers(1, 20_000))
    return (0, "all", "over")[kind - 17]


@st.composite
def beneficiaries(draw: st.DrawFn) -> int | None:
    """An index into the pool, or None for the zero address."""
    return None if _kind(draw) == 19 else draw(pool_members)


@st.composite
def hashlocks(draw: st.DrawFn) -> tuple[bytes | None, bytes]:
    """(secret, hashlock); the secret is None when nobody knows a preimage."""
    kind = _kind(draw)
    if kind <= 13:
        secret = draw(noise)
    elif kind <= 16:
        secret = draw(st.sampled_from(SHARED_SECRETS))
    elif kind <= 18:
        return None, draw(noise)
    else:
        return None, ZERO_HASH
    return secret, hashlib.sha256(secret).digest()


@st.composite
def timelocks(draw: st.DrawFn) -> tuple[str, int]:
    """("in", seconds after the lock's block) or ("at", absolute timestamp)."""
    kind = _kind(draw)
    if kind <= 11:
        return "in", draw(st.integers(1, 3600))
    if kind <= 14:
        return "in", draw(st.integers(1, MAX_LOCK_DURATION))
    if kind <= 18:  # the edges of the valid range, 1..MAX_LOCK_DURATION, and beyond
        edges = [1, 0, -1, MAX_LOCK_DURATION, MAX_LOCK_DURATION + 1, -10**6]
        return "in", draw(st.sampled_from(edges))
    return "at", draw(st.sampled_from([0, MAX_UINT64]))


@st.composite
def seconds(draw: st.DrawFn) -> int:
    """Mostly a few minutes (short timelocks run out), sometimes up to two lock durations."""
    if _kind(draw) <= 15:
        return draw(st.integers(0, 300))
    return draw(st.integers(0, 2 * MAX_LOCK_DURATION))


# (sender, beneficiary, amount, secret, seconds to the timelock) of a lock that must succeed.
valid_locks = st.tuples(pool_members, pool_members, st.integers(1, 20_000),
                        st.one_of(noise, st.sampled_from(SHARED_SECRETS)),
                        st.one_of(st.integers(1, 3600), st.integers(1, MAX_LOCK_DURATION),
                                  st.sampled_from([1, MAX_LOCK_DURATION])))

# How a claim picks its preimage: the lock's secret, random bytes, another lock's secret, or
# the right secret at the wrong length (31 or 33 bytes).
PREIMAGE_KINDS = ["secret", "secret", "secret", "wrong", "other", "short", "long"]
BATCH_PREIMAGE_KINDS = ["secret", "secret", "wrong", "other"]  # bytes32[]: length is fixed
# When a claim/refund is sent: now, or first move time to one second before the timelock (the
# last second a claim may succeed) or to the timelock itself (the first a refund may).
WHEN = ["now", "now", "now", -1, 0]
BATCH_WHEN = ["now", -1, 0]  # relative to the first entry's timelock


def _show(events: list[LockEvent]) -> str:
    """HTLC events, briefly: kind and lock id prefix."""
    return "[" + ", ".join(f"{type(e).__name__}({e.lock_id.hex()[:8]})" for e in events) + "]"


@dataclass
class ModelLock:
    lock: PaymentLock
    lock_id: bytes
    secret: bytes | None
    status: int  # NONE: these parameters were never locked (every attempt reverted)
    status_call: bytes  # statusOf(lock_id) calldata, encoded once


class HTLCMachine(RuleBasedStateMachine):
    locks = Bundle("locks")  # lock ids, including ids of attempts that reverted (status None)

    def __init__(self) -> None:
        super().__init__()
        base = _base()
        self.chain: InProcessChain = base.devnet.payment
        self.chain.tester.revert_to_snapshot(base.snapshot)
        # A fresh client: the base one's local nonces are ahead of the reverted chain.
        client = ChainClient(self.chain.w3, self.chain.chain_id, self.chain.name)
        self.htlc = PaymentHTLCProxy(client, base.devnet.payment_htlc.htlc)
        self.token = base.devnet.payment_token
        self.accounts: list[LocalAccount] = self.chain.accounts
        self.holders = [a.address for a in self.accounts] + [self.htlc.address]
        self.token_slots = [_balance_slot(h) for h in self.holders] + [TOTAL_SUPPLY_SLOT]

        # The model.
        self.balances = {a.address: INITIAL_BALANCE for a in self.accounts}
        self.balances[self.htlc.address] = 0
        self.model: dict[bytes, ModelLock] = {}
        self.exits: Counter[bytes] = Counter()  # Claimed + Refunded events seen, per lock id
        self.exit_kind: dict[bytes, int] = {}
        self.t0 = self._now()
        self.touched: set[bytes] = set()  # locks the current step sent a transaction about

    # --- helpers ---------------------------------------------------------------------------

    def _view(self, to: str, data: bytes) -> int:
        out = self.chain.tester.call({"from": self.accounts[0].address, "to": to, "data": data},
                                     "latest")
        return int(out, 16)

    def _t(self, timestamp: int) -> str:
        """A timestamp for the failure report, relative to the example's first block."""
        return f"t0{timestamp - self.t0:+d}"

    def _name(self, address: str) -> str:
        return "HTLC" if address == self.htlc.address else f"account {self._index(address)}"

    def _index(self, address: str) -> int | None:
        return next((i for i, a in enumerate(self.accounts) if a.address == address), None)

    def _now(self) -> int:
        """The timestamp the next transaction will be mined at."""
        return self.chain.next_block_timestamp()

    def _time_travel(self, target: int) -> None:
        """Have the next transaction mined at `target`, if that is still ahead (and before
        eth-tester's limit)."""
        if self._now() < target < MAX_TRAVEL:
            self.chain.set_next_block_timestamp(target)
            assert self._now() == target
        else:
            note(f"{self._t(target)} already passed or out of reach: time stays at "
                 f"{self._t(self._now())}")

    def _settle(self, receipt: Receipt, mined_at: int, expected: list[LockEvent],
                succeeds: bool = True) -> None:
        """The transaction was mined when predicted, and did (not) revert with these events."""
        block = self.chain.tester.get_block_by_number(receipt.block_number)
        assert block["timestamp"] == mined_at, "transaction not mined at the predicted time"
        assert receipt.status == int(succeeds), (
            f"predicted {'success' if succeeds else 'revert'}, chain says status {receipt.status}"
        )
        events = decode_receipt(receipt, self.htlc.address, self.chain.chain_id)
        if not succeeds:
            expected = []
        assert events == expected, f"events {_show(events)}, predicted {_show(expected)}"
        if not succeeds:
            assert receipt.logs == (), "a reverted transaction left logs"
        for logged in events:
            if isinstance(logged, LockClaimed | LockRefunded):
                self.exits[logged.lock_id] += 1
                self.exit_kind[logged.lock_id] = (CLAIMED if isinstance(logged, LockClaimed)
                                                  else REFUNDED)

    def _pay_out(self, m: ModelLock, status: int) -> None:
        to = m.lock.beneficiary if status == CLAIMED else m.lock.sender
        m.status = status
        self.balances[self.htlc.address] -= m.lock.amount
        self.balances[to] += m.lock.amount

    # The rules. Each returns why the contract must refuse, or None when it must accept.

    def _lock_refusal(self, lock: PaymentLock, status: int, now: int) -> str | None:
        if lock.beneficiary == ZERO_ADDRESS:
            return "zero beneficiary"
        if lock.amount == 0:
            return "zero amount"
        if lock.hashlock == ZERO_HASH:
            return "zero hashlock"
        if lock.timelock <= now:
            return "timelock not in future"
        if lock.timelock > now + MAX_LOCK_DURATION:
            return "timelock too far"
        if status != NONE:
            return "lock exists"
        if lock.amount > self.balances[lock.sender]:
            return "insufficient balance"
        return None

    @staticmethod
    def _claim_refusal(lock: PaymentLock, status: int, preimage: bytes, now: int) -> str | None:
        if len(preimage) != 32:
            return "preimage not 32 bytes"
        if status != OPEN:
            return f"{STATUS_NAMES[status].lower()}, not open"
        if now >= lock.timelock:
            return "expired"
        if hashlib.sha256(preimage).digest() != lock.hashlock:
            return "wrong preimage"
        return None

    @staticmethod
    def _refund_refusal(lock: PaymentLock, status: int, now: int) -> str | None:
        if status != OPEN:
            return f"{STATUS_NAMES[status].lower()}, not open"
        if now < lock.timelock:
            return "not expired"
        return None

    def _outcome(self, op: str, refusal: str | None, lock: PaymentLock, now: int) -> None:
        """Record the predicted outcome: in the failure report, and as coverage statistics
        (pytest --hypothesis-show-statistics)."""
        if refusal is None and lock.timelock - now in (0, 1):
            event(f"{op}: ok at timelock{now - lock.timelock:+d}")  # the boundary second
        if refusal is None and lock.timelock - now == MAX_LOCK_DURATION:
            event(f"{op}: ok at the longest timelock")
        event(f"{op}: {refusal or 'ok'}")
        note(f"{op} of {lock.amount} at {self._t(now)} (timelock {lock.timelock - now:+d} s): "
             f"{refusal or 'ok'}")

    def _preimage(self, m: ModelLock, kind: str, other: ModelLock, junk: bytes) -> bytes:
        secret = m.secret if m.secret is not None else junk
        if kind == "secret":
            return secret
        if kind == "other":
            return other.secret if other.secret is not None else junk
        if kind == "short":
            return secret[:31]
        if kind == "long":
            return secret + b"\x00"
        return junk

    def _lock(self, sender: LocalAccount, beneficiary: str, amount: int, hashlock: bytes,
              timelock: int, secret: bytes | None) -> bytes:
        now = self._now()
        lock = PaymentLock(sender.address, beneficiary, amount, hashlock, timelock)
        lock_id = self.htlc.lock_id(lock)
        m = self.model.get(lock_id)
        if m is None:
            id_call = self.htlc.htlc.encode_abi("lockIdOf", [lock.as_tuple()])
            on_chain_id = self._view(self.htlc.address, id_call).to_bytes(32, "big")
            assert on_chain_id == lock_id, "lockIdOf disagrees with the off-chain lock id"
            m = ModelLock(lock, lock_id, secret, NONE,
                          self.htlc.htlc.encode_abi("statusOf", [lock_id]))
            self.model[lock_id] = m
        refusal = self._lock_refusal(lock, m.status, now)
        self._outcome("lock", refusal, lock, now)
        self.touched.add(lock_id)
        receipt, sent = self.htlc.lock(sender, beneficiary, amount, hashlock, timelock)
        assert sent == lock
        succeeds = refusal is None
        self._settle(receipt, now, [PaymentLocked(lock_id, lock)], succeeds)
        if succeeds:
            m.status = OPEN
            self.balances[sender.address] -= amount
            self.balances[self.htlc.address] += amount
        return lock_id

    # --- rules -----------------------------------------------------------------------------

    def _valid_lock(self, sender: int, beneficiary: int, amount: int, secret: bytes,
                    expires_in: int) -> bytes:
        return self._lock(self.accounts[sender], self.accounts[beneficiary].address, amount,
                          hashlib.sha256(secret).digest(), self._now() + expires_in, secret)

    @initialize(target=locks, params=st.lists(valid_locks, min_size=1, max_size=3))
    def first_locks(self, params: list[tuple[int, int, int, bytes, int]]) -> MultipleResults:
        """Every example starts with a few valid locks: the bundle is never empty."""
        return multiple(*(self._valid_lock(*p) for p in params))

    @rule(target=locks, params=valid_locks)
    def lock_valid(self, params: tuple[int, int, int, bytes, int]) -> bytes:
        """A valid lock (as `lock` mostly is too): locks are created as often as they exit,
        so that claims and refunds have open locks to work on."""
        return self._valid_lock(*params)

    @rule(target=locks, sender=pool_members, beneficiary=beneficiaries(), amount=amounts(),
          hashlock=hashlocks(), timelock=timelocks())
    def lock(self, sender: int, beneficiary: int | None, amount: int | str,
             hashlock: tuple[bytes | None, bytes], timelock: tuple[str, int]) -> bytes:
        account = self.accounts[sender]
        held = self.balances[account.address]
        value = held if amount == "all" else held + 1 if amount == "over" else amount
        assert isinstance(value, int)
        how, t = timelock
        at = min(max(self._now() + t, 0), MAX_UINT64) if how == "in" else t
        to = ZERO_ADDRESS if beneficiary is None else self.accounts[beneficiary].address
        secret, h = hashlock
        return self._lock(account, to, value, h, at, secret)

    @rule(lock_id=locks)
    def lock_again(self, lock_id: bytes) -> None:
        """The same sender locks the same parameters again: refused once they ever existed."""
        m = self.model[lock_id]
        sender = next(a for a in self.accounts if a.address == m.lock.sender)
        self._lock(sender, m.lock.beneficiary, m.lock.amount, m.lock.hashlock, m.lock.timelock,
                   m.secret)

    @rule(lock_id=locks, caller=callers, kind=st.sampled_from(PREIMAGE_KINDS), other=locks,
          junk=noise, when=st.sampled_from(WHEN))
    def claim(self, lock_id: bytes, caller: int, kind: str, other: bytes, junk: bytes,
              when: str | int) -> None:
        m = self.model[lock_id]
        if when != "now":
            self._time_travel(m.lock.timelock + int(when))
        preimage = self._preimage(m, kind, self.model[other], junk)
        now = self._now()
        refusal = self._claim_refusal(m.lock, m.status, preimage, now)
        self._outcome("claim", refusal, m.lock, now)
        self.touched.add(lock_id)
        if caller not in (self._index(m.lock.sender), self._index(m.lock.beneficiary)):
            event("claim: sent by a third party")
        receipt = self.htlc.claim(self.accounts[caller], m.lock, preimage)
        succeeds = refusal is None
        self._settle(receipt, now, [LockClaimed(lock_id, preimage)], succeeds)
        if succeeds:
            self._pay_out(m, CLAIMED)

    @rule(lock_id=locks, caller=callers, when=st.sampled_from(WHEN))
    def refund(self, lock_id: bytes, caller: int, when: str | int) -> None:
        m = self.model[lock_id]
        if when != "now":
            self._time_travel(m.lock.timelock + int(when))
        now = self._now()
        refusal = self._refund_refusal(m.lock, m.status, now)
        self._outcome("refund", refusal, m.lock, now)
        self.touched.add(lock_id)
        receipt = self.htlc.refund(self.accounts[caller], m.lock)
        succeeds = refusal is None
        self._settle(receipt, now, [LockRefunded(lock_id)], succeeds)
        if succeeds:
            self._pay_out(m, REFUNDED)

    def _open_locks(self) -> list[bytes]:
        return sorted(lid for lid, m in self.model.items() if m.status == OPEN)

    def _claimable_locks(self) -> list[bytes]:
        """Open locks before their timelock."""
        now = self._now()
        return [lid for lid in self._open_locks() if now < self.model[lid].lock.timelock]

    # Most bundle entries are not open (any more), so `claim` and `refund` mostly exercise
    # refusals; these two aim at an open lock.

    @precondition(lambda self: self._open_locks())
    @rule(data=st.data(), caller=callers, kind=st.sampled_from(PREIMAGE_KINDS), other=locks,
          junk=noise, when=st.sampled_from(WHEN))
    def claim_open_lock(self, data: st.DataObject, caller: int, kind: str, other: bytes,
                        junk: bytes, when: str | int) -> None:
        lock_id = data.draw(st.sampled_from(self._claimable_locks() or self._open_locks()),
                            label="open lock")
        self.claim(lock_id, caller, kind, other, junk, when)

    @precondition(lambda self: self._open_locks())
    @rule(data=st.data(), caller=callers, when=st.sampled_from(WHEN))
    def refund_open_lock(self, data: st.DataObject, caller: int, when: str | int) -> None:
        # Moving time to a timelock needs one still ahead.
        ahead = self._claimable_locks() if when != "now" else []
        lock_id = data.draw(st.sampled_from(ahead or self._open_locks()), label="open lock")
        self.refund(lock_id, caller, when)

    def _draw_batch(self, data: st.DataObject, favoured: list[bytes],
                    entry: st.SearchStrategy[tuple]) -> list[tuple]:
        """Up to four (lock id, entry) for a batch. Lock ids are mostly `favoured` ones
        (listed first, where shrinking goes), else any the model knows; the first is always
        favoured, if any is, as a batch sent at the first entry's timelock needs one ahead."""
        size = data.draw(st.integers(0, 4), label="batch size")
        anyone = sorted(self.model)
        return [data.draw(st.tuples(st.sampled_from(favoured if i == 0 and favoured
                                                    else favoured * 3 + anyone), entry),
                          label=f"entry {i}")
                for i in range(size)]

    @rule(data=st.data(), caller=callers, when=st.sampled_from(BATCH_WHEN),
          mismatch=st.sampled_from([0, 0, 0, 0, 0, 1, -1]))
    def claim_many(self, data: st.DataObject, caller: int, when: str | int,
                   mismatch: int) -> None:
        """claimMany over up to four entries (repeats allowed), sent now or at the first
        entry's timelock (-1); `mismatch` sends one preimage too many or too few."""
        entries = self._draw_batch(data, self._claimable_locks(), st.tuples(
            st.sampled_from(BATCH_PREIMAGE_KINDS), st.sampled_from(sorted(self.model)), noise))
        batch = [self.model[lock_id] for lock_id, _ in entries]
        self.touched.update(m.lock_id for m in batch)
        preimages = [self._preimage(self.model[lock_id], kind, self.model[other], junk)
                     for lock_id, (kind, other, junk) in entries]
        if mismatch > 0 or (mismatch < 0 and not preimages):
            preimages.append(bytes(32))
        elif mismatch < 0:
            preimages.pop()
        if batch and when != "now":
            self._time_travel(batch[0].lock.timelock + int(when))
        now = self._now()
        succeeds = len(batch) == len(preimages)  # else LengthMismatch
        claimed: list[tuple[ModelLock, bytes]] = []
        if succeeds:
            status = {m.lock_id: m.status for m in batch}  # as the loop sees them
            for m, preimage in zip(batch, preimages, strict=True):
                refusal = self._claim_refusal(m.lock, status[m.lock_id], preimage, now)
                self._outcome("claimMany entry", refusal, m.lock, now)
                if refusal is None:
                    status[m.lock_id] = CLAIMED
                    claimed.append((m, preimage))
        else:
            event("claimMany: length mismatch")
        note(f"claimMany of {len(batch)} at {self._t(now)}: {len(claimed)} claimed"
             + ("" if succeeds else " (length mismatch: revert)"))
        receipt = self.htlc.claim_many(self.accounts[caller], [m.lock for m in batch], preimages)
        self._settle(receipt, now, [LockClaimed(m.lock_id, p) for m, p in claimed], succeeds)
        for m, _ in claimed:
            self._pay_out(m, CLAIMED)

    @rule(data=st.data(), caller=callers, when=st.sampled_from(BATCH_WHEN))
    def refund_many(self, data: st.DataObject, caller: int, when: str | int) -> None:
        """refundMany over up to four entries (repeats allowed), sent now or at the first
        entry's timelock (-1)."""
        ahead = self._claimable_locks() if when != "now" else []
        entries = self._draw_batch(data, ahead or self._open_locks(), st.just(()))
        batch = [self.model[lock_id] for lock_id, _ in entries]
        self.touched.update(m.lock_id for m in batch)
        if batch and when != "now":
            self._time_travel(batch[0].lock.timelock + int(when))
        now = self._now()
        status = {m.lock_id: m.status for m in batch}
        refunded: list[ModelLock] = []
        for m in batch:
            refusal = self._refund_refusal(m.lock, status[m.lock_id], now)
            self._outcome("refundMany entry", refusal, m.lock, now)
            if refusal is None:
                status[m.lock_id] = REFUNDED
                refunded.append(m)
        note(f"refundMany of {len(batch)} at {self._t(now)}: {len(refunded)} refunded")
        receipt = self.htlc.refund_many(self.accounts[caller], [m.lock for m in batch])
        self._settle(receipt, now, [LockRefunded(m.lock_id) for m in refunded])
        for m in refunded:
            self._pay_out(m, REFUNDED)

    @precondition(lambda self: any(m.status in (CLAIMED, REFUNDED) for m in self.model.values()))
    @rule(data=st.data(), caller=callers, junk=noise)
    def exit_again(self, data: st.DataObject, caller: int, junk: bytes) -> None:
        """A lock that has exited can be neither claimed (even with its secret, in time) nor
        refunded (even after its timelock) again; both revert and move nothing."""
        exited = sorted(lid for lid, m in self.model.items() if m.status in (CLAIMED, REFUNDED))
        m = self.model[data.draw(st.sampled_from(exited), label="exited lock")]
        self.touched.add(m.lock_id)
        preimage = m.secret if m.secret is not None else junk
        for attempt in ("claim", "refund"):
            now = self._now()
            note(f"{attempt} {STATUS_NAMES[m.status]} lock again at {self._t(now)} "
                 f"(timelock {m.lock.timelock - now:+d} s)")
            receipt = (self.htlc.claim(self.accounts[caller], m.lock, preimage)
                       if attempt == "claim" else self.htlc.refund(self.accounts[caller], m.lock))
            self._settle(receipt, now, [], succeeds=False)

    @rule(delta=seconds())
    def time_passes(self, delta: int) -> None:
        target = self._now() + delta
        self.chain.set_next_block_timestamp(target)
        assert self._now() == target

    @rule(lock_id=locks, offset=st.sampled_from([0, -1]))
    def time_reaches_timelock(self, lock_id: bytes, offset: int) -> None:
        """Next transaction mined exactly at a lock's timelock (refund only) or one second
        before (claim only)."""
        self._time_travel(self.model[lock_id].lock.timelock + offset)

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def chain_agrees_with_model(self) -> None:
        # One read of the chain per step, checked four ways.
        *words, supply = _storage(self.chain, self.token.address, self.token_slots)
        balances = dict(zip(self.holders, words, strict=True))
        htlc_balance = balances[self.htlc.address]
        # Every lock's status word, and statusOf for each lock this step sent a transaction
        # about (the only ones whose status may change): the two must agree.
        ids = list(self.model)
        statuses = dict(zip(ids, _storage(self.chain, self.htlc.address,
                                          [int.from_bytes(lid, "big") for lid in ids]),
                            strict=True))
        for lock_id in self.touched:
            status_of = self._view(self.htlc.address, self.model[lock_id].status_call)
            assert status_of == statuses[lock_id], (
                f"lock {lock_id.hex()}: statusOf {status_of}, storage {statuses[lock_id]}"
            )
        self.touched.clear()

        # (1) Conservation: nothing minted or burnt, and every unit is with an account or
        # with the HTLC.
        assert supply == INITIAL_TOTAL, f"totalSupply {supply} != {INITIAL_TOTAL}"
        held = sum(balances.values())
        assert held == INITIAL_TOTAL, f"accounts + HTLC hold {held} != {INITIAL_TOTAL}"

        # (2) Every balance, the HTLC's included, is exactly the model's.
        wrong = {self._name(h): (b, self.balances[h]) for h, b in balances.items()
                 if b != self.balances[h]}
        assert not wrong, f"balances (chain, model) differ: {wrong}"

        # (3) Every lock's status is the model's, and it exited at most once, in the way its
        # status says.
        for lock_id, m in self.model.items():
            assert statuses[lock_id] == m.status, (
                f"lock {lock_id.hex()}: status {statuses[lock_id]} on chain, model "
                f"{STATUS_NAMES[m.status]}"
            )
            assert self.exits[lock_id] == int(m.status in (CLAIMED, REFUNDED)), (
                f"lock {lock_id.hex()}: {self.exits[lock_id]} exit events, status "
                f"{STATUS_NAMES[m.status]}"
            )
            assert self.exit_kind.get(lock_id, m.status) == m.status

        # (4) The HTLC holds exactly the amounts of its open locks (by the model and by the
        # chain's statuses).
        model_open = sum(m.lock.amount for m in self.model.values() if m.status == OPEN)
        chain_open = sum(self.model[lid].lock.amount for lid, s in statuses.items() if s == OPEN)
        assert htlc_balance == model_open == chain_open, (
            f"HTLC holds {htlc_balance}; open locks: {model_open} by the model, "
            f"{chain_open} by the chain"
        )


HTLCMachine.TestCase.settings = settings(max_examples=20, stateful_step_count=30)  # py-evm cost
TestHTLCMachine = HTLCMachine.TestCase
