"""The chaos soak (tests/chaos.py): invites with mixed callees while the ESL link, the daemon and
the switch fail at seeded random moments; every invite is then checked against the switch.

On the simulator (time scale 0.1, in `make test`): >= 300 invites, >= 10 faults of each kind.
On the real FreeSWITCH (`realfs`): >= 200 invites, >= 4 faults of each kind by default;
CONFGUARD_CHAOS_INVITES, CONFGUARD_CHAOS_FAULTS (of each kind), CONFGUARD_CHAOS_RATE and
CONFGUARD_CHAOS_SEED make it bigger (or another draw) when run by hand.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from chaos import FAULT_KINDS, ChaosSimPeer, Report, SoakPlan, env_int, run_soak
from peers import RealPeer

# The violations the daemon at the time of writing is known to commit (the daemon is being fixed
# so that faults lose nothing). A run whose only violations are these is an expected failure
# (`KnownDaemonViolation`); any other violation fails the test.
KNOWN_VIOLATIONS = {
    # A key pressed while the daemon could not see the switch (SIGKILLed and restarting, the ESL
    # link stalled or reset): the DTMF event is gone, the key with it; the FreeSWITCH timer ends
    # the call (`timeout`), or the restarted daemon declares it `lost`.
    "key_recorded_joined",
    # The restarted daemon adopts a call that is still up (waiting for its key) and declares it
    # `lost`; the switch's timer then hangs it up seconds later.
    "lost_matches_switch",
}
KNOWN_REASON = (
    "daemon bug (being fixed): a key pressed while the daemon was down or its ESL link stalled/"
    "reset is lost (timeout/lost instead of joined), and an adopted live call is declared lost"
)


class KnownDaemonViolation(AssertionError):
    """Every violation of the run is one of KNOWN_VIOLATIONS."""


def assert_no_violation(report: Report) -> None:
    if report.violations and report.violation_kinds() <= KNOWN_VIOLATIONS:
        raise KnownDaemonViolation(report.table())
    assert not report.violations, report.table()


@pytest.mark.timeout(240)
@pytest.mark.xfail(strict=False, raises=KnownDaemonViolation, reason=KNOWN_REASON)
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
@pytest.mark.xfail(strict=False, raises=KnownDaemonViolation, reason=KNOWN_REASON)
async def test_chaos_soak_on_the_real_switch(real_switch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if not real_switch.running:
        await asyncio.to_thread(real_switch.start)
    peer = RealPeer(real_switch)
    await peer.clean()
    invites = env_int("CONFGUARD_CHAOS_INVITES", 200)
    faults = env_int("CONFGUARD_CHAOS_FAULTS", 4)
    rate = float(env_int("CONFGUARD_CHAOS_RATE", 4))
    seed = env_int("CONFGUARD_CHAOS_SEED", 20261202)
    plan = SoakPlan(invites=invites, rate=rate, timeout=20, ring_timeout=3,
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
