"""An old store file opened by two processes at the same moment (`lane run` beside `lane
refunds`, a lane restarted while that CLI still has the file, two ingest workers): both open
it, and it is migrated once (lane.sqlite_schema).

Each test opens ROUNDS copies of an old version of the store, each by both processes together:
with the version read before the write lock, both ran the first step and the loser failed
("table exists", "duplicate column") in most rounds."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest
from race_kit import QUEUE_LANE, open_together, written_together

from lane.auth.replay import MIGRATIONS as REPLAY_MIGRATIONS
from lane.auth.resolution_store import SCHEMA_VERSION as PAYMENTS_VERSION
from lane.sqlite_schema import Migration
from lane.tap_store import MIGRATIONS as TAP_MIGRATIONS
from uplink.queue import MIGRATIONS as QUEUE_MIGRATIONS
from uplink.queue import RecordQueue
from uplink.records import Record
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


def made(store: str, steps: Sequence[Migration], version: int, tmp_path: Path) -> list[Path]:
    """Files of `version`, made by its first steps: the taps store's version 1 (no release
    wrote a fixture of it) and version 4 of the replay and taps stores, which the release
    before their exit ids (version 5) left on every metro gate."""
    paths = [tmp_path / f"{n}-{store}_v{version}.sqlite" for n in range(ROUNDS)]
    for path in paths:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        for step in steps[:version]:
            step(db)
        db.execute(f"PRAGMA user_version = {version}")
        db.close()
    return paths


@pytest.mark.parametrize(
    ("store", "fixture", "current"),
    [
        ("queue", "queue_v1.sqlite", len(QUEUE_MIGRATIONS)),
        ("replay", "replay_v1.sqlite", len(REPLAY_MIGRATIONS)),
        ("payments", "payments_v1.sqlite", PAYMENTS_VERSION),
        ("ingest", "ingest_v2.sqlite", INGEST_VERSION),
        ("taps", 1, len(TAP_MIGRATIONS)),
        ("taps", 4, len(TAP_MIGRATIONS)),
        ("replay", 4, len(REPLAY_MIGRATIONS)),
    ],
)
def test_two_processes_opening_an_old_store_at_once_both_open_it(
    store: str, fixture: str | int, current: int, tmp_path: Path
) -> None:
    """`fixture`: a file of an earlier release, or the version of one made here (`made`)."""
    if isinstance(fixture, int):
        steps = TAP_MIGRATIONS if store == "taps" else REPLAY_MIGRATIONS
        paths = made(store, steps, fixture, tmp_path)
    else:
        paths = copies(fixture, tmp_path)
    assert open_together(store, paths) == []
    assert [user_version(p) for p in paths] == [current] * ROUNDS


@pytest.mark.parametrize("store", ["replay", "payments", "taps", "ingest", "queue"])
def test_two_processes_creating_a_store_at_once_both_open_it(store: str, tmp_path: Path) -> None:
    """A store that is not there yet is version 0: both openers create it, once (the queue
    is made under a name of its own and linked into place: uplink.queue)."""
    paths = [tmp_path / f"{n}-{store}.sqlite3" for n in range(ROUNDS)]
    assert open_together(store, paths) == []


def test_two_processes_creating_a_queue_at_once_both_write_into_the_one_queue(
    tmp_path: Path,
) -> None:
    """Each process appends a record once its queue is open: both records are in the file.
    The creators shared one temporary name (one unlinked the other's half-built file) and
    renamed theirs over the path (the first one's queue, with its record, went with its file)."""
    paths = [tmp_path / f"{n}-queue.sqlite3" for n in range(ROUNDS)]
    failures, written = written_together("queue", paths)
    assert failures == []
    with contextlib.ExitStack() as stack:
        held = set[str]()
        for path in paths:
            queue = stack.enter_context(RecordQueue(path, QUEUE_LANE, 10**8))
            held |= {Record.decode(data).record_id for _, data in queue.batch(0, 10)}
    assert sorted(held) == sorted(written) and len(written) == 2 * ROUNDS
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
