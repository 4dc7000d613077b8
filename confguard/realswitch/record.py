"""Record Event Socket transcripts from a real FreeSWITCH (`RealSwitch`), in their own format.

Owns the recorder (`Recorder`, `Connection`): plain asyncio TCP sockets to the switch on
127.0.0.1, scripted client commands, and every byte both ways kept as transcript records --
`#### <seq> +<rel>s <utc> <DIR> (<N> bytes) [<ctype>]`, the N bytes, `\\n` in the `.txt`, the same
records as `{seq, rel, utc, dir, len, ctype, data}` lines in the `.jsonl` (tests/transcripts/
README.md). Each `S->C` record is one whole ESL message (split with `wire.FrameParser`); `NOTE`
records are annotations, not on the wire. With one connection named `conn` the directions carry
no connection name, as in the single-connection recordings; otherwise `C->S[name]`, `S->C[name]`.

The first record of every transcript is the `SETUP_NOTE`, which tells the conformance replay that
the recording was made with `confguard.realswitch`'s configuration (domain `confguard.test`,
callee context `confguard_callee`, dial-string `loopback/<ext>/confguard_callee/XML`), not the
original recordings' (`fsref.local`, `loopback/sim_callee/default/XML`).

The password: the recordings replay against the simulator, whose default password is `ClueCon`,
as the original recordings used. Record with `RealSwitch(..., password="ClueCon")`; with any other
password the recorder writes `ClueCon` in its place in every recorded client record (and says so
in a NOTE), so no secret lands in a file and the `auth` line still replays.

The scenarios (`SCENARIOS`) are the transcripts recorded so far; `python -m
confguard.realswitch.record [--out DIR] [NAME ...]` starts a real FreeSWITCH with the project's
configuration and records them (all when no NAME is given).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote

from confguard.esl import PERMANENT_FILTERS
from confguard.invite import InviteSpec, JoinTarget, build_originate
from confguard.realswitch.conf import CALLEE_CONTEXT, DOMAIN
from confguard.sim import wire

DEFAULT_PASSWORD = "ClueCon"  # the simulator's default, and what the recorded `auth` line says
SETUP_NOTE = (
    f"set-up: confguard.realswitch (domain {DOMAIN}, callee context {CALLEE_CONTEXT}, "
    f"dial-string loopback/<ext>/{CALLEE_CONTEXT}/XML)\n"
)
FORMAT_COMMENT = (
    "# FORMAT: '#### seq +rel_s utc dir (N bytes) [ctype]' then exactly N verbatim bytes, then "
    "'\\n'.\n"
    "# C->S = client to FreeSWITCH, S->C = FreeSWITCH to client, NOTE = driver annotation "
    "(not on the wire).\n"
)
RECORDED_FROM = (
    "# Recorded by confguard/realswitch/record.py from a real FreeSWITCH running\n"
    f"# confguard.realswitch's configuration (conf.py: domain {DOMAIN}, users 1000..1019 dial\n"
    f"# loopback/<ext>/{CALLEE_CONTEXT}/XML, whose -b leg runs callee.lua with the simulator's\n"
    "# default callee behaviours), Event Socket password ClueCon.\n"
)
# What confguard's daemon subscribes to (engine.SUBSCRIBED_EVENTS, as esl.py words it).
DAEMON_EVENTS = (
    "CHANNEL_CREATE CHANNEL_PROGRESS CHANNEL_PROGRESS_MEDIA CHANNEL_ANSWER CHANNEL_HANGUP "
    "CHANNEL_HANGUP_COMPLETE DTMF BACKGROUND_JOB ADD_SCHEDULE DEL_SCHEDULE HEARTBEAT "
    "CUSTOM conference::maintenance"
)
_T = TypeVar("_T")
WAIT = 10.0  # seconds to wait for anything the switch is expected to send


class RecordingError(RuntimeError):
    """The switch did not do what the scenario waits for (the recording is not written)."""


@dataclass(frozen=True)
class Record:
    seq: int
    rel: float
    utc: str
    dir: str
    data: bytes
    ctype: str = ""

    def txt(self) -> bytes:
        head = (
            f"#### {self.seq:04d} +{self.rel:.6f}s {self.utc} {self.dir} "
            f"({len(self.data)} bytes) [{self.ctype}]\n"
        )
        return head.encode("ascii") + self.data + b"\n"

    def jsonl(self) -> str:
        """One JSON line as the recordings have it (their key order, `json.dumps` spacing, rel
        rounded to the microsecond and never in exponent form)."""
        rel = repr(round(self.rel, 6))
        if "e" in rel:
            rel = f"{self.rel:.6f}"
        fields = [
            ("seq", str(self.seq)),
            ("rel", rel),
            ("utc", json.dumps(self.utc)),
            ("dir", json.dumps(self.dir)),
            ("len", str(len(self.data))),
            ("ctype", json.dumps(self.ctype)),
            ("data", json.dumps(self.data.decode("utf-8", "surrogateescape"))),
        ]
        return "{" + ", ".join(f'"{name}": {value}' for name, value in fields) + "}"


@dataclass
class Event:
    """One received event, decoded (plain format) for the scenario's waits."""

    headers: dict[str, str]
    body: bytes | None
    at: float  # recorder-relative seconds

    @property
    def name(self) -> str:
        return self.headers.get("Event-Name", "")


