"""Load on the FreeSWITCH simulator (confguard.sim) alone: how much CPU it burns, how fast it goes.

The simulator runs in its own process (`python -m confguard.sim` on 127.0.0.1, a free port); this
script is an ESL client that asks of it what the daemon does (the daemon's event list, json
events, the permanent filters plus its one Unique-ID filter per call, `bgapi
originate` with `api_on_originate='sched_hangup ...'`) and reads the simulator's CPU time from
/proc/<pid>/stat. The client is kept cheap (~0.2 ms of CPU per invite, so that 1,000 invites/s
and the simulator fit on 2 cores): an `asyncio.Protocol` on uvloop, frames split and the few
fields it routes on found with `bytes.find` (bench/esl_bytes.py), the commands of one loop pass
written at once, as the daemon writes them.

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
  The clients run as child processes (`--clients N`: N connections, R/N invites/s each; the
  daemon has one, the simulator's work per invite is the same); each reports its own CPU.

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
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.esl_bytes import head_value, json_key, json_value, split_frames  # noqa: E402
from confguard.engine import SUBSCRIBED_EVENTS  # noqa: E402
from confguard.esl import PERMANENT_FILTERS  # noqa: E402
from confguard.invite import InviteSpec, build_waiting_app  # noqa: E402
from confguard.realswitch import free_port  # noqa: E402

HOST = "127.0.0.1"  # the simulator listens on loopback only, and so does this client
PASSWORD = "bench-sim-load"
SILENT_CALLEE = "1001"  # answers after 1 s, never presses
PROMPT = "tone_stream://%(250,250,440)"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
HOLD_P99_MS = 50.0  # a run holds R when finished/s >= 0.98 R and key->join p99 <= this


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


class Call:
    """One invite as the client follows it (times are `time.monotonic()`)."""

    __slots__ = ("answered", "ended", "failed", "job", "joined", "key", "started", "uuid")

    def __init__(self, call_uuid: str, job: str, started: float) -> None:
        self.uuid = call_uuid
        self.job = job
        self.started = started
        self.answered = 0.0
        self.key = 0.0
        self.joined = 0.0
        self.ended = 0.0
        self.failed = ""


class EslClient(asyncio.Protocol):
    """A cheap pipelined ESL client: replies matched in order, json events handed to `on_event`
    as (Event-Name, body, arrival time) without being decoded.

    The bytes of one read are split into frames (`esl_bytes.split_frames`) and handled in wire
    order; the commands sent while handling them, or anywhere in one pass of the loop, leave in
    one write at the end of that pass (as the daemon's do)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.on_event: Callable[[bytes, bytes, float], None] | None = None
        self.events_seen = 0
        self.errors = 0  # -ERR replies to commands nobody waits for
        self.first_error = ""
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._rest = b""
        self._waiters: deque[asyncio.Future[str] | None] = deque()
        self._outgoing: list[bytes] = []
        self._greeted: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def connect(cls, port: int) -> EslClient:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(cls, HOST, port)
        await client._greeted
        reply = await client.request(f"auth {PASSWORD}\n\n")
        if not reply.startswith("+OK"):
            raise RuntimeError(f"auth refused: {reply}")
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, command: str) -> None:
        """Queue one command (its whole text, blank line included); its reply is counted."""
        self._waiters.append(None)
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing.append(command.encode())

    def request(self, command: str) -> asyncio.Future[str]:
        """Send one command; the future gets its Reply-Text or api/response body."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.send(command)
        self._waiters[-1] = future
        return future

    def _flush(self) -> None:
        if self._outgoing and self.transport is not None:
            self.transport.write(b"".join(self._outgoing))
        self._outgoing.clear()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._rest:
            data = self._rest + data
        frames, used = split_frames(data)
        self._rest = data[used:]
        now = time.monotonic()
        on_event = self.on_event
        for content_type, head, body in frames:
            if content_type == b"text/event-json":
                self.events_seen += 1
                if on_event is not None:
                    on_event(json_value(body, EVENT_NAME) or b"", body, now)
            elif content_type == b"command/reply":
                self._reply((head_value(head, b"Reply-Text: ") or b"").decode())
            elif content_type == b"api/response":
                self._reply(body.decode())
            elif content_type == b"auth/request":
                self._greeted.set_result(None)
            elif content_type == b"text/disconnect-notice":
                self.close()

    def _reply(self, text: str) -> None:
        waiter = self._waiters.popleft()
        if waiter is not None:
            waiter.set_result(text)
        elif text.startswith("-ERR"):
            self.errors += 1
            self.first_error = self.first_error or text.strip()


EVENT_NAME = json_key("Event-Name")
UNIQUE_ID = json_key("Unique-ID")
JOB_UUID = json_key("Job-UUID")
ACTION = json_key("Action")
HANGUP_CAUSE = json_key("Hangup-Cause")
JOB_BODY = json_key("_body")


def originate(call: Call, app: str, extra_vars: str) -> str:
    return (
        f"originate {{origination_uuid={call.uuid},originate_timeout=30,ignore_early_media=true,"
        f"confguard_invite=bench{extra_vars},"
        f"api_on_originate='sched_hangup +3600 {call.uuid} ALLOTTED_TIMEOUT'}}"
        f"user/{SILENT_CALLEE} {app}"
    )


class Bench:
    """The calls, the event routing and the figures of one client's run."""

    def __init__(self, client: EslClient) -> None:
        self.client = client
        self.calls: dict[bytes, Call] = {}  # by Unique-ID, as the events carry it
        self.by_job: dict[bytes, Call] = {}
        self.answered = 0
        self.finished: list[Call] = []
        self.rate_mode = False
        client.on_event = self.event

    async def subscribe(self) -> None:
        """The daemon's subscription and its permanent filters (confguard.engine, esl)."""
        replies = [self.client.request("event json " + " ".join(SUBSCRIBED_EVENTS) + "\n\n")]
        for header, value in PERMANENT_FILTERS:
            replies.append(self.client.request(f"filter {header} {value}\n\n"))
        for reply in replies:
            text = await reply
            if not text.startswith("+OK"):
                raise RuntimeError(f"subscription refused: {text}")

    def place(self, app: str, extra_vars: str = "") -> Call:
        call = Call(str(uuid.uuid4()), str(uuid.uuid4()), time.monotonic())
        self.calls[call.uuid.encode()] = call
        self.by_job[call.job.encode()] = call
        send = self.client.send
        send(f"filter Unique-ID {call.uuid}\n\n")  # the daemon's one filter a call
        send(f"bgapi {originate(call, app, extra_vars)}\nJob-UUID: {call.job}\n\n")
        return call

    def event(self, name: bytes, body: bytes, now: float) -> None:
        if name == b"BACKGROUND_JOB":
            job = self.by_job.get(json_value(body, JOB_UUID) or b"")
            at = body.find(JOB_BODY)
            if job is not None and not (at >= 0 and body.startswith(b"+OK", at + len(JOB_BODY))):
                job.failed = str(json.loads(body).get("_body", "")).strip()
                self._end(job, now)
            return
        if name not in _ROUTED:
            return
        call = self.calls.get(json_value(body, UNIQUE_ID) or b"")
        if call is None:
            return
        if name == b"CHANNEL_ANSWER":
            if not call.answered:
                call.answered = now
                self.answered += 1
        elif name == b"DTMF":
            if self.rate_mode and not call.key:
                call.key = time.monotonic()  # not `now`: the join often comes in the same read
        elif name == b"CUSTOM":
            if not call.joined and json_value(body, ACTION) == b"add-member":
                call.joined = time.monotonic()
                self.client.send(f"api uuid_kill {call.uuid}\n\n")
        else:  # CHANNEL_HANGUP_COMPLETE
            if not call.joined and self.rate_mode:
                cause = (json_value(body, HANGUP_CAUSE) or b"").decode()
                call.failed = f"hung up before the join: {cause}"
            self._end(call, now)

    def _end(self, call: Call, now: float) -> None:
        if self.calls.pop(call.uuid.encode(), None) is None:
            return
        self.by_job.pop(call.job.encode(), None)
        call.ended = now
        self.client.send(f"filter delete Unique-ID {call.uuid}\n\n")
        self.finished.append(call)


