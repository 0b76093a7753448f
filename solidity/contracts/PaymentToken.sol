// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title PaymentToken: a CBDC-like test currency with 2 decimals (1 unit = 1 cent).
/// @notice Only the issuer (the central bank of the test network) mints. Nothing else is
/// privileged: the issuer cannot move or freeze anybody's balance.
contract PaymentToken is ERC20 {
    address public immutable issuer;

    error NotIssuer(address caller);

    constructor(string memory name_, string memory symbol_, address issuer_) ERC20(name_, symbol_) {
        issuer = issuer_;
    }

    function decimals() public pure override returns (uint8) {
        return 2;
    }

    function mint(address to, uint256 amount) external {
        if (msg.sender != issuer) revert NotIssuer(msg.sender);
        _mint(to, amount);
    }
}
