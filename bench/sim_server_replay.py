"""The simulator's Event Socket server with the switch, in virtual time: CPU per invite, bytes.

The whole simulator (`confguard.sim.Simulator`: switch, server, clock) runs in this process on
bench/sim_switch_virtual.py's virtual-time loop, without sockets: each client is connected
through an in-memory transport. What the server writes reaches the client on the next pass of
the loop, what the client sends reaches `Connection.data_received` on the pass after it
flushed, as on loopback. Runs are deterministic (seeded switch, fixed start, client uuids
numbered), so

* ``cpu N``: after 2 s of warm-up, N invites at ``--rate`` a second (1,000 by default) placed
  by a client doing what the daemon does (bench/sim_load.py's `rate` invites: json events, the
  permanent filters, one `filter Unique-ID` a call, `bgapi originate` with its Job-UUID, the
  `uuid_kill` on the add-member, the filter deleted at the hangup). Prints CPU microseconds per
  invite (the client's own work included: compare runs of two trees, or take instruction counts
  under callgrind).
* ``bytes OUT``: the same daemon client for a few hundred invites, next to clients in the plain
  and xml formats with positive, negative and regex filters, `nixevent`, `noevents`, `sendevent`,
  `api` commands that wait, bad commands, a failed auth, `exit`, a stall fault and an injected
  frame; written as every `transport.write` of every connection (virtual time, connection,
  bytes), uuids numbered in order of appearance. Two trees whose servers behave the same write
  the same file byte for byte, write boundaries included.

Run from the tree to measure: ``PYTHONPATH=$PWD .venv/bin/python bench/sim_server_replay.py
cpu 2000``. Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import confguard.sim.clock as clock_module  # noqa: E402
from bench.esl_bytes import json_key, json_value, split_frames  # noqa: E402
from bench.sim_switch_virtual import VirtualLoop, VirtualTime, _TimeModule  # noqa: E402
from confguard.engine import SUBSCRIBED_EVENTS  # noqa: E402
from confguard.esl import PERMANENT_FILTERS  # noqa: E402
from confguard.invite import InviteSpec, build_waiting_app  # noqa: E402
from confguard.sim import Simulator  # noqa: E402
from confguard.sim import server as server_module  # noqa: E402
from confguard.sim.config import SimConfig  # noqa: E402
from confguard.sim.faults import MALFORMED_FRAME  # noqa: E402
from confguard.sim.server import Connection  # noqa: E402

PASSWORD = "replay"
PROMPT = "tone_stream://%(250,250,440)"
EXTRA = ",sim_answer_after=0.5,sim_dtmf=1@0.5"
Log = dict[str, list[bytes]]  # connection name -> its writes, each after a `####` line
EVENT_NAME = json_key("Event-Name")
UNIQUE_ID = json_key("Unique-ID")
ACTION = json_key("Action")


class MemoryTransport:
    """One end of an in-memory connection: what the server writes goes to `deliver` on the next
    pass of the loop (and, with `record`, into the byte log)."""

    def __init__(self, name: str, deliver: Callable[[bytes], None], log: Log | None) -> None:
        self.name = name
        self._deliver = deliver
        self._log = log
        self._closing = False
        self._loop = asyncio.get_running_loop()

    def get_extra_info(self, key: str, default: Any = None) -> Any:
        return ("127.0.0.1", 4000) if key == "peername" else default

    def write(self, data: bytes) -> None:
        if self._log is not None:
            writes = self._log.setdefault(self.name, [])
            writes.append(b"\n#### %.6f %d\n" % (VirtualTime.now, len(data)))
            writes.append(data)
        self._loop.call_soon(self._deliver, data)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._end("close")

    def abort(self) -> None:
        self._end("abort")

    def _end(self, how: str) -> None:
        if self._closing:
            return
        self._closing = True
        if self._log is not None:
            writes = self._log.setdefault(self.name, [])
            writes.append(b"\n#### %.6f %s\n" % (VirtualTime.now, how.encode()))


class Client:
    """A client end: commands written in one pass leave together, frames split as they come."""

    def __init__(self, simulator: Simulator, name: str, log: Log | None) -> None:
        self.connection = Connection(simulator.server)
        self.transport = MemoryTransport(name, self._received, log)
        self.on_event: Callable[[bytes, bytes], None] | None = None
        self._rest = b""
        self._outgoing: list[bytes] = []
        self._loop = asyncio.get_running_loop()
        self.connection.connection_made(self.transport)  # type: ignore[arg-type]

    def send(self, command: str | bytes) -> None:
        if not self._outgoing:
            self._loop.call_soon(self._flush)
        self._outgoing.append(command.encode() if isinstance(command, str) else command)

    def _flush(self) -> None:
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        self._loop.call_soon(self._arrive, data)

    def _arrive(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.connection.data_received(data)

    def eof(self) -> None:
        self._loop.call_soon(self.connection.eof_received)

    def _received(self, data: bytes) -> None:
        if self.on_event is None:
            return
        # the malformed-frame fault's frame cannot be split: skipped, as a client resyncs
        data = (self._rest + data).replace(MALFORMED_FRAME, b"")
        frames, used = split_frames(data)
        self._rest = data[used:]
        for content_type, _head, body in frames:
            if content_type == b"text/event-json":
                self.on_event(json_value(body, EVENT_NAME) or b"", body)


class Daemon:
    """bench/sim_load.py's Bench, reduced to what the server sees of it."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.live: set[bytes] = set()
        self.placed = 0
        self.ended = 0
        self.app = build_waiting_app(
            InviteSpec(extension="1000", room="test1", timeout=30, prompt=PROMPT)
        )
        client.on_event = self.event

    def subscribe(self) -> None:
        self.client.send("auth " + PASSWORD + "\n\n")
        self.client.send("event json " + " ".join(SUBSCRIBED_EVENTS) + "\n\n")
        for header, value in PERMANENT_FILTERS:
            self.client.send(f"filter {header} {value}\n\n")

    def place(self) -> None:
        number = self.placed
        self.placed += 1
        call = f"a{number:07d}-0000-4000-8000-000000000000"
        job = f"f{number:07d}-0000-4000-8000-000000000000"
        self.live.add(call.encode())
        self.client.send(
            f"filter Unique-ID {call}\n\n"
            f"bgapi originate {{origination_uuid={call},originate_timeout=30,"
            f"ignore_early_media=true,confguard_invite=bench{EXTRA},"
            f"api_on_originate='sched_hangup +3600 {call} ALLOTTED_TIMEOUT'}}"
            f"user/1001 {self.app}\nJob-UUID: {job}\n\n"
        )

    def event(self, name: bytes, body: bytes) -> None:
        if name == b"CUSTOM":
            if json_value(body, ACTION) == b"add-member":
                member = json_value(body, UNIQUE_ID) or b""
                if member in self.live:
                    self.client.send(b"api uuid_kill " + member + b"\n\n")
        elif name == b"CHANNEL_HANGUP_COMPLETE":
            call = json_value(body, UNIQUE_ID) or b""
            if call in self.live:
                self.live.discard(call)
                self.ended += 1
                self.client.send(b"filter delete Unique-ID " + call + b"\n\n")