_ROUTED = frozenset((b"CHANNEL_ANSWER", b"DTMF", b"CUSTOM", b"CHANNEL_HANGUP_COMPLETE"))


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
    client = await EslClient.connect(sim.port)
    bench = Bench(client)
    await bench.subscribe()
    if args.reprompt == "inline":
        spec = InviteSpec(extension=SILENT_CALLEE, room="test1", timeout=3600, prompt=PROMPT)
        app = build_waiting_app(spec)
    else:
        app = "&park()"
    started = time.monotonic()
    cpu_started = time.process_time()
    for index in range(args.n):
        bench.place(app)
        if index % 100 == 99:
            await asyncio.sleep(100 / args.ramp)
    ramp_deadline = time.monotonic() + args.ramp_timeout
    while bench.answered + len(bench.finished) < args.n and time.monotonic() < ramp_deadline:
        await asyncio.sleep(0.05)
    ramp_s = time.monotonic() - started
    client_cpu = time.process_time() - cpu_started
    waiting = [call for call in bench.calls.values() if call.answered]
    prompter = None
    if args.reprompt == "broadcast":
        prompter = asyncio.create_task(reprompt(client, waiting, args.reprompt_every))
    sim.freeze()
    await settle(client, args.settle)
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
        "client_ms_per_invite_placing": round(1000 * client_cpu / max(1, args.n), 3),
        "command_errors": client.errors,
    }  # fmt: skip
    client.close()
    return result


