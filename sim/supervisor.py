"""A small process supervisor: one child process per lane, as real booths run them.

`Supervisor` starts named children (argv lists), hands each line a child writes on stdout to
`on_line(name, line)`, restarts a child that exits on its own with a failure (after a short,
growing delay, at most `max_restarts` times; then it stays down and is logged as given up), lets
a child that exits with 0 rest, and on `stop()` (or leaving `async with`) stops all of them:
SIGTERM, then SIGKILL after `grace_s`. Nothing is left running when it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from lane.core.backoff import Backoff

log = logging.getLogger("lane.sim.supervisor")

OnLine = Callable[[str, str], None]


@dataclass
class Child:
    name: str
    argv: Sequence[str]
    restarts: int = 0
    exits: list[int] = field(default_factory=list)  # return codes, in order
    gave_up: bool = False
    process: asyncio.subprocess.Process | None = None


class Supervisor:
    def __init__(
        self,
        on_line: OnLine | None = None,
        *,
        max_restarts: int = 5,
        backoff_s: float = 0.2,
        grace_s: float = 5.0,
    ) -> None:
        self.children: dict[str, Child] = {}
        self._on_line = on_line
        self._max_restarts = max_restarts
        self._backoff_s = backoff_s
        self._grace_s = grace_s
        self._stopping = False
        self._watchers: dict[str, asyncio.Task[None]] = {}

    async def __aenter__(self) -> Supervisor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def start(self, name: str, argv: Sequence[str]) -> Child:
        """Start a child and keep it running until `stop()`."""
        if name in self.children:
            raise ValueError(f"a child named {name!r} is already supervised")
        if self._stopping:
            raise RuntimeError("the supervisor is stopping")
        child = Child(name, list(argv))
        self.children[name] = child
        self._watchers[name] = asyncio.create_task(self._watch(child), name=f"supervise-{name}")
        return child

    async def wait(self, name: str) -> int:
        """Until the child is down for good (exited 0, or given up); its last return code."""
        await asyncio.shield(self._watchers[name])
        return self.children[name].exits[-1]

    async def stop(self) -> None:
        self._stopping = True
        running = [
            c.process
            for c in self.children.values()
            if c.process is not None and c.process.returncode is None
        ]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        for process in running:
            try:
                async with asyncio.timeout(self._grace_s):
                    await process.wait()
            except TimeoutError:
                log.error("child ignored SIGTERM: killed", extra={"pid": process.pid})
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        watchers = list(self._watchers.values())
        await asyncio.gather(*watchers, return_exceptions=True)

    async def _watch(self, child: Child) -> None:
        # No cap: `max_restarts` bounds the waits.
        backoff = Backoff(self._backoff_s, math.inf)
        while True:
            process = await asyncio.create_subprocess_exec(
                *child.argv, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
            )
            child.process = process
            if self._stopping:  # stop() came while this one was being started
                process.terminate()
            log.info("child started", extra={"child": child.name, "pid": process.pid})
            await self._pump(child, process)
            code = await process.wait()
            child.exits.append(code)
            if self._stopping or code == 0:
                return
            if child.restarts >= self._max_restarts:
                child.gave_up = True
                log.error(
                    "child keeps failing: given up",
                    extra={"child": child.name, "returncode": code, "restarts": child.restarts},
                )
                return
            delay = backoff.delay(child.restarts + 1)
            log.warning(
                "child failed: restarting",
                extra={"child": child.name, "returncode": code, "retry_s": delay},
            )
            await asyncio.sleep(delay)
            if self._stopping:
                return
            child.restarts += 1

    async def _pump(self, child: Child, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            if self._on_line is not None:
                self._on_line(child.name, raw.decode(errors="replace").rstrip("\n"))


__all__ = ["Child", "Supervisor"]
