"""Addresses and signing keys: what the layers above need of accounts, without the EVM libraries.

Importing this module loads nothing of web3 or eth-account: configuration (`Settings()`) and
the API's request schemas validate addresses with it, and they must not pay for loading the
chain library. eth-utils (checksums) and eth-account (keys) are imported by the functions that
use them, on first use.

`Signer` is the type of a local signing key (eth-account's LocalAccount: `.address`, `.key`),
for type hints above this package; make one with `load_account` or `new_account`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

__all__ = ["Signer", "checksum_address", "is_address", "load_account", "new_account",
           "to_checksum"]

Signer: TypeAlias = "LocalAccount"


def is_address(value: Any) -> bool:
    """Whether `value` is an address: 40 hex digits (0x-prefixed or not, any case; a mixed-case
    spelling is not checked here, see `checksum_address`) or 20 bytes."""
    from eth_utils import is_address as _is_address

    return _is_address(value)


def to_checksum(value: str | bytes) -> str:
    """`value` (an address) in its EIP-55 checksummed spelling; ValueError when it is none.
    Remembered: a gateway meets few addresses, each many times (every proposal checks its
    parties' and its title owner's), and each spelling costs a keccak."""
    return _checksummed(value if isinstance(value, str) else bytes(value))


@functools.lru_cache(maxsize=4096)
def _checksummed(value: str | bytes) -> str:
    from eth_utils import to_checksum_address

    return to_checksum_address(value)


def checksum_address(value: str) -> str:
    """`value` as a checksummed address. A mixed-case spelling is an EIP-55 checksum and must be
    the right one (a typo in it is refused, never silently "corrected"); all lower- or all
    upper-case hex carries no checksum and is accepted. ValueError says what is wrong."""
    if not isinstance(value, str) or not is_address(value):
        raise ValueError("must be a 0x-prefixed 20-byte address")
    checksummed = to_checksum(value)
    digits = value[2:] if value[:2] in ("0x", "0X") else value
    if digits not in (digits.lower(), digits.upper()) and digits != checksummed[2:]:
        raise ValueError("mixed-case address with a wrong EIP-55 checksum: check it for a "
                         "typo, or give it all in one case")
    return checksummed


def load_account(key: str | bytes) -> Signer:
    """The signing key `key` (32 bytes, or 0x and 64 hex digits). eth-account's errors for a
    key that is none (ValueError and others) are raised as they are: never echo the key."""
    from eth_account import Account

    return Account.from_key(key)


def new_account() -> Signer:
    """A new random signing key (a managed enterprise's account)."""
    from eth_account import Account

    return Account.create()


def private_key(account: Signer) -> bytes:
    """The 32 bytes of `account`'s key (to store it encrypted)."""
    return bytes(account.key)
