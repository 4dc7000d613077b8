"""The two FreeSWITCH peers an end-to-end scenario runs against, and the link to them.

- `SimPeer`: `confguard.sim` in the test's event loop, at time scale 0.1 (a peer second lasts
  0.1 s), with a non-default password.
- `RealPeer`: the session's real FreeSWITCH (`confguard.realswitch`, started by the `realfs`
  fixture in conftest.py), in real time, with its generated password.
Both answer the same questions the same way (`api`, `tasks_of`, `members`, `exists`, `watch`) and
suffer the same faults (`vanish`: every call gone without a word, as when the process dies;
`shutdown_and_start`: `fsctl shutdown`, then start again on the same port), so that one scenario
with one set of assertions runs unchanged on both.

`EslLink` is a TCP relay on 127.0.0.1 between the daemon and the peer. It can cut the link (both
sockets closed at once, as a firewall reset does; the daemon reconnects through it), and it keeps
what crossed it: every command the daemon sent and every frame the peer sent back (`Traffic`),
for the differential check between the peers.

`start_daemon` runs a `Daemon` in the test's event loop on a peer, through a link, with its
socket and journal in a folder the test keeps (so a second one adopts what the first left).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from confguard.config import load_config
from confguard.daemon import Daemon
from confguard.esl import EslSession, EslSettings
from confguard.realswitch import RealSwitch
from confguard.sim import SimConfig, Simulator, wire

SIM_PASSWORD = "Sim-Peer-Pw-8c2f41"  # not ClueCon: the daemon must be given the right one
SIM_SCALE = 0.1


class Peer:
    """What a scenario needs of a FreeSWITCH; see the module docstring."""

    name: str
    scale: float  # real seconds per peer second
    password: str
    password_file: Path

    @property
    def port(self) -> int:
        raise NotImplementedError

    def secs(self, real_seconds: float) -> int:
        """Whole peer seconds that last at least `real_seconds` of real time."""
        return max(1, math.ceil(real_seconds / self.scale - 1e-9))

    def real(self, peer_seconds: float) -> float:
        return peer_seconds * self.scale

    def settings(self) -> EslSettings:
        return EslSettings(host="127.0.0.1", port=self.port, password=self.password)

    async def api(self, command: str) -> str:
        raise NotImplementedError

    async def tasks_of(self, call_uuid: str) -> list[dict[str, str]]:
        rows = json.loads(await self.api("show tasks as json")).get("rows", [])
        return [row for row in rows if row.get("task_group") == call_uuid]

    async def no_task_left(self, call_uuid: str) -> bool:
        """True once `show tasks` (a mirror that lags up to ~0.5 s, FACTS.md) lists none."""
        deadline = time.monotonic() + 2.0
        while await self.tasks_of(call_uuid):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    async def members(self, room: str) -> list[str]:
        """The uuids `conference <room> list` shows (none when the room does not exist)."""
        reply = await self.api(f"conference {room} list")
        if reply.startswith("-ERR"):
            return []
        return [line.split(";")[2] for line in reply.splitlines() if line.count(";") >= 3]

    async def exists(self, call_uuid: str) -> bool:
        return (await self.api(f"uuid_exists {call_uuid}")).strip() == "true"

    async def channel_count(self) -> int:
        return int(json.loads(await self.api("show channels as json")).get("row_count", 0))

    async def clean(self) -> None:
        """Hang up whatever a scenario left, so the next one starts from an idle switch."""
        if await self.channel_count():
            await self.api("hupall NORMAL_CLEARING")
        deadline = time.monotonic() + 5.0
        while await self.channel_count() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    async def vanish(self) -> None:
        """Every call and task gone without events, clients cut (the process died)."""
        raise NotImplementedError

    async def shutdown_and_start(self) -> None:
        """`fsctl shutdown` (SHUTDOWN, hangups with SYSTEM_SHUTDOWN, notices), then start again."""
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def watch(self, call_uuid: str) -> AsyncIterator[Watcher]:
        """An own ESL connection that sees `call_uuid`'s hangup (cause and when)."""
        session = EslSession(self.settings())
        await session.connect()
        watcher = Watcher(session, call_uuid)
        try:
            await session.subscribe(["CHANNEL_HANGUP_COMPLETE"])
            await session.add_filter("Unique-ID", call_uuid)
            watcher.task = asyncio.create_task(watcher.run())
            yield watcher
        finally:
            if watcher.task is not None:
                watcher.task.cancel()
            await session.close()


