"""Network cameras on loopback for the capture tests: an HTTP MJPEG camera and an RTSP camera.

`MjpegCamera` serves multipart/x-mixed-replace JPEG frames over real HTTP (aiohttp), the way
most IP cameras serve MJPEG; it can hold its first frame back (a long keyframe interval) and
go away and come back on the same port. `RtspCamera` answers RTSP like a camera's server does
(OPTIONS, DESCRIBE with an SDP, SETUP, PLAY, TEARDOWN) and records what it was asked; it can be
UDP-only (461 Unsupported Transport to a TCP SETUP), refuse DESCRIBE, or demand Digest
credentials. It sends no media: those tests look at the negotiation. `gstreamer_camera` is
Debian's GStreamer RTSP server streaming real frames (gst_rtsp_camera.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from aiohttp import web

from sim.broker import free_port


def jpeg(value: int = 128) -> bytes:
    image = np.full((120, 160, 3), value, np.uint8)
    image[::8, :, :] = 255 - value  # not flat: not "black"
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return bytes(data.tobytes())


class MjpegCamera:
    def __init__(self, first_delay_s: float = 0.0, every_s: float = 0.05) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/video"
        self.first_delay_s = first_delay_s
        self.every_s = every_s
        self.frame = jpeg()
        self.requests = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    async def _video(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        resp = web.StreamResponse(
            headers={"Content-Type": "multipart/x-mixed-replace; boundary=frame"}
        )
        await resp.prepare(request)
        await asyncio.sleep(self.first_delay_s)
        while True:
            head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
            await resp.write(head % len(self.frame) + self.frame + b"\r\n")
            await asyncio.sleep(self.every_s)

    def start(self) -> None:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_get("/video", self._video)
            self._runner = web.AppRunner(app, shutdown_timeout=0.1)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
            loop.run_until_complete(site.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="mjpeg-camera", daemon=True)
        self._thread.start()
        assert ready.wait(5), "the MJPEG camera did not start"

    def stop(self) -> None:
        """The camera goes away: its port refuses, its streams end."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop = self._thread = None


@dataclass
class RtspCamera:
    udp_only: bool = False
    describe_status: tuple[int, str] = (200, "OK")
    credentials: tuple[str, str] | None = None  # Digest, realm "cam"
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, name="rtsp-camera", daemon=True).start()

    def url(self, userinfo: str = "") -> str:
        return f"rtsp://{userinfo}127.0.0.1:{self.port}/stream1"

    def close(self) -> None:
        self._server.close()

    def setups(self) -> list[str]:
        return [h.get("transport", "") for m, h in self.requests if m == "SETUP"]

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as f:
            while True:
                request = f.readline().decode("latin-1").strip()
                if not request:
                    return
                headers = {}
                while line := f.readline().decode("latin-1").strip():
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                method, url = request.split(" ")[:2]
                self.requests.append((method, headers))
                conn.sendall(self._answer(method, url, headers))

    def _answer(self, method: str, url: str, headers: dict[str, str]) -> bytes:
        cseq = headers.get("cseq", "0")
        extra, body = "", ""
        status: tuple[int, str] = (200, "OK")
        if method == "OPTIONS":
            extra = "Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN\r\n"
        elif self.credentials is not None and not self._authorised(method, url, headers):
            status = (401, "Unauthorized")
            extra = 'WWW-Authenticate: Digest realm="cam", nonce="n0nce"\r\n'
        elif method == "DESCRIBE":
            status = self.describe_status
            body = (
                "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=cam\r\nt=0 0\r\n"
                "m=video 0 RTP/AVP 26\r\na=control:track1\r\n"
            )
            extra = f"Content-Base: {url}/\r\nContent-Type: application/sdp\r\n"
        elif method == "SETUP":
            transport = headers.get("transport", "")
            if self.udp_only and "/TCP" in transport:
                status = (461, "Unsupported Transport")
            else:
                extra = f"Transport: {transport};server_port=6970-6971\r\nSession: 12345678\r\n"
        if status[0] != 200:
            body = ""
        head = f"RTSP/1.0 {status[0]} {status[1]}\r\nCSeq: {cseq}\r\n{extra}"
        return (head + f"Content-Length: {len(body)}\r\n\r\n{body}").encode()

    def _authorised(self, method: str, url: str, headers: dict[str, str]) -> bool:
        assert self.credentials is not None
        auth = headers.get("authorization", "")
        user, password = self.credentials
        ha1 = hashlib.md5(f"{user}:cam:{password}".encode()).hexdigest()
        ha2 = hashlib.md5(f"{method}:{url}".encode()).hexdigest()
        expected = hashlib.md5(f"{ha1}:n0nce:{ha2}".encode()).hexdigest()
        return f'response="{expected}"' in auth


GST_CAMERA = Path(__file__).with_name("gst_rtsp_camera.py")
SYSTEM_PYTHON = "/usr/bin/python3"  # GStreamer's bindings are Debian's, not the venv's


@contextlib.contextmanager
def gstreamer_camera(image: Path, *, udp_only: bool = False) -> Iterator[str]:
    """Debian's GStreamer RTSP server streaming `image`; yields its rtsp:// URL."""
    port = free_port()
    argv = [SYSTEM_PYTHON, str(GST_CAMERA), "--port", str(port), "--image", str(image)]
    proc = subprocess.Popen(
        [*argv, *(["--udp-only"] if udp_only else [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        assert first == "ready", f"the GStreamer RTSP camera did not start: {first!r}"
        yield f"rtsp://127.0.0.1:{port}/stream1"
    finally:
        proc.terminate()
        proc.wait(10)