async def settle(client: EslClient, longest: float) -> None:
    """Wait until the simulator has sent no event for 0.5 s (the ramp's last answers and
    timers), at most `longest` seconds."""
    deadline = time.monotonic() + longest
    seen = -1
    while time.monotonic() < deadline and client.events_seen != seen:
        seen = client.events_seen
        await asyncio.sleep(0.5)


async def reprompt(client: EslClient, calls: list[Call], every: float) -> None:
    """`uuid_broadcast` to every call once per `every` seconds, spread evenly."""
    if not calls:
        return
    gap = every / len(calls)
    next_at = time.monotonic()
    while True:
        for call in calls:
            client.send(f"api uuid_broadcast {call.uuid} {PROMPT} aleg\n\n")
            next_at += gap
            delay = next_at - time.monotonic()
            if delay > 0.002:
                await asyncio.sleep(delay)


# ------------------------------------------------------------------------------ rate mode
# `rate R --clients N`: N client processes (this script's `client` entry), each with its own
# connection and R/N invites a second, all starting at the same monotonic instant (the clock is
# the system's, shared by the processes). The parent only reads the simulator's CPU.


async def run_client(args: argparse.Namespace) -> dict[str, object]:
    """One client process of `rate`: connect and subscribe, say `ready`, read the start time
    from stdin, place `args.rate` invites a second from then for warm-up + window s, wait until
    they have all ended; return what the parent needs to sum up."""
    client = await EslClient.connect(args.port)
    bench = Bench(client)
    bench.rate_mode = True
    await bench.subscribe()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    start = float(await loop.run_in_executor(None, sys.stdin.readline))
    extra = ",sim_answer_after=0.5,sim_dtmf=1@0.5"
    app = build_waiting_app(InviteSpec(extension="1000", room="test1", timeout=30, prompt=PROMPT))
    total = int(args.rate * (args.warmup + args.window))
    per_tick = args.rate * 0.01  # a batch every 10 ms
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    cpu_start = time.process_time()
    placed, owed = 0, 0.0
    while placed < total:
        owed += per_tick
        while owed >= 1 and placed < total:
            bench.place(app, extra)
            placed += 1
            owed -= 1
        await asyncio.sleep(max(0.0, start + (placed / args.rate) - time.monotonic()))
    placing_s = time.monotonic() - start
    drain_deadline = time.monotonic() + args.ramp_timeout
    while bench.calls and time.monotonic() < drain_deadline:
        await asyncio.sleep(0.05)
    cpu = time.process_time() - cpu_start
    window = (start + args.warmup, start + args.warmup + args.window)
    done = [call for call in bench.finished if call.joined]
    failures: dict[str, int] = {}
    for call in bench.finished:
        if call.failed:
            failures[call.failed] = failures.get(call.failed, 0) + 1
    result = {
        "placed": placed, "placing_s": placing_s,
        "joined": len(done), "not_joined": len(bench.finished) - len(done),
        "unfinished": len(bench.calls),
        "finished_in_window": sum(window[0] <= call.ended < window[1] for call in bench.finished),
        "key_to_join": [call.joined - call.key for call in done if call.key],
        "lifetime": [call.ended - call.started for call in done],
        "answer": [call.answered - call.started
                   for call in [*bench.finished, *bench.calls.values()] if call.answered],
        "failures": failures, "cpu_s": cpu, "wall_s": time.monotonic() - start,
        "events": client.events_seen, "command_errors": client.errors,
        "first_command_error": client.first_error,
    }  # fmt: skip
    client.close()
    return result


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1) if values else 0


