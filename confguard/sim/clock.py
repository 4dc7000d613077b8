"""Simulated time for the FreeSWITCH simulator (`SimClock`).

Owns the mapping between real time and simulated time. With ``time_scale=0.1`` every simulated
second lasts 0.1 real seconds, so a 30 s hangup timer fires after 3 real seconds. Simulated wall
time (`now`) starts at the real wall clock when the clock is made and then runs at the scaled
rate; `monotonic` is the simulated seconds elapsed since then. Everything in the switch (event
dates, scheduler runtimes, callee behaviour) reads this clock and waits through it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class SimClock:
    """Scaled time: `now()` simulated epoch seconds, `sleep()`/`call_later()` in simulated s."""

    def __init__(self, time_scale: float = 1.0, *, start_epoch: float | None = None) -> None:
        if not time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale!r}")
        self.time_scale = float(time_scale)
        self._real_start = time.monotonic()
        self._epoch_start = time.time() if start_epoch is None else float(start_epoch)

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
        """Wait `sim_seconds` simulated seconds."""
        await asyncio.sleep(self.to_real(sim_seconds))

    def call_later(self, sim_seconds: float, fn: Callable[[], object]) -> asyncio.TimerHandle:
        """Run `fn()` on the running loop after `sim_seconds` simulated seconds."""
        loop = asyncio.get_running_loop()
        return loop.call_later(self.to_real(sim_seconds), fn)
