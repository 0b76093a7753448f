"""Keys at rest: the rotatable cipher for managed accounts' signing keys, managed buyers' trade
secrets and webhook signing secrets (DVP_SECRETS_KEY), and files that hold keys. Below the API
and the engine: both encrypt and decrypt with it."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class Cipher:
    """Encrypts secrets at rest with the key(s) from configuration (DVP_SECRETS_KEY).

    The setting holds one Fernet key, or several separated by commas, newest first (a key
    rotation in progress): the newest encrypts, every one decrypts (cryptography's
    MultiFernet). `rotate` re-encrypts a ciphertext with the newest key; once every stored
    ciphertext is rotated (`dvp-gateway secrets rotate`) the older keys can be dropped.
    """

    def __init__(self, key: str | bytes) -> None:
        text = key.decode() if isinstance(key, bytes) else key
        entries = [entry.strip() for entry in text.split(",")]
        fernets = []
        for number, entry in enumerate(entries, start=1):
            where = f" (key {number} of {len(entries)})" if len(entries) > 1 else ""
            if not entry:
                raise ValueError(f"DVP_SECRETS_KEY has an empty entry{where}: give Fernet keys "
                                 "separated by commas, newest first")
            try:
                fernets.append(Fernet(entry))
            except (ValueError, TypeError) as exc:  # never echo the text: it is a secret
                raise ValueError(
                    f"DVP_SECRETS_KEY{where} is not a Fernet key (32 url-safe base64 bytes; "
                    "generate one with `dvp-gateway secrets-key`)") from exc
        self._newest = fernets[0]
        self._fernet = MultiFernet(fernets)
        self.key_count = len(fernets)

    @staticmethod
    def generate_key() -> str:
        return Fernet.generate_key().decode()

    def encrypt(self, plaintext: bytes) -> str:
        return self._fernet.encrypt(plaintext).decode()  # with the newest key

    def decrypt(self, token: str) -> bytes:
        try:
            return self._fernet.decrypt(token.encode())
        except InvalidToken as exc:
            raise ValueError("cannot decrypt: wrong DVP_SECRETS_KEY for this database") from exc

    def is_current(self, token: str) -> bool:
        """Whether `token` is encrypted with the newest key."""
        try:
            self._newest.decrypt(token.encode())
        except InvalidToken:
            return False
        return True

    def rotate(self, token: str) -> str:
        """`token` re-encrypted with the newest key (ValueError when no key decrypts it)."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken as exc:
            raise ValueError("cannot decrypt: no key of DVP_SECRETS_KEY decrypts it") from exc


def write_private_file(path: Path, text: str) -> None:
    """Write a file that holds keys with mode 0600 from its creation: a new file made with
    that mode (O_EXCL, whatever the umask) is written, synced and renamed over `path`, so the
    content is never readable by others, never seen half-written, and an existing file's
    wider mode goes with it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
