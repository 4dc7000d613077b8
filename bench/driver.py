"""The benchmark's driver: invites placed through the control API, and what the daemon logged.

Owns: placing invites at an offered rate (one `POST /invites` each, HTTP/JSON over the daemon's
Unix socket, the way `confguard invite` does), telling when the daemon falls behind, filling the
daemon with K callees that answer and wait, and reading the daemon's JSON log (outcomes,
timestamps, the `key_to_timers_gone_ms` / `key_to_joined_ms` fields) as it grows.

Callees are directory users whose behaviour is set per call with `sim_*` variables in the
originate's `{}` (the simulator and the real switch's callee.lua read the same names):
- a flowing invite: user 1000, answers at once, presses 1 after 0.3 s, hangs up 0.8 s after the
  answer (about 0.5 s after it joined: long enough to be a member, short enough not to pile up);
- a waiting invite: user 1001 (silent), answers at once, never presses; timeout 3600 s.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from confguard.api import ApiError, ControlClient

ROOM = "test1"
FLOW_BODY: dict[str, Any] = {
    "room": ROOM,
    "timeout": 30,
    "variables": {"sim_answer_after": "0", "sim_dtmf": "1@0.3", "sim_hangup_after": "0.8"},
}
WAIT_BODY: dict[str, Any] = {
    "room": ROOM,
    "timeout": 3600,
    "variables": {"sim_answer_after": "0"},
}
FLOW_EXT, WAIT_EXT = "1000", "1001"
# Behind: the driver's schedule slips, replies pile up, or invites stay unfinished for longer than
# this many seconds of offered load.
MAX_SLIP_S = 0.3
STALE_S = 2.5  # a flowing invite lives ~0.8 s; one not ended this long after its POST is late
MAX_STALE = 5
# POSTs in flight at once: the control socket's listen backlog is asyncio's default (100); past
# it connect() fails with EAGAIN. A driver that needs more than this is beyond what it measures.
MAX_IN_FLIGHT = 64


def wall_of(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class DaemonLog:
    """The daemon's JSON log file, read as it grows; one record per invite id."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.invites: dict[str, dict[str, Any]] = {}

    def poll(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        for line in lines:
            if not line.startswith(b"{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") != "invite.state" or "invite" not in entry:
                continue
            record = self.invites.setdefault(entry["invite"], {})
            state = entry.get("state")
            record[f"at_{state}"] = wall_of(entry["timestamp"])
            if "key_to_timers_gone_ms" in entry:
                record["key_to_timers_gone_ms"] = entry["key_to_timers_gone_ms"]
            if "key_to_joined_ms" in entry:
                record["key_to_joined_ms"] = entry["key_to_joined_ms"]
            if entry.get("outcome"):
                record["outcome"] = entry["outcome"]

    def ended(self, ids: set[str]) -> int:
        return sum(1 for i in ids if "outcome" in self.invites.get(i, {}))

    def in_state(self, ids: set[str], state: str) -> int:
        return sum(1 for i in ids if f"at_{state}" in self.invites.get(i, {}))


@dataclass
class Offered:
    """One step of offered load: what was sent, and whether the daemon kept up."""

    rate: float
    planned: int
    ids: set[str] = field(default_factory=set)
    posted: dict[str, float] = field(default_factory=dict)  # id -> perf_counter() of the reply
    errors: list[str] = field(default_factory=list)
    post_latency: list[float] = field(default_factory=list)
    behind: str | None = None
    started: float = 0.0  # wall clock of the first POST
    offered_s: float = 0.0


async def post(client: ControlClient, ext: str, body: dict[str, Any]) -> str:
    reply = await client.request("POST", "/invites", {**body, "extensions": [ext]})
    return str(reply["invites"][0]["invite_id"])


async def offer(
    client: ControlClient, log: DaemonLog, rate: float, seconds: float, *,
    ext: str = FLOW_EXT, body: dict[str, Any] = FLOW_BODY, watch_backlog: bool = True,
) -> Offered:
    """POST invites at `rate`/s for `seconds`; stop early when the daemon falls behind."""
    step = Offered(rate=rate, planned=max(1, round(rate * seconds)))
    pending: set[asyncio.Task[None]] = set()

    async def one() -> None:
        sent = time.perf_counter()
        for _attempt in range(50):
            try:
                invite_id = await post(client, ext, body)
                step.ids.add(invite_id)
                step.posted[invite_id] = time.perf_counter()
                break
            except BlockingIOError:  # the listen backlog is full: try again shortly
                await asyncio.sleep(0.01)
            except (ApiError, OSError) as exc:
                step.errors.append(f"{type(exc).__name__}: {exc}")
                break
        step.post_latency.append(time.perf_counter() - sent)

    begin = time.perf_counter()
    step.started = time.time()
    last_check = begin
    for index in range(step.planned):
        target = begin + index / rate
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        slip = time.perf_counter() - target
        if watch_backlog and slip > MAX_SLIP_S:
            step.behind = f"the driver's schedule slipped {slip:.2f} s"
            break
        if watch_backlog and len(pending) >= MAX_IN_FLIGHT:
            step.behind = f"{len(pending)} POSTs unanswered"
            break
        while len(pending) >= MAX_IN_FLIGHT:  # filling: wait for the daemon instead
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if not watch_backlog and time.perf_counter() - target > MAX_SLIP_S:
            begin = time.perf_counter() - index / rate
        if watch_backlog and time.perf_counter() - last_check > 0.25:
            last_check = time.perf_counter()
            log.poll()
            old = [i for i, at in step.posted.items() if at < last_check - STALE_S]
            late = len(old) - log.ended(set(old))
            if late > MAX_STALE:
                step.behind = f"{late} invites unfinished {STALE_S:g} s after their POST"
                break
        task = asyncio.create_task(one())
        pending.add(task)
        task.add_done_callback(pending.discard)
    step.offered_s = time.perf_counter() - begin
    if pending:
        await asyncio.wait(pending, timeout=10)
    return step


async def wait_for(predicate, seconds: float, interval: float = 0.1) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return predicate()


async def fill_waiting(
    client: ControlClient, log: DaemonLog, ids: set[str], target: int, rate: float
) -> None:
    """Place waiting invites at `rate`/s until `ids` holds `target` of them (their ids are added
    to it), then wait until every one waits for its key; say so when some do not."""
    missing = target - len(ids)
    if missing <= 0:
        return
    step = await offer(client, log, rate, missing / rate, ext=WAIT_EXT, body=WAIT_BODY,
                       watch_backlog=False)
    ids.update(step.ids)
    if step.errors:
        print(f"  waiting invites: {len(step.errors)} errors, e.g. {step.errors[0]}")

    def all_waiting() -> bool:
        log.poll()
        return log.in_state(ids, "waiting_key") >= len(ids)

    if not await wait_for(all_waiting, 30 + target / 50, 0.5):
        print(f"  only {log.in_state(ids, 'waiting_key')} of {len(ids)} invites waiting")
