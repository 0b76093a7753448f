"""Which trade a chain log concerns, and on which chain an effect is sent: the keys every
input and effect names (`Route`, `KIND`), decided in one place for the in-memory index of a
batch's trades and for the database alike."""

from __future__ import annotations

from collections.abc import Callable

from gateway.domain.trade import (
    Chain,
    ContractReceive,
    ContractSend,
    ContractSendDeliveryClaim,
    ContractSendDeliveryLock,
    ContractSendDeliveryRefund,
)


def effect_chain(effect: ContractSend) -> Chain:
    if isinstance(effect, ContractSendDeliveryLock | ContractSendDeliveryClaim
                  | ContractSendDeliveryRefund):
        return Chain.BUSINESS
    return Chain.PAYMENT


class RoutingIndex:
    """In-memory routing for the trades loaded in a batch: by hashlock and by lock id."""

    def __init__(self, states) -> None:  # noqa: ANN001
        self.by_hashlock: dict[bytes, bytes] = {}
        self.by_lock: dict[tuple[Chain, bytes], bytes] = {}
        for s in states:
            self.by_hashlock[s.terms.hashlock] = s.trade_id
            for leg in (s.payment, *s.rejected_payments):
                if leg is not None:
                    self.add_lock(Chain.PAYMENT, leg.lock_id, s.trade_id)
            if s.delivery is not None:
                self.add_lock(Chain.BUSINESS, s.delivery.lock_id, s.trade_id)

    def add_lock(self, chain: Chain, lock_id: bytes, trade_id: bytes) -> None:
        self.by_lock[(chain, lock_id)] = trade_id

    def route(self, chain: Chain, inp: ContractReceive) -> bytes | None:
        return route(inp, lambda lock_id: self.by_lock.get((chain, lock_id)),
                     self.by_hashlock.get)


def route(inp: ContractReceive, by_lock: Callable[[bytes], bytes | None],
          by_hashlock: Callable[[bytes], bytes | None]) -> bytes | None:
    """The trade a chain log concerns, by the keys the log gives (`Route`): the one place that
    decides it, over an in-memory index or the database alike."""
    keys = inp.route
    return (keys.lock_id is not None and by_lock(keys.lock_id)) or \
        (keys.hashlock is not None and by_hashlock(keys.hashlock)) or None


def log_keys(inputs: list[ContractReceive]) -> tuple[list[bytes], list[bytes]]:
    """The hashlocks and lock ids a batch's logs route by, to load their trades at once."""
    keys = [inp.route for inp in inputs]
    return ([k.hashlock for k in keys if k.hashlock is not None],
            [k.lock_id for k in keys if k.lock_id is not None])
