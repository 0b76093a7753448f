"""`ChainClient.calls` and `ChainClient.receipts` on a JSON-RPC node: one batch request per
`CALL_BATCH` reads, answers in order, an error answer raised (as one request's would be), no
request for nothing to read. A fake provider stands in for the node."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from gateway.chain.client import CALL_BATCH, ChainClient, RPCError

TX = "0x" + "ab" * 32
BLOCK = "0x" + "cd" * 32


class FakeNode:
    endpoint_uri = "http://node.invalid"  # a JSON-RPC provider, as far as ChainClient is told

    def __init__(self, answer) -> None:  # noqa: ANN001 - (method, params) -> answer
        self.answer = answer
        self.batches: list[list[tuple[str, list[Any]]]] = []

    def make_batch_request(self, requests: list[tuple[str, list[Any]]]) -> list[dict]:
        self.batches.append(requests)
        return [{"jsonrpc": "2.0", "id": i, **self.answer(method, params)}
                for i, (method, params) in enumerate(requests)]


def _client(node: FakeNode) -> ChainClient:
    return ChainClient(SimpleNamespace(provider=node), 1)  # type: ignore[arg-type]


def _receipt(tx_hash: str) -> dict[str, Any]:
    return {"transactionHash": tx_hash, "blockNumber": "0x7", "blockHash": BLOCK,
            "status": "0x1", "gasUsed": "0x5208", "contractAddress": None, "logs": []}


def test_calls_are_one_batch_per_call_batch_in_order() -> None:
    node = FakeNode(lambda _m, params: {"result": "0x" + params[0]["data"][2:].rjust(64, "0")})
    calls = [("0x" + "11" * 20, i.to_bytes(4, "big")) for i in range(CALL_BATCH + 3)]
    results = _client(node).calls(calls)
    assert [len(b) for b in node.batches] == [CALL_BATCH, 3]
    assert {m for b in node.batches for m, _ in b} == {"eth_call"}
    assert all(params[1] == "latest" for b in node.batches for _, params in b)
    assert [int.from_bytes(r, "big") for r in results] == list(range(CALL_BATCH + 3))


def test_receipts_in_order_none_for_unmined() -> None:
    mined = {"0x" + "01" * 32, "0x" + "03" * 32}
    node = FakeNode(lambda _m, params: {"result": _receipt(params[0]) if params[0] in mined
                                        else None})
    hashes = [bytes([i]) * 32 for i in (1, 2, 3)]
    found = _client(node).receipts(hashes)
    assert len(node.batches) == 1
    assert [r.tx_hash if r else None for r in found] == [hashes[0], None, hashes[2]]
    assert found[0] is not None and found[0].block_number == 7 and found[0].succeeded


def test_an_error_answer_raises() -> None:
    node = FakeNode(lambda _m, params: {"error": {"code": -32000, "message": "boom"}}
                    if params[0] == TX else {"result": None})
    with pytest.raises(RPCError, match="boom"):
        _client(node).receipts([bytes(32), bytes.fromhex(TX[2:])])


def test_a_batch_refused_whole_raises() -> None:
    class Refusing(FakeNode):
        def make_batch_request(self, requests):  # noqa: ANN001, ANN202
            return {"jsonrpc": "2.0", "id": None, "error": {"message": "batch too large"}}

    with pytest.raises(RPCError, match="batch too large"):
        _client(Refusing(lambda *_: {})).calls([("0x" + "11" * 20, b"\x01")])


def test_nothing_to_read_makes_no_request() -> None:
    node = FakeNode(lambda *_: {"result": None})
    assert _client(node).calls([]) == [] and _client(node).receipts([]) == []
    assert node.batches == []