@dataclass
class Watcher:
    session: EslSession
    call_uuid: str
    cause: str | None = None
    at: float | None = None  # time.monotonic() of the hangup event
    task: asyncio.Task[None] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        async for event in self.session.events():
            if event.name == "CHANNEL_HANGUP_COMPLETE" and event.uuid == self.call_uuid:
                self.cause = event.get("Hangup-Cause")
                self.at = time.monotonic()
                self.done.set()
                return

    async def hangup(self, within: float) -> str | None:
        await asyncio.wait_for(self.done.wait(), within)
        return self.cause


class SimPeer(Peer):
    name = "sim"
    scale = SIM_SCALE
    password = SIM_PASSWORD

    def __init__(self, workdir: Path, scale: float = SIM_SCALE) -> None:
        self.scale = scale
        self.password_file = workdir / "sim-password"
        self.password_file.write_text(SIM_PASSWORD + "\n")
        self.password_file.chmod(0o600)
        self.sim: Simulator | None = None
        self._port = 0

    def _config(self) -> SimConfig:
        return SimConfig(host="127.0.0.1", port=self._port, password=SIM_PASSWORD,
                         time_scale=self.scale, heartbeat_interval=20.0)

    async def start(self) -> None:
        self.sim = Simulator(self._config())
        await self.sim.start()
        self._port = self.sim.port

    async def stop(self) -> None:
        if self.sim is not None:
            await self.sim.stop()

    async def __aenter__(self) -> SimPeer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self._port

    async def api(self, command: str) -> str:
        assert self.sim is not None
        return await self.sim.switch.api(command)

    async def vanish(self) -> None:
        assert self.sim is not None
        self.sim.faults.restart()

    async def shutdown_and_start(self) -> None:
        assert self.sim is not None
        async with EslSession(self.settings()) as session:
            with contextlib.suppress(Exception):
                await session.api("fsctl shutdown")
        await asyncio.wait_for(self.sim.wait_shut_down(), 10)
        await self.sim.stop()
        await self.start()


class RealPeer(Peer):
    name = "real"
    scale = 1.0

    def __init__(self, switch: RealSwitch) -> None:
        self.switch = switch
        self.password = switch.password
        self.password_file = switch.password_file()

    @property
    def port(self) -> int:
        return self.switch.port

    async def api(self, command: str) -> str:
        return await self.switch.api(command)

    async def vanish(self) -> None:
        await asyncio.to_thread(self.switch.kill)
        await asyncio.to_thread(self.switch.start)

    async def shutdown_and_start(self) -> None:
        async with EslSession(self.settings()) as session:
            with contextlib.suppress(Exception):
                await session.api("fsctl shutdown")
        code = await asyncio.to_thread(self.switch.wait_stopped, 20.0)
        assert code is not None, "FreeSWITCH did not exit after fsctl shutdown"
        await asyncio.to_thread(self.switch.start)


# ------------------------------------------------------------------------------ the link


@dataclass
class Traffic:
    """What crossed one relayed connection: commands (client to switch), frames (back)."""

    commands: list[str] = field(default_factory=list)  # command lines, auth redacted
    frames: list[wire.ServerFrame] = field(default_factory=list)

    def replies(self) -> list[str]:
        return [
            frame.body.decode(errors="replace") if frame.content_type == "api/response"
            else (frame.header("Reply-Text") or "")
            for frame in self.frames
            if frame.content_type in ("api/response", "command/reply")
        ]

    def api_replies(self) -> list[tuple[str, str]]:
        """(command, reply) of each `api` command; replies come in command order (FACTS.md)."""
        pairs = zip(self.commands, self.replies(), strict=False)
        return [(cmd, reply) for cmd, reply in pairs if cmd.startswith("api ")]

    def events(self) -> list[dict[str, str]]:
        return [event_headers(f) for f in self.frames if f.content_type.startswith("text/event")]


def event_name(headers: dict[str, str]) -> str:
    name = headers.get("Event-Name", "")
    return headers.get("Event-Subclass", name) if name == "CUSTOM" else name


