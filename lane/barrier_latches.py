"""The barrier's latches on disk (names.KEPT_LATCHES: `barrier_stuck`, `barrier_no_ack`), so a
restarted lane (a crash, kill -9, a power cut) does not forget that its boom did not open or
that its device drops commands, and charge the next driver for a barrier that cannot let them
through (docs/barrier.md, "Faults kept over a restart").

One small JSON file per fault in the data directory, named for its alarm
(`barrier_stuck.json`, `barrier_no_ack.json`), there exactly while the fault holds: written
atomically (lane.durable) when the core raises it (KeepLatch), removed when it clears
(DropLatch), read once at start-up into the core's LatchCarried events. A file that cannot be
read or parsed still means "latched": the safe side is a lane closed to payments until what
clears the fault while the lane runs (a self-test that sees the boom open, an ack of a
command) clears it, which takes seconds when the barrier works.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lane.core.events import LatchCarried
from lane.core.names import KEPT_LATCHES, Alarm
from lane.durable import sync_dir, write_atomically
from lane.wire.ids import new_id
from lane.wire.utc import utc_text

log = logging.getLogger("lane.barrier_latches")

UNKNOWN_SINCE = "an unknown time"


def file_name(fault: Alarm) -> str:
    return f"{fault}.json"


class LatchFiles:
    def __init__(self, data_dir: Path, lane: str) -> None:
        self.data_dir = data_dir
        self.lane = lane

    def path(self, fault: Alarm) -> Path:
        return self.data_dir / file_name(fault)

    def keep(self, fault: Alarm, since: float, detail: str) -> None:
        """Raised at `since` (unix s): durable before this returns. Raises OSError."""
        data = json.dumps({"since": utc_text(since), "detail": detail}).encode()
        write_atomically(self.path(fault), data)

    def drop(self, fault: Alarm) -> None:
        """Cleared: gone for good before this returns (a crash after it starts unlatched)."""
        path = self.path(fault)
        path.unlink(missing_ok=True)
        sync_dir(path.parent)

    def load(self) -> list[LatchCarried]:
        """The faults kept before the restart, in KEPT_LATCHES order; an unreadable one still
        latches."""
        return [c for c in (self._load(fault) for fault in KEPT_LATCHES) if c is not None]

    def _load(self, fault: Alarm) -> LatchCarried | None:
        path = self.path(fault)
        extra = {"lane": self.lane, "alarm": str(fault), "path": str(path)}
        try:
            body = json.loads(path.read_bytes())
            since, detail = body["since"], body["detail"]
            if not isinstance(since, str) or not isinstance(detail, str):
                raise TypeError("since and detail must be text")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            error = f"{type(e).__name__}: {e}"
            log.error("latch unreadable: latched to be safe", extra={**extra, "error": error})
            detail = f"the kept latch {path} is unreadable ({error}); latched to be safe"
            return LatchCarried(fault, UNKNOWN_SINCE, detail, new_id())
        log.warning(
            "latch carried over a restart", extra={**extra, "since": since, "detail": detail}
        )
        return LatchCarried(fault, since, detail, new_id())
