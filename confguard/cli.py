"""The `confguard` command: argument parsing and the subcommands' front ends.

It maps flags onto the configuration (`confguard.config`), talks to the daemon through the control
API client (`confguard.api`), or embeds an engine for `--direct`; the work itself lives elsewhere.
Exit codes are part of the interface (README, "Exit codes").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TextIO

from confguard.config import FLAG_KEYS, FLAG_NAMES, esl_settings
from confguard.invite import BadInput, Outcome

# Exit codes: 0 joined; one code per other outcome; then the errors of the command itself.
OUTCOME_EXIT: dict[str, int] = {
    Outcome.JOINED: 0,
    Outcome.TIMEOUT: 10,
    Outcome.DECLINED: 11,
    Outcome.HUNG_UP: 12,
    Outcome.BUSY: 13,
    Outcome.NO_ANSWER: 14,
    Outcome.REJECTED: 15,
    Outcome.UNREACHABLE: 16,
    Outcome.FAILED: 17,
    Outcome.CANCELLED: 18,
    Outcome.LOST: 19,
}
EXIT_OK = 0
EXIT_FAILURE = 1  # a check failed, or an unexpected error
EXIT_BAD_INPUT = 2
EXIT_DAEMON_UNREACHABLE = 3
EXIT_SWITCH_UNAVAILABLE = 4  # FreeSWITCH not connected (daemon) / cannot connect (--direct)
EXIT_NO_JOURNAL = 5  # `history`: no journal file yet (the daemon has not run with this path)
EXIT_INTERRUPTED = 130

USAGE_HINT_NO_DAEMON = (
    "start it with `systemctl start confguard` (or `confguard serve`), "
    "or run this invite without it: add --direct"
)


def _seconds_flag(text: str) -> int:
    """A whole number of seconds as typed: ASCII digits only (int() would also take ' 30\n',
    '3_0' or other scripts' digits)."""
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text[:40]!r}")
    return int(text)


