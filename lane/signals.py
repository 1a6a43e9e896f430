"""SIGINT and SIGTERM as an asyncio event: how every serving command learns to stop.

The handlers are installed by each command, not left to `asyncio.run`: a process that starts
with SIGINT ignored keeps it ignored (a shell starts `cmd &` that way when job control is off:
scripts, CI steps, a backgrounded test run), so Python installs no KeyboardInterrupt handler,
`asyncio.run` none either, and a supervisor's or a test's SIGINT would be lost: the command
would serve on until killed.
"""

from __future__ import annotations

import asyncio
import signal
import threading


def install_signal_handlers(stop: asyncio.Event) -> None:
    """Set `stop` on SIGINT or SIGTERM, whatever the disposition the process inherited."""
    # Only the main thread receives Python signal handlers (asyncio.Runner makes the same
    # check); a command driven from another thread, as tests do, is stopped by its caller.
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


def stop_on_signals() -> asyncio.Event:
    """A new event that SIGINT or SIGTERM sets."""
    stop = asyncio.Event()
    install_signal_handlers(stop)
    return stop
