"""A lane store's alarm while its writes fail: raised by a failed write, probed while it holds,
cleared by the write that commits.

A SQLite store that cannot be written (locked by another process past SQLite's wait, corrupt, an I/O
error) is safe by itself (what it cannot track is refused or charged at the maximum) but would say
nothing. The first failed write raises the store's alarm (`says`), naming the file and SQLite's
error; `run` then writes to the store every `PROBE_EVERY_S` with the store's own probe (the write
its real writes make, in the pages they make it in, taken back), so the alarm clears once the store
takes writes again whether or not traffic comes. The probe is async and runs where the store's
writes run: a thread of its own (`in_thread`) for the replay store, threads of their own for the tap
store (whose probe first makes the writes its tap desk holds for the replay store, lane.tap_held),
the resolver's one writer thread for the payments store. While the store works, `run` does the
store's housekeeping instead (a purge may commit where the real writes fail, so it never clears the
alarm). A failure the usual text does not fit (a read that fails where the writes are the usual
worry) says what it stops instead (`says(..., refused)`); one that says only what the desks hold
while they hold anything (writing it failed) says so by `says_held`; the probe keeps that text
until the store works. A desk that holds in memory what the store did not take (a trip desk's
plate times; a metro tap desk's held exits, refunds and drops, lane.tap_held) says so with
`owes`, the one way to say "this desk holds X for this store": what the first desk holding
something says comes first in the alarm's text whatever failure raised it, then what the failure
at hand stops (so neither of two users of one store, the verifier's offline tokens and a metro
gate's tap desk on the replay store, hides the other's failure); the probe writes what is held
first (`settle`), and the alarm does not clear (a write elsewhere committing) while anything is
held, since a restart would forget it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("lane.store_watch")

PROBE_EVERY_S = 1.0  # while the store fails: how soon a store that works again is seen

Alarm = Callable[[str, str | None], None]
Probe = Callable[[], Awaitable[None]]


def in_thread(probe: Callable[[], None]) -> Probe:
    """A store's blocking probe, run in a thread of its own (off the loop)."""
    return functools.partial(asyncio.to_thread, probe)


@dataclass(frozen=True)
class Owed:
    """Writes a desk holds in memory only, the store having not taken them."""

    held: Callable[[], bool]  # some are held
    write: Probe  # writes them, raising the store's error
    stops: str  # what the alarm says first while they are held


class StoreWatch:
    def __init__(  # noqa: PLR0917 - the store's alarm and how to probe it
        self,
        lane: str,
        code: str,
        refused: str,
        probe: Probe,
        errors: tuple[type[Exception], ...],
        alarm: Alarm | None,
    ) -> None:
        self.lane = lane
        self.code = code
        self.refused = refused  # what the lane does without the store: the alarm text's start
        self._probe = probe
        self._errors = errors
        self._alarm = alarm
        self.text: str | None = None  # the alarm's text while the store fails
        self._stopped = refused  # what the failing store stops, as the alarm says it
        self._error: Exception | None = None  # the failing store's last error
        self._owed: list[Owed] = []

    def owes(self, held: Callable[[], bool], write: Probe, stops: str) -> None:
        """A desk's writes the store may not take (`Owed`), the most pressing registered first:
        while `held()`, the alarm says `stops` first and does not clear, and the probe writes
        them first."""
        self._owed.append(Owed(held, write, stops))

    def owing(self) -> str | None:
        """What the first desk holding writes for the store says (None: none held)."""
        return next((owed.stops for owed in self._owed if owed.held()), None)

    async def settle(self) -> None:
        """Write what the desks hold for the store, raising the store's error."""
        for owed in self._owed:
            if owed.held():
                await owed.write()

    def says(self, error: Exception | None, refused: str | None = None) -> None:
        """What the store's last use did: raise or clear the alarm when that changed.
        `refused`: what this failure stops, when not the usual (`self.refused`)."""
        if error is None and self.text is None:
            return  # the common case, every write that commits: nothing to ask the desks
        owing = self.owing()
        if error is None and self.text is not None and owing is not None:
            # Another write committed, but what the store owes is in memory only: the probe
            # writes it, then clears the alarm.
            error, refused = self._error, owing
        text = None
        if error is not None:
            self._error = error
            self._stopped = refused or self.refused
            parts = (owing, self._stopped)
            said = "; ".join(dict.fromkeys(part for part in parts if part))  # each part once
            text = (
                f"{said} {error}; tried again every {PROBE_EVERY_S:g} s,"
                " clears once it takes writes"
            )
        if text == self.text:
            return
        self.text = text
        log.log(
            logging.ERROR if text else logging.INFO,
            "store failing" if text else "store writable again",
            extra={"lane": self.lane, "alarm": self.code, "error": str(error or "")},
        )
        if self._alarm is not None:
            self._alarm(self.code, text)

    def says_held(self, error: Exception, otherwise: str | None = None) -> None:
        """A failure whose alarm names what the desks hold alone while anything is held (the
        most pressing: writing it, or keeping its copy, failed), else what it stops:
        `otherwise`, or the usual."""
        self.says(error, self.owing() or otherwise)

    async def run(
        self,
        sleep: Callable[[float], Awaitable[None]],
        housekeeping: Callable[[], Awaitable[object]] | None = None,
        every_s: float = 60.0,
    ) -> None:
        """Until cancelled: probe the store every `PROBE_EVERY_S` while it fails; otherwise
        run `housekeeping` (which handles its own failures) every `every_s`."""
        waited = every_s
        while True:
            if self.text is not None:
                try:
                    await self.settle()
                    await self._probe()
                except self._errors as exc:
                    self.says(exc, self._stopped)
                else:
                    self.says(None)
            elif housekeeping is not None and waited >= every_s:
                waited = 0.0
                await housekeeping()
            await sleep(PROBE_EVERY_S)
            waited += PROBE_EVERY_S