def _invite_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The control-API request body for `confguard invite` (absent flags are left to the daemon)."""
    from confguard.api import REQUEST_FIELDS

    fields: dict[str, Any] = {"extensions": args.extensions, "room": args.room}
    # Every other request field is a flag of the same name (`--ring-timeout` -> ring_timeout).
    for name in sorted(REQUEST_FIELDS - {"extensions", "room", "variables"}):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    if args.var:
        variables: dict[str, str] = {}
        for item in args.var:
            name, sep, value = item.partition("=")
            if not sep:
                raise BadInput("var", item, "expected NAME=VALUE")
            variables[name] = value
        fields["variables"] = variables
    return fields


# --- progress output ---------------------------------------------------------------------------

OUTCOME_TEXT = {
    "joined": "joined {room}",
    "timeout": "timed out: no key within {timeout} s",
    "declined": "declined (pressed the decline key)",
    "hung_up": "hung up before joining",
    "busy": "busy",
    "no_answer": "no answer",
    "rejected": "rejected the call",
    "unreachable": "unreachable (not registered / no such user)",
    "failed": "failed",
    "cancelled": "cancelled by an operator",
    "lost": "lost: the call vanished while confguard could not see it",
}


def describe(update: dict[str, Any], timeout: int | None = None) -> str | None:
    """One human line for one update; None for `joined`, which the outcome line says next."""
    state = update.get("state")
    if update.get("outcome"):
        text = OUTCOME_TEXT.get(update["outcome"], update["outcome"]).format(
            room=update.get("room"), timeout=timeout if timeout is not None else "?"
        )
        cause = update.get("cause")
        if cause and update["outcome"] != "joined":
            text += f" [{cause}]"
        return f"{text} after {update.get('elapsed_ms', 0) / 1000:.1f} s"
    if state == "placing":
        return f"placing the call (uuid {update.get('uuid')})"
    if state == "ringing":
        return "ringing"
    if state == "waiting_key":
        return f"answered, waiting for the key ({update.get('seconds_left', 0):.0f} s left)"
    if state == "cancelling":
        return "key pressed, cancelling the hangup timer"
    if state == "joining":
        return f"timer cancelled, moving into {update.get('room')}"
    if state == "joined":
        return None
    return str(state)


async def _print_progress(
    streams: Sequence[tuple[str, AsyncIterator[dict[str, Any]]]],
    *,
    as_json: bool,
    timeout: int | None,
    out: TextIO,
) -> dict[str, str]:
    """Follow every invite concurrently, one line per update; returns ext -> outcome."""
    width = max(len(ext) for ext, _ in streams)
    outcomes: dict[str, str] = {}

    async def one(ext: str, stream: AsyncIterator[dict[str, Any]]) -> None:
        async for update in stream:
            line = json.dumps(update) if as_json else describe(update, timeout)
            if line is not None and not as_json:
                line = f"{ext:<{width}}  {line}"
            if line is not None:
                print(line, file=out, flush=True)
            if update.get("outcome"):
                outcomes[ext] = update["outcome"]

    await asyncio.gather(*(one(ext, stream) for ext, stream in streams))
    return outcomes


def exit_code_for(extensions: Sequence[str], outcomes: dict[str, str]) -> int:
    """0 when every extension joined; else the code of the first (in argument order) that did
    not."""
    for ext in extensions:
        outcome = outcomes.get(ext, Outcome.LOST)
        if outcome != Outcome.JOINED:
            return OUTCOME_EXIT.get(outcome, EXIT_FAILURE)
    return EXIT_OK


# --- subcommands -----------------------------------------------------------------------------


def _load_config(args: argparse.Namespace) -> Any:
    from confguard.config import load_config

    return load_config(
        getattr(args, "config", None), os.environ, _overrides(args), flag_names=FLAG_NAMES
    )


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        key: getattr(args, name)
        for name, (key, _flag) in FLAG_KEYS.items()
        if getattr(args, name, None) is not None
    }


def _err(message: str) -> None:
    print(f"confguard: {message}", file=sys.stderr)


async def cmd_invite(args: argparse.Namespace, out: TextIO) -> int:
    from confguard.api import ApiError, ControlClient, DaemonUnreachable, specs_from_request
    from confguard.idempotency import HEADER, REPLAYED_HEADER, check_key

    config = _load_config(args)
    defaults = config.invite
    fields = _invite_fields(args)
    # BadInput here: nothing is sent anywhere
    specs = specs_from_request(fields, defaults, config.routes)
    headers: list[tuple[str, str]] = []
    if args.idempotency_key is not None:
        headers.append((HEADER, check_key(args.idempotency_key, "--idempotency-key")))
        if args.direct:
            raise BadInput("--idempotency-key", args.idempotency_key,
                           "needs the daemon, which keeps the keys; not with --direct")
    if args.direct and args.notify:
        raise BadInput("notify", args.notify[0], "webhooks are sent by the daemon from its "
                       "durable outbox; --notify cannot be used with --direct")
    if args.direct:
        return await _invite_direct(config, defaults, fields, args, out)
    client = ControlClient(config.api.socket)
    try:
        _, answer, received = await client.exchange("POST", "/invites", fields, headers)
        created = answer["invites"]
    except DaemonUnreachable as exc:
        _err(f"the confguard daemon is not reachable ({exc}); {USAGE_HINT_NO_DAEMON}")
        return EXIT_DAEMON_UNREACHABLE
    except ApiError as exc:
        return _api_error_exit(exc)
    if received.get(REPLAYED_HEADER.lower()) == "true":
        _err(f"{HEADER} {args.idempotency_key}: already used for this request; following its "
             "invite(s) again, no new call placed")
    if args.no_wait:
        for item in created:
            print(item["uuid"] if not args.json else json.dumps(item), file=out)
        return EXIT_OK
    streams = [(item["ext"], client.follow(item["invite_id"])) for item in created]
    try:
        outcomes = await _print_progress(
            streams, as_json=args.json, timeout=specs[0].timeout, out=out
        )
    except (OSError, ApiError, DaemonUnreachable) as exc:
        outcomes, why = {}, f" ({exc})"
    else:
        why = ""
    unfollowed = [item for item in created if item["ext"] not in outcomes]
    for item in unfollowed:
        _err(
            f"{item['ext']}: the daemon stopped reporting before the outcome{why}; the call "
            f"{item['uuid']} stays bounded by its FreeSWITCH timer; its outcome will be in "
            "`confguard history` once the daemon runs again"
        )
    if unfollowed:
        return EXIT_DAEMON_UNREACHABLE
    return exit_code_for([s.extension for s in specs], outcomes)


def _api_error_exit(exc: Any) -> int:
    _err(str(exc))
    if exc.kind in ("bad_input", "idempotency_conflict"):  # nothing was sent either way
        return EXIT_BAD_INPUT
    if exc.status == 503:
        return EXIT_SWITCH_UNAVAILABLE
    return EXIT_FAILURE


async def _invite_direct(
    config: Any, defaults: Any, fields: dict[str, Any], args: argparse.Namespace, out: TextIO
) -> int:
    """`--direct`: no daemon; one ESL session in this process for these invites only."""
    from confguard.api import specs_from_request
    from confguard.engine import Engine
    from confguard.esl import EslError, EslSession, route_genesis_logging
    from confguard.logs import configure_logging

    configure_logging(format="json" if args.json else "auto", level="warning", stream=sys.stderr)
    route_genesis_logging()
    engine = Engine()
    session = EslSession(
        esl_settings(config),
        on_reconnect=engine.esl_reconnected,
        on_state=engine.esl_state_changed,
    )
    engine.attach(session)
    try:
        await session.connect()
    except EslError as exc:
        _err(f"cannot use FreeSWITCH: {exc}")
        return EXIT_SWITCH_UNAVAILABLE
    try:
        await engine.start()
        runs = [
            await engine.invite(spec)
            for spec in specs_from_request(fields, defaults, config.routes)
        ]
        if args.no_wait:
            _err("--no-wait with --direct would leave nobody watching the call; waiting instead")
        streams = [(run.spec.extension, engine.follow(run.invite_id)) for run in runs]
        try:
            outcomes = await _print_progress(
                streams, as_json=args.json, timeout=runs[0].spec.timeout, out=out
            )
        except asyncio.CancelledError:
            await engine.stop(cancel_invites=True)
            raise
        return exit_code_for([run.spec.extension for run in runs], outcomes)
    finally:
        await engine.stop()
        await session.close()


async def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    from confguard.api import ApiError, ControlClient, DaemonUnreachable

    config = _load_config(args)
    try:
        status = await ControlClient(config.api.socket).request("GET", "/status")
    except DaemonUnreachable as exc:
        _err(f"the confguard daemon is not reachable ({exc}); start it with "
             "`systemctl start confguard` or `confguard serve`")
        return EXIT_DAEMON_UNREACHABLE
    except ApiError as exc:
        return _api_error_exit(exc)
    if args.json:
        print(json.dumps(status, indent=2), file=out)
        return EXIT_OK
    print(format_status(status), file=out)
    return EXIT_OK


def format_status(status: dict[str, Any]) -> str:
    esl = status.get("esl", {})
    lines = [
        f"FreeSWITCH  {esl.get('target', '?')}  "
        + ("connected" if esl.get("connected") else "NOT connected")
        + (f" since {esl['connected_since']}" if esl.get("connected_since") else "")
        + f", {esl.get('reconnects', 0)} reconnects",
        f"daemon      up {status.get('uptime_s', 0):.0f} s, pid {status.get('pid', '?')}",
    ]
    invites = status.get("invites", [])
    members = format_members(status.get("members", []))
    if not invites:
        lines.append("no active invites")
        return "\n".join(lines + members)
    lines.append(f"{len(invites)} active invite(s):")
    header = f"{'UUID':<36}  {'EXT':<10} {'ROOM':<12} {'STATE':<12} {'LEFT':>6}  {'VIA':<10} FLAGS"
    lines.append(header)
    for row in invites:
        lines.append(
            f"{row['uuid']:<36}  {row['ext']:<10} {row['room']:<12} {row['state']:<12} "
            f"{row['seconds_left']:>5.0f}s  {row.get('via') or 'user':<10} {_flags_text(row)}"
        )
    return "\n".join(lines + members)


def _flags_text(row: dict[str, Any]) -> str:
    """A member's flags and time limit, e.g. `muted,moderator max 600s` (`-` for none)."""
    words = ",".join(row.get("flags") or [])
    if row.get("max_duration") is not None:
        words = f"{words} max {row['max_duration']}s".strip()
    return words or "-"


