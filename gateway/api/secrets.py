"""API keys: drawn at random, shown once, stored as SHA-256 (encryption at rest of managed
keys and secrets is `gateway.keys`, below the API and the engine, which both use it)."""

from __future__ import annotations

import hashlib
import secrets

API_KEY_PREFIX = "dvp_"


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    return key[:12]
