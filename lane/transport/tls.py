"""The CA file a link verifies its broker with, read again whenever it changes.

A broker's certificate re-issued under a new CA (a rotation) and the lane's CA file replaced:
a context read once at start kept a running link retrying with the old CA for ever. Every
connection attempt asks `CaFile.context()`, which costs one `stat` and reads the file only
when its inode, size or mtime changed. A file missing or unreadable then (half-way through a
rotation) does not stop the link: the last good context stays, and `problem` says so for the
alarm. At start there is no last good context: `CaFile.load` raises (the caller names the
setting: `lane run` exits 2).
"""

from __future__ import annotations

import logging
import os
import re
import ssl
from pathlib import Path

log = logging.getLogger("lane.mqtt")

_Stamp = tuple[int, int, int] | None  # inode, size, mtime (ns); None: cannot stat

# "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: ... (_ssl.c:1006)"
_SSL_ERROR = re.compile(r"\[SSL(?:: [A-Z0-9_]+)?\] (?P<what>.*?)(?: \(_ssl\.c:\d+\))?$")


def tls_context(ca_file: Path) -> ssl.SSLContext:
    """A client TLS context that verifies the broker against `ca_file` (OSError when it is
    missing or holds no CA: ssl.SSLError is one)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class CaFile:
    def __init__(self, path: Path, context: ssl.SSLContext, stamp: _Stamp) -> None:
        self.path = path
        self._context = context
        self._stamp = stamp
        # Why the file as it is now is not the one verifying (None: it is).
        self.problem: str | None = None

    @classmethod
    def load(cls, path: Path) -> CaFile:
        """The file as it is now (OSError when it is missing or holds no CA)."""
        stamp = _stamp(path)
        return cls(path, tls_context(path), stamp)

    def context(self) -> ssl.SSLContext:
        """The context for the next connection: the file as it is now, or the last good one."""
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return self._context
        self._stamp = stamp
        try:
            self._context = tls_context(self.path)
        except OSError as exc:
            self.problem = (
                f"CA file {self.path} unreadable ({exc.strerror or exc}): "
                "still verifying with the one read before"
            )
            log.warning("broker CA file unreadable", extra={"error": self.problem})
            return self._context
        self.problem = None
        log.info("broker CA file read again", extra={"file": str(self.path)})
        return self._context


def _stamp(path: Path) -> _Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def tls_failure(error: str) -> str | None:
    """What a failed attempt's error says about TLS ("TLS: certificate verify failed: unable
    to get local issuer certificate"), None when it is no TLS error (pure)."""
    found = _SSL_ERROR.search(error)
    return f"TLS: {found['what']}" if found else None
