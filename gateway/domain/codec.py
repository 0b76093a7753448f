"""JSON codec for domain values: frozen dataclasses, enums, bytes, tuples and frozensets.

Stored state, logged inputs and outbox effects are written with `encode` and read back with
`decode(type, data)`. Bytes are `0x` hex; a union of dataclasses is tagged with the class name.
Stdlib only, so the domain stays pure.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from enum import Enum
from functools import cache
from typing import Any


def encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        out["__type__"] = type(value).__name__
        return out
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, tuple | list):
        return [encode(v) for v in value]
    if isinstance(value, frozenset | set):
        return sorted(encode(v) for v in value)
    return value


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _dataclasses_in(tp: Any) -> dict[str, type]:
    return {a.__name__: a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)}


def decode(tp: Any, data: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in typing.get_args(tp):
            return None
        candidates = _dataclasses_in(tp)
        if candidates and isinstance(data, dict):
            return decode(candidates[data["__type__"]], data)
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return decode(inner, data)
    if origin is tuple:
        args = typing.get_args(tp)
        item = args[0]
        return tuple(decode(item, v) for v in data)
    if origin is frozenset:
        return frozenset(decode(typing.get_args(tp)[0], v) for v in data)
    if dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        return tp(**{f.name: decode(hints[f.name], data[f.name])
                     for f in dataclasses.fields(tp) if f.name in data})
    if isinstance(tp, type) and issubclass(tp, Enum):
        return tp(data)
    if tp is bytes:
        return bytes.fromhex(data[2:])
    return data
