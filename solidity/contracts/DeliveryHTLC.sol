// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {ITitleDocument} from "./interfaces/ITitleDocument.sol";

/// @title DeliveryHTLC: the delivery leg of a cross-chain DvP trade.
/// @notice The seller locks a document of title (one ERC-721 registry, fixed at deployment) for
/// the buyer under the trade's hashlock, bound to the trade id and the documents' hash. The
/// buyer performs the contract by claiming with the 32-byte preimage, which the `Claimed` event
/// makes public so the payment leg can be claimed for the seller. At or after the timelock
/// anyone may return the document to the seller. No owner, no upgrade, no pause.
/// @dev Same one-slot design as PaymentHTLC: storage holds only each lock's status.
contract DeliveryHTLC {
    /// @notice The parameters of a delivery lock; `keccak256(chainid, this, Lock)` is its id.
    struct Lock {
        address seller;
        address buyer;
        uint256 tokenId;
        bytes32 documentHash;
        bytes32 tradeId;
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

    /// @notice The only document registry this contract locks titles of.
    ITitleDocument public immutable titles;

    // Storage: the status of lock `id` is the full word at slot `id`, as in PaymentHTLC.

    event Locked(
        bytes32 indexed lockId,
        bytes32 indexed hashlock,
        bytes32 indexed tradeId,
        address seller,
        address buyer,
        uint256 tokenId,
        bytes32 documentHash,
        uint64 timelock
    );
    /// @notice The contract is performed: the title went to the buyer and `preimage` is public.
    event Claimed(bytes32 indexed lockId, bytes32 preimage);
    event Refunded(bytes32 indexed lockId);

    error ZeroAddress();
    error ZeroHashlock();
    error TimelockNotInFuture(uint64 timelock, uint256 blockTimestamp);
    error TimelockTooFar(uint64 timelock, uint256 latestAllowed);
    error DocumentMismatch(uint256 tokenId, bytes32 expected, bytes32 actual);
    error TitleNotReceived(uint256 tokenId);
    error LockExists(bytes32 lockId);
    error LockNotOpen(bytes32 lockId, Status status);
    error InvalidPreimageLength(uint256 length);
    error HashlockMismatch(bytes32 lockId);
    error LockExpired(bytes32 lockId, uint64 timelock);
    error LockNotExpired(bytes32 lockId, uint64 timelock);
    error ReentrancyGuardReentrantCall();

    /// @dev Reentrancy guard in transient storage slot 0 (see PaymentHTLC). A title registry
    /// is an external contract: its transfer could call back.
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

    constructor(ITitleDocument titles_) {
        if (address(titles_) == address(0)) revert ZeroAddress();
        titles = titles_;
    }

    /// @notice Lock the caller's title `tokenId` for `buyer`. `documentHash` must be the hash the
    /// registry records for the token: the lock commits to the documents the trade agreed on.
    function lock(
        address buyer,
        uint256 tokenId,
        bytes32 documentHash,
        bytes32 tradeId,
        bytes32 hashlock,
        uint64 timelock
    ) external nonReentrant returns (bytes32 lockId) {
        if (buyer == address(0)) revert ZeroAddress();
        if (hashlock == bytes32(0)) revert ZeroHashlock();
        if (timelock <= block.timestamp) revert TimelockNotInFuture(timelock, block.timestamp);
        if (timelock > block.timestamp + MAX_LOCK_DURATION) {
            revert TimelockTooFar(timelock, block.timestamp + MAX_LOCK_DURATION);
        }
        bytes32 actual = titles.documentHash(tokenId);
        if (actual != documentHash) revert DocumentMismatch(tokenId, documentHash, actual);
        lockId = _lockId(Lock(msg.sender, buyer, tokenId, documentHash, tradeId, hashlock, timelock));
        if (_statusOf(lockId) != uint256(Status.None)) revert LockExists(lockId);
        _setStatus(lockId, Status.Open);

        titles.transferFrom(msg.sender, address(this), tokenId);
        if (titles.ownerOf(tokenId) != address(this)) revert TitleNotReceived(tokenId);

        emit Locked(lockId, hashlock, tradeId, msg.sender, buyer, tokenId, documentHash, timelock);
    }

    /// @notice Take delivery: transfer the title to the buyer and publish the preimage.
    /// Callable by anyone before the timelock; the title goes to the buyer only.
    function claim(Lock calldata l, bytes calldata preimage) external nonReentrant {
        if (preimage.length != 32) revert InvalidPreimageLength(preimage.length);
        bytes32 secret = bytes32(preimage);
        bytes32 lockId = _lockId(l);
        uint256 status = _statusOf(lockId);
        if (status != uint256(Status.Open)) revert LockNotOpen(lockId, Status(status));
        if (block.timestamp >= l.timelock) revert LockExpired(lockId, l.timelock);
        if (sha256(abi.encodePacked(secret)) != l.hashlock) revert HashlockMismatch(lockId);
        _setStatus(lockId, Status.Claimed);
        titles.transferFrom(address(this), l.buyer, l.tokenId);
        emit Claimed(lockId, secret);
    }

    /// @notice Return the title to the seller; callable by anyone at or after the timelock.
    function refund(Lock calldata l) external nonReentrant {
        bytes32 lockId = _lockId(l);
        uint256 status = _statusOf(lockId);
        if (status != uint256(Status.Open)) revert LockNotOpen(lockId, Status(status));
        if (block.timestamp < l.timelock) revert LockNotExpired(lockId, l.timelock);
        _setStatus(lockId, Status.Refunded);
        titles.transferFrom(address(this), l.seller, l.tokenId);
        emit Refunded(lockId);
    }

    /// @notice Status of a lock id: None (never created), Open, Claimed or Refunded.
    function statusOf(bytes32 lockId) external view returns (Status) {
        return Status(_statusOf(lockId));
    }

    /// @notice The id of a lock with these parameters on this contract and chain.
    function lockIdOf(Lock calldata l) external view returns (bytes32) {
        return _lockId(l);
    }

    function _lockId(Lock memory l) private view returns (bytes32) {
        return keccak256(abi.encode(block.chainid, address(this), l));
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
}