def run_rate(sim: SimProcess, args: argparse.Namespace) -> dict[str, object]:
    share = str(args.rate / args.clients)
    command = [sys.executable, str(Path(__file__).resolve()), "client", share,
               "--port", str(sim.port), "--window", str(args.window), "--warmup", str(args.warmup),
               "--ramp-timeout", str(args.ramp_timeout), "--loop", args.loop]  # fmt: skip
    results = tempfile.TemporaryDirectory(prefix="sim-load-clients-")
    outs = [Path(results.name) / f"client-{index}.json" for index in range(args.clients)]
    clients = [subprocess.Popen([*command, "--out", str(out)], cwd=ROOT, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for out in outs]  # fmt: skip
    try:
        for child in clients:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError("a client process did not get ready")
        sim.freeze()  # the start-up's objects
        time.sleep(0.2)
        start = time.monotonic() + 0.3
        for child in clients:
            assert child.stdin is not None
            child.stdin.write(f"{start!r}\n")
            child.stdin.flush()
        # the simulator's CPU from the first invite until every one has ended; and in the
        # window: after the warm-up, `window` seconds of placing at the full rate
        time.sleep(max(0.0, start - time.monotonic()))
        cpu_start = cpu_seconds(sim.pid)
        time.sleep(max(0.0, start + args.warmup - time.monotonic()))
        cpu0, wall0 = cpu_seconds(sim.pid), time.monotonic()
        sim.profiling(True)
        time.sleep(max(0.0, start + args.warmup + args.window - time.monotonic()))
        cpu1, wall1 = cpu_seconds(sim.pid), time.monotonic()
        sim.profiling(False)
        for child in clients:
            child.communicate()
        cpu_drained = cpu_seconds(sim.pid)
        if any(child.returncode for child in clients):
            raise RuntimeError("a client process failed")
        parts = [json.loads(out.read_text()) for out in outs]
    finally:
        for child in clients:
            if child.poll() is None:
                child.kill()
                child.wait()
        results.cleanup()
    placed = sum(part["placed"] for part in parts)
    elapsed = wall1 - wall0
    sim_ms = 1000.0 * (cpu_drained - cpu_start) / max(1, placed)
    finished_per_s = sum(part["finished_in_window"] for part in parts) / elapsed
    key_to_join = [value for part in parts for value in part["key_to_join"]]
    lifetime = [value for part in parts for value in part["lifetime"]]
    answer = [value for part in parts for value in part["answer"]]
    failures: dict[str, int] = {}
    for part in parts:
        for text, count in part["failures"].items():
            failures[text] = failures.get(text, 0) + count
    p99 = _pct(key_to_join, 0.99)
    result: dict[str, object] = {
        "mode": "rate", "rate": args.rate, "clients": args.clients, "warmup_s": args.warmup,
        "window_s": args.window, "placed": placed,
        "joined": sum(part["joined"] for part in parts),
        "not_joined": sum(part["not_joined"] for part in parts),
        "unfinished": sum(part["unfinished"] for part in parts),
        "placing_rate": round(placed / max(part["placing_s"] for part in parts), 1),
        "finished_per_s": round(finished_per_s, 1),
        # holds R: finished/s in the window >= 0.98 R and key->join p99 <= HOLD_P99_MS
        "holds": finished_per_s >= 0.98 * args.rate and p99 <= HOLD_P99_MS,
        "hold_p99_ms": HOLD_P99_MS,
        "sim_cpu_percent": round(100.0 * (cpu1 - cpu0) / elapsed, 1),
        # The simulator's CPU from the first invite until every one has ended, per invite,
        # and how many invites a second one core's worth comes to (1000 / that).
        "sim_cpu_ms_per_invite": round(sim_ms, 2),
        "sim_invites_per_core_s": round(1000.0 / sim_ms) if sim_ms else None,
        "key_to_join_ms_p50": _pct(key_to_join, 0.5), "key_to_join_ms_p99": p99,
        "invite_ms_p50": _pct(lifetime, 0.5), "invite_ms_p99": _pct(lifetime, 0.99),
        "answer_ms_p50": _pct(answer, 0.5), "answer_ms_p99": _pct(answer, 0.99),
        "answered": len(answer),
        # each client process: its CPU % over its run, and its CPU per invite it placed
        "client_cpu_percent": [round(100.0 * part["cpu_s"] / part["wall_s"], 1) for part in parts],
        "client_cpu_ms_per_invite": [round(1000.0 * part["cpu_s"] / max(1, part["placed"]), 3)
                                     for part in parts],
        "command_errors": sum(part["command_errors"] for part in parts),
    }  # fmt: skip
    if failures:
        result["failures"] = failures
    errors = [part["first_command_error"] for part in parts if part["first_command_error"]]
    if errors:
        result["first_command_error"] = errors[0]
    if args.clients > 1:
        result["note"] = (
            f"{args.clients} client connections (the daemon has one); the "
            "simulator's work per invite is the same"
        )
    return result


def run_loop(main: Coroutine[object, object, dict[str, object]], loop: str) -> dict[str, object]:
    """Run the client's coroutine on uvloop or asyncio's own loop (the simulator's process is
    not affected: it runs as `confguard sim` does)."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def main() -> int:
    if sys.argv[1:2] == ["profiled-sim"]:
        rest = sys.argv[sys.argv.index("--") + 1 :]
        head = sys.argv[: sys.argv.index("--")]
        profile = Path(head[head.index("--profile") + 1]) if "--profile" in head else None
        return profiled_sim(profile, rest)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("waiting", "rate", "client"))
    parser.add_argument("amount", type=float, help="waiting: N calls; rate: R invites/s")
    parser.add_argument("--window", type=float, default=15.0, help="seconds measured")
    # An invite lives ~1.0 s at best (answer after 0.5 s, key 0.5 s later): finishes counted
    # from a 1 s warm-up missed the invites still ringing when it began (0.98 R at a 1.1 s
    # lifetime, with the simulator keeping up). 2 s covers the lifetime at p99 when it does.
    parser.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="rate: seconds placed at the full rate before the window",
    )
    parser.add_argument("--reprompt", choices=("broadcast", "inline", "none"), default="inline")
    parser.add_argument("--reprompt-every", type=float, default=5.0)
    parser.add_argument("--ramp", type=float, default=500.0, help="waiting: originates/s")
    parser.add_argument("--ramp-timeout", type=float, default=120.0)
    parser.add_argument("--settle", type=float, default=3.0, help="waiting: at most s to settle")
    parser.add_argument(
        "--clients",
        type=int,
        default=1,
        help="rate: client processes, each its own connection and R/N invites/s",
    )
    parser.add_argument(
        "--loop", choices=("uvloop", "asyncio"), default="uvloop", help="the client's event loop"
    )
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)  # the `client` entry's
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)  # the `client` entry's
    parser.add_argument("--profile", type=Path, help="run the simulator under cProfile")
    args = parser.parse_args()
    args.n = int(args.amount)
    args.rate = args.amount
    if args.mode == "client":  # its figures go to a file: they are too many for a pipe
        args.out.write_text(json.dumps(run_loop(run_client(args), args.loop)))
        return 0
    sim = SimProcess(args.profile)
    sim.start()
    try:
        if args.mode == "rate":
            result = run_rate(sim, args)
        else:
            result = run_loop(run_waiting(sim, args), args.loop)
    finally:
        sim.stop()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
