"""FreeSWITCH's scheduler as the simulator runs it (switch_scheduler.c, as seen on the wire).

Owns the tasks: ids counting up (task 3 is mod_hash's permanent `limit_hash_cleanup`, as in a
fresh FreeSWITCH; the first task added is 4),
whole-second epoch runtimes, one check pass every 0.5 simulated seconds, the cycle restarting
when a task is added (a task fires on the first pass whose whole-second time has reached its
runtime, so `+5` fires 4.5 or 5.0 s after it was added, by the sub-second phase of the add, as
the seven runs of transcript 07 show: 4.51 s or 5.01 s; FreeSWITCH's window is N-1 ... N+0.5),
groups, recurring tasks (RE_SCHEDULE), and the events: ADD_SCHEDULE `add_event_delay` (default
1-15 ms) after a task is added, DEL_SCHEDULE when a task has run or when a deleted task is swept
on the next pass. A delete answers at once with the number of tasks it marked (0 when nothing
matched, never an error). `show tasks` reads a mirror that, like FreeSWITCH's database copy,
shows a row `mirror_lag` (default 0.05-0.2 s) after the task was added and drops it as long
after DEL_SCHEDULE. Every random choice comes from `rng` (seed it for repeatable runs).

It knows nothing about channels: a task is a description, a group and a callback.

Costs stay flat with the number of tasks: a pass looks only at the tasks that are due (a heap
by runtime) and at those marked deleted since the last pass, in task-id order as FreeSWITCH
walks its list; deleting a group looks only at that group's tasks; the mirror forgets its rows
as they go (a heap by the time they go).
"""

from __future__ import annotations

import functools
import heapq
import logging
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from confguard.sim.clock import SimClock, Timer
from confguard.sim.events import EventFactory, SimEvent

CHECK_INTERVAL = 0.5  # simulated seconds between passes of the task loop
LIMIT_HASH_CLEANUP_INTERVAL = 900  # seconds, mod_hash's own recurring task
ADD_EVENT_DELAY = (0.001, 0.015)  # ADD_SCHEDULE reaches the event queue this long after adding
MIRROR_LAG = (0.05, 0.2)  # the database copy behind `show tasks` lags this much
# A fresh FreeSWITCH shows mod_hash's task as id 3 (ids 1-2 are core tasks already gone) and
# gives the first task it is asked for id 4 (transcript 04).
FIRST_TASK_ID = 3

TaskCallback = Callable[["Task"], None]


@dataclass(slots=True)
class Task:
    """One scheduled task."""

    task_id: int
    desc: str
    group: str
    runtime: int  # epoch seconds
    callback: TaskCallback | None
    interval: int | None = None  # recurring: rescheduled this many seconds after each run
    channel_bound: bool = False  # removed when the channel named by `group` is destroyed
    deleted: bool = False
    done: bool = False


@dataclass(slots=True)
class _MirrorRow:
    task_id: int
    desc: str
    group: str
    runtime: int
    visible_at: float  # simulated monotonic seconds
    gone_at: float = math.inf


