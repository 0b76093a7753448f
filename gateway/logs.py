"""Structured logging: JSON lines for operators (or readable lines on a terminal).

Node and database URLs often carry credentials (a provider's API key in the path or query, a
password): every log line and error message has them masked (`redact`), whatever library
wrote them into an exception's text.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
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


def _redact_event(_logger: object, _method: str, event: dict) -> dict:
    if _secrets:
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = redact(value)
    return event


def configure(json: bool | None = None, level: int = logging.INFO) -> None:
    if json is None:
        json = not sys.stderr.isatty()
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
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
