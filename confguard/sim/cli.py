"""`confguard sim`: run the FreeSWITCH simulator in the foreground on a loopback address.

Maps the flags onto `SimConfig`, refuses any non-loopback `--host` (exit code 2), logs one line
once listening, and stops cleanly on SIGINT / SIGTERM (or when an `fsctl shutdown` ends it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import signal
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from confguard.sim.config import SimConfig

log = logging.getLogger("confguard.sim")

EXIT_OK = 0
EXIT_USAGE = 2


class UsageError(Exception):
    """The flags are wrong; the message says which and why."""


def is_loopback(host: str) -> bool:
    """True for a loopback IP literal or the name `localhost`."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_user(text: str) -> tuple[str, str]:
    user, sep, behaviour = text.partition("=")
    if not sep or not user.strip():
        raise argparse.ArgumentTypeError(f"expected USER=BEHAVIOUR, got {text!r}")
    return user.strip(), behaviour.strip()


def directory_with(entries: Sequence[tuple[str, str]]) -> dict[str, object]:
    """The default directory with `--user` entries added or replaced (raises `UsageError`).

    BEHAVIOUR is `<mode>[,answer_after=S][,dtmf=D@S;D@S][,hangup_after=S]`, mode one of
    answer, noanswer, busy, reject, unregistered, unallocated; times in simulated seconds.
    """
    from confguard.sim import callees

    users: dict[str, object] = dict(callees.default_directory())
    for user, behaviour in entries:
        mode_text, *options = [part.strip() for part in behaviour.split(",")]
        try:
            spec = callees.CalleeSpec(mode=callees.CalleeMode(mode_text or "answer"))
            for option in options:
                key, _, value = option.partition("=")
                if key == "answer_after":
                    spec = dataclasses.replace(spec, answer_after=float(value))
                elif key == "hangup_after":
                    spec = dataclasses.replace(spec, hangup_after=float(value))
                elif key == "dtmf":
                    spec = dataclasses.replace(spec, dtmf=callees.parse_dtmf_plan(value))
                else:
                    raise ValueError(f"unknown option {key!r}")
        except ValueError as exc:
            raise UsageError(f"--user {user}={behaviour}: {exc}") from exc
        users[user] = spec
    return users


def build_parser() -> argparse.ArgumentParser:
    """The `confguard sim` argument parser."""
    parser = argparse.ArgumentParser(
        prog="confguard sim", description="Run the FreeSWITCH Event Socket simulator (loopback)."
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=8021, help="TCP port (0: any free port)")
    parser.add_argument(
        "--password-file", type=Path, help="file whose first line is the ESL password"
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="real seconds per simulated second (0.1: ten times faster)",
    )
    parser.add_argument(
        "--heartbeat", type=float, default=20.0, help="HEARTBEAT interval, simulated seconds"
    )
    parser.add_argument(
        "--user",
        action="append",
        type=_parse_user,
        default=[],
        metavar="USER=BEHAVIOUR",
        help="directory entry, e.g. 1000=answer,dtmf=1@2 or 1001=busy (repeatable)",
    )
    parser.add_argument(
        "--dialplan",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="more extensions of context default from a dialplan file, e.g. "
        "deploy/freeswitch/confguard_events.xml (repeatable)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every connection")
    return parser


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """Validate the parsed flags and build the `SimConfig` (raises `UsageError`)."""
    if not is_loopback(args.host):
        raise UsageError(
            f"--host {args.host!r} is not a loopback address; the simulator listens on "
            "loopback only (127.0.0.1, ::1 or localhost)"
        )
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} is out of range 0..65535")
    if not args.time_scale > 0:
        raise UsageError(f"--time-scale must be > 0, got {args.time_scale}")
    if not args.heartbeat > 0:
        raise UsageError(f"--heartbeat must be > 0, got {args.heartbeat}")
    password = "ClueCon"
    if args.password_file is not None:
        try:
            lines = args.password_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise UsageError(f"cannot read --password-file {args.password_file}: {exc}") from exc
        password = lines[0].strip() if lines else ""
        if not password:
            raise UsageError(f"--password-file {args.password_file} is empty")
    users: dict[str, object] | None = None
    if args.user:
        users = directory_with(args.user)
    from confguard.sim.xmlconf import dialplan_extensions

    extensions: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    for path in getattr(args, "dialplan", []):
        try:
            extensions += dialplan_extensions(str(path))
        except (OSError, ET.ParseError) as exc:
            raise UsageError(f"cannot read --dialplan {path}: {exc}") from exc
    return SimConfig(
        host=args.host,
        port=args.port,
        password=password,
        time_scale=args.time_scale,
        heartbeat_interval=args.heartbeat,
        users=users,
        extensions=tuple(extensions),
    )


async def serve(config: SimConfig) -> None:
    """Run a simulator until SIGINT/SIGTERM or an `fsctl shutdown`."""
    from confguard.sim import Simulator

    simulator = Simulator(config)
    await simulator.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    log.info(
        "confguard sim listening on %s:%d (time scale %g, heartbeat %gs)",
        config.host,
        simulator.port,
        config.time_scale,
        config.heartbeat_interval,
    )
    shut_down = asyncio.create_task(simulator.wait_shut_down())
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({shut_down, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (shut_down, stopped):
            task.cancel()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)
        await simulator.stop()
        log.info("confguard sim stopped")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `confguard sim` / `python -m confguard.sim`; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        config = config_from_args(args)
    except UsageError as exc:
        print(f"confguard sim: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        print(
            f"confguard sim: error: cannot listen on {config.host}:{config.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    return EXIT_OK
