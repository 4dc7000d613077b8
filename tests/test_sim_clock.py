"""Tests of the simulator's clock (confguard.sim.clock): its own heap of timers behind one
event-loop timer must run them as the loop's own timers would."""

from __future__ import annotations

import asyncio
import random

from confguard.sim.clock import COMPACT_ABOVE, SimClock


async def test_timers_run_in_deadline_order_then_in_the_order_set() -> None:
    clock = SimClock(0.001)  # a simulated second lasts 1 ms
    ran: list[int] = []
    delays = [random.Random(1).choice([0.0, 1.0, 2.0, 3.0]) for _ in range(200)]
    for index, delay in enumerate(delays):
        clock.call_later(delay, lambda index=index: ran.append(index))
    await asyncio.sleep(0.02)
    assert ran == sorted(range(200), key=lambda index: (delays[index], index))


async def test_a_timer_runs_no_sooner_than_its_deadline_and_cancel_stops_it() -> None:
    clock = SimClock(0.01)
    loop = asyncio.get_running_loop()
    start = loop.time()
    fired: list[float] = []
    clock.call_later(2.0, lambda: fired.append(loop.time() - start))
    cancelled = clock.call_later(1.0, lambda: fired.append(-1.0))
    cancelled.cancel()
    assert cancelled.cancelled()
    await asyncio.sleep(0.05)
    assert len(fired) == 1 and fired[0] >= 0.02


async def test_a_timer_set_by_a_running_timer_waits_for_the_next_loop_iteration() -> None:
    """As with loop.call_later(0, ...): a callback already ready (call_soon) runs first."""
    clock = SimClock(1.0)
    loop = asyncio.get_running_loop()
    order: list[str] = []

    def first() -> None:
        order.append("first")
        loop.call_soon(lambda: order.append("soon"))
        clock.call_later(0.0, lambda: order.append("zero-delay"))

    clock.call_later(0.0, first)
    await asyncio.sleep(0.01)
    assert order == ["first", "soon", "zero-delay"]


async def test_an_exception_goes_to_the_loop_handler_and_later_timers_still_run() -> None:
    clock = SimClock(0.001)
    loop = asyncio.get_running_loop()
    errors: list[object] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context.get("exception")))
    ran: list[str] = []

    def boom() -> None:
        raise RuntimeError("boom")

    clock.call_later(0.0, boom)
    clock.call_later(0.0, lambda: ran.append("after"))
    await asyncio.sleep(0.01)
    assert ran == ["after"]
    assert isinstance(errors[0], RuntimeError)


async def test_cancelled_timers_do_not_pile_up() -> None:
    clock = SimClock(1.0)
    kept = [clock.call_later(3600.0, lambda: None) for _ in range(10)]
    for _ in range(20 * COMPACT_ABOVE):
        clock.call_later(3600.0, lambda: None).cancel()
    assert len(clock._timers) <= 2 * COMPACT_ABOVE + len(kept)
    assert not any(handle.cancelled() for handle in kept)


def test_a_clock_moves_to_a_new_loop() -> None:
    clock = SimClock(0.001)
    ran: list[int] = []

    async def use(tag: int) -> None:
        clock.call_later(1.0, lambda: ran.append(tag))
        await asyncio.sleep(0.01)

    asyncio.run(use(1))
    asyncio.run(use(2))
    assert ran == [1, 2]


async def test_a_sweep_while_timers_run_runs_each_timer_once() -> None:
    """A timer that sets enough others to make the heap sweep its cancelled entries, while the
    clock is running the due ones: every timer still runs exactly once."""
    clock = SimClock(0.001)
    runs: dict[int, int] = {}

    def note(number: int) -> None:
        runs[number] = runs.get(number, 0) + 1

    def flood() -> None:
        for _ in range(3 * COMPACT_ABOVE):
            clock.call_later(3600.0, lambda: None).cancel()

    clock.call_later(0.0, flood)
    for number in range(50):
        clock.call_later(0.0, lambda number=number: note(number))
    await asyncio.sleep(0.02)
    clock.call_later(0.0, lambda: None)  # the clock runs whatever is due again
    await asyncio.sleep(0.02)
    assert runs == {number: 1 for number in range(50)}


async def test_many_timers_wake_together_none_early_none_much_late() -> None:
    """With more than COALESCE_ABOVE timers pending, the clock wakes at most once per COALESCE_S:
    every timer still runs in deadline order, never before its deadline, and (on an idle loop)
    not much later than COALESCE_S after it."""
    from confguard.sim.clock import COALESCE_ABOVE, COALESCE_S

    clock = SimClock(1.0)
    loop = asyncio.get_running_loop()
    ops = random.Random(4)
    late: list[float] = []
    order: list[float] = []
    dues: list[float] = []
    for index in range(COALESCE_ABOVE + 500):

        def fire(index: int = index) -> None:
            late.append(loop.time() - dues[index])
            order.append(dues[index])

        dues.append(clock.call_later(ops.uniform(0.0, 0.2), fire).when())
    await asyncio.sleep(0.3)
    assert len(late) == COALESCE_ABOVE + 500
    assert order == sorted(order)
    assert min(late) >= -1e-6
    assert sorted(late)[len(late) // 2] < COALESCE_S + 0.05  # median: the window, plus slack


async def test_cancelling_a_timer_asks_nothing_of_the_loop() -> None:
    """The clock's timers are not in the loop's heap: cancel() must not call the loop's
    `_timer_handle_cancelled` (uvloop has none)."""
    clock = SimClock(1.0)
    loop = asyncio.get_running_loop()
    handle = clock.call_later(60.0, lambda: None)
    original = loop._timer_handle_cancelled  # type: ignore[attr-defined]

    def refuse(handle: object) -> None:
        raise AttributeError("no _timer_handle_cancelled on this loop")

    loop._timer_handle_cancelled = refuse  # type: ignore[attr-defined]
    try:
        handle.cancel()
    finally:
        loop._timer_handle_cancelled = original  # type: ignore[attr-defined]
    assert handle.cancelled()


async def test_a_clock_timer_knows_its_deadline_and_state() -> None:
    """The clock's timers are small objects of its own: `when()` is the loop time it is due,
    `cancelled()` only after cancel(), and `timer_pending` is false once run or cancelled."""
    from confguard.sim.clock import timer_pending

    clock = SimClock(0.01)
    loop = asyncio.get_running_loop()
    before = loop.time()
    ran: list[str] = []
    handle = clock.call_later(1.0, lambda: ran.append("ran"))
    other = clock.call_later(1.0, lambda: ran.append("other"))
    assert before + 0.01 <= handle.when() <= loop.time() + 0.01
    assert timer_pending(handle) and not handle.cancelled()
    other.cancel()
    assert other.cancelled() and not timer_pending(other)
    await asyncio.sleep(0.05)
    assert ran == ["ran"]
    assert not timer_pending(handle) and not handle.cancelled()


async def test_timers_set_while_the_clock_runs_are_still_woken_for() -> None:
    """A timer set by a running timer arms no wake-up itself (the run arms one for what is
    left): a chain of timers, each set by the one before, at growing delays, all run."""
    clock = SimClock(0.001)
    steps: list[int] = []
    late: list[int] = []

    def step(number: int) -> None:
        steps.append(number)
        if number < 20:
            clock.call_later(float(number % 3), lambda: step(number + 1))
            clock.call_later(0.5, lambda: late.append(number))

    clock.call_later(0.0, lambda: step(0))
    await asyncio.sleep(0.2)
    assert steps == list(range(21))
    assert sorted(late) == list(range(20))
