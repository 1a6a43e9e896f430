"""Why a camera stream does not open, in words an installer can act on.

OpenCV only says "cannot open": FFmpeg's own answer (the camera replied 400 Bad Request, 401,
461 Unsupported Transport ...) never leaves it. When an open fails, the capture source asks
the camera itself, the way FFmpeg would: RTSP OPTIONS, DESCRIBE (with the URL's credentials,
Basic or Digest) and SETUP with the configured transport, then TEARDOWN; HTTP one GET. The
answer is one line (credentials never in it), for the camera event, the lane's alarm and
`lane doctor`. Blocking with a timeout: called on the capture thread, or off the event loop.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from scanner.camera_net import endpoint, redact

TRANSPORT_HEADERS = {
    "tcp": "RTP/AVP/TCP;unicast;interleaved=0-1",
    "udp": "RTP/AVP;unicast;client_port=50000-50001",
    "udp_multicast": "RTP/AVP;multicast",
    "http": "RTP/AVP/TCP;unicast;interleaved=0-1",
}
OTHER_TRANSPORT = {"tcp": "udp", "udp": "tcp", "udp_multicast": "udp", "http": "tcp"}


@dataclass(frozen=True)
class Reply:
    status: int
    reason: str
    headers: Mapping[str, str]
    body: str


def why_not_open(spec: str, transport: str = "tcp", timeout_s: float = 3.0) -> str:
    """One line: what the camera at `spec` says when asked for its stream."""
    scheme = urlsplit(spec).scheme.lower()
    where = endpoint(spec)
    if where is None:
        return "cannot open (not a network stream: check the device or file)"
    try:
        if scheme in ("rtsp", "rtsps"):
            return _rtsp(spec, where, transport, timeout_s)
        if scheme in ("http", "https"):
            return _http(spec, where, scheme, timeout_s)
    except TimeoutError:
        return f"{where[0]}:{where[1]}: no answer within {timeout_s:g} s"
    except ConnectionRefusedError:
        return f"{where[0]}:{where[1]}: connection refused (camera off, or wrong port)"
    except OSError as exc:
        return f"{where[0]}:{where[1]}: {exc.strerror or exc}"
    except ValueError as exc:  # an answer that is not RTSP/HTTP
        return f"{where[0]}:{where[1]}: {exc}"
    return f"cannot open {redact(spec)}"


# --- RTSP ---------------------------------------------------------------------------------------


def _rtsp(spec: str, where: tuple[str, int], transport: str, timeout_s: float) -> str:
    parts = urlsplit(spec)
    user, password = parts.username, parts.password
    url = urlunsplit(parts._replace(netloc=f"{where[0]}:{where[1]}"))
    with socket.create_connection(where, timeout_s) as sock:
        sock.settimeout(timeout_s)
        session = _RtspSession(sock, user, password)
        described = session.ask("DESCRIBE", url, {"Accept": "application/sdp"})
        if described.status != 200:
            return f"the camera answered DESCRIBE with {described.status} {described.reason}"
        setup_url = _control_url(url, described)
        headers = {"Transport": TRANSPORT_HEADERS.get(transport, TRANSPORT_HEADERS["tcp"])}
        setup = session.ask("SETUP", setup_url, headers)
        if setup.status == 461:
            other = OTHER_TRANSPORT.get(transport, "udp")
            return (
                f"the camera refuses RTSP over {transport} (461 {setup.reason}): "
                f"set camera.rtsp_transport = {other!r}"
            )
        if setup.status != 200:
            return f"the camera answered SETUP ({transport}) with {setup.status} {setup.reason}"
        session_id = setup.headers.get("session", "").split(";")[0]
        session.ask("TEARDOWN", url, {"Session": session_id} if session_id else {})
    return (
        f"the camera answers RTSP (DESCRIBE, SETUP over {transport}) but sent no frame in time: "
        "raise camera.open_timeout_s above its keyframe interval"
    )


class _RtspSession:
    def __init__(self, sock: socket.socket, user: str | None, password: str | None) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")
        self.user, self.password = user, password
        self.cseq = 0
        self.challenge: dict[str, str] | None = None

    def ask(self, method: str, url: str, headers: Mapping[str, str]) -> Reply:
        reply = self._send(method, url, headers)
        if reply.status == 401 and self.user is not None and self.challenge is None:
            self.challenge = _challenge(reply.headers.get("www-authenticate", ""))
            reply = self._send(method, url, headers)
        return reply

    def _send(self, method: str, url: str, headers: Mapping[str, str]) -> Reply:
        self.cseq += 1
        lines = [f"{method} {url} RTSP/1.0", f"CSeq: {self.cseq}", "User-Agent: lane"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if self.challenge is not None:
            lines.append(f"Authorization: {self._authorization(method, url)}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return _read_reply(self.file, "RTSP/1.0")

    def _authorization(self, method: str, url: str) -> str:
        assert self.challenge is not None and self.user is not None
        password = self.password or ""
        if self.challenge.get("scheme") != "digest":
            token = base64.b64encode(f"{self.user}:{password}".encode()).decode()
            return f"Basic {token}"
        realm, nonce = self.challenge.get("realm", ""), self.challenge.get("nonce", "")
        ha1 = _md5(f"{self.user}:{realm}:{password}")
        ha2 = _md5(f"{method}:{url}")
        response = _md5(f"{ha1}:{nonce}:{ha2}")
        return (
            f'Digest username="{self.user}", realm="{realm}", nonce="{nonce}", '
            f'uri="{url}", response="{response}"'
        )


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _challenge(header: str) -> dict[str, str]:
    scheme, _, rest = header.strip().partition(" ")
    found = {k.lower(): v for k, v in re.findall(r'(\w+)="?([^",]*)"?', rest)}
    return {"scheme": scheme.lower(), **found}


def _control_url(base: str, described: Reply) -> str:
    """The SETUP URL of the first media: its a=control, absolute or relative to the base."""
    in_media, control = False, None
    for line in described.body.splitlines():
        if line.startswith("m="):
            if in_media:
                break
            in_media = True
        elif in_media and line.startswith("a=control:"):
            control = line.removeprefix("a=control:").strip()
    content_base = described.headers.get("content-base", base)
    if control is None or control == "*":
        return content_base
    if "://" in control:
        return control
    return content_base.rstrip("/") + "/" + control


def _read_reply(file: object, protocol: str) -> Reply:
    readline = file.readline  # type: ignore[attr-defined]
    status_line = readline(1024).decode("latin-1").strip()
    match = re.match(rf"{re.escape(protocol)} (\d{{3}}) ?(.*)", status_line)
    if match is None:
        raise ValueError(
            f"not an {protocol.split('/', maxsplit=1)[0]} answer: {status_line[:60]!r}"
        )
    headers: dict[str, str] = {}
    while line := readline(4096).decode("latin-1").strip():
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    body = file.read(length).decode("utf-8", "replace") if length else ""  # type: ignore[attr-defined]
    return Reply(int(match[1]), match[2], headers, body)


# --- HTTP (MJPEG) -------------------------------------------------------------------------------


def _http(spec: str, where: tuple[str, int], scheme: str, timeout_s: float) -> str:
    parts = urlsplit(spec)
    cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    conn = cls(where[0], where[1], timeout=timeout_s)
    headers = {"User-Agent": "lane"}
    if parts.username is not None:
        token = base64.b64encode(f"{parts.username}:{parts.password or ''}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    try:
        conn.request(
            "GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers
        )
        response = conn.getresponse()
        kind = response.getheader("Content-Type", "")
    finally:
        conn.close()
    if response.status != 200:
        return f"the camera answered HTTP {response.status} {response.reason}"
    if not kind.startswith(("multipart/", "image/", "video/")):
        return f"the camera answered HTTP 200 with {kind or 'no content type'}, not a video stream"
    return (
        f"the camera answers HTTP 200 ({kind.split(';')[0]}) but sent no frame in time: "
        "raise camera.open_timeout_s"
    )