@dataclass(slots=True)
class Scheduler:
    """The task table and its loop; publishes ADD_/DEL_/RE_SCHEDULE through `publish`."""

    clock: SimClock
    events: Callable[[], EventFactory]  # the current factory (a restart makes a new one)
    publish: Callable[[SimEvent], None]
    hostname: str = "confguard-sim"
    rng: random.Random = field(default_factory=random.Random)
    mirror_lag: tuple[float, float] = MIRROR_LAG
    add_event_delay: tuple[float, float] = ADD_EVENT_DELAY
    tasks: dict[int, Task] = field(default_factory=dict)  # not yet finished, by id (ascending)
    _next_id: int = FIRST_TASK_ID
    _last_add_due: float = 0.0
    _pending_adds: deque[tuple[float, SimEvent]] = field(default_factory=deque)
    _mirror: dict[int, _MirrorRow] = field(default_factory=dict)
    _mirror_going: list[tuple[float, int]] = field(default_factory=list)  # heap (gone_at, id)
    _groups: dict[str, dict[int, Task]] = field(default_factory=dict)  # group -> its tasks
    _due: list[tuple[int, int]] = field(default_factory=list)  # heap (runtime, id); stale ok
    _deleted: list[int] = field(default_factory=list)  # ids marked deleted, not yet swept
    _pass_ids: list[int] | None = None  # heap of the ids the running pass still has to visit
    _pass_position: int = 0  # the id the running pass is at
    _pass_limit: int = 0  # the running pass visits ids below this (tasks added later wait)
    _pass_handle: Timer | None = None
    _running: bool = False
    _generation: int = 0  # counts stops and resets: an ADD_SCHEDULE flush set before one is void

    # -- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Add mod_hash's permanent task and start the check loop."""
        if not self.tasks:
            self._add_permanent()
        if not self._running:
            self._running = True
            self._arm_pass(CHECK_INTERVAL)

    async def stop(self) -> None:
        """Stop the passes (tasks stay in the table)."""
        self._running = False
        handle, self._pass_handle = self._pass_handle, None
        if handle is not None:
            handle.cancel()
        self._generation += 1  # the ADD_SCHEDULE flushes set so far do nothing

    def reset(self) -> None:
        """Forget every task and row without events (a FreeSWITCH restart); ids start over."""
        self._generation += 1
        self._pending_adds.clear()
        self.tasks.clear()
        self._groups.clear()
        self._due.clear()
        self._deleted.clear()
        self._mirror.clear()
        self._mirror_going.clear()
        self._next_id = FIRST_TASK_ID
        self._add_permanent()

    def _add_permanent(self) -> None:
        runtime = int(self.clock.now()) + LIMIT_HASH_CLEANUP_INTERVAL
        task = self.add(
            "limit_hash_cleanup",
            "mod_hash",
            runtime,
            None,
            interval=LIMIT_HASH_CLEANUP_INTERVAL,
            announce=False,
        )
        self._mirror[task.task_id].visible_at = 0.0

    # -- adding and deleting -----------------------------------------------------------------

    def add(
        self,
        desc: str,
        group: str,
        runtime: int,
        callback: TaskCallback | None,
        *,
        interval: int | None = None,
        channel_bound: bool = False,
        announce: bool = True,
    ) -> Task:
        """Add a task running at epoch second `runtime`; ADD_SCHEDULE follows 1-15 ms later."""
        task_id = self._next_id
        runtime = int(runtime)
        task = Task(task_id, desc, group, runtime, callback, interval, channel_bound)
        self._next_id = task_id + 1
        self.tasks[task_id] = task
        members = self._groups.get(group)
        if members is None:
            members = self._groups[group] = {}
        members[task_id] = task
        heapq.heappush(self._due, (runtime, task_id))
        if self._running:  # the loop passes now and restarts its 0.5 s cycle from here
            self._arm_pass(0.0)
        now = self.clock.monotonic()
        rng = self.rng
        low, high = self.mirror_lag  # rng.uniform(low, high), the same draw and arithmetic
        self._mirror[task_id] = _MirrorRow(
            task_id, desc, group, runtime, now + (low + (high - low) * rng.random())
        )
        if announce:
            # ADD_SCHEDULE events keep the order the tasks were added in.
            low, high = self.add_event_delay
            due = max(now + (low + (high - low) * rng.random()), self._last_add_due + 1e-6)
            self._last_add_due = due
            event = self.events().schedule("ADD_SCHEDULE", task_id, desc, group, runtime)
            self._pending_adds.append((due, event))
            self.clock.call_later(
                due - now, functools.partial(self._flush_adds, due, self._generation)
            )
        return task

    def delete_id(self, task_id: int) -> int:
        """Mark task `task_id` deleted; the number marked (0 or 1). Swept on the next pass."""
        task = self.tasks.get(task_id)
        if task is None or task.deleted or task.done:
            return 0
        self._mark_deleted(task)
        return 1

    def delete_group(self, group: str, *, channel_bound_only: bool = False) -> int:
        """Mark every live task of `group` deleted; how many were marked."""
        count = 0
        for task in list(self._groups.get(group, {}).values()):
            if task.deleted or task.done:
                continue
            if channel_bound_only and not task.channel_bound:
                continue
            self._mark_deleted(task)
            count += 1
        return count

    def _mark_deleted(self, task: Task) -> None:
        """Deleted tasks are swept by the next pass -- or by the running one, when it has not
        reached the task yet (FreeSWITCH's loop meets the mark further down its list)."""
        task.deleted = True
        if self._pass_ids is not None and self._pass_position < task.task_id < self._pass_limit:
            heapq.heappush(self._pass_ids, task.task_id)
        else:
            self._deleted.append(task.task_id)

    def delete(self, id_or_group: str) -> int:
        """`sched_del`: a number is a task id, anything else a group."""
        if id_or_group.isdigit():
            return self.delete_id(int(id_or_group))
        return self.delete_group(id_or_group)

    def live_tasks(self, group: str | None = None) -> list[Task]:
        """Tasks not yet run nor deleted (optionally of one group), by id."""
        tasks = self.tasks if group is None else self._groups.get(group, {})
        return [
            task
            for task in sorted(tasks.values(), key=lambda t: t.task_id)
            if not task.deleted and not task.done
        ]

    # -- show tasks --------------------------------------------------------------------------

    def mirror_rows(self) -> list[tuple[int, str, str, int]]:
        """Rows of the lagging database copy: (id, desc, group, runtime)."""
        now = self.clock.monotonic()
        self._forget_gone_rows(now)
        return [
            (row.task_id, row.desc, row.group, row.runtime)
            for row in sorted(self._mirror.values(), key=lambda r: r.task_id)
            if row.visible_at <= now
        ]

    # -- the loop ----------------------------------------------------------------------------

    def _arm_pass(self, sim_seconds: float) -> None:
        """(Re)start the pass cycle: the next pass `sim_seconds` from now."""
        if self._pass_handle is not None:
            self._pass_handle.cancel()
        self._pass_handle = self.clock.call_later(sim_seconds, self._pass)

    def _pass(self) -> None:
        self._pass_handle = None
        if not self._running:
            return
        self._arm_pass(CHECK_INTERVAL)
        try:
            self.check()
        except Exception:
            logging.getLogger(__name__).exception("scheduler pass failed")

    def check(self) -> None:
        """One pass: sweep deleted tasks, run due ones, reschedule recurring ones -- in task-id
        order, as FreeSWITCH walks its task list."""
        now = int(self.clock.now())
        visit = self._deleted
        self._deleted = []
        due = self._due
        while due and due[0][0] <= now:
            runtime, task_id = heapq.heappop(due)
            task = self.tasks.get(task_id)
            if task is not None and task.runtime == runtime:  # else finished or rescheduled
                visit.append(task_id)
        if not visit:
            return
        heapq.heapify(visit)
        self._pass_ids, self._pass_limit, self._pass_position = visit, self._next_id, 0
        try:
            while visit:
                task_id = heapq.heappop(visit)
                if task_id == self._pass_position:
                    continue  # listed twice (due and deleted)
                self._pass_position = task_id
                task = self.tasks.get(task_id)
                if task is not None:
                    self._visit(task, now)
        finally:
            self._pass_ids = None

    def _visit(self, task: Task, now: int) -> None:
        if task.done:
            return
        if task.deleted:
            self._finish(task)
            return
        if task.runtime > now:
            return
        if task.interval:
            task.runtime = now + task.interval
            heapq.heappush(self._due, (task.runtime, task.task_id))
            if task.callback is not None:
                task.callback(task)
            row = self._mirror.get(task.task_id)
            if row is not None:
                row.runtime = task.runtime
            self._publish_now("RE_SCHEDULE", task, origin="DEL_SCHEDULE")
            return
        if task.callback is not None:
            task.callback(task)
        self._finish(task)

    def _finish(self, task: Task) -> None:
        task.done = True
        self.tasks.pop(task.task_id, None)
        group = self._groups.get(task.group)
        if group is not None:
            group.pop(task.task_id, None)
            if not group:
                del self._groups[task.group]
        if len(self._due) > 2 * len(self.tasks) + 64:
            # Entries of finished tasks wait in the heap until their runtime; a long timer
            # deleted early would keep its entry for as long: rebuild from the live tasks.
            self._due = [(live.runtime, live.task_id) for live in self.tasks.values()]
            heapq.heapify(self._due)
        self._publish_now("DEL_SCHEDULE", task)
        row = self._mirror.get(task.task_id)
        if row is not None:
            now = self.clock.monotonic()
            low, high = self.mirror_lag  # rng.uniform(low, high), the same draw and arithmetic
            row.gone_at = now + (low + (high - low) * self.rng.random())
            going = self._mirror_going
            heapq.heappush(going, (row.gone_at, task.task_id))
            if going[0][0] <= now:
                self._forget_gone_rows(now)

    def _publish_now(self, name: str, task: Task, origin: str = "") -> None:
        """Publish a DEL_/RE_SCHEDULE of `task` at once. Nobody subscribed to it: the factory's
        stand-in (it takes its Event-Sequence number, as the full event would), headers never
        built. (ADD_SCHEDULE is built at the add but published 1-15 ms later, when a client
        may have subscribed since: it is always built in full.)"""
        factory = self.events()
        event = factory._unwanted(name)
        if event is None:
            event = factory.schedule(
                name, task.task_id, task.desc, task.group, task.runtime, origin=origin
            )
        self.publish(event)

    def _forget_gone_rows(self, now: float) -> None:
        going = self._mirror_going
        while going and going[0][0] <= now:
            gone_at, task_id = heapq.heappop(going)
            row = self._mirror.get(task_id)
            if row is not None and row.gone_at == gone_at:
                del self._mirror[task_id]

    def _flush_adds(self, up_to: float, generation: int) -> None:
        """Publish the queued ADD_SCHEDULE events due by `up_to`, in the order added -- unless
        the scheduler was stopped or reset since the add (`generation`)."""
        if generation != self._generation:
            return
        while self._pending_adds and self._pending_adds[0][0] <= up_to:
            self.publish(self._pending_adds.popleft()[1])
