"""The asset contracts and HTLCs as the layers above use them: calldata to sign and reads.

Everything above `gateway.chain` asks here instead of holding a web3 contract: the API's
self-custody instructions (`approve`, `lock`, `claim` calldata for a party's wallet to sign)
and its balances, the demo and the swap walkthrough (`mint`, `issue`), the CLI's check of which
assets the HTLCs are bound to. Calldata is plain bytes (the 4-byte selector and the ABI-encoded
arguments, what web3's `encode_abi` gives as hex); reads go through `ChainClient.call` at the
latest block, so a revert raises `RevertError`. Addresses come back checksummed.

The HTLCs' own calldata (lock, claim, refund) is `gateway.chain.htlc`'s, re-exported here.
"""

from __future__ import annotations

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import keccak

from gateway.chain.client import ChainClient, checksum
from gateway.chain.htlc import (
    DELIVERY_LOCK_TUPLE,
    delivery_claim_calldata,
    delivery_lock_calldata,
    payment_lock_calldata,
)
from gateway.contracts import load_artifact
from gateway.domain.locks import DeliveryLock

__all__ = [
    "DELIVERY_CLAIM_SELECTOR", "decode_delivery_claim", "delivery_claim_template",
    "delivery_lock_calldata", "htlc_titles", "htlc_token", "payment_lock_calldata",
    "title_approve_calldata", "title_approved", "title_count", "title_issue_calldata",
    "title_owner", "titles_issued", "token_allowance", "token_approve_calldata",
    "token_balance", "token_mint_calldata",
]

DELIVERY_CLAIM_SELECTOR = keccak(text=f"claim({DELIVERY_LOCK_TUPLE},bytes)")[:4]


def _calldata(signature: str, types: list[str], *args: object) -> bytes:
    return keccak(text=signature)[:4] + abi_encode(types, list(args))


# --- the payment token (PaymentToken, ERC-20) ---------------------------------------------------


def token_approve_calldata(spender: str, amount: int) -> bytes:
    """`approve(spender, amount)`: `spender` may take up to `amount` of the signer's tokens."""
    return _calldata("approve(address,uint256)", ["address", "uint256"], spender, amount)


def token_mint_calldata(to: str, amount: int) -> bytes:
    """`mint(to, amount)` (the token issuer only): new tokens for `to`."""
    return _calldata("mint(address,uint256)", ["address", "uint256"], to, amount)


def token_allowance(client: ChainClient, token: str, owner: str, spender: str) -> int:
    """What `spender` may still take of `owner`'s tokens (`allowance`)."""
    return int(client.call(client.contract(token, load_artifact("PaymentToken")), "allowance",
                           owner, spender))


def token_balance(client: ChainClient, token: str, owner: str) -> int:
    """`owner`'s balance of the token, in base units (`balanceOf`)."""
    return int(client.call(client.contract(token, load_artifact("PaymentToken")), "balanceOf",
                           owner))


# --- the title registry (TitleDocument, ERC-721) ------------------------------------------------


def title_approve_calldata(spender: str, token_id: int) -> bytes:
    """`approve(spender, token_id)`: `spender` may take title `token_id` of the signer."""
    return _calldata("approve(address,uint256)", ["address", "uint256"], spender, token_id)


def title_issue_calldata(owner: str, document_hash: bytes) -> bytes:
    """`issue(owner, document_hash)` (the registry's issuer only): a new title for `owner`,
    bound to the document hash; its token id is the registry's `issuedCount` after it."""
    return _calldata("issue(address,bytes32)", ["address", "bytes32"], owner, document_hash)


def title_approved(client: ChainClient, titles: str, owner: str, spender: str,
                   token_id: int) -> bool:
    """May `spender` take title `token_id` of `owner`: approved for all `owner`'s titles
    (`isApprovedForAll`, read first) or for this one (`getApproved`)?"""
    registry = client.contract(titles, load_artifact("TitleDocument"))
    if client.call(registry, "isApprovedForAll", owner, spender):
        return True
    return checksum(client.call(registry, "getApproved", token_id)) == checksum(spender)


def title_count(client: ChainClient, titles: str, owner: str) -> int:
    """How many titles `owner` holds (`balanceOf`)."""
    return int(client.call(client.contract(titles, load_artifact("TitleDocument")),
                           "balanceOf", owner))


def titles_issued(client: ChainClient, titles: str) -> int:
    """How many titles the registry has issued (`issuedCount`): the latest one's token id."""
    return int(client.call(client.contract(titles, load_artifact("TitleDocument")),
                           "issuedCount"))


def title_owner(client: ChainClient, titles: str, token_id: int) -> str:
    """Who holds title `token_id` (`ownerOf`; a title never issued reverts: RevertError)."""
    return checksum(client.call(client.contract(titles, load_artifact("TitleDocument")),
                                "ownerOf", token_id))


# --- the HTLCs ---------------------------------------------------------------------------------


def htlc_token(client: ChainClient, htlc: str) -> str:
    """The payment token a PaymentHTLC locks (`token()`, fixed at its deployment)."""
    return checksum(client.call(client.contract(htlc, load_artifact("PaymentHTLC")), "token"))


def htlc_titles(client: ChainClient, htlc: str) -> str:
    """The title registry a DeliveryHTLC locks (`titles()`, fixed at its deployment)."""
    return checksum(client.call(client.contract(htlc, load_artifact("DeliveryHTLC")),
                                "titles"))


def delivery_claim_template(lock: DeliveryLock) -> bytes:
    """DeliveryHTLC `claim(lock, secret)` calldata with 32 zero bytes for the secret: for a
    self-custody buyer, who puts its secret in the last 32 bytes before signing."""
    return delivery_claim_calldata(lock, bytes(32))


def decode_delivery_claim(data: bytes) -> tuple[DeliveryLock, bytes]:
    """The lock and the preimage of DeliveryHTLC `claim` calldata (a template's placeholder, or
    a secret). ValueError (or eth-abi's decoding error) when `data` is no such claim."""
    if data[:4] != DELIVERY_CLAIM_SELECTOR:
        raise ValueError("not a DeliveryHTLC claim")
    fields, preimage = abi_decode([DELIVERY_LOCK_TUPLE, "bytes"], data[4:])
    seller, buyer, token_id, document_hash, trade_id, hashlock, timelock = fields
    return DeliveryLock(checksum(seller), checksum(buyer), token_id, document_hash, trade_id,
                        hashlock, timelock), bytes(preimage)
