// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @title PaymentHTLC: the payment leg of a cross-chain DvP trade.
/// @notice Locks an amount of one ERC-20 (fixed at deployment) under a sha256 hashlock and a
/// timelock. Before the timelock anyone holding the 32-byte preimage may claim; the tokens go
/// to the beneficiary only. At or after the timelock anyone may refund; the tokens go to the
/// sender only. Every lock has exactly one exit. There is no owner, no upgrade and no pause.
/// @dev One storage slot per lock. The lock id is the keccak256 of the chain id, this
/// contract's address and every lock parameter, so storage only records the lock's status and
/// claim/refund take the parameters back in calldata. The `Locked` event carries every
/// parameter: a lock's whole state can be rebuilt from this contract's logs alone.
contract PaymentHTLC is ReentrancyGuardTransient {
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

    /// @notice Status of every lock id ever created here.
    mapping(bytes32 lockId => Status) public statusOf;

    event Locked(
        bytes32 indexed lockId,
        bytes32 indexed hashlock,
        address indexed beneficiary,
        address sender,
        uint256 amount,
        uint64 timelock
    );
    event Claimed(bytes32 indexed lockId, bytes32 indexed hashlock, bytes32 preimage);
    event Refunded(bytes32 indexed lockId, bytes32 indexed hashlock);

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

    constructor(IERC20 token_) {
        if (address(token_) == address(0)) revert ZeroAddress();
        token = token_;
    }

    /// @notice Lock `amount` of the sender's tokens (pulled with transferFrom) for `beneficiary`.
    /// @dev Rejects fee-on-transfer and other tokens that do not deliver exactly `amount`.
    function lock(address beneficiary, uint256 amount, bytes32 hashlock, uint64 timelock)
        external
        nonReentrant
        returns (bytes32 lockId)
    {
        if (beneficiary == address(0)) revert ZeroAddress();
        if (amount == 0) revert ZeroAmount();
        if (hashlock == bytes32(0)) revert ZeroHashlock();
        if (timelock <= block.timestamp) revert TimelockNotInFuture(timelock, block.timestamp);
        if (timelock > block.timestamp + MAX_LOCK_DURATION) {
            revert TimelockTooFar(timelock, block.timestamp + MAX_LOCK_DURATION);
        }
        lockId = _lockId(Lock(msg.sender, beneficiary, amount, hashlock, timelock));
        if (statusOf[lockId] != Status.None) revert LockExists(lockId);
        statusOf[lockId] = Status.Open;

        uint256 before = token.balanceOf(address(this));
        token.safeTransferFrom(msg.sender, address(this), amount);
        uint256 received = token.balanceOf(address(this)) - before;
        if (received != amount) revert TransferAmountMismatch(amount, received);

        emit Locked(lockId, hashlock, beneficiary, msg.sender, amount, timelock);
    }

    /// @notice Pay the lock's amount to its beneficiary; callable by anyone before the timelock.
    /// @param preimage exactly 32 bytes whose sha256 is the lock's hashlock.
    function claim(Lock calldata l, bytes calldata preimage) external nonReentrant {
        if (preimage.length != 32) revert InvalidPreimageLength(preimage.length);
        bytes32 secret = bytes32(preimage);
        bytes32 lockId = _lockId(l);
        Status status = statusOf[lockId];
        if (status != Status.Open) revert LockNotOpen(lockId, status);
        if (block.timestamp >= l.timelock) revert LockExpired(lockId, l.timelock);
        if (sha256(abi.encodePacked(secret)) != l.hashlock) revert HashlockMismatch(lockId);
        statusOf[lockId] = Status.Claimed;
        token.safeTransfer(l.beneficiary, l.amount);
        emit Claimed(lockId, l.hashlock, secret);
    }

    /// @notice Return the lock's amount to its sender; callable by anyone at or after the timelock.
    function refund(Lock calldata l) external nonReentrant {
        bytes32 lockId = _lockId(l);
        Status status = statusOf[lockId];
        if (status != Status.Open) revert LockNotOpen(lockId, status);
        if (block.timestamp < l.timelock) revert LockNotExpired(lockId, l.timelock);
        statusOf[lockId] = Status.Refunded;
        token.safeTransfer(l.sender, l.amount);
        emit Refunded(lockId, l.hashlock);
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
                statusOf[lockId] != Status.Open || block.timestamp >= l.timelock
                    || sha256(abi.encodePacked(preimages[i])) != l.hashlock
            ) continue;
            statusOf[lockId] = Status.Claimed;
            token.safeTransfer(l.beneficiary, l.amount);
            emit Claimed(lockId, l.hashlock, preimages[i]);
            ++claimed;
        }
    }

    /// @notice Refund many locks in one transaction; entries not yet refundable are skipped.
    function refundMany(Lock[] calldata locks) external nonReentrant returns (uint256 refunded) {
        for (uint256 i; i < locks.length; ++i) {
            Lock calldata l = locks[i];
            bytes32 lockId = _lockId(l);
            if (statusOf[lockId] != Status.Open || block.timestamp < l.timelock) continue;
            statusOf[lockId] = Status.Refunded;
            token.safeTransfer(l.sender, l.amount);
            emit Refunded(lockId, l.hashlock);
            ++refunded;
        }
    }

    /// @notice The id of a lock with these parameters on this contract and chain.
    function lockIdOf(Lock calldata l) external view returns (bytes32) {
        return _lockId(l);
    }

    function _lockId(Lock memory l) private view returns (bytes32) {
        return keccak256(abi.encode(block.chainid, address(this), l));
    }
}
