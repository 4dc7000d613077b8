"""The chaos soak (tests/chaos.py): invites with mixed callees while the ESL link, the daemon and
the switch fail at seeded random moments; every invite is then checked against the switch.

On the simulator (real time, in `make test`): >= 300 invites, >= 10 faults of each kind.
On the real FreeSWITCH (`realfs`): >= 200 invites, >= 4 faults of each kind by default;
CONFGUARD_CHAOS_INVITES, CONFGUARD_CHAOS_FAULTS (of each kind), CONFGUARD_CHAOS_RATE (default
8/s) and CONFGUARD_CHAOS_SEED make it bigger (or another draw) when run by hand.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from chaos import FAULT_KINDS, ChaosSimPeer, Report, SoakPlan, env_int, run_soak
from peers import RealPeer


def assert_no_violation(report: Report) -> None:
    assert not report.violations, report.table()


@pytest.mark.timeout(240)
async def test_chaos_soak_on_the_simulator(tmp_path: Path) -> None:
    seed = env_int("CONFGUARD_CHAOS_SEED", 20261201)
    # Real time (scale 1): the daemon's own bounds (a call's deadline, its safety net) are
    # wall-clock seconds, so they line up with the switch's timers only unscaled; short calls
    # (timeout 8 s) keep the run under a minute.
    peer = ChaosSimPeer(tmp_path, seed=seed, scale=1.0)
    await peer.start()
    try:
        plan = SoakPlan(invites=300, rate=16.0, timeout=8, ring_timeout=3,
                        faults=dict.fromkeys(FAULT_KINDS, 10), seed=seed)
        report = await run_soak(peer, tmp_path, plan, "simulator, real time")
    finally:
        await peer.stop()
    print(report.table())
    assert report.placed >= 300
    assert all(report.faults[kind] >= 10 for kind in FAULT_KINDS), report.table()
    assert_no_violation(report)


@pytest.mark.realfs
@pytest.mark.timeout(1800)
async def test_chaos_soak_on_the_real_switch(real_switch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if not real_switch.running:
        await asyncio.to_thread(real_switch.start)
    peer = RealPeer(real_switch)
    await peer.clean()
    invites = env_int("CONFGUARD_CHAOS_INVITES", 200)
    faults = env_int("CONFGUARD_CHAOS_FAULTS", 4)
    rate = float(env_int("CONFGUARD_CHAOS_RATE", 8))
    seed = env_int("CONFGUARD_CHAOS_SEED", 20261202)
    plan = SoakPlan(invites=invites, rate=rate, timeout=12, ring_timeout=3,
                    faults=dict.fromkeys(FAULT_KINDS, faults), seed=seed)
    try:
        report = await run_soak(peer, tmp_path, plan, "real FreeSWITCH")
    finally:
        if not real_switch.running:
            await asyncio.to_thread(real_switch.start)
        await peer.clean()
    print(report.table())
    assert report.placed >= invites
    assert all(report.faults[kind] >= faults for kind in FAULT_KINDS), report.table()
    assert_no_violation(report)
