"""Shared test fixtures: the simulator on loopback and the recorded transcripts."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The recorded transcripts the tests read: the project's own copy (tests/transcripts/, with the
# README and FACTS.md they come with); CONFGUARD_TRANSCRIPTS points at another set.
TRANSCRIPTS = Path(os.environ.get("CONFGUARD_TRANSCRIPTS", REPO / "tests" / "transcripts"))


@pytest.fixture(scope="session")
def transcripts_dir() -> Path:
    """The recorded FreeSWITCH transcripts (tests/transcripts/, or $CONFGUARD_TRANSCRIPTS)."""
    if not TRANSCRIPTS.is_dir():
        pytest.fail(
            f"recorded transcripts not found at {TRANSCRIPTS}; "
            "unset CONFGUARD_TRANSCRIPTS to use the repo's tests/transcripts/"
        )
    return TRANSCRIPTS


@pytest.fixture
def sim_config():  # type: ignore[no-untyped-def]
    """A simulator config for one test: loopback, a free port, fast time, short heartbeats."""
    from confguard.sim import SimConfig

    return SimConfig(host="127.0.0.1", port=0, time_scale=0.05, heartbeat_interval=20.0)


@pytest.fixture
async def sim(sim_config) -> AsyncIterator[object]:  # type: ignore[no-untyped-def]
    """A started simulator on 127.0.0.1; stopped after the test."""
    from confguard.sim import Simulator

    simulator = Simulator(sim_config)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()
