"""DVP_SECRETS_KEY rotation: several keys (newest first) decrypt, the newest encrypts, and
`dvp-gateway secrets rotate` re-encrypts every stored ciphertext (managed accounts' keys,
managed buyers' unrevealed secrets, webhook signing secrets) so that the old key can go."""

from __future__ import annotations

import uuid

import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy import select

from gateway.cli import main
from gateway.config import Settings
from gateway.db.models import ManagedKeyRow, SecretRow, WebhookEndpointRow
from gateway.keys import Cipher
from gateway.runner import build_system

KEY_A, KEY_B, KEY_C = (Fernet.generate_key().decode() for _ in range(3))


def test_newest_key_encrypts_and_every_key_decrypts() -> None:
    under_a = Cipher(KEY_A).encrypt(b"signing key")
    both = Cipher(f"{KEY_B},{KEY_A}")
    assert both.decrypt(under_a) == b"signing key"
    assert not both.is_current(under_a)
    under_b = both.encrypt(b"secret")
    assert Cipher(KEY_B).decrypt(under_b) == b"secret"  # written with the newest
    with pytest.raises(ValueError, match="wrong DVP_SECRETS_KEY"):
        Cipher(KEY_A).decrypt(under_b)
    rotated = both.rotate(under_a)
    assert Cipher(KEY_B).decrypt(rotated) == b"signing key"
    assert Cipher(f" {KEY_B} , {KEY_A} ").decrypt(under_a) == b"signing key"  # spaces


def _ciphertexts(session) -> dict[str, str]:  # noqa: ANN001
    found = {}
    for row in session.scalars(select(ManagedKeyRow)):
        found[f"managed_keys/{row.enterprise_id}"] = row.encrypted_key
    for row in session.scalars(select(SecretRow)):
        found[f"trade_secrets/{row.trade_id}"] = row.encrypted_secret
    for row in session.scalars(select(WebhookEndpointRow)):
        found[f"webhook_endpoints/{row.id}"] = row.encrypted_secret
    return found


@pytest.fixture
def written_under_a(tmp_path, database_url):  # noqa: ANN201
    """A database holding every kind of ciphertext, all written under key A by the code that
    writes them: two managed enterprises (their keys), a trade of the managed buyer (its
    secret), and a webhook endpoint. Returns the plaintexts by row."""
    system = build_system(Settings(_env_file=None, secrets_key=KEY_A), tmp_path / "run",
                          database_url=database_url)
    try:
        demo = system.demo["enterprises"]
        client = TestClient(system.app, raise_server_exceptions=False)
        title = demo["seller"]["titles"][0]
        now = system.devnet.payment.latest_block_timestamp()
        r = client.post("/v1/trades", json={
            "role": "seller", "counterparty": demo["buyer"]["id"],
            "payment": {"token": system.devnet.info.payment.token, "amount": "1000"},
            "delivery": {"token_id": title["token_id"],
                         "document_hash": title["document_hash"]},
            "deadlines": {"delivery": now + 3600, "payment": now + 7200}},
            headers={"Authorization": f"Bearer {demo['seller']['api_key']}",
                     "Idempotency-Key": str(uuid.uuid4())})
        assert r.status_code == 201, r.text
        cipher_a = Cipher(KEY_A)
        with system.gateway.session_factory.begin() as session:
            session.add(WebhookEndpointRow(id=str(uuid.uuid4()), enterprise_id=demo["buyer"]["id"],
                                           url="https://hooks.example/dvp",
                                           encrypted_secret=cipher_a.encrypt(b"whsec_1")))
        with system.gateway.session_factory() as session:
            stored = _ciphertexts(session)
        kinds = {name.split("/")[0] for name in stored}
        assert kinds == {"managed_keys", "trade_secrets", "webhook_endpoints"}, stored
        assert len(stored) == 4
        plain = {name: cipher_a.decrypt(token) for name, token in stored.items()}
    finally:
        system.close()
    return database_url, plain


