"""Inputs that change money are exact (issue 10 §9): amounts and token ids are ASCII decimal
strings in one spelling only, a mixed-case address must carry its EIP-55 checksum, and a
proposal's title is checked on the business chain (it exists, the seller holds it, it carries
the document hash) before the trade is made."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from eth_account import Account
from fastapi.testclient import TestClient

from gateway.api.enterprises import create_enterprise
from gateway.chain.devnet import ISSUER
from gateway.runner import System
from tests.e2e.conftest import module_system

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> System:
    yield from module_system(tmp_path_factory, "exactness")


def headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Idempotency-Key": str(uuid.uuid4())}


def proposal(system: System, *, role: str = "seller", counterparty: str | None = None,
             token_id: str | None = None, document_hash: str | None = None,
             amount: str = "123456", token: str | None = None) -> dict:
    """A proposal by the demo seller (role seller) or the demo buyer (role buyer) of the demo
    seller's first title, every part replaceable."""
    ents = system.demo["enterprises"]
    title = ents["seller"]["titles"][0]
    now = max(system.ctx.payment.now(), system.ctx.business.now())
    return {"role": role,
            "counterparty": counterparty or ents["buyer" if role == "seller" else "seller"]["id"],
            "payment": {"token": token or system.devnet.info.payment.token, "amount": amount},
            "delivery": {"token_id": token_id or title["token_id"],
                         "document_hash": document_hash or title["document_hash"]},
            "deadlines": {"delivery": now + 3600, "payment": now + 7200}}


def post(client: TestClient, system: System, body: dict, as_: str = "seller"):  # noqa: ANN201
    key = system.demo["enterprises"][as_]["api_key"]
    return client.post("/v1/trades", json=body, headers=headers(key))


def refused(r, field: str) -> dict:
    """A 422 problem naming `field`."""
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].split(";")[0] == PROBLEM
    body = r.json()
    assert field in [e["field"] for e in body.get("errors", [])], body
    return body


def issue(system: System, holder: str, document: bytes) -> tuple[str, str]:
    """Issue a title to `holder`; (token id, document hash) as the API spells them."""
    d = system.devnet
    doc = hashlib.sha256(document).digest()
    assert d.business.client.transact(d.account(ISSUER), to=d.titles.address, gas=300_000,
                                      data=d.titles.encode_abi("issue", [holder, doc])).succeeded
    return str(d.titles.functions.issuedCount().call()), "0x" + doc.hex()


def bad_checksum(address: str) -> str:
    """`address` (checksummed) with the case of one letter flipped: mixed case, wrong sum."""
    body = address[2:]
    at = next(i for i, c in enumerate(body) if c.isalpha())
    return "0x" + body[:at] + body[at].swapcase() + body[at + 1:]


# --- amounts and token ids: ASCII digits, one spelling --------------------------------------------


@pytest.mark.parametrize("amount", ["１２３", "١٢", "۱۲۳", "१२३", "𝟏𝟐𝟑", "1２3", "²",
                                    "0123", "00", "0", "000123456", "01"])
def test_amount_is_ascii_digits_without_leading_zeros(system, client, amount) -> None:
    err = refused(post(client, system, proposal(system, amount=amount)), "payment.amount")
    assert "payment.amount" in err["detail"]


@pytest.mark.parametrize("token_id", ["１", "١", "۱", "१", "𝟏", "¹", "01", "00", "001", "0"])
def test_token_id_is_ascii_digits_without_leading_zeros(system, client, token_id) -> None:
    # every one of these read as a number is 0 or 1, and token 1 is the demo seller's
    refused(post(client, system, proposal(system, token_id=token_id)), "delivery.token_id")


def test_exact_amounts_and_token_ids_are_accepted_as_given(system, client) -> None:
    title = system.demo["enterprises"]["seller"]["titles"][1]
    for amount in ("1", "10", "123456"):
        r = post(client, system, proposal(system, amount=amount, token_id=title["token_id"],
                                          document_hash=title["document_hash"]))
        assert r.status_code == 201, r.text
        assert r.json()["payment"]["amount"] == amount
        assert r.json()["delivery"]["token_id"] == title["token_id"]


# --- addresses: EIP-55 ----------------------------------------------------------------------------


