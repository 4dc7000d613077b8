"""Where a waiting invite's memory goes: tracemalloc of a daemon holding K waiting invites.

Owns one measurement, not a figure of `make bench` (which reads RSS from /proc): the daemon runs
in this process on uvloop (tracemalloc sees only its own process), the simulator in its own
(bench/procs.py, 127.0.0.1), invites placed through the control socket as `bench.run` places
them. After a warm-up of 50 waiting invites (first-use caches out of the count), K more are
placed; once every one of them waits for its key, the Python heap's growth is grouped by the
innermost confguard line that allocated it and printed per waiting invite.

    .venv/bin/python -m bench.heap [K] [--top N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import linecache
import tempfile
import tracemalloc
from pathlib import Path

import uvloop

from bench import driver
from bench.procs import start_sim
from confguard.api import ControlClient
from confguard.config import load_config
from confguard.daemon import Daemon
from confguard.esl import route_genesis_logging
from confguard.logs import configure_logging

PACKAGE = str(Path(__file__).resolve().parent.parent / "confguard") + "/"
FRAMES = 25  # deep enough to reach a confguard frame from inside asyncio and genesis
FILL_RATE = 400  # waiting invites placed per second


Growth = dict[tuple[str, int], list[int]]  # (file, line) -> [bytes, blocks]


def by_line(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> Growth:
    """Growth in bytes and blocks by the innermost confguard frame of each allocation (the
    driver's own allocations, the control client's included, left out)."""
    leave_out = [tracemalloc.Filter(False, driver.__file__, all_frames=True),
                 tracemalloc.Filter(False, tracemalloc.__file__)]
    grown: Growth = {}
    for stat in after.filter_traces(leave_out).compare_to(before.filter_traces(leave_out),
                                                          "traceback"):
        frames = list(stat.traceback)[::-1]  # innermost first
        ours = next((f for f in frames if f.filename.startswith(PACKAGE)), None)
        key = ((ours.filename, ours.lineno) if ours is not None
               else (frames[0].filename, frames[0].lineno))
        totals = grown.setdefault(key, [0, 0])
        totals[0] += stat.size_diff
        totals[1] += stat.count_diff
    return grown


async def measure(count: int, top: int, work: Path) -> int:
    password = work / "password"
    password.write_text("ClueCon\n")
    password.chmod(0o600)
    sim, port = start_sim(work, password)
    try:
        config = load_config(None, env={}, overrides={
            "esl.host": "127.0.0.1", "esl.port": port, "esl.password_file": str(password),
            "api.socket": str(work / "confguard.sock"),
            "journal.path": str(work / "journal.sqlite3")})
        configure_logging(format="json", level="info", file=str(work / "daemon.log"))
        route_genesis_logging()
        daemon = Daemon(config, handle_signals=False)
        task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.linked.wait(), 15)
        client = ControlClient(str(work / "confguard.sock"))
        log = driver.DaemonLog(work / "daemon.log")
        await driver.fill_waiting(client, log, set(), 50, FILL_RATE)
        gc.collect()
        before = tracemalloc.take_snapshot()
        ids: set[str] = set()
        await driver.fill_waiting(client, log, ids, count, FILL_RATE)
        waiting = log.in_state(ids, "waiting_key")
        await asyncio.sleep(2)  # the journal's batch, the last filters
        log.invites.clear()
        gc.collect()
        after = tracemalloc.take_snapshot()
        grown = by_line(before, after)
        print(f"{waiting} of {count} invites waiting; Python heap grew "
              f"{sum(size for size, _ in grown.values()) / count:.0f} bytes and "
              f"{sum(blocks for _, blocks in grown.values()) / count:.1f} blocks per invite")
        print(f"{'bytes':>7} {'blocks':>6}  where (innermost confguard line)")
        largest = sorted(grown.items(), key=lambda item: -item[1][0])[:top]
        for (filename, line), (size, blocks) in largest:
            where = filename.removeprefix(PACKAGE.rsplit("confguard/", 1)[0])
            text = linecache.getline(filename, line).strip()[:70]
            print(f"{size / count:7.0f} {blocks / count:6.2f}  {where}:{line}  {text}")
        daemon.stopping.set()
        await asyncio.wait_for(task, 30)
        return 0 if waiting >= count else 1
    finally:
        sim.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("count", nargs="?", type=int, default=1000, help="waiting invites (1000)")
    parser.add_argument("--top", type=int, default=25, help="lines to print (25)")
    args = parser.parse_args()
    tracemalloc.start(FRAMES)
    with tempfile.TemporaryDirectory(prefix="confguard-heap-") as work:
        return uvloop.run(measure(args.count, args.top, Path(work)))


if __name__ == "__main__":
    raise SystemExit(main())
