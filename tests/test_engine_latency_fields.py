"""The latency fields bench/ reads: on the simulator, a joined invite's `joining` line carries
`key_to_timers_gone_ms` and its outcome line (`outcome: joined`) `key_to_joined_ms`, in order and
within the call's own duration; no other line carries them."""

from __future__ import annotations

import asyncio
import time

from structlog.testing import capture_logs

from confguard.engine import Engine
from confguard.esl import EslSession, EslSettings
from confguard.invite import InviteSpec


async def test_joined_invite_logs_key_to_timers_gone_and_key_to_joined(sim, sim_config) -> None:  # type: ignore[no-untyped-def]
    session = EslSession(EslSettings(host="127.0.0.1", port=sim.port,
                                     password=sim_config.password))
    await session.connect()
    engine = Engine()
    engine.attach(session)
    await engine.start()
    try:
        with capture_logs() as lines:
            began = time.perf_counter()
            run = await engine.invite(InviteSpec(extension="1000", room="test1", timeout=10))
            final = await asyncio.wait_for(asyncio.shield(run.final_update()), 10)
            whole_ms = (time.perf_counter() - began) * 1000
    finally:
        await engine.stop()
        await session.close()
    assert final["outcome"] == "joined"
    states = [line for line in lines if line.get("event") == "invite.state"]
    (joining,) = [line for line in states if line.get("state") == "joining"]
    (outcome,) = [line for line in states if line.get("outcome")]
    assert outcome["outcome"] == "joined"
    to_timers_gone = joining["key_to_timers_gone_ms"]
    to_joined = outcome["key_to_joined_ms"]
    assert 0 <= to_timers_gone <= to_joined < whole_ms
    others = [line for line in states if line is not joining and line is not outcome]
    assert others and not any(key.startswith("key_to_") for line in others for key in line)
