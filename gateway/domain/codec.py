"""JSON codec for domain values: frozen dataclasses, enums, bytes, tuples and frozensets.

Stored state, logged inputs and outbox effects are written with `encode` and read back with
`decode(type, data)`. Bytes are `0x` hex; a union of dataclasses is tagged with the class name.
Stdlib only, so the domain stays pure.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from enum import Enum
from functools import cache
from typing import Any


def encode(value: Any) -> Any:
    return _encoder(type(value))(value)


_PLAIN = frozenset({int, str, bool, float, type(None)})  # JSON as they are


@cache
def _encoder(cls: type) -> Callable[[Any], Any]:
    """An encoding function per type, built once: every dispatcher transaction encodes each
    changed trade's whole state, so the type tests are not repeated per value."""
    if dataclasses.is_dataclass(cls):
        names, tag = _field_names(cls), cls.__name__

        def instance(value: Any) -> Any:
            out = {}
            for name in names:
                v = getattr(value, name)
                t = type(v)
                out[name] = v if t in _PLAIN else _encoder(t)(v)
            out["__type__"] = tag
            return out
        return instance
    if issubclass(cls, Enum):
        return lambda value: value.value
    if issubclass(cls, bytes):
        return lambda value: "0x" + value.hex()
    if issubclass(cls, tuple | list):
        return lambda value: [encode(v) for v in value]
    if issubclass(cls, frozenset | set):
        return lambda value: sorted(encode(v) for v in value)
    return lambda value: value


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _dataclasses_in(tp: Any) -> dict[str, type]:
    return {a.__name__: a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)}


def decode(tp: Any, data: Any) -> Any:
    return _decoder(tp)(data)


@cache
def _decoder(tp: Any) -> Callable[[Any], Any]:
    """A decoding function for `tp`, built once per type: stored states are decoded on every
    read, so the type inspection is not repeated per value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        optional = type(None) in args
        candidates = _dataclasses_in(tp)
        rest = [a for a in args if a is not type(None)]

        def union(data: Any) -> Any:
            if data is None and optional:
                return None
            if candidates and isinstance(data, dict):
                return _decoder(candidates[data["__type__"]])(data)
            (inner,) = rest
            return _decoder(inner)(data)
        return union
    if origin is tuple:
        item = typing.get_args(tp)[0]
        return lambda data: tuple(map(_decoder(item), data))
    if origin is frozenset:
        item = typing.get_args(tp)[0]
        return lambda data: frozenset(map(_decoder(item), data))
    if dataclasses.is_dataclass(tp):
        fields: list[tuple[str, Callable[[Any], Any] | None]] = []

        def instance(data: Any) -> Any:
            if not fields:  # built at first use: a type may refer to itself
                hints = _hints(tp)
                fields.extend((name, None if _decoder(hints[name]) is _as_is
                               else _decoder(hints[name])) for name in _field_names(tp))
            return tp(**{name: data[name] if dec is None else dec(data[name])
                         for name, dec in fields if name in data})
        return instance
    if isinstance(tp, type) and issubclass(tp, Enum):
        return tp
    if isinstance(tp, type) and issubclass(tp, str) and tp is not str:
        return tp  # a typed string (gateway.domain.marks): stored as the plain string
    if tp is bytes:
        return lambda data: bytes.fromhex(data[2:])
    return _as_is


def _as_is(data: Any) -> Any:
    return data


@cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))