class Recorder:
    """The records of one transcript, in the order they happened."""

    def __init__(self, port: int, *, password: str = DEFAULT_PASSWORD) -> None:
        self.port = port
        self.password = password
        self.records: list[Record] = []
        self.connections: list[Connection] = []
        self._t0 = time.monotonic()
        self._wall0 = time.time()

    def now(self) -> float:
        return time.monotonic() - self._t0

    def add(self, direction: str, data: bytes, ctype: str = "", at: float | None = None) -> None:
        rel = self.now() if at is None else at
        stamp = datetime.fromtimestamp(self._wall0 + rel, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self.records.append(Record(len(self.records) + 1, rel, stamp, direction, data, ctype))

    def note(self, text: str, conn: str | None = None) -> None:
        prefix = f"[{conn}] " if conn else ""
        self.add("NOTE", (prefix + text.rstrip("\n") + "\n").encode())

    def redact(self, data: bytes) -> bytes:
        if self.password == DEFAULT_PASSWORD:
            return data
        return data.replace(self.password.encode(), DEFAULT_PASSWORD.encode())

    async def connect(self, name: str = "conn") -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        local = writer.get_extra_info("sockname")[1]
        self.note(f"TCP connected to 127.0.0.1:{self.port} (local port {local})", name)
        connection = Connection(self, name, reader, writer)
        self.connections.append(connection)
        await connection.wait_frame("auth/request")
        return connection

    def _dir(self, base: str, conn: str) -> str:
        single = all(c.name == "conn" for c in self.connections)
        return base if single else f"{base}[{conn}]"

    def write(self, stem: Path, comment: str) -> None:
        """`<stem>.txt` (the comment lines, the format lines, a blank line, the records) and
        `<stem>.jsonl`; each connection's own name is substituted into the directions now."""
        lines = [line if line.startswith("#") else f"# {line}" for line in comment.splitlines()]
        head = "\n".join(lines) + "\n" + RECORDED_FROM + FORMAT_COMMENT + "\n"
        stem.with_suffix(".txt").write_bytes(
            head.encode() + b"".join(record.txt() for record in self.records)
        )
        stem.with_suffix(".jsonl").write_text(
            "".join(record.jsonl() + "\n" for record in self.records), encoding="utf-8"
        )


@dataclass
class Connection:
    """One recorded ESL connection: `send()` raw, `command()` and wait for its reply, events."""

    recorder: Recorder
    name: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    frames: list[wire.ServerFrame] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    closed: bool = False
    _replies: asyncio.Queue[wire.ServerFrame] = field(default_factory=asyncio.Queue)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _closing: bool = False

    def __post_init__(self) -> None:
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        parser = wire.FrameParser()
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                at = self.recorder.now()
                for frame in parser.feed(data):
                    self._received(frame, at)
        except ConnectionError:
            pass
        self.closed = True
        if not self._closing:
            self.recorder.note("connection closed by peer (recv returned EOF)", self.name)
        self._arrived.set()

    def _received(self, frame: wire.ServerFrame, at: float) -> None:
        ctype = frame.content_type
        self.recorder.add(self.recorder._dir("S->C", self.name), frame.raw, ctype, at)
        self.frames.append(frame)
        if ctype == "text/event-plain":
            pairs, body = wire.parse_plain_event(frame.body)
            headers: dict[str, str] = {}
            for key, value in pairs:
                headers.setdefault(key, unquote(value))
            self.events.append(Event(headers, body, at))
        elif ctype in ("command/reply", "api/response"):
            self._replies.put_nowait(frame)
        self._arrived.set()

    def send(self, data: bytes) -> None:
        self.recorder.add(self.recorder._dir("C->S", self.name), self.recorder.redact(data))
        self.writer.write(data)

    async def command(self, line: str, headers: Sequence[tuple[str, str]] = ()) -> str:
        """Send one command block; its Reply-Text (command/reply) or body (api/response)."""
        self.send(wire.encode_command(line, headers))
        try:
            frame = await asyncio.wait_for(self._replies.get(), WAIT)
        except TimeoutError:
            raise RecordingError(f"[{self.name}] no reply to {line!r}") from None
        if frame.content_type == "command/reply":
            return frame.header("Reply-Text") or ""
        return frame.body.decode("utf-8", "surrogateescape")

    async def api(self, command: str) -> str:
        return await self.command(f"api {command}")

    async def wait_frame(self, ctype: str) -> wire.ServerFrame:
        return await self._wait(
            lambda: next((f for f in self.frames if f.content_type == ctype), None), ctype
        )

    async def wait_event(
        self, name: str, *, count: int = 1, since: int = 0, timeout: float = WAIT, **match: str
    ) -> Event:
        """The `count`-th event named `name` (from `self.events[since:]`) whose headers have
        the `match` values (names with `_` for `-`)."""
        wanted = {key.replace("_", "-"): value for key, value in match.items()}

        def found() -> Event | None:
            hits = [
                event
                for event in self.events[since:]
                if event.name == name and all(event.headers.get(k) == v for k, v in wanted.items())
            ]
            return hits[count - 1] if len(hits) >= count else None

        return await self._wait(found, f"{name} {wanted}", timeout)

    async def _wait(self, probe: Callable[[], _T | None], what: str, timeout: float = WAIT) -> _T:
        deadline = time.monotonic() + timeout
        while True:
            hit = probe()
            if hit is not None:
                return hit
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                raise RecordingError(f"[{self.name}] waited in vain for {what}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)

    async def close(self) -> None:
        """The client closes the socket (a NOTE, as in the recordings)."""
        self._closing = True
        self.recorder.note("client closes the socket", self.name)
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
        if self._task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 2.0)


# --------------------------------------------------------------------------- scenarios


async def login(
    recorder: Recorder, name: str = "conn", events: str | None = DAEMON_EVENTS
) -> Connection:
    conn = await recorder.connect(name)
    reply = await conn.command(f"auth {recorder.password}")
    if reply != "+OK accepted":
        raise RecordingError(f"auth: {reply!r}")
    if events:
        await conn.command(f"event plain {events}")
    return conn


def daemon_originate(
    call_uuid: str,
    extension: str,
    *,
    timeout: int = 30,
    prompt: str | None = None,
    reprompt_interval: float = 5.0,
    join: JoinTarget | None = None,
) -> str:
    """The originate confguard's daemon sends (`invite.build_originate`), for invite `rec1`.

    Transcripts 13, 14 and 16 were recorded before this called the builder, with the timer
    cause NO_USER_RESPONSE and `&park()`; the builder gives the daemon's own (ALLOTTED_TIMEOUT,
    the waiting app `invite.build_waiting_app`, from transcript 18 on)."""
    spec = InviteSpec(
        extension=extension,
        room="test1",
        timeout=timeout,
        prompt=prompt,
        reprompt_interval=reprompt_interval,
        join=join or JoinTarget.inline(),
    )
    return build_originate(spec, call_uuid=call_uuid, invite_id="rec1",
                           wall_deadline=1_900_000_000)


async def daemon_filters(conn: Connection, call_uuid: str, job_uuid: str) -> None:
    """The filters the daemon keeps (esl.PERMANENT_FILTERS) and adds per call (invite.py)."""
    for header, value in (
        *PERMANENT_FILTERS,
        ("Unique-ID", call_uuid),
        ("Job-UUID", job_uuid),
        ("Task-Group", call_uuid),
    ):
        await conn.command(f"filter {header} {value}")


async def place_call(
    recorder: Recorder, conn: Connection, command: str, call_uuid: str, note: str,
    job_uuid: str | None = None,
) -> Event:
    """bgapi the originate with a Job-UUID of ours; return once the BACKGROUND_JOB came."""
    job_uuid = job_uuid or str(uuidlib.uuid4())
    recorder.note(f"originate with origination_uuid={call_uuid} Job-UUID={job_uuid} {note}")
    since = len(conn.events)
    reply = await conn.command(f"bgapi {command}", [("Job-UUID", job_uuid)])
    if not reply.startswith("+OK Job-UUID"):
        raise RecordingError(f"bgapi: {reply!r}")
    job = await conn.wait_event("BACKGROUND_JOB", since=since, Job_UUID=job_uuid)
    if job.body is None or not job.body.startswith(b"+OK"):
        raise RecordingError(f"originate failed: {job.body!r}")
    return job


async def hang_up(conn: Connection, call_uuid: str) -> None:
    since = len(conn.events)
    reply = await conn.api(f"uuid_kill {call_uuid}")
    if reply != "+OK\n":
        raise RecordingError(f"uuid_kill: {reply!r}")
    await conn.wait_event("CHANNEL_HANGUP_COMPLETE", since=since, Unique_ID=call_uuid)


def group_rows(show_tasks_json: str, group: str) -> int:
    document = json.loads(show_tasks_json)
    return sum(1 for row in document.get("rows", []) if row["task_group"] == group)


BROADCAST_COMMENT = """\
13 uuid_broadcast <uuid> <path> aleg on an answered call parked by &park(), as confguard's daemon
sends it (invite.build_broadcast): tone_stream://%(200,100,440) (0.3 s), then the daemon's default
prompt tone_stream://%(250,250,440);loops=2 (1 s), then a sound file that does not exist; each
`+OK Message sent`, the playback starting about 0.2 s later. Then uuid_broadcast on a uuid that
never existed (`-ERR invalid uuid`) and without a path (usage), and uuid_kill.
conn 'daemon': the daemon's subscription (engine.SUBSCRIBED_EVENTS) and filters (HEARTBEAT,
BACKGROUND_JOB, Unique-ID U, Job-UUID J, Task-Group U), the daemon's originate (invite.build_
originate: api_on_originate sched_hangup) to user 1001 (answers after 1 s, silent). The daemon's
subscription sees nothing of the broadcasts.
conn 'watcher': event plain CHANNEL_EXECUTE CHANNEL_EXECUTE_COMPLETE CHANNEL_HANGUP_COMPLETE:
park's CHANNEL_EXECUTE; per broadcast a playback CHANNEL_EXECUTE and, the tone's length later,
CHANNEL_EXECUTE_COMPLETE (Application-Response FILE PLAYED; FILE NOT FOUND at once for the
missing file) with current_loop/total_loops and playback_* variables; park's
CHANNEL_EXECUTE_COMPLETE at the hangup, whose Application-Response is the last playback's."""

BROADCASTS = (
    "tone_stream://%(200,100,440)",
    "tone_stream://%(250,250,440);loops=2",
    "/confguard/no/such/prompt.wav",
)


async def scenario_broadcast(recorder: Recorder) -> None:
    call_uuid = str(uuidlib.uuid4())
    watcher = await login(
        recorder, "watcher", "CHANNEL_EXECUTE CHANNEL_EXECUTE_COMPLETE CHANNEL_HANGUP_COMPLETE"
    )
    daemon = await login(recorder, "daemon")
    job_uuid = str(uuidlib.uuid4())
    await daemon_filters(daemon, call_uuid, job_uuid)
    command = daemon_originate(call_uuid, "1001")
    recorder.note(f"originate with origination_uuid={call_uuid} Job-UUID={job_uuid} user 1001")
    await daemon.command(f"bgapi {command}", [("Job-UUID", job_uuid)])
    await daemon.wait_event("BACKGROUND_JOB", Job_UUID=job_uuid)
    await watcher.wait_event("CHANNEL_EXECUTE", Unique_ID=call_uuid, Application="park")
    for path in BROADCASTS:
        await asyncio.sleep(0.5)
        since = len(watcher.events)
        reply = await daemon.api(f"uuid_broadcast {call_uuid} {path} aleg")
        if reply != "+OK Message sent\n":
            raise RecordingError(f"uuid_broadcast: {reply!r}")
        await watcher.wait_event(
            "CHANNEL_EXECUTE_COMPLETE", since=since, Unique_ID=call_uuid, Application="playback"
        )
    await asyncio.sleep(0.5)
    dead = str(uuidlib.uuid4())
    recorder.note(f"a uuid that never existed: {dead}")
    await daemon.api(f"uuid_broadcast {dead} {BROADCASTS[0]} aleg")
    await daemon.api(f"uuid_broadcast {call_uuid}")
    since = len(watcher.events)
    await hang_up(daemon, call_uuid)
    await watcher.wait_event("CHANNEL_HANGUP_COMPLETE", since=since, Unique_ID=call_uuid)
    await asyncio.sleep(0.3)
    await daemon.close()
    await watcher.close()


DUMP_COMMENT = """\
14 uuid_dump of a waiting call (answered, parked by &park()): `uuid_dump U json` (confguard's
form, invite.build_dump) and `uuid_dump U` (plain); then of a uuid that never existed (json and
plain) and without a uuid (usage); then the call is killed and dumped again (json and plain).
Subscription: the daemon's (engine.SUBSCRIBED_EVENTS), no filters. The call: the daemon's
originate (api_on_originate sched_hangup) to user 1001 (answers after 1 s, silent)."""


async def scenario_dump(recorder: Recorder) -> None:
    call_uuid = str(uuidlib.uuid4())
    conn = await login(recorder)
    await place_call(recorder, conn, daemon_originate(call_uuid, "1001"), call_uuid, "user 1001")
    await asyncio.sleep(0.5)
    await conn.api(f"uuid_dump {call_uuid} json")
    await conn.api(f"uuid_dump {call_uuid}")
    dead = str(uuidlib.uuid4())
    recorder.note(f"a uuid that never existed: {dead}")
    await conn.api(f"uuid_dump {dead} json")
    await conn.api(f"uuid_dump {dead}")
    await conn.api("uuid_dump")
    await hang_up(conn, call_uuid)
    await asyncio.sleep(0.2)
    await conn.api(f"uuid_dump {call_uuid} json")
    await conn.api(f"uuid_dump {call_uuid}")
    await conn.close()


TASKS_COMMENT = """\
15 Two tasks in one group: originate {origination_uuid=U,api_on_originate='sched_hangup +30 U'}
user/1001 &park() (user 1001 answers after 1 s, silent). The user/ endpoint originates the
loopback channel itself and the outer originate runs api_on_originate again once the inner one
returned (after the answer): two ADD_SCHEDULE with Task-Group U (at CHANNEL_CREATE time and at
CHANNEL_ANSWER time), two rows of group U in `show tasks`.
`show tasks as json` right after the BACKGROUND_JOB (the second row not yet in the database copy),
then every 0.25 s until both rows show (the copy's lag); `show tasks` (csv) once; `sched_del U`
(`+OK Deleted: 2`); `show tasks as json` at once (rows still there: the tasks are swept on the
scheduler's next pass, DEL_SCHEDULE, and the copy lags again), then every 1 s until they are gone;
uuid_kill. Subscription: the daemon's (engine.SUBSCRIBED_EVENTS), no filters."""


async def scenario_tasks(recorder: Recorder) -> None:
    call_uuid = str(uuidlib.uuid4())
    conn = await login(recorder)
    command = (
        f"originate {{origination_uuid={call_uuid},"
        f"api_on_originate='sched_hangup +30 {call_uuid}'}}user/1001 &park()"
    )
    await place_call(recorder, conn, command, call_uuid, "user 1001")
    since = 0
    await conn.wait_event("ADD_SCHEDULE", count=2, since=since, Task_Group=call_uuid)
    rows = group_rows(await conn.api("show tasks as json"), call_uuid)
    recorder.note("polling 'api show tasks as json' every 0.25 s until two rows of group U show")
    for _ in range(20):
        if rows >= 2:
            break
        await asyncio.sleep(0.25)
        rows = group_rows(await conn.api("show tasks as json"), call_uuid)
    if rows != 2:
        raise RecordingError(f"show tasks: {rows} rows of group U")
    await conn.api("show tasks")
    since = len(conn.events)
    reply = await conn.api(f"sched_del {call_uuid}")
    if reply != "+OK Deleted: 2\n":
        raise RecordingError(f"sched_del: {reply!r}")
    rows = group_rows(await conn.api("show tasks as json"), call_uuid)
    recorder.note("polling 'api show tasks as json' every 1 s until no row of group U shows")
    for _ in range(10):
        if rows == 0:
            break
        await asyncio.sleep(1.0)
        rows = group_rows(await conn.api("show tasks as json"), call_uuid)
    if rows != 0:
        raise RecordingError(f"show tasks after sched_del: {rows} rows of group U")
    await conn.wait_event("DEL_SCHEDULE", count=2, since=since, Task_Group=call_uuid)
    await hang_up(conn, call_uuid)
    await asyncio.sleep(0.3)
    await conn.close()


FAILURES_COMMENT = """\
16 The directory's callees that do not stay on the line, one bgapi originate after the other
(the daemon's form, invite.build_originate, with api_on_originate sched_hangup): user 1002 (busy:
-ERR USER_BUSY), 1003 (rejects: -ERR CALL_REJECTED), 1004 with originate_timeout=2 (rings, never
answers: -ERR NO_ANSWER after 1.5-2 s), 1099 (no such user: -ERR SUBSCRIBER_ABSENT, no channel, no
task), 1006 (answers after 1 s, hangs up 2 s later: NORMAL_CLEARING). Subscription: the daemon's
(engine.SUBSCRIBED_EVENTS), no filters. A refusal's BACKGROUND_JOB comes after the -a leg's
CHANNEL_HANGUP_COMPLETE, NO_ANSWER's before it. (A race: in 2 of the 16 refusals recorded while
making this transcript the BACKGROUND_JOB came first; this run shows the usual order.)"""

FAILING_CALLS = (
    ("1002", "", "-ERR USER_BUSY"),
    ("1003", "", "-ERR CALL_REJECTED"),
    ("1004", "originate_timeout=2", "-ERR NO_ANSWER"),
    ("1099", "", "-ERR SUBSCRIBER_ABSENT"),
)


async def scenario_failures(recorder: Recorder) -> None:
    conn = await login(recorder)
    for extension, extra, expected in FAILING_CALLS:
        call_uuid = str(uuidlib.uuid4())
        command = daemon_originate(call_uuid, extension)
        if extra:
            name = extra.split("=")[0]
            if name == "originate_timeout":
                command = command.replace("originate_timeout=30", extra)
            else:
                command = command.replace("}user/", f",{extra}}}user/")
        job_uuid = str(uuidlib.uuid4())
        recorder.note(
            f"originate with origination_uuid={call_uuid} Job-UUID={job_uuid} user {extension}"
        )
        since = len(conn.events)
        await conn.command(f"bgapi {command}", [("Job-UUID", job_uuid)])
        job = await conn.wait_event("BACKGROUND_JOB", since=since, Job_UUID=job_uuid)
        if job.body is None or job.body.strip().decode() != expected:
            raise RecordingError(f"user {extension}: {job.body!r}, expected {expected}")
        await asyncio.sleep(0.5)
    call_uuid = str(uuidlib.uuid4())
    since = len(conn.events)
    await place_call(recorder, conn, daemon_originate(call_uuid, "1006"), call_uuid, "user 1006")
    await conn.wait_event("CHANNEL_HANGUP_COMPLETE", since=since, Unique_ID=call_uuid)
    await asyncio.sleep(0.6)
    await conn.close()


XML_LOCATE_COMMENT = """\
17 xml_locate, no call: what `confguard check` asks (check.py) -- the conference profiles
(`xml_locate configuration configuration name conference.conf`) and the join extension's context
(`xml_locate dialplan context name default`; `public`, which does not exist: `can't find
anything`) -- then the whole dialplan section as transcript 00 asks it (`xml_locate dialplan`;
its context `confguard_callee` is the set-up's callee and names the run folder's callee.lua),
the context's name in capitals (the value matches in any case), a configuration that does not
exist, and usage errors (`-ERR bad args`). No subscription."""

XML_LOCATE_COMMANDS = (
    "xml_locate configuration configuration name conference.conf",
    "xml_locate dialplan context name default",
    "xml_locate dialplan context name public",
    "xml_locate dialplan",
    "xml_locate dialplan context name DEFAULT",
    "xml_locate configuration configuration name no_such.conf",
    "xml_locate",
    "xml_locate dialplan context",
)


async def scenario_xml_locate(recorder: Recorder) -> None:
    conn = await login(recorder, events=None)
    replies = {command: await conn.api(command) for command in XML_LOCATE_COMMANDS}
    expected_starts = {
        XML_LOCATE_COMMANDS[0]: '<configuration name="conference.conf">',
        XML_LOCATE_COMMANDS[1]: '<context name="default">',
        XML_LOCATE_COMMANDS[2]: "can't find anything\n",
        XML_LOCATE_COMMANDS[3]: '<section name="dialplan">',
        XML_LOCATE_COMMANDS[6]: "-ERR bad args\n",
    }
    for command, start in expected_starts.items():
        if not replies[command].startswith(start):
            raise RecordingError(f"{command}: {replies[command][:80]!r}")
    await conn.close()


WAITING_APP_COMMENT = """\
18 The daemon's originate with the waiting app (invite.build_originate / build_waiting_app):
`originate {...}user/EXT 'm:|:play_and_get_digits:1 1 TRIES MS # PROMPT silence_stream://250
confguard_key ^[1]$|park' inline` -- FreeSWITCH plays the prompt, waits MS for one key, stores
a matching key in confguard_key (a wrong one in confguard_key_invalid, then the invalid file and
another try), then parks.
conn 'watcher': event plain CHANNEL_EXECUTE CHANNEL_EXECUTE_COMPLETE CHANNEL_HANGUP_COMPLETE (the
app sequence). conn 'daemon': the daemon's subscription (engine.SUBSCRIBED_EVENTS) and filters
(esl.PERMANENT_FILTERS, then Unique-ID U, Job-UUID J, Task-Group U per call).
Call A: user 1001 with sim_dtmf=9@1.5;1@3.5 (a wrong key, then the key; seconds after the
answer), prompt tone_stream://%(250,250,440);loops=2 (1 s), MS 5000: `uuid_dump A json` and
`uuid_getvar A confguard_key` while the first try runs, the DTMF 9 (confguard_key_invalid=9, the
invalid file, a new try), the DTMF 1 (play_and_get_digits completes, park runs), `uuid_dump A
json` and uuid_getvar of confguard_key / confguard_key_invalid while parked; then what the daemon
does on the key: `sched_del A`, `uuid_transfer A conference:test1 inline`; `uuid_exists A` (after
the floor-change).
Call B: user 1001 silent, the daemon's default prompt (`silence`: nothing played), MS 1000: no
key for 4.5 s (several tries), `uuid_dump B json`, then `sched_del B`, `uuid_transfer B
conference:test1 inline` (play_and_get_digits completes, park never runs). Then both calls are
killed, 0.3 s apart (B gets the floor when A leaves); `uuid_exists` of a dead uuid (A) and of one
that never existed."""

WAITING_PROMPT = "tone_stream://%(250,250,440);loops=2"


def parked_waiting_app(command: str, *, prompt: str | None, wait_ms: int, tries: int = 31) -> str:
    """`command` (the daemon's originate) with the waiting app as transcript 18 recorded it,
    before the join moved inside FreeSWITCH (transcript 19): the key, then `park`, and the
    daemon's own sched_del + uuid_transfer afterwards."""
    head, _, rest = command.partition("}user/")
    extension = rest.split(" ", 1)[0]
    collect = (
        f"play_and_get_digits:1 1 {tries} {wait_ms} # {prompt or 'silence'} "
        "silence_stream://250 confguard_key ^[1]$"
    )
    return f"{head}}}user/{extension} 'm:|:{collect}|park' inline"


async def waiting_call(
    recorder: Recorder,
    daemon: Connection,
    call_uuid: str,
    command: str,
    note: str,
) -> None:
    """The daemon's filters for a new call, then its bgapi originate, until the BACKGROUND_JOB."""
    job_uuid = str(uuidlib.uuid4())
    for header, value in (("Unique-ID", call_uuid), ("Job-UUID", job_uuid),
                          ("Task-Group", call_uuid)):  # fmt: skip
        await daemon.command(f"filter {header} {value}")
    await place_call(recorder, daemon, command, call_uuid, note, job_uuid=job_uuid)


async def transfer_to_room(daemon: Connection, watcher: Connection, call_uuid: str) -> None:
    """What the daemon does once it has the key: delete the timers, transfer into the room."""
    await daemon.api(f"sched_del {call_uuid}")
    since = len(watcher.events)
    reply = await daemon.api(f"uuid_transfer {call_uuid} conference:test1 inline")
    if reply != "+OK\n":
        raise RecordingError(f"uuid_transfer: {reply!r}")
    await watcher.wait_event(
        "CHANNEL_EXECUTE", since=since, Unique_ID=call_uuid, Application="conference"
    )


async def scenario_waiting_app(recorder: Recorder) -> None:
    watcher = await login(
        recorder, "watcher", "CHANNEL_EXECUTE CHANNEL_EXECUTE_COMPLETE CHANNEL_HANGUP_COMPLETE"
    )
    daemon = await login(recorder, "daemon")
    for header, value in PERMANENT_FILTERS:
        await daemon.command(f"filter {header} {value}")

    call_a = str(uuidlib.uuid4())
    command = parked_waiting_app(
        daemon_originate(call_a, "1001", prompt=WAITING_PROMPT), prompt=WAITING_PROMPT,
        wait_ms=5000,
    ).replace("}user/", ",sim_dtmf=9@1.5;1@3.5}user/")
    since = len(daemon.events)
    await waiting_call(recorder, daemon, call_a, command, "user 1001 (presses 9, then 1)")
    await watcher.wait_event(
        "CHANNEL_EXECUTE", Unique_ID=call_a, Application="play_and_get_digits"
    )
    await asyncio.sleep(0.3)
    await daemon.api(f"uuid_dump {call_a} json")
    await daemon.api(f"uuid_getvar {call_a} confguard_key")
    await daemon.wait_event("DTMF", since=since, Unique_ID=call_a, DTMF_Digit="9")
    await daemon.wait_event("DTMF", since=since, Unique_ID=call_a, DTMF_Digit="1")
    await watcher.wait_event("CHANNEL_EXECUTE", Unique_ID=call_a, Application="park")
    await asyncio.sleep(0.3)
    await daemon.api(f"uuid_dump {call_a} json")
    key = await daemon.api(f"uuid_getvar {call_a} confguard_key")
    invalid = await daemon.api(f"uuid_getvar {call_a} confguard_key_invalid")
    if (key, invalid) != ("1", "9"):
        raise RecordingError(f"confguard_key {key!r}, confguard_key_invalid {invalid!r}")
    since = len(daemon.events)
    await transfer_to_room(daemon, watcher, call_a)
    # After the conference's floor-change (which comes some 20-30 ms after add-member), so the
    # recorded order of reply and event is not a race.
    await daemon.wait_event("CUSTOM", since=since, Unique_ID=call_a, Action="floor-change")
    await daemon.api(f"uuid_exists {call_a}")
    await asyncio.sleep(0.5)

    call_b = str(uuidlib.uuid4())
    command = parked_waiting_app(
        daemon_originate(call_b, "1001", reprompt_interval=1.0), prompt=None, wait_ms=1000
    )
    await waiting_call(recorder, daemon, call_b, command, "user 1001 (silent)")
    await watcher.wait_event(
        "CHANNEL_EXECUTE", Unique_ID=call_b, Application="play_and_get_digits"
    )
    await asyncio.sleep(4.5)
    await daemon.api(f"uuid_dump {call_b} json")
    await transfer_to_room(daemon, watcher, call_b)
    await asyncio.sleep(0.5)

    for call_uuid in (call_a, call_b):
        since = len(watcher.events)
        await hang_up(daemon, call_uuid)
        await watcher.wait_event("CHANNEL_HANGUP_COMPLETE", since=since, Unique_ID=call_uuid)
        # The floor passes to B 20-30 ms after A left: B's hangup waits for that.
        await asyncio.sleep(0.3)
    dead = await daemon.api(f"uuid_exists {call_a}")
    never = str(uuidlib.uuid4())
    recorder.note(f"a uuid that never existed: {never}")
    await daemon.api(f"uuid_exists {never}")
    if dead != "false":
        raise RecordingError(f"uuid_exists of a dead call: {dead!r}")
    await asyncio.sleep(0.3)
    await daemon.close()
    await watcher.close()


JOINS_IN_SWITCH_COMMENT = """\
19 The daemon's originate since the join moved into FreeSWITCH (invite.build_originate /
build_waiting_app): `originate {...,api_on_originate='sched_hangup +T U ALLOTTED_TIMEOUT'}user/EXT
'm:|:sched_hangup:+T ALLOTTED_TIMEOUT|play_and_get_digits:1 1 TRIES MS TERM PROMPT
silence_stream://250 confguard_key ^[1]$ MS park inline|sched_cancel|JOIN' inline` -- the switch
arms a second timer at the answer, collects the key, cancels the call's timers and joins it; the
client sends nothing for the call but the filters and the originate (and, here, uuid_dump).
conn 'watcher': event plain CHANNEL_EXECUTE CHANNEL_EXECUTE_COMPLETE CHANNEL_HANGUP_COMPLETE (the
app sequence). conn 'daemon': the daemon's subscription (engine.SUBSCRIBED_EVENTS) and filters
(esl.PERMANENT_FILTERS, then Unique-ID U, Job-UUID J, Task-Group U per call).
Call A: user 1001 with sim_dtmf=9@1.5;1@3.75 (a wrong key, then the key), prompt
tone_stream://%(250,250,440);loops=2, MS 5000, T 30, JOIN conference:test1: `uuid_dump A json`
while it waits; DTMF 9, DTMF 1, play_and_get_digits' completion, sched_cancel (two DEL_SCHEDULE of
group A, on the scheduler's next pass: the keys come between two passes), conference
(add-member, floor-change); `uuid_dump A json` in the room.
Call B: user 1001 silent, T 4, MS 1000: nobody presses; api_on_originate's task (armed at
CHANNEL_CREATE) fires 4 s after the originate: hangup ALLOTTED_TIMEOUT, the answer's task goes
with the channel.
Call C: user 1001 with sim_dtmf=1@1.75, T 30, JOIN transfer:7001 XML default (JoinTarget.dialplan,
conf.py's join extension: conference test1@default): the key, sched_cancel, the transfer, the
extension's conference. Then A and C are killed, 0.3 s apart."""

# When the key comes, seconds after the answer: between two of the scheduler's passes (every
# 0.5 s from the answer's task), so the DEL_SCHEDULE of the cancelled tasks comes on the next
# pass, after the join. A key on a pass (1.5 s, 3.5 s) races the scheduler thread: the
# DEL_SCHEDULE came in the same millisecond as add-member, or 0.5 s later.
JOIN_KEY_AT = 1.75


async def scenario_joins_in_switch(recorder: Recorder) -> None:
    watcher = await login(
        recorder, "watcher", "CHANNEL_EXECUTE CHANNEL_EXECUTE_COMPLETE CHANNEL_HANGUP_COMPLETE"
    )
    daemon = await login(recorder, "daemon")
    for header, value in PERMANENT_FILTERS:
        await daemon.command(f"filter {header} {value}")

    async def joined(call_uuid: str, since: int) -> None:
        """add-member and the DEL_SCHEDULE of the call's three tasks (api_on_originate's two, as
        in transcript 15, and the answer's)."""
        await daemon.wait_event("CUSTOM", since=since, Unique_ID=call_uuid, Action="add-member")
        await daemon.wait_event("DEL_SCHEDULE", count=3, since=since, Task_Group=call_uuid)

    call_a = str(uuidlib.uuid4())
    command = daemon_originate(call_a, "1001", prompt=WAITING_PROMPT).replace(
        "}user/", f",sim_dtmf=9@1.5;1@{JOIN_KEY_AT + 2}}}user/"
    )
    since = len(daemon.events)
    await waiting_call(recorder, daemon, call_a, command, "user 1001 (presses 9, then 1)")
    await watcher.wait_event(
        "CHANNEL_EXECUTE", Unique_ID=call_a, Application="play_and_get_digits"
    )
    await asyncio.sleep(0.3)
    await daemon.api(f"uuid_dump {call_a} json")
    await joined(call_a, since)
    await daemon.wait_event("CUSTOM", since=since, Unique_ID=call_a, Action="floor-change")
    await asyncio.sleep(0.3)
    await daemon.api(f"uuid_dump {call_a} json")
    await asyncio.sleep(0.5)

    call_b = str(uuidlib.uuid4())
    command = daemon_originate(call_b, "1001", timeout=4, reprompt_interval=1.0)
    since = len(daemon.events)
    await waiting_call(recorder, daemon, call_b, command, "user 1001 (silent, T 4)")
    hangup = await daemon.wait_event("CHANNEL_HANGUP_COMPLETE", since=since, Unique_ID=call_b)
    if hangup.headers.get("Hangup-Cause") != "ALLOTTED_TIMEOUT":
        raise RecordingError(f"call B: {hangup.headers.get('Hangup-Cause')}")
    await asyncio.sleep(1.5)  # the answer's task, removed with the channel

    call_c = str(uuidlib.uuid4())
    command = daemon_originate(call_c, "1001", join=JoinTarget.dialplan("7001")).replace(
        "}user/", f",sim_dtmf=1@{JOIN_KEY_AT}}}user/"
    )
    since = len(daemon.events)
    await waiting_call(recorder, daemon, call_c, command, "user 1001 (presses 1), join 7001")
    await joined(call_c, since)
    await asyncio.sleep(0.5)

    for call_uuid in (call_a, call_c):
        since = len(watcher.events)
        await hang_up(daemon, call_uuid)
        await watcher.wait_event("CHANNEL_HANGUP_COMPLETE", since=since, Unique_ID=call_uuid)
        await asyncio.sleep(0.3)
    await daemon.close()
    await watcher.close()


Scenario = Callable[[Recorder], Awaitable[None]]
SCENARIOS: dict[str, tuple[Scenario, str]] = {
    "13-broadcast-tone-stream-aleg": (scenario_broadcast, BROADCAST_COMMENT),
    "14-uuid-dump-waiting-and-dead": (scenario_dump, DUMP_COMMENT),
    "15-show-tasks-two-in-group-sched-del": (scenario_tasks, TASKS_COMMENT),
    "16-callees-that-do-not-stay": (scenario_failures, FAILURES_COMMENT),
    "17-xml-locate": (scenario_xml_locate, XML_LOCATE_COMMENT),
    "18-waiting-app-play-and-get-digits": (scenario_waiting_app, WAITING_APP_COMMENT),
    "19-waiting-app-joins-in-switch": (scenario_joins_in_switch, JOINS_IN_SWITCH_COMMENT),
}


async def record(name: str, port: int, out: Path, *, password: str = DEFAULT_PASSWORD) -> Path:
    """Run scenario `name` against the switch on 127.0.0.1:`port`; write `<out>/<name>.txt`
    and `.jsonl` (only when the scenario ran to its end); the stem written."""
    scenario, comment = SCENARIOS[name]
    out.mkdir(parents=True, exist_ok=True)
    recorder = Recorder(port, password=password)
    recorder.add("NOTE", SETUP_NOTE.encode())
    if password != DEFAULT_PASSWORD:
        recorder.note(f"the ESL password is recorded as {DEFAULT_PASSWORD} (the simulator's)")
    try:
        await scenario(recorder)
    finally:
        for connection in recorder.connections:
            if not connection.closed:
                connection.writer.close()
    stem = out / name
    recorder.write(stem, comment)
    return stem


def main(argv: Sequence[str] | None = None) -> int:
    from confguard.realswitch import RealSwitch, find_freeswitch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help=f"scenarios (default all): {', '.join(SCENARIOS)}")
    repo = Path(__file__).resolve().parents[2]
    parser.add_argument("--out", type=Path, default=repo / "tests" / "transcripts")
    parser.add_argument("--run-dir", type=Path, help="the switch's run folder (default: a temp)")
    args = parser.parse_args(argv)
    names = args.names or list(SCENARIOS)
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    with contextlib.ExitStack() as stack:
        run_dir = args.run_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        # A fresh switch per scenario: task ids, session ids and Event-Sequence start over.
        for name in names:
            switch = RealSwitch(find_freeswitch(repo), run_dir / name, password=DEFAULT_PASSWORD)
            switch.start()
            try:
                stem = asyncio.run(record(name, switch.port, args.out))
            finally:
                switch.stop()
            print(f"recorded {stem}.txt and .jsonl", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
