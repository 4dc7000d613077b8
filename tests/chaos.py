"""The chaos soak: many invites through a faulty ESL link, then every invite checked against the
switch itself.

Owns the machinery of tests/test_chaos.py and of the stand-alone measurement
(`python -m tests.chaos measure`):
- `ChaosRelay`: tests/peers.py's recording `EslLink`, plus a stall (no byte passes either way on
  the connections open at that moment) and a garbage frame written toward the daemon between two
  whole frames (`Content-Length: twelve`, confguard.sim.faults.MALFORMED_FRAME);
- `SwitchWatcher`: its own ESL connection straight to the peer (not through the relay) that
  records every call's create, answer, DTMF, hangup, timer tasks and conference add-member; on
  the real switch it also fires a HEARTBEAT every half second (`sendevent HEARTBEAT`), standing
  in for `event-heartbeat-interval`, so that the daemon can run with `heartbeat_interval = 1`;
- `Sampler`: `show tasks as json` and `conference <room> list` every ~0.5 s;
- `Soak`: the daemon as its own process (test_e2e.ServeProcess), a steady rate of invites with
  mixed callee behaviours (per-call `sim_*` variables) through the control API, faults at seeded
  random moments (ESL reset, ESL stall, garbage frame, daemon SIGKILL and restart, switch
  restart), then the drain and `analyse`, which checks every invite the journal knows:
  exactly one outcome; joined ⇔ an add-member for its uuid; `lost` only for a call the switch
  no longer had (or a switch restart took); a key the switch recorded before the call's timer
  fired ⇒ joined; an answered, live, not-yet-joined call always has a task; nothing
  (filter, task, channel) left at the end.
`Report.table()` prints invites, faults by kind, outcomes, violations.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_TESTS = Path(__file__).resolve().parent
if str(_TESTS) not in sys.path:  # `python -m tests.chaos`: the test helpers import as in pytest
    sys.path.insert(0, str(_TESTS))

from peers import (  # noqa: E402
    EslLink,
    Peer,
    RealPeer,
    SimPeer,
    Traffic,
    _client_recorder,
    event_headers,
)
from test_e2e import ServeProcess  # noqa: E402

from confguard.api import ApiError, ControlClient, DaemonUnreachable  # noqa: E402
from confguard.sim import SimConfig, wire  # noqa: E402
from confguard.sim.faults import MALFORMED_FRAME  # noqa: E402

ROOM = "test1"
LINK_FAULTS = ("esl_reset", "esl_stall", "garbage_frame")
RESTART_SLACK = 0.25  # s: events of a call created just before a restart reach the watcher after
FAULT_KINDS = ("esl_reset", "esl_stall", "garbage_frame", "daemon_kill", "switch_restart")
HEARTBEAT_INTERVAL = 1.0  # the daemon's heartbeat_interval (its minimum): silence > 2 s is a loss
STALL_SECONDS = 2 * HEARTBEAT_INTERVAL + 0.3  # more than two heartbeats
TASK_LAG = 0.5  # real s: `show tasks` mirrors the scheduler late (FACTS.md), and the sample period
KEY_MARGIN = 0.5  # real s: a key this close before the timer fired cannot be saved by anyone
WATCHED_EVENTS = (
    "CHANNEL_CREATE CHANNEL_ANSWER CHANNEL_HANGUP_COMPLETE DTMF ADD_SCHEDULE DEL_SCHEDULE "
    "CUSTOM conference::maintenance"
)


# ------------------------------------------------------------------------------ the relay


@dataclass(eq=False)
class RelayedConnection:
    """One daemon connection through the relay: its traffic, sockets and stall gate."""

    traffic: Traffic
    down: asyncio.StreamWriter  # toward the daemon
    up: asyncio.StreamWriter  # toward the peer
    parser: wire.FrameParser = field(default_factory=wire.FrameParser)
    flowing: asyncio.Event = field(default_factory=asyncio.Event)
    pending_garbage: list[bytes] = field(default_factory=list)
    open: bool = True
    opened: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.flowing.set()

    def settled(self) -> bool:
        """The daemon is on the switch through this connection: subscribed, its permanent
        filters in, and up a moment (a link fault aimed at a working link, not a handshake)."""
        return (
            self.open
            and time.monotonic() - self.opened >= 0.3
            and any(line.startswith("event ") for line in self.traffic.commands)
            and ("Event-Name", "BACKGROUND_JOB") in self.filters()
        )

    def at_frame_boundary(self) -> bool:
        return not self.parser._buffer  # every byte passed so far belongs to a whole frame

    def filters(self) -> set[tuple[str, str]]:
        """The filters in force on this connection, from the commands the daemon sent on it."""
        active: set[tuple[str, str]] = set()
        for line in self.traffic.commands:
            words = line.split()
            if len(words) == 4 and words[:2] == ["filter", "delete"]:
                active.discard((words[2], words[3]))
            elif len(words) == 3 and words[0] == "filter":
                active.add((words[1], words[2]))
        return active


class ChaosRelay(EslLink):
    """`EslLink` that can also stall its connections and slip a garbage frame to the daemon."""

    def __init__(self, peer: Peer) -> None:
        super().__init__(peer)
        self.relayed: list[RelayedConnection] = []

    def live(self) -> list[RelayedConnection]:
        return [conn for conn in self.relayed if conn.open]

    async def stall(self, seconds: float) -> int:
        """No byte passes, either way, on the connections open now, for `seconds`."""
        stalled = self.live()
        for conn in stalled:
            conn.flowing.clear()
        await asyncio.sleep(seconds)
        for conn in stalled:
            conn.flowing.set()
        return len(stalled)

    def inject_garbage(self) -> int:
        """A frame whose Content-Length is not a number, toward the daemon, between frames."""
        hit = 0
        for conn in self.live():
            hit += 1
            if conn.at_frame_boundary():
                with contextlib.suppress(Exception):
                    conn.down.write(MALFORMED_FRAME)
            else:
                conn.pending_garbage.append(MALFORMED_FRAME)
        return hit

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.peer.port)
        except OSError:
            writer.transport.abort()
            return
        traffic = Traffic()
        self.connections.append(traffic)
        conn = RelayedConnection(traffic, writer, up_writer)
        self.relayed.append(conn)
        self._writers += [writer, up_writer]
        tasks = [
            asyncio.create_task(self._gated(conn, reader, up_writer, _client_recorder(traffic))),
            asyncio.create_task(self._gated(conn, up_reader, writer, None)),
        ]
        self._tasks.update(tasks)
        for task in tasks:
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _gated(
        conn: RelayedConnection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        record: Callable[[bytes], None] | None,
    ) -> None:
        toward_daemon = record is None
        try:
            while data := await reader.read(65536):
                await conn.flowing.wait()
                if toward_daemon:
                    conn.traffic.frames.extend(conn.parser.feed(data))
                else:
                    assert record is not None
                    record(data)
                writer.write(data)
                if toward_daemon and conn.pending_garbage and conn.at_frame_boundary():
                    writer.write(b"".join(conn.pending_garbage))
                    conn.pending_garbage.clear()
                await writer.drain()
        except (ConnectionError, OSError, wire.WireError):
            pass
        finally:
            conn.open = False
            for side in (conn.down, conn.up):
                with contextlib.suppress(Exception):
                    side.transport.abort()


# --------------------------------------------------------------------- the switch's side


@dataclass
class CallSeen:
    """What the watcher saw of one channel (times: time.monotonic())."""

    created: float | None = None
    answered: float | None = None
    dtmf: list[tuple[str, float]] = field(default_factory=list)
    hangup: float | None = None
    cause: str | None = None
    add_member: float | None = None
    del_member: float | None = None
    tasks_added: int = 0


class SwitchWatcher:
    """A plain ESL connection straight to the peer that records every call (module docstring)."""

    def __init__(self, peer: Peer, *, pace_heartbeats: bool) -> None:
        self.peer = peer
        self.pace_heartbeats = pace_heartbeats
        self.calls: dict[str, CallSeen] = defaultdict(CallSeen)
        self.gaps: list[tuple[float, float | None]] = []  # (down since, up again)
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(
                OSError, ConnectionError, asyncio.IncompleteReadError, wire.WireError
            ):
                await self._session()
            if self.connected.is_set():
                self.connected.clear()
                self.gaps.append((time.monotonic(), None))
            await asyncio.sleep(0.05)

    async def _session(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.peer.port)
        parser = wire.FrameParser()
        pacer: asyncio.Task[None] | None = None

        async def frames() -> Any:
            while True:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("watcher: the switch closed the connection")
                for frame in parser.feed(data):
                    yield frame

        try:
            stream = frames()
            async for frame in stream:
                if frame.content_type == "auth/request":
                    writer.write(f"auth {self.peer.password}\n\n".encode())
                    break
            async for frame in stream:
                if frame.content_type == "command/reply":
                    if not (frame.header("Reply-Text") or "").startswith("+OK"):
                        raise ConnectionError("watcher: auth refused")
                    break
            writer.write(f"event plain {WATCHED_EVENTS}\n\n".encode())
            if self.pace_heartbeats:
                pacer = asyncio.create_task(self._pace(writer))
            if self.gaps and self.gaps[-1][1] is None:
                self.gaps[-1] = (self.gaps[-1][0], time.monotonic())
            self.connected.set()
            async for frame in stream:
                if frame.content_type.startswith("text/event"):
                    self._seen(event_headers(frame), time.monotonic())
        finally:
            if pacer is not None:
                pacer.cancel()
            writer.transport.abort()

    @staticmethod
    async def _pace(writer: asyncio.StreamWriter) -> None:
        while True:
            writer.write(b"sendevent HEARTBEAT\n\n")
            await asyncio.sleep(0.5)

    def _seen(self, headers: dict[str, str], now: float) -> None:
        name = headers.get("Event-Name", "")
        uuid = headers.get("Unique-ID", "")
        if name == "CHANNEL_CREATE":
            self.calls[uuid].created = now
        elif name == "CHANNEL_ANSWER":
            self.calls[uuid].answered = now
        elif name == "DTMF":
            self.calls[uuid].dtmf.append((headers.get("DTMF-Digit", ""), now))
        elif name == "CHANNEL_HANGUP_COMPLETE":
            call = self.calls[uuid]
            call.hangup, call.cause = now, headers.get("Hangup-Cause")
        elif name == "ADD_SCHEDULE":
            self.calls[headers.get("Task-Group", "")].tasks_added += 1
        elif name == "CUSTOM" and headers.get("Event-Subclass") == "conference::maintenance":
            action = headers.get("Action")
            if action == "add-member" and self.calls[uuid].add_member is None:
                self.calls[uuid].add_member = now
            elif action == "del-member":
                self.calls[uuid].del_member = now


@dataclass(frozen=True)
class Sample:
    sent: float
    received: float
    task_groups: frozenset[str]
    members: frozenset[str]


class Sampler:
    """`show tasks as json` and `conference <room> list` on the peer every `period` seconds."""

    def __init__(self, peer: Peer, period: float) -> None:
        self.peer = peer
        self.period = period
        self.samples: list[Sample] = []
        self.failed = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        while True:
            sent = time.monotonic()
            try:
                rows = json.loads(await self.peer.api("show tasks as json")).get("rows", [])
                members = await self.peer.members(ROOM)
            except Exception:
                self.failed += 1
            else:
                groups = frozenset(row.get("task_group", "") for row in rows)
                self.samples.append(Sample(sent, time.monotonic(), groups, frozenset(members)))
            await asyncio.sleep(max(0.0, self.period - (time.monotonic() - sent)))


# -------------------------------------------------------------------- callee behaviours


@dataclass(frozen=True)
class Behaviour:
    """One kind of callee, as per-call `sim_*` variables on extension 1001 (peer seconds)."""

    name: str
    variables: Callable[[random.Random, int], dict[str, str]]
    presses_key: bool = False


def behaviours(timeout: int) -> dict[str, Behaviour]:
    """The mix; a joining callee hangs up a while after the timeout would have fired (a timer
    left on a member would have hung it up first), so that it leaves the room and nothing is
    left at the end."""
    stay = str(timeout + 2)

    def press(rng: random.Random, _: int) -> dict[str, str]:
        return {"sim_answer_after": "1", "sim_dtmf": f"1@{rng.choice((2, 3, 4))}",
                "sim_hangup_after": stay}

    def wrong_first(rng: random.Random, _: int) -> dict[str, str]:
        first = rng.choice((1, 2))
        return {"sim_answer_after": "1", "sim_dtmf": f"{rng.choice('2379')}@{first};1@{first + 2}",
                "sim_hangup_after": stay}

    return {
        "press": Behaviour("press", press, presses_key=True),
        "wrong_first": Behaviour("wrong_first", wrong_first, presses_key=True),
        "never_answers": Behaviour("never_answers", lambda r, s: {"sim_mode": "noanswer"}),
        "busy": Behaviour("busy", lambda r, s: {"sim_mode": "busy"}),
        "rejects": Behaviour("rejects", lambda r, s: {"sim_mode": "reject"}),
        "hangs_up": Behaviour("hangs_up", lambda r, s: {"sim_answer_after": "1",
                                                       "sim_hangup_after": "2"}),
        "silent": Behaviour("silent", lambda r, s: {"sim_answer_after": "1"}),
    }


DEFAULT_MIX = {"press": 4, "wrong_first": 2, "never_answers": 1, "busy": 1, "rejects": 1,
               "hangs_up": 1, "silent": 1}


# ------------------------------------------------------------------------------- the soak


@dataclass
class SoakPlan:
    invites: int
    rate: float  # invites per real second
    timeout: int  # peer seconds
    ring_timeout: int  # peer seconds
    faults: dict[str, int]  # kind -> how many, at seeded random moments
    seed: int = 1
    mix: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MIX))
    fixed_faults: list[tuple[float, str]] = field(default_factory=list)  # (s after start, kind)
    fault_gap: tuple[float, float] = (0.1, 0.5)  # real s between a recovery and the next fault
    extension: str = "1001"


@dataclass
class FaultRecord:
    kind: str
    start: float
    end: float
    detail: str = ""
    hit: bool = True  # False: it found nothing to act on (no live ESL connection)


@dataclass
class Placed:
    seq: int
    behaviour: str
    at: float
    uuid: str | None = None  # None: the API did not answer (the journal may still have it)
    refused: str | None = None


@dataclass
class Violation:
    check: str
    seq: int | None
    uuid: str
    behaviour: str
    detail: str

    def line(self) -> str:
        return f"{self.check:<22} #{self.seq} {self.uuid} ({self.behaviour}): {self.detail}"


@dataclass
class Report:
    name: str
    placed: int
    refused: Counter[str]
    faults: Counter[str]
    outcomes: Counter[str]
    by_behaviour: dict[str, Counter[str]]
    violations: list[Violation]
    facts: dict[str, Any]

    def violation_kinds(self) -> set[str]:
        return {v.check for v in self.violations}

    def table(self) -> str:
        lines = [f"== chaos soak: {self.name} =="]
        refused = ", ".join(f"{k} {n}" for k, n in sorted(self.refused.items())) or "none"
        lines.append(f"invites placed {self.placed}; refused by the API: {refused}")
        lines.append("faults: " + ", ".join(f"{k} {self.faults.get(k, 0)}" for k in FAULT_KINDS))
        lines.append("outcomes: " + ", ".join(f"{k} {n}" for k, n in self.outcomes.most_common()))
        names = sorted({o for c in self.by_behaviour.values() for o in c})
        lines.append(f"{'behaviour':<14}" + "".join(f"{n:>12}" for n in names))
        for behaviour, counts in sorted(self.by_behaviour.items()):
            lines.append(f"{behaviour:<14}" + "".join(f"{counts.get(n, 0):>12}" for n in names))
        for key, value in self.facts.items():
            lines.append(f"{key}: {value}")
        by_check = Counter(v.check for v in self.violations)
        lines.append(f"violations: {len(self.violations)} "
                     + (str(dict(by_check)) if by_check else ""))
        lines += ["  " + v.line() for v in self.violations[:60]]
        if len(self.violations) > 60:
            lines.append(f"  ... {len(self.violations) - 60} more")
        return "\n".join(lines)


class Soak:
    """One soak run against one peer (see the module docstring)."""

    def __init__(self, peer: Peer, workdir: Path, plan: SoakPlan, name: str) -> None:
        self.peer = peer
        self.workdir = workdir
        self.plan = plan
        self.name = name
        self.rng = random.Random(plan.seed)
        self.mix = behaviours(plan.timeout)
        self.relay = ChaosRelay(peer)
        self.watcher = SwitchWatcher(peer, pace_heartbeats=isinstance(peer, RealPeer))
        self.sampler = Sampler(peer, period=0.5 if isinstance(peer, RealPeer) else 0.2)
        self.placed: dict[int, Placed] = {}
        self.faults: list[FaultRecord] = []
        self.restarts: list[float] = []  # when the switch went down
        self.end_state: dict[str, Any] = {}
        self.serve: ServeProcess | None = None
        self.wall_minus_mono = time.time() - time.monotonic()  # journal times -> monotonic
        self._posts: set[asyncio.Task[None]] = set()

    # --- running -------------------------------------------------------------------------

    async def run(self) -> Report:
        await self.relay.start()
        self.watcher.start()
        await asyncio.wait_for(self.watcher.connected.wait(), 15)
        env = {
            "CONFGUARD_ESL_HOST": "127.0.0.1",
            "CONFGUARD_ESL_PORT": str(self.relay.port),
            "CONFGUARD_ESL_PASSWORD_FILE": str(self.peer.password_file),
            "CONFGUARD_ESL_HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL),
            "CONFGUARD_ESL_RECONNECT_MAX": "1.0",
            "CONFGUARD_INVITE_PROMPT": "tone_stream://%(200,100,440)",
            "PYTHONUNBUFFERED": "1",  # every log line on disk before a SIGKILL
        }
        self.serve = ServeProcess(env, self.workdir)
        try:
            await self.serve.start()
            self.sampler.start()
            started = time.monotonic()
            fault_tasks = self._schedule_faults(started)
            await self._place_invites(started, fault_tasks)
            await asyncio.gather(*fault_tasks)
            if self._posts:
                await asyncio.wait(self._posts, timeout=60)
            await self._drain()
            await self._final_state()
        finally:
            await self.sampler.stop()
            await self.watcher.stop()
            if self.serve is not None:
                self.serve.stop()
            await self.relay.stop()
        return self.analyse()

    def _schedule_faults(self, started: float) -> list[asyncio.Task[None]]:
        """Two fault lines run side by side, the link's (reset, stall, garbage frame) and the
        processes' (daemon SIGKILL and restart, switch restart), each in a seeded random order
        with a seeded random gap: a fault lands once the daemon is back on the switch after the
        one before (faults piling up while it is down would only test the backlog), while the
        other line may hit it meanwhile. Fixed faults (the measurement) keep their times."""
        tasks = []
        kinds = [kind for kind, count in self.plan.faults.items() for _ in range(count)]
        for number, line in enumerate((
            [kind for kind in kinds if kind in LINK_FAULTS],
            [kind for kind in kinds if kind not in LINK_FAULTS],
        )):
            if line:
                rng = random.Random(self.plan.seed * 7919 + number)
                rng.shuffle(line)
                tasks.append(asyncio.create_task(self._fault_line(line, rng)))
        per_kind: dict[str, list[float]] = defaultdict(list)
        for at, kind in self.plan.fixed_faults:
            per_kind[kind].append(at)
        tasks += [
            asyncio.create_task(self._fault_timeline(kind, started, sorted(times)))
            for kind, times in per_kind.items() if times
        ]
        return tasks

    async def _fault_line(self, kinds: list[str], rng: random.Random) -> None:
        await asyncio.sleep(rng.uniform(0.5, 1.5))
        for kind in kinds:
            for _attempt in range(5):  # a link fault that found no connection is tried again
                await self._until_linked()
                await asyncio.sleep(rng.uniform(*self.plan.fault_gap))
                begin = time.monotonic()
                detail = await self._fault(kind)
                hit = not detail.startswith("0 ")
                self.faults.append(FaultRecord(kind, begin, time.monotonic(), detail, hit))
                if hit:
                    break

    async def _fault_timeline(self, kind: str, started: float, times: list[float]) -> None:
        for at in times:
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            if kind in ("esl_reset", "esl_stall", "garbage_frame"):
                await self._until_linked()
            begin = time.monotonic()
            detail = await self._fault(kind)
            hit = not detail.startswith("0 ")
            self.faults.append(FaultRecord(kind, begin, time.monotonic(), detail, hit))

    async def _until_linked(self, seconds: float = 30.0) -> None:
        """A link fault waits (a bounded while) for a daemon connection to act on."""
        deadline = time.monotonic() + seconds
        while (
            not any(conn.settled() for conn in self.relay.live())
            and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.05)

    async def _fault(self, kind: str) -> str:
        assert self.serve is not None
        if kind == "esl_reset":
            count = len(self.relay.live())
            self.relay.cut()
            return f"{count} connection(s) cut"
        if kind == "esl_stall":
            return f"{await self.relay.stall(STALL_SECONDS)} connection(s) stalled"
        if kind == "garbage_frame":
            return f"{self.relay.inject_garbage()} connection(s) hit"
        if kind == "daemon_kill":
            self.serve.kill()
            await self.serve.start()
            return "SIGKILL, restarted"
        if kind == "switch_restart":
            self.restarts.append(time.monotonic())
            if isinstance(self.peer, SimPeer):
                await self.peer.vanish()  # calls and timers gone without a word, clients cut
                return "sim faults.restart()"
            await self.peer.shutdown_and_start()
            return "fsctl shutdown, started again"
        raise ValueError(kind)

    async def _place_invites(self, started: float, fault_tasks: list[asyncio.Task[None]]) -> None:
        names = list(self.plan.mix)
        weights = [self.plan.mix[n] for n in names]
        seq = 0
        while (sum(1 for p in self.placed.values() if p.refused is None) < self.plan.invites
               or not all(task.done() for task in fault_tasks)):
            await asyncio.sleep(max(0.0, started + seq / self.plan.rate - time.monotonic()))
            seq += 1
            behaviour = self.mix[self.rng.choices(names, weights)[0]]
            variables = {**behaviour.variables(self.rng, seq), "chaos_seq": str(seq)}
            body = {"extensions": [self.plan.extension], "room": ROOM,
                    "timeout": self.plan.timeout, "ring_timeout": self.plan.ring_timeout,
                    "variables": variables}
            placed = Placed(seq, behaviour.name, time.monotonic())
            self.placed[seq] = placed
            task = asyncio.create_task(self._post(placed, body))
            self._posts.add(task)
            task.add_done_callback(self._posts.discard)
            if seq > self.plan.invites * 10:
                raise AssertionError("the daemon refused almost every invite")

    async def _post(self, placed: Placed, body: dict[str, Any]) -> None:
        assert self.serve is not None
        try:
            reply = await asyncio.wait_for(
                ControlClient(self.serve.socket).request("POST", "/invites", body), 30
            )
        except DaemonUnreachable:
            placed.refused = "daemon_unreachable"
        except ApiError as error:
            placed.refused = error.kind
        except (TimeoutError, OSError, ValueError) as error:
            placed.refused = type(error).__name__
        else:
            placed.uuid = reply["invites"][0]["uuid"]

    async def _drain(self) -> None:
        """Until the daemon has no active invite and the switch no channel (or a bound)."""
        assert self.serve is not None
        bound = time.monotonic() + self.peer.real(self.plan.timeout + 10) + 30
        client = ControlClient(self.serve.socket)
        while time.monotonic() < bound:
            try:
                active = (await client.request("GET", "/status")).get("invites", [])
                channels = await self.peer.channel_count()
            except Exception:
                active, channels = ["?"], 1
            if not active and not channels:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)  # the engine's last filter deletions after an outcome

    async def _final_state(self) -> None:
        assert self.serve is not None
        try:
            status = await ControlClient(self.serve.socket).request("GET", "/status")
        except Exception as error:
            status = {"error": str(error)}
        deadline = time.monotonic() + 2.0  # the `show tasks` mirror lag
        while True:
            rows = json.loads(await self.peer.api("show tasks as json")).get("rows", [])
            groups = {row.get("task_group", "") for row in rows}
            if not (groups & self._our_uuids_so_far()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        channels = json.loads(await self.peer.api("show channels as json")).get("rows", [])
        self.end_state = {
            "status": status,
            "task_groups": groups,
            "channels": {row.get("uuid", "") for row in channels},
            "filters": [conn.filters() for conn in self.relay.live()],
            "members": set(await self.peer.members(ROOM)),
        }

    def _our_uuids_so_far(self) -> set[str]:
        return {p.uuid for p in self.placed.values() if p.uuid}

    # --- checking --------------------------------------------------------------------------

    def journal_rows(self) -> list[dict[str, Any]]:
        assert self.serve is not None
        path = self.serve.env["CONFGUARD_JOURNAL_PATH"]
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(row) for row in conn.execute("SELECT * FROM invites")]
        finally:
            conn.close()

    def logged_outcomes(self) -> dict[str, list[str]]:
        """uuid -> every outcome the daemons logged for it (all runs of `confguard serve`)."""
        assert self.serve is not None
        out: dict[str, list[str]] = defaultdict(list)
        for line in self.serve.log.read_text(errors="replace").splitlines():
            if '"outcome"' not in line:
                continue
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("event") == "invite.state" and entry.get("outcome"):
                    out[entry.get("uuid", "")].append(entry["outcome"])
        return out

    def logged_join_knowledge(self) -> set[str]:
        """uuids some daemon logged the key or the join of (cancelling, joining, joined)."""
        assert self.serve is not None
        known: set[str] = set()
        for line in self.serve.log.read_text(errors="replace").splitlines():
            if '"invite.state"' not in line:
                continue
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("state") in ("cancelling", "joining", "joined"):
                    known.add(entry.get("uuid", ""))
        return known

    def analyse(self) -> Report:
        rows = self.journal_rows()
        logged = self.logged_outcomes()
        violations: list[Violation] = []
        by_seq = {p.seq: p for p in self.placed.values()}
        uuid_rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            uuid_rows[row["call_uuid"]].append(row)
        seq_of: dict[str, int | None] = {}
        for row in rows:
            spec = json.loads(row["detail"] or "{}").get("spec", {})
            text = spec.get("variables", {}).get("chaos_seq")
            seq_of[row["call_uuid"]] = int(text) if text else None
        outcomes: Counter[str] = Counter()
        by_behaviour: dict[str, Counter[str]] = defaultdict(Counter)

        def behaviour_of(uuid: str) -> str:
            seq = seq_of.get(uuid)
            return by_seq[seq].behaviour if seq in by_seq else "?"

        def flag(check: str, uuid: str, detail: str) -> None:
            violations.append(Violation(check, seq_of.get(uuid), uuid, behaviour_of(uuid),
                                        detail + self._faults_near(uuid)))

        for placed in self.placed.values():
            if placed.uuid and placed.uuid not in uuid_rows:
                violations.append(Violation("no_journal_row", placed.seq, placed.uuid,
                                            placed.behaviour, "the API placed it"))
        key = "1"
        join_known = self.logged_join_knowledge()
        excused: Counter[str] = Counter()
        for uuid, same in uuid_rows.items():
            row = same[0]
            outcome = row["outcome"]
            outcomes[outcome or "(none)"] += 1
            by_behaviour[behaviour_of(uuid)][outcome or "(none)"] += 1
            seen = self.watcher.calls.get(uuid, CallSeen())
            if len(same) > 1:
                flag("one_outcome", uuid, f"{len(same)} journal rows")
            if outcome is None:
                flag("one_outcome", uuid, f"no outcome (state {row['state']})")
            if len(logged.get(uuid, [])) > 1 or (logged.get(uuid) and logged[uuid][0] != outcome):
                flag("one_outcome", uuid, f"logged {logged[uuid]}, journal {outcome}")
            joined = outcome == "joined"
            if joined and seen.add_member is None:
                flag("joined_is_member", uuid, "outcome joined, no add-member on the switch")
            restart = self._restart_during(seen)
            if not joined and seen.add_member is not None:
                # Unknowable, hence `lost` is right: the switch joined the call while no daemon
                # watched, and its restart took the call -- and the evidence -- before any
                # daemon saw it again (no daemon logged the key or the join).
                unseen_then_restarted = (
                    outcome == "lost" and restart is not None and uuid not in join_known
                )
                if not unseen_then_restarted:
                    flag("joined_is_member", uuid, f"add-member seen, outcome {outcome}")
                else:
                    excused["joined while unwatched, then taken by a switch restart (lost)"] += 1
            if outcome == "lost" and row["ended_at"] is not None and restart is None:
                verdict = row["ended_at"] - self.wall_minus_mono
                if seen.created is not None and (seen.hangup is None or seen.hangup > verdict + 1):
                    after = ("still up at the end" if seen.hangup is None else
                             f"hung up {seen.hangup - verdict:.2f} s later ({seen.cause})")
                    flag("lost_matches_switch", uuid,
                         f"outcome lost at +{self._since(seen, verdict)} but the call was up: "
                         f"{after}")
            presses = [at for digit, at in seen.dtmf if digit == key]
            if presses and not joined and restart is None:
                pressed = presses[0]
                fired = seen.hangup if seen.cause == "ALLOTTED_TIMEOUT" else None
                if fired is None or fired - pressed > KEY_MARGIN:
                    ended = ("still up" if seen.hangup is None else
                             f"hangup {seen.cause} {seen.hangup - pressed:+.2f} s after the key")
                    flag("key_recorded_joined", uuid,
                         f"switch recorded key {key} at +{self._since(seen, pressed)}, outcome "
                         f"{outcome} ({row['cause']}), {ended}")
            self._check_tasks(uuid, seen, restart, flag)
        self._check_end(seq_of, flag)
        violations.sort(key=lambda v: (v.check, v.seq or 0))
        refused = Counter(p.refused for p in self.placed.values() if p.refused)
        listed = {u for s in self.sampler.samples for u in s.members}
        joined_uuids = [u for u, r in uuid_rows.items() if r[0]["outcome"] == "joined"]
        keyed = [u for u in uuid_rows
                 if any(d == key for d, _ in self.watcher.calls.get(u, CallSeen()).dtmf)]
        misses = Counter(f.kind for f in self.faults if not f.hit)
        keyed_joined = sum(1 for u in keyed if uuid_rows[u][0]["outcome"] == "joined")
        keyed_restart = sum(
            1 for u in keyed if self._restart_during(self.watcher.calls[u]) is not None)
        facts = {
            "faults that found no ESL connection (not counted)": dict(misses) or "none",
            "excused (the switch's restart took the evidence)": dict(excused) or "none",
            "journal rows": len(rows),
            "keys recorded by the switch": (
                f"{len(keyed)}: joined {keyed_joined}, taken by a switch restart {keyed_restart}"),
            "timers fired (ALLOTTED_TIMEOUT)": sum(
                1 for u in uuid_rows if self.watcher.calls.get(u, CallSeen()).cause
                == "ALLOTTED_TIMEOUT"),
            "daemon log": self._log_summary(),
            "placed without an API reply (found in the journal)": sum(
                1 for p in self.placed.values()
                if p.refused and any(seq_of.get(u) == p.seq for u in uuid_rows)),
            "joined and listed by `conference list`": (
                f"{sum(1 for u in joined_uuids if u in listed)} of {len(joined_uuids)}"),
            "task samples": f"{len(self.sampler.samples)} ({self.sampler.failed} failed)",
            "relay connections": len(self.relay.connections),
            "watcher gaps": len(self.watcher.gaps),
        }
        return Report(self.name, sum(1 for p in self.placed.values() if p.refused is None),
                      refused, Counter(f.kind for f in self.faults if f.hit), outcomes,
                      by_behaviour,
                      violations, facts)

    def _log_summary(self) -> str:
        assert self.serve is not None
        counts: Counter[str] = Counter()
        for line in self.serve.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("event") == "esl.connection_lost":
                    reason = str(entry.get("reason", ""))
                    counts["esl lost: " + reason.split(":")[0].split(" (")[0][:40]] += 1
                elif entry.get("event") in ("invite.adopted", "daemon.started"):
                    counts[entry["event"]] += 1
        return ", ".join(f"{k} {n}" for k, n in sorted(counts.items()))

    def _restart_during(self, seen: CallSeen) -> float | None:
        """The switch restart that took the call, if one came while it was up. The watcher's
        times are when events reached it: a call created just before the restart is seen a
        moment after it (RESTART_SLACK)."""
        for at in self.restarts:
            if (seen.created or 0) - RESTART_SLACK <= at and (
                seen.hangup is None or seen.hangup >= at
            ):
                return at
        return None

    @staticmethod
    def _since(seen: CallSeen, at: float) -> str:
        return f"{at - seen.created:.2f} s" if seen.created else "?"

    def _faults_near(self, uuid: str) -> str:
        seen = self.watcher.calls.get(uuid)
        if seen is None or seen.created is None:
            return ""
        end = seen.hangup or time.monotonic()
        near = [f"{f.kind}@{f.start - seen.created:+.2f}s" for f in self.faults
                if seen.created - 3 <= f.end and f.start <= end]
        return f"; faults: {', '.join(near) or 'none'}"

    def _check_tasks(
        self, uuid: str, seen: CallSeen, restart: float | None,
        flag: Callable[[str, str, str], None],
    ) -> None:
        """Answered, live and not yet joined: every sample must list a task in its group."""
        if seen.answered is None:
            return
        ends = [t for t in (seen.add_member, seen.hangup, restart) if t is not None]
        end = min(ends) if ends else float("inf")
        missing = [s for s in self.sampler.samples
                   if s.sent >= seen.answered + TASK_LAG and s.received <= end - TASK_LAG
                   and uuid not in s.task_groups]
        if missing:
            first, last = missing[0], missing[-1]
            ended = f"ended +{self._since(seen, end)}" if end != float("inf") else "still up"
            flag("task_while_waiting", uuid,
                 f"{len(missing)} sample(s) without a task, from +{self._since(seen, first.sent)}"
                 f" to +{self._since(seen, last.received)} (answered "
                 f"+{self._since(seen, seen.answered)}, {ended}; {seen.tasks_added} ADD_SCHEDULE)")

    def _check_end(self, seq_of: dict[str, int | None], flag: Callable[[str, str, str], None],
                   ) -> None:
        ours = set(seq_of)
        rows = self.journal_rows()
        jobs = {row["job_uuid"]: row["call_uuid"] for row in rows}
        state = self.end_state
        for uuid in sorted(state.get("task_groups", set()) & ours):
            flag("nothing_left", uuid, "a task left in `show tasks`")
        for uuid in sorted(state.get("channels", set()) & ours):
            flag("nothing_left", uuid, "its channel is still up")
        for filters in state.get("filters", []):
            for header, value in sorted(filters):
                owner = value if value in ours else jobs.get(value)
                if owner is not None:
                    flag("nothing_left", owner, f"filter {header} {value} still in force")
        active = state.get("status", {}).get("invites", [])
        for invite in active:
            flag("nothing_left", invite.get("uuid", "?"), f"daemon still active: {invite}")
        others = state.get("channels", set()) - ours
        if others:
            self.end_state["other_channels"] = len(others)


# ------------------------------------------------------------------------------ the peers


class ChaosSimPeer(SimPeer):
    """The simulator with a HEARTBEAT every half real second and a seed."""

    def __init__(self, workdir: Path, seed: int, scale: float = 0.1) -> None:
        super().__init__(workdir, scale)
        self.seed = seed

    def _config(self) -> SimConfig:
        config = super()._config()
        config.heartbeat_interval = 0.5 / self.scale
        config.seed = self.seed
        return config


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


# ------------------------------------------------------------------------ the measurement


async def measure(invites: int, rate: float, timeout: int, resets: int, gap: float) -> Report:
    """Real FreeSWITCH: `invites` at `rate`/s to callees that answer and press 1 two seconds
    later, the daemon's ESL connection reset `resets` times `gap` seconds apart."""
    from confguard.realswitch import RealSwitch, find_freeswitch

    with tempfile.TemporaryDirectory(prefix="confguard-chaos-") as folder:
        workdir = Path(folder)
        switch = RealSwitch(find_freeswitch(_TESTS.parent), workdir / "freeswitch")
        await asyncio.to_thread(switch.start)
        try:
            peer = RealPeer(switch)
            plan = SoakPlan(
                invites=invites, rate=rate, timeout=timeout, ring_timeout=timeout, faults={},
                mix={"press_after_2": 1}, extension="1000",
                fixed_faults=[(2.0 + i * gap, "esl_reset") for i in range(resets)],
            )
            soak = Soak(peer, workdir, plan, f"measure: real FreeSWITCH, {invites} invites at "
                        f"{rate:g}/s, press 1 at 2 s, timeout {timeout} s, {resets} resets "
                        f"{gap:g} s apart")
            soak.mix["press_after_2"] = Behaviour(
                "press_after_2",
                lambda r, s: {"sim_answer_after": "1", "sim_dtmf": "1@2",
                              "sim_hangup_after": str(timeout + 5)},
                presses_key=True,
            )
            return await soak.run()
        finally:
            await asyncio.to_thread(switch.stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("measure", help="the ESL-reset measurement on a real FreeSWITCH")
    run.add_argument("--invites", type=int, default=300)
    run.add_argument("--rate", type=float, default=20.0)
    run.add_argument("--timeout", type=int, default=30)
    run.add_argument("--resets", type=int, default=4)
    run.add_argument("--gap", type=float, default=3.0)
    args = parser.parse_args(argv)
    report = asyncio.run(measure(args.invites, args.rate, args.timeout, args.resets, args.gap))
    print(report.table())
    return 0 if not report.violations else 1


async def run_soak(peer: Peer, workdir: Path, plan: SoakPlan, name: str) -> Report:
    return await Soak(peer, workdir, plan, name).run()



if __name__ == "__main__":
    sys.exit(main())
