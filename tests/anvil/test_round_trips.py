"""Round trips on the hot path: the HTTP requests one relayer makes to settle trades on anvil.

Twenty trades with a managed buyer and a managed seller, so the relayer makes every
transaction of them: the payment lock (buyer's key), the delivery lock (seller's key), the
buyer's delivery claim and the payment claim (`claimMany`). Measured on this scenario (six
relayer steps): 44.0 requests a trade with a `statusOf` call per effect and a receipt lookup
per transaction, each `eth_call` costing two `eth_chainId` requests more (web3's validation
middleware); 32.2 with the executor's status checks and receipt reads as one JSON-RPC batch
each per pass and chain (`statuses_of`, `ChainClient.receipts`); 16.2 with the chain id
also kept by the provider (`ChainClient`).

The gateway gets its own HTTP providers, which count every request (a batch is one): the
parties' and the test's own reads go through the devnet's clients, not counted.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from web3 import Web3

from gateway.chain.client import ChainClient
from gateway.chain.devnet import BUYER, RELAYER, SELLER
from gateway.chain.transport import NodeProvider
from gateway.domain.trade import ActionTakeDelivery
from gateway.engine.build import build_gateway
from tests.integration.harness import AMOUNT, TEST_POLICY, World

TRADES = 20
# Measured: 16.2 requests a trade (44.0 before batching and the chain id cache, 32.2 with
# batching alone). The bound leaves room for a few relayer steps more (about ten requests
# each), not for a request per effect again.
MAX_REQUESTS_PER_TRADE = 20


class CountingProvider(NodeProvider):
    """An HTTP provider that counts its requests (one per HTTP POST: a batch is one)."""

    def __init__(self, url: str) -> None:
        super().__init__(url, timeout=30)
        self.requests = 0
        self.methods: Counter[str] = Counter()

    def _make_request(self, method: Any, request_data: bytes) -> Any:
        # Below web3's request cache: only what goes out to the node.
        self.requests += 1
        self.methods[method] += 1
        return super()._make_request(method, request_data)

    def make_batch_request(self, requests: list[tuple[Any, Any]]) -> Any:
        self.requests += 1
        self.methods["batch:" + "+".join(sorted({m for m, _ in requests}))] += 1
        return super().make_batch_request(requests)


def _counting_client(chain) -> tuple[ChainClient, CountingProvider]:  # noqa: ANN001
    provider = CountingProvider(chain.node.url)
    return ChainClient(Web3(provider), chain.chain_id, chain.name), provider


def test_relayer_settles_managed_trades_in_few_requests_per_trade(anvil_devnet,
                                                                   database_url) -> None:
    devnet = anvil_devnet
    buyer, seller = devnet.account(BUYER), devnet.account(SELLER)
    payment, pay_counter = _counting_client(devnet.payment)
    business, biz_counter = _counting_client(devnet.business)
    gateway = build_gateway(
        database_url=database_url, payment=payment, business=business,
        payment_htlc=devnet.info.payment.htlc, delivery_htlc=devnet.info.business.htlc,
        relayer_key=devnet.account(RELAYER), policy=TEST_POLICY,
        managed_keys={buyer.address: buyer, seller.address: seller})
    world = World(devnet, gateway)  # approvals by the parties: the relayer sends none
    before = {a: world.token_balance(a) for a in (buyer.address, seller.address)}
    trades = [world.agree(managed_buyer=True, managed_seller=True) for _ in range(TRADES)]
    counters = (pay_counter, biz_counter)
    for counter in counters:  # the relayer's requests from here on
        counter.requests = 0
        counter.methods.clear()

    relayer = gateway.relayer
    relayer.run_until(lambda: all(world.phase(t) == "delivery_locked" for t in trades), 20)
    for trade in trades:
        gateway.dispatcher.apply_action(ActionTakeDelivery(trade.trade_id, trade.secret))
    relayer.run_until(lambda: all(world.phase(t) == "settled" for t in trades), 20)

    # Settled on chain, by transactions the relayer made.
    assert world.token_balance(buyer.address) == before[buyer.address] - TRADES * AMOUNT
    assert world.token_balance(seller.address) == before[seller.address] + TRADES * AMOUNT
    assert world.token_balance(devnet.payment_htlc.address) == 0
    assert all(world.title_owner(t) == buyer.address for t in trades)
    assert all(not world.state(t).pending for t in trades)

    total = sum(c.requests for c in counters)
    per_trade = total / TRADES
    methods = pay_counter.methods + biz_counter.methods
    print(f"\nrelayer steps {relayer.steps}, requests {total}, per trade {per_trade:.1f}: "
          f"{dict(methods.most_common())}")
    # The executor's status checks and receipt reads: one batch per pass and chain, never one
    # request per lock or per transaction.
    assert methods["eth_getTransactionReceipt"] == 0, methods
    assert methods["eth_chainId"] <= 4, methods  # asked once per provider, not per call
    assert per_trade <= MAX_REQUESTS_PER_TRADE, (per_trade, dict(methods.most_common()))


def test_a_proposal_reads_the_business_chain_in_one_request(anvil_devnet) -> None:
    """Chain time and the titles a proposal offers: one batch request to the business node
    (its latest header rides with the titles' calls), answering as `head` and `read_title`
    do. A title never issued fails the batch: then each is read alone, the time as well."""
    from gateway.chain.calls import title_issue_calldata
    from gateway.chain.devnet import ISSUER
    from gateway.chain.titles import Title, read_title, read_titles_and_time

    devnet = anvil_devnet
    business, counter = _counting_client(devnet.business)
    registry, seller = devnet.titles.address, devnet.account(SELLER).address
    docs = [bytes([n]) * 32 for n in (1, 2)]
    for doc in docs:
        assert devnet.business.client.transact(
            devnet.account(ISSUER), to=registry, gas=300_000,
            data=title_issue_calldata(seller, doc)).succeeded
    first = devnet.titles.functions.issuedCount().call() - 1
    devnet.business.client.w3.provider.make_request("evm_increaseTime", [1000])
    devnet.business.client.w3.provider.make_request("evm_mine", [])
    counter.requests = 0
    now, titles = read_titles_and_time(business, registry, [first + 1, first])
    assert counter.requests == 1 and counter.methods == {
        "batch:eth_call+eth_getBlockByNumber": 1}
    assert now == business.head()[0]
    assert titles == [Title(first + 1, seller, docs[1]), Title(first, seller, docs[0])]
    assert titles == [read_title(business, registry, t) for t in (first + 1, first)]
    assert read_titles_and_time(business, registry, [first, 10**9]) == (now, [titles[1], None])
