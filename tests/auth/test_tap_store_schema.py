"""The taps store's file from another lane version (lane.tap_store): a newer one is refused
with one clear error naming it, and left as it was."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from lane.tap_store import MIGRATIONS, TapStore, TapStoreError


def test_a_newer_taps_store_is_refused_naming_the_file_once_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    """The refusal read "<file>: cannot open: <file>: schema version ..." (the replay store's
    check, wrapped again), and the store's connection stayed open on the refused file."""
    path = tmp_path / "taps.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(TapStoreError) as refused:
        TapStore(path)
    assert str(refused.value) == (
        f"{path}: schema version {len(MIGRATIONS) + 1} is newer than this lane knows"
        f" ({len(MIGRATIONS)})"
    )
    assert path.read_bytes() == before
    assert not (tmp_path / "taps.sqlite3-wal").exists()
