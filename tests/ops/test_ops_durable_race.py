"""A file written whole (lane.durable.write_atomically) by two processes at the same moment,
as a lane restarted while the one before still has a disk probe's write waiting: both
writes go through, and the file is always one of them whole."""

from __future__ import annotations

from pathlib import Path

import pytest
from disk_kit import fill, small_tmpfs
from race_kit import write_atomically_together

from lane.durable import write_atomically

TIMES = 300


def test_two_processes_writing_one_file_at_once_both_write_it_whole(tmp_path: Path) -> None:
    """They shared one temporary name: one renamed the other's half-written file into place
    and the other's rename then found nothing (FileNotFoundError)."""
    path = tmp_path / "disk-probe"
    assert write_atomically_together(path, TIMES) == [0, 0]
    assert path.read_bytes() in {b"a" * 4096, b"b" * 4096}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_write_the_disk_has_no_room_for_leaves_no_file(tmp_path: Path) -> None:
    """Each write has a temporary file of its own: one that fails is removed, or a full disk
    probed every few seconds would gather a file a try."""
    with small_tmpfs(tmp_path / "fs") as fs:
        filler = fill(fs)
        for _ in range(3):
            with pytest.raises(OSError, match="No space left"):
                write_atomically(fs / "disk-probe", b"x" * 65536)
        assert list(fs.iterdir()) == [filler]
