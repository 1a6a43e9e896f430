"""`lane` command line: one subcommand per job, each owned by the module that does it."""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import PackageNotFoundError, version

# subcommand -> (module, function, extra leading args, one-line help)
COMMANDS: dict[str, tuple[str, str, list[str], str]] = {
    "run": ("lane.daemon", "main", [], "run the lane daemon: lane run --config lane.toml"),
    "sim": ("sim.cli", "main", [], "run a simulated lane (add --headless for a report)"),
    "scan": ("scanner.cli", "main", [], "decode QR codes in image files"),
    "watch": ("barrier.watch", "main", [], "print a lane's MQTT traffic decoded"),
    "device": ("lane.device_cli", "main", [], "run the barrier and lane I/O side (--emulate)"),
    "ingest": ("uplink.cli", "main", [], "back-office ingest of uplink records"),
    "keys": ("lane.auth.cli", "main", ["keys"], "make issuer keys and key sets"),
    "token": ("lane.auth.cli", "main", ["token"], "issue offline tokens (tests, simulator)"),
    "pass": ("lane.auth.cli", "main", ["pass"], "issue or verify closed-road entry passes"),
    "check-config": ("lane.checks", "check_config_main", [], "validate config files"),
    "doctor": ("lane.checks", "doctor_main", [], "probe camera, broker, acquirer, disk, clock"),
    "reconcile": (
        "lane.reconcile_cli",
        "main",
        [],
        "compare the back office's records with Alipay's and WeChat Pay's daily bills",
    ),
    "refunds": (
        "lane.refunds_cli",
        "main",
        [],
        "metro refunds owed to passengers; --made one ended unpaid, refunded by hand",
    ),
    "console": ("lane.console.cli", "main", [], "the operator console for lanes over MQTT"),
    "trips": ("uplink.trips_cli", "main", [], "closed roads: who entered and has not exited"),
    "refund-trail": (
        "uplink.refund_trail_cli",
        "main",
        [],
        "back office: metro refunds owed and not made, and those the network ended unpaid",
    ),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: lane COMMAND [ARGS...] | lane --version", "", "commands:"]
    lines += [f"  {name:<{width}}  {spec[3]}" for name, spec in COMMANDS.items()]
    return "\n".join(lines)


def installed_version() -> str:
    """The version of the installed distribution (the wheel, or the editable checkout)."""
    try:
        return version("lane")
    except PackageNotFoundError:
        return "unknown (not installed: run from a checkout without `pip install`)"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        from lane.install import clashes  # noqa: PLC0415 - scans the environment: only here

        print(f"lane {installed_version()}")
        for line in clashes():
            print(f"lane: warning: {line}", file=sys.stderr)
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"lane: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, func_name, lead, _ = COMMANDS[name]
    func = getattr(importlib.import_module(module_name), func_name)
    code: int = func([*lead, *rest])
    return code


if __name__ == "__main__":
    sys.exit(main())
