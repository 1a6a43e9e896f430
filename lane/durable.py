"""Files that must be on disk before the caller goes on: written whole or not at all, and a
crash right after the call finds them (or finds them gone) as the call left them."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """`path` holds `data` once this returns: a temporary file fsynced, renamed over it, and
    the directory fsynced so the rename itself survives a power cut. Raises OSError.

    The temporary file is the call's own (its pid and a random part): two processes writing
    `path` at once (a lane restarted while the one before still has a write of its disk probe
    waiting on the disk: lane.disk_probe) shared one name, where one renamed the file the
    other was still writing, whose rename then failed. Removed again when the write fails:
    a full disk leaves no empty file at each try."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_dir(path.parent)


def sync_dir(directory: Path) -> None:
    """Make the directory's entries (a rename, a removal) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
