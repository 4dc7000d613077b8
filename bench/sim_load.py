"""Load on the FreeSWITCH simulator (confguard.sim) alone: how much CPU it burns, how fast it goes.

The simulator runs in its own process (`python -m confguard.sim` on 127.0.0.1, a free port); this
script is one ESL client that talks to it the way the daemon does (the daemon's event list, json
events, the permanent filters plus its one Unique-ID filter per call, `bgapi
originate` with `api_on_originate='sched_hangup ...'`) and reads the simulator's CPU time from
/proc/<pid>/stat.

Two modes:

* ``waiting N``: originate N calls to callees that answer and never press, wait until every one
  is answered, then measure the simulator's CPU % over ``--window`` seconds while the calls wait.
  ``--reprompt broadcast`` re-prompts each call with `uuid_broadcast` every ``--reprompt-every``
  seconds (today's daemon), ``--reprompt inline`` originates with the inline
  `play_and_get_digits|park` app of `confguard.invite.build_waiting_app` (the switch re-prompts),
  ``--reprompt none`` just parks. ``inline`` (the default) is what the daemon sends.
* ``rate R``: R invites a second for ``--window`` seconds, each the daemon's whole path since the
  join moved into FreeSWITCH: the per-call filters, the originate with the inline waiting app of
  `confguard.invite.build_waiting_app` (the callee answers and presses 1 after 0.5 s each; the
  switch cancels the call's timers and joins it), the add-member, `uuid_kill`,
  CHANNEL_HANGUP_COMPLETE and the filters deleted. Reports the sustained rate of finished
  invites, the key-to-join latency (the DTMF event to the add-member) and the simulator's CPU %.

Examples::

    .venv/bin/python bench/sim_load.py waiting 2000
    .venv/bin/python bench/sim_load.py rate 500 --window 15
    .venv/bin/python bench/sim_load.py waiting 500 --profile /tmp/sim.prof  # the window only

Figures are for one machine at one moment; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from confguard.engine import SUBSCRIBED_EVENTS  # noqa: E402
from confguard.esl import PERMANENT_FILTERS  # noqa: E402
from confguard.invite import InviteSpec, build_waiting_app  # noqa: E402
from confguard.realswitch import free_port  # noqa: E402

HOST = "127.0.0.1"  # the simulator listens on loopback only, and so does this client
PASSWORD = "bench-sim-load"
SILENT_CALLEE = "1001"  # answers after 1 s, never presses
PROMPT = "tone_stream://%(250,250,440)"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class SimProcess:
    """`python -m confguard.sim` on a free loopback port (optionally under cProfile)."""

    def __init__(self, profile: Path | None) -> None:
        self.port = free_port()
        self.profile = profile
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="sim-load-")

    def start(self) -> None:
        password_file = Path(self._dir.name) / "password"
        password_file.write_text(PASSWORD + "\n")
        # This script's own entry: SIGHUP freezes the set-up's objects (gc.freeze), and with
        # --profile cProfile runs during the window only.
        prefix = [sys.executable, str(Path(__file__).resolve()), "profiled-sim", "0"]
        if self.profile is not None:
            prefix += ["--profile", str(self.profile)]
        prefix.append("--")
        args = [*prefix, "--host", HOST, "--port", str(self.port),
                "--password-file", str(password_file), "--heartbeat", "20"]  # fmt: skip
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                import socket

                socket.create_connection((HOST, self.port), timeout=0.5).close()
                return
            time.sleep(0.1)
        raise RuntimeError("the simulator did not start listening")

    def freeze(self) -> None:
        """Move every object the simulator holds so far (the calls set up) out of the garbage
        collector's sight: gc.freeze(), as a long-running process does after its start-up."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)

    def profiling(self, on: bool) -> None:
        """Start (on) or stop and write (off) the profile of a `--profile` simulator."""
        if self.profile is not None and self.proc is not None:
            self.proc.send_signal(signal.SIGUSR1 if on else signal.SIGUSR2)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._dir.cleanup()


@dataclass
class Call:
    """One invite as the client follows it."""

    uuid: str
    job: str
    started: float
    answered: float = 0.0
    key: float = 0.0
    joined: float = 0.0
    ended: float = 0.0
    failed: str = ""