def format_members(members: list[dict[str, Any]]) -> list[str]:
    """The `status` lines of the members confguard watches in the room."""
    if not members:
        return []
    lines = [f"{len(members)} member(s) in the room:",
             f"{'UUID':<36}  {'EXT':<10} {'ROOM':<12} {'IN ROOM':>8} {'LEFT':>6}  FLAGS"]
    for row in members:
        in_room = "-" if row.get("in_room_s") is None else f"{row['in_room_s']:.0f}s"
        left = "-" if row.get("seconds_left") is None else f"{row['seconds_left']:.0f}s"
        lines.append(f"{row['uuid']:<36}  {row['ext']:<10} {row['room']:<12} {in_room:>8} "
                     f"{left:>6}  {_flags_text(row)}")
    return lines


async def cmd_cancel(args: argparse.Namespace, out: TextIO) -> int:
    from confguard.api import ApiError, ControlClient, DaemonUnreachable

    config = _load_config(args)
    try:
        await ControlClient(config.api.socket).request("DELETE", f"/invites/{args.invite}")
    except DaemonUnreachable as exc:
        _err(f"the confguard daemon is not reachable ({exc})")
        return EXIT_DAEMON_UNREACHABLE
    except ApiError as exc:
        return _api_error_exit(exc)
    print(f"cancelling {args.invite}", file=out)
    return EXIT_OK


