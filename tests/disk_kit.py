"""A real full disk for the tests: a size-limited tmpfs of a test's own, and a filler; a FAT
file system (no hard links); a real hung disk: an ext4 image of a test's own on a loop device,
frozen (`fsfreeze`: every write and fsync blocks, no error, until it is thawed); and a SQLite
file with one table's page broken under the connection that uses it.

Mounting needs root (CI runs `make test` as root); elsewhere the test is skipped."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

SIZE = "8m"  # room for the three SQLite files and their WAL; small enough to fill at once


@contextlib.contextmanager
def small_tmpfs(target: Path, size: str = SIZE) -> Iterator[Path]:
    """`target` (made here) as a tmpfs of `size` of its own while the block runs."""
    options = f"size={size},mode=0700"
    mount = [["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)]]
    with _mounted(target, mount, "a size-limited tmpfs") as mounted:
        yield mounted


@contextlib.contextmanager
def ext4_image(target: Path, size: str = "64M") -> Iterator[Path]:
    """`target` (made here) as an ext4 file system of `size` on a loop device of its own (the
    image beside it) while the block runs."""
    image = str(target.with_name(target.name + ".ext4"))
    mount = [
        ["truncate", "-s", size, image],
        ["mkfs.ext4", "-q", "-F", image],
        ["mount", "-o", "loop", image, str(target)],
    ]
    with _mounted(target, mount, "an ext4 image on a loop device") as mounted:
        yield mounted


@contextlib.contextmanager
def fat_image(target: Path, size: str = "32M") -> Iterator[Path]:
    """`target` (made here) as a FAT file system of `size` (an SD card's, a USB stick's: no
    hard links) while the block runs: dosfstools' image mounted by fusefat, where the kernel
    has no vfat of its own (a container's). Its SQLite files take no WAL (FUSE)."""
    image = str(target.with_name(target.name + ".fat"))
    mount = [
        ["truncate", "-s", size, image],
        ["mkfs.vfat", image],
        ["fusefat", "-o", "rw+", image, str(target)],
    ]
    with _mounted(target, mount, "a FAT image (fusefat)") as mounted:
        yield mounted


@contextlib.contextmanager
def _mounted(target: Path, commands: list[list[str]], what: str) -> Iterator[Path]:
    """`target` made, `commands` run to mount `what` on it (the test skipped, saying why, when
    they fail), unmounted after the block."""
    target.mkdir()
    try:
        for command in commands:
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        pytest.skip(f"cannot mount {what} here (needs root): {detail.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True, timeout=60)


@contextlib.contextmanager
def frozen(mountpoint: Path) -> Iterator[Path]:
    """The file system at `mountpoint` frozen while the block runs: every write to it waits,
    as on a disk that stopped answering; thawed after, when the waiting writes go through."""
    subprocess.run(["fsfreeze", "-f", str(mountpoint)], check=True, timeout=30)
    try:
        yield mountpoint
    finally:
        subprocess.run(["fsfreeze", "-u", str(mountpoint)], check=True, timeout=30)


def fill(directory: Path) -> Path:
    """Write zeros until the file system says ENOSPC; the file that took the space."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        size = 65536
        while size:  # down to the last byte
            try:
                os.write(fd, b"\0" * size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                size //= 2
    finally:
        os.close(fd)
    return filler


def break_table_page(path: Path, table: str) -> None:
    """Overwrite the root page of `table` in the SQLite file at `path` (its WAL checkpointed
    into it first), as a bad sector or a stray write would: nothing else is touched."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (page,) = db.execute("PRAGMA page_size").fetchone()
        (root,) = db.execute(
            "SELECT rootpage FROM sqlite_schema WHERE name = ?", (table,)
        ).fetchone()
    with path.open("r+b") as f:
        f.seek((root - 1) * page)
        f.write(b"\xa5" * page)
