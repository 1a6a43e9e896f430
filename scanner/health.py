"""Camera health as pure code: blackout detection and reconnect backoff. Time is a parameter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

EventKind = Literal["opened", "lost", "reconnecting", "blackout", "recovered", "error", "ended"]


@dataclass(frozen=True, slots=True)
class SourceEvent:
    """Something the lane should know about its camera, in one line."""

    kind: EventKind
    source: str
    ts: float
    detail: str = ""


RtspTransport = Literal["tcp", "udp", "udp_multicast", "http"]


@dataclass(frozen=True, slots=True)
class CaptureSettings:
    """How a live camera is opened, watched and reopened ([camera] in lane.toml)."""

    rtsp_transport: RtspTransport = "tcp"
    # Connecting, negotiating and decoding the first frame (OpenCV decodes one while opening,
    # so this must cover the camera's keyframe interval).
    open_timeout_s: float = 10.0
    # Once frames flow: no usable frame for this long is a blackout, and a read blocked this
    # long fails (the stream is lost and reopened).
    blackout_s: float = 2.0
    # Full reopen attempts back off up to this; meanwhile the camera's port is probed every
    # probe_s and a reopen is tried as soon as it answers again.
    retry_max_s: float = 10.0
    probe_s: float = 0.5


def is_black(image: npt.NDArray[np.uint8], *, level: float = 16.0, spread: float = 6.0) -> bool:
    """A covered lens, a dead sensor or a blanked stream: dark and flat. Samples 1 pixel in 256."""
    sample = image[::16, ::16]
    return float(sample.mean()) < level and float(sample.std()) < spread


class BlackoutMonitor:
    """Reports a blackout when no usable frame came for `after_s`, and the recovery after it.

    Usable means "not uniformly black": a stream that keeps delivering black frames is as blind
    as one that delivers nothing, and the two get different details so an operator can tell a
    covered lens from a dead link.
    """

    def __init__(self, source: str, now: float, after_s: float = 2.0) -> None:
        self.source = source
        self.after_s = after_s
        self.out = False
        # The source said it was dark another way (a lost stream, an unreadable image): its next
        # usable frame is a recovery too, though no blackout was declared (a stream reopened
        # within `after_s` declares none), or the lane would stay closed over a camera that sees.
        self._said_dark = False
        self._last_frame = now
        self._last_good = now

    def opened(self, now: float) -> None:
        """The stream just opened: the time spent opening it is not blindness. A blackout
        already declared stays until a usable frame comes (which reports the recovery)."""
        if not self.out:
            self._last_good = self._last_frame = now

    def said_dark(self) -> None:
        """The source reported it cannot see (lost, error): the next usable frame recovers."""
        self._said_dark = True

    def on_frame(self, now: float, black: bool) -> SourceEvent | None:
        self._last_frame = now
        if black:
            return self.tick(now)
        self._last_good = now
        if self.out or self._said_dark:
            self.out = self._said_dark = False
            return SourceEvent("recovered", self.source, now, "frames are back")
        return None

    def tick(self, now: float) -> SourceEvent | None:
        """Call when nothing arrived for a while; returns the blackout event once."""
        if self.out or now - self._last_good < self.after_s:
            return None
        self.out = True
        blind = now - self._last_good
        if now - self._last_frame >= self.after_s:
            detail = f"no frames for {blind:.1f} s"
        else:
            detail = f"black frames for {blind:.1f} s"
        return SourceEvent("blackout", self.source, now, detail)


def same_picture(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8]) -> bool:
    """Two frames equal on every 16th row. A live sensor's noise alone changes pixels from
    frame to frame, but a stream with a long group of pictures and strong noise reduction may
    repeat a static scene's picture until something moves; a frozen camera (an encoder or a
    driver repeating its last picture) gives nothing else: lane.core.frozen tells them apart by
    the vehicles that must move in view. Whole rows, as they lie in memory: a column sample
    costs ten times as much."""
    return a.shape == b.shape and bool(np.array_equal(a[::16], b[::16]))


class StallWatch:
    """The scanner's threads judged from outside them, from its counters (time is a parameter).

    A capture thread stuck inside a driver call (a hung USB camera, a read with no timeout)
    yields nothing at all, so its source never reports a blackout; decode workers stuck in a
    decoder, or failing on every frame, read nothing while frames keep arriving. Either way the
    lane is blind and nothing else says so. `observe` is called every second or so with the
    pipeline's counters; it returns the alarm text while one of them holds, else None. (A
    frozen picture is judged by the vehicles the camera must see: lane.core.frozen.)
    """

    def __init__(self, after_s: float, now: float) -> None:
        self.after_s = after_s
        self._frames = -1
        self._frame_at = now
        self._processed = -1
        self._unserved_since: float | None = None  # frames came, none processed since then

    def observe(self, now: float, frames_in: int, processed: int) -> str | None:
        """`processed`: frames a decode worker finished with (decoded or let pass by the change
        gate; a decoder error is not one)."""
        served = processed != self._processed
        if served:
            self._processed = processed
            self._unserved_since = None
        if frames_in != self._frames:
            self._frames, self._frame_at = frames_in, now
            if not served and self._unserved_since is None:
                self._unserved_since = now
        if now - self._frame_at >= self.after_s:
            return f"capture stalled: no frame for over {self.after_s:g} s"
        if self._unserved_since is not None and now - self._unserved_since >= self.after_s:
            return f"decoding stalled: frames arrive, none decoded for over {self.after_s:g} s"
        return None
