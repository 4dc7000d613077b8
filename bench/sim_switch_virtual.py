"""The simulator's switch alone, in virtual time: CPU per invite, and an event stream to compare.

No sockets and no waiting: an event loop whose clock jumps to the next timer whenever it has
nothing else to do, and the simulator's clock (confguard.sim.clock) reading that same virtual
time. Runs are deterministic (seeded scheduler, fixed start), so

* ``cpu N``: N invites of bench/sim_load.py's ``rate`` mode (300 a second, the inline waiting
  app, a key 0.5 s after the answer, the kill on add-member) cost the CPU they cost and nothing
  else -- no client, no server, no encoding unless asked, and, with ``--unwanted``, only the
  events the driver needs are built (CUSTOM, BACKGROUND_JOB); with ``--daemon``, those
  confguard's engine subscribes to (as in bench/sim_load.py); with ``--encode json`` (or
  plain, xml) every event built is also encoded as the server encodes it for a client of that
  format (``SimEvent.frame``, kept in ``derived``). Prints CPU microseconds per invite and clock
  timers per invite. Noise is the machine's only (compare interleaved runs of two trees).
* ``events OUT``: a mixed script (the rate invites, every callee mode, broadcasts, transfers,
  sched_* commands, conference kicks, a coasting play_and_get_digits read while it coasts)
  written as every published event in the plain wire format plus every api reply with its
  virtual time, uuids numbered in order of appearance (``--format json`` or xml: every event
  as the frame the server sends in that format instead). Two trees that behave the same write
  the same file byte for byte: `cmp` tells whether a change moved any event, value or timing.

Run from the tree to measure: ``PYTHONPATH=$PWD .venv/bin/python bench/sim_switch_virtual.py
cpu 3000``. Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import selectors
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import confguard.sim.clock as clock_module
from confguard.engine import SUBSCRIBED_EVENTS
from confguard.sim import wire
from confguard.sim.clock import SimClock
from confguard.sim.config import SimConfig
from confguard.sim.events import SimEvent
from confguard.sim.switch import Switch

VIRTUAL_START = 1000.0  # loop seconds
EPOCH = 1_800_000_000.25  # the simulated wall clock at VIRTUAL_START


class VirtualTime:
    """Now, in virtual seconds; the loop moves it on."""

    now = VIRTUAL_START


class _TimeModule:
    """What confguard.sim.clock reads of `time`: virtual monotonic and wall time."""

    @staticmethod
    def monotonic() -> float:
        return VirtualTime.now

    @staticmethod
    def time() -> float:
        return EPOCH + VirtualTime.now - VIRTUAL_START


class _JumpingSelector(selectors.DefaultSelector):
    """Waiting for `timeout` seconds is moving virtual time on by that much, at once."""

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            raise RuntimeError("nothing to do and no timer: the run is stuck")
        if timeout > 0:
            VirtualTime.now += timeout
        return super().select(0)


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__(selector=_JumpingSelector())

    def time(self) -> float:
        return VirtualTime.now


WAITING_APP = (
    "'m:~:sched_hangup:+30 ALLOTTED_TIMEOUT~play_and_get_digits:1 1 31 5000 # "
    "tone_stream://%(250,250,440) silence_stream://250 confguard_key ^[1]$ 5000 park "
    "inline~sched_cancel~conference:test1' inline"
)
# The same with a failure target, few tries and a moderator/endconf room.
SHORT_APP = (
    "'m:~:sched_hangup:+30 ALLOTTED_TIMEOUT~play_and_get_digits:1 1 3 1000 # "
    "tone_stream://%(250,250,440) silence_stream://250 confguard_key ^[1]$ 9999 "
    "default XML~sched_cancel~conference:test2+flags{moderator|endconf}' inline"
)


def originate(
    call_uuid: str,
    *,
    extra: str = ",sim_answer_after=0.5,sim_dtmf=1@0.5",
    user: str = "1001",
    app: str = WAITING_APP,
    timeout: int = 30,
) -> str:
    """bench/sim_load.py's originate."""
    return (
        f"originate {{origination_uuid={call_uuid},originate_timeout={timeout},"
        f"ignore_early_media=true,confguard_invite=bench{extra},"
        f"api_on_originate='sched_hangup +3600 {call_uuid} ALLOTTED_TIMEOUT'}}"
        f"user/{user} {app}"
    )


def call_uuid(kind: str, number: int) -> str:
    return f"{kind}{number:07d}-0000-4000-8000-000000000000"


