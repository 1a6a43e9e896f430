"""The deny list: account references whose offline tokens the lane refuses.

Same transport as the key set: a JSON file (`load_deny_list`) or a msgpack payload on the
retained topic `lane/{plaza}/deny` (`decode_deny_list`). Every list carries a generation
number; a lane replaces its list only with a strictly higher generation, so a late retained
message or an old file can never bring back an account that was denied since (and, by the
bounds in `lane.auth.trust`, never with an absurd one).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lane.auth.sourced import (
    Reader,
    SourcedError,
    read_json_object,
    type_name,
    unpack_object,
)
from lane.wire.codec import pack
from lane.wire.utc import utc_text

DENY_VERSION = 1
# An MQTT deny list's bound: about two million accounts of 16 characters (~18 bytes each);
# decoding one that large takes a couple of seconds, off the event loop.
MAX_DENY_BYTES = 32 << 20


class DenyListError(SourcedError):
    """A deny list file or payload that cannot be used; says where and what."""


@dataclass(frozen=True)
class DenyList:
    generation: int
    accounts: frozenset[str] = frozenset()
    issued_at: int | None = None

    @classmethod
    def empty(cls) -> DenyList:
        """Generation 0: any real list supersedes it."""
        return cls(0)

    @classmethod
    def of(cls, generation: int, accounts: Iterable[str], issued_at: int | None = None) -> DenyList:
        return cls(generation, frozenset(accounts), issued_at)

    def denies(self, account_ref: str) -> bool:
        return account_ref in self.accounts

    def supersedes(self, other: DenyList) -> bool:
        return self.generation > other.generation


def parse_deny_list(body: Mapping[str, Any], source: str) -> DenyList:
    read = Reader(source, DenyListError)
    version = read.integer(body, "v", "v", minimum=1)
    if version > DENY_VERSION:
        raise read.fail("v", f"deny list format {version} is newer than this lane ({DENY_VERSION})")
    generation = read.integer(body, "generation", "generation", minimum=1)
    issued_at = read.time(body, "issued_at", "issued_at") if read.has(body, "issued_at") else None
    accounts: set[str] = set()
    for i, account in enumerate(read.items(body, "accounts", "accounts")):
        if not isinstance(account, str) or not account:
            problem = f"must be a non-empty string, got {type_name(account)}"
            raise read.fail(f"accounts[{i}]", problem)
        accounts.add(account)
    return DenyList(generation, frozenset(accounts), issued_at)


def load_deny_list(path: str | Path) -> DenyList:
    return parse_deny_list(read_json_object(path, DenyListError), str(path))


def decode_deny_list(payload: bytes, source: str = "mqtt deny") -> DenyList:
    return parse_deny_list(
        unpack_object(payload, DENY_VERSION, source, DenyListError, MAX_DENY_BYTES), source
    )


def encode_deny_list(deny: DenyList) -> bytes:
    """The msgpack payload for `lane/{plaza}/deny` (publish it retained)."""
    body: dict[str, Any] = {"generation": deny.generation, "accounts": sorted(deny.accounts)}
    if deny.issued_at is not None:
        body["issued_at"] = deny.issued_at
    return pack(body, v=DENY_VERSION)


def deny_list_to_json(deny: DenyList) -> str:
    body: dict[str, Any] = {"v": DENY_VERSION, "generation": deny.generation}
    if deny.issued_at is not None:
        body["issued_at"] = utc_text(deny.issued_at)
    body["accounts"] = sorted(deny.accounts)
    return json.dumps(body, indent=2) + "\n"
