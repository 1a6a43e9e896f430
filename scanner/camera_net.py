"""Camera URLs: credentials kept out of every log line, and whether a camera is back.

A camera URL such as `rtsp://admin:secret@192.0.2.7/stream1` carries a password. It is used
to open the stream and nowhere else: every name, event, log line and `lane doctor` verdict
shows `redact(url)` (`rtsp://admin:***@192.0.2.7/stream1`), and text that may quote the URL
(FFmpeg's and OpenCV's own messages) goes through `redact_text`.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443, "rtmp": 1935}
# user:password@ (or user@) right after a scheme, anywhere in a text.
_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^\s:@/]*)(?::[^\s@/]*)?@", re.I)


def redact(spec: str | int) -> str:
    """The source as it may be shown: a URL's password replaced by ***."""
    text = str(spec)
    parts = urlsplit(text)
    if not parts.scheme or parts.password is None:
        return text
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def redact_text(text: str) -> str:
    """Every `scheme://user:password@` in a free text, with the password replaced by ***."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def endpoint(spec: str) -> tuple[str, int] | None:
    """(host, port) of a network camera URL; None for anything else."""
    parts = urlsplit(spec)
    default = DEFAULT_PORTS.get(parts.scheme.lower())
    if default is None or not parts.hostname:
        return None
    try:
        return parts.hostname, parts.port or default
    except ValueError:  # a port that is not a number
        return None


def reachable(spec: str | int, timeout_s: float = 0.3) -> bool | None:
    """Can the camera be reached right now, cheaply? None when there is no cheap test.

    A network camera: its TCP port accepts a connection (one SYN, closed at once; far cheaper
    than opening the stream). A V4L2 index: the device node exists.
    """
    if isinstance(spec, int):
        return Path(f"/dev/video{spec}").exists()
    where = endpoint(spec)
    if where is None:
        return None
    try:
        with socket.create_connection(where, timeout_s):
            return True
    except OSError:
        return False