class Driver:
    """One switch, its published events, and the client's one reaction: the kill on the
    add-member of a rate invite (uuids starting with `b`)."""

    def __init__(
        self,
        *,
        all_wanted: bool,
        keep: bool,
        daemon: bool = False,
        encode: wire.EventFormat | None = None,
    ) -> None:
        self.clock = SimClock(1.0)
        self.switch = Switch(SimConfig(port=0, seed=1, heartbeat_interval=20), self.clock,
                             self.publish)  # fmt: skip
        if daemon:  # what confguard's engine subscribes to (CUSTOM: conference::maintenance)
            wanted = frozenset(SUBSCRIBED_EVENTS)
            self.switch.event_wanted = lambda name, sub: (
                name in wanted and (name != "CUSTOM" or sub in wanted)
            )
        elif not all_wanted:
            self.switch.event_wanted = lambda name, _sub: name in ("CUSTOM", "BACKGROUND_JOB")
        self.keep = keep
        self.encode = encode
        self.events: list[SimEvent] = []
        self.replies: list[tuple[float, str, str]] = []
        self.ended = 0
        self._tasks: set[asyncio.Task[object]] = set()

    def publish(self, event: SimEvent) -> None:
        frame = None
        if self.encode is not None and not event.unsent:
            # What the server's Connection._frame does for a subscriber of that format.
            frame = event.derived.get(self.encode)
            if frame is None:
                frame = event.derived[self.encode] = event.frame(self.encode)
        if self.keep:
            self.events.append(event)
        if event.name == "CHANNEL_HANGUP_COMPLETE":
            self.ended += 1
        if event.unsent or event.name != "CUSTOM":
            return
        if self.encode == "json" and frame is not None:
            # The client reads the Action off the frame: reading the headers back from the
            # json (first_value of a name the builder does not keep aside) is no server's work.
            added = b'"Action":"add-member"' in frame
        else:
            added = event.first_value("action") == "add-member"
        if added:
            member = event.first_value("unique-id") or ""
            if member.startswith("b"):
                self.spawn(self.api(f"uuid_kill {member}"))

    def spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def api(self, command: str) -> str:
        reply = await self.switch.api(command)
        self.replies.append((round(VirtualTime.now, 6), command, reply))
        return reply


async def run_cpu(
    count: int, all_wanted: bool, daemon: bool = False, encode: wire.EventFormat | None = None
) -> str:
    driver = Driver(all_wanted=all_wanted, keep=False, daemon=daemon, encode=encode)
    switch, sleep = driver.switch, driver.clock.sleep
    await switch.start()
    for number in range(200):  # warm-up
        switch.background_job(f"warm-{number}", originate(call_uuid("b", number)))
        await sleep(1 / 300)
    while driver.ended < 200:
        await sleep(0.1)
    timers = 0
    set_timer = SimClock.call_later

    def counted(clock: SimClock, *args: Any) -> Any:
        nonlocal timers
        timers += 1
        return set_timer(clock, *args)

    SimClock.call_later = counted  # type: ignore[method-assign]
    started, ended = time.process_time(), driver.ended
    for number in range(count):
        switch.background_job(f"job-{number}", originate(call_uuid("b", 1_000_000 + number)))
        await sleep(1 / 300)
    while driver.ended < ended + count:
        await sleep(0.1)
    cpu = time.process_time() - started
    SimClock.call_later = set_timer  # type: ignore[method-assign]
    await switch.stop()
    # The driver's own sleeps (one per invite placed) are in the count: take them out.
    return (
        f"cpu_us_per_invite {1e6 * cpu / count:.1f} "
        f"switch_timers_per_invite {timers / count - 1:.2f}"
    )


