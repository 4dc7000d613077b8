"""The simulated FreeSWITCH core (`Switch`): channels, originate, the api command table,
conferences, the scheduler's commands, HEARTBEAT, shutdown and restart.

Owns the telephony half of the simulator and every header value of every event it fires
(through `events.EventFactory`). The server (server.py) owns the sockets: it calls `api()` /
`background_job()` and fans the events given to `publish` out to its clients.

Behaviour follows the recorded FreeSWITCH transcripts (tests/transcripts/) for
the originated (-a) leg; the loopback -b leg of the recording set-up is not simulated. Reply
strings are the transcripts' byte for byte. Delays between the steps of a call (about 20 ms,
as recorded) are simulated time, scaled by the clock like everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import random
import re
import threading
import wave
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape as xml_escape

from confguard.sim import wire
from confguard.sim.callees import (
    FAILURE_CAUSES,
    CalleeError,
    CalleeMode,
    CalleeSpec,
    resolve_callee,
)
from confguard.sim.clock import SimClock, Timer, timer_pending
from confguard.sim.config import SimConfig
from confguard.sim.events import (
    CAUSE_CODES,
    CAUSE_NAMES,
    ChannelFacts,
    ConferenceFacts,
    EventFactory,
    MemberFacts,
    SimEvent,
    stamp_local,
)
from confguard.sim.scheduler import Scheduler, Task
from confguard.sim.xmlconf import build_document, xml_locate

log = logging.getLogger(__name__)

VERSION_LINE = (
    "FreeSWITCH Version 1.11.3-dev+git~20260821T141014Z~cc93a683ca~64bit "
    "(git cc93a68 2026-08-21 14:10:14Z 64bit)"
)
VERSION_SHORT = "1.11.3-dev git cc93a68 2026-08-21 14:10:14Z 64bit"
MODULES = (
    "mod_commands", "mod_dptools", "mod_conference", "mod_event_socket", "mod_loopback",
    "mod_dialplan_xml", "mod_hash", "mod_db", "mod_lua", "mod_sndfile", "mod_native_file",
    "mod_tone_stream", "mod_expr", "mod_console", "mod_logfile", "mod_say_en",
)  # fmt: skip
TIMERS_PRUNE_ABOVE = 16  # a channel's list of timers is swept once it grows past this (doubling)
STEP = 0.02  # simulated seconds between the steps of a call, as recorded
# uuid_broadcast: the playback starts 0.2 s after `+OK Message sent` (transcript 13: 0.201 s
# every time), and a prompt lasts its tone's length; audio is 8 kHz (L16).
BROADCAST_DELAY = 0.2
SAMPLE_RATE = 8000
BROADCAST_USAGE = "-USAGE: <uuid> <path> [aleg|bleg|holdb|both]\n"
NO_SUCH_CHANNEL = "-ERR No such channel!\n"
# Endpoint interfaces by module, as `show endpoint` lists them (mod_sofia's from its source).
ENDPOINTS = {
    "mod_dptools": ("error", "group", "pickup", "user"),
    "mod_loopback": ("loopback", "null"),
    "mod_sofia": ("sofia",),
}
CALLEE_CONTEXT = "confguard_callee"  # realswitch/conf.py: its callee.lua answers any number
# A callee dialled straight (loopback/<n>/confguard_callee, or a gateway): callee.lua with no
# directory defaults answers after 1 s and presses nothing; a per-call sim_* still applies.
DIRECT_CALLEE = CalleeSpec()
SOFIA_LINE = "=" * 97  # mod_sofia.c's `sofia status` rule
LOOPBACK_DESTINATION = "sim_callee"  # the recorded leg's first destination (loopback/sim_callee)
CONFERENCE_EXTENSION = ("7001", "default", "test1")  # extension, context, room
SCHED_API_USAGE = "-ERR Invalid syntax. USAGE: [+@]<time> <group_name> <command_string>[&]\n"
ORIGINATE_USAGE = (
    "-USAGE: <call url> <exten>|&<application_name>(<app_args>) [<dialplan>] [<context>] "
    "[<cid_name>] [<cid_num>] [<timeout_sec>]\n"
)


_ARG_RE = re.compile(r"(?:[^ ']+|'[^']*'?)+")  # a word: unquoted runs and 'quoted parts'


class _RandomBytes:
    """os.urandom drawn 4 KiB at a time, handed out 16 bytes a time (one system call for 256
    uuids instead of one each), never the same bytes twice (a lock: simulators may run on loops
    in other threads); a forked child starts with fresh bytes of its own."""

    def __init__(self) -> None:
        self.pool = b""
        self.at = 0
        self.lock = threading.Lock()

    def take16(self) -> bytes:
        with self.lock:
            at = self.at
            if at >= len(self.pool):
                self.pool, at = os.urandom(4096), 0
            self.at = at + 16
            return self.pool[at : at + 16]

    def forget(self) -> None:
        self.pool, self.at, self.lock = b"", 0, threading.Lock()


_RANDOM = _RandomBytes()
os.register_at_fork(after_in_child=_RANDOM.forget)


def new_uuid() -> str:
    """A random (version 4, RFC 4122 variant) UUID as text, like `str(uuid.uuid4())` (16 bytes
    of os.urandom), without making a UUID object on the way."""
    raw = bytearray(_RANDOM.take16())
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _set_vars(facts: ChannelFacts, pairs: Iterable[tuple[str, str]]) -> None:
    """`facts.set_var(name, value)` for each pair in order (a variable set again moves to the
    end), looking at the variables once. Only where no application advances lazily
    (`ChannelFacts.catch_up`) in the middle: it is brought up to now once, before the first."""
    variables = facts.variables
    for name, value in pairs:
        variables.pop(name, None)
        variables[name] = value


def split_args(text: str, *, keep_quotes: bool = False) -> list[str]:
    """Split on spaces; single quotes group (and are removed unless `keep_quotes`)."""
    if "'" not in text:
        return [word for word in text.split(" ") if word]
    words = _ARG_RE.findall(text)
    return words if keep_quotes else [word.replace("'", "") for word in words]


def parse_dial_string(dial: str) -> tuple[dict[str, str], str]:
    """`{a=b,c='x,y'}user/1000` -> ({"a": "b", "c": "x,y"}, "user/1000")."""
    variables: dict[str, str] = {}
    if not dial.startswith("{"):
        return variables, dial
    # Every other piece between quotes is quoted (the first is not): braces count outside them.
    pieces = dial.split("'")
    depth, offset, end = 0, 0, -1
    for index in range(0, len(pieces), 2):
        piece = pieces[index]
        opening, closing = piece.find("{"), piece.find("}")
        while closing >= 0 or opening >= 0:  # the braces of this piece, in order
            if opening >= 0 and (closing < 0 or opening < closing):
                depth += 1
                opening = piece.find("{", opening + 1)
                continue
            depth -= 1
            if depth == 0:
                end = offset + closing
                break
            closing = piece.find("}", closing + 1)
        if end >= 0:
            break
        offset += len(piece) + 1 + (len(pieces[index + 1]) + 1 if index + 1 < len(pieces) else 0)
    if end < 0:
        return variables, dial
    body, rest = dial[1:end], dial[end + 1 :]
    parts: list[str] = []
    if "'" not in body:
        parts = body.split(",")
    else:
        current: list[str] = []
        for index, piece in enumerate(body.split("'")):
            if index:
                current.append("'")
            if index % 2 == 0 and "," in piece:  # commas outside quotes split
                first, *others = piece.split(",")
                current.append(first)
                parts.append("".join(current))
                parts += others[:-1]
                current = [others[-1]]
            else:
                current.append(piece)
        parts.append("".join(current))
    for part in parts:
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == "'" and value[-1] == "'":
            value = value[1:-1]
        variables[name] = value
    return variables, rest


_ORIGINATION_UUID = re.compile(r"origination_uuid=([0-9A-Za-z-]+)")
_MARK = "\x00"  # stands for the call's uuid in a kept originate form (never in a command)
_ORIGINATE_FORMS: dict[str, tuple[tuple[str, ...], tuple[tuple[str, str], ...], str]] = {}
_ORIGINATE_FORMS_KEPT = 256


def parse_originate(arg: str) -> tuple[list[str], dict[str, str], str] | None:
    """The originate's arguments, its dial string's {variables} and its target --
    `split_args(arg, keep_quotes=True)` and `parse_dial_string` of the first -- or None when
    there are fewer than two arguments. Parsed once per form: every call of a client sends the
    same text but for its `origination_uuid`, so the form is the text with that value replaced
    by a mark, and a call's parse is the form's with the value put back. (Exact: the parsers
    only split at spaces, quotes, braces, commas and `=`, none of which the value nor the mark
    holds; the mark is never in a command.) A bounded table; new lists and dict each call."""
    if _MARK in arg:
        return _parse_originate(arg)
    found = _ORIGINATION_UUID.search(arg)
    value = found.group(1) if found is not None else ""
    form = arg.replace(value, _MARK) if value else arg
    kept = _ORIGINATE_FORMS.get(form)
    if kept is None:
        parsed = _parse_originate(form)
        if parsed is None:
            return None
        kept = (tuple(parsed[0]), tuple(parsed[1].items()), parsed[2])
        if len(_ORIGINATE_FORMS) >= _ORIGINATE_FORMS_KEPT:
            _ORIGINATE_FORMS.clear()
        _ORIGINATE_FORMS[form] = kept
    args, pairs, target = kept
    if not value:
        return list(args), dict(pairs), target
    return (
        [word.replace(_MARK, value) if _MARK in word else word for word in args],
        {
            name.replace(_MARK, value): text.replace(_MARK, value) if _MARK in text else text
            for name, text in pairs
        },
        target.replace(_MARK, value) if _MARK in target else target,
    )


def _parse_originate(arg: str) -> tuple[list[str], dict[str, str], str] | None:
    args = split_args(arg, keep_quotes=True)
    if len(args) < 2:
        return None
    variables, target = parse_dial_string(args[0])
    return args, variables, target


def parse_cause(text: str | None, default: str = "ALLOTTED_TIMEOUT") -> str:
    """A hangup cause as FreeSWITCH reads it: name (any case) or Q.850 number; else
    NORMAL_CLEARING."""
    if text is None or text == "":
        return default
    if text.isdigit():
        return CAUSE_NAMES.get(int(text), "NORMAL_CLEARING")
    name = text.upper()
    return name if name in CAUSE_CODES else "NORMAL_CLEARING"


def ring_time_limit(start: float, timeout: int) -> float:
    """When an originate started at epoch `start` gives up ringing (NO_ANSWER): its timeout
    counts whole seconds of the wall clock, checked every 20 ms from the start, so it fires on
    the first check after second floor(start) + timeout: `originate_timeout=2` rang 1.51-1.64 s
    (transcript 16 and its runs), `=3` 2.25 s (transcript 10) -- between N-1 and N seconds."""
    remaining = math.floor(start) + timeout - start
    return start + math.ceil(remaining / STEP - 1e-9) * STEP


def _early_media(variables: dict[str, str]) -> str:
    """`originate_early_media`: false when the originate waits for the answer
    (`ignore_early_media=true`, transcripts 13 and 14), else true."""
    return "false" if variables.get("ignore_early_media", "").lower() == "true" else "true"


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# What an originate's steps (`Switch._originate_steps`) wait for between them: (kind, what).
_API = "api"  # the api command `what` run (an originate's waits; any other's at once)
_SLEEP = "sleep"  # `what` simulated seconds on the clock
_ENDED = "ended"  # the channel `what` to end
_ANSWERED = "answered"  # (channel, ring limit): its answer or hangup, at most until the limit
_PASS = "pass"  # one pass of the event loop (asyncio.sleep(0))
_Wait = tuple[str, Any]


def _next_step(steps: Generator[_Wait, None, str]) -> _Wait | str:
    """The next wait of an originate's steps, or its reply once they are done."""
    try:
        return next(steps)
    except StopIteration as done:
        reply: str = done.value
        return reply


def _atoi(text: str) -> int:
    """C's atoi: leading digits (with an optional sign), 0 when none."""
    if text.isascii() and text.isdigit():  # only ASCII digits: what int() reads the same
        return int(text)
    sign, digits = 1, ""
    rest = text.strip()
    if rest[:1] in "+-" and rest:
        sign = -1 if rest[0] == "-" else 1
        rest = rest[1:]
    for char in rest:
        if not char.isdigit():
            break
        digits += char
    return sign * int(digits) if digits else 0


@dataclass
class Conference:
    """One conference room and its members (newest last)."""

    facts: ConferenceFacts
    created: float
    members: list[Channel] = field(default_factory=list)
    floor: Channel | None = None


