"""A real FreeSWITCH on loopback, for the `realfs` tests, the benchmarks and `make demo-real`.

Owns finding a FreeSWITCH build, starting it in the foreground (`-nf`) with the project's own
configuration (`conf.py`) on 127.0.0.1 with a free port and a generated password, telling when it
is ready (its Event Socket sends `auth/request`), restarting it, and stopping it.

Which FreeSWITCH (`find_freeswitch`): `$CONFGUARD_FREESWITCH` (a folder with `bin/ lib/ mod/`),
else the relocatable tarball in `shared/freeswitch/dist/` beside the repo, unpacked once into a
cache folder after its SHA-256 is checked against `SHA256SUMS`; else `FreeSwitchNotFound`, whose
message says how to provide one. The switch's log is in `<run_dir>/log/freeswitch.log` and its
console output in `<run_dir>/console.log`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path

from confguard.esl import EslSession, EslSettings
from confguard.realswitch.conf import SwitchConf, write_conf
from confguard.sim.callees import CalleeSpec

ENV_INSTALL = "CONFGUARD_FREESWITCH"
RUNTIME_PACKAGES = "liblua5.2-0 libsndfile1 libspeex1 libspeexdsp1"
HOW_TO = (
    f"no real FreeSWITCH: set {ENV_INSTALL} to a FreeSWITCH folder with bin/ lib/ mod/, or put "
    "shared/freeswitch/dist/ (the tarball and SHA256SUMS) beside the repo; its runtime "
    f"libraries: apt-get install -y --no-install-recommends {RUNTIME_PACKAGES}"
)


class FreeSwitchNotFound(RuntimeError):
    """No FreeSWITCH to run; the message says how to provide one."""


class FreeSwitchFailed(RuntimeError):
    """A FreeSWITCH was found but did not start (or stop) as it should; the message has its log."""


def default_dist(repo: Path) -> Path:
    """Where the shared prebuilt FreeSWITCH lies for a checkout at `repo`."""
    return repo.resolve().parent / "shared" / "freeswitch" / "dist"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "confguard" / "freeswitch"


def _is_install(folder: Path) -> bool:
    return (folder / "bin" / "freeswitch").is_file() and (folder / "mod").is_dir()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unpack_dist(dist: Path, cache: Path | None = None) -> Path:
    """The install unpacked from `dist`'s tarball (checked against SHA256SUMS), cached."""
    sums = dist / "SHA256SUMS"
    if not sums.is_file():
        raise FreeSwitchNotFound(f"{dist} has no SHA256SUMS; {HOW_TO}")
    entries = [line.split() for line in sums.read_text().splitlines() if line.strip()]
    tarballs = [(digest, name.lstrip("*")) for digest, name in entries if name.endswith(".tar.xz")]
    if len(tarballs) != 1:
        raise FreeSwitchNotFound(f"{sums}: expected one .tar.xz entry; {HOW_TO}")
    digest, name = tarballs[0]
    target = (cache or cache_root()) / digest[:16]
    done = target / ".unpacked"
    if done.is_file() and _is_install(target / "freeswitch"):
        return target / "freeswitch"
    tarball = dist / name
    if not tarball.is_file():
        raise FreeSwitchNotFound(f"{tarball} is missing; {HOW_TO}")
    actual = _sha256(tarball)
    if actual != digest:
        raise FreeSwitchFailed(f"{tarball}: SHA-256 {actual} does not match SHA256SUMS ({digest})")
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with tarfile.open(tarball) as archive:
        archive.extractall(partial, filter="data")
    if not _is_install(partial / "freeswitch"):
        raise FreeSwitchFailed(f"{tarball} holds no freeswitch/bin/freeswitch")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    done.write_text(f"{name} {digest}\n")
    return target / "freeswitch"


