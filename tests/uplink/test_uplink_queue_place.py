"""A new queue file put in place (uplink.queue.place_new) on a FAT file system, an SD card's or
a USB stick's, which takes no hard links: the lane's data directory may be one."""

from __future__ import annotations

from pathlib import Path

import pytest
from disk_kit import fat_image

from uplink.queue import place_new


def test_a_new_queue_goes_in_place_on_a_file_system_without_hard_links(tmp_path: Path) -> None:
    """link() says EPERM there: the file is renamed into place, and a second one never
    replaces it. With the link alone the lane could not create its queue (exit 2 at start)."""
    with fat_image(tmp_path / "sd") as sd:
        path, first, second = sd / "queue.db", sd / "queue.db.init.1.a", sd / "queue.db.init.2.b"
        first.write_bytes(b"first creator's queue")
        second.write_bytes(b"second creator's queue")
        place_new(first, path)
        with pytest.raises(FileExistsError):
            place_new(second, path)
        assert path.read_bytes() == b"first creator's queue"
        assert sorted(p.name for p in sd.iterdir()) == sorted([path.name, second.name])
