"""Console operators: the user file, password hashes and login sessions."""

from __future__ import annotations

from pathlib import Path

import pytest

from lane.console.users import (
    Role,
    Sessions,
    UsersError,
    add_user,
    check_password,
    hash_password,
    load_users,
    parse_users,
)


def test_a_password_checks_against_its_hash_and_nothing_else() -> None:
    hashed = hash_password("correct horse")
    assert hashed.startswith("scrypt$") and "correct" not in hashed
    assert check_password(hashed, "correct horse")
    assert not check_password(hashed, "correct horse ")
    assert not check_password("scrypt$1$2$3$zz$zz", "x")  # a broken hash never checks
    assert hash_password("same") != hash_password("same")  # salted


def test_users_are_added_replaced_and_the_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    add_user(path, "alice", Role.OPERATOR, "a")
    add_user(path, "victor", Role.VIEWER, "v")
    add_user(path, "alice", Role.VIEWER, "a2")
    users = load_users(path)
    assert {u.name: u.role for u in users.values()} == {"alice": Role.VIEWER, "victor": Role.VIEWER}
    assert check_password(users["alice"].hashed, "a2")
    assert path.stat().st_mode & 0o777 == 0o600
    assert not users["victor"].may_act


def test_a_broken_user_file_is_refused_naming_every_bad_line() -> None:
    text = "\n".join(
        [
            "# comment",
            "",
            "alice:operator:" + hash_password("a"),
            "bob:admin:" + hash_password("b"),
            "carol:viewer:plaintext",
            "no colons",
            "alice:viewer:" + hash_password("c"),
        ]
    )
    with pytest.raises(UsersError) as caught:
        parse_users(text, "users.txt")
    message = str(caught.value)
    for line in (
        "users.txt:4: role",
        "users.txt:5: password",
        "users.txt:6: expected",
        "users.txt:7: user",
    ):
        assert line in message


@pytest.mark.parametrize(("name", "password"), [("bad name", "x"), ("ok", "")])
def test_bad_new_users_are_refused(tmp_path: Path, name: str, password: str) -> None:
    with pytest.raises(UsersError):
        add_user(tmp_path / "u.txt", name, Role.OPERATOR, password)


def test_sessions_last_one_shift_and_end_at_logout() -> None:
    now = [0.0]
    sessions = Sessions(lambda: now[0], ttl_s=100.0)
    users = parse_users("alice:operator:" + hash_password("pw"), "u")
    assert sessions.login(users, "alice", "nope") is None
    assert sessions.login(users, "mallory", "pw") is None
    token = sessions.login(users, "alice", "pw")
    assert token is not None and sessions.user(token) == users["alice"]
    assert sessions.user("forged") is None and sessions.user(None) is None
    now[0] = 101.0
    assert sessions.user(token) is None
    token = sessions.login(users, "alice", "pw")
    sessions.logout(token)
    assert sessions.user(token) is None