async def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    """`confguard check`: connect with the configured settings, one ✓/✗ line per check."""
    from confguard import check
    from confguard.esl import EslSession, route_genesis_logging
    from confguard.logs import configure_logging

    config = _load_config(args)
    configure_logging(format="auto", level="warning", stream=sys.stderr)
    route_genesis_logging()
    target = f"{config.esl.host}:{config.esl.port}"
    print(f"confguard check against FreeSWITCH at {target}", file=out)
    session = EslSession(esl_settings(config))
    try:
        await session.connect()
    except Exception as exc:  # the typed EslError family, or anything the transport raised
        results = check.connection_results(target, exc)
        print(check.format_results(results), file=out, end="")
        await _close_quietly(session)
        return check.exit_code(results)
    try:
        results = check.connection_results(target, None)
        results += await check.run_checks(
            session.api,
            target=target,
            join_mode=config.invite.join_mode,
            join_target=check_join_target(config),
            prompt=config.invite.prompt,
            routes=config.routes,
        )
    finally:
        await _close_quietly(session)
    print(check.format_results(results), file=out, end="")
    return check.exit_code(results)


def check_join_target(config: Any) -> str:
    """What `check.run_checks` looks for: in `inline` mode the conference profile of the rooms
    (confguard's rooms carry no `@profile` by default, so mod_conference's `default`), in
    `dialplan` mode the configured extension and context."""
    inv = config.invite
    if inv.join_mode == "dialplan":
        return f"{inv.join_extension} XML {inv.join_context}"
    return ""


async def _close_quietly(session: Any) -> None:
    with contextlib.suppress(Exception):
        await session.close()


def cmd_history(args: argparse.Namespace, out: TextIO) -> int:
    """`confguard history`: finished invites from the journal, read-only (the daemon may run)."""
    from confguard.journal import Journal, JournalError, parse_since

    config = _load_config(args)
    path = config.journal.path
    since = None
    if args.since is not None:
        try:
            since = parse_since(args.since)
        except ValueError as exc:
            raise BadInput("since", args.since, str(exc)) from None
    if args.limit < 1:
        raise BadInput("limit", str(args.limit), "at least 1")
    if not os.path.exists(path):
        _err(f"no journal at {path} yet: it is created when `confguard serve` first starts "
             "with this [journal] path (or pass --journal PATH)")
        return EXIT_NO_JOURNAL
    try:
        with Journal(path, readonly=True) as journal:
            rows = journal.history(ext=args.ext, room=args.room, since=since, limit=args.limit)
    except JournalError as exc:
        _err(str(exc))
        return EXIT_FAILURE
    if args.json:
        for row in rows:
            print(json.dumps(history_item(row), default=str), file=out)
        return EXIT_OK
    print(format_history(rows), file=out)
    return EXIT_OK