def _rotate(database_url: str, key: str):  # noqa: ANN202
    return CliRunner().invoke(main, ["secrets", "rotate", "--database-url", database_url],
                              env={"DVP_SECRETS_KEY": key})


def _stored(database_url: str) -> dict[str, str]:
    from gateway.engine.build import open_database

    engine, factory = open_database(database_url)
    try:
        with factory() as session:
            return _ciphertexts(session)
    finally:
        engine.dispose()


def test_rotate_reencrypts_everything_so_the_old_key_can_go(written_under_a) -> None:
    database_url, plain = written_under_a
    before = _stored(database_url)
    both = Cipher(f"{KEY_B},{KEY_A}")
    assert {name: both.decrypt(token) for name, token in before.items()} == plain

    result = _rotate(database_url, f"{KEY_B},{KEY_A}")
    assert result.exit_code == 0, result.output
    assert "managed_keys: 2 re-encrypted, 0 already under the newest key" in result.output
    assert "trade_secrets: 1 re-encrypted" in result.output
    assert "webhook_endpoints: 1 re-encrypted" in result.output
    assert "the older keys can now be removed" in result.output

    after = _stored(database_url)
    only_b, only_a = Cipher(KEY_B), Cipher(KEY_A)
    assert {name: only_b.decrypt(token) for name, token in after.items()} == plain
    for token in after.values():
        with pytest.raises(ValueError):
            only_a.decrypt(token)

    again = _rotate(database_url, f"{KEY_B},{KEY_A}")  # idempotent
    assert again.exit_code == 0, again.output
    assert "managed_keys: 0 re-encrypted, 2 already under the newest key" in again.output
    assert _stored(database_url) == after


def test_the_gateway_runs_on_the_new_key_alone_after_rotation(written_under_a) -> None:
    """A managed account's key decrypts with key B alone, as the relayer and API use it."""
    from gateway.api.enterprises import managed_account
    from gateway.engine.build import open_database

    database_url, plain = written_under_a
    assert _rotate(database_url, f"{KEY_B},{KEY_A}").exit_code == 0
    engine, factory = open_database(database_url)
    try:
        with factory() as session:
            for row in session.scalars(select(ManagedKeyRow)):
                account = managed_account(session, row.enterprise_id, Cipher(KEY_B))
                assert account.address == row.address
                assert bytes(account.key) == plain[f"managed_keys/{row.enterprise_id}"]
    finally:
        engine.dispose()


def test_rotating_without_the_old_key_changes_nothing(written_under_a) -> None:
    database_url, _ = written_under_a
    before = _stored(database_url)
    result = _rotate(database_url, f"{KEY_B},{KEY_C}")  # A is missing
    assert result.exit_code == 2, result.output
    assert "no key of DVP_SECRETS_KEY decrypts it" in result.output
    assert "Nothing was changed" in result.output
    assert "Traceback" not in result.output
    assert _stored(database_url) == before


@pytest.mark.parametrize("key", ["not-a-key", f"{KEY_B},not-a-key", f"{KEY_B},", ""],
                         ids=["not-a-key", "good-then-bad", "good-then-empty", "empty"])
def test_bad_key_text_is_a_clear_error(tmp_path, key) -> None:
    result = CliRunner().invoke(main, ["secrets", "rotate", "--database-url",
                                       f"sqlite:///{tmp_path / 'x.db'}"],
                                env={"DVP_SECRETS_KEY": key})
    assert result.exit_code == 2, result.output
    assert "DVP_SECRETS_KEY" in result.output and "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    if "," in key:
        assert "key 2 of 2" in result.output
    assert "not-a-key" not in result.output  # a key's text is never echoed


def test_secrets_key_prints_a_usable_key() -> None:
    result = CliRunner().invoke(main, ["secrets-key"])
    assert result.exit_code == 0
    key = result.output.strip()
    assert Cipher(f"{key},{KEY_A}").decrypt(Cipher(key).encrypt(b"x")) == b"x"
