"""Two in-process chains behave like two distinct networks."""

from __future__ import annotations

import pytest

from gateway.chain.devnet import SameChainIdError, start_devnet
from gateway.chain.htlc import payment_lock_id
from gateway.chain.tester import WrongChainIdError, start_tester_chain
from gateway.domain.locks import PaymentLock
from tests.helpers import balance_of


def _transfer(chain, sender, to, amount, chain_id, nonce):
    tx = {"chainId": chain_id, "nonce": nonce, "gas": 21_000, "to": to, "value": amount,
          "maxFeePerGas": 10**11, "maxPriorityFeePerGas": 10**9}
    return bytes(sender.sign_transaction(tx).raw_transaction)


def test_chains_report_their_own_ids(devnet) -> None:
    assert devnet.payment.w3.eth.chain_id == devnet.info.payment.chain_id == 71_001
    assert devnet.business.w3.eth.chain_id == devnet.info.business.chain_id == 71_002
    assert devnet.payment.w3.net.version == "71001"


def test_chainid_opcode_agrees_with_eth_chain_id(devnet) -> None:
    """lockIdOf hashes block.chainid: it matches the id computed with eth_chainId's value."""
    lock = PaymentLock(devnet.info.buyer, devnet.info.seller, 1, b"\x11" * 32, 2**40)
    for chain, htlc in ((devnet.payment, devnet.payment_htlc.htlc),):
        on_chain = htlc.functions.lockIdOf(lock.as_tuple()).call()
        assert on_chain == payment_lock_id(chain.w3.eth.chain_id, htlc.address, lock)
        assert on_chain != payment_lock_id(devnet.info.business.chain_id, htlc.address, lock)


def test_transaction_replayed_across_chains_is_refused_on_both(devnet) -> None:
    sender, receiver = devnet.payment.accounts[5], devnet.payment.accounts[6].address
    pay, biz = devnet.payment, devnet.business
    for_payment = _transfer(pay, sender, receiver, 7, pay.chain_id, 0)
    for_business = _transfer(biz, sender, receiver, 9, biz.chain_id, 0)
    before = {c.name: c.w3.eth.get_balance(receiver) for c in (pay, biz)}

    with pytest.raises(WrongChainIdError):
        biz.client.send_raw(for_payment)
    with pytest.raises(WrongChainIdError):
        pay.client.send_raw(for_business)
    # Refused, not mined: nonces and balances untouched on both chains.
    assert pay.w3.eth.get_transaction_count(sender.address) == 0
    assert biz.w3.eth.get_transaction_count(sender.address) == 0
    assert {c.name: c.w3.eth.get_balance(receiver) for c in (pay, biz)} == before

    # Each is accepted on its own chain.
    assert pay.client.wait(pay.client.send_raw(for_payment)).succeeded
    assert biz.client.wait(biz.client.send_raw(for_business)).succeeded
    assert pay.w3.eth.get_balance(receiver) == before["payment"] + 7
    assert biz.w3.eth.get_balance(receiver) == before["business"] + 9


def test_unprotected_pre_eip155_transaction_is_refused() -> None:
    tester, w3 = start_tester_chain(4242, num_accounts=1)
    from eth_account import Account

    sender = Account.from_key(tester.backend.account_keys[0].to_bytes())
    legacy = {"nonce": 0, "gas": 21_000, "to": sender.address, "value": 1, "gasPrice": 10**10}
    with pytest.raises(WrongChainIdError):
        w3.eth.send_raw_transaction(sender.sign_transaction(legacy).raw_transaction)


def test_chain_id_survives_snapshot_revert_to_genesis() -> None:
    tester, w3 = start_tester_chain(4243, num_accounts=1)
    snapshot = tester.take_snapshot()
    tester.mine_blocks(2)
    tester.revert_to_snapshot(snapshot)
    assert tester.backend.chain.chain_id == 4243
    assert w3.eth.chain_id == 4243


def test_same_chain_id_for_both_chains_is_refused() -> None:
    with pytest.raises(SameChainIdError, match="distinct chain ids"):
        start_devnet(payment_chain_id=5, business_chain_id=5)


def test_devnet_deploys_and_funds(devnet) -> None:
    info = devnet.info
    assert devnet.payment_token.functions.decimals().call() == 2
    assert devnet.payment_htlc.htlc.functions.token().call() == info.payment.token
    assert devnet.delivery_htlc.htlc.functions.titles().call() == info.business.titles
    for account in devnet.payment.accounts:
        assert balance_of(devnet.payment_token, account.address) == 1_000_000_00
    # Same deployer and nonce on both chains: same addresses, different code and chain ids.
    payment_code = devnet.payment.w3.eth.get_code(info.payment.htlc)
    business_code = devnet.business.w3.eth.get_code(info.business.htlc)
    assert payment_code and business_code and payment_code != business_code
    assert len({info.buyer, info.seller, info.relayer, info.issuer}) == 4


def test_indexed_get_logs_equals_eth_testers_own(devnet) -> None:
    """The fast eth_getLogs path returns exactly what eth-tester's own scan returns."""
    from eth_tester import EthereumTester

    from gateway.chain.devnet import BUYER, SELLER
    from gateway.domain.locks import hashlock_of, new_secret
    from tests.helpers import approve

    buyer, seller = devnet.account(BUYER), devnet.account(SELLER)
    approve(devnet.payment.client, buyer, devnet.payment_token, devnet.payment_htlc.address)
    t = devnet.payment.next_block_timestamp() + 100
    for amount in (1, 2, 3):
        devnet.payment_htlc.lock(buyer, seller.address, amount, hashlock_of(new_secret()), t)
    tester = devnet.payment.tester
    head = devnet.payment.w3.eth.block_number
    for address in (devnet.info.payment.htlc, devnet.info.payment.token):
        fast = tester.get_logs(0, head, address)
        assert fast == EthereumTester.get_logs(tester, 0, head, address)
        assert fast  # locks and transfers were found
    assert len(tester.get_logs(0, head, devnet.info.payment.htlc)) == 3