@dataclass
class Client:
    """A minimal pipelined ESL client: replies matched in order, json events to `on_event`."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    replies: deque[asyncio.Future[str]] = field(default_factory=deque)
    on_event: object = None
    events_seen: int = 0

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 24)
        client = cls(reader, writer)
        await client._frame()  # auth/request
        writer.write(f"auth {PASSWORD}\n\n".encode())
        headers, _ = await client._frame()
        if "+OK" not in headers.get("Reply-Text", ""):
            raise RuntimeError("auth refused")
        return client

    async def _frame(self) -> tuple[dict[str, str], bytes]:
        head = await self.reader.readuntil(b"\n\n")
        headers: dict[str, str] = {}
        for line in head.decode().split("\n"):
            name, sep, value = line.partition(": ")
            if sep:
                headers[name] = value
        length = int(headers.get("Content-Length", "0"))
        body = await self.reader.readexactly(length) if length else b""
        return headers, body

    def send(self, line: str, extra: str = "") -> asyncio.Future[str]:
        """Send one command; the future gets its Reply-Text or api/response body."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.replies.append(future)
        self.writer.write(f"{line}\n{extra}\n".encode())
        return future

    async def run(self) -> None:
        try:
            await self._run()
        except Exception as exc:
            print(f"sim_load: the client's reader failed: {exc!r}", file=sys.stderr)
            raise

    async def _run(self) -> None:
        while True:
            headers, body = await self._frame()
            kind = headers.get("Content-Type", "")
            if kind == "text/event-json":
                self.events_seen += 1
                if self.on_event is not None:
                    self.on_event(_event_fields(body))  # type: ignore[operator]
            elif kind == "command/reply":
                self.replies.popleft().set_result(headers.get("Reply-Text", ""))
            elif kind == "api/response":
                self.replies.popleft().set_result(body.decode())
            elif kind == "text/disconnect-notice":
                return


# The few fields the client routes on, taken from the json event without decoding all of it
# (the client must stay cheaper than the simulator it loads: a hundred-odd headers an event).
_FIELDS = re.compile(rb'"(Event-Name|Unique-ID|Job-UUID|Action|Hangup-Cause)":"([^"]*)"')


