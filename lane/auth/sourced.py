"""Typed readers for loaded mappings (TOML, JSON, msgpack) whose errors say where and what.

Every error names the source (a file path or "mqtt lane/p07/keys"), the key path inside it
(`keys[2].not_after`) and what is wrong, so an operator can fix a file without reading code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from lane.wire.codec import DuplicateKey, PayloadError, unique_map, unpack


class SourcedError(ValueError):
    """A problem in a file or payload: `source: key: problem`."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {problem}")


def type_name(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bytes | bytearray):
        return "bytes"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def read_json_object(path: str | Path, error: type[SourcedError]) -> Mapping[str, Any]:
    """The JSON object in a file (no key twice in any object), or `error(file, "", what is
    wrong)`."""
    source = str(path)
    try:
        body = json.loads(Path(path).read_text(encoding="utf-8"), object_pairs_hook=unique_map)
    except OSError as exc:
        raise error(source, "", f"cannot read: {exc.strerror or exc}") from None
    except DuplicateKey as exc:  # two values for one key: which one the issuer meant is unknown
        raise error(source, "", str(exc)) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(source, "", f"not JSON: {exc}") from None
    if not isinstance(body, Mapping):
        raise error(source, "", f"must hold a JSON object, got {type_name(body)}")
    return body


def unpack_object(
    payload: bytes, max_version: int, source: str, error: type[SourcedError], max_bytes: int
) -> Mapping[str, Any]:
    """The versioned msgpack map of an MQTT payload, or `error(source, "", what is wrong)`.

    A payload over `max_bytes` is refused unread: decoding it would hold the lane for seconds
    and its memory for as long as it is kept, and it is no real key set or deny list."""
    if len(payload) > max_bytes:
        raise error(source, "", f"is {len(payload)} bytes, at most {max_bytes}")
    try:
        return unpack(payload, max_version=max_version)
    except PayloadError as exc:
        raise error(source, "", str(exc)) from None


class Reader:
    """Reads typed values out of nested mappings, raising `error(source, key, problem)`."""

    def __init__(self, source: str, error: type[SourcedError]) -> None:
        self.source = source
        self.error = error

    def fail(self, key: str, problem: str) -> SourcedError:
        return self.error(self.source, key, problem)

    def has(self, body: Mapping[str, Any], name: str) -> bool:
        return body.get(name) is not None

    def table(self, body: Mapping[str, Any], name: str, path: str) -> Mapping[Any, Any]:
        value = self._get(body, name, path)
        if not isinstance(value, Mapping):
            raise self.fail(path, f"must be a table, got {type_name(value)}")
        return value

    def items(self, body: Mapping[str, Any], name: str, path: str) -> list[Any]:
        value = self._get(body, name, path)
        if not isinstance(value, list | tuple):
            raise self.fail(path, f"must be a list, got {type_name(value)}")
        return list(value)

    def text(self, body: Mapping[str, Any], name: str, path: str) -> str:
        value = self._get(body, name, path)
        if not isinstance(value, str) or not value:
            raise self.fail(path, f"must be a non-empty string, got {type_name(value)}")
        return value

    def integer(self, body: Mapping[str, Any], name: str, path: str, minimum: int = 0) -> int:
        value = self._get(body, name, path)
        return self.check_integer(value, path, minimum)

    def check_integer(self, value: object, path: str, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, f"must be an integer, got {type_name(value)} {value!r}")
        if value < minimum:
            raise self.fail(path, f"must be >= {minimum}, got {value}")
        return value

    def time(self, body: Mapping[str, Any], name: str, path: str) -> int:
        """A UTC instant: integer unix seconds or an RFC 3339 string with an explicit offset."""
        value = self._get(body, name, path)
        if isinstance(value, str):
            try:
                when = datetime.fromisoformat(value)
            except ValueError:
                raise self.fail(path, f"{value!r} is not an RFC 3339 time") from None
            if when.tzinfo is None:
                raise self.fail(path, f"{value!r} has no UTC offset (add 'Z')")
            return math.floor(when.timestamp())
        return self.check_integer(value, path)

    def _get(self, body: Mapping[str, Any], name: str, path: str) -> Any:
        if name not in body:
            raise self.fail(path, "is missing")
        return body[name]
