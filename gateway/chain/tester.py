"""In-process EVM chains (eth-tester + py-evm) that behave like distinct networks.

Out of the box every eth-tester chain has the same chain id (131277322940537), web3's
EthereumTesterProvider answers `eth_chainId` with that constant, and py-evm never checks the
chain id a transaction was signed for: a transaction signed for one in-process chain would be
accepted by the other. Here each chain gets its own id, used by the CHAINID opcode and by
`eth_chainId`/`net_version` alike, and a transaction signed for any other chain (or for no chain:
pre-EIP-155) is refused before it executes.
"""

from __future__ import annotations

import copy
import threading
from functools import cache

from eth.abc import SignedTransactionAPI
from eth.chains.base import MiningChain
from eth_tester import EthereumTester, PyEVMBackend
from eth_tester.backends.pyevm.serializers import (
    serialize_transaction,
    serialize_transaction_receipt,
)
from eth_utils import ValidationError
from web3 import EthereumTesterProvider, Web3


class WrongChainIdError(ValidationError):
    """A transaction signed for another chain (or for none) was sent to this one."""


@cache
def _chain_class(base: type[MiningChain], chain_id: int) -> type[MiningChain]:
    def apply_transaction(self: MiningChain, transaction: SignedTransactionAPI):  # type: ignore[no-untyped-def]
        signed_for = getattr(transaction, "chain_id", None)
        if signed_for != self.chain_id:
            raise WrongChainIdError(
                f"transaction signed for chain id {signed_for}, this chain is {self.chain_id}"
            )
        return base.apply_transaction(self, transaction)

    return type(
        f"TesterChain{chain_id}",
        (base,),
        {"chain_id": chain_id, "apply_transaction": apply_transaction},
    )


def _find_transaction(chain: MiningChain, transaction_hash: bytes):  # noqa: ANN202
    """(block, transaction, index) by hash through py-evm's canonical transaction index.

    eth-tester walks every block from the head down instead, which makes each receipt lookup
    (and `eth_getLogs`, one lookup per transaction in range) linear in the chain's length.
    """
    from eth.exceptions import TransactionNotFound as EVMTransactionNotFound
    from eth_tester.exceptions import TransactionNotFound

    pending = chain.get_block()
    for index, transaction in enumerate(pending.transactions):
        if transaction.hash == transaction_hash:
            return pending, transaction, index
    try:
        number, index = chain.chaindb.get_transaction_index(transaction_hash)
    except EVMTransactionNotFound:
        raise TransactionNotFound(f"no transaction 0x{transaction_hash.hex()}") from None
    block = chain.get_canonical_block_by_number(number)
    return block, block.transactions[index], index


class ChainIdPyEVMBackend(PyEVMBackend):
    """A py-evm backend whose chain has `chain_id` and refuses other chains' transactions.
    Transaction and receipt lookups use the chain's index (constant time, not a scan)."""

    def get_transaction_by_hash(self, transaction_hash):  # noqa: ANN001, ANN201
        block, transaction, index = _find_transaction(self.chain, transaction_hash)
        return serialize_transaction(block, transaction, index, self._is_pending(block))

    def get_transaction_receipt(self, transaction_hash):  # noqa: ANN001, ANN201
        block, transaction, index = _find_transaction(self.chain, transaction_hash)
        return serialize_transaction_receipt(block, block.get_receipts(self.chain.chaindb),
                                             transaction, index, self._is_pending(block),
                                             self.chain.get_vm())

    def _is_pending(self, block) -> bool:  # noqa: ANN001
        return block.number == self.chain.get_block().number

    def __init__(self, chain_id: int, **kwargs: object) -> None:
        if not 0 < chain_id < 2**64:
            raise ValueError(f"chain id must be in 1..2**64-1, got {chain_id}")
        self.chain_id = chain_id
        super().__init__(**kwargs)

    def reset_to_genesis(self, *args: object, **kwargs: object) -> None:
        super().reset_to_genesis(*args, **kwargs)
        # Swap the class (not just an attribute): eth-tester rebuilds the chain from its class
        # when a snapshot at genesis is restored, and the id must survive that.
        self.chain.__class__ = _chain_class(type(self.chain), self.chain_id)


class IndexedEthereumTester(EthereumTester):
    """eth_getLogs over a block range reads each block's receipts once, straight from
    py-evm, and keeps only the wanted contract's logs; eth-tester fetches and normalises a
    full receipt per transaction through its public API, several times slower."""

    def get_logs(self, from_block=None, to_block=None, address=None, topics=None):  # noqa: ANN001, ANN201
        if topics or not isinstance(from_block, int) or not isinstance(to_block, int) or \
                address is None:
            return super().get_logs(from_block, to_block, address, topics)
        from eth_tester.backends.pyevm.serializers import serialize_log
        from eth_utils import to_canonical_address

        wanted = {to_canonical_address(a) for a in ([address] if isinstance(address, str)
                                                    else address)}
        chain = self.backend.chain
        head = chain.get_block().number - 1
        logs = []
        for number in range(max(0, from_block), min(to_block, head) + 1):
            block = chain.get_canonical_block_by_number(number)
            receipts = block.get_receipts(chain.chaindb)
            for tx_index, (tx, receipt) in enumerate(zip(block.transactions, receipts,
                                                         strict=True)):
                for log_index, log in enumerate(receipt.logs):
                    if log.address in wanted:
                        raw = serialize_log(block, tx, tx_index, log, log_index, False)
                        logs.append(self.normalizer.normalize_outbound_log_entry(raw))
        return tuple(logs)


class SerializedTesterProvider(EthereumTesterProvider):
    """eth-tester is not thread-safe; the API's worker threads and the relayer share a chain,
    so requests are served one at a time, like a node's single writer."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self._lock = threading.RLock()

    def make_request(self, method, params):  # noqa: ANN001, ANN201
        with self._lock:
            return super().make_request(method, params)


def tester_provider(tester: EthereumTester, chain_id: int) -> EthereumTesterProvider:
    """An EthereumTesterProvider that reports `chain_id` instead of eth-tester's constant."""
    from web3.providers.eth_tester.defaults import API_ENDPOINTS, static_return

    endpoints = copy.copy(API_ENDPOINTS)
    endpoints["eth"] = {**API_ENDPOINTS["eth"], "chainId": static_return(chain_id)}
    endpoints["net"] = {**API_ENDPOINTS["net"], "version": static_return(str(chain_id))}
    return SerializedTesterProvider(tester, api_endpoints=endpoints)


def start_tester_chain(chain_id: int, num_accounts: int = 10) -> tuple[EthereumTester, Web3]:
    """Start one in-process chain; returns the tester (time travel, snapshots) and a Web3."""
    genesis_state = PyEVMBackend.generate_genesis_state(num_accounts=num_accounts)
    backend = ChainIdPyEVMBackend(chain_id, genesis_state=genesis_state)
    tester = IndexedEthereumTester(backend)
    return tester, Web3(tester_provider(tester, chain_id))