@dataclass
class Channel:
    """One simulated channel (the originated leg)."""

    facts: ChannelFacts
    extension: str
    spec: CalleeSpec
    session_id: int
    answered: bool = False
    hung_up: bool = False
    destroyed: bool = False
    application: str | None = None
    application_data: str | None = None
    application_uuid: str = ""
    conference: Conference | None = None
    member_id: int = 0
    answer_waiter: Callable[[], None] | None = None  # wakes the originate waiting for the answer
    ended: bool = False  # destroyed, CHANNEL_HANGUP_COMPLETE fired (or lost in a restart)
    ended_waiters: list[Callable[[], None]] | None = None  # called once `ended` (made on demand)
    timers: list[Timer] = field(default_factory=list)  # pending (and some spent)
    timers_pruned_at: int = TIMERS_PRUNE_ABOVE  # `timers` is swept of spent ones past this
    digits_dialed: list[str] = field(default_factory=list)
    listed_destination: str | None = None  # `show channels` dest when not the profile's
    joined_at: float = 0.0  # simulated epoch seconds it joined its conference
    last_app: str | None = None  # the last application run (last_app / last_arg at hangup)
    last_arg: str | None = None
    inline_apps: list[tuple[str, str | None]] = field(default_factory=list)  # still to run
    member_flags: frozenset[str] = frozenset()  # mod_conference's: mute, deaf, moderator, endconf
    collector: DigitCollector | None = None  # a running play_and_get_digits
    # Keys pressed while no application ran (before the originate's first app, between a
    # transfer and the next): FreeSWITCH queues them on the channel, and the next app that
    # reads DTMF takes them (play_and_get_digits' prompt; park and conference consume them).
    queued_dtmf: list[str] = field(default_factory=list)

    @property
    def uuid(self) -> str:
        return self.facts.uuid

    def answered_or_gone(self) -> None:
        """The channel was answered or hung up: the originate waiting for that goes on."""
        if self.answer_waiter is not None:
            self.answer_waiter()

    def when_ended(self, wake: Callable[[], None]) -> None:
        """Call `wake()` once the channel has ended (as asyncio.Event.set wakes its waiters:
        in order, at that moment)."""
        if self.ended_waiters is None:
            self.ended_waiters = []
        self.ended_waiters.append(wake)

    def set_ended(self) -> None:
        self.ended = True
        waiters, self.ended_waiters = self.ended_waiters, None
        for wake in waiters or ():
            wake()

    async def wait_ended(self) -> None:
        """Until the channel has ended (at once when it has: no suspension)."""
        if self.ended:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.when_ended(functools.partial(_resolve, waiter))
        await waiter

    @property
    def alive(self) -> bool:
        return not self.hung_up


