"""The engine without a network: routing, command order, and following an invite's updates."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any
from unittest import mock

import pytest

from confguard.engine import SUBSCRIBED_EVENTS, Engine, InviteRun, NotConnected
from confguard.esl import EslConnectionLost, EslNotConnected
from confguard.invite import Invite, InviteSpec


class RecordingSession:
    """Records what the engine sends; events are pushed by the test."""

    connected = True

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    async def subscribe(self, events: Any) -> None:
        self.sent.append("event plain " + " ".join(events))

    async def add_filter(self, header: str, value: str) -> None:
        self.sent.append(f"filter {header} {value}")

    async def del_filter(self, header: str, value: str) -> None:
        self.sent.append(f"filter delete {header} {value}")

    async def api(self, command: str) -> str:
        self.sent.append(f"api {command}")
        return "+OK\n"

    async def bgapi_start(self, command: str, job_uuid: str) -> None:
        self.sent.append(f"bgapi {command}")

    async def wait_connected(self, timeout: float) -> bool:
        return self.connected

    async def events(self) -> AsyncIterator[Any]:
        while True:
            yield await self.queue.get()


class Event:
    def __init__(self, **headers: str) -> None:
        self.headers = {k.replace("_", "-"): v for k, v in headers.items()}
        self.name = self.headers["Event-Name"]
        self.subclass = self.headers.get("Event-Subclass")
        self.body = None


@pytest.fixture
async def engine() -> AsyncIterator[tuple[Engine, RecordingSession]]:
    session = RecordingSession()
    running = Engine()
    running.attach(session)
    await running.start()
    try:
        yield running, session
    finally:
        await running.stop()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_filters_go_out_before_the_originate(engine) -> None:  # type: ignore[no-untyped-def]
    running, session = engine
    run = await running.invite(InviteSpec(extension="1000", room="test1", timeout=30))
    await settle()
    assert session.sent[0].startswith("event plain ")
    # one filter a call: its job and its timers' events pass the permanent Event-Name filters
    assert session.sent[1:2] == [f"filter Unique-ID {run.call_uuid}"]
    assert session.sent[2].startswith("bgapi originate {origination_uuid=" + run.call_uuid)


async def test_events_of_other_calls_are_not_routed(engine) -> None:  # type: ignore[no-untyped-def]
    running, session = engine
    run = await running.invite(InviteSpec(extension="1000", room="test1", timeout=30))
    session.queue.put_nowait(
        Event(Event_Name="CHANNEL_ANSWER", Unique_ID="00000000-0000-4000-8000-000000000000")
    )
    session.queue.put_nowait(Event(Event_Name="CHANNEL_CREATE", Unique_ID=run.call_uuid))
    await settle()
    assert run.machine.state == "ringing"


async def test_follow_misses_nothing_published_during_its_replay(engine) -> None:  # type: ignore[no-untyped-def]
    running, session = engine
    run: InviteRun = await running.invite(InviteSpec(extension="1000", room="test1", timeout=30))
    await settle()
    follower = running.follow(run.invite_id)
    first = await follower.__anext__()  # replaying the snapshot (placing) ...
    assert first["state"] == "placing"
    # ... while the call moves on: these updates come after the snapshot was taken.
    session.queue.put_nowait(Event(Event_Name="CHANNEL_CREATE", Unique_ID=run.call_uuid))
    session.queue.put_nowait(
        Event(Event_Name="CHANNEL_HANGUP_COMPLETE", Unique_ID=run.call_uuid,
              Hangup_Cause="USER_BUSY")
    )
    await settle()
    rest = [update async for update in follower]
    assert [u["state"] for u in rest] == ["ringing", "ended"]
    assert rest[-1]["outcome"] == "busy"
    assert [u["seq"] for u in [first, *rest]] == [0, 1, 2]


async def test_observers_see_every_update_in_order_and_one_that_raises_stops_nothing(
    engine,  # type: ignore[no-untyped-def]
) -> None:
    running, session = engine
    seen: list[tuple[str, int, str]] = []

    def broken(run: InviteRun, update: dict[str, Any]) -> None:
        raise RuntimeError("observer bug")

    running.add_observer(broken)
    running.add_observer(lambda run, update: seen.append(
        (run.invite_id, update["seq"], update["state"])
    ))
    run = await running.invite(InviteSpec(extension="1000", room="test1", timeout=30))
    await settle()
    session.queue.put_nowait(Event(Event_Name="CHANNEL_CREATE", Unique_ID=run.call_uuid))
    session.queue.put_nowait(
        Event(Event_Name="CHANNEL_HANGUP_COMPLETE", Unique_ID=run.call_uuid,
              Hangup_Cause="USER_BUSY")
    )
    await settle()
    assert seen == [(run.invite_id, 0, "placing"), (run.invite_id, 1, "ringing"),
                    (run.invite_id, 2, "ended")]
    assert run.outcome == "busy"


class DumpHeldSession(RecordingSession):
    """Like RecordingSession, but the answer to `uuid_dump` waits until the test gives it."""

    def __init__(self) -> None:
        super().__init__()
        self.dump_asked = asyncio.Event()
        self.dump_reply: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def api(self, command: str) -> str:
        self.sent.append(f"api {command}")
        if command.startswith("uuid_dump "):
            self.dump_asked.set()
            return await self.dump_reply
        return "+OK\n"


async def test_adopted_call_whose_hangup_tail_beats_the_dump_is_lost() -> None:
    """The interleaving of test_e2e's vanished call: killed while no daemon ran, FreeSWITCH
    still finishing the hangup when the restarted daemon's filters went in, so
    CHANNEL_HANGUP_COMPLETE reaches the adopted invite before `-ERR No such channel!`."""
    from confguard.journal import InviteRecord

    session = DumpHeldSession()
    running = Engine()
    running.attach(session)
    await running.start()
    try:
        call_uuid = "93f1c9a0-25ae-434f-9fbd-19951ea5c7b4"
        job_uuid = "0b8e0c43-6f0e-4d47-9a43-0d86e0b2b0a1"
        now = time.time()
        run = await running.adopt(InviteRecord(
            invite_id="94c865f4c418", call_uuid=call_uuid, job_uuid=job_uuid, ext="1001",
            room="test1", timeout=60, deadline=now + 59, created_at=now - 1, state="waiting_key",
        ))
        await asyncio.wait_for(session.dump_asked.wait(), 5)
        assert session.sent[1:2] == [f"filter Unique-ID {call_uuid}"]  # before its dump
        session.queue.put_nowait(Event(Event_Name="CHANNEL_HANGUP_COMPLETE", Unique_ID=call_uuid,
                                       Hangup_Cause="NORMAL_CLEARING"))
        await settle()
        session.dump_reply.set_result("-ERR No such channel!\n")
        final = await asyncio.wait_for(asyncio.shield(run.final_update()), 5)
        assert final["outcome"] == "lost", final
        await settle()
        assert running.active() == []
        assert session.sent[-1:] == [f"filter delete Unique-ID {call_uuid}"]
        assert not any(line.startswith("filter delete ") for line in session.sent[:-1])
    finally:
        await running.stop()


class LinkSession(RecordingSession):
    """A session whose link the test drops and restores, with the errors confguard.esl raises:
    EslNotConnected while down (nothing written), EslConnectionLost for a command the link
    dropped under (written, its answer lost)."""

    def __init__(self, *, connected: bool = True) -> None:
        super().__init__()
        self.connected = connected
        self.up = asyncio.Event()
        if connected:
            self.up.set()
        self.lose_next_bgapi = False  # drop the link while the next bgapi is being written
        self.dump_reply = '{"Answer-State":"ringing","Channel-State":"CS_CONSUME_MEDIA"}'

    def drop(self) -> None:
        self.connected = False
        self.up.clear()

    def restore(self) -> None:
        self.connected = True
        self.up.set()

    async def wait_connected(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.up.wait(), max(0.0, timeout))
        return self.connected

    async def bgapi_start(self, command: str, job_uuid: str) -> None:
        if not self.connected:
            raise EslNotConnected("ESL 127.0.0.1:8021: not connected (reconnecting)")
        self.sent.append(f"bgapi {command}")
        if self.lose_next_bgapi:
            self.lose_next_bgapi = False
            self.drop()
            raise EslConnectionLost("ESL 127.0.0.1:8021: connection lost during bgapi")

    async def api(self, command: str) -> str:
        if not self.connected:
            raise EslNotConnected("ESL 127.0.0.1:8021: not connected (reconnecting)")
        self.sent.append(f"api {command}")
        if command.startswith("uuid_dump "):
            return self.dump_reply
        return "+OK\n"


@contextlib.asynccontextmanager
async def link_engine(
    session: LinkSession, reconnect_wait: float = 2.0
) -> AsyncIterator[Engine]:
    running = Engine(reconnect_wait=reconnect_wait)
    running.attach(session)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


def bgapis(session: LinkSession) -> list[str]:
    return [line for line in session.sent if line.startswith("bgapi ")]


async def test_a_new_invite_waits_for_the_reconnect_then_goes_out() -> None:
    session = LinkSession(connected=False)
    async with link_engine(session) as running:
        placing = asyncio.ensure_future(
            running.invite(InviteSpec(extension="1000", room="test1", timeout=30))
        )
        await asyncio.sleep(0.1)
        assert not placing.done() and bgapis(session) == []
        session.restore()
        run = await asyncio.wait_for(placing, 2)
        await settle()
        assert len(bgapis(session)) == 1 and run.call_uuid in bgapis(session)[0]


async def test_a_new_invite_is_refused_once_the_reconnect_wait_is_over() -> None:
    session = LinkSession(connected=False)
    async with link_engine(session, reconnect_wait=0.1) as running:
        with pytest.raises(NotConnected, match=r"waited 0\.1 s"):
            await running.invite(InviteSpec(extension="1000", room="test1", timeout=30))
        assert session.sent == ["event plain " + " ".join(SUBSCRIBED_EVENTS)]


async def test_an_originate_not_written_when_the_link_went_is_sent_after_the_reconnect() -> None:
    session = LinkSession()
    async with link_engine(session) as running:
        run = await running.invite(InviteSpec(extension="1000", room="test1", timeout=30))
        session.drop()  # after the invite was taken, before its worker wrote the originate
        await asyncio.sleep(0.1)
        assert bgapis(session) == []
        running.esl_state_changed("disconnected")
        session.restore()
        await running.esl_reconnected()  # nothing to ask yet: the originate was never out
        await settle()
        assert len(bgapis(session)) == 1
        assert not [line for line in session.sent if "uuid_dump" in line]
        assert run.outcome is None and run.originate_out


async def test_an_originate_never_sent_ends_failed_saying_so() -> None:
    session = LinkSession()
    async with link_engine(session, reconnect_wait=0.2) as running:
        run = await running.invite(InviteSpec(extension="1000", room="test1", timeout=30))
        session.drop()
        final = await asyncio.wait_for(asyncio.shield(run.final_update()), 2)
        assert final["outcome"] == "failed" and "NOT_SENT" in final["cause"]
        assert bgapis(session) == []


async def test_an_originate_lost_in_the_write_is_never_sent_twice_and_is_followed() -> None:
    session = LinkSession()
    session.lose_next_bgapi = True
    async with link_engine(session) as running:
        run = await running.invite(InviteSpec(extension="1000", room="test1", timeout=30))
        await asyncio.sleep(0.05)
        running.esl_state_changed("disconnected")
        session.restore()
        await running.esl_reconnected()
        await settle()
        assert len(bgapis(session)) == 1  # never sent twice
        assert f"api uuid_dump {run.call_uuid} json" in session.sent
        assert run.machine.state == "ringing" and run.outcome is None


async def test_an_originate_lost_in_the_write_without_a_channel_yet_stays_placed() -> None:
    """FreeSWITCH may not have run the originate yet (its bgapi queue): "no such channel" is
    not an outcome; its BACKGROUND_JOB, its events or the safety net decide."""
    session = LinkSession()
    session.lose_next_bgapi = True
    session.dump_reply = "-ERR No such channel!\n"
    async with link_engine(session) as running:
        run = await running.invite(InviteSpec(extension="1000", room="test1", timeout=30))
        await asyncio.sleep(0.05)
        running.esl_state_changed("disconnected")
        session.restore()
        await running.esl_reconnected()
        await settle()
        assert f"api uuid_dump {run.call_uuid} json" in session.sent
        assert run.outcome is None and run.machine.state == "placing"
        session.queue.put_nowait(Event(Event_Name="BACKGROUND_JOB", Job_UUID=run.job_uuid))
        await settle()
        assert run.outcome is not None


async def test_a_wake_up_the_loop_runs_early_still_reaches_the_machine_at_its_time() -> None:
    """asyncio runs a timer up to its clock resolution early (uvloop's time() is ms-coarse):
    the machine's bounds (`now >= when`) must still be met, or they are never asked again."""
    session = LinkSession()
    async with link_engine(session) as running:
        run = await running.invite(InviteSpec(extension="1000", room="test1", timeout=30))
        seen: list[float] = []
        real_tick = Invite.tick

        def tick(machine: Invite, now: float) -> list[Any]:
            seen.append(now)
            return real_tick(machine, now)

        due = asyncio.get_running_loop().time() + 0.05  # the loop runs it before its time
        with mock.patch.object(Invite, "tick", tick):  # a machine has no instance dict
            running._tick(run, due)
        assert seen == [due] and asyncio.get_running_loop().time() < due


async def test_an_originate_never_spins_while_the_session_still_says_connected() -> None:
    """The connection died, the session has not noticed yet (connected is still True) and says
    EslNotConnected: the worker must yield to the loop, not retry in a tight loop (the chaos
    soak's daemon froze in exactly that loop)."""
    session = LinkSession()
    refusals = 0
    back_at = time.monotonic() + 0.2  # the supervisor would notice and reconnect by then

    async def not_yet(command: str, job_uuid: str) -> None:
        nonlocal refusals
        if time.monotonic() < back_at:
            refusals += 1
            raise EslNotConnected("ESL 127.0.0.1:8021: not connected (reconnecting)")
        session.sent.append(f"bgapi {command}")

    session.bgapi_start = not_yet  # type: ignore[method-assign]
    async with link_engine(session) as running:
        ticks = 0

        async def loop_runs() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        watcher = asyncio.ensure_future(loop_runs())
        await running.invite(InviteSpec(extension="1000", room="test1", timeout=30))
        await asyncio.sleep(0.3)
        watcher.cancel()
        assert len(bgapis(session)) == 1
        assert 1 <= refusals <= 10  # tried again a few times, not thousands
        assert ticks > 10  # the loop kept running while the originate waited


async def test_a_tapped_event_from_a_watched_members_channel_reaches_the_tap(engine) -> None:  # type: ignore[no-untyped-def]
    """The `event` app run by a member in the room (a moderator's key) fires confguard::invite
    with that member's Unique-ID: the tap takes it, not the member's watch."""
    running, session = engine
    tapped: list[Any] = []
    routed: list[Any] = []
    member_uuid = "22222222-0000-4000-8000-000000000000"
    running.add_event_tap("confguard::invite", tapped.append)

    class Watched:
        invite_run = None

    running.members.get = lambda uuid: Watched() if uuid == member_uuid else None  # type: ignore[method-assign]
    running.members.route = routed.append  # type: ignore[method-assign]
    session.queue.put_nowait(
        Event(Event_Name="CUSTOM", Event_Subclass="confguard::invite", Unique_ID=member_uuid)
    )
    session.queue.put_nowait(Event(Event_Name="CHANNEL_HANGUP", Unique_ID=member_uuid))
    await settle()
    assert [e.subclass for e in tapped] == ["confguard::invite"]
    assert [h["Event-Name"] for h in routed] == ["CHANNEL_HANGUP"]


class GatedDeleteSession(RecordingSession):
    """Holds `filter delete` until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def del_filter(self, header: str, value: str) -> None:
        await self.gate.wait()
        await super().del_filter(header, value)


async def test_a_waiting_invite_holds_no_worker_and_is_forgotten_after_its_last_command() -> None:
    """Thousands of callees wait at once: while nothing is to be sent an invite holds no task
    and no queue; once its machine has ended it stays known until its last command (the
    filter delete) is written, then it is forgotten."""
    session = GatedDeleteSession()
    running = Engine()
    running.attach(session)
    await running.start()
    try:
        run = await running.invite(InviteSpec(extension="1000", room="test1", timeout=30))
        await settle()
        assert any(line.startswith("bgapi originate ") for line in session.sent)
        for name in ("CHANNEL_CREATE", "CHANNEL_ANSWER"):
            session.queue.put_nowait(Event(Event_Name=name, Unique_ID=run.call_uuid))
        await settle()
        assert run.machine.state == "waiting_key"
        assert run.worker is None and run.pending is None and run.listeners == ()
        assert [row["invite_id"] for row in running.active()] == [run.invite_id]
        assert running.active_count() == 1

        session.queue.put_nowait(Event(Event_Name="CHANNEL_HANGUP_COMPLETE",
                                       Unique_ID=run.call_uuid, Hangup_Cause="NORMAL_CLEARING"))
        await settle()
        assert run.outcome is not None and run.worker is not None  # the delete is held
        assert [row["invite_id"] for row in running.active()] == [run.invite_id]
        session.gate.set()
        await settle()
        assert session.sent[-1] == f"filter delete Unique-ID {run.call_uuid}"
        assert run.worker is None and running.active() == [] and running.active_count() == 0
    finally:
        await running.stop()
