"""The simulator peer of the benchmark: `python -m confguard.sim` with uvloop as its event loop.

`confguard sim` runs on asyncio's default loop; the daemon runs on uvloop, so the bench gives the
simulator the same loop (the flags are `confguard sim`'s own). The simulator's clock keeps its own
heap of `asyncio.TimerHandle`s (confguard/sim/clock.py); their `cancel()` tells the loop through
`_timer_handle_cancelled`, which asyncio's loop implements (a counter for handles it scheduled
itself) and uvloop's does not (NotImplementedError: every `sched_hangup` failed). `_SimLoop`
gives uvloop the base loop's behaviour for handles it never scheduled: nothing to count.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

from confguard.sim.cli import main


class _SimLoop(uvloop.Loop):  # type: ignore[misc]
    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        """The clock's handles are not in uvloop's timers: nothing to account for."""


class _SimLoopPolicy(uvloop.EventLoopPolicy):  # type: ignore[misc]
    def _loop_factory(self) -> asyncio.AbstractEventLoop:
        return _SimLoop()


if __name__ == "__main__":
    asyncio.set_event_loop_policy(_SimLoopPolicy())
    sys.exit(main(sys.argv[1:]))
