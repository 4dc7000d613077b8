"""`python -m confguard.sim`: the simulator's command line (see `confguard.sim.cli`)."""

from __future__ import annotations

import sys

from confguard.sim.cli import main

if __name__ == "__main__":
    sys.exit(main())
