"""Requests straight to a JSON-RPC node, alone or in batches, their results as the node sent
them (hex strings): web3's result formatters cost more than the request itself on a receipt or
a page of logs, and a batch makes a few hundred reads one round trip. Only for JSON-RPC
endpoints; eth-tester, which takes no batches, goes through web3."""

from __future__ import annotations

from typing import Any

from web3 import Web3

from gateway.chain.receipts import hex_bytes

CALL_BATCH = 500  # eth_calls per JSON-RPC batch request (nodes cap a batch's size)


class RPCError(RuntimeError):
    """A JSON-RPC node answered a request with an error."""


def request(w3: Web3, method: str, params: list[Any]) -> Any:
    """One request, its result as the node sent it; an error answer raises `RPCError`."""
    response = w3.provider.make_request(method, params)  # type: ignore[arg-type]
    if "error" in response:
        raise RPCError(f"{method}: {response['error']}")
    return response.get("result")


def batch(w3: Web3, requests: list[tuple[str, list[Any]]], what: str) -> list[Any]:
    """Batch requests (`CALL_BATCH` a request): each request's result as the node sent it, in
    order. An error answer raises `RPCError`, as one request's error would (web3's, or
    `request`'s)."""
    results: list[Any] = []
    for start in range(0, len(requests), CALL_BATCH):
        chunk = requests[start:start + CALL_BATCH]
        answers = w3.provider.make_batch_request(chunk)  # type: ignore[arg-type]
        if not isinstance(answers, list) or len(answers) != len(chunk):
            raise RPCError(f"batch {what}: {answers!r}"[:500])
        for answer in answers:
            if "error" in answer:
                raise RPCError(f"batch {what}: {answer['error']}"[:500])
            results.append(answer.get("result"))
    return results


def calls_at_block(w3: Web3, calls: list[tuple[str, bytes]],
                   block: int) -> tuple[bytes, list[bytes]] | None:
    """`eth_call` of every (to, data) at block number `block`, one batch request per
    `CALL_BATCH` calls, each with the block's header: that block's hash and the results, in
    order; None when the node cannot read at that block (above its head, its state pruned) or
    the block at that height changed between two requests."""
    number = hex(block)
    hashes: set[str] = set()
    results: list[bytes] = []
    for start in range(0, max(len(calls), 1), CALL_BATCH):
        requests: list[tuple[str, list[Any]]] = [("eth_getBlockByNumber", [number, False])]
        requests += [("eth_call", [{"to": to, "data": "0x" + data.hex()}, number])
                     for to, data in calls[start:start + CALL_BATCH]]
        answers = w3.provider.make_batch_request(requests)  # type: ignore[arg-type]
        if not isinstance(answers, list) or len(answers) != len(requests):
            raise RPCError(f"batch eth_call: {answers!r}"[:500])
        header = answers[0].get("result")
        if header is None or any("error" in a for a in answers):
            return None  # no such block, or no state for it: the caller reads elsewhere
        hashes.add(header["hash"])
        results += [hex_bytes(a["result"]) for a in answers[1:]]
    if len(hashes) != 1:
        return None  # the block at that height changed between two requests
    return hex_bytes(hashes.pop()), results


def cache_chain_id(w3: Web3) -> None:
    """web3's validation middleware asks the node for its chain id before and after every
    `eth_call` (two `eth_chainId` requests per call, to check a `chainId` field our calls
    never carry): the provider keeps the node's answer instead (web3's request cache, for
    `eth_chainId` alone). A provider configured with a request cache of its own is left
    as it is."""
    provider = w3.provider
    if not getattr(provider, "cache_allowed_requests", True):
        provider.cacheable_requests = {"eth_chainId"}  # type: ignore[union-attr,assignment]
        provider.cache_allowed_requests = True  # type: ignore[union-attr]
