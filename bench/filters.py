"""What per-call ESL filters cost, measured on the real FreeSWITCH (and the simulator).

    .venv/bin/python -m bench.filters [--no-real] [--standing 0,1500,3000]

Two figures, each with S filters standing on the connection (S = 3 x the waiting invites):
- commands: one invite's filter traffic as the daemon sends it today (3 adds, 3 deletes, each
  awaited) against one add + one delete, and against none: CPU of this process (the client side
  of confguard.esl) and of the switch per invite, and the wall time of the six round trips;
- events (real switch only): FreeSWITCH walks a listener's whole filter list for every event it
  could send it (mod_event_socket.c, event_handler: one header lookup per filter, even after a
  match). 2,000 `sendevent CUSTOM` from a second connection, received through S standing
  filters plus one that matches: the switch's CPU per event, against S.
Prints one table; nothing asserted. Connects to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from bench import procs
from bench.run import RealPeer, SimPeer
from confguard.esl import EslSession, EslSettings
from confguard.realswitch import FreeSwitchNotFound, find_freeswitch

INVITES = 300
EVENTS = 2000


async def _session(port: int, password: str) -> EslSession:
    session = EslSession(EslSettings(host="127.0.0.1", port=port, password=password,
                                     command_timeout=30.0))
    await session.connect()
    await session.subscribe(["CUSTOM", "confguard::bench"])
    return session


async def commands(peer_pid: int, session: EslSession, pattern: int) -> dict[str, float]:
    """`pattern` filters added then deleted per invite (0, 1 or 3), INVITES times."""
    c0, p0, w0 = time.process_time(), procs.cpu_seconds(peer_pid), time.perf_counter()
    for n in range(INVITES):
        names = [("Unique-ID", f"u-{n}"), ("Job-UUID", f"j-{n}"), ("Task-Group", f"u-{n}")]
        for header, value in names[:pattern]:
            await session.add_filter(header, value)
        for header, value in names[:pattern]:
            await session.del_filter(header, value)
    c1, p1, w1 = time.process_time(), procs.cpu_seconds(peer_pid), time.perf_counter()
    return {"client_ms": 1000 * (c1 - c0) / INVITES, "peer_ms": 1000 * (p1 - p0) / INVITES,
            "wall_ms": 1000 * (w1 - w0) / INVITES}


async def events(peer_pid: int, port: int, password: str, session: EslSession) -> float:
    """The switch's CPU per event delivered through the filters standing on `session`."""
    got = 0
    done = asyncio.Event()

    async def consume() -> None:
        nonlocal got
        async for event in session.events():
            if event.subclass == "confguard::bench":
                got += 1
                if got >= EVENTS:
                    done.set()

    await session.add_filter("Event-Subclass", "confguard::bench")
    sender = EslSession(EslSettings(host="127.0.0.1", port=port, password=password))
    await sender.connect()
    task = asyncio.create_task(consume())
    p0 = procs.cpu_seconds(peer_pid)
    conn = sender._require_conn()  # sendevent has no EslSession verb: raw command, benchmark only
    for n in range(EVENTS):
        await conn.send(f"sendevent CUSTOM\nEvent-Subclass: confguard::bench\nSeq: {n}")
    try:
        await asyncio.wait_for(done.wait(), 60)
    finally:
        p1 = procs.cpu_seconds(peer_pid)
        task.cancel()
        await sender.close()
        await session.del_filter("Event-Subclass", "confguard::bench")
    return 1e6 * (p1 - p0) / EVENTS


async def measure(peer_name: str, peer_pid: int, port: int, password: str,
                  standing: list[int]) -> None:
    for count in standing:
        session = await _session(port, password)
        try:
            for n in range(count):
                await session.add_filter("Unique-ID", f"standing-{n}")
            row = {p: await commands(peer_pid, session, p) for p in (3, 1, 0)}
            line = "  ".join(f"{p} filters: client {r['client_ms']:.2f} peer {r['peer_ms']:.2f} "
                             f"wall {r['wall_ms']:.2f} ms/inv" for p, r in row.items())
            print(f"{peer_name:5} S={count:5}  {line}", flush=True)
            if peer_name == "real":
                per_event = await events(peer_pid, port, password, session)
                print(f"{peer_name:5} S={count:5}  switch CPU per event through S filters: "
                      f"{per_event:.1f} us", flush=True)
        finally:
            await session.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-real", action="store_true")
    parser.add_argument("--standing", default="0,1500,3000")
    args = parser.parse_args()
    standing = [int(x) for x in args.standing.split(",")]
    with tempfile.TemporaryDirectory(prefix="confguard-filters-") as tmp:
        work = Path(tmp)
        sim = SimPeer(work)
        try:
            await measure("sim", sim.pid, sim.port, sim.password_file.read_text().strip(),
                          standing)
        finally:
            sim.stop()
        if args.no_real:
            return
        try:
            install = find_freeswitch(procs.REPO)
        except FreeSwitchNotFound as exc:
            print(f"real  skipped: {exc}")
            return
        (work / "real").mkdir()
        real = RealPeer(install, work / "real")
        try:
            await measure("real", real.pid, real.port,
                          real.password_file.read_text().strip(), standing)
        finally:
            real.stop()


if __name__ == "__main__":
    asyncio.run(main())