def simulator() -> Simulator:
    config = SimConfig(port=0, seed=1, heartbeat_interval=20, password=PASSWORD)
    return Simulator(config)


async def place(daemon: Daemon, count: int, rate: float, sleep: Callable[[float], Any]) -> None:
    """`count` invites at `rate` a second, a batch every 10 ms (as bench/sim_load.py)."""
    owed = 0.0
    target = daemon.placed + count
    while daemon.placed < target:
        owed += rate * 0.01
        while owed >= 1 and daemon.placed < target:
            daemon.place()
            owed -= 1
        await sleep(0.01)


async def drain(daemon: Daemon, sleep: Callable[[float], Any]) -> None:
    while daemon.ended < daemon.placed:
        await sleep(0.1)


async def run_cpu(count: int, rate: float) -> str:
    sim = simulator()
    await sim.switch.start()
    sleep = asyncio.sleep
    daemon = Daemon(Client(sim, "daemon", None))
    daemon.subscribe()
    await sleep(0.1)
    await place(daemon, int(2 * rate), rate, sleep)  # warm-up: the calls live in full
    started = time.process_time()
    ended = daemon.ended
    await place(daemon, count, rate, sleep)
    while daemon.ended < ended + count:
        await sleep(0.1)
    cpu = time.process_time() - started
    await drain(daemon, sleep)
    await sim.server.stop()
    await sim.switch.stop()
    return f"cpu_us_per_invite {1e6 * cpu / count:.1f}"


