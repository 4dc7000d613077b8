"""The clock's buckets of timers (confguard.sim.clock) against the plain heap it replaced: on a
loop whose time jumps (so that runs are repeatable and many deadlines are equal), a random
workload -- timers setting and cancelling others, equal deadlines, zero delays, thousands
pending (coalesced wake-ups), sweeps of cancelled timers while a pass runs -- must run the same
timers at the same loop times in the same order on both."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import selectors
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from confguard.sim import clock as clock_module
from confguard.sim.clock import COALESCE_ABOVE, COALESCE_S, COMPACT_ABOVE, ClockTimer, SimClock


class HeapClock(SimClock):
    """The reference: one heap of (deadline, order, timer) tuples, taken in heap order while
    due and set before the pass began; coalescing and sweeping decided by the heap's length."""

    def __init__(self, time_scale: float) -> None:
        super().__init__(time_scale)
        self._heap: list[tuple[float, int, ClockTimer]] = []
        self._order = itertools.count()

    def call_later(self, sim_seconds: float, fn: Callable[[], object]) -> ClockTimer:
        loop = asyncio.get_running_loop()
        self._loop = loop
        when = loop.time() + (sim_seconds * self.time_scale if sim_seconds > 0 else 0.0)
        handle = clock_module._new_timer(ClockTimer)
        handle._callback, handle._when, handle._cancelled, handle._scheduled = fn, when, False, True
        heapq.heappush(self._heap, (when, next(self._order), handle))
        if not self._running_due and (self._wakeup is None or when < self._wakeup_at):
            self._arm(loop, when)
        elif len(self._heap) > self._compact_at:
            self._heap[:] = [entry for entry in self._heap if not entry[2]._cancelled]
            heapq.heapify(self._heap)
            self._compact_at = max(COMPACT_ABOVE, 2 * len(self._heap))
        return handle

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._wakeup is not None:
            self._wakeup.cancel()
        self._wakeup_at = when
        if len(self._heap) >= COALESCE_ABOVE:
            when += COALESCE_S
        self._wakeup = loop.call_at(when, self._run_due)

    def _run_timers(self, loop: asyncio.AbstractEventLoop) -> None:
        heap, now, set_before = self._heap, loop.time(), next(self._order)
        while heap:
            when, order, handle = heap[0]
            if when > now or order > set_before:
                self._arm(loop, when)
                return
            heapq.heappop(heap)
            handle._scheduled = False
            if not handle._cancelled:
                handle._callback()


class _Now:
    value = 1000.0


class _JumpingSelector(selectors.DefaultSelector):
    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            raise RuntimeError("no timer left: the run is stuck")
        _Now.value += max(0.0, timeout)
        return super().select(0)


class _JumpingLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__(selector=_JumpingSelector())

    def time(self) -> float:
        return _Now.value


