"""An old store file opened by two processes at the same moment (`lane run` beside `lane
refunds` or `lane doctor`, a lane restarted while a CLI still has the file, two ingest
workers): both open it, and it is migrated once (lane.sqlite_schema).

Each test opens ROUNDS copies of the store's oldest version, each by both processes together:
with the version read before the write lock, both ran the first step and the loser failed
("table exists", "duplicate column") in most rounds."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from race_kit import open_together

from lane.auth.replay import MIGRATIONS as REPLAY_MIGRATIONS
from lane.auth.resolution_store import SCHEMA_VERSION as PAYMENTS_VERSION
from lane.tap_store import MIGRATIONS as TAP_MIGRATIONS
from uplink.queue import MIGRATIONS as QUEUE_MIGRATIONS
from uplink.sqlite_store import SCHEMA_VERSION as INGEST_VERSION

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ROUNDS = 6


def user_version(path: Path) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def copies(fixture: str, tmp_path: Path) -> list[Path]:
    paths = [tmp_path / f"{n}-{fixture}" for n in range(ROUNDS)]
    for path in paths:
        shutil.copy(FIXTURES / fixture, path)
    return paths


def taps_v1(tmp_path: Path) -> list[Path]:
    """Taps stores of version 1, made by its first step (no release wrote a fixture of it)."""
    paths = [tmp_path / f"{n}-taps_v1.sqlite" for n in range(ROUNDS)]
    for path in paths:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        TAP_MIGRATIONS[0](db)
        db.execute("PRAGMA user_version = 1")
        db.close()
    return paths


@pytest.mark.parametrize(
    ("store", "fixture", "current"),
    [
        ("queue", "queue_v1.sqlite", len(QUEUE_MIGRATIONS)),
        ("replay", "replay_v1.sqlite", len(REPLAY_MIGRATIONS)),
        ("payments", "payments_v1.sqlite", PAYMENTS_VERSION),
        ("ingest", "ingest_v2.sqlite", INGEST_VERSION),
        ("taps", None, len(TAP_MIGRATIONS)),
    ],
)
def test_two_processes_opening_an_old_store_at_once_both_open_it(
    store: str, fixture: str | None, current: int, tmp_path: Path
) -> None:
    paths = taps_v1(tmp_path) if fixture is None else copies(fixture, tmp_path)
    assert open_together(store, paths) == []
    assert [user_version(p) for p in paths] == [current] * ROUNDS


@pytest.mark.parametrize("store", ["replay", "payments", "taps", "ingest"])
def test_two_processes_creating_a_store_at_once_both_open_it(store: str, tmp_path: Path) -> None:
    """A store that is not there yet is version 0: both openers create it, once (the queue
    is made under a name of its own and renamed into place: uplink.queue)."""
    paths = [tmp_path / f"{n}-{store}.sqlite3" for n in range(ROUNDS)]
    assert open_together(store, paths) == []
