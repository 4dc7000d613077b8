"""`make demo` / `make demo-real`: the whole scenario, as separate processes on loopback.

1. the switch: `confguard sim`, the built-in FreeSWITCH simulator on 127.0.0.1 (a free port);
   or, with `--real` (`make demo-real`), a real FreeSWITCH (`confguard.realswitch`: the one in
   `$CONFGUARD_FREESWITCH`, else the tarball in ../shared/freeswitch/dist) with the project's
   own test configuration, on 127.0.0.1 with a free port and a generated password;
2. `confguard serve` — the daemon, its control socket and journal in a temporary folder;
3. `confguard invite 1000 --room test1` — user 1000 presses 1 two seconds after answering: joined;
   `confguard invite 1001 --room test1` — user 1001 stays silent: timed out at T.
It prints the daemon's log lines (one per state change) and both outcomes, stops everything, and
exits 0 only when both outcomes are the expected ones (2 when `--real` finds no FreeSWITCH:
the message says how to provide one). About ten seconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from confguard.realswitch import free_port

TIMEOUT_S = 6
EXPECTED = {"1000": "joined", "1001": "timeout"}


def wait_for(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise SystemExit(f"demo: {what} did not come up within {seconds:.0f} s")


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def pump(stream: IO[str], prefix: str, sink: list[str]) -> None:
    for raw in stream:
        line = raw.rstrip("\n")
        sink.append(line)
        print(f"{prefix} {line}", flush=True)


def start_real_switch(work: Path) -> tuple[object, int, Path]:
    """A real FreeSWITCH for the demo: (the RealSwitch, its port, its password file)."""
    from confguard.realswitch import RealSwitch, find_freeswitch

    switch = RealSwitch(find_freeswitch(Path.cwd()), work / "freeswitch")
    print(f"== real FreeSWITCH from {switch.install} (config and log in {switch.run_dir})",
          flush=True)
    switch.start()
    print(f"== FreeSWITCH on 127.0.0.1:{switch.port}", flush=True)
    return switch, switch.port, switch.password_file()


def main(argv: list[str] | None = None) -> int:
    real = "--real" in (sys.argv[1:] if argv is None else argv)
    confguard = [sys.executable, "-m", "confguard.cli"]
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="confguard-demo-"))
    real_switch = None
    password_file: Path | None = None
    if real:
        from confguard.realswitch import FreeSwitchFailed, FreeSwitchNotFound

        try:
            real_switch, port, password_file = start_real_switch(work)
        except FreeSwitchNotFound as missing:
            print(f"demo-real: {missing}", file=sys.stderr)
            return 2
        except FreeSwitchFailed as failed:
            print(f"demo-real: {failed}", file=sys.stderr)
            return 1
    env = dict(
        os.environ,
        CONFGUARD_CONFIG=str(work / "none.toml"),
        CONFGUARD_ESL_HOST="127.0.0.1",
        CONFGUARD_ESL_PORT=str(port),
        CONFGUARD_API_SOCKET=str(work / "confguard.sock"),
        CONFGUARD_JOURNAL_PATH=str(work / "journal.sqlite3"),
        CONFGUARD_LOG_FORMAT="console",
        CONFGUARD_LOG_LEVEL="info",
        CONFGUARD_INVITE_PROMPT="tone_stream://%(200,100,440)",
    )
    if password_file is not None:
        env["CONFGUARD_ESL_PASSWORD_FILE"] = str(password_file)
    (work / "none.toml").write_text("# demo: everything comes from the environment\n")
    procs: list[subprocess.Popen[str]] = []
    threads: list[threading.Thread] = []
    daemon_lines: list[str] = []
    try:
        if real_switch is None:
            print(f"== simulator on 127.0.0.1:{port}", flush=True)
            sim = subprocess.Popen(
                [*confguard, "sim", "--host", "127.0.0.1", "--port", str(port),
                 "--heartbeat", "5"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
            )
            procs.append(sim)
            wait_for(lambda: port_open(port), 15, "the simulator")

        print("== daemon (confguard serve); its log lines are prefixed 'log |'", flush=True)
        daemon = subprocess.Popen(
            [*confguard, "serve"], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )
        procs.append(daemon)
        threads.append(threading.Thread(target=pump, args=(daemon.stdout, "log |", daemon_lines),
                                        daemon=True))
        threads[-1].start()
        wait_for(lambda: any("esl.subscribed" in line for line in daemon_lines), 15,
                 "the daemon's ESL connection")

        print(f"== confguard invite 1000 / 1001 --room test1 --timeout {TIMEOUT_S}", flush=True)
        invites = {
            ext: subprocess.Popen(
                [*confguard, "invite", ext, "--room", "test1", "--timeout", str(TIMEOUT_S),
                 "--json"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for ext in EXPECTED
        }
        outcomes: dict[str, tuple[str | None, int]] = {}
        for ext, proc in invites.items():
            out, err = proc.communicate(timeout=TIMEOUT_S + 20)
            final = [json.loads(line) for line in out.splitlines() if line.strip()]
            outcome = final[-1].get("outcome") if final else None
            outcomes[ext] = (outcome, proc.returncode)
            if err.strip():
                print(f"cli {ext} stderr: {err.strip()}", flush=True)
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=6)
            except subprocess.TimeoutExpired:
                proc.kill()
        for thread in threads:
            thread.join(timeout=2)
        if real_switch is not None:
            real_switch.stop()  # type: ignore[attr-defined]

    print("== outcomes", flush=True)
    ok = True
    for ext, expected in EXPECTED.items():
        outcome, code = outcomes.get(ext, (None, -1))
        mark = "ok" if outcome == expected else "UNEXPECTED"
        ok = ok and outcome == expected
        print(f"   {ext}: {outcome} (exit code {code}) — expected {expected}: {mark}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
