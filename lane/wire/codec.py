"""Payload encoding shared by every topic: msgpack maps carrying a schema version `v`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import msgpack

SCHEMA_VERSION = 1


class PayloadError(ValueError):
    """A payload that is not a well-formed message of our protocol."""


def pack(fields: Mapping[str, Any], v: int = SCHEMA_VERSION) -> bytes:
    body = {"v": v, **fields}
    data: bytes = msgpack.packb(body, use_bin_type=True, datetime=False)
    return data


class DuplicateKey(PayloadError):  # noqa: N818 - a kind of PayloadError, named for the fault
    """A map that names one key twice: the two decoders of a message could disagree."""


def unique_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """msgpack's object_pairs_hook: a map with a repeated key is refused, at every depth.

    msgpack itself keeps the last value, so `{op: close, op: open}` would read as open here
    while another decoder (or a log line, or a person) reads close."""
    body = dict(pairs)
    if len(body) != len(pairs):
        counts = Counter(key for key, _ in pairs)
        repeated = sorted(repr(key) for key, n in counts.items() if n > 1)
        raise DuplicateKey(f"duplicate key {', '.join(repeated)} in a map")
    return body


def unpack(data: bytes, max_version: int = SCHEMA_VERSION) -> dict[str, Any]:
    """Decode a message; anything that is not a versioned map raises PayloadError."""
    try:
        body = msgpack.unpackb(
            data, raw=False, strict_map_key=True, timestamp=0, object_pairs_hook=unique_map
        )
    except DuplicateKey:
        raise
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        # msgpack's FormatError (a byte no value starts with, e.g. 0xc1) carries no text; an
        # operator reading "FormatError:" alone learns nothing.
        reason = str(exc) or f"byte 0x{data[:1].hex()} starts no msgpack value"
        raise PayloadError(f"not msgpack: {exc.__class__.__name__}: {reason}") from exc
    if not isinstance(body, dict):
        raise PayloadError(f"expected a map, got {type(body).__name__}")
    version = body.get("v")
    if not isinstance(version, int) or isinstance(version, bool):
        raise PayloadError("missing schema version 'v'")
    if not 1 <= version <= max_version:
        raise PayloadError(f"unsupported schema version {version}")
    return body


def field(body: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """Read a required field of a given type, or raise PayloadError naming it."""
    if name not in body:
        raise PayloadError(f"missing field {name!r}")
    value = body[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise PayloadError(f"field {name!r} must be {_names(kinds)}, got bool")
    if not isinstance(value, kinds):
        raise PayloadError(f"field {name!r} must be {_names(kinds)}, got {type(value).__name__}")
    return value


def optional(body: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if body.get(name) is None:
        return None
    return field(body, name, kind)


def _names(kinds: tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in kinds)
