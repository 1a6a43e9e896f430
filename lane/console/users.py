"""Console operators: a local user file with scrypt-hashed passwords, and login sessions.

The file holds one user a line, `name:role:scrypt$N$r$p$salt$hash` (hex salt and hash), `#`
comments and blank lines allowed; `lane console adduser` writes it. Roles: `operator` may act
on lanes, `viewer` may only look. A broken file is refused with every bad line named.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

N, R, P = 2**14, 8, 1  # scrypt cost: ~50 ms and 16 MiB per check on a lane computer
SESSION_TTL_S = 8 * 3600.0  # one shift
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}\Z")


class Role(StrEnum):
    OPERATOR = "operator"
    VIEWER = "viewer"


class UsersError(ValueError):
    """The user file cannot be used; the message names each bad line."""


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    hashed: str

    @property
    def may_act(self) -> bool:
        return self.role is Role.OPERATOR


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, dklen=32)
    return f"scrypt${N}${R}${P}${salt.hex()}${digest.hex()}"


def check_password(hashed: str, password: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = hashed.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


def parse_users(text: str, source: str) -> dict[str, User]:
    users: dict[str, User] = {}
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) != 3:
            problems.append(f"{source}:{number}: expected name:role:hash")
            continue
        name, role, hashed = parts
        if not _NAME.match(name):
            problems.append(f"{source}:{number}: bad user name {name!r}")
        elif role not in Role.__members__.values():
            problems.append(f"{source}:{number}: role must be operator or viewer, got {role!r}")
        elif not hashed.startswith("scrypt$") or hashed.count("$") != 5:
            problems.append(f"{source}:{number}: password is not a scrypt hash")
        elif name in users:
            problems.append(f"{source}:{number}: user {name!r} appears twice")
        else:
            users[name] = User(name, Role(role), hashed)
    if problems:
        raise UsersError("\n".join(problems))
    return users


def load_users(path: Path) -> dict[str, User]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsersError(f"{path}: cannot read: {exc}") from exc
    return parse_users(text, str(path))


def add_user(path: Path, name: str, role: Role, password: str) -> None:
    """Add or replace one user, writing the file atomically (mode 0600)."""
    if not _NAME.match(name):
        raise UsersError(f"bad user name {name!r}")
    if not password:
        raise UsersError("empty password")
    users = load_users(path) if path.exists() else {}
    users[name] = User(name, role, hash_password(password))
    body = "".join(f"{u.name}:{u.role.value}:{u.hashed}\n" for u in users.values())
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(body)
    tmp.replace(path)


class Sessions:
    """Login sessions: an unguessable token (the cookie) -> the user, for one shift."""

    def __init__(self, clock: Callable[[], float], ttl_s: float = SESSION_TTL_S) -> None:
        self.clock = clock
        self.ttl_s = ttl_s
        self._by_token: dict[str, tuple[User, float]] = {}

    def login(self, users: dict[str, User], name: str, password: str) -> str | None:
        user = users.get(name)
        # Unknown names cost a hash too, so timing does not tell which names exist.
        hashed = user.hashed if user is not None else hash_password("", b"\0" * 16)
        if not check_password(hashed, password) or user is None:
            return None
        now = self.clock()
        self._by_token = {t: v for t, v in self._by_token.items() if v[1] > now}
        token = secrets.token_urlsafe(32)
        self._by_token[token] = (user, now + self.ttl_s)
        return token

    def user(self, token: str | None) -> User | None:
        if token is None:
            return None
        found = self._by_token.get(token)
        if found is None or found[1] <= self.clock():
            return None
        return found[0]

    def logout(self, token: str | None) -> None:
        if token is not None:
            self._by_token.pop(token, None)
