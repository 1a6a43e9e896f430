"""Files that must be on disk before the caller goes on: written whole or not at all, and a
crash right after the call finds them (or finds them gone) as the call left them."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger(__name__)


def write_atomically(path: Path, data: bytes) -> None:
    """`path` holds `data` once this returns: a temporary file fsynced, renamed over it, and
    the directory fsynced so the rename itself survives a power cut. Raises OSError.

    The temporary file is the call's own (its pid and a random part): two processes writing
    `path` at once (a lane restarted while the one before still has a write of its disk probe
    waiting on the disk: lane.disk_probe) shared one name, where one renamed the file the
    other was still writing, whose rename then failed. Removed again when the write fails:
    a full disk leaves no empty file at each try; one a dead writer left (killed or a power
    cut mid-write) is removed by the next write of `path`."""
    _drop_dead_writes(path)
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


def _drop_dead_writes(path: Path) -> None:
    """Remove the temporary files of writes of `path` whose process is gone: a unique name
    is never written again, so nothing else would. One of a live process is its own write."""
    for leftover in path.parent.glob(f"{path.name}.*.tmp"):
        parts = leftover.name.removeprefix(f"{path.name}.").removesuffix(".tmp").split(".")
        if len(parts) != 2 or not parts[0].isdigit() or process_alive(int(parts[0])):
            continue  # another target's file (a name with dots), or a write still going on
        try:
            leftover.unlink(missing_ok=True)
        except OSError as exc:  # the write itself may still succeed: it says what is wrong
            log.warning(
                "dead writer's temporary file not removed",
                extra={"path": str(leftover), "error": str(exc)},
            )
            continue
        log.info("dead writer's temporary file removed", extra={"path": str(leftover)})


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists (one of another user counts: it may not be signalled)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sync_dir(directory: Path) -> None:
    """Make the directory's entries (a rename, a removal) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
