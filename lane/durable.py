"""Files that must be on disk before the caller goes on: written whole or not at all, and a
crash right after the call finds them (or finds them gone) as the call left them."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """`path` holds `data` once this returns: a temporary file fsynced, renamed over it, and
    the directory fsynced so the rename itself survives a power cut. Raises OSError."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)
    sync_dir(path.parent)


def sync_dir(directory: Path) -> None:
    """Make the directory's entries (a rename, a removal) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
