"""Tests of the simulated FreeSWITCH scheduler: ids, events, windows, deletes, the mirror."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections.abc import Callable

from confguard.sim.clock import SimClock
from confguard.sim.events import EventFactory, SimEvent
from confguard.sim.scheduler import MIRROR_LAG, Scheduler, Task

SCALE = 0.01  # one simulated second lasts 10 ms


def make_scheduler() -> tuple[Scheduler, list[SimEvent], SimClock]:
    clock = SimClock(SCALE)
    factory = EventFactory(clock, core_uuid="core", hostname="confguard-sim")
    published: list[SimEvent] = []
    scheduler = Scheduler(clock, lambda: factory, published.append, rng=random.Random(7))
    return scheduler, published, clock


async def test_permanent_task_and_ids_as_recorded() -> None:
    scheduler, published, clock = make_scheduler()
    await scheduler.start()
    try:
        rows = scheduler.mirror_rows()
        assert [(r[0], r[1], r[2]) for r in rows] == [(3, "limit_hash_cleanup", "mod_hash")]
        first = scheduler.add("switch_ivr_schedule_hangup", "U", int(clock.now()) + 30, None)
        second = scheduler.add("sched_api_function", "g", int(clock.now()) + 30, None)
        assert (first.task_id, second.task_id) == (4, 5)
        await clock.sleep(0.05)
        adds = [e for e in published if e.name == "ADD_SCHEDULE"]
        assert [e.get("Task-ID") for e in adds] == ["4", "5"]
        assert [name for name, _ in adds[0].headers][-4:] == [
            "Task-ID",
            "Task-Desc",
            "Task-Group",
            "Task-Runtime",
        ]
        assert adds[0].get("Task-Group") == "U"
        assert adds[0].get("Event-Calling-Function") == "switch_scheduler_add_task_ex"
    finally:
        await scheduler.stop()


async def test_task_fires_within_the_freeswitch_window() -> None:
    scheduler, published, clock = make_scheduler()
    await scheduler.start()
    try:
        fired: list[float] = []
        start = clock.monotonic()
        scheduler.add("t", "g", int(clock.now()) + 2, lambda task: fired.append(clock.monotonic()))
        for _ in range(100):
            if fired and published:
                break
            await clock.sleep(0.1)
        assert len(fired) == 1
        elapsed = fired[0] - start
        assert elapsed >= 1.0 - 0.05  # never before N-1 (the window is N-1 ... N+0.5)
        dels = [e for e in published if e.name == "DEL_SCHEDULE"]
        assert [e.get("Task-Desc") for e in dels] == ["t"]
    finally:
        await scheduler.stop()


async def test_delete_counts_then_zero_and_sweeps_with_del_schedule() -> None:
    scheduler, published, clock = make_scheduler()
    await scheduler.start()
    try:
        ran: list[Task] = []
        a = scheduler.add("x", "grp", int(clock.now()) + 20, ran.append)
        scheduler.add("y", "grp", int(clock.now()) + 20, ran.append)
        assert scheduler.delete(str(a.task_id)) == 1
        assert scheduler.delete(str(a.task_id)) == 0  # already deleted: 0, never an error
        assert scheduler.delete("grp") == 1  # only the one still live
        assert scheduler.delete("grp") == 0
        assert scheduler.delete("999999") == 0
        await clock.sleep(1.0)
        dels = [e.get("Task-Desc") for e in published if e.name == "DEL_SCHEDULE"]
        assert sorted(dels) == ["x", "y"]  # type: ignore[type-var]
        assert ran == []
        assert scheduler.live_tasks("grp") == []
    finally:
        await scheduler.stop()


async def test_a_del_schedule_nobody_takes_is_a_stand_in_with_its_sequence_number() -> None:
    """DEL_SCHEDULE is published at once: when no client takes it, the factory's stand-in is
    (headers never built), which still takes its Event-Sequence number; taken, it is built."""
    scheduler, published, clock = make_scheduler()
    factory = scheduler.events()
    factory.wants = lambda name, _subclass: name != "DEL_SCHEDULE"
    await scheduler.start()
    try:
        first = scheduler.add("x", "grp", int(clock.now()) + 20, None)
        scheduler.add("y", "other", int(clock.now()) + 20, None)
        await clock.sleep(0.1)  # both ADD_SCHEDULE out
        assert scheduler.delete(str(first.task_id)) == 1
        await clock.sleep(1.0)
        (stand_in,) = [e for e in published if e.name == "DEL_SCHEDULE"]
        assert stand_in.unsent and stand_in.get("Task-ID") is None
        factory.wants = None
        assert scheduler.delete("other") == 1
        await clock.sleep(1.0)
        built = [e for e in published if e.name == "DEL_SCHEDULE"][-1]
        assert not built.unsent and built.get("Task-Desc") == "y"
        adds = [e for e in published if e.name == "ADD_SCHEDULE"]
        sequences = [int(e.get("Event-Sequence") or 0) for e in (*adds, built)]
        # ADD x, ADD y, the stand-in, then the built DEL: the stand-in took the number between.
        assert sequences[1] - sequences[0] == 1 and sequences[2] - sequences[1] == 2, sequences
    finally:
        await scheduler.stop()


class ManualClock(SimClock):
    """Simulated time that moves only in `advance()`: the timers due run in deadline order
    (then in the order set), each at its own deadline, so no real-time jitter (a loaded
    machine, a stalled event loop) can move one past another or past a check."""

    def __init__(self) -> None:
        super().__init__(1.0, start_epoch=1_800_000_000.0)
        self.t = 0.0
        self._timers: list[tuple[float, int, asyncio.TimerHandle, Callable[[], object]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self.t

    def call_later(self, sim_seconds: float, fn: Callable[[], object]) -> asyncio.TimerHandle:
        when = self.t + max(0.0, sim_seconds)
        handle = asyncio.TimerHandle(when, fn, (), asyncio.get_running_loop())
        heapq.heappush(self._timers, (when, next(self._order), handle, fn))
        return handle

    async def sleep(self, sim_seconds: float) -> None:
        raise AssertionError("a ManualClock moves by advance() only")

    def advance(self, sim_seconds: float, until: Callable[[], bool] | None = None) -> None:
        """Move `sim_seconds` on, or stop right after the timer that makes `until()` true."""
        end = self.t + sim_seconds
        while self._timers and self._timers[0][0] <= end:
            when, _, handle, fn = heapq.heappop(self._timers)
            if not handle.cancelled():
                self.t = when
                fn()
                if until is not None and until():
                    return
        self.t = end


async def test_show_tasks_mirror_lags_behind() -> None:
    """A row shows in `show tasks` between MIRROR_LAG's bounds after the add, and disappears
    between those bounds after the sweep's DEL_SCHEDULE. On a clock of its own, so that only
    the order of the steps counts, not how fast a (loaded) machine runs them."""
    clock = ManualClock()
    factory = EventFactory(clock, core_uuid="core", hostname="confguard-sim")
    published: list[SimEvent] = []
    scheduler = Scheduler(clock, lambda: factory, published.append, rng=random.Random(7))
    low, high = MIRROR_LAG
    margin = 0.001

    def shown() -> bool:
        return task.task_id in [row[0] for row in scheduler.mirror_rows()]

    await scheduler.start()
    try:
        task = scheduler.add("lagging", "g", int(clock.now()) + 60, None)
        assert not shown()
        clock.advance(low - margin)
        assert not shown()  # not before the lag's lower bound
        clock.advance(high - low + 2 * margin)
        assert shown()  # by its upper bound
        assert scheduler.delete_id(task.task_id) == 1
        assert shown()  # a delete only marks the task
        clock.advance(1.0, until=lambda: any(e.name == "DEL_SCHEDULE" for e in published))
        assert [e.get("Task-ID") for e in published if e.name == "DEL_SCHEDULE"] == [
            str(task.task_id)
        ]  # swept by the next pass; the clock stands at that pass
        assert shown()  # DEL_SCHEDULE is out, the copy still has the row
        clock.advance(low - margin)
        assert shown()
        clock.advance(high - low + 2 * margin)
        assert not shown()
    finally:
        await scheduler.stop()


async def test_recurring_task_reschedules() -> None:
    scheduler, published, clock = make_scheduler()
    await scheduler.start()
    try:
        runs: list[int] = []
        task = scheduler.add(
            "sched_api_function",
            "recur",
            int(clock.now()) + 1,
            lambda t: runs.append(1),
            interval=1,
        )
        for _ in range(100):  # bounded: 10 simulated seconds at most
            if len(runs) >= 2 and any(e.name == "RE_SCHEDULE" for e in published):
                break
            await clock.sleep(0.1)
        assert len(runs) >= 2
        assert any(e.name == "RE_SCHEDULE" for e in published)
        assert task in scheduler.live_tasks()
        assert scheduler.delete_group("recur") == 1
    finally:
        await scheduler.stop()


async def test_reset_forgets_everything_silently() -> None:
    scheduler, published, clock = make_scheduler()
    await scheduler.start()
    try:
        scheduler.add("gone", "g", int(clock.now()) + 60, None, announce=False)
        scheduler.reset()
        await asyncio.sleep(0)
        assert [t.desc for t in scheduler.live_tasks()] == ["limit_hash_cleanup"]
        assert scheduler.add("next", "g", int(clock.now()) + 60, None).task_id == 4
        assert not [e for e in published if e.name == "DEL_SCHEDULE"]
    finally:
        await scheduler.stop()


async def test_an_add_restarts_the_pass_cycle() -> None:
    """Transcript 07: `+5` fired 4.51 s after an add at .75/.95 of a second and 5.01 s after
    one at .05/.25/.5, so the passes follow the add: it triggers a pass at once (a task that
    is already due runs without waiting for the 0.5 s cycle) and the next ones 0.5 s apart."""
    scheduler, published, clock = make_scheduler()
    await scheduler.start()
    try:
        ran: list[float] = []
        now = clock.now()
        scheduler.add("due", "g", int(now), lambda task: ran.append(clock.now()))
        for _ in range(5):  # a few loop iterations, far less than a 0.5 s pass interval
            await asyncio.sleep(0)
        assert len(ran) == 1
        later = scheduler.add("later", "g", int(clock.now()) + 2, lambda t: ran.append(0.0))
        for _ in range(100):  # bounded: 10 simulated seconds at most
            if len(ran) == 2:
                break
            await clock.sleep(0.1)
        assert len(ran) == 2 and int(clock.now()) >= later.runtime  # never before its second
        assert [e.get("Task-Desc") for e in published if e.name == "DEL_SCHEDULE"] == [
            "due",
            "later",
        ]
    finally:
        await scheduler.stop()


class NaiveScheduler(Scheduler):
    """The scheduler as it was before its indexes: every pass and every group delete walks the
    whole task table in id order. The reference the indexed one must match event for event."""

    def _mark_deleted(self, task: Task) -> None:
        task.deleted = True

    def delete_group(self, group: str, *, channel_bound_only: bool = False) -> int:
        count = 0
        for task in sorted(self.tasks.values(), key=lambda t: t.task_id):
            if task.group != group or task.deleted or task.done:
                continue
            if channel_bound_only and not task.channel_bound:
                continue
            self._mark_deleted(task)
            count += 1
        return count

    def check(self) -> None:
        now = int(self.clock.now())
        for task in sorted(self.tasks.values(), key=lambda t: t.task_id):
            self._visit(task, now)


async def test_indexed_passes_match_the_whole_table_walk() -> None:
    """Random adds, deletes (by id, by group, channel-bound only, from inside a running task's
    callback: of a task the pass has yet to reach, and of one it has passed), recurring tasks
    and `show tasks` reads: the indexed scheduler publishes the same events in the same order,
    runs the same callbacks and shows the same rows as a walk over the whole table."""
    for seed in range(12):
        outcomes = []
        for kind in (Scheduler, NaiveScheduler):
            clock = ManualClock()
            factory = EventFactory(clock, core_uuid="core", hostname="confguard-sim")
            published: list[SimEvent] = []
            scheduler = kind(clock, lambda f=factory: f, published.append, rng=random.Random(seed))
            ops = random.Random(seed)
            trace: list[object] = []

            def callback(
                task: Task,
                s: Scheduler = scheduler,
                r: random.Random = ops,
                trace: list[object] = trace,
            ) -> None:
                trace.append(("ran", task.task_id))
                if r.random() < 0.3 and s.tasks:  # delete some other task from inside the pass
                    victim = r.choice(sorted(s.tasks))
                    trace.append(("inner-del", victim, s.delete_id(victim)))

            await scheduler.start()
            try:
                for _ in range(400):
                    roll = ops.random()
                    now = int(clock.now())
                    if roll < 0.45:
                        scheduler.add(
                            "t", f"g{ops.randrange(8)}", now + ops.randrange(-1, 4), callback,
                            interval=ops.choice([None, None, None, 1, 2]),
                            channel_bound=ops.random() < 0.5,
                        )  # fmt: skip
                    elif roll < 0.6 and scheduler.tasks:
                        target = ops.choice(sorted(scheduler.tasks))
                        trace.append(("del", target, scheduler.delete_id(target)))
                    elif roll < 0.7:
                        group = f"g{ops.randrange(8)}"
                        bound = ops.random() < 0.5
                        count = scheduler.delete_group(group, channel_bound_only=bound)
                        trace.append(("del-group", group, bound, count))
                    elif roll < 0.8:
                        trace.append(("rows", scheduler.mirror_rows()))
                    else:
                        clock.advance(ops.choice([0.01, 0.3, 0.5, 1.0, 2.5]))
                clock.advance(10.0)
                trace.append(("rows", scheduler.mirror_rows()))
            finally:
                await scheduler.stop()
            events = [(e.name, e.get("Task-ID"), e.get("Task-Runtime")) for e in published]
            outcomes.append((events, trace))
        assert outcomes[0] == outcomes[1], f"seed {seed}"
        assert any(name == "DEL_SCHEDULE" for name, _, _ in outcomes[0][0])
        assert any(step[0] == "inner-del" and step[2] for step in outcomes[0][1])


async def test_finished_tasks_leave_no_trace_behind() -> None:
    """Thousands of long timers deleted early and swept: the runtime heap, the groups and the
    `show tasks` copy shrink back (nothing waits for a runtime an hour away, nor for a read
    of `show tasks`)."""
    clock = ManualClock()
    factory = EventFactory(clock, core_uuid="core", hostname="confguard-sim")
    scheduler = Scheduler(clock, lambda: factory, lambda event: None, rng=random.Random(3))
    await scheduler.start()
    try:
        for number in range(5000):
            group = f"call-{number}"
            scheduler.add("switch_ivr_schedule_hangup", group, int(clock.now()) + 3600, None)
            assert scheduler.delete_group(group) == 1
            clock.advance(0.01)
        clock.advance(1.0)
        assert [t.desc for t in scheduler.live_tasks()] == ["limit_hash_cleanup"]
        assert len(scheduler._due) <= 2 * len(scheduler.tasks) + 64
        assert scheduler._groups.keys() == {"mod_hash"}
        # Without a `show tasks`, only the rows gone within the last mirror lag are still kept.
        assert len(scheduler._mirror) <= 1 + MIRROR_LAG[1] / 0.01 + 1
        assert [row[1] for row in scheduler.mirror_rows()] == ["limit_hash_cleanup"]
        assert len(scheduler._mirror) == 1
    finally:
        await scheduler.stop()


async def test_a_stop_or_reset_voids_the_pending_add_events() -> None:
    """ADD_SCHEDULE follows an add by a few ms; a stop or a reset in between means it is never
    published by that add's flush (a reset forgets it; after a stop it waits in the queue, as
    before, for the next add's flush)."""
    scheduler, published, clock = make_scheduler()
    await scheduler.start()
    scheduler.add("x", "g", int(clock.now()) + 60, None)
    await scheduler.stop()
    await asyncio.sleep(0.5)  # 50 simulated seconds: far past the flush
    assert [e for e in published if e.name == "ADD_SCHEDULE"] == []
    await scheduler.start()
    scheduler.add("y", "g", int(clock.now()) + 60, None)
    await clock.sleep(0.05)
    assert [e.get("Task-Desc") for e in published if e.name == "ADD_SCHEDULE"] == ["x", "y"]
    scheduler.add("z", "g", int(clock.now()) + 60, None)
    scheduler.reset()
    await clock.sleep(0.05)
    assert [e.get("Task-Desc") for e in published if e.name == "ADD_SCHEDULE"] == ["x", "y"]
    await scheduler.stop()
