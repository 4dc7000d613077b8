"""The daemon through its real interfaces: `confguard serve` as a subprocess.

Configuration comes from `CONFGUARD_*` variables and a temporary folder (as `make demo` does);
systemd is played by an AF_UNIX datagram socket bound by the test (`NOTIFY_SOCKET`) with
`WATCHDOG_USEC` set. FreeSWITCH is the simulator, in the test's event loop, with a non-default
password (given to the daemon as a password file), at time scale 0.1. Invites, `status` and
`history` go through `confguard.cli.main` in a thread, as the console script would run them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from confguard import cli
from confguard.sim import SimConfig, Simulator

PASSWORD = "Daemon-Test-Pw-5e1d07"  # not FreeSWITCH's default; must never show anywhere
TIME_SCALE = 0.1
STABLE_KEYS = ("timestamp", "level", "event")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class NotifySocket:
    """What systemd would see: every sd_notify datagram the daemon sends, in order."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> None:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return

    def assignments(self) -> list[str]:
        """Every KEY=value line received so far, in order."""
        self.drain()
        return [line for message in self.messages for line in message.splitlines()]

    async def wait_for(self, predicate: Callable[[str], bool], seconds: float = 5.0) -> str:
        """The first assignment (from the start) matching `predicate`."""
        deadline = time.monotonic() + seconds
        while True:
            for line in self.assignments():
                if predicate(line):
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching notification; got {self.assignments()}")
            await asyncio.sleep(0.02)

    async def wait_after(self, index: int, wanted: str, seconds: float = 5.0) -> int:
        """Index of the first assignment equal to `wanted` at or after `index`."""
        deadline = time.monotonic() + seconds
        while True:
            lines = self.assignments()
            for i in range(index, len(lines)):
                if lines[i] == wanted:
                    return i
            if time.monotonic() > deadline:
                raise AssertionError(f"no {wanted} after #{index}; got {lines}")
            await asyncio.sleep(0.02)

    def close(self) -> None:
        self.sock.close()


