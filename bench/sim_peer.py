"""The simulator peer of the benchmark: `python -m confguard.sim` with uvloop as its event loop.

`confguard sim` runs on asyncio's default loop; the daemon runs on uvloop, so the bench gives the
simulator the same loop (the flags are `confguard sim`'s own).
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

from confguard.sim.cli import main

if __name__ == "__main__":
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sys.exit(main(sys.argv[1:]))