def test_a_mixed_case_address_with_a_wrong_checksum_is_refused(system, client) -> None:
    token = system.devnet.info.payment.token
    err = refused(post(client, system, proposal(system, token=bad_checksum(token))),
                  "payment.token")
    assert "checksum" in err["detail"]


def test_single_case_addresses_are_accepted_and_checksummed(system, client) -> None:
    token = system.devnet.info.payment.token
    for spelling in (token, token.lower(), "0x" + token[2:].upper()):
        r = post(client, system, proposal(system, token=spelling))
        assert r.status_code == 201, (spelling, r.text)
        assert r.json()["payment"]["token"] == token


# --- the title, on the business chain ------------------------------------------------------------


@pytest.mark.parametrize("token_id", ["999999", str(2**256 - 1)])
def test_a_title_never_issued_is_refused(system, client, token_id) -> None:
    err = refused(post(client, system, proposal(system, token_id=token_id)),
                  "delivery.token_id")
    assert "not issued" in err["detail"] or "does not exist" in err["detail"]


def test_a_title_the_seller_does_not_hold_is_refused(system, client) -> None:
    token_id, doc = issue(system, Account.create().address, b"someone else's bill")
    refused(post(client, system, proposal(system, token_id=token_id, document_hash=doc)),
            "delivery.token_id")
    # the buyer proposing names the seller: it is the seller's holding that counts
    refused(post(client, system, proposal(system, role="buyer", token_id=token_id,
                                          document_hash=doc), as_="buyer"),
            "delivery.token_id")
    # a seller that holds the title may propose it
    with system.gateway.session_factory.begin() as session:
        seller, key = create_enterprise(session, f"Holder {uuid.uuid4()}", managed=True,
                                        cipher=system.ctx.cipher)
    token_id, doc = issue(system, seller.business_address, b"the holder's bill")
    r = client.post("/v1/trades", json=proposal(system, token_id=token_id, document_hash=doc),
                    headers=headers(key))
    assert r.status_code == 201, r.text


def test_the_title_held_by_the_buyer_is_not_the_sellers(system, client) -> None:
    buyer = system.demo["enterprises"]["buyer"]
    token_id, doc = issue(system, buyer["business_address"], b"the buyer's own bill")
    refused(post(client, system, proposal(system, role="buyer", token_id=token_id,
                                          document_hash=doc), as_="buyer"),
            "delivery.token_id")


def test_a_document_hash_the_title_does_not_carry_is_refused(system, client) -> None:
    other = "0x" + hashlib.sha256(b"another bill").hexdigest()
    err = refused(post(client, system, proposal(system, document_hash=other)),
                  "delivery.document_hash")
    assert [e["field"] for e in err["errors"]] == ["delivery.document_hash"]
    # the hash of the seller's other title is not this title's either
    second = system.demo["enterprises"]["seller"]["titles"][1]["document_hash"]
    refused(post(client, system, proposal(system, document_hash=second)),
            "delivery.document_hash")


@pytest.mark.parametrize("counterparty", ["\x00", "a\x00b", "id\n", "\x7f"])
def test_an_enterprise_id_with_control_characters_is_refused_naming_the_field(
        system, client, counterparty) -> None:
    """Never a database error: PostgreSQL cannot hold or compare a NUL in text, and no
    enterprise id carries a control character (found by schemathesis on PostgreSQL: a list
    filter of "%00" reached the query)."""
    refused(post(client, system, proposal(system, counterparty=counterparty)), "counterparty")
    key = system.demo["enterprises"]["seller"]["api_key"]
    listed = client.get("/v1/trades", params={"counterparty": counterparty},
                        headers={"Authorization": f"Bearer {key}"})
    refused(listed, "counterparty")


def test_a_list_cursor_naming_no_trade_id_is_refused_naming_the_field(system, client) -> None:
    import base64

    key = system.demo["enterprises"]["seller"]["api_key"]
    for trade_id in ("\x00", "ab" * 31, "AB" * 32):
        cursor = base64.urlsafe_b64encode(f"2026-12-03T00:00:00+00:00|{trade_id}".encode())
        listed = client.get("/v1/trades", params={"cursor": cursor.decode()},
                            headers={"Authorization": f"Bearer {key}"})
        refused(listed, "cursor")