async def run_bytes(out: Path) -> str:
    log: Log = {}
    sim = simulator()
    await sim.switch.start()
    sleep = asyncio.sleep
    daemon = Daemon(Client(sim, "daemon", log))
    daemon.subscribe()
    # plain, everything, filters of every kind
    plain = Client(sim, "plain", log)
    for command in (
        "auth " + PASSWORD,
        "event plain ALL",
        "filter Event-Name CHANNEL_ANSWER",
        "filter Event-Name HEARTBEAT",
        "filter add Event-Name DTMF",
        "filter Unique-ID -a0000003-0000-4000-8000-000000000000",
        "filter Caller-Destination-Number /^10+$/",
        "filter Unique-ID /A00000[12]/i",
        "nixevent DTMF",
        "bogus command",
        "api status",
    ):
        plain.send(command + "\n\n")
    # xml, a few types and a CUSTOM subclass, then less
    xml = Client(sim, "xml", log)
    for command in (
        "auth " + PASSWORD,
        "event xml CHANNEL_CREATE BACKGROUND_JOB CUSTOM conference::maintenance",
        "filter Event-Name BACKGROUND_JOB",
        "filter Action add-member",
        "filter Event-Name -CHANNEL_CREATE",
        "filter bad",
        "api uuid_getvar nobody foo",
    ):
        xml.send(command + "\n\n")
    # a client that fails its auth, and one that talks before it
    bad = Client(sim, "bad", log)
    bad.send("api status\n\nauth wrong\n\napi status\n\n")
    await sleep(0.1)
    await place(daemon, 150, 500, sleep)
    await sleep(0.7)
    xml.send("filter delete Event-Name -CHANNEL_CREATE\n\nnixevent CHANNEL_CREATE\n\n")
    plain.send(
        "sendevent CUSTOM\nEvent-Subclass: replay::one\nUnique-ID: a0000001-0000-4000-8000-"
        "000000000000\nContent-Length: 5\n\nhello"
    )
    plain.send("api originate {origination_uuid=e0000000-0000-4000-8000-000000000000}"
               "user/1001 &park()\n\n")  # fmt: skip
    await place(daemon, 150, 500, sleep)
    await sleep(1.5)
    sim.faults.stall(0.2)
    await place(daemon, 100, 500, sleep)
    await sleep(0.7)
    sim.faults.send_malformed()
    plain.send("filter delete Unique-ID\n\nnoevents\n\nnoevents\n\nevent plain CHANNEL_HANGUP\n\n")
    xml.send("filter delete all\n\nevent json DTMF\n\n")
    await place(daemon, 100, 500, sleep)
    await sleep(0.7)
    plain.send("api uuid_kill e0000000-0000-4000-8000-000000000000\n\nexit\n\n")
    xml.eof()
    await drain(daemon, sleep)
    await sleep(1.0)
    await sim.server.stop()
    await sim.switch.stop()
    # One connection after the other: which of two connections an event reaches first
    # follows the order of a set (EslServer.connections), not the wire.
    text = b"".join(
        b"\n==== %s\n" % name.encode() + b"".join(parts) for name, parts in sorted(log.items())
    ).decode("utf-8", "surrogateescape")
    numbers: dict[str, str] = {}
    text = _UUID.sub(lambda m: numbers.setdefault(m.group(), f"<U{len(numbers)}>"), text)
    out.write_bytes(text.encode("utf-8", "surrogateescape"))
    writes = {name: sum(p.startswith(b"\n#### ") for p in parts) for name, parts in log.items()}
    return f"writes {writes} -> {out}"


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    cpu = modes.add_parser("cpu", help="CPU per invite of switch and server with a daemon")
    cpu.add_argument("count", type=int)
    cpu.add_argument("--rate", type=float, default=1000.0)
    out = modes.add_parser("bytes", help="write every server write of a mixed script")
    out.add_argument("out", type=Path)
    args = parser.parse_args()
    clock_module.time = _TimeModule  # type: ignore[assignment]
    server_module.time = _TimeModule  # type: ignore[assignment]  # the stall fault's clock
    loop = VirtualLoop()
    asyncio.set_event_loop(loop)
    try:
        if args.mode == "cpu":
            print(loop.run_until_complete(run_cpu(args.count, args.rate)))
        else:
            print(loop.run_until_complete(run_bytes(args.out)))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
