"""FFmpeg's and OpenCV's own messages as structured log events, not loose stderr lines.

Native code writes plain text to file descriptor 2 ("[ WARN:0@1.6] global cap_ffmpeg_impl.hpp
... Stream timeout triggered", "[rtsp @ 0x55...] method DESCRIBE failed"), which would land
among the lane's JSON lines (`journalctl | jq` breaks). `capture_native_stderr()` points fd 2
at a pipe; a thread reads it line by line and logs each line as the event `native stderr`
(logger `lane.native`, field `line`, credentials in URLs redacted) through the lane's JSON
logging, which writes to stdout. Python's own last-resort messages on stderr come through the
same way. The logging set-up must not write to stderr itself, or lines would go round.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading

from scanner.camera_net import redact_text

log = logging.getLogger("lane.native")

_active: NativeStderr | None = None


class NativeStderr:
    def __init__(self) -> None:
        self._saved: int | None = None
        self._thread: threading.Thread | None = None
        self.lines = 0

    def start(self) -> None:
        read_end, write_end = os.pipe()
        self._saved = os.dup(2)
        os.dup2(write_end, 2)
        os.close(write_end)
        self._thread = threading.Thread(
            target=self._pump, args=(read_end,), name="native-stderr", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Give fd 2 back; the reader ends once the pipe's last writer is gone."""
        if self._saved is None:
            return
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._saved = None
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def _pump(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as pipe:
            for raw in pipe:
                text = raw.decode("utf-8", "replace").rstrip()
                if text:
                    self.lines += 1
                    log.warning("native stderr", extra={"line": redact_text(text)})


def capture_native_stderr() -> NativeStderr:
    """Start capturing fd 2 for the rest of the process (once; later calls return the same)."""
    global _active  # noqa: PLW0603 - one fd 2 per process, one capture
    if _active is None:
        _active = NativeStderr()
        _active.start()
    return _active


def release_native_stderr() -> None:
    global _active  # noqa: PLW0603
    if _active is not None:
        with contextlib.suppress(OSError):
            _active.stop()
        _active = None
