"""A file written whole (lane.durable.write_atomically) by two processes at the same moment,
as a lane restarted while the one before still has a disk probe's write waiting: both
writes go through, and the file is always one of them whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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


# A writer stopped mid-write: its temporary file, named as write_atomically names it, is on
# disk and the process waits (for the test to kill it, as a power cut would).
HALF_WRITER = """
import os, sys
tmp = f"{sys.argv[1]}.{os.getpid()}.0123abcd.tmp"
with open(tmp, "wb") as out:
    out.write(b"half")
print(tmp, flush=True)
sys.stdin.read()
"""


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path: Path) -> None:
    """Each write's temporary name is unique: a writer killed mid-write left its file for
    ever, one a probe every few seconds after each power cut. A live writer's file stays."""
    path = tmp_path / "disk-probe"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", HALF_WRITER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    killed = writers[0]
    try:
        tmps = [Path(w.stdout.readline().decode().strip()) for w in writers]  # type: ignore[union-attr]
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        mine = tmp_path / f"disk-probe.{os.getpid()}.89abcdef.tmp"
        mine.write_bytes(b"")
        write_atomically(path, b"x")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [path.name, tmps[1].name, mine.name]
        )
    finally:
        for w in writers:
            w.kill()
            w.communicate()
