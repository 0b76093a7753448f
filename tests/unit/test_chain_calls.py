"""gateway.chain.calls and gateway.chain.accounts, what the layers above use instead of web3
objects: calldata equal to web3's ABI encoding, reads equal to web3's contract calls, and
ChainClient's head, nonce and chain-id reads equal to web3's."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.chain import accounts, calls
from gateway.chain.devnet import BUYER, ISSUER, SELLER
from gateway.domain.locks import DeliveryLock


def _abi(contract, fn: str, args: list) -> bytes:  # noqa: ANN001
    return bytes.fromhex(contract.encode_abi(fn, args)[2:])


def test_asset_calldata_matches_abi_encoder(devnet) -> None:
    token, titles = devnet.payment_token, devnet.titles
    spender, owner = devnet.info.payment.htlc, devnet.info.buyer
    for amount in (0, 1, 12_345_600, 2**256 - 1):
        assert calls.token_approve_calldata(spender, amount) == \
            _abi(token, "approve", [spender, amount])
        assert calls.token_mint_calldata(owner, amount) == _abi(token, "mint", [owner, amount])
        assert calls.title_approve_calldata(spender, amount) == \
            _abi(titles, "approve", [spender, amount])
    document = hashlib.sha256(b"bill of lading").digest()
    assert calls.title_issue_calldata(owner, document) == _abi(titles, "issue", [owner, document])


def test_self_custody_htlc_calldata_matches_abi_encoder(devnet) -> None:
    """The instructions a self-custody party signs: PaymentHTLC `lock`, DeliveryHTLC `lock`
    and DeliveryHTLC `claim` with a zero placeholder for the secret."""
    pay, dlv = devnet.payment_htlc.htlc, devnet.delivery_htlc.htlc
    hashlock, t_pay = b"\xab" * 32, 2**64 - 1
    assert calls.payment_lock_calldata(devnet.info.seller, 250_000_00, hashlock, t_pay) == \
        _abi(pay, "lock", [devnet.info.seller, 250_000_00, hashlock, t_pay])
    lock = DeliveryLock(devnet.info.seller, devnet.info.buyer, 7, b"\x0d" * 32, b"\x0e" * 32,
                        hashlock, 10**9)
    assert calls.delivery_lock_calldata(lock.buyer, lock.token_id, lock.document_hash,
                                        lock.trade_id, lock.hashlock, lock.timelock) == \
        _abi(dlv, "lock", [lock.buyer, lock.token_id, lock.document_hash, lock.trade_id,
                           lock.hashlock, lock.timelock])
    template = calls.delivery_claim_template(lock)
    assert template == _abi(dlv, "claim", [lock.as_tuple(), bytes(32)])
    assert template[-32:] == bytes(32)  # the secret's place, the last 32 bytes
    assert calls.decode_delivery_claim(template) == (lock, bytes(32))


def test_decode_delivery_claim_refuses_other_calldata(devnet) -> None:
    with pytest.raises(ValueError, match="not a DeliveryHTLC claim"):
        calls.decode_delivery_claim(calls.payment_lock_calldata(devnet.info.seller, 1,
                                                                b"\x01" * 32, 1))
    with pytest.raises(Exception):  # noqa: B017 - eth-abi's decoding error
        calls.decode_delivery_claim(calls.DELIVERY_CLAIM_SELECTOR + b"\x00" * 5)


def test_reads_match_web3_calls(devnet) -> None:
    pay, biz = devnet.payment.client, devnet.business.client
    token, titles = devnet.payment_token, devnet.titles
    info = devnet.info
    buyer, seller, issuer = devnet.account(BUYER), devnet.account(SELLER), devnet.account(ISSUER)
    assert calls.htlc_token(pay, info.payment.htlc) == token.address
    assert calls.htlc_titles(biz, info.business.htlc) == titles.address
    assert pay.transact(buyer, to=token.address, gas=100_000,
                        data=calls.token_approve_calldata(info.payment.htlc, 77)).succeeded
    assert calls.token_allowance(pay, info.payment.token, buyer.address, info.payment.htlc) == \
        token.functions.allowance(buyer.address, info.payment.htlc).call() == 77
    assert calls.token_balance(pay, info.payment.token, buyer.address) == \
        token.functions.balanceOf(buyer.address).call() > 0

    assert calls.titles_issued(biz, info.business.titles) == 0
    assert biz.transact(issuer, to=titles.address, gas=300_000,
                        data=calls.title_issue_calldata(seller.address, b"\x01" * 32)).succeeded
    token_id = calls.titles_issued(biz, info.business.titles)
    assert token_id == titles.functions.issuedCount().call() == 1
    assert calls.title_owner(biz, info.business.titles, token_id) == seller.address
    assert calls.title_count(biz, info.business.titles, seller.address) == \
        titles.functions.balanceOf(seller.address).call() == 1
    assert calls.title_count(biz, info.business.titles, buyer.address) == 0

    htlc = info.business.htlc
    assert not calls.title_approved(biz, info.business.titles, seller.address, htlc, token_id)
    assert biz.transact(seller, to=titles.address, gas=100_000,
                        data=calls.title_approve_calldata(htlc, token_id)).succeeded
    assert calls.title_approved(biz, info.business.titles, seller.address, htlc, token_id)
    # Approved for all the owner's titles (the gateway's standing approval) counts too.
    assert biz.transact(issuer, to=titles.address, gas=300_000,
                        data=calls.title_issue_calldata(seller.address, b"\x02" * 32)).succeeded
    assert not calls.title_approved(biz, info.business.titles, seller.address, htlc, 2)
    target, data = devnet.delivery_htlc.approve_calldata()
    assert biz.transact(seller, to=target, gas=100_000, data=data).succeeded
    assert calls.title_approved(biz, info.business.titles, seller.address, htlc, 2)


def test_client_head_and_nonces_match_web3(devnet) -> None:
    chain = devnet.payment
    client, w3 = chain.client, chain.client.w3
    buyer = devnet.account(BUYER)
    assert client.node_chain_id() == w3.eth.chain_id == client.chain_id
    number = client.block_number()
    assert number == w3.eth.block_number
    client.mine()
    assert client.block_number() == number + 1
    assert client.head()[0] == w3.eth.get_block("latest")["timestamp"]
    assert client.pending_nonce(buyer.address) == client.mined_nonce(buyer.address) == \
        w3.eth.get_transaction_count(buyer.address, "pending")
    client.transact(buyer, to=buyer.address, data=b"", gas=21_000)
    assert client.mined_nonce(buyer.address) == w3.eth.get_transaction_count(buyer.address) \
        == client.pending_nonce(buyer.address)


@pytest.mark.parametrize("value, expected", [
    ("0x52908400098527886e0f7030069857d2e4169ee7", "0x52908400098527886E0F7030069857D2E4169EE7"),
    ("0X52908400098527886E0F7030069857D2E4169EE7", "0x52908400098527886E0F7030069857D2E4169EE7"),
    ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"),
])
def test_checksum_address_accepts(value: str, expected: str) -> None:
    assert accounts.checksum_address(value) == expected
    assert accounts.is_address(value)


@pytest.mark.parametrize("value, message", [
    ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD", "wrong EIP-55 checksum"),
    ("0x5aaeb6053f3e94c9b9a09f33669435e7ef1beae", "0x-prefixed 20-byte address"),
    ("not an address", "0x-prefixed 20-byte address"),
])
def test_checksum_address_refuses(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        accounts.checksum_address(value)


def test_accounts_load_and_create_keys() -> None:
    created = accounts.new_account()
    loaded = accounts.load_account(accounts.private_key(created))
    assert loaded.address == created.address == accounts.to_checksum(created.address.lower())
    assert accounts.load_account("0x" + "00" * 31 + "01").address == \
        "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"
    with pytest.raises(ValueError):
        accounts.load_account(bytes(32))


def test_accounts_module_loads_no_evm_library() -> None:
    """Settings and the API's schemas import gateway.chain.accounts: importing it (and
    checking an address) loads neither web3 nor eth-account."""
    code = textwrap.dedent("""
        import sys
        from gateway.chain import accounts
        accounts.checksum_address("0x52908400098527886e0f7030069857d2e4169ee7")
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("web3", "eth_account"))
        print(",".join(loaded))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2],
                         env={"PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == ""
