"""Secrets: API keys (stored as SHA-256, shown once) and encryption at rest (Fernet) for
managed accounts' signing keys and managed buyers' trade secrets."""

from __future__ import annotations

import hashlib
import secrets

from cryptography.fernet import Fernet, InvalidToken

API_KEY_PREFIX = "dvp_"


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    return key[:12]


class Cipher:
    """Encrypts secrets at rest with a key from configuration (DVP_SECRETS_KEY)."""

    def __init__(self, key: str | bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError) as exc:
            raise ValueError("DVP_SECRETS_KEY must be a Fernet key (32 url-safe base64 bytes; "
                             "generate one with `dvp-gateway secrets-key`)") from exc

    @staticmethod
    def generate_key() -> str:
        return Fernet.generate_key().decode()

    def encrypt(self, plaintext: bytes) -> str:
        return self._fernet.encrypt(plaintext).decode()

    def decrypt(self, token: str) -> bytes:
        try:
            return self._fernet.decrypt(token.encode())
        except InvalidToken as exc:
            raise ValueError("cannot decrypt: wrong DVP_SECRETS_KEY for this database") from exc
