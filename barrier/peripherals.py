"""Messages of the closed road's lane devices: the ANPR plate reading and the ticket printer.

Same rules as barrier.messages (versioned msgpack maps, strict decoding that raises only
`PayloadError` naming the field, unknown extra fields ignored, UTC Unix microseconds):

| topic | message | QoS, retained |
|---|---|---|
| `lane/{id}/io/plate` | `PlateReading`: the ANPR camera read a plate | 1, no |
| `lane/{id}/printer/print` | `PrintJob`: an ESC/POS stream to print (barrier.escpos) | 1, no |
| `lane/{id}/printer/ack` | `PrintAck`: the job printed, or why not | 1, no |
| `lane/{id}/printer/status` | `PrinterStatus`: ready, paper_out, offline (its will) | 1, yes |
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self, TypeVar

from barrier.messages import MAX_ID, _compact, _count, _Message, _text
from lane.wire.codec import PayloadError, field, optional

MAX_JOB_BYTES = 16_384  # a ticket with a QR code is a few hundred bytes
# Plates as ANPR cameras report them: letters (any script), digits, separators.
_PLATE = re.compile(r"[\w\- .·]{1,16}\Z")


class PrinterState(enum.StrEnum):
    READY = "ready"
    PAPER_OUT = "paper_out"
    OFFLINE = "offline"  # the printer's MQTT will


class PrintError(enum.StrEnum):
    PAPER_OUT = "paper_out"
    BAD_JOB = "bad_job"  # the stream is outside what the printer prints (barrier.escpos)


@dataclass(frozen=True)
class PlateReading(_Message):
    """ANPR → controller: the plate of the vehicle on the entry loop, with the camera's
    confidence (0..1). Published on the I/O topic of sensor `plate`."""

    plate: str
    confidence: float
    ts_us: int
    seq: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.plate, str) or not _PLATE.match(self.plate):
            raise PayloadError(f"field 'plate' must be 1..16 plate characters, got {self.plate!r}")
        c = self.confidence
        if isinstance(c, bool) or not isinstance(c, int | float) or not math.isfinite(c):
            raise PayloadError("field 'confidence' must be a number")
        if not 0 <= c <= 1:
            raise PayloadError(f"field 'confidence' must be 0..1, got {c}")
        _count(self.ts_us, "ts")
        if self.seq is not None:
            _count(self.seq, "seq")

    def to_map(self) -> dict[str, Any]:
        body = {"plate": self.plate, "confidence": self.confidence, "ts": self.ts_us}
        return _compact(body | {"seq": self.seq})

    @classmethod
    def from_map(cls, body: Mapping[str, Any]) -> Self:
        return cls(
            plate=field(body, "plate", str),
            confidence=field(body, "confidence", (int, float)),
            ts_us=field(body, "ts", int),
            seq=optional(body, "seq", int),
        )


@dataclass(frozen=True)
class PrintJob(_Message):
    """Controller → printer: print this ESC/POS stream once (the job id makes a redelivered
    QoS 1 message a duplicate, not a second ticket), and not after `not_after_us` (UTC, the
    lane's clock): a printer that holds a job past it (frozen while still connected, the
    broker's expiry long satisfied) drops it, since its vehicle may be gone. None: a lane built
    before deadlines, whose jobs are printed as they were then (dropped unanswered, each would
    leave its vehicle at a shut boom under a `printer_offline` that is not so)."""

    job_id: str
    escpos: bytes
    ts_us: int
    not_after_us: int | None = None

    def __post_init__(self) -> None:
        _text(self.job_id, "job_id", limit=MAX_ID)
        if not isinstance(self.escpos, bytes) or not 0 < len(self.escpos) <= MAX_JOB_BYTES:
            raise PayloadError(f"field 'escpos' must be 1..{MAX_JOB_BYTES} bytes")
        _count(self.ts_us, "ts")
        if self.not_after_us is not None:
            _count(self.not_after_us, "not_after")

    def to_map(self) -> dict[str, Any]:
        body = {"job_id": self.job_id, "escpos": self.escpos, "ts": self.ts_us}
        return _compact(body | {"not_after": self.not_after_us})

    @classmethod
    def from_map(cls, body: Mapping[str, Any]) -> Self:
        return cls(
            job_id=field(body, "job_id", str),
            escpos=field(body, "escpos", bytes),
            ts_us=field(body, "ts", int),
            not_after_us=optional(body, "not_after", int),
        )


@dataclass(frozen=True)
class PrintAck(_Message):
    """Printer → controller: the job printed (`error` None) or not, and why. `not_after_us`
    echoes the job's (the copy answered: the lane sends a job again with a new deadline);
    absent from a printer built to the earlier contract."""

    job_id: str
    error: PrintError | None
    detail: str
    ts_us: int
    not_after_us: int | None = None

    def __post_init__(self) -> None:
        _text(self.job_id, "job_id", limit=MAX_ID)
        if self.error is not None and not isinstance(self.error, PrintError):
            raise PayloadError(f"field 'error' must be one of {[e.value for e in PrintError]}")
        _text(self.detail, "detail", empty=True)
        _count(self.ts_us, "ts")
        if self.not_after_us is not None:
            _count(self.not_after_us, "not_after")

    @property
    def printed(self) -> bool:
        return self.error is None

    def to_map(self) -> dict[str, Any]:
        error = None if self.error is None else self.error.value
        body = {"job_id": self.job_id, "detail": self.detail, "ts": self.ts_us}
        return _compact(body | {"error": error, "not_after": self.not_after_us})

    @classmethod
    def from_map(cls, body: Mapping[str, Any]) -> Self:
        error = optional(body, "error", str)
        return cls(
            job_id=field(body, "job_id", str),
            error=None if error is None else _enum(PrintError, error, "error"),
            detail=field(body, "detail", str),
            ts_us=field(body, "ts", int),
            not_after_us=optional(body, "not_after", int),
        )


@dataclass(frozen=True)
class PrinterStatus(_Message):
    state: PrinterState
    printed: int  # tickets printed since the printer started
    seq: int
    ts_us: int
    # A random token the printer draws before each connection to the broker (its will names the
    # one it ends): a new one says the printer restarted or reconnected, whatever its state.
    session: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.state, PrinterState):
            raise PayloadError(f"field 'state' must be one of {[s.value for s in PrinterState]}")
        _count(self.printed, "printed")
        _count(self.seq, "seq")
        _count(self.ts_us, "ts")
        if self.session is not None:
            _text(self.session, "session", limit=MAX_ID)

    def to_map(self) -> dict[str, Any]:
        body = {"state": self.state.value, "printed": self.printed, "seq": self.seq,
                "ts": self.ts_us}  # fmt: skip
        return _compact(body | {"session": self.session})

    @classmethod
    def from_map(cls, body: Mapping[str, Any]) -> Self:
        return cls(
            state=_enum(PrinterState, field(body, "state", str), "state"),
            printed=field(body, "printed", int),
            seq=field(body, "seq", int),
            ts_us=field(body, "ts", int),
            session=optional(body, "session", str),
        )


E = TypeVar("E", bound=enum.StrEnum)


def _enum(kind: type[E], value: str, name: str) -> E:
    try:
        return kind(value)
    except ValueError:
        allowed = sorted(e.value for e in kind)
        raise PayloadError(f"field {name!r} must be one of {allowed}, got {value!r}") from None
