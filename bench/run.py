"""`make bench`: the daemon's costs and latencies against the simulator (and a real FreeSWITCH).

Runs, for each peer (the simulator always; the real switch when `find_freeswitch` finds one):
1. a short step through the recording relay (bench/relay.py): ESL events and commands per invite,
   and the recorded stream for the anchors (bench/anchors.py);
2. for each K (callees held waiting): place the K waiting invites, measure the daemon idle with
   them (CPU %, RSS), then offer flowing invites at increasing rates, each step stopped when the
   daemon falls behind (and the higher rates skipped);
3. the anchors on that peer's recorded stream.
Then the simulator under load on its own (bench/sim_load.py, no daemon: its own cheap ESL client
on the daemon's path): its CPU with 10,000 calls waiting, and 1,000 invites/s for 5 s.
Every process is its own (daemon, peer, relay, replay, receivers; this one drives), all on
127.0.0.1. Prints one table; writes bench/results/<timestamp>.json and .png. See bench/README.md.

    .venv/bin/python -m bench.run [--quick] [--no-real] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import uvloop

from bench import driver, procs
from bench.anchors import replay_chunks, stream_counts
from confguard.api import ControlClient
from confguard.realswitch import FreeSwitchNotFound, RealSwitch, find_freeswitch, free_port

RESULTS = procs.REPO / "bench" / "results"
PLAN = {
    # K = 5000 on the simulator takes the daemon about a minute to fill: past the 5-minute
    # budget of `make bench`; 2000 shows the same per-K slopes (`--sim-waiting 0,5000` runs it).
    "sim": {"waiting": [0, 500, 1000, 2000], "rates": [20, 50, 100, 200], "fill_rate": 100},
    "real": {"waiting": [0, 200, 400], "rates": [20, 50, 100, 200], "fill_rate": 100},
}
STEP_S = 2.5  # offered load per rate step
IDLE_S = 2.0  # the idle window with K waiting
RELAY_RATE, RELAY_S = 20, 3.0
DRAIN_S = 4.0
# the simulator under load (bench/sim_load.py): (mode, amount, flags), and the quick variant
SIM_LOAD = [("waiting", 10000, ["--window", "3", "--settle", "5", "--ramp", "1000"]),
            ("rate", 1000, ["--window", "5"])]
SIM_LOAD_QUICK = [("waiting", 2000, ["--window", "2", "--settle", "5", "--ramp", "1000"]),
                  ("rate", 1000, ["--window", "2"])]
SIM_LOAD_TIMEOUT_S = 240


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50": statistics.median(ordered), "p99": p99, "max": ordered[-1], "n": len(ordered)}


class Peer:
    """The switch the daemon talks to, as a process whose CPU can be read."""

    name: str
    pid: int
    port: int
    password_file: Path

    def stop(self) -> None:
        raise NotImplementedError


class SimPeer(Peer):
    name = "sim"

    def __init__(self, workdir: Path) -> None:
        self.password_file = workdir / "sim-password"
        self.password_file.write_text("Bench-Sim-Pw-51\n")
        self.password_file.chmod(0o600)
        self.child, self.port = procs.start_sim(workdir, self.password_file)
        self.pid = self.child.pid

    def stop(self) -> None:
        self.child.stop()


class RealPeer(Peer):
    name = "real"

    def __init__(self, install: Path, workdir: Path) -> None:
        self.switch = RealSwitch(install, workdir / "freeswitch")
        (workdir / "freeswitch").mkdir()
        self.switch.start()
        assert self.switch.process is not None
        self.pid = self.switch.process.pid
        self.port = self.switch.port
        self.password_file = self.switch.password_file()

    def stop(self) -> None:
        self.switch.stop()


class Bench:
    def __init__(self, peer: Peer, workdir: Path, *, quick: bool, profile: bool) -> None:
        self.peer = peer
        self.workdir = workdir
        self.quick = quick
        self.profile = profile
        self.daemon: procs.Daemon | None = None
        self.log: driver.DaemonLog | None = None
        self.client: ControlClient | None = None
        self.gc: dict[str, Any] = {}  # of the last daemon stopped

    async def start_daemon(self, esl_port: int, tag: str) -> None:
        folder = self.workdir / f"daemon-{tag}"
        folder.mkdir()
        profile = folder / "daemon.prof" if self.profile and tag == "direct" else None
        self.daemon = procs.Daemon(folder, esl_port, self.peer.password_file, profile)
        await self.daemon.wait_connected()
        self.log = driver.DaemonLog(self.daemon.log_file)
        self.client = ControlClient(self.daemon.socket)

    def stop_daemon(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
            # the daemon logs its garbage collector's pauses when it stops (daemon.GcPauses)
            for line in self.daemon.log_lines():
                if line.get("event") == "daemon.stopped" and "gc_collections" in line:
                    self.gc = {k: v for k, v in line.items() if k.startswith("gc_")}
            self.daemon = None

    def cpu(self) -> tuple[float, float, float]:
        assert self.daemon is not None
        return time.perf_counter(), procs.cpu_seconds(self.daemon.pid), \
            procs.cpu_seconds(self.peer.pid)

    # ---------------------------------------------------------------------- the relay step
    async def relay_step(self) -> dict[str, Any]:
        record = self.workdir / f"relay-{self.peer.name}"
        relay, port = procs.start_relay(self.workdir, self.peer.port, record)
        try:
            await self.start_daemon(port, "relay")
            assert self.client is not None and self.log is not None
            step = await driver.offer(self.client, self.log, RELAY_RATE, RELAY_S)
            await driver.wait_for(lambda: (self.log.poll(), self.log.ended(step.ids))[1]  # type: ignore[union-attr]
                                  >= len(step.ids), DRAIN_S)
            await asyncio.sleep(1.5)  # the last filter deletions and hangups
        finally:
            self.stop_daemon()
            relay.stop()
        summary = json.loads(record.with_suffix(".json").read_text())
        main = max(summary, key=lambda s: s["events_total"]) if summary else {}
        invites = len(step.ids) or 1
        return {
            "invites": len(step.ids),
            "events_per_invite": main.get("events_total", 0) / invites,
            "commands_per_invite": main.get("commands_total", 0) / invites,
            "events": {k: v / invites for k, v in sorted(main.get("events", {}).items())},
            "commands": {k: v / invites for k, v in sorted(main.get("commands", {}).items())},
            "bytes_per_invite": main.get("bytes_down", 0) / invites,
            "record": str(record.with_suffix(".bin")),
        }

    # --------------------------------------------------------------------- waiting and rates
    async def fill_waiting(self, ids: set[str], target: int, rate: float) -> None:
        assert self.client is not None and self.log is not None
        await driver.fill_waiting(self.client, self.log, ids, target, rate)

    async def idle(self, waiting: int) -> dict[str, Any]:
        assert self.daemon is not None
        await asyncio.sleep(0.5)
        t0, d0, p0 = self.cpu()
        await asyncio.sleep(IDLE_S if not self.quick else 1.0)
        t1, d1, p1 = self.cpu()
        wall = t1 - t0
        return {
            "waiting": waiting,
            "daemon_cpu_pct": 100 * (d1 - d0) / wall,
            "peer_cpu_pct": 100 * (p1 - p0) / wall,
            "daemon_rss": procs.rss_bytes(self.daemon.pid),
            "peer_rss": procs.rss_bytes(self.peer.pid),
        }

    async def rate_step(self, rate: float, idle: dict[str, Any]) -> dict[str, Any]:
        assert self.client is not None and self.log is not None
        log = self.log
        t0, d0, p0 = self.cpu()
        step = await driver.offer(self.client, log, rate, STEP_S if not self.quick else 1.5)

        def drained() -> bool:
            log.poll()
            return log.ended(step.ids) >= len(step.ids)

        await driver.wait_for(drained, DRAIN_S, 0.1)
        t1, d1, p1 = self.cpu()
        wall = t1 - t0
        records = [log.invites.get(i, {}) for i in step.ids]
        joined = [r for r in records if r.get("outcome") == "joined"]
        outcomes = Counter(r.get("outcome", "unfinished") for r in records)
        # CPU of the step, less what the daemon / the peer spend anyway with K invites waiting.
        daemon_cpu = (d1 - d0) - idle["daemon_cpu_pct"] / 100 * wall
        peer_cpu = (p1 - p0) - idle["peer_cpu_pct"] / 100 * wall
        done = len(joined)
        times = sorted(r["at_joined"] for r in joined if "at_joined" in r)
        sustained = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 2 else 0.0
        if step.behind is None and sustained < 0.8 * rate:
            step.behind = f"joins came at {sustained:.0f}/s"
        return {
            "rate": rate,
            "offered": len(step.ids),
            "planned": step.planned,
            "offered_s": step.offered_s,
            "behind": step.behind,
            "post_errors": len(step.errors),
            "post_latency_ms": percentiles([x * 1000 for x in step.post_latency]),
            "outcomes": dict(outcomes),
            "joined": done,
            "sustained_per_s": sustained,
            "daemon_cpu_s": d1 - d0,
            "peer_cpu_s": p1 - p0,
            "wall_s": wall,
            # None when the idle baseline swallowed the step (a short step on a noisy machine)
            "daemon_ms_per_invite": 1000 * daemon_cpu / done if done and daemon_cpu > 0 else None,
            "peer_ms_per_invite": 1000 * peer_cpu / done if done and peer_cpu > 0 else None,
            "daemon_ms_per_invite_raw": 1000 * (d1 - d0) / done if done else None,
            "peer_ms_per_invite_raw": 1000 * (p1 - p0) / done if done else None,
            "key_to_timers_gone_ms": percentiles(
                [r["key_to_timers_gone_ms"] for r in joined if "key_to_timers_gone_ms" in r]),
            "key_to_joined_ms": percentiles(
                [r["key_to_joined_ms"] for r in joined if "key_to_joined_ms" in r]),
        }

    async def main_steps(self, waiting_levels: list[int], rates: list[int], fill_rate: float
                         ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        await self.start_daemon(self.peer.port, "direct")
        idles: list[dict[str, Any]] = []
        steps: list[dict[str, Any]] = []
        waiting_ids: set[str] = set()
        try:
            for waiting in waiting_levels:
                filling = time.perf_counter()
                await self.fill_waiting(waiting_ids, waiting, fill_rate)
                filling = time.perf_counter() - filling
                idle = await self.idle(waiting)
                idle["fill_s"] = filling
                idles.append(idle)
                print(f"  K={waiting}: daemon {idle['daemon_cpu_pct']:.1f}% CPU idle, "
                      f"RSS {idle['daemon_rss'] / 2**20:.0f} MiB")
                for rate in rates:
                    result = await self.rate_step(rate, idle)
                    result["waiting"] = waiting
                    steps.append(result)
                    print(f"  K={waiting} {rate}/s: {result['joined']} joined, "
                          f"{result['sustained_per_s']:.0f}/s"
                          + (f", behind: {result['behind']}" if result["behind"] else ""))
                    if result["behind"] or result["joined"] < 0.9 * result["offered"]:
                        break
        finally:
            self.stop_daemon()
        return idles, steps


# ----------------------------------------------------------------------------- the anchors
def run_anchors(record: Path, invites: int, workdir: Path) -> dict[str, Any]:
    chunks = replay_chunks(record)
    frames, events = stream_counts(chunks)
    out: dict[str, Any] = {"frames": frames, "events": events, "invites": invites,
                           "stream_s": chunks[-1][0] if chunks else 0.0}
    for receiver in ("genesis", "minimal"):
        port = free_port()
        server = procs.Child(
            [sys.executable, "-m", "bench.anchors", "serve", "--port", str(port),
             "--chunks", str(record)], workdir / f"replay-{receiver}.log")
        try:
            procs.wait_port(port)
            import subprocess

            done = subprocess.run(
                [sys.executable, "-m", "bench.anchors", receiver, "--port", str(port),
                 "--frames", str(frames), "--events", str(events)],
                capture_output=True, text=True, timeout=120, cwd=procs.REPO, check=False)
            if done.returncode != 0:
                out[receiver] = {"error": done.stderr.strip().splitlines()[-1:]}
                continue
            result = json.loads(done.stdout)
            result["ms_per_invite"] = 1000 * result["cpu_s"] / max(1, invites)
            out[receiver] = result
        finally:
            server.stop()
    return out


# ------------------------------------------------------------------- the simulator under load
def run_sim_load(quick: bool) -> dict[str, Any]:
    """bench/sim_load.py's `waiting` and `rate` runs (each its own simulator process and
    client); their JSON lines, with the wall time each took."""
    import subprocess

    out: dict[str, Any] = {}
    for mode, amount, flags in SIM_LOAD_QUICK if quick else SIM_LOAD:
        command = [sys.executable, str(procs.REPO / "bench" / "sim_load.py"), mode, str(amount),
                   *flags]
        print(f"sim under load: {mode} {amount} {' '.join(flags)}")
        started = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, cwd=procs.REPO,
                                  timeout=SIM_LOAD_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            out[mode] = {"error": f"no result within {SIM_LOAD_TIMEOUT_S} s"}
            continue
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            out[mode] = {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
        else:
            out[mode] = json.loads(lines[-1])
        out[mode]["wall_s"] = round(time.perf_counter() - started, 1)
    return out


def sim_load_lines(data: dict[str, Any]) -> list[str]:
    lines = ["simulator under load (bench/sim_load.py: the simulator alone, one client on the "
             "daemon's path):"]
    waiting, rate = data.get("waiting", {}), data.get("rate", {})
    if "error" in waiting:
        lines.append(f"  waiting: failed: {waiting['error']}")
    elif waiting:
        lines.append(f"  {waiting['n']} waiting: simulator {waiting['sim_cpu_percent']:.1f} % "
                     f"CPU over {waiting['window_s']:g} s ({waiting['answered']} answered, "
                     f"ramp {waiting['ramp_s']:g} s)")
    if "error" in rate:
        lines.append(f"  rate: failed: {rate['error']}")
    elif rate:
        held = "held" if rate["holds"] else "NOT held"
        per_core = rate["sim_invites_per_core_s"]
        clients = ", ".join(f"{c:g} %" for c in rate["client_cpu_percent"])
        client_ms = ", ".join(f"{c:.2f}" for c in rate["client_cpu_ms_per_invite"])
        lines.append(
            f"  {rate['rate']:g} invites/s offered: {rate['finished_per_s']:g}/s finished in the "
            f"window ({held}); simulator {rate['sim_cpu_ms_per_invite']:.2f} ms CPU per invite "
            f"= {per_core} invites/s per core, {rate['sim_cpu_percent']:g} % CPU; key->join "
            f"p50/p99 {rate['key_to_join_ms_p50']:g}/{rate['key_to_join_ms_p99']:g} ms; "
            f"client {clients} CPU ({client_ms} ms per invite)")
        lines.append(f"  (held: finished/s >= 0.98 x offered and key->join p99 <= "
                     f"{rate.get('hold_p99_ms', 50):g} ms; {rate['joined']}/{rate['placed']} "
                     "joined)")
    return lines


# ------------------------------------------------------------------------------- the report
def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def table(results: dict[str, Any]) -> str:
    lines = []
    head = (f"{'peer':<5} {'K':>5} {'rate':>5} {'done/s':>7} {'daemon':>7} {'peer':>7} "
            f"{'d/p':>5} {'key>timers gone ms':>20} {'key>joined ms':>20} {'joined':>9}  note")
    lines += [head, f"{'':<5} {'':>5} {'/s':>5} {'':>7} {'ms/inv':>7} {'ms/inv':>7} {'':>5} "
              f"{'p50/p99/max':>20} {'p50/p99/max':>20} {'/offered':>9}", "-" * len(head)]
    for peer, data in results["peers"].items():
        if "skipped" in data:
            lines.append(f"{peer:<5} skipped: {data['skipped']}")
            continue
        for step in data["steps"]:
            ratio = (step["daemon_ms_per_invite"] / step["peer_ms_per_invite"]
                     if step["daemon_ms_per_invite"] and step["peer_ms_per_invite"] else None)
            sd, kj = step["key_to_timers_gone_ms"], step["key_to_joined_ms"]
            lat = lambda p: f"{fmt(p['p50'])}/{fmt(p['p99'])}/{fmt(p['max'], '.1f')}"  # noqa: E731
            note = f"behind: {step['behind']}" if step["behind"] else ""
            others = {k: v for k, v in step["outcomes"].items() if k != "joined"}
            if others:
                note = (note + " " + ",".join(f"{k}={v}" for k, v in others.items())).strip()
            lines.append(
                f"{peer:<5} {step['waiting']:>5} {step['rate']:>5} "
                f"{step['sustained_per_s']:>7.1f} {fmt(step['daemon_ms_per_invite']):>7} "
                f"{fmt(step['peer_ms_per_invite']):>7} {fmt(ratio):>5} {lat(sd):>20} "
                f"{lat(kj):>20} {step['joined']:>4}/{step['offered']:<4}  {note}")
    lines.append("")
    lines.append(f"{'peer':<5} {'K':>5} {'daemon CPU%':>11} {'%/1000 K':>9} {'daemon RSS':>10} "
                 f"{'KiB/K':>7} {'peer CPU%':>9} {'peer RSS':>9}")
    for peer, data in results["peers"].items():
        if "skipped" in data:
            continue
        base = data["idle"][0]
        for idle in data["idle"]:
            k = idle["waiting"]
            # Not the rise over K=0: at one 10 ms tick (0.5 % of 2 s) that difference is mostly
            # noise and can come out negative. The whole CPU with K waiting, per 1,000 of them,
            # is an upper bound of what the waiting callees cost.
            per_k = (idle["daemon_cpu_pct"] / (k / 1000)) if k else None
            rss_k = ((idle["daemon_rss"] - base["daemon_rss"]) / k / 1024) if k else None
            lines.append(
                f"{peer:<5} {k:>5} {idle['daemon_cpu_pct']:>11.2f} {fmt(per_k):>9} "
                f"{idle['daemon_rss'] / 2**20:>7.1f}MiB {fmt(rss_k, '.1f'):>7} "
                f"{idle['peer_cpu_pct']:>9.2f} {idle['peer_rss'] / 2**20:>6.1f}MiB")
    lines.append("")
    for peer, data in results["peers"].items():
        if "skipped" in data:
            continue
        esl, anchors = data["esl"], data.get("anchors", {})
        lines.append(f"{peer}: per invite {esl['events_per_invite']:.1f} ESL events and "
                     f"{esl['commands_per_invite']:.1f} commands "
                     f"({esl['bytes_per_invite'] / 1024:.1f} KiB received), over "
                     f"{esl['invites']} invites at {RELAY_RATE}/s through the relay")
        flow = next((s for s in data["steps"] if s["waiting"] == 0 and s["rate"] == RELAY_RATE),
                    None)
        daemon_ms = flow["daemon_ms_per_invite"] if flow else None
        for name, label in (("genesis", "genesis Inbound, no-op handler"),
                            ("minimal", "minimal asyncio frame parser")):
            anchor = anchors.get(name, {})
            ms = anchor.get("ms_per_invite")
            ratio = f", daemon at {RELAY_RATE}/s: {daemon_ms / ms:.1f}x" if ms and daemon_ms else ""
            lines.append(f"{peer}: anchor {label}: {fmt(ms, '.3f')} ms CPU per invite "
                         f"(same stream replayed, paced){ratio}"
                         + (f" [{anchor['error']}]" if "error" in anchor else ""))
    if results.get("sim_load"):
        lines.append("")
        lines += sim_load_lines(results["sim_load"])
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install -e '.[bench]')"
    fig, (cpu_ax, lat_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for peer, data in results["peers"].items():
        if "skipped" in data:
            continue
        for waiting in sorted({s["waiting"] for s in data["steps"]}):
            steps = [s for s in data["steps"] if s["waiting"] == waiting]
            rates = [s["rate"] for s in steps]
            style = "-o" if peer == "sim" else "--s"
            cpu_ax.plot(rates, [s["daemon_ms_per_invite"] or 0 for s in steps], style,
                        label=f"{peer} K={waiting}")
            lat_ax.plot(rates, [s["key_to_joined_ms"]["p99"] or 0 for s in steps], style,
                        label=f"{peer} K={waiting}")
    cpu_ax.set(xlabel="offered invites/s", ylabel="daemon CPU ms per joined invite",
               title="daemon CPU per invite")
    lat_ax.set(xlabel="offered invites/s", ylabel="ms", title="key -> joined, p99")
    for ax in (cpu_ax, lat_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return f"plot: {path}"


# ------------------------------------------------------------------------------ the run
async def bench_peer(peer: Peer, workdir: Path, plan: dict[str, Any], *, quick: bool,
                     profile: bool) -> dict[str, Any]:
    bench = Bench(peer, workdir, quick=quick, profile=profile)
    print(f"{peer.name}: ESL through the recording relay ({RELAY_RATE}/s, {RELAY_S:g} s)")
    esl = await bench.relay_step()
    waiting = plan["waiting"][:2] if quick else plan["waiting"]
    print(f"{peer.name}: rate steps {plan['rates']}/s with K = {waiting} waiting")
    idles, steps = await bench.main_steps(waiting, plan["rates"], plan["fill_rate"])
    gc_pauses = bench.gc
    if gc_pauses:
        print(f"  daemon GC (gen 0/1/2): {gc_pauses['gc_collections']} collections, pauses "
              f"{gc_pauses['gc_pause_total_ms']} ms in all, "
              f"longest {gc_pauses['gc_pause_max_ms']} ms")
    print(f"{peer.name}: anchors on the recorded stream")
    try:
        anchors = run_anchors(Path(esl["record"]), esl["invites"], workdir)
    except Exception as exc:  # a broken anchor must not lose the run's figures
        anchors = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"  anchors failed: {anchors['error']}")
    return {"esl": esl, "idle": idles, "steps": steps, "anchors": anchors, "gc": gc_pauses,
            "peer_pid_cpu": "utime+stime of the peer process (all threads)"}


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {"cpus": os.cpu_count(), "loadavg_at_start": load, "python": sys.version.split()[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter steps, fewer K (a try)")
    parser.add_argument("--no-real", action="store_true", help="the simulator only")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    parser.add_argument("--no-sim-load", action="store_true",
                        help="skip the simulator-under-load step (bench/sim_load.py)")
    parser.add_argument("--sim-waiting", metavar="K,K,...",
                        help="the simulator's K levels instead of the plan's (e.g. 0,5000: "
                             "5,000 waiting on one connection; takes a few minutes to fill)")
    parser.add_argument("--sim-rates", metavar="R,R,...",
                        help="the simulator's offered rates instead of the plan's")
    parser.add_argument("--profile", action="store_true",
                        help="run the daemon under cProfile (slower; prints its top functions)")
    args = parser.parse_args()
    if args.sim_waiting:
        PLAN["sim"]["waiting"] = [int(k) for k in args.sim_waiting.split(",")]
    if args.sim_rates:
        PLAN["sim"]["rates"] = [int(r) for r in args.sim_rates.split(",")]
    started = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"started": stamp, "machine": machine(), "peers": {},
                               "settings": {"step_s": STEP_S, "idle_s": IDLE_S, "plan": PLAN,
                                            "flow": driver.FLOW_BODY, "wait": driver.WAIT_BODY}}
    profiles: list[Path] = []
    tmp = tempfile.mkdtemp(prefix="confguard-bench-")
    try:
        for name in ("sim", "real"):
            workdir = Path(tmp) / name
            workdir.mkdir()
            if name == "real":
                if args.no_real:
                    results["peers"]["real"] = {"skipped": "--no-real"}
                    continue
                try:
                    install = find_freeswitch(procs.REPO)
                except FreeSwitchNotFound as missing:
                    results["peers"]["real"] = {"skipped": str(missing).split(";")[0]}
                    print(f"real: skipped: {str(missing).split(';')[0]}")
                    continue
                peer: Peer = RealPeer(install, workdir)
            else:
                peer = SimPeer(workdir)
            try:
                results["peers"][name] = uvloop.run(
                    bench_peer(peer, workdir, PLAN[name], quick=args.quick, profile=args.profile))
            finally:
                peer.stop()
            prof = workdir / "daemon-direct" / "daemon.prof"
            if prof.exists():
                keep = RESULTS / f"{stamp}-{name}-daemon.prof"
                keep.write_bytes(prof.read_bytes())
                profiles.append(keep)
    finally:
        if args.keep:
            print(f"work folder kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if not args.no_sim_load:
        sim_load_started = time.time()
        results["sim_load"] = run_sim_load(args.quick)
        results["sim_load"]["elapsed_s"] = round(time.time() - sim_load_started, 1)
    results["elapsed_s"] = time.time() - started
    out = RESULTS / f"{stamp}.json"
    out.write_text(json.dumps(results, indent=1))
    print()
    print(table(results))
    print()
    print(f"results: {out}  ({results['elapsed_s']:.0f} s)")
    print(plot(results, RESULTS / f"{stamp}.png"))
    for prof in profiles:
        import pstats

        print(f"\ncProfile of the daemon ({prof.name}), top 15 by own time:")
        pstats.Stats(str(prof)).sort_stats("tottime").print_stats(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