async def run_events(out: Path, event_format: wire.EventFormat = "plain") -> str:
    driver = Driver(all_wanted=True, keep=True)
    switch, sleep, api = driver.switch, driver.clock.sleep, driver.api
    await switch.start()
    for number in range(60):
        switch.background_job(f"job-{number}", originate(call_uuid("b", number)))
        await sleep(1 / 300)
    callees = [("1000", ",x=1", 10), ("1005", "", 10), ("1001", "", 3), ("1007", "", 10),
               ("1006", "", 10), ("1002", "", 10), ("1003", "", 10), ("1004", "", 2),
               ("4242", "", 10)]  # fmt: skip
    for number, (user, extra, timeout) in enumerate(callees):
        command = originate(
            call_uuid("c", number), extra=extra, user=user, app=SHORT_APP, timeout=timeout
        )
        switch.background_job(f"callee-{number}", command)
        await sleep(0.013 * number)
    parked = [call_uuid("d", number) for number in range(4)]
    for uuid in parked:
        driver.spawn(api(f"originate {{origination_uuid={uuid},execute_on_answer='playback x',"
                         f"api_on_answer='echo hi'}}user/1001 &park()"))  # fmt: skip
    await sleep(1.5)
    for number, uuid in enumerate(parked):
        await api(f"uuid_broadcast {uuid} tone_stream://%(200,100,440)")
        await api(f"sched_api +2 grp{number} echo hello{number}")
        await api(f"sched_api @3 rgrp{number} echo again{number}")
        await api(f"sched_broadcast +1 {uuid} silence_stream://300")
        await api(f"uuid_setvar {uuid} foo bar{number}")
        await api(f"uuid_getvar {uuid} foo")
        await sleep(0.27)
    await api("show tasks")
    await api(f"uuid_dump {parked[0]} json")
    await api(f"uuid_transfer {parked[1]} 7001 XML default")
    await api(f"sched_transfer +2 {parked[2]} 7001 XML default")
    await api(f"uuid_transfer {parked[3]} -bleg 'play_and_get_digits:1 1 3 1000 # silence "
              "silence_stream://250 k ^[1]$' inline")  # fmt: skip
    await sleep(2.5)
    for command in ("show channels", "conference list", "conference test1 json_list",
                    "conference test1 kick all", "sched_del grp1", "unsched_api 5"):  # fmt: skip
        await api(command)
    await sleep(4.0)
    await api(f"sched_hangup +1 {parked[0]} USER_BUSY")
    await api(f"sched_hangup 45 {parked[1]}")
    await api(f"uuid_kill {parked[2]}")
    await api(f"uuid_kill {parked[3]}")
    await sleep(1.0)
    coasting = call_uuid("e", 0)
    driver.spawn(api(f"originate {{origination_uuid={coasting}}}user/1001 "
                     "'m:~:play_and_get_digits:1 1 4 1000 # tone_stream://%(250,250,440) "
                     "silence_stream://250 k ^[1]$~hangup:USER_BUSY' inline"))  # fmt: skip
    for _ in range(25):
        await sleep(0.23)
        await api(f"uuid_getvar {coasting} read_result")
    await sleep(10)
    for number in range(4):
        await api(f"sched_del rgrp{number}")
    await sleep(2)
    await api("show tasks")
    await sleep(1)
    await switch.stop()
    numbers: dict[str, str] = {}

    def numbered(text: str) -> str:
        return _UUID.sub(lambda m: numbers.setdefault(m.group(), f"<U{len(numbers)}>"), text)

    with out.open("w") as sink:
        for event in driver.events:
            if event.unsent:
                sink.write(f"UNSENT {event.name} {event.subclass}\n")
                continue
            if event_format == "plain":
                data = wire.serialize_plain(event.headers, event.body)
            else:
                data = event.frame(event_format)
            sink.write(numbered(data.decode("utf-8", "replace")) + "\n====\n")
        for at, command, reply in driver.replies:
            sink.write(numbered(f"REPLY {at} {command!r} -> {reply!r}\n"))
    return f"events {len(driver.events)} replies {len(driver.replies)} -> {out}"


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    cpu = modes.add_parser("cpu", help="CPU per invite of the switch alone")
    cpu.add_argument("count", type=int)
    cpu.add_argument("--unwanted", action="store_true", help="build only the events needed")
    cpu.add_argument(
        "--daemon", action="store_true", help="build the events confguard's engine subscribes to"
    )
    cpu.add_argument(
        "--encode", choices=wire.EVENT_FORMATS, help="encode every event built, as the server does"
    )
    events = modes.add_parser("events", help="write the event stream of a mixed script")
    events.add_argument("out", type=Path)
    events.add_argument(
        "--format", choices=wire.EVENT_FORMATS, default="plain", help="plain: the event payloads"
    )
    args = parser.parse_args()
    clock_module.time = _TimeModule  # type: ignore[assignment]
    loop = VirtualLoop()
    asyncio.set_event_loop(loop)
    try:
        if args.mode == "cpu":
            run = run_cpu(args.count, not args.unwanted, args.daemon, args.encode)
            print(loop.run_until_complete(run))
        else:
            print(loop.run_until_complete(run_events(args.out, args.format)))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
