"""Reading a title document (TitleDocument, ERC-721) on the business chain: who holds a token
and which document hash it carries. Read at proposal, so a trade is never made for a title that
does not exist, that its seller does not hold, or that is bound to another document."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.chain.client import ChainClient, RevertError, checksum
from gateway.chain.htlc import _Call
from gateway.contracts import load_artifact

__all__ = ["Title", "problems_of", "read_title", "read_titles_and_time"]

UINT256_LIMIT = 2**256


_OWNER_OF, _DOCUMENT_HASH = _Call("ownerOf", ["uint256"]), _Call("documentHash", ["uint256"])


@dataclass(frozen=True)
class Title:
    token_id: int
    owner: str  # checksummed; the DeliveryHTLC while the title is locked there
    document_hash: bytes


def read_title(client: ChainClient, registry: str, token_id: int) -> Title | None:
    """The title `token_id` of the registry at `registry`, read at the latest block; None for a
    token never issued. Other failures (node unreachable, no registry there) raise."""
    if not 0 <= token_id < UINT256_LIMIT:
        return None
    titles = client.contract(registry, load_artifact("TitleDocument"))
    try:
        owner = client.call(titles, "ownerOf", token_id)
        document_hash = client.call(titles, "documentHash", token_id)
    except RevertError as exc:
        if exc.name == "ERC721NonexistentToken":
            return None
        raise
    return Title(token_id, checksum(owner), bytes(document_hash))


def read_titles_and_time(client: ChainClient, registry: str,
                         token_ids: list[int]) -> tuple[int, list[Title | None]]:
    """The chain's time (its latest block's timestamp) and `read_title` of each token id, in
    order, for a batch of proposals: one JSON-RPC batch request on a node
    (`ChainClient.calls_with_time`), the header riding with the calls. A token never issued
    makes its `ownerOf` revert and the batch fail: then each is read alone, as `read_title`
    reads it, and the time on its own."""
    wanted = [t for t in token_ids if 0 <= t < UINT256_LIMIT]
    try:
        now, results = client.calls_with_time([(registry, call) for t in wanted
                                               for call in (_OWNER_OF(t), _DOCUMENT_HASH(t))])
    except Exception:  # noqa: BLE001 - a revert among them (or a node hiccup): one by one
        return client.head()[0], [read_title(client, registry, t) for t in token_ids]
    found = {t: Title(t, checksum("0x" + results[2 * i][12:32].hex()),
                      bytes(results[2 * i + 1][:32]))
             for i, t in enumerate(wanted)}
    return now, [found.get(t) for t in token_ids]


def problems_of(title: Title | None, token_id: int, registry: str, seller: str,
                document_hash: bytes) -> list[tuple[str, str]]:
    """What is wrong with offering title `token_id` (bound to `document_hash`), as read
    (`read_titles_and_time`; None: never issued), for sale by `seller`: (field, message)
    pairs, field "token_id" or "document_hash"; empty if nothing."""
    if title is None:
        return [("token_id", f"title #{token_id} does not exist (not issued by the title "
                             f"registry {checksum(registry)})")]
    if title.owner != checksum(seller):
        return [("token_id", f"title #{token_id} is not held by the seller's business address "
                             f"{checksum(seller)} (held by {title.owner})")]
    if title.document_hash != document_hash:
        return [("document_hash", f"title #{token_id} carries document hash "
                                  f"0x{title.document_hash.hex()}, not 0x{document_hash.hex()}")]
    return []