def _run_jumping(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on a fresh `_JumpingLoop`, its clock set to 1,000 s."""
    _Now.value = 1000.0
    loop = _JumpingLoop()
    try:
        loop.run_until_complete(main)
    finally:
        loop.close()


def _workload(clock: SimClock, seed: int, limit: int) -> list[tuple[float, int]]:
    """Timers that set and cancel others at random, and now and then a coroutine setting a
    thousand more: which ran, when, in what order."""
    rng = random.Random(seed)
    ran: list[tuple[float, int]] = []
    pending: list[ClockTimer] = []
    numbers = itertools.count()
    loops: list[asyncio.AbstractEventLoop] = []

    def delay() -> float:
        return rng.choice([0.0, 0.0, round(rng.uniform(0, 0.02), 3), rng.uniform(0, 0.05), 1.0])

    def fire(number: int) -> None:
        ran.append((loops[0].time(), number))
        if len(ran) >= limit:
            return
        for _ in range(rng.choice([0, 1, 1, 2])):
            set_one(delay())
        if rng.random() < 0.01:  # a burst of cancelled timers: a sweep while the pass runs
            set_cancelled(rng.randrange(2 * COMPACT_ABOVE))
        if pending and rng.random() < 0.3:
            pending[rng.randrange(len(pending))].cancel()

    def set_one(sim_seconds: float) -> ClockTimer:
        number = next(numbers)
        handle = clock.call_later(sim_seconds, lambda: fire(number))
        pending.append(handle)
        return handle

    def set_cancelled(count: int) -> None:
        for _ in range(count):
            clock.call_later(3600.0, lambda: None).cancel()

    async def main() -> None:
        loops.append(asyncio.get_running_loop())
        while len(ran) < limit:
            if rng.random() < 0.05:  # enough pending to coalesce, for a while
                for _ in range(COALESCE_ABOVE + 200):
                    set_one(delay())
            if rng.random() < 0.1:
                set_cancelled(rng.randrange(2 * COMPACT_ABOVE))
            await asyncio.sleep(0)
            await clock.sleep(rng.choice([0.0, 0.01, 0.05]))  # a coroutine's sleep among them

    _run_jumping(main())
    return ran


def _sweep_mid_pass(clock: SimClock) -> list[tuple[float, str]]:
    """A pass of 1,100 timers due together whose first sets enough cancelled timers to sweep
    while the other 1,099 wait their turn, then 1,050 live ones: whether the next wake-up is
    coalesced depends on counting those 1,099 right (pending, not swept, then run)."""
    ran: list[tuple[float, str]] = []
    loops: list[asyncio.AbstractEventLoop] = []

    def first() -> None:
        ran.append((loops[0].time(), "first"))
        for _ in range(2 * COMPACT_ABOVE + 1):
            clock.call_later(3600.0, lambda: None).cancel()
        for number in range(COALESCE_ABOVE + 50):
            clock.call_later(
                0.01 + number * 1e-6, lambda n=number: ran.append((loops[0].time(), f"late{n}"))
            )

    async def main() -> None:
        loops.append(asyncio.get_running_loop())
        clock.call_later(0.01, first)
        for _ in range(COALESCE_ABOVE + 99):
            clock.call_later(0.01, lambda: None)
        await clock.sleep(0.1)

    _run_jumping(main())
    return ran


def test_a_sweep_mid_pass_counts_the_timers_the_pass_holds() -> None:
    expected = _sweep_mid_pass(HeapClock(1.0))
    assert len(expected) == COALESCE_ABOVE + 51
    assert _sweep_mid_pass(SimClock(1.0)) == expected


@pytest.mark.parametrize(("seed", "scale"), [(1, 1.0), (3, 0.25), (4, 7.0)])
def test_buckets_run_what_the_heap_ran_when_it_ran_it(seed: int, scale: float) -> None:
    expected = _workload(HeapClock(scale), seed, 4000)
    assert len(expected) >= 4000
    assert _workload(SimClock(scale), seed, 4000) == expected


def test_a_timer_interrupting_the_run_leaves_the_rest_set() -> None:
    """SystemExit / KeyboardInterrupt out of a timer: the timers the pass had not reached stay
    set, ahead of any set since at the same deadline, and run on the next pass."""
    clock = SimClock(1.0)
    ran: list[str] = []

    def stop() -> None:
        clock.call_later(0.0, lambda: ran.append("set-after"))
        raise KeyboardInterrupt

    async def set_them() -> None:
        clock.call_later(0.0, lambda: ran.append("first"))
        clock.call_later(0.0, stop)
        clock.call_later(0.0, lambda: ran.append("left"))
        await asyncio.sleep(0.01)

    async def again() -> None:
        clock.call_later(0.0, lambda: ran.append("new"))
        await asyncio.sleep(0.01)

    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(set_them())
        assert ran == ["first"]
        loop.run_until_complete(again())
    finally:
        loop.close()
    assert ran[:3] == ["first", "left", "set-after"] and ran[-1] == "new"
