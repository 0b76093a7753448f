"""Two in-process chains with every contract deployed: what CI, the demo and the tests run on.

The payment chain holds the CBDC-like PaymentToken and PaymentHTLC; the business chain holds
the TitleDocument registry and DeliveryHTLC. Both use eth-tester's well-known development keys
(the same addresses on both chains, like a real multi-chain account), with fixed roles.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3.contract import Contract

from gateway.chain.client import ChainClient
from gateway.chain.htlc import DeliveryHTLCProxy, PaymentHTLCProxy
from gateway.chain.ids import DEFAULT_BUSINESS_CHAIN_ID, DEFAULT_PAYMENT_CHAIN_ID
from gateway.contracts import load_artifact

DEV_ACCOUNTS = 10
# Role -> index into the development keys.
ISSUER, BUYER, SELLER, RELAYER = 0, 1, 2, 3
INITIAL_BALANCE = 1_000_000_00  # payment-token units (2 decimals): 1,000,000.00 each


# What the development keys are, for every output that shows them or their addresses.
DEV_KEYS_NOTE = (
    f"development keys: the well-known private keys 0x00...01 to 0x00...{DEV_ACCOUNTS:02x} "
    f"(the integers 1 to {DEV_ACCOUNTS} as 32-byte keys, eth-tester's defaults): anyone can "
    "sign with them, so never use them, or send anything of value to their addresses, on a "
    "real chain")


def asset_env(info: DevnetInfo) -> list[str]:
    """The asset contracts as `DVP_*` lines (Settings.payment_token / title_registry)."""
    return [f"DVP_PAYMENT_TOKEN={info.payment.token}",
            f"DVP_TITLE_REGISTRY={info.business.titles}"]


def shared_address_notes(info: DevnetInfo) -> list[str]:
    """Why two contracts can show one address: each chain's contracts are deployed by the
    same issuer key in the same order, and an address is the deployer's and its nonce's, so
    the same address on two chains is two different contracts."""
    notes = []
    for what, one, other in (
            ("the payment token (payment chain) and the title registry (business chain)",
             info.payment.token, info.business.titles),
            ("PaymentHTLC (payment chain) and DeliveryHTLC (business chain)",
             info.payment.htlc, info.business.htlc)):
        if one.lower() == other.lower():
            notes.append(f"{what} share the address {one}: they are different contracts on "
                         f"different chains (chain ids {info.payment.chain_id} and "
                         f"{info.business.chain_id}), deployed by the same key at the same "
                         "nonce")
    return notes


class SameChainIdError(ValueError):
    pass


@dataclass(frozen=True)
class PaymentChainInfo:
    chain_id: int
    token: str
    htlc: str


@dataclass(frozen=True)
class BusinessChainInfo:
    chain_id: int
    titles: str
    htlc: str


@dataclass(frozen=True)
class DevnetInfo:
    """Where everything lives: enough for any client to talk to the devnet."""

    payment: PaymentChainInfo
    business: BusinessChainInfo
    issuer: str
    buyer: str
    seller: str
    relayer: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class InProcessChain:
    """One eth-tester chain: a client for transactions plus control of time and snapshots."""

    def __init__(self, name: str, chain_id: int) -> None:
        self.name = name
        self.chain_id = chain_id
        from gateway.chain.tester import start_tester_chain  # eth-tester + py-evm, on use

        self.tester, w3 = start_tester_chain(chain_id, num_accounts=DEV_ACCOUNTS)
        self.client = ChainClient(w3, chain_id, name)
        self.accounts: list[LocalAccount] = [
            Account.from_key(k.to_bytes()) for k in self.tester.backend.account_keys
        ]

    @property
    def w3(self):  # noqa: ANN201 - web3.Web3
        return self.client.w3

    def next_block_timestamp(self) -> int:
        """The timestamp of the block the next transaction will be mined in."""
        return self.tester.get_block_by_number("pending")["timestamp"]

    def latest_block_timestamp(self) -> int:
        return self.tester.get_block_by_number("latest")["timestamp"]

    def set_next_block_timestamp(self, timestamp: int) -> None:
        """Move chain time forward so that the next transaction is mined at `timestamp`."""
        upcoming = self.next_block_timestamp()
        if timestamp < upcoming:
            raise ValueError(f"the next {self.name} block is already at {upcoming}, "
                             f"after {timestamp}: chain time cannot go back")
        if timestamp > upcoming:
            self.tester.time_travel(timestamp)

    def mine(self, blocks: int = 1) -> None:
        self.tester.mine_blocks(blocks)

    def snapshot(self) -> object:
        return self.tester.take_snapshot()

    def revert(self, snapshot_id: object) -> None:
        """Back to the snapshot: the blocks after it are orphaned (a reorg, once more blocks
        are mined on top)."""
        self.tester.revert_to_snapshot(snapshot_id)
        self.client._nonces.clear()  # noqa: SLF001 - the chain's nonces went back too

    def close(self) -> None:
        """Nothing to stop (in-process); the same surface as an anvil chain."""


class DevChain(Protocol):
    """What a development chain offers (eth-tester `InProcessChain`, anvil `AnvilChain`)."""

    name: str
    chain_id: int
    client: ChainClient
    accounts: list[LocalAccount]

    def next_block_timestamp(self) -> int: ...
    def latest_block_timestamp(self) -> int: ...
    def set_next_block_timestamp(self, timestamp: int) -> None: ...
    def mine(self, blocks: int = 1) -> None: ...
    def snapshot(self) -> object: ...
    def revert(self, snapshot_id: object) -> None: ...
    def close(self) -> None: ...


@dataclass
class Devnet:
    payment: InProcessChain
    business: InProcessChain
    info: DevnetInfo
    payment_token: Contract
    payment_htlc: PaymentHTLCProxy
    titles: Contract
    delivery_htlc: DeliveryHTLCProxy

    def account(self, role: int) -> LocalAccount:
        return self.payment.accounts[role]


def start_devnet(payment_chain_id: int = DEFAULT_PAYMENT_CHAIN_ID,
                 business_chain_id: int = DEFAULT_BUSINESS_CHAIN_ID,
                 initial_balance: int = INITIAL_BALANCE) -> Devnet:
    """Start both in-process chains, deploy the contracts and fund every development account."""
    check_distinct(payment_chain_id, business_chain_id)
    return deploy_devnet(InProcessChain("payment", payment_chain_id),
                         InProcessChain("business", business_chain_id), initial_balance)


def check_distinct(payment_chain_id: int, business_chain_id: int) -> None:
    if payment_chain_id == business_chain_id:
        raise SameChainIdError(
            f"payment and business chains must have distinct chain ids, both are {payment_chain_id}"
        )


def deploy_devnet(payment: DevChain, business: DevChain,
                  initial_balance: int = INITIAL_BALANCE) -> Devnet:
    """Deploy every contract on two running chains (any backend) and fund every development
    account with `initial_balance` payment-token units. The one deployment routine of the
    in-process devnet, the anvil devnet and `dvp-gateway devnet`."""
    check_distinct(payment.chain_id, business.chain_id)
    issuer = payment.accounts[ISSUER]

    token = payment.client.deploy(issuer, load_artifact("PaymentToken"),
                                  "Test Digital Currency", "tDC", issuer.address)
    payment_htlc = payment.client.deploy(issuer, load_artifact("PaymentHTLC"), token.address)
    for account in payment.accounts:
        payment.client.transact(issuer, to=token.address, gas=100_000,
                                data=token.encode_abi("mint", [account.address, initial_balance]))

    titles = business.client.deploy(issuer, load_artifact("TitleDocument"),
                                    "Test Document of Title", "tDOT", issuer.address)
    delivery_htlc = business.client.deploy(issuer, load_artifact("DeliveryHTLC"), titles.address)

    info = DevnetInfo(
        payment=PaymentChainInfo(payment.chain_id, token.address, payment_htlc.address),
        business=BusinessChainInfo(business.chain_id, titles.address, delivery_htlc.address),
        issuer=issuer.address,
        buyer=payment.accounts[BUYER].address,
        seller=payment.accounts[SELLER].address,
        relayer=payment.accounts[RELAYER].address,
    )
    return Devnet(
        payment=payment,  # type: ignore[arg-type]
        business=business,  # type: ignore[arg-type]
        info=info,
        payment_token=token,
        payment_htlc=PaymentHTLCProxy(payment.client, payment_htlc),
        titles=titles,
        delivery_htlc=DeliveryHTLCProxy(business.client, delivery_htlc),
    )