def event_headers(frame: wire.ServerFrame) -> dict[str, str]:
    if frame.content_type == "text/event-json":
        return {k: str(v) for k, v in json.loads(frame.body).items()}
    headers, _ = wire.parse_plain_event(frame.body)
    out: dict[str, str] = {}
    for name, value in headers:
        out.setdefault(name, unquote(value))
    return out


class EslLink:
    """A relay 127.0.0.1:<port> -> the peer, recording both directions; `cut()` resets it."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.connections: list[Traffic] = []  # one per relayed connection, in order
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connection_count(self) -> int:
        return len(self.connections)

    def commands(self) -> list[str]:
        """Every command the daemon sent, over every connection."""
        return [cmd for traffic in self.connections for cmd in traffic.commands]

    def api_replies(self) -> list[tuple[str, str]]:
        return [pair for traffic in self.connections for pair in traffic.api_replies()]

    def call_events(self, call_uuid: str) -> list[dict[str, str]]:
        """The events about one call the daemon received, in order (headers decoded)."""
        return [
            headers
            for traffic in self.connections
            for headers in traffic.events()
            if call_uuid in (headers.get("Unique-ID"), headers.get("Task-Group"))
        ]

    def event_names(self, call_uuid: str) -> list[str]:
        """The names of the call's events (CUSTOM: its subclass)."""
        return [event_name(headers) for headers in self.call_events(call_uuid)]

    def cut(self) -> None:
        """Close every relayed connection at once, no notice (the daemon must reconnect)."""
        for writer in self._writers:
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.peer.port)
        except OSError:
            writer.transport.abort()
            return
        traffic = Traffic()
        self.connections.append(traffic)
        self._writers += [writer, up_writer]
        tasks = [
            asyncio.create_task(self._pump(reader, up_writer, _client_recorder(traffic))),
            asyncio.create_task(self._pump(up_reader, writer, _server_recorder(traffic))),
        ]
        self._tasks.update(tasks)
        for task in tasks:
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: Callable[[bytes], None]
    ) -> None:
        try:
            while data := await reader.read(65536):
                record(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError, wire.WireError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.transport.abort()


def _client_recorder(traffic: Traffic) -> Callable[[bytes], None]:
    parser = wire.CommandParser()

    def feed(data: bytes) -> None:
        for command in parser.feed(data):
            line = command.line
            traffic.commands.append("auth <redacted>" if line.startswith("auth ") else line)

    return feed


def _server_recorder(traffic: Traffic) -> Callable[[bytes], None]:
    parser = wire.FrameParser()

    def feed(data: bytes) -> None:
        traffic.frames.extend(parser.feed(data))

    return feed


# --------------------------------------------------------------------- normalised traffic

_INVITE_ID = re.compile(r"confguard_invite=[0-9a-f]+")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NUMBER = re.compile(r"\b\d+\b")


def normalise_command(line: str, call_uuid: str) -> str:
    """A command with the call's uuid as U, other uuids as J, the invite id as I, numbers N."""
    line = line.replace(call_uuid, "U")
    line = _INVITE_ID.sub("confguard_invite=I", line)
    line = _UUID.sub("J", line)
    return _NUMBER.sub("N", line)


def daemon_overrides(peer: Peer, link: EslLink, tmp_path: Path) -> dict[str, object]:
    """The settings of a test daemon on `peer` through `link` (socket and journal in tmp_path)."""
    return {
        "esl.host": "127.0.0.1",
        "esl.port": link.port,
        "esl.password_file": str(peer.password_file),
        "esl.reconnect_initial": 0.2,
        "esl.reconnect_max": 1.0,
        "api.socket": str(tmp_path / "confguard.sock"),
        "journal.path": str(tmp_path / "journal.sqlite3"),
        "invite.prompt": "tone_stream://%(200,100,440)",
    }


async def start_daemon(
    peer: Peer, link: EslLink, tmp_path: Path, **overrides: object
) -> tuple[Daemon, asyncio.Task[int]]:
    """A daemon on the peer (`overrides`: more settings by dotted key), once it is linked."""
    config = load_config(None, env={}, overrides={**daemon_overrides(peer, link, tmp_path),
                                                  **overrides})
    running = Daemon(config, handle_signals=False)
    task = asyncio.create_task(running.run())
    await asyncio.wait_for(running.linked.wait(), 15)
    return running, task
