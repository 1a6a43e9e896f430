"""What `lane run` tells systemd (sd_notify(3)), without libsystemd: READY, STATUS, STOPPING
and the watchdog's keep-alive ping.

The protocol is one datagram of `KEY=value` lines to the unix socket named by $NOTIFY_SOCKET
(an abstract socket when the name starts with '@'). With `WatchdogSec=` systemd also sets
$WATCHDOG_USEC (and $WATCHDOG_PID, the process it is meant for) and kills the service with
SIGABRT when no `WATCHDOG=1` came for that long. The ping is sent by a task on the event
loop, so it stops exactly when the loop stops turning (a blocking call on it, a deadlock) and
systemd restarts the lane; a thread would ping on while the lane serves nobody.

The parsing is pure (`notify_address`, `watchdog_interval`, `ping_period`); `SystemdNotifier`
is the shell. Outside systemd (no $NOTIFY_SOCKET) it does nothing. A datagram that cannot be
sent is logged once per run of failures and never stops the lane: the lane serving vehicles
matters more than systemd hearing about it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence

from lane.health import Check

log = logging.getLogger("lane.sd_notify")

# Pings per watchdog interval: a ping may come up to three quarters of the interval late
# (a slow moment of the loop) before systemd counts the lane as hung. sd_watchdog_enabled(3)
# asks for at least two.
PINGS_PER_INTERVAL = 4
# How often the status is looked at when systemd set no watchdog.
STATUS_EVERY_S = 1.0


def notify_address(env: Mapping[str, str]) -> str | None:
    """The socket to notify, as `socket.sendto` takes it; None when there is none we can use
    (not started by systemd, or a `vsock:` address, which a lane computer does not get)."""
    name = env.get("NOTIFY_SOCKET", "")
    if name.startswith("@") and len(name) > 1:
        return "\0" + name[1:]  # Linux abstract namespace
    if name.startswith("/"):
        return name
    return None


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """systemd's watchdog interval in seconds for the process `pid`; None when there is no
    watchdog for it (unset, not a positive integer, or meant for another process)."""
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isascii() or not usec.isdigit() or int(usec) <= 0:
        return None
    meant_for = env.get("WATCHDOG_PID")
    if meant_for is not None and meant_for != str(pid):
        return None
    return int(usec) / 1_000_000


def ping_period(interval: float) -> float:
    """Seconds between two keep-alive pings for a watchdog `interval`."""
    return interval / PINGS_PER_INTERVAL


def datagram(lines: Sequence[str]) -> bytes:
    """The notification carrying `lines`. A text that is not Unicode through and through (a
    path from a directory whose name is not UTF-8 holds a lone surrogate) is spelt with
    backslash escapes: systemd ignores a STATUS= that is not clean UTF-8, raw bytes would be
    lost, and a text must never stop the pings (the lane would be killed for a word)."""
    return "\n".join(lines).encode("utf-8", errors="backslashreplace")


def readiness_status(checks: Sequence[Check]) -> str:
    """A running lane's STATUS= line (`systemctl status lane`): its readiness in short."""
    failing = [f"{c.name} ({c.detail})" for c in checks if not c.ok]
    return "serving: not ready: " + ", ".join(failing) if failing else "serving: ready"


class SystemdNotifier:
    """The lane's side of the notify socket; inert when $NOTIFY_SOCKET names none.

    `status` is looked at before every ping and sent as STATUS= when it changed."""

    def __init__(self, env: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        env = os.environ if env is None else env
        self.address = notify_address(env)
        self._name = env.get("NOTIFY_SOCKET", "")  # as systemd spells it, for the log
        interval = watchdog_interval(env, os.getpid() if pid is None else pid)
        self.period = None if interval is None or self.address is None else ping_period(interval)
        self.status: Callable[[], str] = lambda: "starting"
        self._sock: socket.socket | None = None
        self._failing = False
        self._said: str | None = None  # the last STATUS= sent
        self._stopping = False
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Sent from the event loop: a full socket buffer drops a datagram, never waits.
            self._sock.setblocking(False)
        elif self._name:
            log.warning("systemd notify socket not usable", extra={"socket": self._name})

    def send(self, *lines: str) -> bool:
        """One datagram of `lines`; False when it was not sent."""
        if self._sock is None or self.address is None:
            return False
        try:
            self._sock.sendto(datagram(lines), self.address)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                extra = {"socket": self._name, "error": str(exc)}
                log.warning("systemd notification not sent", extra=extra)
            return False
        if self._failing:
            self._failing = False
            log.info("systemd notifications sent again", extra={"socket": self._name})
        return True

    def _send_status(self, *lines: str) -> None:
        """`lines` and the STATUS= line when the status changed; a status that was not sent is
        said again with the next datagram (else `systemctl status` would keep the old one)."""
        text = self._new_status()
        status = [] if text is None else [f"STATUS={text}"]
        if (lines or status) and self.send(*lines, *status) and text is not None:
            self._said = text

    def ready(self) -> None:
        self._send_status("READY=1")

    def stopping(self) -> None:
        self._stopping = True  # whatever the start-up still sets `status` to
        self._send_status("STOPPING=1")

    def _new_status(self) -> str | None:
        """The status when it changed since it was last sent, else None."""
        try:
            text = "stopping" if self._stopping else self.status()
        except Exception:  # a wrong status must not end the pings: the lane would be killed
            log.exception("systemd status not computed")
            return None
        return None if text == self._said else text

    async def run(self) -> None:
        """Ping the watchdog (when systemd set one) and say the status when it changes, from
        the event loop, until cancelled."""
        if self._sock is None:
            return
        while True:
            self._send_status(*([] if self.period is None else ["WATCHDOG=1"]))
            await asyncio.sleep(STATUS_EVERY_S if self.period is None else self.period)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
