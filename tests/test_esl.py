"""confguard.esl against the simulator: auth failures, bgapi, filters, order, liveness."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import structlog

from confguard import esl
from confguard.esl import (
    EslAuthError,
    EslConnectionLost,
    EslEvent,
    EslRejectedError,
    EslSession,
    EslSettings,
    EslTimeoutError,
)

SECRET = "Zebra-Secret-4242"
CALL_EVENTS = ["CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_HANGUP_COMPLETE", "DTMF"]


@pytest.fixture
def sim_options() -> dict[str, Any]:
    """Per-test SimConfig overrides: parametrize ``sim_options`` to change them."""
    return {}


@pytest.fixture
def sim_config(sim_options: dict[str, Any]) -> Any:
    from confguard.sim import SimConfig

    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "time_scale": 0.05,
        "heartbeat_interval": 20.0,  # 1 real second at this time scale
        "password": SECRET,
    }
    values.update(sim_options)
    return SimConfig(**values)


def settings_for(sim: Any, **overrides: Any) -> EslSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": sim.port,
        "password": SECRET,
        "connect_timeout": 2.0,
        "auth_timeout": 2.0,
        "command_timeout": 3.0,
        "heartbeat_interval": 2.0,
        "reconnect_initial": 0.05,
        "reconnect_max": 0.3,
    }
    values.update(overrides)
    return EslSettings(**values)


@pytest.fixture
async def session(sim: Any) -> AsyncIterator[EslSession]:
    s = EslSession(settings_for(sim))
    await s.connect()
    try:
        yield s
    finally:
        await s.close()


class Collector:
    """Drains ``events()`` in the background; tests wait for what they need."""

    def __init__(self, session: EslSession) -> None:
        self.events: list[EslEvent] = []
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._run(session.events()))

    async def _run(self, stream: AsyncIterator[EslEvent]) -> None:
        async for event in stream:
            self.events.append(event)
            self._changed.set()

    async def wait_for(
        self, predicate: Callable[[EslEvent], bool], timeout: float = 4.0
    ) -> EslEvent:
        async with asyncio.timeout(timeout):
            seen = 0
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return event
                seen = len(self.events)
                self._changed.clear()
                await self._changed.wait()

    def of(self, call_uuid: str) -> list[EslEvent]:
        return [e for e in self.events if e.uuid == call_uuid]

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def named(name: str, call_uuid: str | None = None) -> Callable[[EslEvent], bool]:
    return lambda e: e.name == name and (call_uuid is None or e.uuid == call_uuid)


async def originate(session: EslSession, user: str, call_uuid: str) -> None:
    await session.bgapi_start(
        f"originate {{origination_uuid={call_uuid}}}user/{user} &park()", str(uuid.uuid4())
    )


# -------------------------------------------------------------------------- connect / auth
async def test_api_status(session: EslSession) -> None:
    assert session.connected and session.connected_since is not None
    status = await session.api("status")
    assert status.startswith("UP ")


@pytest.mark.parametrize("sim_options", [{"password": "The-Right-One"}])
async def test_wrong_password(sim: Any) -> None:
    with pytest.raises(EslAuthError) as info:
        await EslSession(settings_for(sim)).connect()
    assert f"127.0.0.1:{sim.port}" in str(info.value)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)


@pytest.mark.parametrize("sim_options", [{"allow": ("10.0.0.0/8",)}])
async def test_acl_rude_rejection(sim: Any) -> None:
    with pytest.raises(EslRejectedError) as info:
        await EslSession(settings_for(sim)).connect()
    assert f"127.0.0.1:{sim.port}" in str(info.value)


# ------------------------------------------------------------------------------------ bgapi
async def test_bgapi_1000_concurrent_jobs_with_interleaved_events(session: EslSession) -> None:
    await session.subscribe(CALL_EVENTS)
    collector = Collector(session)
    live = [str(uuid.uuid4()) for _ in range(3)]
    for call_uuid in live:
        await session.add_filter("Unique-ID", call_uuid)
    # calls whose events interleave with the replies and BACKGROUND_JOBs below
    starts = [originate(session, "1001", u) for u in live]
    await asyncio.gather(*starts)
    for call_uuid in live:
        await collector.wait_for(named("CHANNEL_CREATE", call_uuid))
    dead = [str(uuid.uuid4()) for _ in range(10)]
    asks = [live[i % 3] if i % 7 in (0, 3) else dead[i % 10] for i in range(1000)]
    expected = ["true" if u in live else "false" for u in asks]
    more_calls = [str(uuid.uuid4()) for _ in range(5)]
    for call_uuid in more_calls:
        await session.add_filter("Unique-ID", call_uuid)
    jobs: list[Awaitable[object]] = [session.bgapi(f"uuid_exists {u}") for u in asks]
    jobs += [originate(session, "1001", u) for u in more_calls]
    results = await asyncio.gather(*jobs)
    assert [str(r).strip() for r in results[:1000]] == expected
    background = [e for e in collector.events if e.name == "BACKGROUND_JOB"]
    assert len({e.job_uuid for e in background}) >= 1000
    for call_uuid in more_calls:
        await collector.wait_for(named("CHANNEL_ANSWER", call_uuid))
    for call_uuid in live + more_calls:
        await session.api(f"uuid_kill {call_uuid}")
    await collector.stop()


async def test_bgapi_returns_background_job_body(session: EslSession) -> None:
    call_uuid = str(uuid.uuid4())
    body = await session.bgapi(f"originate {{origination_uuid={call_uuid}}}user/1001 &park()")
    assert body == f"+OK {call_uuid}\n"
    failure = await session.bgapi("originate user/1002 &park()")
    assert failure.startswith("-ERR USER_BUSY")
    await session.api(f"uuid_kill {call_uuid}")


# --------------------------------------------------------------------------- events, filters
async def test_filtered_events_arrive_in_wire_order(session: EslSession) -> None:
    await session.subscribe(CALL_EVENTS)
    collector = Collector(session)
    wanted, other = str(uuid.uuid4()), str(uuid.uuid4())
    await session.add_filter("Unique-ID", wanted)
    await originate(session, "1001", other)
    await originate(session, "1000", wanted)  # answers, then presses 1
    await collector.wait_for(named("DTMF", wanted))
    await session.api(f"uuid_kill {other}")
    await session.api(f"uuid_kill {wanted}")
    await collector.wait_for(named("CHANNEL_HANGUP_COMPLETE", wanted))
    await collector.stop()
    assert collector.of(other) == []
    names = [e.name for e in collector.of(wanted)]
    assert names == ["CHANNEL_CREATE", "CHANNEL_ANSWER", "DTMF", "CHANNEL_HANGUP_COMPLETE"]
    sequences = [int(e.get("Event-Sequence") or 0) for e in collector.events]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)


async def test_deleting_last_filter_does_not_flood(session: EslSession) -> None:
    await session.subscribe(CALL_EVENTS)
    collector = Collector(session)
    first, other = str(uuid.uuid4()), str(uuid.uuid4())
    await session.add_filter("Unique-ID", first)
    await originate(session, "1001", first)
    await collector.wait_for(named("CHANNEL_ANSWER", first))
    await session.del_filter("Unique-ID", first)  # the last per-call filter
    # bgapi() returns with the BACKGROUND_JOB, which comes after the call's CREATE and ANSWER
    job = str(uuid.uuid4())
    body = await session.bgapi(f"originate {{origination_uuid={other}}}user/1001 &park()", job)
    assert body == f"+OK {other}\n"
    await collector.wait_for(lambda e: e.job_uuid == job)  # all before it is in the collector
    await session.api(f"uuid_kill {first}")
    await session.api(f"uuid_kill {other}")
    barrier = str(uuid.uuid4())  # a later call we filter for: anything unfiltered comes first
    await session.add_filter("Unique-ID", barrier)
    await originate(session, "1001", barrier)
    await collector.wait_for(named("CHANNEL_ANSWER", barrier))
    await collector.stop()
    assert collector.of(other) == []
    assert [e.name for e in collector.of(first)] == ["CHANNEL_CREATE", "CHANNEL_ANSWER"]
    await session.api(f"uuid_kill {barrier}")


@pytest.mark.parametrize("sim_options", [{"password": SECRET}])
async def test_json_events(sim: Any) -> None:
    session = EslSession(settings_for(sim, event_format="json"))
    await session.connect()
    try:
        await session.subscribe(CALL_EVENTS)
        collector = Collector(session)
        call_uuid, job = str(uuid.uuid4()), str(uuid.uuid4())
        await session.add_filter("Unique-ID", call_uuid)
        await session.bgapi_start(
            f"originate {{origination_uuid={call_uuid}}}user/1001 &park()", job
        )
        done = await collector.wait_for(named("BACKGROUND_JOB"))
        assert done.job_uuid == job and done.body == f"+OK {call_uuid}\n"
        create = await collector.wait_for(named("CHANNEL_CREATE", call_uuid))
        assert create.get("Channel-Call-State") == "DOWN"
        await session.api(f"uuid_kill {call_uuid}")
        hangup = await collector.wait_for(named("CHANNEL_HANGUP_COMPLETE", call_uuid))
        assert isinstance(hangup.get("Hangup-Cause"), str)
        await collector.stop()
    finally:
        await session.close()


# --------------------------------------------------------------------------------- liveness
async def test_reconnect_after_drop_restores_filters(sim: Any) -> None:
    states: list[str] = []
    resynced = asyncio.Event()

    async def on_reconnect() -> None:
        resynced.set()

    session = EslSession(settings_for(sim), on_reconnect=on_reconnect, on_state=states.append)
    await session.connect()
    try:
        await session.subscribe(CALL_EVENTS)
        collector = Collector(session)
        wanted, other = str(uuid.uuid4()), str(uuid.uuid4())
        await session.add_filter("Unique-ID", wanted)
        pending = asyncio.create_task(session.bgapi("originate user/1004 &park()"))
        await asyncio.sleep(0.05)
        sim.faults.drop_connections()
        with pytest.raises(EslConnectionLost):
            await pending
        await asyncio.wait_for(resynced.wait(), 4)
        assert session.reconnects == 1 and session.connected
        assert states[:3] == ["connected", "disconnected", "connected"]
        # bgapi() returns with the BACKGROUND_JOB, which follows the call's CREATE and ANSWER
        job = str(uuid.uuid4())
        await session.bgapi(f"originate {{origination_uuid={other}}}user/1001 &park()", job)
        await collector.wait_for(lambda e: e.job_uuid == job)
        await originate(session, "1001", wanted)
        await collector.wait_for(named("CHANNEL_ANSWER", wanted))
        await session.api(f"uuid_kill {other}")
        await session.api(f"uuid_kill {wanted}")
        await collector.wait_for(named("CHANNEL_HANGUP_COMPLETE", wanted))
        assert collector.of(other) == []  # the filter came back with the new connection
        await collector.stop()
    finally:
        await session.close()


async def test_dead_reader_after_invalid_utf8_is_detected(sim: Any) -> None:
    resynced = asyncio.Event()

    async def on_reconnect() -> None:
        resynced.set()

    session = EslSession(settings_for(sim), on_reconnect=on_reconnect)
    await session.connect()
    try:
        pending = asyncio.create_task(session.bgapi("originate user/1004 &park()"))
        await asyncio.sleep(0.05)
        sim.faults.send_invalid_utf8()
        with pytest.raises(EslConnectionLost):
            await pending
        await asyncio.wait_for(resynced.wait(), 4)
        assert "UnicodeDecodeError" in (session.last_disconnect_reason or "")
        assert (await session.api("status")).startswith("UP ")
    finally:
        await session.close()


async def test_malformed_frame_is_detected(sim: Any) -> None:
    resynced = asyncio.Event()

    async def on_reconnect() -> None:
        resynced.set()

    session = EslSession(settings_for(sim), on_reconnect=on_reconnect)
    await session.connect()
    try:
        sim.faults.send_malformed()
        await asyncio.wait_for(resynced.wait(), 4)
        # confguard's frame guard refuses the length before genesis's int() would fail on it
        assert "protocol error: Content-Length" in (session.last_disconnect_reason or "")
        assert (await session.api("status")).startswith("UP ")
    finally:
        await session.close()


@pytest.mark.parametrize("sim_options", [{"heartbeat_interval": 4.0}])  # 0.2 real seconds
async def test_silent_socket_detected_and_recovered(sim: Any) -> None:
    states: list[str] = []
    session = EslSession(
        settings_for(sim, heartbeat_interval=0.3, auth_timeout=0.3), on_state=states.append
    )
    await session.connect()
    try:
        await asyncio.sleep(0.6)
        assert session.reconnects == 0  # heartbeats keep a healthy connection alive
        sim.faults.stall(1.0)
        async with asyncio.timeout(4):
            while session.reconnects < 1:
                await asyncio.sleep(0.02)
        assert "heartbeat" in (session.last_disconnect_reason or "")
        assert states[:3] == ["connected", "disconnected", "connected"]
        assert (await session.api("status")).startswith("UP ")
    finally:
        await session.close()


async def test_command_timeout(sim: Any) -> None:
    session = EslSession(settings_for(sim, command_timeout=0.3, heartbeat_interval=5.0))
    await session.connect()
    try:
        sim.faults.stall(1.0)
        with pytest.raises(EslTimeoutError) as info:
            await session.api("status")
        assert f"127.0.0.1:{sim.port}" in str(info.value)
        # The stalled reply would have answered the next command: the connection is dropped and
        # a new one gives every command its own reply again.
        async with asyncio.timeout(4):
            while session.reconnects < 1 or not session.connected:
                await asyncio.sleep(0.02)
        assert session.last_disconnect_reason == "no reply to api within 0.3 s"
        assert (await session.api("global_getvar confguard_nothing")).startswith("-ERR")
        assert (await session.api("status")).startswith("UP ")
    finally:
        await session.close()


async def test_shutdown_notice_then_close_stops_reconnecting(sim: Any) -> None:
    states: list[str] = []
    session = EslSession(settings_for(sim), on_state=states.append)
    await session.connect()
    await sim.faults.shutdown()
    async with asyncio.timeout(4):
        while session.connected:
            await asyncio.sleep(0.02)
    assert session.last_disconnect_reason == "disconnect-notice"
    await session.close()
    assert states[-1] == "closed"
    with pytest.raises(EslConnectionLost):
        await session.api("status")


# ---------------------------------------------------------------------------------- logging
@pytest.fixture
def genesis_debug() -> Any:
    logger = logging.getLogger(esl.GENESIS_LOGGER_NAME)
    level = logger.level
    routed = esl.route_genesis_logging(logging.DEBUG)
    try:
        yield routed
    finally:
        logger.setLevel(level)


@pytest.mark.parametrize("sim_options", [{"password": SECRET}])
async def test_password_never_in_logs_or_errors(
    sim: Any, genesis_debug: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    with structlog.testing.capture_logs() as captured:
        session = EslSession(settings_for(sim))
        texts += [repr(session), repr(session.settings)]
        await session.connect()
        await session.api("status")
        await session.bgapi("status")
        sim.faults.drop_connections()
        async with asyncio.timeout(4):
            while session.reconnects < 1:
                await asyncio.sleep(0.02)
        await session.close()
        with pytest.raises(EslAuthError) as info:
            await EslSession(settings_for(sim, password="Wrong-Zebra-9")).connect()
        texts += [str(info.value), repr(info.value)]
        genesis_debug.debug(f"Send command: auth {SECRET}")
    texts += [repr(entry) for entry in captured]
    texts.append(caplog.text)
    joined = "\n".join(texts)
    assert any(entry.get("event") == "esl.connection_lost" for entry in captured)
    assert any("auth <redacted>" in repr(entry) for entry in captured)
    assert SECRET not in joined
    assert "Wrong-Zebra-9" not in joined
