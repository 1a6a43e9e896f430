"""Two processes creating the queue at once in a data directory on a FAT file system (an SD
card's, a USB stick's), which takes no hard links: the queue is renamed into place after a
look, under a lock of the directory, so exactly one creator's file is there and the other
is told (uplink.queue.place_new)."""

from __future__ import annotations

from pathlib import Path

from disk_kit import fat_image
from race_kit import placed_together

ROUNDS = 40


def test_two_creators_at_once_on_fat_put_exactly_one_file_in_place(tmp_path: Path) -> None:
    """Without the lock both could look, find the path free, and rename: the second's file
    replacing the first's, which may hold records already, and both saying they made it."""
    with fat_image(tmp_path / "sd") as sd:
        won = placed_together(sd, ROUNDS)
        assert all(len(names) == 1 for names in won.values()), won
        assert {n: (sd / f"q{n}").read_text() for n in won} == {n: w[0] for n, w in won.items()}
        assert sorted(p.name for p in sd.iterdir()) == sorted(f"q{n}" for n in won)