def history_item(row: Any) -> dict[str, Any]:
    """One `history --json` line: the journal row, its durations and its start as ISO time."""
    item = row.as_dict()
    item["when"] = _local_time(row.created_at, iso=True)
    item["via"] = route_of_row(row)
    return item


def route_of_row(row: Any) -> str:
    """The dial route a journal row's invite took (its spec), `user` for user/{ext}."""
    route = ((row.detail or {}).get("spec") or {}).get("route") or {}
    return str(route.get("name") or "user")


def _local_time(epoch: float, *, iso: bool = False) -> str:
    import datetime as _dt

    moment = _dt.datetime.fromtimestamp(epoch).astimezone()
    if iso:
        return moment.isoformat(timespec="seconds")
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def format_history(rows: Sequence[Any]) -> str:
    """A table of finished invites, newest first (times are local)."""
    if not rows:
        return "no finished invites match"
    header = (
        f"{'WHEN':<19}  {'EXT':<10} {'ROOM':<12} {'OUTCOME':<11} {'CAUSE':<24} "
        f"{'RING':>6} {'WAIT':>6} {'TOTAL':>7}  {'VIA':<10} IN ROOM"
    )
    lines = [header]
    for row in rows:
        lines.append(
            f"{_local_time(row.created_at):<19}  {row.ext:<10} {row.room:<12} "
            f"{row.outcome or '?':<11} {row.cause or '-':<24} "
            f"{_seconds(row.ring_seconds):>6} {_seconds(row.wait_key_seconds):>6} "
            f"{_seconds(row.total_seconds):>7}  {route_of_row(row):<10} {_in_room_text(row)}"
        )
    return "\n".join(lines)


def _in_room_text(row: Any) -> str:
    """A joined member's stay: `12.0s max_duration (ALLOTTED_TIMEOUT) [muted]`, `in the room`
    while it has not been seen leaving, `-` for an invite that never joined."""
    if row.outcome != "joined":
        return "-"
    spec = (row.detail or {}).get("spec") or {}
    flags = [name for name in ("muted", "deaf", "moderator", "endconf") if spec.get(name)]
    tail = f" [{','.join(flags)}]" if flags else ""
    if row.left_at is None:
        return "in the room" + tail
    stay = "?" if row.joined_at is None else _seconds(row.left_at - row.joined_at)
    cause = f" ({row.left_cause})" if row.left_cause else ""
    return f"{stay} {row.left_reason}{cause}{tail}"


async def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    from confguard.daemon import serve

    return await serve(_load_config(args), config_path=args.config, overrides=_overrides(args))


def cmd_config(args: argparse.Namespace, out: TextIO) -> int:
    from confguard.config import render_config

    print(render_config(_load_config(args)), file=out)
    return EXIT_OK


