// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

/// @dev Branch-free boolean or, for combining argument checks.
function or(bool a, bool b) pure returns (bool c) {
    assembly ("memory-safe") {
        c := or(a, b)
    }
}

using {or} for bool;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

/// @title PaymentHTLC: the payment leg of a cross-chain DvP trade.
/// @notice Locks an amount of one ERC-20 (fixed at deployment) under a sha256 hashlock and a
/// timelock. Before the timelock anyone holding the 32-byte preimage may claim; the tokens go
/// to the beneficiary only. At or after the timelock anyone may refund; the tokens go to the
/// sender only. Every lock has exactly one exit. There is no owner, no upgrade and no pause.
/// @dev One storage slot per lock. The lock id is the keccak256 of the chain id, this
/// contract's address and every lock parameter, so storage only records the lock's status and
/// claim/refund take the parameters back in calldata. The `Locked` event carries every
/// parameter: a lock's whole state can be rebuilt from this contract's logs alone.
contract PaymentHTLC {
    using SafeERC20 for IERC20;

    /// @notice The parameters of a payment lock; `keccak256(chainid, this, Lock)` is its id.
    struct Lock {
        address sender;
        address beneficiary;
        uint256 amount;
        bytes32 hashlock;
        uint64 timelock;
    }

    enum Status {
        None,
        Open,
        Claimed,
        Refunded
    }

    /// @notice Latest timelock a new lock may carry, counted from the block it is created in.
    uint256 public constant MAX_LOCK_DURATION = 30 days;

    /// @notice The only token this contract locks.
    IERC20 public immutable token;

    // Storage: the status of lock `id` is the full word at slot `id` (no mapping hash, no
    // read-modify-write). Lock ids are keccak256 outputs, and nothing else is stored here.

    /// @dev Carries the lock's parameters in struct order, unindexed: each indexed topic would
    /// add ~120 gas to every lock, and the relayer reads every log of this contract anyway.
    /// The lock id is not repeated: it is `lockIdOf` of these parameters.
    event Locked(address sender, address beneficiary, uint256 amount, bytes32 hashlock, uint64 timelock);
    event Claimed(bytes32 indexed lockId, bytes32 preimage);
    event Refunded(bytes32 indexed lockId);

    error ZeroAddress();
    error ZeroAmount();
    error ZeroHashlock();
    error TimelockNotInFuture(uint64 timelock, uint256 blockTimestamp);
    error TimelockTooFar(uint64 timelock, uint256 latestAllowed);
    error LockExists(bytes32 lockId);
    error LockNotOpen(bytes32 lockId, Status status);
    error InvalidPreimageLength(uint256 length);
    error HashlockMismatch(bytes32 lockId);
    error LockExpired(bytes32 lockId, uint64 timelock);
    error LockNotExpired(bytes32 lockId, uint64 timelock);
    error TransferAmountMismatch(uint256 expected, uint256 received);
    error LengthMismatch();
    error ReentrancyGuardReentrantCall();

    /// @dev Guards every exit against reentry from token callbacks (on top of checks-effects-
    /// interactions: the status is final before any transfer). The flag lives in transient
    /// storage (EIP-1153) slot 0, used for nothing else: one TLOAD and two TSTOREs per call.
    /// `lock` needs no guard: its balance-delta check demands *exactly* `amount`, so whatever a
    /// callback does to this contract's balance in the middle of the transfer (a nested lock
    /// adds to it, an exit takes from it) makes the outer lock revert, never double-count.
    modifier nonReentrant() {
        assembly ("memory-safe") {
            if tload(0) {
                mstore(0, 0x3ee5aeb5) // ReentrancyGuardReentrantCall()
                revert(0x1c, 4)
            }
            tstore(0, 1)
        }
        _;
        assembly ("memory-safe") {
            tstore(0, 0)
        }
    }

    constructor(IERC20 token_) {
        if (address(token_) == address(0)) revert ZeroAddress();
        token = token_;
    }

    /// @notice Lock `amount` of the sender's tokens (pulled with transferFrom) for `beneficiary`.
    /// @dev Rejects fee-on-transfer and other tokens that do not deliver exactly `amount`.
    function lock(address beneficiary, uint256 amount, bytes32 hashlock, uint64 timelock)
        external
        returns (bytes32 lockId)
    {
        // One branch for all argument checks on the hot path; the failing rule is found only
        // when reverting.
        unchecked {
            if (
                (beneficiary == address(0)).or(amount == 0).or(hashlock == bytes32(0))
                    .or(timelock - block.timestamp - 1 >= MAX_LOCK_DURATION)
            ) _revertInvalidLock(beneficiary, amount, hashlock, timelock);
        }
        assembly ("memory-safe") {
            let p := mload(0x40)
            mstore(p, chainid())
            mstore(add(p, 0x20), address())
            mstore(add(p, 0x40), caller())
            calldatacopy(add(p, 0x60), 4, 0x80) // beneficiary, amount, hashlock, timelock
            lockId := keccak256(p, 0xe0)
        }
        if (_statusOf(lockId) != uint256(Status.None)) revert LockExists(lockId);
        _setStatus(lockId, Status.Open);

        uint256 before = _balance();
        token.safeTransferFrom(msg.sender, address(this), amount);
        uint256 received;
        unchecked {
            received = _balance() - before; // a balance that shrank wraps around: still != amount
        }
        if (received != amount) revert TransferAmountMismatch(amount, received);

        emit Locked(msg.sender, beneficiary, amount, hashlock, timelock);
    }

    function _revertInvalidLock(address beneficiary, uint256 amount, bytes32 hashlock, uint64 timelock)
        private
        view
    {
        if (beneficiary == address(0)) revert ZeroAddress();
        if (amount == 0) revert ZeroAmount();
        if (hashlock == bytes32(0)) revert ZeroHashlock();
        if (timelock <= block.timestamp) revert TimelockNotInFuture(timelock, block.timestamp);
        revert TimelockTooFar(timelock, block.timestamp + MAX_LOCK_DURATION);
    }

    /// @notice Pay the lock's amount to its beneficiary; callable by anyone before the timelock.
    /// @param preimage exactly 32 bytes whose sha256 is the lock's hashlock.
    function claim(Lock calldata l, bytes calldata preimage) external nonReentrant {
        if (preimage.length != 32) revert InvalidPreimageLength(preimage.length);
        bytes32 secret = bytes32(preimage);
        bytes32 lockId = _lockId(l);
        uint256 status = _statusOf(lockId);
        if (status != uint256(Status.Open)) revert LockNotOpen(lockId, Status(status));
        if (block.timestamp >= l.timelock) revert LockExpired(lockId, l.timelock);
        if (sha256(abi.encodePacked(secret)) != l.hashlock) revert HashlockMismatch(lockId);
        _setStatus(lockId, Status.Claimed);
        token.safeTransfer(l.beneficiary, l.amount);
        emit Claimed(lockId, secret);
    }

    /// @notice Return the lock's amount to its sender; callable by anyone at or after the timelock.
    function refund(Lock calldata l) external nonReentrant {
        bytes32 lockId = _lockId(l);
        uint256 status = _statusOf(lockId);
        if (status != uint256(Status.Open)) revert LockNotOpen(lockId, Status(status));
        if (block.timestamp < l.timelock) revert LockNotExpired(lockId, l.timelock);
        _setStatus(lockId, Status.Refunded);
        token.safeTransfer(l.sender, l.amount);
        emit Refunded(lockId);
    }

    /// @notice Claim many locks in one transaction.
    /// @dev Entries that cannot be claimed (not open, expired, wrong preimage) are skipped, not
    /// reverted: a relayer that lost a race on one lock still settles the others. The `Claimed`
    /// events say which locks were claimed; the return value counts them. The bytes32 type
    /// enforces the 32-byte preimage rule.
    function claimMany(Lock[] calldata locks, bytes32[] calldata preimages)
        external
        nonReentrant
        returns (uint256 claimed)
    {
        if (locks.length != preimages.length) revert LengthMismatch();
        for (uint256 i; i < locks.length; ++i) {
            Lock calldata l = locks[i];
            bytes32 lockId = _lockId(l);
            if (
                _statusOf(lockId) != uint256(Status.Open) || block.timestamp >= l.timelock
                    || sha256(abi.encodePacked(preimages[i])) != l.hashlock
            ) continue;
            _setStatus(lockId, Status.Claimed);
            token.safeTransfer(l.beneficiary, l.amount);
            emit Claimed(lockId, preimages[i]);
            ++claimed;
        }
    }

    /// @notice Refund many locks in one transaction; entries not yet refundable are skipped.
    function refundMany(Lock[] calldata locks) external nonReentrant returns (uint256 refunded) {
        for (uint256 i; i < locks.length; ++i) {
            Lock calldata l = locks[i];
            bytes32 lockId = _lockId(l);
            if (_statusOf(lockId) != uint256(Status.Open) || block.timestamp < l.timelock) continue;
            _setStatus(lockId, Status.Refunded);
            token.safeTransfer(l.sender, l.amount);
            emit Refunded(lockId);
            ++refunded;
        }
    }

    /// @notice Status of a lock id: None (never created), Open, Claimed or Refunded.
    function statusOf(bytes32 lockId) external view returns (Status) {
        return Status(_statusOf(lockId));
    }

    /// @notice The id of a lock with these parameters on this contract and chain.
    function lockIdOf(Lock calldata l) external view returns (bytes32) {
        return _lockId(l);
    }

    /// @dev keccak256(abi.encode(block.chainid, address(this), l)) without the memory copy.
    function _lockId(Lock calldata l) private view returns (bytes32 id) {
        assembly ("memory-safe") {
            let p := mload(0x40)
            mstore(p, chainid())
            mstore(add(p, 0x20), address())
            calldatacopy(add(p, 0x40), l, 0xa0)
            id := keccak256(p, 0xe0)
        }
    }

    function _statusOf(bytes32 lockId) private view returns (uint256 status) {
        assembly ("memory-safe") {
            status := sload(lockId)
        }
    }

    function _setStatus(bytes32 lockId, Status status) private {
        assembly ("memory-safe") {
            sstore(lockId, status)
        }
    }

    /// @dev This contract's token balance (a plain staticcall: no ABI encoder round trip).
    function _balance() private view returns (uint256 bal) {
        address t = address(token);
        assembly ("memory-safe") {
            mstore(0, 0x70a08231) // balanceOf(address)
            mstore(0x20, address())
            if iszero(and(gt(returndatasize(), 0x1f), staticcall(gas(), t, 0x1c, 0x24, 0, 0x20))) {
                revert(0, 0)
            }
            bal := mload(0)
        }
    }
}