def _event_fields(body: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for match in _FIELDS.finditer(body):
        fields.setdefault(match.group(1).decode(), match.group(2).decode())
    if fields.get("Event-Name") == "BACKGROUND_JOB":
        fields["_body"] = json.loads(body).get("_body", "")
    return fields


def originate(call: Call, app: str, extra_vars: str) -> str:
    return (
        f"originate {{origination_uuid={call.uuid},originate_timeout=30,ignore_early_media=true,"
        f"confguard_invite=bench{extra_vars},"
        f"api_on_originate='sched_hangup +3600 {call.uuid} ALLOTTED_TIMEOUT'}}"
        f"user/{SILENT_CALLEE} {app}"
    )


class Bench:
    """The calls, the event routing and the figures of one run."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.calls: dict[str, Call] = {}
        self.by_job: dict[str, Call] = {}
        self.answered = 0
        self.finished: list[Call] = []
        self.rate_mode = False
        client.on_event = self.event

    async def subscribe(self) -> None:
        await self.client.send("event json " + " ".join(SUBSCRIBED_EVENTS))
        for header, value in PERMANENT_FILTERS:
            await self.client.send(f"filter {header} {value}")

    def place(self, app: str, extra_vars: str = "") -> Call:
        call = Call(str(uuid.uuid4()), str(uuid.uuid4()), time.monotonic())
        self.calls[call.uuid] = call
        self.by_job[call.job] = call
        self.client.send(f"filter Unique-ID {call.uuid}")  # the daemon's one filter a call
        self.client.send(f"bgapi {originate(call, app, extra_vars)}", f"Job-UUID: {call.job}\n")
        return call

    def event(self, event: dict[str, str]) -> None:
        name = event.get("Event-Name")
        if name == "BACKGROUND_JOB":
            call = self.by_job.get(event.get("Job-UUID", ""))
            if call is not None and not event.get("_body", "").startswith("+OK"):
                call.failed = event.get("_body", "").strip()
                self._end(call)
            return
        call = self.calls.get(event.get("Unique-ID", ""))
        if call is None:
            return
        now = time.monotonic()
        if name == "CHANNEL_ANSWER" and not call.answered:
            call.answered = now
            self.answered += 1
        elif name == "DTMF" and self.rate_mode and not call.key:
            call.key = now
        elif name == "CUSTOM" and event.get("Action") == "add-member" and not call.joined:
            call.joined = now
            self.client.send(f"api uuid_kill {call.uuid}")
        elif name == "CHANNEL_HANGUP_COMPLETE":
            call.ended = now
            if not call.joined and self.rate_mode:
                call.failed = f"hung up before the join: {event.get('Hangup-Cause')}"
            self._end(call)

    def _end(self, call: Call) -> None:
        if self.calls.pop(call.uuid, None) is None:
            return
        self.by_job.pop(call.job, None)
        self.client.send(f"filter delete Unique-ID {call.uuid}")
        self.finished.append(call)


async def measure_cpu(sim: SimProcess, window: float) -> float:
    """The simulator's CPU % (of one core) over the next `window` seconds."""
    sim.profiling(True)
    cpu0, wall0 = cpu_seconds(sim.pid), time.monotonic()
    await asyncio.sleep(window)
    cpu = 100.0 * (cpu_seconds(sim.pid) - cpu0) / (time.monotonic() - wall0)
    sim.profiling(False)
    return cpu


def profiled_sim(profile: Path | None, sim_args: list[str]) -> int:
    """Run `confguard sim` where SIGHUP runs gc.freeze() and, with `profile`, a profiler that
    SIGUSR1 starts and SIGUSR2 stops and writes."""
    import cProfile
    import gc

    from confguard.sim.cli import main as sim_main

    def freeze(signum: int, frame: object) -> None:
        gc.collect()
        gc.freeze()

    signal.signal(signal.SIGHUP, freeze)
    if profile is None:
        return sim_main(sim_args)
    profiler = cProfile.Profile()

    def start(signum: int, frame: object) -> None:
        profiler.enable()

    def stop(signum: int, frame: object) -> None:
        profiler.disable()
        profiler.dump_stats(profile)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    return sim_main(sim_args)


async def run_waiting(sim: SimProcess, args: argparse.Namespace) -> dict[str, object]:
    client = await Client.connect(sim.port)
    reader = asyncio.create_task(client.run())
    bench = Bench(client)
    await bench.subscribe()
    if args.reprompt == "inline":
        spec = InviteSpec(extension=SILENT_CALLEE, room="test1", timeout=3600, prompt=PROMPT)
        app = build_waiting_app(spec)
    else:
        app = "&park()"
    started = time.monotonic()
    for index in range(args.n):
        bench.place(app)
        if index % 100 == 99:
            await asyncio.sleep(100 / args.ramp)
    ramp_deadline = time.monotonic() + args.ramp_timeout
    while bench.answered + len(bench.finished) < args.n and time.monotonic() < ramp_deadline:
        await asyncio.sleep(0.2)
    ramp_s = time.monotonic() - started
    waiting = [call for call in bench.calls.values() if call.answered]
    prompter = None
    if args.reprompt == "broadcast":
        prompter = asyncio.create_task(reprompt(client, waiting, args.reprompt_every))
    sim.freeze()
    await asyncio.sleep(args.settle)
    events0 = client.events_seen
    cpu = await measure_cpu(sim, args.window)
    events = client.events_seen - events0
    if prompter is not None:
        prompter.cancel()
    result = {
        "mode": "waiting", "n": args.n, "reprompt": args.reprompt,
        "answered": len(waiting), "failed": len(bench.finished), "ramp_s": round(ramp_s, 1),
        "window_s": args.window, "sim_cpu_percent": round(cpu, 1),
        "events_per_s": round(events / args.window, 1),
    }  # fmt: skip
    reader.cancel()
    client.writer.close()
    return result


async def reprompt(client: Client, calls: list[Call], every: float) -> None:
    """`uuid_broadcast` to every call once per `every` seconds, spread evenly."""
    if not calls:
        return
    gap = every / len(calls)
    next_at = time.monotonic()
    while True:
        for call in calls:
            client.send(f"api uuid_broadcast {call.uuid} {PROMPT} aleg")
            next_at += gap
            delay = next_at - time.monotonic()
            if delay > 0.002:
                await asyncio.sleep(delay)


async def run_rate(sim: SimProcess, args: argparse.Namespace) -> dict[str, object]:
    client = await Client.connect(sim.port)
    reader = asyncio.create_task(client.run())
    bench = Bench(client)
    bench.rate_mode = True
    await bench.subscribe()
    sim.freeze()  # the start-up's objects
    cpu_start = cpu_seconds(sim.pid)
    extra = ",sim_answer_after=0.5,sim_dtmf=1@0.5"
    app = build_waiting_app(InviteSpec(extension="1000", room="test1", timeout=30, prompt=PROMPT))
    # warm up one second, then place at R/s for the window and measure what finishes meanwhile
    total = int(args.rate * (args.window + 1))
    tick = 0.01
    per_tick = args.rate * tick
    cpu0 = wall0 = 0.0
    finished0 = 0
    started = time.monotonic()
    placed, owed = 0, 0.0
    while placed < total:
        owed += per_tick
        while owed >= 1 and placed < total:
            bench.place(app, extra)
            placed += 1
            owed -= 1
        if not wall0 and time.monotonic() - started >= 1.0:
            cpu0, wall0, finished0 = cpu_seconds(sim.pid), time.monotonic(), len(bench.finished)
            sim.profiling(True)
        await asyncio.sleep(max(0.0, started + (placed / args.rate) - time.monotonic()))
    cpu1, wall1, finished1 = cpu_seconds(sim.pid), time.monotonic(), len(bench.finished)
    sim.profiling(False)
    drain_deadline = time.monotonic() + args.ramp_timeout
    while bench.calls and time.monotonic() < drain_deadline:
        await asyncio.sleep(0.2)
    cpu_drained = cpu_seconds(sim.pid)
    done = [call for call in bench.finished if call.joined]
    latencies = sorted(call.joined - call.key for call in done if call.key)
    lifetimes = sorted(call.ended - call.started for call in done if call.ended)
    answers = sorted(
        call.answered - call.started for call in [*bench.finished, *bench.calls.values()]
        if call.answered
    )

    def pct(values: list[float], q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1) if values else 0

    elapsed = wall1 - wall0
    result = {
        "mode": "rate", "rate": args.rate, "placed": placed,
        "joined": len(done), "not_joined": len(bench.finished) - len(done),
        "unfinished": len(bench.calls),
        "placing_rate": round(placed / (wall1 - started), 1),
        "finished_per_s": round((finished1 - finished0) / elapsed, 1),
        "sim_cpu_percent": round(100.0 * (cpu1 - cpu0) / elapsed, 1),
        # The simulator's CPU from the first invite until every one has ended, per invite:
        # how many invites a second one core's worth comes to (1000 / this).
        "sim_cpu_ms_per_invite": round(1000.0 * (cpu_drained - cpu_start) / max(1, placed), 2),
        "key_to_join_ms_p50": pct(latencies, 0.5), "key_to_join_ms_p99": pct(latencies, 0.99),
        "invite_ms_p50": pct(lifetimes, 0.5), "invite_ms_p99": pct(lifetimes, 0.99),
        "answer_ms_p50": pct(answers, 0.5), "answer_ms_p99": pct(answers, 0.99),
        "answered": len(answers),
    }  # fmt: skip
    failures: dict[str, int] = {}
    for call in bench.finished:
        if call.failed:
            failures[call.failed] = failures.get(call.failed, 0) + 1
    if failures:
        result["failures"] = failures
    result["client_cpu_percent"] = round(100.0 * time.process_time() / (time.monotonic() - started))
    reader.cancel()
    client.writer.close()
    return result


def main() -> int:
    if sys.argv[1:2] == ["profiled-sim"]:
        rest = sys.argv[sys.argv.index("--") + 1 :]
        head = sys.argv[: sys.argv.index("--")]
        profile = Path(head[head.index("--profile") + 1]) if "--profile" in head else None
        return profiled_sim(profile, rest)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("waiting", "rate"))
    parser.add_argument("amount", type=float, help="waiting: N calls; rate: R invites/s")
    parser.add_argument("--window", type=float, default=15.0, help="seconds measured")
    parser.add_argument("--reprompt", choices=("broadcast", "inline", "none"), default="inline")
    parser.add_argument("--reprompt-every", type=float, default=5.0)
    parser.add_argument("--ramp", type=float, default=500.0, help="waiting: originates/s")
    parser.add_argument("--ramp-timeout", type=float, default=120.0)
    parser.add_argument("--settle", type=float, default=3.0, help="waiting: s before measuring")
    parser.add_argument("--profile", type=Path, help="run the simulator under cProfile")
    args = parser.parse_args()
    args.n = int(args.amount)
    args.rate = args.amount
    sim = SimProcess(args.profile)
    sim.start()
    try:
        runner = run_waiting if args.mode == "waiting" else run_rate
        result = asyncio.run(runner(sim, args))
    finally:
        sim.stop()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
