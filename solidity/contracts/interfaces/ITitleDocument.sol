// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {IERC721} from "@openzeppelin/contracts/token/ERC721/IERC721.sol";

/// @notice An ERC-721 document of title (electronic bill of lading, warehouse receipt) whose
/// every token carries the hash of the trade documents it represents.
interface ITitleDocument is IERC721 {
    function documentHash(uint256 tokenId) external view returns (bytes32);
}