@dataclass
class Daemon:
    """One `confguard serve` process and everything around it."""

    workdir: Path
    port: int
    notify: NotifySocket
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    runs: int = 0
    outputs: list[Path] = field(default_factory=list)

    @property
    def socket(self) -> str:
        return self.env["CONFGUARD_API_SOCKET"]

    @property
    def journal(self) -> str:
        return self.env["CONFGUARD_JOURNAL_PATH"]

    @property
    def config(self) -> str:
        return self.env["CONFGUARD_CONFIG"]

    def start(self, *flags: str) -> None:
        self.runs += 1
        out = self.workdir / f"serve-{self.runs}.out"
        err = self.workdir / f"serve-{self.runs}.err"
        self.outputs += [out, err]
        with out.open("wb") as stdout, err.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "confguard.cli", "serve", *flags],
                env=self.env, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
            )

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def wait_exit(self, seconds: float) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + seconds
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"confguard serve still running after {seconds} s")
            await asyncio.sleep(0.02)
        return int(self.proc.returncode)

    def stderr(self) -> str:
        return (self.workdir / f"serve-{self.runs}.err").read_text()

    def every_output(self) -> str:
        return "".join(path.read_text() for path in self.outputs if path.exists())

    def log_lines(self) -> list[dict[str, object]]:
        """Every line of every run's stderr, each parsed as JSON (fails on any other line)."""
        lines = []
        for path in self.outputs:
            if path.suffix == ".err":
                lines += [json.loads(line) for line in path.read_text().splitlines()]
        return lines

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def shortdir() -> Iterator[Path]:
    """AF_UNIX paths must stay under 108 bytes: pytest's tmp_path can be longer."""
    path = Path(tempfile.mkdtemp(prefix="cg-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(shortdir: Path) -> Iterator[Daemon]:
    (shortdir / "confguard.toml").write_text("# test: settings come from the environment\n")
    (shortdir / "esl-password").write_text(PASSWORD + "\n")
    port = free_port()
    notify = NotifySocket(str(shortdir / "notify"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONFGUARD_")}
    env.update(
        CONFGUARD_CONFIG=str(shortdir / "confguard.toml"),
        CONFGUARD_ESL_HOST="127.0.0.1",
        CONFGUARD_ESL_PORT=str(port),
        CONFGUARD_ESL_PASSWORD_FILE=str(shortdir / "esl-password"),
        CONFGUARD_ESL_RECONNECT_MAX="1",
        CONFGUARD_API_SOCKET=str(shortdir / "run" / "confguard.sock"),
        CONFGUARD_JOURNAL_PATH=str(shortdir / "state" / "journal.sqlite3"),
        CONFGUARD_INVITE_PROMPT="tone_stream://%(200,100,440)",
        NOTIFY_SOCKET=notify.path,
        WATCHDOG_USEC="2000000",
    )
    env.pop("WATCHDOG_PID", None)
    running = Daemon(workdir=shortdir, port=port, notify=notify, env=env)
    try:
        yield running
    finally:
        running.kill()
        notify.close()


@contextlib.asynccontextmanager
async def simulator(port: int) -> AsyncIterator[Simulator]:
    sim = Simulator(SimConfig(host="127.0.0.1", port=port, password=PASSWORD,
                              time_scale=TIME_SCALE, heartbeat_interval=20.0))
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


def connected_line(daemon: Daemon, count: int = 0) -> str:
    return f"STATUS=connected to 127.0.0.1:{daemon.port}, {count} invites active"


async def run_cli(daemon: Daemon, *argv: str) -> tuple[int, str]:
    """`confguard <argv> --config <the daemon's>` in a thread; (exit code, stdout)."""
    out = io.StringIO()
    code = await asyncio.to_thread(cli.main, [*argv, "--config", daemon.config], out)
    return code, out.getvalue()


async def invite(daemon: Daemon, ext: str, timeout: int, *flags: str) -> list[dict[str, object]]:
    _, out = await run_cli(daemon, "invite", ext, "--room", "test1", "--timeout", str(timeout),
                           "--json", "--socket", daemon.socket, *flags)
    return [json.loads(line) for line in out.splitlines()]


async def task_groups(sim: Simulator) -> set[str]:
    rows = json.loads(await sim.switch.api("show tasks as json")).get("rows", [])
    return {row.get("task_group") for row in rows}


# --- tests ----------------------------------------------------------------------------------------


async def test_notify_ready_status_watchdog_then_connected(daemon: Daemon) -> None:
    daemon.start()
    notify = daemon.notify
    await notify.wait_for(lambda line: line == "READY=1")
    waiting = f"STATUS=waiting for 127.0.0.1:{daemon.port}, 0 invites active"
    await notify.wait_for(lambda line: line == waiting)
    await notify.wait_for(lambda line: line == "WATCHDOG=1")
    # READY=1 means the control socket listens: it is there, a socket, mode 0660.
    mode = os.stat(daemon.socket).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660
    async with simulator(daemon.port):
        await notify.wait_for(lambda line: line == connected_line(daemon))
        lines = notify.assignments()
        assert lines.index(waiting) < lines.index(connected_line(daemon))
        pings = lines.count("WATCHDOG=1")
        await asyncio.sleep(1.2)  # WatchdogSec=2 s: a ping at least every second
        assert notify.assignments().count("WATCHDOG=1") > pings
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait_exit(5) == 0
    assert "STOPPING=1" in notify.assignments()
    assert not os.path.exists(daemon.socket)  # removed on the way out


async def test_sigterm_leaves_live_calls_bounded_and_the_journal_survives(daemon: Daemon) -> None:
    async with simulator(daemon.port) as sim:
        daemon.start()
        await daemon.notify.wait_for(lambda line: line == connected_line(daemon))
        joined = await invite(daemon, "1000", 10)
        assert joined[-1]["outcome"] == "joined"
        # 1001 answers and stays silent: live, waiting for the key, its timer armed (60 s).
        code, out = await run_cli(daemon, "invite", "1001", "--room", "test1", "--timeout", "60",
                                  "--no-wait", "--socket", daemon.socket)
        assert code == 0
        live_uuid = out.strip()
        await daemon.notify.wait_for(lambda line: line == connected_line(daemon, 1))
        code, status_text = await run_cli(daemon, "status", "--socket", daemon.socket)
        assert code == 0
        assert live_uuid in status_text
        assert "1 active invite(s)" in status_text
        assert live_uuid in await task_groups(sim)

        before = len(daemon.notify.assignments())
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait_exit(5) == 0
        await daemon.notify.wait_after(before, "STOPPING=1")
        # Without confguard the call is still bounded: its hangup task is still in the switch.
        assert (await sim.switch.api(f"uuid_exists {live_uuid}")).strip() == "true"
        assert live_uuid in await task_groups(sim)
        stopped = [line["event"] for line in daemon.log_lines()]
        assert "daemon.stopping" in stopped
        assert stopped[-1] == "daemon.stopped"

        # The next start finds the journal as the last one left it.
        before = len(daemon.notify.assignments())
        daemon.start()
        await daemon.notify.wait_after(before, "READY=1")
        code, history = await run_cli(daemon, "history", "--journal", daemon.journal, "--json")
        assert code == 0
        rows = [json.loads(line) for line in history.splitlines()]
        assert any(r["ext"] == "1000" and r["outcome"] == "joined"
                   and r["call_uuid"] == joined[0]["uuid"] for r in rows), rows
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait_exit(5) == 0


async def test_sighup_reloads_the_log_level_and_reopens_the_log_file(daemon: Daemon) -> None:
    config = Path(daemon.config)
    config.write_text('[log]\nlevel = "info"\n')
    log_file = daemon.workdir / "confguard.log"
    async with simulator(daemon.port):
        daemon.start("--log-file", str(log_file))
        notify = daemon.notify
        await notify.wait_for(lambda line: line == connected_line(daemon))
        assert '"esl.connected"' in log_file.read_text()
        assert '"level": "debug"' not in log_file.read_text()

        config.write_text('[log]\nlevel = "debug"\n')
        log_file.rename(daemon.workdir / "confguard.log.1")  # what logrotate does
        before = len(notify.assignments())
        daemon.signal(signal.SIGHUP)
        reloading = await notify.wait_after(before, "RELOADING=1")
        await notify.wait_after(reloading, "READY=1")
        for _ in range(100):
            if log_file.exists() and '"config.reloaded"' in log_file.read_text():
                break
            await asyncio.sleep(0.02)
        reloaded = [json.loads(line) for line in log_file.read_text().splitlines()]
        assert {"event": "config.reloaded", "log_level": "debug"}.items() <= reloaded[0].items()
        assert '"config.reloaded"' not in (daemon.workdir / "confguard.log.1").read_text()

        # Debug lines now appear: the STATUS= change a live invite causes is logged at debug.
        code, _ = await run_cli(daemon, "invite", "1001", "--room", "test1", "--timeout", "30",
                                "--no-wait", "--socket", daemon.socket)
        assert code == 0
        await notify.wait_for(lambda line: line == connected_line(daemon, 1))
        lines = [json.loads(line) for line in log_file.read_text().splitlines()]
        debug = [line for line in lines if line["level"] == "debug"]
        assert {"event": "daemon.status", "status": connected_line(daemon, 1)[7:]}.items() <= (
            debug[-1].items()
        ), lines
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait_exit(5) == 0
    assert daemon.stderr() == ""  # with --log-file, nothing goes to stderr


async def test_json_logs_metrics_and_no_password_anywhere(daemon: Daemon) -> None:
    metrics_port = free_port()
    daemon.env.update(CONFGUARD_LOG_LEVEL="debug",
                      CONFGUARD_METRICS_LISTEN=f"127.0.0.1:{metrics_port}")
    async with simulator(daemon.port):
        daemon.start()
        await daemon.notify.wait_for(lambda line: line == connected_line(daemon))
        joined = await invite(daemon, "1000", 10)
        timed_out = await invite(daemon, "1001", 10)
        assert joined[-1]["outcome"] == "joined"
        assert timed_out[-1]["outcome"] == "timeout"
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        metrics = await asyncio.to_thread(
            lambda: urllib.request.urlopen(url, timeout=5).read().decode()
        )
        code, status_json = await run_cli(daemon, "status", "--json", "--socket", daemon.socket)
        assert code == 0
        assert json.loads(status_json)["esl"]["connected"] is True
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait_exit(5) == 0

    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines() if line and not line.startswith("#")
    }
    assert samples['confguard_invites_finished_total{outcome="joined"}'] == 1
    assert samples['confguard_invites_finished_total{outcome="timeout"}'] == 1
    assert samples["confguard_esl_connected"] == 1
    assert samples['confguard_events_received_total{event="CHANNEL_ANSWER"}'] >= 2
    assert samples['confguard_events_received_total{event="DTMF"}'] >= 1
    assert samples['confguard_events_received_total{event="conference::maintenance"}'] >= 1
    assert samples["confguard_key_to_joined_seconds_count"] == 1

    # stderr is a file, not a TTY: every line is JSON with the stable leading keys.
    lines = daemon.log_lines()
    assert lines
    for line in lines:
        assert list(line)[:3] == list(STABLE_KEYS), line
    for updates in (joined, timed_out):
        call = updates[0]["uuid"]
        states = [line for line in lines if line["event"] == "invite.state"
                  and line.get("uuid") == call]
        # One line per state change, as the CLI saw them, each naming the call.
        assert [s["state"] for s in states] == [u["state"] for u in updates]
        for line in states:
            assert line["ext"] == updates[0]["ext"]
            assert line["room"] == "test1"
        assert states[-1]["outcome"] == updates[-1]["outcome"]
    assert states[-1]["cause"] == "ALLOTTED_TIMEOUT"

    everything = daemon.every_output() + metrics + status_json + "\n".join(
        daemon.notify.assignments())
    assert PASSWORD not in everything


async def test_a_second_daemon_on_the_same_socket_exits_with_a_log_line(daemon: Daemon) -> None:
    daemon.start()
    await daemon.notify.wait_for(lambda line: line == "READY=1")
    first = daemon.proc
    daemon.start()  # same socket, same journal
    assert await daemon.wait_exit(20) == 1  # its whole start-up first: slow on a loaded machine
    failed = [line for line in daemon.log_lines() if line["event"] == "api.start_failed"]
    assert len(failed) == 1
    assert "already listening" in str(failed[0]["error"])
    assert daemon.notify.assignments().count("READY=1") == 1  # the second never said ready
    assert first is not None and first.poll() is None  # the first one is untouched
    daemon.proc = first
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_exit(5) == 0