def find_freeswitch(repo: Path) -> Path:
    """The FreeSWITCH install to run: `$CONFGUARD_FREESWITCH`, else the shared dist; or raise."""
    chosen = os.environ.get(ENV_INSTALL)
    if chosen:
        folder = Path(chosen)
        if not _is_install(folder):
            raise FreeSwitchNotFound(f"{ENV_INSTALL}={chosen} has no bin/freeswitch and mod/")
        return folder
    dist = default_dist(repo)
    if not dist.is_dir():
        raise FreeSwitchNotFound(HOW_TO)
    return unpack_dist(dist)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _says_auth_request(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as conn:
            conn.settimeout(1.0)
            data = b""
            while b"\n\n" not in data and len(data) < 4096:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            return b"Content-Type: auth/request" in data
    except OSError:
        return False


class RealSwitch:
    """One FreeSWITCH process on 127.0.0.1, configured by `conf.py`, in `run_dir`.

    `port` 0 picks a free port at the first start; the port and password stay the same across
    `restart()`, so a client that reconnects finds the switch again.
    """

    def __init__(
        self,
        install: Path,
        run_dir: Path,
        *,
        port: int = 0,
        password: str | None = None,
        loglevel: str = "warning",
        users: Mapping[str, CalleeSpec] | None = None,
        events_example: bool = False,
    ) -> None:
        self.install = install
        self.users = users
        self.events_example = events_example  # conf.py: load deploy/freeswitch's events example
        self.run_dir = run_dir
        self.port = port
        self.password = password or secrets.token_hex(16)
        self.loglevel = loglevel
        self.process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:  # never the password
        return f"RealSwitch(127.0.0.1:{self.port}, run_dir={self.run_dir})"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "log" / "freeswitch.log"

    @property
    def console_path(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def password_file(self) -> Path:
        """A 0600 file holding the Event Socket password (for `confguard` processes)."""
        path = self.run_dir / "esl-password"
        if not path.exists():
            path.write_text(self.password + "\n")
            path.chmod(0o600)
        return path

    def esl_settings(self) -> EslSettings:
        return EslSettings(host="127.0.0.1", port=self.port, password=self.password)

    async def api(self, command: str) -> str:
        """One `api` command on a connection of its own (tests ask the switch directly)."""
        async with EslSession(self.esl_settings()) as session:
            return await session.api(command)

    def tail(self, lines: int = 40) -> str:
        """The end of the switch's log (or console output), for error messages and reports."""
        for path in (self.log_path, self.console_path):
            if path.is_file() and path.stat().st_size:
                text = path.read_text(errors="replace").splitlines()
                return "\n".join(text[-lines:])
        return "(no log written)"

    def start(self, timeout: float = 30.0) -> None:
        """Write the configuration, start FreeSWITCH, return once its Event Socket answers."""
        if self.running:
            return
        if not self.port:
            self.port = free_port()
        conf = SwitchConf(port=self.port, password=self.password, loglevel=self.loglevel,
                          users=self.users, events_example=self.events_example)
        write_conf(conf, self.run_dir)
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir / "run" / "freeswitch.pid").unlink()
        r = self.run_dir
        argv = [
            str(self.install / "bin" / "freeswitch"),
            "-nf", "-nonat",
            "-base", str(r), "-conf", str(r / "conf"), "-log", str(r / "log"),
            "-run", str(r / "run"), "-db", str(r / "db"), "-mod", str(self.install / "mod"),
        ]
        console = self.console_path.open("ab")
        self.process = subprocess.Popen(
            argv, cwd=r, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        console.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise FreeSwitchFailed(
                    f"FreeSWITCH exited with {self.process.returncode} while starting "
                    f"(missing runtime libraries? apt-get install {RUNTIME_PACKAGES}):\n"
                    + self.tail()
                )
            if _says_auth_request(self.port):
                return
            time.sleep(0.1)
        self.stop()
        raise FreeSwitchFailed(f"FreeSWITCH did not answer on 127.0.0.1:{self.port} within "
                               f"{timeout:g} s:\n" + self.tail())

    def wait_stopped(self, timeout: float = 20.0) -> int | None:
        """Wait for the process to end by itself (after `fsctl shutdown`); its exit code."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (FreeSWITCH's clean shutdown), then SIGKILL if it lingers."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: the process dies at once, every call and task with it, no event sent."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        self.process = None

    def restart(self, timeout: float = 30.0) -> None:
        self.stop()
        self.start(timeout)

    def __enter__(self) -> RealSwitch:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

