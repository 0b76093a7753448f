"""Structured logging: JSON lines for operators (or readable lines on a terminal).

Node and database URLs often carry credentials (a provider's API key in the path or query, a
password): every log line and error message has them masked (`redact`), whatever library
wrote them into an exception's text.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import TextIO
from urllib.parse import urlsplit

import structlog

MASK = "***"
_secrets: list[str] = []  # what `redact` masks, longest first


def url_secrets(url: str | None, *, path_is_secret: bool = True) -> list[str]:
    """The parts of a URL that may be credentials: its password, and (for node endpoints,
    whose path and query are where providers put API keys) its path and query."""
    if not url:
        return []
    parts = urlsplit(url)
    found = [parts.password or ""]
    if path_is_secret:
        found += [parts.path.strip("/"), parts.query]
    return [f for f in found if len(f) >= 4]


def keep_secret(values: Iterable[str]) -> None:
    """Mask these in every log line and message from now on."""
    _secrets.extend(v for v in values if v and v not in _secrets)
    _secrets.sort(key=len, reverse=True)


def redact(text: str) -> str:
    for secret in _secrets:
        text = text.replace(secret, MASK)
    return text


def trade_ref(trade_id: bytes | str) -> str:
    """A trade id as operators see it everywhere (log lines, API responses, webhook bodies,
    CLI output): `0x` and 64 lowercase hex digits, so one can be grepped with the other.
    Takes the 32 raw bytes or their hex (as stored: 64 digits, no prefix; or any case, with
    one)."""
    if isinstance(trade_id, bytes | bytearray | memoryview):
        raw = bytes(trade_id)
    else:
        text = trade_id[2:] if trade_id[:2] in ("0x", "0X") else trade_id
        try:
            raw = bytes.fromhex(text) if len(text) == 64 else b""
        except ValueError:
            raw = b""
    if len(raw) != 32:
        raise ValueError(f"not a 32-byte trade id: {trade_id!r}")
    return "0x" + raw.hex()


def _redact_event(_logger: object, _method: str, event: dict) -> dict:
    if _secrets:
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = redact(value)
    return event


def configure(json: bool | None = None, level: int = logging.INFO,
              file: TextIO | None = None) -> None:
    """Log to `file` (standard error by default): JSON lines, or readable ones (`json=None`:
    readable on a terminal). The API writes one line per request to `gateway.api.access`
    (gateway.api.app.install_request_log)."""
    file = file or sys.stderr
    if json is None:
        json = not file.isatty()
    renderer = (structlog.processors.JSONRenderer() if json
                else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_event,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=file),
        cache_logger_on_first_use=False,
    )
