"""Unit tests of confguard.esl against a scripted ESL server (exact wire text) and transcripts."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import structlog
from genesis.protocol.reader_fsm import ESLReaderFSM

from confguard import esl
from confguard.esl import (
    PERMANENT_FILTERS,
    EslAuthError,
    EslConnectError,
    EslConnectionLost,
    EslRejectedError,
    EslSession,
    EslSettings,
    EslTimeoutError,
    parse_event,
)

SECRET = "Zebra-Secret-4242"


# ------------------------------------------------------------------------- scripted server
def _reply(text: str, *extra: tuple[str, str]) -> bytes:
    lines = ["Content-Type: command/reply", f"Reply-Text: {text}"]
    lines += [f"{k}: {v}" for k, v in extra]
    return ("\n".join(lines) + "\n\n").encode()


def _api_response(body: str) -> bytes:
    raw = body.encode()
    return f"Content-Type: api/response\nContent-Length: {len(raw)}\n\n".encode() + raw


def _event_plain(headers: list[tuple[str, str]], body: str | None = None) -> bytes:
    from urllib.parse import quote

    text = "".join(f"{k}: {quote(v, safe='')}\n" for k, v in headers)
    if body is not None:
        text += f"Content-Length: {len(body.encode())}\n\n{body}"
    else:
        text += "\n"
    raw = text.encode()
    return f"Content-Length: {len(raw)}\nContent-Type: text/event-plain\n\n".encode() + raw


class ScriptedEsl:
    """A tiny ESL server on 127.0.0.1: records every command, answers like FreeSWITCH.

    ``api`` commands are answered by ``api_handler`` (None = never answered); ``bgapi`` gets
    ``+OK Job-UUID`` and then a BACKGROUND_JOB whose body echoes the command.
    """

    def __init__(
        self,
        password: str = SECRET,
        *,
        greet: bytes | None = b"Content-Type: auth/request\n\n",
        api_handler: Callable[[str], str | bytes | None] | None = lambda cmd: f"+OK {cmd}\n",
    ) -> None:
        self.password = password
        self.greet = greet
        self.api_handler = api_handler
        self.emit_jobs = True
        self.api_hold: set[str] = set()  # api commands answered only with the next api
        self.commands: list[list[str]] = []  # per connection
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for writer in self.writers:
            writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def drop_all(self) -> None:
        for writer in self.writers:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        log: list[str] = []
        self.commands.append(log)
        try:
            if self.greet is not None:
                writer.write(self.greet)
            authed = False
            held: list[bytes] = []
            while True:
                block = await reader.readuntil(b"\n\n")
                command = block.decode().rstrip("\n")
                log.append(command)
                first = command.split("\n", 1)[0]
                if not authed:
                    if first == f"auth {self.password}":
                        authed = True
                        writer.write(_reply("+OK accepted"))
                    elif first.startswith("auth "):
                        writer.write(_reply("-ERR invalid"))
                        notice = b"Disconnected, goodbye.\n"
                        writer.write(
                            b"Content-Type: text/disconnect-notice\nContent-Length: "
                            + str(len(notice)).encode()
                            + b"\n\n"
                            + notice
                        )
                        await writer.drain()
                        writer.close()
                        return
                    else:
                        writer.write(_reply("-ERR command not found"))
                elif first.startswith("api "):
                    assert self.api_handler is not None
                    body = self.api_handler(first[4:])
                    if isinstance(body, bytes):
                        writer.write(body)  # a raw frame instead of an api/response
                    elif body is not None and first[4:] in self.api_hold:
                        held.append(_api_response(body))  # answered with the next command
                        continue
                    elif body is not None:
                        writer.write(b"".join(held) + _api_response(body))
                        held.clear()
                elif first.startswith("bgapi "):
                    job = command.split("Job-UUID: ", 1)[1]
                    writer.write(_reply(f"+OK Job-UUID: {job}", ("Job-UUID", job)))
                    if self.emit_jobs:
                        writer.write(
                            _event_plain(
                                [("Event-Name", "BACKGROUND_JOB"), ("Job-UUID", job)],
                                f"+OK {first[6:]}\n",
                            )
                        )
                elif first.startswith("event "):
                    writer.write(_reply(f"+OK event listener enabled {first.split()[1]}"))
                elif first.startswith("filter delete "):
                    writer.write(_reply(f"+OK filter deleted. [{first[14:]}]"))
                elif first.startswith("filter "):
                    writer.write(_reply(f"+OK filter added. [{first[7:]}]"))
                else:
                    writer.write(_reply("-ERR command not found"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def send_all(self, data: bytes) -> None:
        for writer in self.writers:
            if not writer.is_closing():
                writer.write(data)


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedEsl]:
    server = ScriptedEsl()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def settings_for(port: int, **overrides: object) -> EslSettings:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "password": SECRET,
        "connect_timeout": 2.0,
        "auth_timeout": 2.0,
        "command_timeout": 2.0,
        "heartbeat_interval": 5.0,
        "reconnect_initial": 0.05,
        "reconnect_max": 0.2,
    }
    values.update(overrides)
    return EslSettings(**values)  # type: ignore[arg-type]


async def _until(predicate: Callable[[], bool], timeout: float = 4.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


# ------------------------------------------------------------------------------- settings
def test_settings_repr_hides_password() -> None:
    settings = EslSettings(password=SECRET)
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)
    assert settings.host_port == "127.0.0.1:8021"


@pytest.mark.parametrize(
    "bad",
    [{"port": 0}, {"command_timeout": 0}, {"password": "a\nb"}, {"event_format": "xml"}],
)
def test_settings_validation(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        EslSettings(**bad)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- parsing
def _frames_of(path: Path, content_type: str) -> list[bytes]:
    """Whole S->C frames of one content type from a .txt transcript."""
    data = path.read_bytes()
    frames: list[bytes] = []
    pos = 0
    while True:
        start = data.find(b"\n#### ", pos)
        if start < 0:
            break
        head_end = data.index(b"\n", start + 1)
        head = data[start + 1 : head_end].decode()
        length = int(head.split("(", 1)[1].split(" ", 1)[0])
        payload = data[head_end + 1 : head_end + 1 + length]
        pos = head_end + 1 + length
        if "S->C" in head and head.endswith(f"[{content_type}]"):
            frames.append(payload)
    return frames


def _genesis_parse(frame: bytes) -> tuple[dict[str, object], str | None]:
    fsm = ESLReaderFSM()
    header_end = frame.index(b"\n\n") + 2
    events, length = fsm.process_headers(frame[:header_end].decode())
    if length:
        events = fsm.process_body(frame[header_end : header_end + length])
    assert len(events) == 1
    return dict(events[0].data), events[0].body


def test_parse_plain_events_from_transcript(transcripts_dir: Path) -> None:
    frames = _frames_of(transcripts_dir / "02-events-plain.txt", "text/event-plain")
    parsed = [parse_event(*_genesis_parse(f)) for f in frames]
    assert all(p is not None for p in parsed)
    by_name: dict[str, esl.EslEvent] = {}
    for p in parsed:
        assert p is not None
        by_name.setdefault(p.name, p)  # the first of each name: the -a leg
    job = by_name["BACKGROUND_JOB"]
    assert job.job_uuid == "3e1491ae-506f-4417-8757-7f04ca175b0f"
    assert job.body == "+OK d20fa082-295d-4ea5-90a4-7f253b045767\n"
    assert (job.get("Job-Command-Arg") or "").startswith("{origination_uuid=d20fa082")
    assert "Content-Type" not in job.headers
    hangup = by_name["CHANNEL_HANGUP_COMPLETE"]
    assert isinstance(hangup.get("Hangup-Cause"), str)  # repeated header -> first value
    assert hangup.get("Hangup-Cause") == "NORMAL_CLEARING"
    create = by_name["CHANNEL_CREATE"]
    assert create.get("FreeSWITCH-IPv6") == "fd00::2"  # URL-decoded
    assert create.uuid == "d20fa082-295d-4ea5-90a4-7f253b045767"
    assert create.body is None and "Content-Length" not in create.headers


def test_parse_json_events_from_transcript(transcripts_dir: Path) -> None:
    frames = _frames_of(transcripts_dir / "03-events-json.txt", "text/event-json")
    parsed = [parse_event(*_genesis_parse(f)) for f in frames]
    by_name: dict[str, esl.EslEvent] = {}
    for p in parsed:
        assert p is not None
        by_name.setdefault(p.name, p)
    job = by_name["BACKGROUND_JOB"]
    assert job.job_uuid == "88b24af3-ecd0-4599-8f8d-b175bbce7ffe"
    assert job.body == "+OK 59a3aa6d-6ea4-4edb-8b4f-89ef91a96181\n"
    assert "_body" not in job.headers
    dtmf = by_name["DTMF"]
    assert dtmf.get("DTMF-Digit") == "1"
    assert dtmf.uuid == "59a3aa6d-6ea4-4edb-8b4f-89ef91a96181"


def test_parse_event_ignores_other_types() -> None:
    assert parse_event({"Content-Type": "command/reply", "Reply-Text": "+OK"}, None) is None


def test_parse_event_json_repeated_header_takes_first() -> None:
    body = '{"Event-Name":"X","Hangup-Cause":["A","B"],"_body":"hi"}'
    event = parse_event({"Content-Type": "text/event-json"}, body)
    assert event is not None and event.get("Hangup-Cause") == "A" and event.body == "hi"


# ------------------------------------------------------------------------------ connect
async def test_connect_refused_names_host_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    session = EslSession(settings_for(port))
    with pytest.raises(EslConnectError) as info:
        await session.connect()
    assert f"127.0.0.1:{port}" in str(info.value)
    assert SECRET not in str(info.value)


async def test_auth_request_never_comes_times_out() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def silent(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        writers.append(w)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        session = EslSession(settings_for(port, auth_timeout=0.2))
        with pytest.raises(EslTimeoutError) as info:
            await session.connect()
        assert f"127.0.0.1:{port}" in str(info.value) and "auth/request" in str(info.value)
        assert SECRET not in str(info.value)
        assert not session.connected
    finally:
        for w in writers:
            w.close()
        server.close()
        await server.wait_closed()


async def test_wrong_password_scripted(scripted: ScriptedEsl) -> None:
    session = EslSession(settings_for(scripted.port, password="Wrong-Zebra-9"))
    with pytest.raises(EslAuthError) as info:
        await session.connect()
    assert "Wrong-Zebra-9" not in str(info.value) and "Wrong-Zebra-9" not in repr(info.value)
    assert f"127.0.0.1:{scripted.port}" in str(info.value)


async def test_rude_rejection_scripted() -> None:
    text = b"Access Denied, go away.\n"
    server = ScriptedEsl(
        greet=b"Content-Type: text/rude-rejection\nContent-Length: "
        + str(len(text)).encode()
        + b"\n\n"
        + text
    )
    await server.start()
    try:
        with pytest.raises(EslRejectedError):
            await EslSession(settings_for(server.port)).connect()
    finally:
        await server.stop()


# --------------------------------------------------------------------------- wire text
async def test_connect_subscribes_and_keeps_permanent_filters(scripted: ScriptedEsl) -> None:
    session = EslSession(settings_for(scripted.port))
    await session.connect()
    try:
        await session.subscribe(["CHANNEL_CREATE", "conference::maintenance", "CUSTOM", "DTMF"])
        await session.add_filter("Unique-ID", "abc")
        await session.add_filter("Unique-ID", "abc")  # reference-counted: no second command
        await session.del_filter("Unique-ID", "abc")
        await session.del_filter("Unique-ID", "abc")
        await session.del_filter("Unique-ID", "never-added")
        await session.del_filter("Event-Name", "HEARTBEAT")  # permanent: never deleted
    finally:
        await session.close()
    sent = scripted.commands[0]
    assert sent[0] == f"auth {SECRET}"
    assert sent[1] == "event plain HEARTBEAT BACKGROUND_JOB"
    permanent = [f"filter {header} {value}" for header, value in PERMANENT_FILTERS]
    assert sent[2:2 + len(permanent)] == permanent
    rest = sent[2 + len(permanent):]
    assert rest[0] == (
        "event plain HEARTBEAT BACKGROUND_JOB CHANNEL_CREATE DTMF CUSTOM conference::maintenance"
    )
    assert rest[1:] == ["filter Unique-ID abc", "filter delete Unique-ID abc"]


async def test_bgapi_wire_and_correlation(scripted: ScriptedEsl) -> None:
    session = EslSession(settings_for(scripted.port))
    await session.connect()
    try:
        result = await session.bgapi("status", job_uuid="job-1")
        assert result == "+OK status\n"
        results = await asyncio.gather(*(session.bgapi(f"echo {i}") for i in range(200)))
        assert results == [f"+OK echo {i}\n" for i in range(200)]
    finally:
        await session.close()
    assert "bgapi status\nJob-UUID: job-1" in scripted.commands[0]
    jobs = [c.split("Job-UUID: ")[1] for c in scripted.commands[0] if c.startswith("bgapi echo")]
    assert len(set(jobs)) == 200 and all(len(j) == 36 for j in jobs)


async def test_caller_text_cannot_add_wire_lines(scripted: ScriptedEsl) -> None:
    session = EslSession(settings_for(scripted.port))
    await session.connect()
    try:
        for bad in ("status\nexit", "status\r", "", "  "):
            with pytest.raises(ValueError):
                await session.api(bad)
            with pytest.raises(ValueError):
                await session.bgapi(bad)
        with pytest.raises(ValueError):
            await session.bgapi_start("status", "x" * 37)
        with pytest.raises(ValueError):
            await session.bgapi_start("status", "a b")
        for value in ("a\nexit", "a\n", "a\r", "a b", ""):
            with pytest.raises(ValueError):
                await session.add_filter("Unique-ID", value)
            with pytest.raises(ValueError):
                await session.del_filter("Unique-ID", value)
            with pytest.raises(ValueError):
                await session.bgapi_start("status", value)
        with pytest.raises(ValueError):
            await session.add_filter("Unique ID", "a")
        with pytest.raises(ValueError):
            await session.subscribe(["CHANNEL_CREATE\nexit"])
    finally:
        await session.close()
    assert scripted.commands[0][-1].startswith("filter Event-Name")  # nothing after setup


async def test_command_timeout_drops_the_link_replies_stay_matched(scripted: ScriptedEsl) -> None:
    scripted.api_hold = {"slow"}  # its reply comes late: just before the next command's
    session = EslSession(settings_for(scripted.port, command_timeout=0.3))
    await session.connect()
    try:
        with pytest.raises(EslTimeoutError) as info:
            await session.api("slow")
        assert "api" in str(info.value) and f"127.0.0.1:{scripted.port}" in str(info.value)
        # the late reply of "slow" must not be taken for the reply of the next command: the
        # timed-out connection is dropped, and the next one starts with no reply owed
        async with asyncio.timeout(4):
            while session.reconnects < 1 or not session.connected:
                await asyncio.sleep(0.02)
        assert session.last_disconnect_reason == "no reply to api within 0.3 s"
        assert await session.api("next") == "+OK next\n"
        assert await session.api("after") == "+OK after\n"
    finally:
        await session.close()


async def test_dropped_connection_fails_waiters_and_reconnects(scripted: ScriptedEsl) -> None:
    states: list[str] = []
    resynced = asyncio.Event()

    async def on_reconnect() -> None:
        resynced.set()

    scripted.api_handler = lambda cmd: None if cmd == "slow" else f"{cmd}\n"
    session = EslSession(
        settings_for(scripted.port), on_reconnect=on_reconnect, on_state=states.append
    )
    await session.connect()
    try:
        await session.add_filter("Unique-ID", "keep-me")
        await session.add_filter("Unique-ID", "drop-me")
        await session.del_filter("Unique-ID", "drop-me")
        pending = asyncio.create_task(session.api("slow"))
        await asyncio.sleep(0.05)
        scripted.drop_all()
        with pytest.raises(EslConnectionLost):
            await pending
        await asyncio.wait_for(resynced.wait(), 4)
        assert session.connected and session.reconnects == 1
        assert await session.api("status") == "status\n"
    finally:
        await session.close()
    assert states[:3] == ["connected", "disconnected", "connected"] and states[-1] == "closed"
    second = scripted.commands[1]
    assert second[1] == "event plain HEARTBEAT BACKGROUND_JOB"
    assert second[2:5 + 2] == [
        "filter Event-Name HEARTBEAT",
        "filter Event-Name BACKGROUND_JOB",
        "filter Event-Name ADD_SCHEDULE",
        "filter Event-Name DEL_SCHEDULE",
        "filter Unique-ID keep-me",
    ]


async def test_invalid_utf8_kills_genesis_reader_and_is_detected(scripted: ScriptedEsl) -> None:
    resynced = asyncio.Event()

    async def on_reconnect() -> None:
        resynced.set()

    session = EslSession(settings_for(scripted.port), on_reconnect=on_reconnect)
    await session.connect()
    try:
        scripted.send_all(b"Content-Type: text/event-plain\nX-Bad: \xff\xfe\n\n")
        await asyncio.wait_for(resynced.wait(), 4)
        assert session.last_disconnect_reason is not None
        assert "UnicodeDecodeError" in session.last_disconnect_reason
        assert await session.api("status") == "+OK status\n"
    finally:
        await session.close()


async def test_silent_socket_detected_by_heartbeat(scripted: ScriptedEsl) -> None:
    states: list[str] = []
    session = EslSession(
        settings_for(scripted.port, heartbeat_interval=0.1), on_state=states.append
    )
    await session.connect()
    try:
        # the scripted server sends no HEARTBEAT: 2 x 0.1 s of silence is a dead socket
        await _until(lambda: session.reconnects >= 1)
        assert "disconnected" in states
        assert session.last_disconnect_reason is not None
        assert "heartbeat" in session.last_disconnect_reason
    finally:
        await session.close()


async def test_events_in_wire_order_single_consumer(scripted: ScriptedEsl) -> None:
    session = EslSession(settings_for(scripted.port))
    await session.connect()
    try:
        stream = session.events()
        with pytest.raises(RuntimeError):
            session.events()
        frames = b"".join(
            _event_plain([("Event-Name", "CUSTOM"), ("Event-Sequence", str(i))]) for i in range(500)
        )
        scripted.send_all(frames)
        seen = []
        async for event in stream:
            seen.append(int(event.get("Event-Sequence") or -1))
            if len(seen) == 500:
                break
        assert seen == list(range(500))
    finally:
        await session.close()


async def test_close_leaves_no_tasks_and_never_reconnects(scripted: ScriptedEsl) -> None:
    before = asyncio.all_tasks()
    session = EslSession(settings_for(scripted.port))
    await session.connect()
    stream = session.events()
    await session.close()
    await asyncio.sleep(0.05)
    stray = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert stray == []
    scripted.drop_all()
    await asyncio.sleep(0.2)
    assert session.reconnects == 0 and len(scripted.commands) == 1
    assert [e async for e in stream] == []
    with pytest.raises(EslConnectionLost):
        await session.api("status")


# ------------------------------------------------------------------------------ logging
@pytest.fixture
def genesis_debug() -> Iterator[logging.Logger]:
    logger = logging.getLogger(esl.GENESIS_LOGGER_NAME)
    level = logger.level
    route = esl.route_genesis_logging(logging.DEBUG)
    try:
        yield route
    finally:
        logger.setLevel(level)


async def test_password_never_in_logs_or_errors(
    scripted: ScriptedEsl, genesis_debug: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    from rich.logging import RichHandler

    assert not any(isinstance(h, RichHandler) for h in genesis_debug.handlers)
    texts: list[str] = []
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as captured:
        session = EslSession(settings_for(scripted.port))
        texts.append(repr(session))
        await session.connect()
        await session.api("status")
        await session.bgapi("status")
        await session.close()
        wrong = EslSession(settings_for(scripted.port, password="Wrong-Zebra-9"))
        with pytest.raises(EslAuthError) as info:
            await wrong.connect()
        texts += [str(info.value), repr(info.value)]
        # genesis's own habit: it logs every command it sends, auth included
        genesis_debug.debug(f"Send command: auth {SECRET}")
        genesis_debug.debug("Send command: %s", "auth Wrong-Zebra-9")
    texts += [repr(entry) for entry in captured]
    texts.append(caplog.text)
    joined = "\n".join(texts)
    assert any("auth <redacted>" in repr(entry) for entry in captured)  # the record went through
    assert SECRET not in joined
    assert "Wrong-Zebra-9" not in joined


def test_redact() -> None:
    esl.register_secret("p@ss word")
    assert esl.redact("Send command: auth hunter2") == "Send command: auth <redacted>"
    assert "p@ss word" not in esl.redact("x p@ss word y")
    assert esl.redact("authentication failed") == "authentication failed"


async def test_bgapi_job_timeout_and_bgapi_start(scripted: ScriptedEsl) -> None:
    scripted.emit_jobs = False
    session = EslSession(settings_for(scripted.port))
    await session.connect()
    try:
        with pytest.raises(EslTimeoutError) as info:
            await session.bgapi("status", job_uuid="job-late", timeout=0.2)
        assert "job-late" in str(info.value)
        await session.bgapi_start("status", "job-started")  # returns at +OK Job-UUID
        assert "bgapi status\nJob-UUID: job-started" in scripted.commands[0]
    finally:
        await session.close()


async def test_api_answered_by_command_reply_raises(scripted: ScriptedEsl) -> None:
    scripted.api_handler = lambda cmd: _reply("-ERR command not found")
    session = EslSession(settings_for(scripted.port))
    await session.connect()
    try:
        with pytest.raises(esl.EslCommandError) as info:
            await session.api("status")
        assert "-ERR command not found" in str(info.value)
    finally:
        await session.close()


async def test_subscription_and_filters_before_connect_are_sent_at_connect(
    scripted: ScriptedEsl,
) -> None:
    session = EslSession(settings_for(scripted.port))
    await session.subscribe(["DTMF"])
    await session.add_filter("Unique-ID", "early")
    with pytest.raises(EslConnectionLost):
        await session.api("status")  # commands need a connection
    await session.connect()
    await session.close()
    assert scripted.commands[0][1:7] == [
        "event plain HEARTBEAT BACKGROUND_JOB DTMF",
        "filter Event-Name HEARTBEAT",
        "filter Event-Name BACKGROUND_JOB",
        "filter Event-Name ADD_SCHEDULE",
        "filter Event-Name DEL_SCHEDULE",
        "filter Unique-ID early",
    ]


async def test_close_while_reconnecting_to_a_dead_server() -> None:
    server = ScriptedEsl()
    await server.start()
    before = asyncio.all_tasks()
    states: list[str] = []
    session = EslSession(settings_for(server.port), on_state=states.append)
    await session.connect()
    await server.stop()  # no listener any more: every reconnect attempt is refused
    await _until(lambda: "disconnected" in states)
    await asyncio.sleep(0.3)  # a few refused attempts
    assert not session.connected and session.reconnects == 0
    await session.close()
    await asyncio.sleep(0.05)
    assert [t for t in asyncio.all_tasks() - before if not t.done()] == []
    assert states[-1] == "closed"


def test_genesis_records_reach_confguard_logs_redacted(genesis_debug: logging.Logger) -> None:
    """With confguard.logs set up, a genesis record comes out once, as JSON, without the secret."""
    import io
    import json

    from confguard.logs import configure_logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    saved = structlog.get_config()
    stream = io.StringIO()
    try:
        configure_logging(format="json", level="debug", stream=stream)
        esl.route_genesis_logging(logging.DEBUG)
        genesis_debug.debug(f"Send command: auth {SECRET}")
        genesis_debug.warning("Error reading from stream. boom")
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)
        structlog.configure(**saved)
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    assert [line["event"] for line in lines] == [
        "Send command: auth <redacted>",
        "Error reading from stream. boom",
    ]
    assert SECRET not in stream.getvalue()


async def test_slow_on_reconnect_does_not_stop_liveness(scripted: ScriptedEsl) -> None:
    calls: list[int] = []

    async def on_reconnect() -> None:
        calls.append(1)
        await asyncio.sleep(3600)  # a resync that never finishes

    before = asyncio.all_tasks()
    session = EslSession(settings_for(scripted.port), on_reconnect=on_reconnect)
    await session.connect()
    scripted.drop_all()
    await _until(lambda: len(calls) == 1)
    scripted.drop_all()  # lost again while the first resync still runs
    await _until(lambda: len(calls) == 2)
    assert session.reconnects == 2
    await session.close()
    await asyncio.sleep(0.05)
    assert [t for t in asyncio.all_tasks() - before if not t.done()] == []
