// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {ERC721} from "@openzeppelin/contracts/token/ERC721/ERC721.sol";
import {ITitleDocument} from "./interfaces/ITitleDocument.sol";

/// @title TitleDocument: an ERC-721 registry of documents of title for the test network.
/// @notice The issuer (a carrier or warehouse operator) issues a token per document, bound
/// forever to the sha256 of the document bundle. Holders transfer freely; the issuer has no
/// power over issued tokens.
contract TitleDocument is ERC721, ITitleDocument {
    address public immutable issuer;
    uint256 public issuedCount;
    mapping(uint256 tokenId => bytes32) private _documentHash;

    event DocumentIssued(uint256 indexed tokenId, bytes32 indexed documentHash, address indexed holder);

    error NotIssuer(address caller);
    error ZeroDocumentHash();

    constructor(string memory name_, string memory symbol_, address issuer_) ERC721(name_, symbol_) {
        issuer = issuer_;
    }

    /// @notice Issue the next token (ids start at 1) to `to` for the document hashed `docHash`.
    function issue(address to, bytes32 docHash) external returns (uint256 tokenId) {
        if (msg.sender != issuer) revert NotIssuer(msg.sender);
        if (docHash == bytes32(0)) revert ZeroDocumentHash();
        tokenId = ++issuedCount;
        _documentHash[tokenId] = docHash;
        _safeMint(to, tokenId);
        emit DocumentIssued(tokenId, docHash, to);
    }

    /// @notice The document hash of an issued token; reverts for a token never issued.
    function documentHash(uint256 tokenId) external view returns (bytes32) {
        _requireOwned(tokenId);
        return _documentHash[tokenId];
    }
}