# --- argument parsing --------------------------------------------------------------------------


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", help="TOML configuration file (default /etc/confguard/confguard.toml)"
    )
    parser.add_argument("--socket", help="control socket path")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="confguard",
        description="Invite extensions into a FreeSWITCH conference; they join by pressing a key.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("invite", help="invite one or more extensions into a room")
    _add_common(p)
    p.add_argument("extensions", nargs="+", metavar="EXTENSION")
    p.add_argument("--room", required=True, help="conference room, e.g. test1 or test1@default")
    p.add_argument("--timeout", type=_seconds_flag,
                   help="seconds from the invite to press the key (1-3600)")
    p.add_argument("--ring-timeout", type=_seconds_flag,
                   help="seconds the phone may ring (<= --timeout)")
    p.add_argument("--key", help="the key that joins (default 1)")
    p.add_argument("--decline-key", help="a key that declines (hangs up at once)")
    p.add_argument("--prompt", help="sound file or tone_stream:// / silence_stream:// URL")
    p.add_argument("--caller-id-name")
    p.add_argument("--caller-id-number")
    p.add_argument("--join", help="'inline' or '<extension> <context>' (default from config)")
    p.add_argument("--max-duration", type=_seconds_flag, metavar="S",
                   help="once joined, FreeSWITCH hangs the member up after S seconds "
                        "(default [invite] max_duration: none, unlimited)")
    for flag, what in (("muted", "joins muted (cannot speak)"), ("deaf", "joins deaf"),
                       ("moderator", "joins as a moderator"),
                       ("endconf", "the conference ends when this member leaves")):
        p.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, default=None,
                       help=f"member flag: {what} (default [invite] {flag})")
    p.add_argument("--via", metavar="ROUTE",
                   help="a [routes.<name>] dial route; the targets are its {ext} or {number} "
                        "(default [invite] via, else user/{ext})")
    p.add_argument("--var", action="append", metavar="NAME=VALUE",
                   help="extra channel variable (whitelisted names and values)")
    p.add_argument("--notify", action="append", metavar="URL",
                   help="POST every state change and the outcome of these invites to this "
                        "http(s) URL (signed; README 'Status webhooks'); repeatable")
    p.add_argument("--json", action="store_true", help="one JSON object per state change")
    p.add_argument("--no-wait", action="store_true", help="print the uuid once placed and exit")
    p.add_argument("--direct", action="store_true",
                   help="no daemon: connect to FreeSWITCH from this process")
    p.add_argument("--idempotency-key", metavar="KEY",
                   help="run again with the same KEY: the same invite(s), no second call "
                        "(1-128 of A-Z a-z 0-9 _ - . :)")
    p.add_argument("--esl-host", help=argparse.SUPPRESS)
    p.add_argument("--esl-port", type=int, help=argparse.SUPPRESS)

    p = sub.add_parser("serve", help="run the daemon")
    _add_common(p)
    p.add_argument("--esl-host")
    p.add_argument("--esl-port", type=int)
    p.add_argument("--log-format", choices=["auto", "console", "json"])
    p.add_argument("--log-level")
    p.add_argument("--log-file")
    p.add_argument("--metrics-listen", help="host:port for /metrics, e.g. 127.0.0.1:9464")
    p.add_argument("--journal", help="journal database path")
    p.add_argument("--idempotency-retention",
                   help="seconds an Idempotency-Key is remembered (default 86400)")

    p = sub.add_parser("status", help="the ESL connection and the active invites")
    _add_common(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("cancel", help="cancel an active invite (hangs the call up)")
    _add_common(p)
    p.add_argument("invite", help="invite id or call uuid")

    p = sub.add_parser("config", help="print the effective configuration and its sources")
    _add_common(p)
    p.add_argument("--esl-host")
    p.add_argument("--esl-port", type=int)

    p = sub.add_parser("history", help="finished invites from the journal")
    _add_common(p)
    p.add_argument("--ext", help="only this extension")
    p.add_argument("--room", help="only this room")
    p.add_argument("--since", help="only invites started since: 90s, 30m, 1h, 2d, 1w or an ISO "
                                    "date/time (local)")
    p.add_argument("--limit", type=int, default=50, help="at most this many rows (default 50)")
    p.add_argument("--json", action="store_true", help="one JSON object per invite")
    p.add_argument("--journal", help="journal database path")

    p = sub.add_parser("check", help="is the configured FreeSWITCH ready for confguard?")
    _add_common(p)
    p.add_argument("--esl-host")
    p.add_argument("--esl-port", type=int)

    sub.add_parser("sim", help="run the FreeSWITCH simulator (see `confguard sim --help`)",
                   add_help=False)
    return parser


COMMANDS: dict[str, Callable[..., Any]] = {
    "invite": cmd_invite,
    "serve": cmd_serve,
    "status": cmd_status,
    "cancel": cmd_cancel,
    "config": cmd_config,
    "history": cmd_history,
    "check": cmd_check,
}


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    out = out or sys.stdout
    if argv and argv[0] == "sim":
        from confguard.sim.cli import main as sim_main

        return sim_main(argv[1:])
    args = build_parser().parse_args(argv)
    handler = COMMANDS[args.command]
    try:
        if asyncio.iscoroutinefunction(handler):
            return _run(handler(args, out))
        return int(handler(args, out))
    except BadInput as exc:
        _err(f"bad input: {exc}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        from confguard.config import ConfigError

        if isinstance(exc, ConfigError):
            _err(f"configuration: {exc}")
            return EXIT_BAD_INPUT
        raise


def _run(coro: Any) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return int(asyncio.run(coro))
    with contextlib.suppress(KeyboardInterrupt):
        return int(uvloop.run(coro))
    return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
