"""One complete DvP swap driven directly through the contracts on the in-process devnet.

What the relayer will automate, spelled out step by step: the buyer locks the payment, the
seller checks that lock and locks the title, the buyer takes delivery with the secret (which
the business chain now publishes), and the secret claims the payment for the seller. With
`take_delivery=False` the buyer never performs and both legs go back to their owners once
their timelocks pass. Every step is reported as a timeline entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from gateway.chain.client import Receipt
from gateway.chain.devnet import BUYER, ISSUER, RELAYER, SELLER, Devnet
from gateway.chain.htlc import decode_receipt
from gateway.domain.locks import LockClaimed, hashlock_of, new_secret

MAX_UINT256 = 2**256 - 1


@dataclass(frozen=True)
class TimelineEntry:
    chain: str
    block: int
    tx_hash: str
    what: str


@dataclass(frozen=True)
class SwapResult:
    timeline: tuple[TimelineEntry, ...]
    buyer_paid: int  # payment units that left the buyer
    seller_received: int
    title_owner: str
    token_id: int


class SwapFailed(RuntimeError):
    pass


def run_swap(devnet: Devnet, amount: int = 250_000_00, *, take_delivery: bool = True,
             delivery_window: int = 3_600, margin: int = 3_600,
             report: Callable[[TimelineEntry], None] | None = None) -> SwapResult:
    """Run one swap; `amount` is in integer payment-token units (2 decimals)."""
    buyer, seller = devnet.account(BUYER), devnet.account(SELLER)
    relayer, issuer = devnet.account(RELAYER), devnet.account(ISSUER)
    pay, biz = devnet.payment.client, devnet.business.client
    token, titles = devnet.payment_token, devnet.titles
    timeline: list[TimelineEntry] = []

    def step(chain: str, receipt: Receipt, what: str) -> Receipt:
        if not receipt.succeeded:
            raise SwapFailed(f"{what}: transaction {receipt.tx_hash.hex()} reverted")
        entry = TimelineEntry(chain, receipt.block_number, "0x" + receipt.tx_hash.hex(), what)
        timeline.append(entry)
        if report:
            report(entry)
        return receipt

    def balance(address: str) -> int:
        return token.functions.balanceOf(address).call()

    buyer_before, seller_before = balance(buyer.address), balance(seller.address)
    trade_id = new_secret()  # 32 random bytes
    document_hash = hashlib.sha256(b"bill of lading for trade " + trade_id.hex().encode()).digest()
    receipt = step("business", biz.transact(issuer, to=titles.address, gas=300_000,
                                            data=titles.encode_abi("issue", [seller.address,
                                                                             document_hash])),
                   "carrier issues the bill of lading to the seller")
    token_id = titles.functions.issuedCount().call()

    secret = new_secret()
    hashlock = hashlock_of(secret)
    t_deliver = devnet.business.next_block_timestamp() + delivery_window
    t_pay = max(devnet.payment.next_block_timestamp(), t_deliver) + margin

    step("payment", pay.transact(buyer, to=token.address, gas=100_000,
                                 data=token.encode_abi("approve", [devnet.payment_htlc.address,
                                                                   MAX_UINT256])),
         "buyer approves the payment HTLC")
    receipt, payment_lock = devnet.payment_htlc.lock(buyer, seller.address, amount, hashlock,
                                                     t_pay)
    step("payment", receipt, f"buyer locks {amount} units for the seller until {t_pay}")

    # The seller checks the payment lock on chain before delivering against it.
    if devnet.payment_htlc.status(devnet.payment_htlc.lock_id(payment_lock)) != 1:
        raise SwapFailed("payment lock not found open on chain")
    step("business", biz.transact(seller, to=titles.address, gas=100_000,
                                  data=titles.encode_abi("approve", [devnet.delivery_htlc.address,
                                                                     token_id])),
         "seller approves the delivery HTLC for the title")
    receipt, delivery_lock = devnet.delivery_htlc.lock(seller, buyer.address, token_id,
                                                       document_hash, trade_id, hashlock,
                                                       t_deliver)
    step("business", receipt, f"seller locks title #{token_id} for the buyer until {t_deliver}")

    if take_delivery:
        receipt = step("business", devnet.delivery_htlc.claim(buyer, delivery_lock, secret),
                       "buyer takes delivery: title to buyer, secret published")
        revealed = [e for e in decode_receipt(receipt, devnet.delivery_htlc.address,
                                              biz.chain_id) if isinstance(e, LockClaimed)]
        step("payment", devnet.payment_htlc.claim(relayer, payment_lock, revealed[0].preimage),
             "relayer carries the secret over: payment released to the seller")
    else:
        devnet.business.set_next_block_timestamp(t_deliver)
        step("business", devnet.delivery_htlc.refund(relayer, delivery_lock),
             "delivery deadline passed: title back to the seller")
        devnet.payment.set_next_block_timestamp(t_pay)
        step("payment", devnet.payment_htlc.refund(relayer, payment_lock),
             "payment deadline passed: payment back to the buyer")

    return SwapResult(
        timeline=tuple(timeline),
        buyer_paid=buyer_before - balance(buyer.address),
        seller_received=balance(seller.address) - seller_before,
        title_owner=titles.functions.ownerOf(token_id).call(),
        token_id=token_id,
    )
