"""`lane console`: the operator console against real lanes over MQTT.

lane console --broker HOST:PORT [--lanes 'p07/*'] [--users users.txt] [--port 8090]
lane console adduser --users users.txt NAME --role operator|viewer   (password on stdin)

Without `--users`, or until someone logs in, the console is read-only.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys
import time
from pathlib import Path

from aiohttp import web

from barrier.watch import PASSWORD_ENV, parse_broker
from lane.console.feed import ConsoleFeed, lane_filter
from lane.console.model import Plaza
from lane.console.server import Console
from lane.console.users import Role, User, UsersError, add_user, load_users
from lane.daemon import run_with_uvloop
from lane.log import setup_logging
from lane.signals import install_signal_handlers
from lane.transport.mqtt import Credentials
from lane.transport.tls import CaFile

log = logging.getLogger("lane.console")


def main(argv: list[str]) -> int:
    if argv[:1] == ["adduser"]:
        return adduser_main(argv[1:])
    parser = argparse.ArgumentParser(prog="lane console", description=__doc__.split("\n")[0])
    parser.add_argument("--broker", default="127.0.0.1:1883", help="host:port of the broker")
    parser.add_argument("--lanes", default="*/*", help="lanes to show, e.g. 'p07/*' (default all)")
    parser.add_argument("--users", type=Path, default=None, help="user file (else read-only)")
    parser.add_argument("--host", default="127.0.0.1", help="address of the web page")
    parser.add_argument("--port", type=int, default=8090, help="port of the web page")
    parser.add_argument("--username", default=None, help=f"MQTT user (password: ${PASSWORD_ENV})")
    parser.add_argument("--tls-ca", default=None, help="connect with TLS, verifying the broker")
    parser.add_argument("--log-level", default="INFO")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    try:
        host, port = parse_broker(args.broker)
        lane_filter(args.lanes)
        users: dict[str, User] = load_users(args.users) if args.users else {}
    except (ValueError, UsersError) as exc:
        print(f"lane console: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level)
    credentials = None
    if args.username:
        credentials = Credentials(args.username, os.environ.get(PASSWORD_ENV, ""))
    tls = CaFile.load(Path(args.tls_ca)) if args.tls_ca else None
    plaza = Plaza(time.time())
    feed = ConsoleFeed(plaza, host, port, lanes=args.lanes, credentials=credentials, tls=tls)
    console = Console(plaza, feed, users)

    async def serve() -> int:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        app = web.Application()
        console.add_routes(app, prefix="/")
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, args.host, args.port).start()
        except OSError as exc:
            await runner.cleanup()
            print(f"lane console: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 2
        print(f"lane console: http://{args.host}:{args.port}/", flush=True)
        task = asyncio.create_task(feed.run(), name="console-feed")
        try:
            await stop.wait()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await runner.cleanup()
        return 0

    code: int = run_with_uvloop(serve)
    return code


def adduser_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lane console adduser", description="Add or replace a console user."
    )
    parser.add_argument("--users", type=Path, required=True, help="the user file")
    parser.add_argument("name")
    parser.add_argument("--role", choices=[r.value for r in Role], default=Role.VIEWER.value)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.name}: ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    try:
        add_user(args.users, args.name, Role(args.role), password)
    except (UsersError, OSError) as exc:
        print(f"lane console adduser: {exc}", file=sys.stderr)
        return 2
    print(f"{args.name} ({args.role}) written to {args.users}")
    return 0