class Switch:
    """Channels, originate, api commands, scheduler, conferences, HEARTBEAT (CONTRACTS.md)."""

    def __init__(
        self, config: SimConfig, clock: SimClock, publish: Callable[[SimEvent], None]
    ) -> None:
        self.config = config
        self.clock = clock
        self._publish = publish
        self._event_wanted: Callable[[str, str | None], bool] | None = None
        self.events = self._event_factory()
        self.scheduler = Scheduler(
            clock,
            lambda: self.events,
            self.publish,
            hostname=config.hostname,
            rng=random.Random(config.seed),
            mirror_lag=config.mirror_lag,
            add_event_delay=config.schedule_event_delay,
        )
        self.channels: dict[str, Channel] = {}
        self.conferences: dict[str, Conference] = {}
        self.global_vars: dict[str, str] = {"domain": config.domain}
        self.xml_registry = build_document(config.domain, *CONFERENCE_EXTENSION)
        self.started_at = clock.monotonic()
        self.sessions_since_startup = 0
        self.session_peak = 0
        self._next_session_id = 1
        self._next_member_id = 1
        self._background: set[asyncio.Task[object]] = set()
        self._originating: set[_Originating] = set()  # the bgapi originates under way
        self._endpoints_for: tuple[str, ...] | None = None  # the modules `_endpoints_named` is of
        self._endpoints_named: frozenset[str] = frozenset()
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._running = False
        self.is_shut_down = False
        self._commands: dict[str, Callable[[str], Awaitable[str]]] = {
            "originate": self._api_originate,
            "status": self._api_status,
            "version": self._api_version,
            "hostname": self._api_hostname,
            "module_exists": self._api_module_exists,
            "sofia": self._api_sofia,
            "uuid_exists": self._api_uuid_exists,
            "uuid_kill": self._api_uuid_kill,
            "uuid_getvar": self._api_uuid_getvar,
            "uuid_setvar": self._api_uuid_setvar,
            "uuid_dump": self._api_uuid_dump,
            "uuid_transfer": self._api_uuid_transfer,
            "uuid_broadcast": self._api_uuid_broadcast,
            "sched_hangup": self._api_sched_hangup,
            "sched_del": self._api_sched_del,
            "sched_api": self._api_sched_api,
            "unsched_api": self._api_unsched_api,
            "sched_transfer": self._api_sched_transfer,
            "sched_broadcast": self._api_sched_broadcast,
            "show": self._api_show,
            "conference": self._api_conference,
            "global_getvar": self._api_global_getvar,
            "global_setvar": self._api_global_setvar,
            "fsctl": self._api_fsctl,
            "create_uuid": self._api_create_uuid,
            "echo": self._api_echo,
            "file_exists": self._api_file_exists,
            "xml_locate": self._api_xml_locate,
        }

    def _event_factory(self) -> EventFactory:
        """A new run's events: a new Core-UUID, the sequence from 1."""
        config = self.config
        return EventFactory(
            self.clock,
            core_uuid=new_uuid(),
            hostname=config.hostname,
            ipv4=config.ipv4,
            ipv6=config.ipv6,
            wants=self._event_wanted,
        )

    @property
    def event_wanted(self) -> Callable[[str, str | None], bool] | None:
        """Set by the Simulator to its server's `wants`: events no client takes are not built
        (None: every event is). Handed to the event factory itself, this one's and every later
        run's, so that its check is one call, not one through the switch."""
        return self._event_wanted

    @event_wanted.setter
    def event_wanted(self, wanted: Callable[[str, str | None], bool] | None) -> None:
        self._event_wanted = wanted
        self.events.wants = wanted

    def _wants(self, name: str) -> bool:
        """Whether a client takes events `name` (as the event factory asks)."""
        wanted = self._event_wanted
        return wanted is None or wanted(name, None)

    # -- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the scheduler and the HEARTBEAT loop."""
        self._running = True
        await self.scheduler.start()
        if self._heartbeat_task is None:
            self._heartbeat_task = asyncio.create_task(self._heartbeats(), name="sim-heartbeat")

    async def stop(self) -> None:
        """Stop every loop and pending step; no events."""
        self._running = False
        task, self._heartbeat_task = self._heartbeat_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.scheduler.stop()
        for channel in list(self.channels.values()):
            self._cancel_timers(channel)
        self._stop_originating()
        for background in list(self._background):
            background.cancel()
        for background in list(self._background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await background
        self._background.clear()

    def publish(self, event: SimEvent) -> None:
        """Hand an event to the server (nothing after a shutdown)."""
        if self.is_shut_down and event.name != "SHUTDOWN":
            return
        try:
            self._publish(event)
        except Exception:
            log.exception("publishing %s failed", event.name)

    def restart(self) -> None:
        """A FreeSWITCH restart: every call and task gone without events, a new Core-UUID."""
        for channel in list(self.channels.values()):
            self._cancel_timers(channel)
            channel.hung_up = channel.destroyed = True
            channel.set_ended()
            channel.answered_or_gone()
        self.channels.clear()
        self.conferences.clear()
        self._stop_originating()
        for background in list(self._background):
            background.cancel()
        self._background.clear()
        self.events = self._event_factory()
        self.scheduler.reset()
        self.started_at = self.clock.monotonic()
        self.sessions_since_startup = 0
        self.session_peak = 0
        self._next_session_id = 1
        self._next_member_id = 1
        self.is_shut_down = False

    async def shutdown(self) -> None:
        """`fsctl shutdown`: SHUTDOWN, then every call hung up with SYSTEM_SHUTDOWN."""
        if self.is_shut_down:
            return
        await self.clock.sleep(0.18)
        self.publish(self.events.shutdown())
        live = [channel for channel in self.channels.values() if channel.alive]
        for channel in live:
            self.hangup(channel, "SYSTEM_SHUTDOWN", fire_hangup_event=True, delay=0.0)
        for channel in live:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(channel.wait_ended(), timeout=5.0)
        self.is_shut_down = True
        self._running = False

    # -- api entry points --------------------------------------------------------------------

    async def api(self, command: str) -> str:
        """Run one api command; the api/response body."""
        command = command.strip("\r\n")
        name, _, arg = command.strip().partition(" ")
        handler = self._commands.get(name)
        if handler is None:
            return f"-ERR {name} Command not found!\n"
        try:
            return await handler(arg.strip())
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.exception("api %r failed", command)
            return f"-ERR {error}\n"

    def background_job(self, job_uuid: str, command: str) -> None:
        """Run `command` -- an originate on callbacks (`_Originating`), anything else in a
        task -- then publish BACKGROUND_JOB with its result."""
        name, _, arg = command.strip().partition(" ")
        if name == "originate":
            # Its first step runs where the task's would have.
            job = _Originating(self, command.strip("\r\n"), arg.strip(), job_uuid=job_uuid)
            self._originating.add(job)
            asyncio.get_running_loop().call_soon(job.step)
            return

        async def run() -> None:
            body = await self.api(command)
            self.publish(self.events.background_job(job_uuid, name, arg.strip(), body))

        self._spawn(run())

    def _api_at_once(self, command: str) -> None:
        """Run an api command that answers without waiting -- any but originate -- and drop
        its reply (an api_on_originate's)."""
        running = self.api(command)
        try:
            running.send(None)
        except StopIteration:
            return
        running.close()
        raise RuntimeError(f"api {command!r} waited: only originate may")

    def send_event(
        self, command_line: str, headers: Sequence[tuple[str, str]], body: str | None
    ) -> str:
        """`sendevent`: fire the client's event, or, when its `Unique-ID` names a live call,
        queue it to that call instead (mod_event_socket; the simulator's calls take no queued
        events, so it goes nowhere). The reply: `+OK <Event-UUID>`."""
        event_uuid = new_uuid()
        target = next((v for k, v in headers if k.lower() == "unique-id"), None)
        if target is None or self.live_channel(target) is None:
            self.publish(self.events.client_event(command_line, headers, event_uuid, body))
        return f"+OK {event_uuid}"

    # -- helpers -----------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[object]) -> asyncio.Task[object]:
        task: asyncio.Task[object] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _stop_originating(self) -> None:
        for run in list(self._originating):
            run.stop()
        self._originating.clear()

    def _later(self, channel: Channel | None, sim_seconds: float, fn: Callable[[], None]) -> None:
        handle = self.clock.call_later(sim_seconds, fn)
        if channel is not None:
            timers = channel.timers
            timers.append(handle)
            if len(timers) > channel.timers_pruned_at:
                # Fired and cancelled handles go (amortised: when the list has doubled since).
                timers[:] = [timer for timer in timers if timer_pending(timer)]
                channel.timers_pruned_at = max(TIMERS_PRUNE_ABOVE, 2 * len(timers))

    @staticmethod
    def _cancel_timers(channel: Channel) -> None:
        for handle in channel.timers:
            handle.cancel()
        channel.timers.clear()
        if channel.collector is not None:  # its one pending timer is its own
            channel.collector._cancel()

    def live_channel(self, uuid: str) -> Channel | None:
        channel = self.channels.get(uuid)
        if channel is None or channel.hung_up:
            return None
        return channel

    async def _heartbeats(self) -> None:
        while True:
            await self.clock.sleep(self.config.heartbeat_interval)
            if self.is_shut_down:
                continue
            self.publish(
                self.events.heartbeat(
                    uptime_seconds=self.clock.monotonic() - self.started_at,
                    version=VERSION_SHORT.split(" ")[0],
                    session_count=len(self.channels),
                    sessions_since_startup=self.sessions_since_startup,
                    session_peak=self.session_peak,
                )
            )

    # -- originate ---------------------------------------------------------------------------

    async def _api_originate(self, arg: str) -> str:
        """`api originate` (a bgapi one runs on callbacks, `_Originating`): its steps
        (`_originate_steps`), awaiting in between what they ask for."""
        steps = self._originate_steps(arg)
        while not isinstance(wait := _next_step(steps), str):
            kind, what = wait
            if kind == _API:
                await self.api(what)
            elif kind == _SLEEP:
                await self.clock.sleep(what)
            elif kind == _ENDED:
                await what.wait_ended()
            elif kind == _ANSWERED:
                await self._until_answered(*what)
            else:  # _PASS
                await asyncio.sleep(0)
        return wait

    def _originate_steps(self, arg: str) -> Generator[_Wait, None, str]:
        """The originate, step by step: yields what it waits for next (see `_Wait`), returns
        its reply. Run by `_api_originate` (a coroutine) and `_Originating` (a bgapi's, on
        callbacks), which wait in the same way: the steps run at the same moments."""
        parsed = parse_originate(arg)
        if parsed is None:
            return ORIGINATE_USAGE
        args, variables, target = parsed
        routed = self._dial_target(target)
        if isinstance(routed, str):
            return routed
        extension, domain, directory, refused = routed
        try:
            spec = resolve_callee(directory, extension, variables)
        except CalleeError:
            return "-ERR INVALID_NUMBER_FORMAT\n"
        if spec is None:
            return "-ERR SUBSCRIBER_ABSENT\n"
        if spec.mode is CalleeMode.UNREGISTERED:
            if target.startswith("user/"):  # the directory's dial-string is error/...
                return "-ERR USER_NOT_REGISTERED\n"
            refused = refused or "USER_NOT_REGISTERED"  # callee.lua refuses from its leg
        call_uuid = variables.get("origination_uuid") or new_uuid()
        if call_uuid in self.channels:
            return "-ERR DESTINATION_OUT_OF_ORDER\n"
        timeout = _atoi(variables.get("originate_timeout", "60")) or 60
        ring_limit = ring_time_limit(self.clock.now(), timeout)

        channel = self._new_channel(call_uuid, extension, domain, spec, variables)
        # api_on_originate runs on the new channel before CHANNEL_CREATE reaches the wire (the
        # quiet switch's order; on the real one these and CHANNEL_PROGRESS race, FACTS.md).
        on_originate = [
            value for name, value in variables.items()
            if value and name.startswith("api_on_originate")
        ]  # fmt: skip
        for command in on_originate:
            yield _API, command
        yield _SLEEP, STEP
        if channel.destroyed:
            return f"-ERR {channel.facts.hangup_cause or 'ORIGINATOR_CANCEL'}\n"
        self.publish(self.events.channel_create(channel.facts))

        failure = refused or FAILURE_CAUSES.get(spec.mode)
        if failure is not None:
            yield _SLEEP, STEP
            if channel.alive:
                self.hangup(channel, failure)
            if not channel.ended:
                yield _ENDED, channel
            return f"-ERR {channel.facts.hangup_cause}\n"

        if spec.mode is CalleeMode.ANSWER and spec.answer_after <= 0:
            self._answer(channel)
        else:
            self._ring(channel)
            if spec.mode is CalleeMode.ANSWER:
                self._later(channel, spec.answer_after, lambda: self._answer(channel))
        if channel.answered or channel.hung_up:
            yield _PASS, None  # (the answer came at once: one pass of the loop, no wait)
        else:
            yield _ANSWERED, (channel, ring_limit)
        if not channel.answered:
            if channel.alive:
                # The originate gives up: it hangs the channel up and answers at once, before
                # the channel's CHANNEL_HANGUP_COMPLETE (transcript 16).
                self.hangup(channel, "NO_ANSWER")
                return "-ERR NO_ANSWER\n"
            if not channel.ended:
                yield _ENDED, channel
            return f"-ERR {channel.facts.hangup_cause}\n"
        # The user/ endpoint originated the channel itself (the run above); once it returns the
        # answered channel, the outer originate runs api_on_originate again, at once: a second
        # task in the group for `sched_hangup +N U` (transcript 15: two ADD_SCHEDULE, the second
        # at the answer, one second later in Task-Runtime). The scheduler's passes follow the
        # add, so they come a few ms before a key pressed whole seconds after the answer, and a
        # `sched_del` sent on that key is swept half a second later, as on the real switch.
        if channel.alive:
            for command in on_originate:
                yield _API, command
        yield _SLEEP, STEP
        if not channel.alive:
            return f"-ERR {channel.facts.hangup_cause}\n"
        self._after_answer(channel, variables, args[1:])
        return f"+OK {call_uuid}\n"

    async def _until_answered(self, channel: Channel, ring_limit: float) -> None:
        """Wait until the channel is answered or hung up, or until `ring_limit` (simulated
        epoch seconds): one future and one of the clock's timers, no task per originate."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        channel.answer_waiter = functools.partial(_resolve, waiter)
        handle = self.clock.call_later(
            max(0.0, ring_limit - self.clock.now()), functools.partial(_resolve, waiter)
        )
        try:
            await waiter
        finally:
            handle.cancel()
            channel.answer_waiter = None

    def _dial_target(self, target: str) -> tuple[str, str, Any, str | None] | str:
        """(number, domain, directory, cause the new channel is hung up with at once) for a
        dial string, or the originate's `-ERR` answer without a channel: `user/<ext>[@domain]`
        (the directory), `loopback/<n>/confguard_callee[/XML]` and, with mod_sofia,
        `sofia/gateway/<gw>/<n>` (a callee that answers). As on the real switch: an endpoint
        whose module is not loaded is CHAN_NOT_IMPLEMENTED at once, no channel; a loopback call
        into another context gets a channel that hangs up NO_ROUTE_DESTINATION (this
        simulator's dialplan has no callee there)."""
        endpoint, _, rest = target.partition("/")
        if endpoint not in self._endpoint_names():
            return "-ERR CHAN_NOT_IMPLEMENTED\n"
        if endpoint == "user":
            extension, _, domain = rest.partition("@")
            return extension, domain or self.config.domain, self.config.users, None
        if endpoint == "loopback":
            number, _, context = rest.partition("/")
            context = context.split("/", 1)[0] or "default"
            if not number:
                return "-ERR INVALID_URL\n"
            refused = None if context == CALLEE_CONTEXT else "NO_ROUTE_DESTINATION"
            return number, self.config.domain, {number: DIRECT_CALLEE}, refused
        if endpoint == "sofia" and rest.startswith("gateway/"):
            gateway, sep, number = rest[len("gateway/") :].partition("/")
            if not sep or not number:
                return "-ERR INVALID_URL\n"
            gateways = self.config.gateways or {}
            if gateway not in gateways:
                return "-ERR INVALID_GATEWAY\n"
            if not gateways[gateway]:
                return "-ERR GATEWAY_DOWN\n"
            return number, self.config.domain, {number: DIRECT_CALLEE}, None
        return "-ERR CHAN_NOT_IMPLEMENTED\n"  # an endpoint the simulator does not model

    def modules(self) -> tuple[str, ...]:
        return MODULES if self.config.modules is None else self.config.modules

    def endpoints(self) -> list[tuple[str, str]]:
        """(endpoint, module) of every loaded endpoint interface, by name."""
        loaded = self.modules()
        return sorted(
            (name, module)
            for module, names in ENDPOINTS.items()
            if module in loaded
            for name in names
        )

    def _endpoint_names(self) -> frozenset[str]:
        """The loaded endpoints' names, kept until the modules change (`config.modules`)."""
        loaded = self.modules()
        if loaded != self._endpoints_for:
            self._endpoints_for = loaded
            self._endpoints_named = frozenset(name for name, _ in self.endpoints())
        return self._endpoints_named

    def _new_channel(
        self,
        call_uuid: str,
        extension: str,
        domain: str,
        spec: CalleeSpec,
        variables: dict[str, str],
    ) -> Channel:
        now = self.clock.now()
        # Named like the recorded originated leg (transcripts: every call is this name).
        name = "loopback/sim_callee-a"
        facts = ChannelFacts(
            uuid=call_uuid,
            name=name,
            created=now,
            presence_id=f"{extension}@{domain}",
            destination_number=extension,
            profile_created=now,
        )
        if "origination_caller_id_number" in variables:
            facts.caller_id_number = variables["origination_caller_id_number"]
            facts.orig_caller_id_number = facts.caller_id_number
            facts.ani = facts.caller_id_number
        if "origination_caller_id_name" in variables:
            facts.caller_id_name = variables["origination_caller_id_name"]
        channel = Channel(facts, extension, spec, self._next_session_id)
        self._next_session_id += 1
        pairs = [
            ("direction", "outbound"),
            ("is_outbound", "true"),
            ("session_id", str(channel.session_id)),
            ("read_codec", "L16"),
            ("read_rate", "8000"),
            ("write_codec", "L16"),
            ("write_rate", "8000"),
            ("channel_name", name),
            ("uuid", call_uuid),
            ("call_uuid", call_uuid),
        ]
        if "origination_uuid" in variables:
            pairs.append(("origination_uuid", call_uuid))
        pairs += [item for item in variables.items() if item[0] != "origination_uuid"]
        pairs += [
            ("dialed_user", extension),
            ("dialed_domain", domain),
            ("presence_id", f"{extension}@{domain}"),
            ("originate_early_media", _early_media(variables)),
            ("originate_endpoint", "loopback"),
        ]
        _set_vars(facts, pairs)
        self.channels[call_uuid] = channel
        self.sessions_since_startup += 1
        self.session_peak = max(self.session_peak, len(self.channels))
        return channel

    def _ring(self, channel: Channel) -> None:
        facts = channel.facts
        facts.call_state = "RINGING"
        facts.progress = self.clock.now()
        self.publish(self.events.channel_progress(facts))

    def _answer(self, channel: Channel) -> None:
        if not channel.alive or channel.answered:
            return
        facts = channel.facts
        channel.answered = True
        facts.answered = self.clock.now()
        facts.answer_state = "answered"
        facts.state = "CS_CONSUME_MEDIA"
        facts.call_state = "DOWN"
        self.publish(self.events.channel_answer(facts))
        channel.answered_or_gone()
        # execute_on_answer / api_on_answer run inside the switch at this moment. (Most calls
        # have none: one search of the names joined says so, not a look at each.)
        variables = facts.variables
        hooks: list[tuple[str, str]] = []
        if "_on_answer" in "\n".join(variables):
            hooks = [
                (name, value)
                for name, value in variables.items()
                if value and name.startswith(("api_on_answer", "execute_on_answer"))
            ]
        for name, value in hooks:
            if name.startswith("api_on_answer"):
                self._spawn(self.api(value))
            else:
                self._execute_app(channel, value)
        for digit, at in channel.spec.key_presses():
            self._later(channel, at + STEP, functools.partial(self._press, channel, digit))
        if channel.spec.hangup_after is not None:
            cause = channel.spec.hangup_cause
            self._later(channel, channel.spec.hangup_after, lambda: self.hangup(channel, cause))

    def _after_answer(self, channel: Channel, variables: dict[str, str], app: list[str]) -> None:
        """The originate succeeded: caller ids flip, variables are set again, the app runs."""
        facts = channel.facts
        facts.flip_caller_id()
        facts.state = "CS_EXECUTE"
        facts.call_state = "ACTIVE"
        facts.hit_dialplan = True
        pairs = [
            ("endpoint_disposition", "ANSWER"),
            ("user_context", "default"),
            ("effective_caller_id_name", f"Extension {channel.extension}"),
            ("effective_caller_id_number", channel.extension),
        ]
        if "origination_uuid" in variables:
            pairs.append(("origination_uuid", channel.uuid))
        pairs += [item for item in variables.items() if item[0] != "origination_uuid"]
        pairs += [
            ("originate_early_media", _early_media(variables)),
            ("originate_endpoint", "user"),
        ]
        _set_vars(facts, pairs)

        def flipped() -> None:
            _set_vars(
                facts,
                (
                    ("pre_transfer_caller_id_number", "0000000000"),
                    ("channel_cid_flipped", "yes"),
                    ("call_uuid", channel.uuid),
                ),
            )

        first = app[0] if app else "&park()"
        dialplan = app[1] if len(app) > 1 else "XML"
        context = app[2] if len(app) > 2 else "default"
        if not first.startswith("&") and dialplan == "inline":
            # The originate transfers the answered channel to its extension: the apps run
            # with a bl_xfer caller profile, dialplan inline, whose variables come before the
            # caller id flip's (transcript 18).
            self._transfer(channel, [_unquote(first), dialplan, context], before_app=flipped)
            return
        flipped()
        if first.startswith("&"):
            name, _, rest = first[1:].partition("(")
            self._start_app(channel, name, rest.rstrip(")") or None)
        else:
            self._route(channel, first, dialplan, context)

    def _press(self, channel: Channel, digit: str) -> None:
        if not channel.alive:
            return
        channel.digits_dialed.append(digit)
        self.publish(self.events.dtmf(channel.facts, digit))
        if channel.collector is not None:
            channel.collector.digit(digit)
        elif channel.application is None:
            channel.queued_dtmf.append(digit)

    # -- applications ------------------------------------------------------------------------

    def _start_app(self, channel: Channel, name: str, data: str | None) -> None:
        """Run a dialplan application on the channel (park, conference, playback, ...)."""
        channel.application = name
        channel.application_data = data
        if name in _DTMF_READERS:
            channel.queued_dtmf.clear()  # it reads (and drops) the keys that waited
        # Application-UUID is only ever seen in the app's two events: none drawn for nobody.
        channel.application_uuid = new_uuid() if self._wants("CHANNEL_EXECUTE") else ""
        channel.last_app, channel.last_arg = name, data
        # As switch_core_session_exec: the name, the arguments (none clears the previous
        # app's: park after play_and_get_digits, transcript 18), no response; the event; the
        # name set again (so it follows the arguments from then on).
        facts = channel.facts
        facts.set_var("current_application", name)
        if data:
            facts.set_var("current_application_data", data)
        else:
            facts.variables.pop("current_application_data", None)
        facts.variables.pop("current_application_response", None)
        self.publish(self.events.channel_execute(facts, name, data, channel.application_uuid))
        facts.set_var("current_application", name)
        if name == "conference" and data:
            self._join_conference(channel, data)
        elif name == "hangup":
            self.hangup(channel, parse_cause(data, "NORMAL_CLEARING"))
        elif name == "play_and_get_digits":
            channel.collector = DigitCollector(self, channel, data or "")
            channel.collector.start()
        elif name == "sched_hangup":
            if self._app_sched_hangup(channel, data):
                self._app_done(channel)
        elif name == "sched_cancel":
            # mod_dptools: the group given, else the channel's own (its uuid).
            self.scheduler.delete((data or "").strip() or channel.uuid)
            self._app_done(channel)
        elif name == "transfer" and data:
            self._transfer(channel, data.split())
        elif name == "event":
            # mod_dptools' event: fire it with the channel's data, then the next app at once.
            self.publish(self.events.app_event(facts, _expand_variables(data or "", facts)))
            self._app_done(channel)
        elif name != "park" and channel.inline_apps:
            # Anything else the simulator does not model ends at once; the next app runs.
            self._app_done(channel)

    def _app_sched_hangup(self, channel: Channel, data: str | None) -> bool:
        """The `sched_hangup [+]<time> [<cause>]` dialplan app (mod_dptools): a hangup task of
        the channel's group, as the api's; `+0` hangs up at once. Whether the channel lives on."""
        args = (data or "").split()
        if not args:
            return True
        cause = parse_cause(args[1] if len(args) > 1 else None)
        now = int(self.clock.now())
        seconds = _atoi(args[0][1:])  # mod_dptools reads the seconds past the first character
        runtime = now + seconds if args[0].startswith("+") else _atoi(args[0])
        if seconds == 0:
            self.hangup(channel, cause)
            return False
        call_uuid = channel.uuid

        def fire(task: Task) -> None:
            target = self.live_channel(call_uuid)
            if target is not None:
                self.hangup(target, cause)

        self.scheduler.add(
            "switch_ivr_schedule_hangup", call_uuid, runtime, fire, channel_bound=True
        )
        return True

    def _run_inline(self, channel: Channel, target: str) -> None:
        """Run an inline dialplan (`app:args,app:args`, or `m:X:app:args Xapp:args` with the
        separator X, mod_dptools' inline_dialplan_hunt) on the channel, app after app."""
        channel.inline_apps = inline_apps(target)
        self._next_inline(channel)

    def _next_inline(self, channel: Channel) -> None:
        if not channel.alive:
            return
        if not channel.inline_apps:
            # Out of dialplan: the channel hangs up.
            self.hangup(channel, "NORMAL_CLEARING")
            return
        name, data = channel.inline_apps.pop(0)
        self._start_app(channel, name, data)

    def _app_done(self, channel: Channel) -> None:
        """The running application ended by itself: its completion, then the next inline app
        at once (transcript 18: park's CHANNEL_EXECUTE in the same millisecond)."""
        channel.collector = None
        self._complete_app(channel)
        self._next_inline(channel)

    def _complete_app(self, channel: Channel) -> None:
        if channel.application is None:
            return
        name, data = channel.application, channel.application_data
        channel.application = None
        # The response is the channel's last one: park interrupted by a broadcast's playback
        # completes with the playback's (transcript 13: FILE PLAYED / FILE NOT FOUND).
        response = channel.facts.variables.get("current_application_response", "_none_")
        app_uuid = channel.application_uuid  # "" when nobody took the CHANNEL_EXECUTE
        if not app_uuid and self._wants("CHANNEL_EXECUTE_COMPLETE"):
            app_uuid = channel.application_uuid = new_uuid()
        self.publish(
            self.events.channel_execute_complete(channel.facts, name, data, app_uuid, response)
        )

    def _execute_app(self, channel: Channel, spec: str) -> None:
        """`execute_on_answer=app args` (playback is the only one that does something)."""
        name, _, data = spec.strip().partition(" ")
        app_uuid = new_uuid()
        self.publish(self.events.channel_execute(channel.facts, name, data or None, app_uuid))
        response = "FILE PLAYED" if name == "playback" else "_none_"

        def complete() -> None:
            if channel.alive:
                self.publish(
                    self.events.channel_execute_complete(
                        channel.facts, name, data or None, app_uuid, response
                    )
                )

        self._later(channel, STEP, complete)

    def _route(self, channel: Channel, exten: str, dialplan: str, context: str) -> bool:
        """Run the dialplan: only extension 7001 in `default` exists; its actions
        (`SimConfig.join_actions`: answer, conference test1@default, hangup) run app after app
        (`answer` does nothing to an answered call; the conference holds the call)."""
        room_exten, room_context, _ = CONFERENCE_EXTENSION
        if exten == room_exten and context == room_context and dialplan.upper() == "XML":
            channel.inline_apps = [(name, data or None) for name, data in self.config.join_actions]
            self._next_inline(channel)
            return True
        if context == room_context and dialplan.upper() == "XML":
            for expression, actions in self.config.extensions:
                found = re.search(expression, exten)
                if found is None:
                    continue
                channel.inline_apps = [
                    (name, _substitute_groups(data, found) or None) for name, data in actions
                ]
                self._next_inline(channel)
                return True
        self.hangup(channel, "NO_ROUTE_DESTINATION")
        return False

    # -- hangup ------------------------------------------------------------------------------

    def hangup(
        self,
        channel: Channel,
        cause: str,
        *,
        fire_hangup_event: bool = True,
        delay: float = STEP,
    ) -> None:
        """Hang up now: CHANNEL_HANGUP at once, the rest (member leaves, app completes,
        CHANNEL_HANGUP_COMPLETE, the channel's tasks removed) `delay` later."""
        if channel.hung_up:
            return
        facts = channel.facts
        # The timers first: a coasting play_and_get_digits catches up to now on a live channel.
        self._cancel_timers(channel)
        channel.hung_up = True
        facts.hangup_cause = cause
        facts.answer_state = "hangup"
        facts.state_number = 10
        facts.hungup = self.clock.now()
        if fire_hangup_event:
            self.publish(self.events.channel_hangup(facts))
        channel.answered_or_gone()
        if delay > 0:
            self.clock.call_later(delay, lambda: self._destroy(channel))
        else:
            self._destroy(channel)

    def _destroy(self, channel: Channel) -> None:
        if channel.destroyed:
            return
        channel.destroyed = True
        facts = channel.facts
        if channel.conference is not None:
            self._leave_conference(channel)
        collector, channel.collector = channel.collector, None
        if collector is not None:
            # play_and_get_digits' loop ends on a channel that is no longer ready and, as
            # after its spent tries, transfers to its failure target: on a dead channel only
            # the caller profile changes (transcript 19: the timer fired while it waited).
            collector.interrupt()
            if collector.failure_target:
                self._new_profile(channel, collector.failure_target, turn=True)
        self._complete_app(channel)
        now = self.clock.now()
        facts.state = "CS_REPORTING"
        facts.state_number = None
        facts.call_state = "HANGUP"
        cause = facts.hangup_cause or "NORMAL_CLEARING"
        created, answered = facts.created, facts.answered
        duration = max(0.0, now - created)
        billsec = max(0.0, now - answered) if answered else 0.0
        digits = "".join(channel.digits_dialed) or "none"

        def us(value: float) -> str:
            return str(int(value * 1e6)) if value else "0"

        def whole(value: float) -> str:
            return str(int(value)) if value else "0"

        caller_name = facts.caller_id_name or ""
        hangup_vars = (
            ("hangup_cause", cause),
            ("hangup_cause_q850", str(CAUSE_CODES.get(cause, 16))),
            ("digits_dialed", digits),
            ("start_stamp", stamp_local(created)),
            ("profile_start_stamp", stamp_local(facts.profile_created or created)),
            ("answer_stamp", stamp_local(answered) if answered else ""),
            ("progress_stamp", stamp_local(facts.progress) if facts.progress else ""),
            ("end_stamp", stamp_local(now)),
            ("start_epoch", whole(created)),
            ("start_uepoch", us(created)),
            ("profile_start_epoch", whole(facts.profile_created or created)),
            ("profile_start_uepoch", us(facts.profile_created or created)),
            ("answer_epoch", whole(answered)),
            ("answer_uepoch", us(answered)),
            ("bridge_epoch", "0"),
            ("bridge_uepoch", "0"),
            ("last_hold_epoch", "0"),
            ("last_hold_uepoch", "0"),
            ("hold_accum_seconds", "0"),
            ("hold_accum_usec", "0"),
            ("hold_accum_ms", "0"),
            ("resurrect_epoch", "0"),
            ("resurrect_uepoch", "0"),
            ("progress_epoch", whole(facts.progress)),
            ("progress_uepoch", us(facts.progress)),
            ("progress_media_epoch", "0"),
            ("progress_media_uepoch", "0"),
            ("end_epoch", whole(now)),
            ("end_uepoch", us(now)),
            ("last_app", channel.last_app or ""),
            ("last_arg", channel.last_arg or ""),
            ("caller_id", f'"{caller_name}" <{facts.caller_id_number}>'),
            ("duration", str(round(duration))),
            ("billsec", str(round(billsec))),
            ("progresssec", "0"),
            ("answersec", "0"),
            ("waitsec", "0"),
            ("progress_mediasec", "0"),
            ("flow_billsec", str(round(billsec))),
            ("mduration", str(int(duration * 1000))),
            ("billmsec", str(int(billsec * 1000))),
            ("progressmsec", "0"),
            ("answermsec", "0"),
            ("waitmsec", "0"),
            ("progress_mediamsec", "0"),
            ("flow_billmsec", str(int(billsec * 1000))),
            ("uduration", str(int(duration * 1e6))),
            ("billusec", str(int(billsec * 1e6))),
            ("progressusec", "0"),
            ("answerusec", "0"),
            ("waitusec", "0"),
            ("progress_mediausec", "0"),
            ("flow_billusec", str(int(billsec * 1e6))),
            ("is_loopback", "1"),
        )
        _set_vars(facts, [pair for pair in hangup_vars if pair[1] != ""])
        self.publish(self.events.channel_hangup_complete(facts))
        self.channels.pop(channel.uuid, None)
        self.scheduler.delete_group(channel.uuid, channel_bound_only=True)
        channel.set_ended()

    # -- conferences -------------------------------------------------------------------------

    def _member(self, channel: Channel, *, floor: bool = False) -> MemberFacts:
        flags = channel.member_flags
        return MemberFacts(
            channel.member_id,
            floor=floor,
            hear="deaf" not in flags,
            speak="mute" not in flags,
            moderator="moderator" in flags,
        )

    def _join_conference(self, channel: Channel, target: str) -> None:
        # As mod_conference's app: `+flags{a|b}` (or a,b) is cut off first, then room@profile.
        target, _, flag_text = target.partition("+flags{")
        channel.member_flags = frozenset(
            word.strip().lower()
            for word in flag_text.split("}", 1)[0].replace(",", "|").split("|")
            if word.strip()
        )
        room, _, profile = target.partition("@")
        conference = self.conferences.get(room)
        if conference is None:
            conference = Conference(
                ConferenceFacts(room, new_uuid(), self.config.domain,
                                profile=profile or "default"),
                self.clock.now(),
            )  # fmt: skip
            self.conferences[room] = conference
            self.publish(self.events.conference("conference-create", conference.facts))
        channel.conference = conference
        channel.joined_at = self.clock.now()
        channel.member_id = self._next_member_id
        self._next_member_id += 1
        conference.members.append(channel)
        conference.facts.size = len(conference.members)
        conf_uuid = conference.facts.uuid
        _set_vars(channel.facts, (
            ("conference_name", room),
            ("app_session_uuid", conf_uuid),
            ("read_codec", "L16"),
            ("read_rate", "8000"),
            ("conference_member_id", str(channel.member_id)),
            ("conference_moderator", "true" if "moderator" in channel.member_flags else "false"),
            ("conference_ghost", "false"),
            ("conference_uuid", conf_uuid),
            ("conference_call_key", f"conference_{room}_{conference.facts.domain}_XML"),
        ))  # fmt: skip
        self.publish(
            self.events.conference(
                "add-member", conference.facts, member=self._member(channel),
                ch=channel.facts,
            )
        )  # fmt: skip
        if conference.floor is None:
            conference.floor = channel

            def take_floor() -> None:
                if conference.floor is channel and channel.alive:
                    self.publish(
                        self.events.floor_change(
                            conference.facts,
                            member=self._member(channel, floor=True),
                            ch=channel.facts,
                        )
                    )

            self._later(channel, STEP, take_floor)

    def _leave_conference(self, channel: Channel) -> None:
        conference = channel.conference
        if conference is None:
            return
        channel.conference = None
        channel.facts.variables.pop("conference_call_key", None)
        channel.facts.set_var("read_codec", "L16")
        channel.facts.set_var("read_rate", "8000")
        if channel in conference.members:
            conference.members.remove(channel)
        if conference.floor is channel:
            conference.floor = None
            self.publish(self.events.floor_change(conference.facts))
            if conference.members:
                # The conference thread gives the floor to the oldest member left on its next
                # pass, 20 ms on, even to one that is hanging up meanwhile (transcript 18).
                heir = conference.members[0]

                def pass_floor() -> None:
                    if conference.floor is None and heir in conference.members:
                        conference.floor = heir
                        self.publish(
                            self.events.floor_change(
                                conference.facts,
                                member=self._member(heir, floor=True),
                                ch=heir.facts,
                            )
                        )

                self.clock.call_later(STEP, pass_floor)
        conference.facts.size = len(conference.members)
        self.publish(
            self.events.conference(
                "del-member", conference.facts, member=self._member(channel),
                ch=channel.facts,
            )
        )  # fmt: skip
        if "endconf" in channel.member_flags and conference.members:
            # mod_conference: an endconf member's leaving ends the conference; its thread hangs
            # up every member left (NORMAL_CLEARING), then the room is destroyed.
            for other in list(conference.members):
                self.hangup(other, "NORMAL_CLEARING")
        if not conference.members:
            self.conferences.pop(conference.facts.name, None)

            def destroy() -> None:
                self.publish(self.events.conference("conference-destroy", conference.facts))

            self.clock.call_later(STEP, destroy)

    # -- simple commands ---------------------------------------------------------------------

    async def _api_status(self, arg: str) -> str:
        from confguard.sim.events import uptime_text

        uptime = self.clock.monotonic() - self.started_at
        live = len(self.channels)
        return (
            f"UP {uptime_text(uptime)}\n"
            f"FreeSWITCH (Version {VERSION_SHORT}) is ready\n"
            f"{self.sessions_since_startup} session(s) since startup\n"
            f"{live} session(s) - peak {self.session_peak}, last 5min {self.session_peak} \n"
            "0 session(s) per Sec out of max 30, peak 0, last 5min 0 \n"
            "200 session(s) max\n"
            "min idle cpu 0.00/100.00\n"
            "Current Stack Size/Max 240K/8192K\n"
        )

    async def _api_version(self, arg: str) -> str:
        return VERSION_LINE + "\n" if arg != "short" else "1.11.3-dev\n"

    async def _api_hostname(self, arg: str) -> str:
        return self.config.hostname

    async def _api_module_exists(self, arg: str) -> str:
        return "true" if arg in self.modules() else "false"

    async def _api_sofia(self, arg: str) -> str:
        """`sofia status gateway <name>` (mod_sofia.c's cmd_status); mod_sofia not loaded:
        the real switch's `-ERR sofia Command not found!`."""
        if "mod_sofia" not in self.modules():
            return "-ERR sofia Command not found!\n"
        words = arg.split()
        if words[:2] != ["status", "gateway"] or len(words) != 3:
            return "-ERR the simulator answers only `sofia status gateway <name>`\n"
        name = words[2]
        gateways = self.config.gateways or {}
        if name not in gateways:
            return "Invalid Gateway!\n"
        up = gateways[name]
        rows = [
            ("Name    ", name), ("Profile ", "external"), ("Scheme  ", "Digest"),
            ("Realm   ", name), ("Username", "confguard"), ("Password", "yes"),
            ("From    ", f"<sip:confguard@{name}>"), ("Contact ", f"<sip:gw+{name}@127.0.0.1>"),
            ("Exten   ", "confguard"), ("To      ", f"sip:confguard@{name}"),
            ("Proxy   ", f"sip:{name}"), ("Context ", "public"), ("Expires ", "3600"),
            ("Freq    ", "3600"), ("Ping    ", "0"), ("PingFreq", "0"), ("PingTime", "0.00"),
            ("PingState", "0/0/0"), ("State   ", "REGED" if up else "FAIL_WAIT"),
            ("Status  ", "UP" if up else "DOWN"), ("Uptime  ", "1s" if up else "0s"),
            ("CallsIN ", "0"), ("CallsOUT", "0"), ("FailedCallsIN", "0"),
            ("FailedCallsOUT", "0"),
        ]  # fmt: skip
        body = "".join(f"{key}\t{value}\n" for key, value in rows)
        return f"{SOFIA_LINE}\n{body}{SOFIA_LINE}\n"

    async def _api_create_uuid(self, arg: str) -> str:
        return new_uuid()

    async def _api_file_exists(self, arg: str) -> str:
        """`file_exists <path>`: `true` / `false` for a path on this host (like uuid_exists)."""
        path = arg.strip()
        return "true" if path and os.path.exists(path) else "false"

    async def _api_xml_locate(self, arg: str) -> str:
        return xml_locate(self.xml_registry, arg)

    async def _api_echo(self, arg: str) -> str:
        return arg

    async def _api_global_getvar(self, arg: str) -> str:
        return self.global_vars.get(arg, "")

    async def _api_global_setvar(self, arg: str) -> str:
        name, sep, value = arg.partition("=")
        if not sep:
            return "-USAGE: <var>=<value>\n"
        self.global_vars[name.strip()] = value
        return "+OK\n"

    async def _api_fsctl(self, arg: str) -> str:
        words = arg.split()
        if words[:1] == ["shutdown"]:
            self._spawn(self.shutdown())
            return "+OK\n"
        return "-ERR INVALID COMMAND\n"

    # -- uuid_* ------------------------------------------------------------------------------

    async def _api_uuid_exists(self, arg: str) -> str:
        return "true" if self.live_channel(arg.strip()) is not None else "false"

    async def _api_uuid_kill(self, arg: str) -> str:
        args = arg.split()
        if not args:
            return "-USAGE: <uuid> [cause]\n"
        channel = self.live_channel(args[0])
        if channel is None:
            return NO_SUCH_CHANNEL
        cause = parse_cause(args[1] if len(args) > 1 else None, "NORMAL_CLEARING")
        self.clock.call_later(0.0002, lambda: self.hangup(channel, cause))
        return "+OK\n"

    async def _api_uuid_getvar(self, arg: str) -> str:
        args = arg.split()
        if len(args) < 2:
            return "-USAGE: <uuid> <var>\n"
        channel = self.live_channel(args[0])
        if channel is None:
            return NO_SUCH_CHANNEL
        return channel.facts.variables.get(args[1], "_undef_")

    async def _api_uuid_setvar(self, arg: str) -> str:
        parts = arg.split(" ", 2)
        if len(parts) < 2:
            return "-USAGE: <uuid> <var> [value]\n"
        channel = self.live_channel(parts[0])
        if channel is None:
            return NO_SUCH_CHANNEL
        name = parts[1]
        if len(parts) > 2:
            channel.facts.set_var(name, parts[2])
        else:
            channel.facts.variables.pop(name, None)
        return "+OK\n"

    async def _api_uuid_dump(self, arg: str) -> str:
        args = arg.split()
        if not args:
            return "-USAGE: <uuid> [format]\n"
        channel = self.live_channel(args[0])
        if channel is None:
            return NO_SUCH_CHANNEL
        event = self.events.channel_event("CHANNEL_DATA", channel.facts)
        # The event as FreeSWITCH serialises it (transcript 14): compact json, or the plain
        # form with url-encoded values and the closing blank line.
        if len(args) > 1 and args[1] == "json":
            return wire.serialize_json(event.headers, None).decode("utf-8", "surrogateescape")
        return wire.serialize_plain(event.headers, None).decode("utf-8", "surrogateescape")

    async def _api_uuid_transfer(self, arg: str) -> str:
        args = split_args(arg)
        if len(args) < 2:
            return "-USAGE: <uuid> [-bleg|-both] <dest-exten> [<dialplan>] [<context>]\n"
        channel = self.live_channel(args[0])
        if channel is None:
            return NO_SUCH_CHANNEL
        rest = args[1:]
        if rest[0] in ("-bleg", "-both"):
            rest = rest[1:]
        if not rest:
            return "-USAGE: <uuid> [-bleg|-both] <dest-exten> [<dialplan>] [<context>]\n"
        self._later(channel, STEP, lambda: self._transfer(channel, rest))
        return "+OK\n"

    def _transfer(
        self,
        channel: Channel,
        target: list[str],
        before_app: Callable[[], None] | None = None,
    ) -> None:
        if not channel.alive:
            return
        exten = target[0]
        dialplan = target[1] if len(target) > 1 else "XML"
        context = target[2] if len(target) > 2 else "default"
        facts = channel.facts
        if channel.conference is not None:
            self._leave_conference(channel)
        previous_destination, previous_rdnis = facts.destination_number, facts.rdnis
        # uuid_transfer turns the outbound leg's logical direction around (transcripts 05,
        # 06); the originate's own transfer to its extension does not (transcript 18).
        self._new_profile(channel, target, turn=before_app is None)
        # The parked app completes after the new caller profile is in place (transcript 06).
        facts.state_number = 2
        channel.inline_apps = []
        if channel.collector is not None:
            channel.collector.interrupt()
            channel.collector = None
        self._complete_app(channel)
        facts.state_number = None
        if before_app is not None:
            before_app()
        facts.set_var("call_uuid", channel.uuid)
        if dialplan == "inline":
            # The parked app's completion shows the new profile; then the inline app runs
            # with the destination put back and no RDNIS, and only `show channels` lists the
            # new destination (transcripts 05, 06).
            facts.destination_number, facts.rdnis = previous_destination, previous_rdnis
            channel.listed_destination = exten
            self._run_inline(channel, exten)
        else:
            self._route(channel, exten, dialplan, context)

    def _new_profile(self, channel: Channel, target: list[str], *, turn: bool) -> None:
        """The caller profile a transfer to `target` (`<ext> [<dialplan> [<context>]]`) gives
        the channel, as switch_ivr_session_transfer: destination, RDNIS (the old destination),
        dialplan, context, transfer source and history, `max_forwards` one less (70 the first
        time: transcript 18); `turn` makes the logical direction inbound."""
        exten = target[0]
        dialplan = target[1] if len(target) > 1 else "XML"
        context = target[2] if len(target) > 2 else "default"
        facts = channel.facts
        now = self.clock.now()
        source = f"{int(now)}:{new_uuid()}:bl_xfer:{exten}/{context}/{dialplan}"
        facts.rdnis = facts.destination_number
        facts.destination_number = exten
        channel.listed_destination = None
        facts.dialplan = dialplan
        facts.context = context
        if turn:
            facts.logical_direction = "inbound"
        facts.transfer_source = source
        facts.profile_index += 1
        facts.profile_created = now
        forwards = facts.variables.get("max_forwards", "")
        facts.set_var("max_forwards", str(int(forwards) - 1) if forwards.isdigit() else "70")
        history = facts.variables.get("transfer_history")
        if history is None:
            facts.set_var("transfer_history", source)
        else:
            # Each transfer pushes onto the history, which stays where it was (an array
            # header: transcript 18's second transfer).
            previous = history.removeprefix(wire.ARRAY_PREFIX)
            facts.variables["transfer_history"] = f"{wire.ARRAY_PREFIX}{previous}|:{source}"
        facts.set_var("transfer_source", source)

    async def _api_uuid_broadcast(self, arg: str) -> str:
        args = arg.split()
        if len(args) < 2:
            return BROADCAST_USAGE
        channel = self.live_channel(args[0])
        if channel is None:
            return "-ERR invalid uuid\n"
        self._later(channel, BROADCAST_DELAY, lambda: self._broadcast(channel, args[1]))
        return "+OK Message sent\n"

    def _broadcast(self, channel: Channel, path: str) -> None:
        """A broadcast reaching the channel (uuid_broadcast; a fired sched_broadcast is assumed
        to take the same path, no recording shows one fire): the application runs on top of
        the parked one, as transcript 13 shows it. CHANNEL_EXECUTE
        with current_loop / total_loops set; the prompt's length later CHANNEL_EXECUTE_COMPLETE
        with the playback_* variables and current_application_response (FILE PLAYED, or FILE
        NOT FOUND at once); then current_loop / total_loops are gone. The parked application
        stays the channel's (its completion carries the last response)."""
        if not channel.alive:
            return
        app, sep, data = path.partition("::")
        if not sep:
            app, data = "playback", path
        facts = channel.facts
        app_uuid = new_uuid()
        facts.variables.pop("current_application_response", None)
        facts.set_var("current_loop", "1")
        facts.set_var("total_loops", "1")
        facts.set_var("current_application", app)
        if data:
            facts.set_var("current_application_data", data)
        channel.last_app, channel.last_arg = app, data or None
        self.publish(self.events.channel_execute(facts, app, data or None, app_uuid))
        if app == "playback":
            length_ms = prompt_length_ms(data)
            response = "FILE NOT FOUND" if length_ms is None else "FILE PLAYED"
        else:
            length_ms, response = None, "_none_"

        def complete() -> None:
            if data:
                facts.set_var("current_application_data", data)
            facts.set_var("current_application", app)
            if length_ms is not None:
                samples = length_ms * SAMPLE_RATE // 1000
                facts.set_var("playback_last_offset_pos", str(samples))
                facts.set_var("playback_seconds", str(length_ms // 1000))
                facts.set_var("playback_ms", str(length_ms))
                facts.set_var("playback_samples", str(samples))
            facts.set_var("current_application_response", response)
            self.publish(
                self.events.channel_execute_complete(facts, app, data or None, app_uuid, response)
            )
            facts.variables.pop("current_loop", None)
            facts.variables.pop("total_loops", None)

        self._later(channel, (length_ms or 0) / 1000, complete)

    # -- scheduler commands ------------------------------------------------------------------

    def _runtime(self, when: str) -> int:
        now = int(self.clock.now())
        if when.startswith("+") or when.startswith("@"):
            return now + _atoi(when[1:])
        return _atoi(when)

    async def _api_sched_hangup(self, arg: str) -> str:
        args = arg.split()
        if len(args) < 2:
            return "-USAGE: [+]<time> <uuid> [<cause>]\n"
        when, call_uuid = args[0], args[1]
        channel = self.live_channel(call_uuid)
        if channel is None:
            return NO_SUCH_CHANNEL
        cause = parse_cause(args[2] if len(args) > 2 else None)
        now = int(self.clock.now())
        interval: int | None = None
        if when.startswith("+"):
            runtime = now + _atoi(when[1:])
        else:
            # Quirk (transcripts 11-quirk-no-plus-*): a bare small number hangs up at once,
            # a bare larger one makes a task that repeats every N seconds.
            seconds = _atoi(when)
            if seconds <= 30:
                runtime = now
            else:
                runtime, interval = now + seconds, seconds
        if runtime <= now:
            self.clock.call_later(0.0002, lambda: self.hangup(channel, cause))
            return "+OK\n"

        def fire(task: Task) -> None:
            target = self.live_channel(call_uuid)
            if target is not None:
                self.hangup(target, cause)

        self.scheduler.add(
            "switch_ivr_schedule_hangup", call_uuid, runtime, fire,
            interval=interval, channel_bound=True,
        )  # fmt: skip
        return "+OK\n"

    async def _api_sched_del(self, arg: str) -> str:
        target = arg.strip()
        if not target:
            return "+OK Deleted: 0\n"
        return f"+OK Deleted: {self.scheduler.delete(target)}\n"

    async def _api_sched_api(self, arg: str) -> str:
        parts = arg.split(" ", 2)
        if len(parts) < 3 or not parts[2].strip():
            return SCHED_API_USAGE
        when, group, command = parts[0], parts[1], parts[2].strip()
        if command.endswith("&"):
            command = command[:-1].strip()
        interval = _atoi(when[1:]) if when.startswith("@") else None
        runtime = self._runtime(when)

        def fire(task: Task) -> None:
            self._spawn(self.api(command))

        task = self.scheduler.add("sched_api_function", group, runtime, fire, interval=interval)
        return f"+OK Added: {task.task_id}\n"

    async def _api_unsched_api(self, arg: str) -> str:
        target = arg.strip()
        if target.isdigit() and self.scheduler.delete_id(int(target)):
            return "+OK\n"
        return "-ERR No such id\n"

    async def _api_sched_transfer(self, arg: str) -> str:
        args = arg.split()
        if len(args) < 3:
            return "-USAGE: [+]<time> <uuid> <extension> [<dialplan>] [<context>]\n"
        when, call_uuid = args[0], args[1]
        if self.live_channel(call_uuid) is None:
            return NO_SUCH_CHANNEL
        target = args[2:]

        def fire(task: Task) -> None:
            channel = self.live_channel(call_uuid)
            if channel is not None:
                self._transfer(channel, target)

        self.scheduler.add(
            "switch_ivr_schedule_transfer", call_uuid, self._runtime(when), fire,
            channel_bound=True,
        )  # fmt: skip
        return "+OK\n"

    async def _api_sched_broadcast(self, arg: str) -> str:
        args = arg.split()
        if len(args) < 3:
            return "-USAGE: [+]<time> <uuid> <path> [aleg|bleg|both]\n"
        when, call_uuid, path = args[0], args[1], args[2]

        def fire(task: Task) -> None:
            channel = self.live_channel(call_uuid)
            if channel is not None:
                self._later(channel, BROADCAST_DELAY, lambda: self._broadcast(channel, path))

        self.scheduler.add(
            "switch_ivr_schedule_broadcast", call_uuid, self._runtime(when), fire,
            channel_bound=True,
        )  # fmt: skip
        return "+OK Message scheduled\n"

    # -- show --------------------------------------------------------------------------------

    async def _api_show(self, arg: str) -> str:
        words = arg.split()
        if not words:
            return "-USAGE: show <what>\n"
        what, rest = words[0], words[1:]
        as_json = rest[:2] == ["as", "json"]
        as_xml = rest[:2] == ["as", "xml"]
        if what == "tasks":
            header = ["task_id", "task_desc", "task_group", "task_runtime", "task_sql_manager",
                      "hostname"]  # fmt: skip
            rows = [
                [str(tid), desc, group, str(runtime), "0", self.config.hostname]
                for tid, desc, group, runtime in self.scheduler.mirror_rows()
            ]
            return _xml_table(header, rows) if as_xml else _table(header, rows, as_json)
        if what == "endpoint":
            rows = [["endpoint", name, module] for name, module in self.endpoints()]
            header = ["type", "name", "ikey"]
            return _xml_table(header, rows) if as_xml else _table(header, rows, as_json)
        if what in ("channels", "calls"):
            header = ["uuid", "direction", "created", "created_epoch", "name", "state",
                      "cid_name", "cid_num", "ip_addr", "dest", "application",
                      "application_data", "dialplan", "context", "read_codec", "read_rate",
                      "read_bit_rate", "write_codec", "write_rate", "write_bit_rate", "secure",
                      "hostname", "presence_id", "presence_data", "accountcode", "callstate",
                      "callee_name", "callee_num", "callee_direction", "call_uuid",
                      "sent_callee_name",
                      "sent_callee_num", "initial_cid_name", "initial_cid_num", "initial_ip_addr",
                      "initial_dest", "initial_dialplan", "initial_context"]  # fmt: skip
            rows = [self._channel_row(ch) for ch in self.channels.values() if not ch.destroyed]
            return _xml_table(header, rows) if as_xml else _table(header, rows, as_json)
        return "-ERR Invalid show command\n" if what else "-USAGE: show <what>\n"

    def _channel_row(self, channel: Channel) -> list[str]:
        """A `show channels` row as transcript 05 shows the originated leg (after the answer
        the caller ids are flipped and the callee direction is RECV)."""
        facts = channel.facts
        callee_direction = "RECV" if facts.variables.get("channel_cid_flipped") == "yes" else ""
        return [
            facts.uuid, facts.direction, stamp_local(facts.created), str(int(facts.created)),
            facts.name, facts.state, facts.caller_id_name or "", facts.caller_id_number, "",
            channel.listed_destination or facts.destination_number,
            channel.application or "", channel.application_data or "",
            facts.dialplan, facts.context, "L16", "8000", "128000", "L16", "8000", "128000", "",
            self.config.hostname, facts.presence_id, "", "", facts.call_state,
            facts.callee_id_name or "", facts.callee_id_number or "", callee_direction,
            facts.uuid, "", "", facts.variables.get("origination_caller_id_name", ""),
            facts.orig_caller_id_number or "", "", LOOPBACK_DESTINATION, "XML", "default",
        ]  # fmt: skip

    # -- conference command ------------------------------------------------------------------

    async def _api_conference(self, arg: str) -> str:
        words = arg.split()
        if not words:
            return "-ERR Conference command requires a conference name\n"
        if words[0] == "list":
            return self._conference_list_all()
        name, sub = words[0], words[1:]
        conference = self.conferences.get(name)
        if conference is None:
            return f"-ERR Conference {name} not found\n"
        if sub == ["list"]:
            return "".join(self._member_line(conference, m) for m in reversed(conference.members))
        if sub == ["list", "count"]:
            return str(len(conference.members))
        if sub[:1] == ["json_list"]:
            return self._conference_json(conference)
        if sub[:1] == ["xml_list"]:
            return self._conference_xml(conference)
        if sub[:1] == ["kick"] or sub[:1] == ["hup"]:
            return self._conference_kick(conference, sub[1:], sub_hup=sub[0] == "hup")
        return (
            f"-ERR Unknown conference command {' '.join(sub)}\n"
            if sub
            else (f"-ERR Conference {name} requires a command\n")
        )

    def _member_line(self, conference: Conference, member: Channel) -> str:
        # conference_list's order: hear, speak, (talking, hold, video), floor, moderator.
        has_floor = bool(conference.members) and member is conference.members[0]
        words = [
            word
            for word, on in (
                ("hear", "deaf" not in member.member_flags),
                ("speak", "mute" not in member.member_flags),
                ("floor", has_floor),
                ("moderator", "moderator" in member.member_flags),
            )
            if on
        ]
        flags = "|".join(words)
        return (
            f"{member.member_id};{member.facts.name};{member.uuid};"
            f"{member.facts.caller_id_name or ''};{member.facts.caller_id_number};"
            f"{flags};0;0;100\n"
        )

    def _conference_list_all(self) -> str:
        if not self.conferences:
            return "+OK No active conferences.\n"
        out: list[str] = []
        for conference in self.conferences.values():
            count = len(conference.members)
            noun = "member" if count == 1 else "members"
            out.append(
                f"+OK Conference {conference.facts.name} ({count} {noun} rate: 8000 flags: "
                "running|answered|enforce_min|dynamic|exit_sound|enter_sound|json_status)\n"
            )
            out.extend(self._member_line(conference, m) for m in reversed(conference.members))
        return "".join(out)

    def _conference_json(self, conference: Conference) -> str:
        members = [
            {
                "type": "caller",
                "id": member.member_id,
                "flags": {
                    "can_hear": "deaf" not in member.member_flags,
                    "can_see": True,
                    "can_speak": "mute" not in member.member_flags,
                    "hold": False,
                    "mute_detect": False,
                    "talking": False,
                    "has_video": False,
                    "video_bridge": False,
                    "has_floor": index == 0,
                    "is_moderator": "moderator" in member.member_flags,
                    "end_conference": "endconf" in member.member_flags,
                    "mandatory_member_end_conference": False,
                    "pass_digits": False,
                },
                "uuid": member.uuid,
                "caller_id_name": member.facts.caller_id_name or "",
                "caller_id_number": member.facts.caller_id_number,
                "join_time": int(self.clock.now() - member.joined_at),
                "last_talking": 0,
                "energy": 100,
                "volume_in": 0,
                "volume_out": 0,
                "output-volume": 0,
                "input-volume": 0,
            }
            for index, member in reversed(list(enumerate(conference.members)))
        ]
        document = [{
            "conference_name": conference.facts.name,
            "member_count": len(conference.members),
            "ghost_count": 0, "rate": 8000,
            "run_time": int(self.clock.now() - conference.created),
            "conference_uuid": conference.facts.uuid,
            "canvas_count": 0, "max_bw_in": 0, "force_bw_in": 0, "video_floor_packets": 0,
            "locked": False, "destruct": False, "wait_mod": False, "audio_always": False,
            "running": True, "answered": True, "enforce_min": True, "bridge_to": False,
            "dynamic": True, "exit_sound": True, "enter_sound": True, "recording": False,
            "video_bridge": False, "video_floor_only": False, "video_rfc4579": False,
            "variables": {}, "members": members,
        }]  # fmt: skip
        return cjson_format(document)

    def _conference_xml(self, conference: Conference) -> str:
        """`conference <name> xml_list` as transcript 06 shows it (newest member first)."""
        now = self.clock.now()
        facts = conference.facts
        out = [
            '<?xml version="1.0"?>',
            "<conferences>",
            f'  <conference name="{facts.name}" member-count="{len(conference.members)}" '
            f'ghost-count="0" rate="8000" uuid="{facts.uuid}" running="true" answered="true" '
            'enforce_min="true" dynamic="true" exit_sound="true" enter_sound="true" '
            f'run_time="{int(now - conference.created)}">',
            "    <variables></variables>",
            "    <members>",
        ]
        for member in reversed(conference.members):
            flags = {
                "can_hear": "deaf" not in member.member_flags, "can_see": True,
                "can_speak": "mute" not in member.member_flags, "mute_detect": False,
                "talking": False, "hold": False, "has_video": False, "video_bridge": False,
                "has_floor": member is conference.floor,
                "is_moderator": "moderator" in member.member_flags,
                "end_conference": "endconf" in member.member_flags,
                "mandatory_member_end_conference": False,
                "is_ghost": False,
            }  # fmt: skip
            out.append('      <member type="caller">')
            out.append(f"        <id>{member.member_id}</id>")
            out.append("        <flags>")
            out.extend(
                f"          <{name}>{'true' if value else 'false'}</{name}>"
                for name, value in flags.items()
            )
            out.append("        </flags>")
            for name, value in (
                ("uuid", member.uuid),
                ("caller_id_name", quote(member.facts.caller_id_name or "", safe="")),
                ("caller_id_number", quote(member.facts.caller_id_number, safe="")),
                ("join_time", str(int(now - member.joined_at))),
                ("last_talking", "N/A"),
                ("energy", "100"),
                ("volume_in", "0"),
                ("volume_out", "0"),
                ("output-volume", "0"),
            ):
                out.append(f"        <{name}>{value}</{name}>")
            out.append("      </member>")
        out.extend(["    </members>", "  </conference>", "</conferences>"])
        return "\n".join(out) + "\n"

    def _conference_kick(
        self, conference: Conference, args: list[str], *, sub_hup: bool = False
    ) -> str:
        if not args:
            return "-ERR Invalid member\n"
        out: list[str] = []
        for member in list(conference.members):
            if args[0] == "all" or args[0] == str(member.member_id):
                # As mod_conference (kick and hup clear the member's running flag): the member
                # leaves the room alive (del-member), the conference app returns, and the
                # dialplan goes on -- the inline one has nothing after it, so the channel
                # hangs up (NORMAL_CLEARING).
                self._leave_conference(member)
                self._app_done(member)
                out.append(f"+OK {'hup' if sub_hup else 'kicked'} {member.member_id}\n")
        return "".join(out) or "-ERR Non-Existant ID " + args[0] + "\n"


def _table(header: list[str], rows: list[list[str]], as_json: bool) -> str:
    """`show` output: csv with a header and `N total.`, or `{"row_count":N,"rows":[...]}`."""
    if as_json:
        if not rows:
            return '{"row_count": 0}'
        objects = [dict(zip(header, row, strict=True)) for row in rows]
        return json.dumps({"row_count": len(rows), "rows": objects}, separators=(",", ":"))
    if not rows:
        return "\n0 total.\n"
    lines = [",".join(header)] + [",".join(row) for row in rows]
    return "\n".join(lines) + f"\n\n{len(rows)} total.\n"


def _xml_table(header: list[str], rows: list[list[str]]) -> str:
    """`show ... as xml` (transcript 04): a <result> of numbered <row>s, two-space indents."""
    out = [f'<result row_count="{len(rows)}">']
    for number, row in enumerate(rows, start=1):
        out.append(f'  <row row_id="{number}">')
        for name, value in zip(header, row, strict=True):
            out.append(f"    <{name}>{xml_escape(value)}</{name}>")
        out.append("  </row>")
    out.append("</result>")
    return "\n".join(out) + "\n"


def cjson_format(value: object, depth: int = 0) -> str:
    """JSON as FreeSWITCH's cJSON prints it formatted (`conference ... json_list`): objects
    open on `{` + newline with one tab per depth level and `"name":<TAB>value`, arrays stay on
    one line with items joined by `, ` (transcripts 04 and 06)."""
    if isinstance(value, dict):
        if not value:
            return "{\n" + "\t" * depth + "}"
        inner = "\t" * (depth + 1)
        items = [
            f"{inner}{json.dumps(str(key))}:\t{cjson_format(item, depth + 1)}"
            for key, item in value.items()
        ]
        return "{\n" + ",\n".join(items) + "\n" + "\t" * depth + "}"
    if isinstance(value, list):
        return "[" + ", ".join(cjson_format(item, depth + 1) for item in value) + "]"
    return json.dumps(value)


_TONE_SEGMENT_RE = re.compile(r"%\((\d+),(\d+)(?:,[^)]*)?\)")
_TONE_LOOPS_RE = re.compile(r"(?:^|;)(?:loops|L)=(-?\d+)")


def prompt_length_ms(path: str) -> int | None:
    """How long a broadcast prompt plays, in ms; None when there is nothing to play (FILE NOT
    FOUND). `tone_stream://%(on,off,freq...)[;%(...)][;loops=N]`: every segment's on + off
    times, N times (transcript 13: %(200,100,440) 300 ms, %(250,250,440);loops=2 1000 ms; a
    negative N, FreeSWITCH's "for ever", plays once here);
    `silence_stream://<ms>`; a .wav file on this host by its header (other files: 0 ms);
    anything else (a relative sound name: the simulator has no sound files) is not found.
    Streams' lengths are kept (a waiting call plays the same prompt every try)."""
    known = _STREAM_LENGTHS.get(path)
    if known is not None:
        return known
    if path.startswith(("tone_stream://", "silence_stream://")):
        length = _stream_length_ms(path)
        if len(_STREAM_LENGTHS) < 1024:
            _STREAM_LENGTHS[path] = length
        return length
    if not os.path.isabs(path) or not os.path.isfile(path):
        return None
    try:
        with wave.open(path) as audio:
            return audio.getnframes() * 1000 // max(1, audio.getframerate())
    except (wave.Error, EOFError, OSError):
        return 0


_STREAM_LENGTHS: dict[str, int] = {}  # tone_stream:// and silence_stream:// path -> its ms


def _stream_length_ms(path: str) -> int:
    if path.startswith("tone_stream://"):
        spec = path[len("tone_stream://") :]
        cycle = sum(int(on) + int(off) for on, off in _TONE_SEGMENT_RE.findall(spec))
        loops = _TONE_LOOPS_RE.search(spec)
        count = int(loops.group(1)) if loops else 1
        return cycle * max(count, 1)
    return max(0, _atoi(path[len("silence_stream://") :].split(",")[0]))  # silence_stream://


def _substitute_groups(data: str, found: re.Match[str]) -> str:
    """mod_dialplan_xml: `$1`... in an action's data are its condition's regex groups."""
    groups = ("", *(g or "" for g in found.groups()))
    return re.sub(
        r"\$([1-9])",
        lambda m: groups[int(m.group(1))] if int(m.group(1)) < len(groups) else "",
        data,
    )


_VARIABLE_REF = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


def _expand_variables(data: str, facts: ChannelFacts) -> str:
    """`${name}` in an application's arguments becomes the channel variable (empty when unset),
    as FreeSWITCH expands them before the application runs (only plain names: no `${a(b)}`)."""
    if "${" not in data:
        return data
    return _VARIABLE_REF.sub(lambda m: facts.variables.get(m.group(1), ""), data)


def _unquote(text: str) -> str:
    """An originate argument without the single quotes that grouped it."""
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == "'" else text


_INLINE_PARSED: dict[str, tuple[tuple[str, str | None], ...]] = {}  # target -> its apps
_INLINE_PARSED_KEPT = 1024


def inline_apps(target: str) -> list[tuple[str, str | None]]:
    """`parse_inline_dialplan(target)`, a new list each time, parsed once per target text (the
    daemon sends one waiting app for every call; a bounded table)."""
    parsed = _INLINE_PARSED.get(target)
    if parsed is None:
        parsed = tuple(parse_inline_dialplan(target))
        if len(_INLINE_PARSED) >= _INLINE_PARSED_KEPT:
            _INLINE_PARSED.clear()
        _INLINE_PARSED[target] = parsed
    return list(parsed)


def parse_inline_dialplan(target: str) -> list[tuple[str, str | None]]:
    """`app:args,app(args)` -> [(app, args)]; `m:X:...` makes X the separator instead of `,`
    (mod_dptools' inline_dialplan_hunt), so that arguments may hold commas."""
    separator = ","
    if target.startswith("m:") and len(target) > 3:
        separator, target = target[2], target[4:]
    apps: list[tuple[str, str | None]] = []
    for line in target.split(separator):
        line = line.strip()
        if not line:
            continue
        colon, paren = line.find(":"), line.find("(")
        if paren >= 0 and (colon < 0 or paren < colon):
            name, data = line[:paren], line[paren + 1 :].rstrip(")")
        else:
            name, _, data = line.partition(":")
        apps.append((name, data or None))
    return apps


# Applications that read the channel's DTMF queue and drop what they do not use (park,
# playback's file player, the conference's caller controls). play_and_get_digits keeps them.
_DTMF_READERS = frozenset(("park", "playback", "conference"))

_PLAYBACK_NAMES = (
    "playback_last_offset_pos",
    "playback_seconds",
    "playback_ms",
    "playback_samples",
)
_PLAYBACK_VALUES: dict[int, tuple[str, str, str, str]] = {}  # length ms -> those values


class _Originating:
    """A bgapi originate run on callbacks: `Switch._originate_steps` resumed by the clock's
    timers and by the channel's answer and end, each through one `call_soon` -- where they
    would have woken the task running `api originate`'s coroutine -- so that the steps run at
    the same moments and in the same order, without a task, futures and a chain of coroutines
    per call. An api_on_originate that is itself an originate runs as another of these (its
    `parent` this one), whose reply resumes this one at once, as an awaited coroutine's return
    would. The top one publishes BACKGROUND_JOB with the reply."""

    __slots__ = ("arg", "channel", "child", "command", "job_uuid", "loop", "parent", "steps",
                 "stopped", "switch", "timer", "woken")  # fmt: skip

    def __init__(
        self,
        switch: Switch,
        command: str,
        arg: str,
        *,
        job_uuid: str = "",
        parent: _Originating | None = None,
    ) -> None:
        self.switch = switch
        self.command = command  # for the log, as Switch.api's
        self.arg = arg
        self.job_uuid = job_uuid
        self.parent = parent
        self.steps = switch._originate_steps(arg)
        self.loop = asyncio.get_running_loop()
        self.timer: Timer | None = None  # the sleep's, or the ring limit's
        self.channel: Channel | None = None  # whose answer_waiter `wake` is
        self.child: _Originating | None = None
        self.woken = False
        self.stopped = False

    def wake(self) -> None:
        """What it waits for came (once: a ring limit after the answer is nothing)."""
        if not self.woken and not self.stopped:
            self.woken = True
            self.loop.call_soon(self.step)

    def step(self) -> None:
        if self.stopped:
            return
        self.woken = False
        self._stop_waiting()
        self._run()

    def _run(self) -> None:
        """The steps up to their next wait, or to their end. Stopped meanwhile, they still run
        up to the next wait, as a cancelled task's coroutine does."""
        switch = self.switch
        while True:
            try:
                wait = _next_step(self.steps)
            except Exception as error:  # as Switch.api
                log.exception("api %r failed", self.command)
                wait = f"-ERR {error}\n"
            if isinstance(wait, str):
                self._done(wait)
                return
            if self.stopped:
                return
            kind, what = wait
            if kind == _API:
                command = what.strip("\r\n")
                name, _, arg = command.strip().partition(" ")
                if name != "originate":
                    switch._api_at_once(command)
                    continue
                self.child = _Originating(switch, command, arg.strip(), parent=self)
                self.child._run()
            elif kind == _SLEEP:
                self.timer = switch.clock.call_later(what, self.wake)
            elif kind == _ENDED:
                what.when_ended(self.wake)
            elif kind == _ANSWERED:
                channel, ring_limit = what
                self.channel = channel
                channel.answer_waiter = self.wake
                clock = switch.clock
                self.timer = clock.call_later(max(0.0, ring_limit - clock.now()), self.wake)
            else:  # _PASS
                self.wake()
            return

    def _done(self, reply: str) -> None:
        parent = self.parent
        if parent is not None:
            parent.child = None
            parent._run()
            return
        switch = self.switch
        switch._originating.discard(self)
        switch.publish(switch.events.background_job(self.job_uuid, "originate", self.arg, reply))

    def _stop_waiting(self) -> None:
        """Drop what the originate waited on: the ring limit's timer, the channel's answer."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.channel is not None:
            self.channel.answer_waiter = None
            self.channel = None

    def stop(self) -> None:
        """The switch stops or restarts: nothing more runs, no BACKGROUND_JOB."""
        self.stopped = True
        self._stop_waiting()
        if self.child is not None:
            self.child.stop()


_CollectorArgs = tuple[int, int, str, str, str, str, str, tuple[str, ...]]
_COLLECTOR_ARGS: dict[str, _CollectorArgs] = {}  # play_and_get_digits' data -> its arguments
_COLLECTOR_ARGS_KEPT = 256


def _collector_args(data: str) -> _CollectorArgs:
    """`play_and_get_digits MIN MAX TRIES MS TERMINATORS PROMPT INVALID VAR REGEX DIGIT_TIMEOUT
    [<failure target>]` as DigitCollector reads them: tries, timeout ms, terminators, prompt,
    invalid, var, regex, and everything after the digit timeout -- `<ext> [<dialplan>
    [<context>]]` to transfer to once the tries are spent (switch_play_and_get_digits'
    transfer_on_failure). Parsed once per text (the daemon's calls all send the same; a bounded
    table)."""
    known = _COLLECTOR_ARGS.get(data)
    if known is not None:
        return known
    args = data.split()

    def arg(index: int, default: str) -> str:
        return args[index] if len(args) > index else default

    parsed = (
        max(0, _atoi(arg(2, "1"))),
        max(1000, _atoi(arg(3, "0"))),
        arg(4, "#"),
        arg(5, "silence"),
        arg(6, ""),
        arg(7, ""),
        arg(8, ""),
        tuple(args[10:]),
    )
    if len(_COLLECTOR_ARGS) >= _COLLECTOR_ARGS_KEPT:
        _COLLECTOR_ARGS.clear()
    _COLLECTOR_ARGS[data] = parsed
    return parsed


class DigitCollector:
    """`play_and_get_digits MIN MAX TRIES MS TERMINATORS PROMPT INVALID VAR REGEX` on one
    channel, as switch_play_and_get_digits / switch_ivr_read run it (transcript 18).

    Each try clears `read_result` and VAR, plays PROMPT (`silence`: nothing; a key stops it)
    and waits MS (at least 1000) for the key; every try that did not end with a key matching
    REGEX plays INVALID, and a key that does not match is kept in VAR_invalid. A key pressed
    while INVALID plays waits in the channel's queue and ends the next try's prompt at once.
    A matching key: VAR set, `read_result` success, the app completes (the next inline app runs
    at once). TRIES spent: the app completes. Playing a file leaves the playback_* variables.
    The simulator collects one digit (MAX 1).

    While nothing happens, the tries cost no timers ("coasting"): every try without a key has
    the same phases, lengths and effects, so one timer waits for the end of the last try and the
    phases due so far are run only when someone looks -- the channel's variables are read or
    written (`ChannelFacts.catch_up`), a key comes, the call is transferred or hung up. Whole
    tries are skipped then: a try leaves the same values in the same order whatever came before
    it, so one run of it stands for many."""

    def __init__(self, switch: Switch, channel: Channel, data: str) -> None:
        self.switch = switch
        self.channel = channel
        self.facts: ChannelFacts = channel.facts  # a channel's facts are its own for life
        (
            self.tries,
            self.timeout_ms,
            self.terminators,
            self.prompt,
            self.invalid,
            self.var_name,
            self.regex,
            failure_target,
        ) = _collector_args(data)
        self.failure_target = list(failure_target)
        self.phase = ""  # prompt | wait | invalid | done
        self.queued: list[str] = []
        self.timer: Timer | None = None
        self.phase_started = 0.0
        # When the current phase was due to start, simulated: the phases follow each other on
        # this schedule, not on when a late timer ran, so a loaded host does not stretch the
        # tries (FreeSWITCH plays and waits in 20 ms frames, without drift).
        self.mark = 0.0
        self._due: Callable[[], None] = self._finish  # what `timer` runs
        self._prompt_ms = 0
        self._invalid_ms: int | None = None
        self.coasting = False
        self._catching_up = False
        self._at_try_start = False
        self._period = 0.0  # one try without a key, simulated seconds
        self._last_phase: Callable[[], None] = self._timed_out  # the one that ends a try
        self._end_timer: Timer | None = None

    def start(self) -> None:
        self.mark = self.switch.clock.now()
        if self.var_name and self.regex:
            self.facts.variables.pop(f"{self.var_name}_invalid", None)
        # Keys that came before the app: the first prompt takes them at once.
        self.queued.extend(self.channel.queued_dtmf)
        self.channel.queued_dtmf.clear()
        self._try()

    def _after(self, seconds: float, fn: Callable[[], None]) -> None:
        """The next phase, `seconds` after the current one was due. The collector's one pending
        timer is its own (`timer`; the switch cancels it with the channel's), not in the
        channel's list. Coasting, no timer: a catch-up or the end timer runs the phase."""
        self.phase_started = self.mark
        self.mark += seconds
        self._due = fn
        if not self.coasting:
            self._arm()

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        clock = self.switch.clock
        self.timer = clock.call_later(max(0.0, self.mark - clock.now()), self._fire)

    def _fire(self) -> None:
        self.timer = None
        self._due()

    def _cancel(self) -> None:
        self._stop_coasting()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # -- coasting: the tries without a key, run when someone looks ------------------------------

    def _coast(self) -> None:
        """At the start of a try: coast through the tries left, if they are all alike."""
        if self.queued or self.tries < 2:
            return
        silent = self.prompt.lower() == "silence" or not self.prompt
        prompt_ms = 0 if silent else prompt_length_ms(self.prompt)
        if prompt_ms is None:
            return
        invalid_ms = prompt_length_ms(self.invalid) if self.invalid else None
        self._last_phase = self._timed_out if invalid_ms is None else self._invalid_played
        self._period = (prompt_ms + self.timeout_ms + (invalid_ms or 0)) / 1000
        self.coasting = True
        self.facts.catch_up = self.catch_up
        clock = self.switch.clock
        end = self.mark + self.tries * self._period  # self.mark: this try's start
        self._end_timer = clock.call_later(max(0.0, end - clock.now()), self._coasted)

    def catch_up(self) -> None:
        """Run the phases due by now; the last try's last phase is left to the end timer (it
        ends the app, which must not happen inside whoever is reading the variables)."""
        if not self.coasting or self._catching_up:
            return
        self._catching_up = True
        try:
            now = self.switch.clock.now()
            while self.mark <= now and not (self.tries <= 1 and self._due == self._last_phase):
                if self._at_try_start:
                    # phase_started is this try's start: the whole tries over by now but one
                    # are skipped (the one left, run below, leaves what they all would).
                    whole = int((now - self.phase_started) // self._period)
                    skip = min(whole - 1, self.tries - 1)
                    if skip > 0:
                        self.tries -= skip
                        self.phase_started += skip * self._period
                        self.mark += skip * self._period
                self._at_try_start = False
                self._due()
        finally:
            self._catching_up = False

    def _coasted(self) -> None:
        """The end timer: the phases so far, then the last one runs on its own timer."""
        self._end_timer = None
        self._stop_coasting()
        if self.phase != "done" and self.channel.alive:
            self._arm()

    def _stop_coasting(self) -> None:
        if not self.coasting:
            return
        self.catch_up()
        self.coasting = False
        self.facts.catch_up = None
        if self._end_timer is not None:
            self._end_timer.cancel()
            self._end_timer = None

    def _try(self) -> None:
        if not self.channel.alive or self.phase == "done":
            return
        if self.tries <= 0:
            if self.failure_target:
                self.phase = "done"
                self._cancel()
                self.switch._transfer(self.channel, self.failure_target)
                return
            self._finish()
            return
        if not self.coasting:
            self._coast()
        self._at_try_start = True
        variables = self.facts.own_variables
        variables.pop("read_result", None)
        if self.var_name:
            variables.pop(self.var_name, None)
        if self.prompt.lower() == "silence" or not self.prompt:
            self._wait()
            return
        length_ms = prompt_length_ms(self.prompt)
        if length_ms is None:  # the prompt cannot be played: the try fails at once
            self._failed()
            return
        self.phase = "prompt"
        if self.queued:
            self._played(self.prompt, 0)
            self._key(self.queued.pop(0))
            return
        self._prompt_ms = length_ms
        self._after(length_ms / 1000, self._prompt_played)

    def _prompt_played(self) -> None:
        self._played(self.prompt, self._prompt_ms)
        self._wait()

    def _wait(self) -> None:
        self.phase = "wait"
        if self.queued:
            self._key(self.queued.pop(0))
            return
        self._after(self.timeout_ms / 1000, self._timed_out)

    def _timed_out(self) -> None:
        self.facts.set_var("read_result", "failure")  # TIMEOUT with too few digits
        self._failed()

    def digit(self, digit: str) -> None:
        """A key reaches the channel (its DTMF event already fired)."""
        if self.coasting:
            self._stop_coasting()
            # The phase it is in now goes on on its own timer -- unless the key ends it at once
            # (`_key` cancels the timer first thing).
            if self.phase not in ("done", "prompt", "wait"):
                self._arm()
        if self.phase in ("prompt", "wait"):
            self._key(digit)
        elif self.phase == "invalid":
            self.queued.append(digit)

    def _key(self, digit: str) -> None:
        self._cancel()
        now = self.switch.clock.now()
        if self.phase == "prompt":
            elapsed = now - self.phase_started
            self._played(self.prompt, max(0, round(elapsed * 1000)))
        self.mark = now  # what follows a key is timed from the key
        if digit in self.terminators:
            # A terminator: no digit. During the prompt the read succeeds with an empty
            # buffer; during the wait it ends the collection, too few digits.
            if self.phase == "wait":
                self.facts.set_var("read_terminator_used", digit)
                self.facts.set_var("read_result", "failure")
            else:
                self.facts.set_var("read_result", "success")
            self._failed()
            return
        self.facts.set_var("read_result", "success")
        if self.var_name:
            self.facts.set_var(self.var_name, digit)
        if not self.regex or re.search(self.regex, digit):
            self._finish()
            return
        if self.var_name:
            self.facts.variables.pop(self.var_name, None)
            self.facts.set_var(f"{self.var_name}_invalid", digit)
        self._failed()

    def _failed(self) -> None:
        """The try did not give the key: INVALID plays, then the next try."""
        self.phase = "invalid"
        length_ms = prompt_length_ms(self.invalid) if self.invalid else None
        self._invalid_ms = length_ms
        if length_ms is None:
            self._invalid_played()
        else:
            self._after(length_ms / 1000, self._invalid_played)

    def _invalid_played(self) -> None:
        if self._invalid_ms is not None:
            self._played(self.invalid, self._invalid_ms)
        self.tries -= 1
        self._try()

    def _played(self, path: str, length_ms: int) -> None:
        """What playing a file leaves in the channel's variables (as the broadcast's playback)."""
        values = _PLAYBACK_VALUES.get(length_ms)
        if values is None:
            samples = str(length_ms * SAMPLE_RATE // 1000)
            values = (samples, str(length_ms // 1000), str(length_ms), samples)
            if len(_PLAYBACK_VALUES) < 256:
                _PLAYBACK_VALUES[length_ms] = values
        variables = self.facts.own_variables
        for name, value in zip(_PLAYBACK_NAMES, values, strict=True):  # set_var: moved to the end
            variables.pop(name, None)
            variables[name] = value

    def _finish(self) -> None:
        self.phase = "done"
        self._cancel()
        if self.channel.collector is self:
            self.switch._app_done(self.channel)

    def interrupt(self) -> None:
        """A transfer (or hangup) ends the app where it is: a wait ends without a digit."""
        self._stop_coasting()
        if self.phase == "wait":
            self.facts.set_var("read_result", "failure")
        self.phase = "done"
        self._cancel()
