"""Simulated time for the FreeSWITCH simulator (`SimClock`).

Owns the mapping between real time and simulated time. With ``time_scale=0.1`` every simulated
second lasts 0.1 real seconds, so a 30 s hangup timer fires after 3 real seconds. Simulated wall
time (`now`) starts at the real wall clock when the clock is made and then runs at the scaled
rate; `monotonic` is the simulated seconds elapsed since then. Everything in the switch (event
dates, scheduler runtimes, callee behaviour) reads this clock and waits through it.

`call_later` keeps its own timers and one event-loop timer for the earliest of them, instead of
one event-loop timer each: with ten thousand calls each waiting on a timer, asyncio's heap of
TimerHandles (compared by a Python `__lt__`) and its re-heaping of cancelled ones are most of the
cost of waiting. The clock's timers are bucketed by deadline (a list each, in the order set) under
a heap of the distinct deadlines (floats, compared in C). Timers still run at their deadlines, in
deadline order (equal deadlines: in the order set), each a small `ClockTimer` (cancel(), and the
loop's exception handler; no context copy of its own). With thousands of timers pending, wake-ups
are coalesced (COALESCE_ABOVE, COALESCE_S).
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import time
from collections.abc import Callable, Sequence
from typing import Protocol

COMPACT_ABOVE = 1024  # cancelled timers are swept from the heap once it doubles past this
# With this many timers pending (thousands of calls), the clock wakes at most once per
# COALESCE_S real seconds: the timers due meanwhile run together, still in deadline order, none
# early and none more than COALESCE_S late (a busy event loop is later than that anyway). Below
# it every timer has a wake-up of its own.
COALESCE_ABOVE = 1000
COALESCE_S = 0.005


class Timer(Protocol):
    """What the clock's users keep of a timer (a `ClockTimer`, or a test clock's TimerHandle)."""

    def cancel(self) -> None: ...

    def cancelled(self) -> bool: ...


class ClockTimer:
    """One of the clock's timers, as small as it can be: `cancel()`, `cancelled()` and `when()`
    (the loop time it is due) as an asyncio.TimerHandle has them. The clock runs it itself, so
    it needs none of a TimerHandle's other parts: no context of its own (the callbacks run in
    the context of the clock's wake-up, and nothing in the simulator sets context variables),
    and cancelling it tells the loop nothing (uvloop's loop has no `_timer_handle_cancelled`).
    An exception in its callback goes to the loop's exception handler, as a TimerHandle's.
    `SimClock.call_later` makes it and sets its slots itself (an ``__init__`` call would cost
    as much again as the rest of making one)."""

    __slots__ = ("_callback", "_cancelled", "_scheduled", "_when")

    _callback: Callable[[], object]
    _cancelled: bool
    _scheduled: bool  # in the clock's buckets, not yet run (as TimerHandle's flag)
    _when: float

    def when(self) -> float:
        return self._when

    def cancel(self) -> None:
        self._cancelled = True

    def cancelled(self) -> bool:
        return self._cancelled

    def __repr__(self) -> str:
        state = "cancelled" if self._cancelled else "pending" if self._scheduled else "done"
        return f"<ClockTimer {state} when={self._when} {self._callback!r}>"


_new_timer = object.__new__


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def timer_pending(handle: Timer) -> bool:
    """Whether `handle` (the clock's or the loop's) is still to run: neither run nor cancelled
    (`_scheduled`: set while the timer is in a heap, the clock's as the loop's)."""
    return handle._scheduled and not handle.cancelled()  # type: ignore[attr-defined]


class SimClock:
    """Scaled time: `now()` simulated epoch seconds, `sleep()`/`call_later()` in simulated s."""

    __slots__ = (
        "_compact_at",
        "_deadlines",
        "_epoch_start",
        "_loop",
        "_pending",
        "_real_start",
        "_running_due",
        "_taking",
        "_timers",
        "_wakeup",
        "_wakeup_at",
        "time_scale",
    )

    def __init__(self, time_scale: float = 1.0, *, start_epoch: float | None = None) -> None:
        if not time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale!r}")
        self.time_scale = float(time_scale)
        self._real_start = time.monotonic()
        self._epoch_start = time.time() if start_epoch is None else float(start_epoch)
        self._timers: dict[float, list[ClockTimer]] = {}  # loop time -> its timers, as set
        self._deadlines: list[float] = []  # heap of the loop times in `_timers`
        # Timers set and not yet run nor swept, cancelled ones too (what decides coalescing and
        # sweeping): those in `_timers` and those the running pass took and has not reached.
        self._pending = 0
        self._taking: Sequence[list[ClockTimer]] = ()  # the running pass's buckets
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.TimerHandle | None = None
        self._wakeup_at = 0.0
        self._compact_at = COMPACT_ABOVE
        self._running_due = False  # in `_run_due`, which arms the wake-up for what is left

    def monotonic(self) -> float:
        """Simulated seconds since the clock was made (never goes back)."""
        return (time.monotonic() - self._real_start) / self.time_scale

    def now(self) -> float:
        """Simulated wall-clock time, epoch seconds."""
        return self._epoch_start + self.monotonic()

    def to_real(self, sim_seconds: float) -> float:
        """Real seconds that `sim_seconds` simulated seconds last."""
        return max(0.0, sim_seconds) * self.time_scale

    async def sleep(self, sim_seconds: float) -> None:
        """Wait `sim_seconds` simulated seconds, on one of the clock's own timers (in deadline
        order with its other timers; no loop timer per sleep)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        handle = self.call_later(sim_seconds, functools.partial(_wake, future))
        try:
            await future
        finally:
            handle.cancel()

    def call_later(self, sim_seconds: float, fn: Callable[[], object]) -> ClockTimer:
        """Run `fn()` on the running loop after `sim_seconds` simulated seconds."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests): the old one's timers are gone with it
            self._timers.clear()
            self._deadlines.clear()
            self._pending = 0
            self._loop, self._wakeup = loop, None
        # loop time + to_real(sim_seconds), the same arithmetic without the calls
        when = loop.time() + (sim_seconds * self.time_scale if sim_seconds > 0 else 0.0)
        handle = _new_timer(ClockTimer)
        handle._callback = fn
        handle._when = when
        handle._cancelled = False
        handle._scheduled = True
        bucket = self._timers.get(when)
        if bucket is None:
            self._timers[when] = [handle]
            heapq.heappush(self._deadlines, when)
        else:
            bucket.append(handle)
        self._pending += 1
        # While the clock runs its due timers, the run arms the wake-up once it is done.
        if not self._running_due and (self._wakeup is None or when < self._wakeup_at):
            self._arm(loop, when)
        elif self._pending > self._compact_at:
            self._compact()
        return handle

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        """Wake up for the timer due at `when` (`_wakeup_at`: the deadline served)."""
        if self._wakeup is not None:
            self._wakeup.cancel()
        self._wakeup_at = when
        if self._pending >= COALESCE_ABOVE:
            when += COALESCE_S
        self._wakeup = loop.call_at(when, self._run_due)

    def _run_due(self) -> None:
        """The loop's timer for the earliest deadline: run every timer due by now, in order.
        Timers set meanwhile (even with no delay) wait for the next loop iteration, as the
        loop's own would."""
        self._wakeup = None
        loop = self._loop
        if loop is None:
            return
        self._running_due = True
        try:
            self._run_timers(loop)
        finally:
            self._running_due = False

    def _run_timers(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        timers, deadlines = self._timers, self._deadlines
        # Every bucket due is taken out before any timer runs: one set meanwhile, even due now,
        # goes in a bucket of its own, for the next pass.
        taking = self._taking = []
        while deadlines and deadlines[0] <= now:
            taking.append(timers.pop(heapq.heappop(deadlines)))
        try:
            for bucket in taking:
                for handle in bucket:
                    if not handle._scheduled:
                        continue  # cancelled, and swept by a `_compact` since the pass began
                    self._pending -= 1
                    handle._scheduled = False
                    if not handle._cancelled:
                        try:
                            handle._callback()
                        except (SystemExit, KeyboardInterrupt):
                            self._put_back(taking)  # the timers not reached stay set
                            raise
                        except BaseException as error:  # as asyncio's Handle._run
                            loop.call_exception_handler(
                                {
                                    "message": f"Exception in callback {handle._callback!r}",
                                    "exception": error,
                                    "handle": handle,
                                }
                            )
        finally:
            self._taking = ()
        if deadlines:
            self._arm(loop, deadlines[0])

    def _put_back(self, taking: Sequence[list[ClockTimer]]) -> None:
        """Return the timers a pass took and did not reach to their buckets, ahead of any set
        since (as they were in deadline order)."""
        for bucket in reversed(taking):
            left = [handle for handle in bucket if handle._scheduled]
            if not left:
                continue
            when = left[0]._when
            later = self._timers.get(when)
            if later is None:
                heapq.heappush(self._deadlines, when)
                later = []
            self._timers[when] = left + later

    def _compact(self) -> None:
        """Drop cancelled timers (amortised: only when their count has doubled since last
        time). A pass running meanwhile (a timer it runs sets others) keeps the buckets it took:
        their cancelled timers are marked swept (`_scheduled` false, as the loop's are) instead.
        """
        live: dict[float, list[ClockTimer]] = {}
        pending = 0
        for when, bucket in self._timers.items():
            if len(bucket) > 1:
                bucket = [handle for handle in bucket if not handle._cancelled]
            elif bucket[0]._cancelled:
                continue
            if bucket:
                live[when] = bucket
                pending += len(bucket)
        self._timers = live
        self._deadlines[:] = live
        heapq.heapify(self._deadlines)
        for bucket in self._taking:
            for handle in bucket:
                if handle._scheduled:
                    if handle._cancelled:
                        handle._scheduled = False
                    else:
                        pending += 1
        self._pending = pending
        self._compact_at = max(COMPACT_ABOVE, 2 * pending)
