"""A batch of proposals reads its titles at once (`gateway.chain.titles.read_titles_and_time`:
one JSON-RPC batch request on a node), with the answers `read_title` gives one by one, including
for a title never issued (its `ownerOf` reverts: then each is read alone)."""

from __future__ import annotations

import hashlib

from gateway.chain.calls import title_issue_calldata
from gateway.chain.devnet import BUYER, ISSUER, SELLER
from gateway.chain.titles import Title, read_title, read_titles_and_time


def read_titles(client, registry: str, token_ids: list[int]) -> list:  # noqa: ANN001
    return read_titles_and_time(client, registry, token_ids)[1]


def _issue(devnet, owner: str, n: int) -> tuple[int, bytes]:  # noqa: ANN001
    doc = hashlib.sha256(b"document %d" % n).digest()
    client = devnet.business.client
    assert client.transact(devnet.account(ISSUER), to=devnet.titles.address, gas=300_000,
                           data=title_issue_calldata(owner, doc)).succeeded
    return n, doc


def test_titles_read_at_once_answer_as_one_by_one(devnet) -> None:
    seller, buyer = devnet.account(SELLER).address, devnet.account(BUYER).address
    client, registry = devnet.business.client, devnet.titles.address
    issued = [_issue(devnet, owner, n) for n, owner in enumerate([seller, buyer, seller],
                                                                 start=1)]
    expected = [Title(n, owner, doc) for (n, doc), owner in zip(issued, [seller, buyer, seller],
                                                               strict=True)]
    assert read_titles(client, registry, [1, 2, 3]) == expected
    assert read_titles(client, registry, [3, 1]) == [expected[2], expected[0]]
    # a title never issued, and an id no uint256 holds: None, as read_title says
    mixed = [2, 999, 2**256, 1]
    assert read_titles(client, registry, mixed) == [read_title(client, registry, t)
                                                    for t in mixed]
    assert read_titles(client, registry, mixed) == [expected[1], None, None, expected[0]]
    assert read_titles(client, registry, []) == []
