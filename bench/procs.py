"""The processes of a benchmark run and what /proc says about them.

Owns: CPU seconds (utime + stime of every thread, /proc/<pid>/stat) and RSS (/proc/<pid>/status)
of a process; starting and stopping the daemon (`python -m confguard.cli serve`, configured by
environment as tests/test_e2e.py::ServeProcess does), the simulator (bench/sim_peer.py) and the
recording relay (bench/relay.py), each its own process on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from confguard.api import ControlClient
from confguard.realswitch import free_port

REPO = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14, 15)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def wait_port(port: int, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds:g} s")


class Child:
    """One child process, its output in a file, stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_sim(workdir: Path, password_file: Path) -> tuple[Child, int]:
    """The simulator in real time (time scale 1) on a free loopback port."""
    port = free_port()
    child = Child(
        [sys.executable, "-m", "bench.sim_peer", "--host", "127.0.0.1", "--port", str(port),
         "--password-file", str(password_file), "--time-scale", "1"],
        workdir / "sim.log",
    )
    wait_port(port)
    return child, port


def start_relay(workdir: Path, upstream: int, record: Path) -> tuple[Child, int]:
    """The recording relay 127.0.0.1:<port> -> upstream; writes `record` when stopped."""
    port = free_port()
    child = Child(
        [sys.executable, "-m", "bench.relay", "--port", str(port), "--upstream", str(upstream),
         "--record", str(record)],
        workdir / "relay.log",
    )
    wait_port(port)
    return child, port


class Daemon(Child):
    """`confguard serve` as its own process, info-level JSON logs into `daemon.log`."""

    def __init__(self, workdir: Path, esl_port: int, password_file: Path,
                 profile: Path | None = None) -> None:
        self.socket = str(workdir / "confguard.sock")
        self.log_file = workdir / "daemon.log"
        (workdir / "none.toml").write_text("# everything from the environment\n")
        env = {
            **os.environ,
            "CONFGUARD_CONFIG": str(workdir / "none.toml"),
            "CONFGUARD_API_SOCKET": self.socket,
            "CONFGUARD_JOURNAL_PATH": str(workdir / "journal.sqlite3"),
            "CONFGUARD_ESL_HOST": "127.0.0.1",
            "CONFGUARD_ESL_PORT": str(esl_port),
            "CONFGUARD_ESL_PASSWORD_FILE": str(password_file),
            "CONFGUARD_LOG_FORMAT": "json",
            "CONFGUARD_LOG_LEVEL": "info",
            "CONFGUARD_LOG_FILE": str(self.log_file),
        }
        head = [sys.executable]
        if profile is not None:
            head += ["-m", "cProfile", "-o", str(profile)]
        super().__init__([*head, "-m", "confguard.cli", "serve"], workdir / "daemon.out", env)

    async def wait_connected(self, seconds: float = 20.0) -> None:
        client = ControlClient(self.socket)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError("confguard serve exited:\n" + _tail(self.log))
            try:
                status = await client.request("GET", "/status")
                if status.get("esl", {}).get("connected"):
                    return
            except Exception:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError("confguard serve did not connect:\n" + _tail(self.log_file))

    def log_lines(self) -> list[dict[str, object]]:
        out = []
        if self.log_file.exists():
            for line in self.log_file.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        continue
        return out


def _tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return "(no output)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
