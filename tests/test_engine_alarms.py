"""The engine's shared wake-ups (`Alarms`), its compact update history and `final_update`."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest
from test_engine import Event, RecordingSession, settle

from confguard.engine import Alarms, Engine, UpdateHistory
from confguard.invite import InviteSpec


class Run:
    """Stands in for an InviteRun: Alarms only hands it back."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.call_uuid = name


class Recorded:
    """Alarms whose wake-ups record (name, when, loop time) as they fire, set by delay from
    the moment the test began."""

    def __init__(self) -> None:
        self.fired: list[tuple[str, float, float]] = []
        self.alarms = Alarms(self._record)
        self.now = asyncio.get_running_loop().time()

    def _record(self, run: Any, when: float) -> None:
        self.fired.append((run.name, when, asyncio.get_running_loop().time()))

    def at(self, delay: float, run: Run | str) -> list[Any]:
        return self.alarms.add(self.now + delay, run if isinstance(run, Run) else Run(run))  # type: ignore[arg-type]

    def names(self) -> list[str]:
        return [name for name, _, _ in self.fired]


async def test_wake_ups_fire_in_time_order_never_before_their_time() -> None:
    wake = Recorded()
    for name, delay in (("c", 0.09), ("a", 0.03), ("b", 0.06), ("a2", 0.03)):
        wake.at(delay, name)
    assert len(wake.alarms) == 4
    await asyncio.sleep(0.2)
    assert wake.names() == ["a", "a2", "b", "c"]
    # The loop may run its timer up to its clock resolution early; the time handed on is the
    # one asked for, and never more than that resolution early.
    resolution = asyncio.get_running_loop()._clock_resolution  # type: ignore[attr-defined]
    assert all(ran >= when - resolution - 1e-9 for _, when, ran in wake.fired)
    assert len(wake.alarms) == 0


async def test_an_earlier_wake_up_rearms_the_one_timer() -> None:
    wake = Recorded()
    wake.at(5.0, "late")
    wake.at(0.02, "soon")
    await asyncio.sleep(0.1)
    assert wake.names() == ["soon"]
    assert len(wake.alarms) == 1


async def test_a_cancelled_wake_up_never_fires_and_lets_go_of_its_run() -> None:
    wake = Recorded()
    run = Run("gone")
    ref = weakref.ref(run)
    entry = wake.at(3600.0, run)
    wake.at(0.02, "kept")
    wake.alarms.cancel(entry)
    wake.alarms.cancel(entry)  # twice: no harm, counted once
    del run
    gc.collect()
    assert ref() is None  # an hour-long wake-up must not keep an ended invite alive
    assert len(wake.alarms) == 1
    await asyncio.sleep(0.1)
    assert wake.names() == ["kept"]
    assert len(wake.alarms) == 0


async def test_cancelled_entries_are_swept_once_they_are_most_of_the_heap() -> None:
    wake = Recorded()
    entries = [wake.at(3600.0 + i, f"r{i}") for i in range(300)]
    for entry in entries[:200]:
        wake.alarms.cancel(entry)
    assert len(wake.alarms) == 100
    assert len(wake.alarms._heap) < 200  # swept: not 300 entries kept for 100 live ones
    wake.at(0.02, "soon")
    await asyncio.sleep(0.1)
    assert wake.names() == ["soon"] and len(wake.alarms) == 100


async def test_a_wake_up_added_while_others_run_waits_for_the_next_pass() -> None:
    loop = asyncio.get_running_loop()
    fired: list[str] = []
    alarms: Alarms

    def fire(run: Any, when: float) -> None:
        fired.append(run.name)
        if run.name == "first":
            alarms.add(loop.time() - 1.0, Run("added"))  # type: ignore[arg-type]  # already due
            alarms.cancel(doomed)  # taken off the heap for this pass: it must not run
            assert fired == ["first"]

    alarms = Alarms(fire)
    now = loop.time()
    alarms.add(now + 0.01, Run("first"))  # type: ignore[arg-type]
    doomed = alarms.add(now + 0.01, Run("doomed"))  # type: ignore[arg-type]
    alarms.add(now + 0.01, Run("third"))  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    assert fired == ["first", "third", "added"]
    assert len(alarms) == 0 and alarms._cancelled == 0


async def test_one_wake_up_that_raises_does_not_stop_the_others() -> None:
    fired: list[str] = []

    def fire(run: Any, when: float) -> None:
        if run.name == "bad":
            raise RuntimeError("a bug in one invite")
        fired.append(run.name)

    alarms = Alarms(fire)
    now = asyncio.get_running_loop().time()
    for name in ("bad", "good"):
        alarms.add(now + 0.01, Run(name))  # type: ignore[arg-type]
    alarms.add(now + 0.03, Run("later"))  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    assert fired == ["good", "later"]


def test_the_history_reads_back_every_update_as_it_was_with_shapes_shared() -> None:
    first, second = UpdateHistory(), UpdateHistory()
    updates = [
        {"seq": 0, "state": "placing", "timeout": 30},
        {"seq": 1, "state": "ringing", "esl_event": "CHANNEL_CREATE", "flags": ["mute"]},
    ]
    for update in updates:
        first.append(update)
    second.append({"seq": 0, "state": "placing", "timeout": 10})
    assert len(first) == 2 and list(first) == updates
    assert [list(u) for u in first] == [list(u) for u in updates]  # key order kept
    assert first._entries[0][0] is second._entries[0][0]  # one keys tuple per shape
    read = next(iter(first))
    read["state"] = "changed"  # a reader's copy: the history is not touched
    assert next(iter(first))["state"] == "placing"


@pytest.fixture
async def engine() -> Any:
    session = RecordingSession()
    running = Engine()
    running.attach(session)
    await running.start()
    yield running, session
    await running.stop()


async def test_final_update_asked_before_or_after_the_outcome(engine) -> None:  # type: ignore[no-untyped-def]
    running, session = engine
    early = await running.invite(InviteSpec(extension="1000", room="test1", timeout=30))
    late = await running.invite(InviteSpec(extension="1001", room="test1", timeout=30))
    assert early.final is None and late.final is None  # no future until someone asks
    waiting = early.final_update()
    assert early.final_update() is waiting
    await settle()
    for run in (early, late):
        session.queue.put_nowait(Event(Event_Name="CHANNEL_HANGUP_COMPLETE",
                                       Unique_ID=run.call_uuid, Hangup_Cause="USER_BUSY"))
    await settle()
    got = await asyncio.wait_for(waiting, 2)
    assert got["outcome"] == "busy" and got["invite_id"] == early.invite_id
    assert late.final is None
    after = late.final_update()
    assert after.done() and after.result()["outcome"] == "busy"
    assert after.result()["invite_id"] == late.invite_id
    assert after.result() == list(late.history)[-1]
