"""`barrier_stuck`'s latch on disk, so a restarted lane (a crash, kill -9, a power cut) does not
forget that its boom did not open and charge the next driver for a boom that cannot rise
(docs/barrier.md, "A boom stuck closed").

One small JSON file in the data directory, there exactly while the latch holds: written
atomically (temporary file, fsync, rename, fsync of the directory) when the core latches
(KeepStuckLatch), removed when the boom is seen open (DropStuckLatch), read once at start-up
into the core's StuckCarried. A file that cannot be read or parsed still means "latched": the
safe side is a lane closed to payments until its own self-test sees the boom open, which takes
seconds when the boom works.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lane.auth.sourced import rfc3339
from lane.core.events import StuckCarried
from lane.durable import sync_dir, write_atomically

log = logging.getLogger("lane.stuck_latch")

FILE_NAME = "barrier_stuck.json"
UNKNOWN_SINCE = "an unknown time"


class StuckLatchFile:
    def __init__(self, data_dir: Path, lane: str) -> None:
        self.path = data_dir / FILE_NAME
        self.lane = lane

    def keep(self, since: float, detail: str) -> None:
        """Latched at `since` (unix s): durable before this returns. Raises OSError."""
        data = json.dumps({"since": rfc3339(int(since)), "detail": detail}).encode()
        write_atomically(self.path, data)

    def drop(self) -> None:
        """Cleared: gone for good before this returns (a crash after it starts unlatched)."""
        self.path.unlink(missing_ok=True)
        sync_dir(self.path.parent)

    def load(self) -> StuckCarried | None:
        """The latch kept before the restart, if any; an unreadable one still latches."""
        try:
            body = json.loads(self.path.read_bytes())
            since, detail = body["since"], body["detail"]
            if not isinstance(since, str) or not isinstance(detail, str):
                raise TypeError("since and detail must be text")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            error = f"{type(e).__name__}: {e}"
            log.error(
                "stuck latch unreadable: latched to be safe",
                extra={"lane": self.lane, "path": str(self.path), "error": error},
            )
            detail = f"the kept latch {self.path} is unreadable ({error}); latched to be safe"
            return StuckCarried(UNKNOWN_SINCE, detail)
        log.warning(
            "stuck latch carried over a restart",
            extra={"lane": self.lane, "since": since, "detail": detail},
        )
        return StuckCarried(since, detail)
