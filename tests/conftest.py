"""Shared test fixtures: the simulator on loopback and the recorded transcripts."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
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


# ------------------------------------------------------------------ the two peers of the e2e

# Set (as .ci/run does when shared/freeswitch/dist is beside the repo) to make a missing or
# broken real FreeSWITCH fail the `realfs` tests instead of skipping them.
REQUIRE_REALFS = "CONFGUARD_REQUIRE_REALFS"
_running_switch: list[object] = []  # the session's RealSwitch, for failure reports


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "realfs: runs against a real FreeSWITCH ($CONFGUARD_FREESWITCH, else the tarball in "
        "../shared/freeswitch/dist); skipped with one line saying how when there is none",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist (`make test` runs two workers), every `realfs` test goes to one worker, so
    one FreeSWITCH serves them all while the other worker runs the simulator's tests."""
    for item in items:
        if item.get_closest_marker("realfs"):
            item.add_marker(pytest.mark.xdist_group("realfs"))


@pytest.fixture(scope="session")
def real_switch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real FreeSWITCH on 127.0.0.1 (free port, generated password, the project's config)."""
    from confguard.realswitch import FreeSwitchNotFound, RealSwitch, find_freeswitch

    try:
        install = find_freeswitch(REPO)
    except FreeSwitchNotFound as missing:
        if os.environ.get(REQUIRE_REALFS):
            pytest.fail(f"{REQUIRE_REALFS} is set but {missing}")
        pytest.skip(str(missing))
    switch = RealSwitch(install, tmp_path_factory.mktemp("freeswitch"))
    switch.start()
    _running_switch.append(switch)
    try:
        yield switch
    finally:
        _running_switch.clear()
        switch.stop()


@pytest.fixture(params=["sim", pytest.param("real", marks=pytest.mark.realfs)])
async def peer(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[object]:
    """The FreeSWITCH a scenario runs against: the simulator, or the session's real switch."""
    from peers import RealPeer, SimPeer

    if request.param == "sim":
        async with SimPeer(tmp_path) as simulated:
            yield simulated
        return
    switch = request.getfixturevalue("real_switch")
    if not switch.running:  # a scenario that stopped it failed half-way
        await asyncio.to_thread(switch.start)
    real = RealPeer(switch)
    await real.clean()
    try:
        yield real
    finally:
        await real.clean()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """A failing `realfs` test's report carries the end of FreeSWITCH's log (kept on disk)."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and _running_switch and item.get_closest_marker("realfs"):
        switch = _running_switch[0]
        report.sections.append(
            (f"FreeSWITCH log ({switch.log_path})", switch.tail(80))  # type: ignore[attr-defined]
        )


@pytest.fixture
async def link(peer: object) -> AsyncIterator[object]:
    """A recording relay (peers.EslLink) between the daemon and `peer`: what was sent, and cut()."""
    from peers import EslLink

    relay = EslLink(peer)  # type: ignore[arg-type]
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


@pytest.fixture
async def sim_peer(tmp_path: Path) -> AsyncIterator[object]:
    """The simulator, for a test that runs on it alone (peers.SimPeer)."""
    from peers import SimPeer

    async with SimPeer(tmp_path) as simulated:
        yield simulated
