"""The one codec for events: msgpack maps with string keys, documented in docs/events.md.

`encode(event) -> bytes` and `decode(bytes) -> Event` are exact inverses for every valid event.
`decode` validates every field's type, so a consumer never sees a half-formed event; anything else
raises DecodeError. Unknown keys are ignored (forward compatibility within one schema version).
The Lua hook produces the same maps with its own small msgpack writer; tests hold the two together.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any

import msgpack

from bridge.errors import DecodeError
from bridge.events import EVENT_TYPES, SCHEMA_VERSION, Attachment, Event, Kind

# Python names that are keywords are spelled with a trailing underscore; the wire uses the plain name.
_WIRE_NAMES = {"from_": "from"}
MAX_EVENT_BYTES = 1 << 20

Check = Callable[[str, Any], Any]


def _wire(name: str) -> str:
    return _WIRE_NAMES.get(name, name)


def _fail(name: str, expected: str, value: Any) -> typing.NoReturn:
    raise DecodeError(f"field {name!r}: expected {expected}, got {type(value).__name__}")


def _check_int(name: str, value: Any) -> int:
    # bool is an int subclass in Python; on the wire they are distinct types.
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(name, "integer", value)
    return value


def _check_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        _fail(name, "string", value)
    return value


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        _fail(name, "boolean", value)
    return value


def _checker(tp: Any) -> Check:
    if tp is int:
        return _check_int
    if tp is str:
        return _check_str
    if tp is bool:
        return _check_bool
    if isinstance(tp, type) and issubclass(tp, StrEnum):
        enum_type = tp

        def check_enum(name: str, value: Any) -> StrEnum:
            try:
                return enum_type(_check_str(name, value))
            except ValueError:
                raise DecodeError(f"field {name!r}: unknown value {value!r}") from None

        return check_enum
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _record_checker(tp)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (types.UnionType, typing.Union) and len(args) == 2 and type(None) in args:
        inner = _checker(next(a for a in args if a is not type(None)))
        return lambda name, value: None if value is None else inner(name, value)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = _checker(args[0])

        def check_tuple(name: str, value: Any) -> tuple[Any, ...]:
            if not isinstance(value, list | tuple):
                _fail(name, "array", value)
            return tuple(item(name, v) for v in value)

        return check_tuple
    raise TypeError(f"no codec for type {tp!r}")  # a programming error, caught by the tests


def _record_checker(cls: type[Any]) -> Check:
    build = _builder(cls)

    def check_record(name: str, value: Any) -> Any:
        if not isinstance(value, Mapping):
            _fail(name, "map", value)
        return build(value)

    return check_record


def _builder(cls: type[Any]) -> Callable[[Mapping[str, Any]], Any]:
    hints = typing.get_type_hints(cls)
    specs = [
        (f.name, _wire(f.name), _checker(hints[f.name]), f.default is dataclasses.MISSING)
        for f in dataclasses.fields(cls)
        if f.default_factory is dataclasses.MISSING  # no factories are used; keep the rule explicit
    ]

    def build(data: Mapping[str, Any]) -> Any:
        kwargs: dict[str, Any] = {}
        for name, wire, check, required in specs:
            if wire in data:
                kwargs[name] = check(wire, data[wire])
            elif required:
                raise DecodeError(f"missing field {wire!r}")
        return cls(**kwargs)

    return build


_BUILDERS = {kind: _builder(cls) for kind, cls in EVENT_TYPES.items()}


def to_wire(event: Event) -> dict[str, Any]:
    """The event as the plain map that goes on the wire (also what docs/events.md shows as JSON)."""
    out: dict[str, Any] = {"kind": str(event.kind)}
    out.update(_plain(event))
    return out


def _plain(record: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if isinstance(value, tuple):
            value = [_plain(v) if dataclasses.is_dataclass(v) else v for v in value]
        elif isinstance(value, StrEnum):
            value = str(value)
        out[_wire(f.name)] = value
    return out


def encode(event: Event) -> bytes:
    packed: bytes = msgpack.packb(to_wire(event), use_bin_type=True)
    return packed


def from_wire(data: Any) -> Event:
    if not isinstance(data, Mapping):
        raise DecodeError(f"an event is a map, got {type(data).__name__}")
    version = data.get("v")
    if version != SCHEMA_VERSION:
        raise DecodeError(f"unsupported schema version {version!r} (this bridge reads v{SCHEMA_VERSION})")
    raw_kind = data.get("kind")
    try:
        kind = Kind(str(raw_kind))
    except ValueError:
        raise DecodeError(f"unknown event kind {raw_kind!r}") from None
    try:
        return typing.cast(Event, _BUILDERS[kind](data))
    except TypeError as exc:  # e.g. an unexpected nested shape
        raise DecodeError(str(exc)) from None


def decode(payload: bytes) -> Event:
    if len(payload) > MAX_EVENT_BYTES:
        raise DecodeError(f"event of {len(payload)} bytes exceeds {MAX_EVENT_BYTES}")
    try:
        data = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise DecodeError(f"not msgpack: {exc}") from None
    return from_wire(data)


__all__ = ["MAX_EVENT_BYTES", "Attachment", "decode", "encode", "from_wire", "to_wire"]
