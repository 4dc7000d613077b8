"""Tests of the simulator's Event Socket server (confguard.sim.server) against a stub switch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from urllib.parse import unquote

import pytest

from confguard.sim import Simulator, wire
from confguard.sim.cli import main as cli_main
from confguard.sim.config import SimConfig
from confguard.sim.events import SimEvent

REPO = Path(__file__).resolve().parent.parent
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
GOODBYE = wire.encode_disconnect_notice(wire.GOODBYE_TEXT)


class StubSwitch:
    """Just enough switch: scripted api answers, BACKGROUND_JOB, restart/shutdown records."""

    def __init__(
        self, config: SimConfig, clock: object, publish: Callable[[SimEvent], None]
    ) -> None:
        self.publish = publish
        self.api_calls: list[str] = []
        self.jobs: list[tuple[str, str]] = []
        self.api_gate: asyncio.Event | None = None
        self.restarted = 0
        self.shutdowns = 0

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def api(self, command: str) -> str:
        self.api_calls.append(command)
        if self.api_gate is not None:
            await self.api_gate.wait()
        if command == "silent":
            return ""
        return f"+OK {command}\n"

    def background_job(self, job_uuid: str, command: str) -> None:
        self.jobs.append((job_uuid, command))
        self.publish(
            SimEvent(
                "BACKGROUND_JOB",
                [("Event-Name", "BACKGROUND_JOB"), ("Job-UUID", job_uuid)],
                body=f"+OK {command}\n",
            )
        )

    def send_event(
        self, command_line: str, headers: Sequence[tuple[str, str]], body: str | None
    ) -> str:
        name = command_line.partition(" ")[2].strip() or "CUSTOM"
        subclass = next((v for k, v in headers if k.lower() == "event-subclass"), None)
        self.publish(SimEvent(name, [("Event-Name", name), *headers], body, subclass))
        return "+OK 00000000-0000-0000-0000-000000000000"

    def restart(self) -> None:
        self.restarted += 1

    async def shutdown(self) -> None:
        self.shutdowns += 1
        self.publish(SimEvent("SHUTDOWN", [("Event-Name", "SHUTDOWN")]))


def event(name: str, *headers: tuple[str, str], subclass: str | None = None) -> SimEvent:
    all_headers = [("Event-Name", name)]
    if subclass:
        all_headers.append(("Event-Subclass", subclass))
    return SimEvent(name, [*all_headers, *headers], subclass=subclass)


class Client:
    """A minimal ESL client over a raw socket: send commands, read whole frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = wire.FrameParser()
        self.frames: list[wire.ServerFrame] = []

    @classmethod
    async def connect(cls, port: int, *, authed: bool = True) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        greeting = await client.frame()
        assert greeting.content_type == "auth/request"
        if authed:
            assert await client.command("auth ClueCon") == "+OK accepted"
        return client

    async def frame(self, timeout: float = 3.0) -> wire.ServerFrame:
        while not self.frames:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise EOFError("server closed the connection")
            self.frames.extend(self.parser.feed(data))
        return self.frames.pop(0)

    async def eof(self, timeout: float = 3.0) -> bool:
        """True once the server has closed (after any remaining frames were read)."""
        data = await asyncio.wait_for(self.reader.read(65536), timeout)
        return data == b""

    def send(self, line: str, headers: list[tuple[str, str]] | None = None) -> None:
        self.writer.write(wire.encode_command(line, headers or []))

    async def command(self, line: str, headers: list[tuple[str, str]] | None = None) -> str:
        self.send(line, headers)
        reply = await self.frame()
        assert reply.content_type == "command/reply", reply
        return reply.header("Reply-Text") or ""

    async def api(self, command: str) -> str:
        self.send(f"api {command}")
        reply = await self.frame()
        assert reply.content_type == "api/response"
        return reply.body.decode()

    async def event_names(self, count: int) -> list[str]:
        names = []
        for _ in range(count):
            frame = await self.frame()
            headers, _ = wire.parse_plain_event(frame.body)
            names.append(dict(headers)["Event-Name"])
        return names

    async def nothing_pending(self, wait: float = 0.2) -> bool:
        if self.frames:
            return False
        try:
            data = await asyncio.wait_for(self.reader.read(65536), wait)
        except TimeoutError:
            return True
        self.frames.extend(self.parser.feed(data))
        return False

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


@pytest.fixture
def config() -> SimConfig:
    return SimConfig(host="127.0.0.1", port=0, time_scale=0.01, auth_timeout=25.0)


@pytest.fixture
async def stub_sim(config: SimConfig) -> AsyncIterator[Simulator]:
    simulator = Simulator(config, switch_factory=StubSwitch)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


def stub(simulator: Simulator) -> StubSwitch:
    assert isinstance(simulator.switch, StubSwitch)
    return simulator.switch


# ----------------------------------------------------------------------------- auth


async def test_auth_then_exit_says_bye_and_goodbye(stub_sim: Simulator) -> None:
    client = await Client.connect(stub_sim.port)
    assert await client.command("exit") == "+OK bye"
    notice = await client.frame()
    assert notice.raw == GOODBYE
    assert await client.eof()


async def test_wrong_password_is_refused_and_closed(stub_sim: Simulator) -> None:
    client = await Client.connect(stub_sim.port, authed=False)
    assert await client.command("auth WrongPassword") == "-ERR invalid"
    assert (await client.frame()).raw == GOODBYE
    assert await client.eof()


async def test_commands_before_auth_are_not_found_and_the_connection_stays(
    stub_sim: Simulator,
) -> None:
    client = await Client.connect(stub_sim.port, authed=False)
    assert await client.command("api status") == "-ERR command not found"
    assert await client.command("event plain ALL") == "-ERR command not found"
    assert stub(stub_sim).api_calls == []
    assert await client.command("auth ClueCon") == "+OK accepted"
    assert await client.api("status") == "+OK status\n"
    await client.close()


async def test_no_auth_within_the_timeout_disconnects(config: SimConfig) -> None:
    config.auth_timeout = 0.2
    async with Simulator(config, switch_factory=StubSwitch) as simulator:
        client = await Client.connect(simulator.port, authed=False)
        assert (await client.frame()).content_type == "text/disconnect-notice"
        assert await client.eof()


async def test_peer_outside_the_acl_gets_a_rude_rejection(config: SimConfig) -> None:
    config.allow = ("192.0.2.0/24",)
    async with Simulator(config, switch_factory=StubSwitch) as simulator:
        reader, writer = await asyncio.open_connection("127.0.0.1", simulator.port)
        data = await asyncio.wait_for(reader.read(), 3.0)
        assert data == wire.encode_rude_rejection()
        writer.close()


async def test_exact_reply_strings_of_the_recorded_errors(stub_sim: Simulator) -> None:
    client = await Client.connect(stub_sim.port)
    assert await client.command("nosuchcommand foo") == "-ERR command not found"
    assert await client.command("event plain NOT_AN_EVENT") == "-ERR no keywords supplied"
    assert await client.command("event CHANNEL_ANSWER") == "+OK event listener enabled plain"
    assert await client.command("nixevent DTMF") == "+OK events nixed"
    assert await client.command("noevents") == "+OK no longer listening for events"
    assert await client.command("noevents") == "-ERR not listening for events"
    assert await client.command("filter Unique-ID abc") == "+OK filter added. [Unique-ID]=[abc]"
    assert (
        await client.command("filter delete Unique-ID abc")
        == "+OK filter deleted. [Unique-ID][abc]"
    )
    assert (
        await client.command("filter delete Unique-ID abc")
        == "+OK filter deleted. [Unique-ID][abc]"
    )
    assert await client.command("filter delete all") == "+OK filter deleted. [all][]"
    assert await client.command("event json ALL") == "+OK event listener enabled json"
    assert await client.command("event xml DTMF") == "+OK event listener enabled xml"
    await client.close()


# ----------------------------------------------------------------------------- api / bgapi


async def test_api_goes_to_the_switch_and_an_empty_result_is_no_reply(
    stub_sim: Simulator,
) -> None:
    client = await Client.connect(stub_sim.port)
    assert await client.api("uuid_exists x y") == "+OK uuid_exists x y\n"
    assert await client.api("silent") == "-ERR no reply\n"
    assert stub(stub_sim).api_calls == ["uuid_exists x y", "silent"]
    await client.close()


async def test_bgapi_honours_and_cuts_the_client_job_uuid(stub_sim: Simulator) -> None:
    client = await Client.connect(stub_sim.port)
    assert await client.command("event plain BACKGROUND_JOB") == "+OK event listener enabled plain"
    long_uuid = "6e2ebf06-a043-4547-96b8-e7804d8a839a-and-more"
    client.send("bgapi status", [("Job-UUID", long_uuid)])
    reply = await client.frame()
    cut = long_uuid[:36]
    assert reply.raw == wire.encode_command_reply(f"+OK Job-UUID: {cut}", [("Job-UUID", cut)])
    job = await client.frame()
    headers, body = wire.parse_plain_event(job.body)
    assert dict(headers)["Job-UUID"] == cut and body == b"+OK status\n"
    assert stub(stub_sim).jobs == [(cut, "status")]
    await client.close()


async def test_bgapi_without_job_uuid_generates_one(stub_sim: Simulator) -> None:
    client = await Client.connect(stub_sim.port)
    reply_text = await client.command("bgapi status")
    job_uuid = reply_text.removeprefix("+OK Job-UUID: ")
    assert UUID_RE.match(job_uuid)
    assert stub(stub_sim).jobs == [(job_uuid, "status")]
    await client.close()


async def test_events_wait_while_an_api_runs_and_follow_its_reply(stub_sim: Simulator) -> None:
    switch = stub(stub_sim)
    client = await Client.connect(stub_sim.port)
    await client.command("event plain HEARTBEAT")
    switch.api_gate = asyncio.Event()
    client.send("api slow")
    while "slow" not in switch.api_calls:
        await asyncio.sleep(0.01)
    switch.publish(event("HEARTBEAT"))
    assert await client.nothing_pending()
    switch.api_gate.set()
    assert (await client.frame()).content_type == "api/response"
    assert (await client.frame()).content_type == "text/event-plain"
    await client.close()


# ----------------------------------------------------------------------------- events, filters


async def test_subscription_custom_subclasses_and_formats(stub_sim: Simulator) -> None:
    switch = stub(stub_sim)
    client = await Client.connect(stub_sim.port)
    assert (
        await client.command("event plain DTMF CUSTOM conference::maintenance NOT_AN_EVENT")
        == "+OK event listener enabled plain"
    )
    switch.publish(event("CHANNEL_ANSWER"))
    switch.publish(event("CUSTOM", subclass="other::thing"))
    switch.publish(event("CUSTOM", subclass="conference::maintenance"))
    switch.publish(event("DTMF"))
    assert await client.event_names(2) == ["CUSTOM", "DTMF"]
    assert await client.nothing_pending()
    assert await client.command("event json HEARTBEAT") == "+OK event listener enabled json"
    switch.publish(event("HEARTBEAT", ("Up-Time", "0 years, 1 day")))
    frame = await client.frame()
    assert frame.content_type == "text/event-json"
    assert frame.body == b'{"Event-Name":"HEARTBEAT","Up-Time":"0 years, 1 day"}'
    await client.close()


async def test_all_then_nixevent_one(stub_sim: Simulator) -> None:
    switch = stub(stub_sim)
    client = await Client.connect(stub_sim.port)
    await client.command("event plain ALL")
    switch.publish(event("CUSTOM", subclass="any::thing"))
    assert await client.event_names(1) == ["CUSTOM"]
    assert await client.command("nixevent DTMF") == "+OK events nixed"
    switch.publish(event("DTMF"))
    switch.publish(event("CHANNEL_ANSWER"))
    assert await client.event_names(1) == ["CHANNEL_ANSWER"]
    await client.close()


async def test_filters_follow_freeswitch_rules(stub_sim: Simulator) -> None:
    switch = stub(stub_sim)
    client = await Client.connect(stub_sim.port)
    await client.command("event plain ALL")
    await client.command("filter Unique-ID aaa")
    await client.command("filter Job-UUID /^job-[0-9]+$/")
    await client.command("filter Event-Name -DTMF")

    def publish(name: str, *headers: tuple[str, str]) -> None:
        switch.publish(event(name, *headers, ("Tag", f"{name}:{len(headers)}")))

    publish("CHANNEL_ANSWER", ("Unique-ID", "AAA"))  # case-insensitive match: passes
    publish("CHANNEL_ANSWER", ("Unique-ID", "bbb"))  # no filter matches
    publish("CHANNEL_CREATE")  # lacks every filtered header but Event-Name: no positive match
    publish("BACKGROUND_JOB", ("Job-UUID", "job-42"))  # regex matches
    publish("BACKGROUND_JOB", ("Job-UUID", "job-x"))
    publish("DTMF", ("Unique-ID", "aaa"))  # the veto wins
    received = []
    for _ in range(2):
        frame = await client.frame()
        headers, _ = wire.parse_plain_event(frame.body)
        received.append(unquote(dict(headers)["Tag"]))
    assert received == ["CHANNEL_ANSWER:1", "BACKGROUND_JOB:1"]
    assert await client.nothing_pending()
    # deleting every filter lets everything subscribed through again
    await client.command("filter delete Unique-ID")
    await client.command("filter delete Job-UUID /^job-[0-9]+$/")
    assert await client.command("filter delete Event-Name -DTMF") == (
        "+OK filter deleted. [Event-Name][-DTMF]"
    )
    publish("CHANNEL_HANGUP", ("Unique-ID", "zzz"))
    assert await client.event_names(1) == ["CHANNEL_HANGUP"]
    await client.close()


async def test_events_go_only_to_subscribed_authenticated_connections(
    stub_sim: Simulator,
) -> None:
    switch = stub(stub_sim)
    watcher = await Client.connect(stub_sim.port)
    bare = await Client.connect(stub_sim.port)
    unauthed = await Client.connect(stub_sim.port, authed=False)
    await watcher.command("event plain DTMF")
    switch.publish(event("DTMF"))
    assert await watcher.event_names(1) == ["DTMF"]
    assert await bare.nothing_pending()
    assert await unauthed.nothing_pending()
    for client in (watcher, bare, unauthed):
        await client.close()


# ----------------------------------------------------------------------------- faults


async def test_drop_connections_closes_without_notice(stub_sim: Simulator) -> None:
    client = await Client.connect(stub_sim.port)
    stub_sim.faults.drop_connections()
    try:
        data = await asyncio.wait_for(client.reader.read(65536), 3.0)
    except ConnectionResetError:
        data = b""
    assert data == b""
    again = await Client.connect(stub_sim.port)  # still listening
    await again.close()


async def test_stall_holds_replies_until_it_ends(stub_sim: Simulator) -> None:
    client = await Client.connect(stub_sim.port)
    stub_sim.faults.stall(0.6)
    client.send("api status")
    assert await client.nothing_pending(0.2)
    reply = await client.frame()
    assert reply.body == b"+OK status\n"
    await client.close()


async def test_a_stall_holds_the_greeting_and_the_auth_timeout_counts_from_it(
    config: SimConfig,
) -> None:
    """A client that connects during a stall gets `auth/request` when the stall ends; the
    auth timeout starts then (it may be shorter than the stall)."""
    config.auth_timeout = 0.3
    async with Simulator(config, switch_factory=StubSwitch) as simulator:
        simulator.faults.stall(0.6)
        reader, writer = await asyncio.open_connection("127.0.0.1", simulator.port)
        client = Client(reader, writer)
        assert await client.nothing_pending(0.4)
        assert (await client.frame()).content_type == "auth/request"
        await asyncio.sleep(0.1)
        assert await client.command("auth ClueCon") == "+OK accepted"
        assert await client.nothing_pending(0.4)  # authenticated: no timeout
        await client.close()


async def test_malformed_and_invalid_utf8_frames(stub_sim: Simulator) -> None:
    client = await Client.connect(stub_sim.port)
    stub_sim.faults.send_invalid_utf8()
    frame = await client.frame()
    assert frame.content_type == "text/event-plain"
    _, body = wire.parse_plain_event(frame.body)
    assert body is not None
    with pytest.raises(UnicodeDecodeError):
        body.decode("utf-8")
    stub_sim.faults.send_malformed()
    with pytest.raises(wire.WireError):
        await client.frame()
    await client.close()


async def test_restart_drops_clients_and_restarts_the_switch(stub_sim: Simulator) -> None:
    client = await Client.connect(stub_sim.port)
    stub_sim.faults.restart()
    assert stub(stub_sim).restarted == 1
    with contextlib.suppress(ConnectionResetError):
        assert await client.eof()
    again = await Client.connect(stub_sim.port)
    assert await again.api("status") == "+OK status\n"
    await again.close()


async def test_fsctl_shutdown_sequence(stub_sim: Simulator) -> None:
    watcher = await Client.connect(stub_sim.port)
    await watcher.command("event plain SHUTDOWN")
    admin = await Client.connect(stub_sim.port)
    unauthed = await Client.connect(stub_sim.port, authed=False)
    assert await admin.api("fsctl shutdown") == "+OK\n"
    assert await watcher.event_names(1) == ["SHUTDOWN"]
    shut = wire.encode_disconnect_notice(wire.SHUTDOWN_TEXT)
    for client in (watcher, admin, unauthed):
        assert (await client.frame()).raw == shut
        assert await client.eof()
    assert stub(stub_sim).shutdowns == 1
    await stub_sim.wait_shut_down()
    assert not stub_sim.server.listening


# ----------------------------------------------------------------------------- the connection


async def test_pipelined_commands_in_one_segment_are_answered_in_order(
    stub_sim: Simulator,
) -> None:
    """Commands that arrive in one TCP segment are answered one after another, each reply
    after the events queued before it, the BACKGROUND_JOB after the bgapi's reply."""
    client = await Client.connect(stub_sim.port, authed=False)
    client.writer.write(
        b"auth ClueCon\n\nevent plain BACKGROUND_JOB\n\nfilter Job-UUID job-1\n\n"
        b"bgapi status\nJob-UUID: job-1\n\napi one\n\nnosuchcommand\n\napi two\n\n"
    )
    replies = [await client.frame() for _ in range(8)]
    assert [frame.content_type for frame in replies] == [
        "command/reply", "command/reply", "command/reply", "command/reply",
        "text/event-plain", "api/response", "command/reply", "api/response",
    ]  # fmt: skip
    assert [frame.header("Reply-Text") for frame in replies[:4]] == [
        "+OK accepted",
        "+OK event listener enabled plain",
        "+OK filter added. [Job-UUID]=[job-1]",
        "+OK Job-UUID: job-1",
    ]
    assert [replies[5].body, replies[6].header("Reply-Text"), replies[7].body] == [
        b"+OK one\n", "-ERR command not found", b"+OK two\n"
    ]
    assert stub(stub_sim).api_calls == ["one", "two"]
    await client.close()


async def test_a_command_split_across_segments(stub_sim: Simulator) -> None:
    """A command block (line, headers, the blank line, a Content-Length body) may arrive a
    few bytes at a time, and a segment may end one command and start the next."""
    client = await Client.connect(stub_sim.port)
    await client.command("event plain CUSTOM split::test")
    raw = wire.encode_command(
        "sendevent CUSTOM", [("Event-Subclass", "split::test")], b"body\n\nwith a blank line"
    ) + wire.encode_command("api status")
    for start in range(0, len(raw), 7):
        client.writer.write(raw[start : start + 7])
        await client.writer.drain()
        await asyncio.sleep(0.005)
    reply = await client.frame()
    assert reply.content_type == "command/reply"
    assert (reply.header("Reply-Text") or "").startswith("+OK ")
    frames = [await client.frame() for _ in range(2)]
    assert [frame.content_type for frame in frames] == ["text/event-plain", "api/response"]
    headers, body = wire.parse_plain_event(frames[0].body)
    assert dict(headers)["Event-Subclass"] == "split%3A%3Atest"
    assert body == b"body\n\nwith a blank line"
    assert frames[1].body == b"+OK status\n"
    await client.close()


async def test_commands_after_a_waiting_api_wait_for_it(stub_sim: Simulator) -> None:
    """While an api command waits, the commands after it are not run (the bgapi's job does
    not start) and nothing is written; then the api's response, the later replies, in order."""
    switch = stub(stub_sim)
    client = await Client.connect(stub_sim.port)
    await client.command("event plain BACKGROUND_JOB")
    switch.api_gate = asyncio.Event()
    client.writer.write(b"api slow\n\nfilter Job-UUID j-1\n\nbgapi status\nJob-UUID: j-1\n\n")
    while "slow" not in switch.api_calls:
        await asyncio.sleep(0.01)
    assert await client.nothing_pending()
    assert switch.jobs == []
    switch.api_gate.set()
    frames = [await client.frame() for _ in range(4)]
    assert [frame.content_type for frame in frames] == [
        "api/response", "command/reply", "command/reply", "text/event-plain"
    ]
    assert frames[0].body == b"+OK slow\n"
    assert frames[2].header("Reply-Text") == "+OK Job-UUID: j-1"
    assert switch.jobs == [("j-1", "status")]
    await client.close()


async def test_stop_cancels_an_api_that_waits(config: SimConfig) -> None:
    simulator = Simulator(config, switch_factory=StubSwitch)
    await simulator.start()
    switch = stub(simulator)
    switch.api_gate = asyncio.Event()
    client = await Client.connect(simulator.port)
    client.send("api slow")
    while "slow" not in switch.api_calls:
        await asyncio.sleep(0.01)
    await asyncio.wait_for(simulator.stop(), 3.0)  # the waiting api does not hold stop up
    with contextlib.suppress(ConnectionResetError):
        assert await client.eof()


async def test_commands_sent_before_the_client_closes_are_answered(stub_sim: Simulator) -> None:
    """The client writes its commands and shuts its side down: every one is answered (the
    api that waits included), then the server closes."""
    switch = stub(stub_sim)
    switch.api_gate = asyncio.Event()
    client = await Client.connect(stub_sim.port)
    client.writer.write(b"api slow\n\nfilter Unique-ID x\n\n")
    client.writer.write_eof()
    while "slow" not in switch.api_calls:
        await asyncio.sleep(0.01)
    switch.api_gate.set()
    assert (await client.frame()).body == b"+OK slow\n"
    assert (await client.frame()).header("Reply-Text") == "+OK filter added. [Unique-ID]=[x]"
    assert await client.eof()


def big_event(index: int) -> SimEvent:
    """A CUSTOM bulk::data event with a 32 KiB body (a few fill a socket's buffers)."""
    headers = [("Event-Name", "CUSTOM"), ("Event-Subclass", "bulk::data"), ("Index", str(index))]
    return SimEvent("CUSTOM", headers, body="x" * 32768, subclass="bulk::data")


async def test_a_client_that_does_not_read_holds_its_commands_and_events(
    stub_sim: Simulator,
) -> None:
    """Once the client stops reading and the socket's buffers are full, events queue in the
    server and the client's next command waits (it is not even run): when the client reads
    again, it gets every event in order (those queued before the command's turn came, as
    ever), then the reply, then what came after."""
    switch = stub(stub_sim)
    client = await Client.connect(stub_sim.port)
    await client.command("event plain CUSTOM bulk::data")
    (connection,) = stub_sim.server.connections
    published = 0
    while not connection.events:  # the transport's buffer is full: the server holds events
        switch.publish(big_event(published))
        published += 1
        await asyncio.sleep(0)
        assert published < 10_000
    for _ in range(3):
        switch.publish(big_event(published))
        published += 1
    client.send("api status")
    await asyncio.sleep(0.1)
    assert switch.api_calls == []
    switch.publish(big_event(published))  # queued when the command's turn comes: before it
    published += 1
    indexes = []
    while True:
        frame = await client.frame()
        if frame.content_type == "api/response":
            break
        headers, _ = wire.parse_plain_event(frame.body)
        indexes.append(int(dict(headers)["Index"]))
    assert indexes == list(range(published))
    assert frame.body == b"+OK status\n"
    assert switch.api_calls == ["status"]
    switch.publish(big_event(published))
    headers, _ = wire.parse_plain_event((await client.frame()).body)
    assert dict(headers)["Index"] == str(published)
    await client.close()


async def test_lost_events_kill_a_client_that_does_not_read(
    stub_sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With its event queue full, a connection drops what it cannot queue; the
    MAX_LOST_EVENTS-th drop in a row is forgiven, the next one kills the listener."""
    from confguard.sim import server as server_module

    monkeypatch.setattr(server_module, "MAX_QUEUED_EVENTS", 20)
    monkeypatch.setattr(server_module, "MAX_LOST_EVENTS", 5)
    switch = stub(stub_sim)
    client = await Client.connect(stub_sim.port)
    await client.command("event plain CUSTOM bulk::data")
    (connection,) = stub_sim.server.connections
    published = 0
    while not connection.events:
        switch.publish(big_event(published))
        published += 1
        await asyncio.sleep(0)
        assert published < 10_000
    while len(connection.events) < 20:
        switch.publish(big_event(published))
        published += 1
    for _ in range(5):
        switch.publish(big_event(published))
    assert not connection.closed and connection.lost_events == 5
    switch.publish(big_event(published))
    assert connection.closed and stub_sim.server.connections == set()
    with contextlib.suppress(ConnectionResetError):
        while not await client.eof():
            pass


async def test_an_api_run_outside_a_task_continues_in_one_as_awaited() -> None:
    """`_Resumed` (the rest of a coroutine whose first step ran outside a task): the same
    result, exception and cancellation as awaiting the coroutine in a task."""
    from confguard.sim.server import _finish, _Resumed

    loop = asyncio.get_running_loop()

    async def steps(gate: asyncio.Future[str], fail: bool) -> str:
        await asyncio.sleep(0)  # a bare yield
        got = await gate  # a future
        await asyncio.sleep(0.01)
        if fail:
            raise ValueError(got)
        return got + "!"

    async def in_task(gate: asyncio.Future[str], fail: bool) -> asyncio.Task[str]:
        coroutine = steps(gate, fail)
        waiting_on = coroutine.send(None)
        return loop.create_task(_finish(_Resumed(coroutine, waiting_on)))

    gate = loop.create_future()
    task = await in_task(gate, False)
    loop.call_later(0.01, gate.set_result, "done")
    assert await task == "done!"
    gate = loop.create_future()
    task = await in_task(gate, True)
    loop.call_later(0.01, gate.set_result, "bad")
    with pytest.raises(ValueError, match="bad"):
        await task
    gate = loop.create_future()
    task = await in_task(gate, False)
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gate.cancelled()  # the cancellation reached the future the coroutine awaited


# ----------------------------------------------------------------------------- cli


def test_cli_refuses_a_non_loopback_host(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["--host", "0.0.0.0", "--port", "0"]) == 2
    assert "not a loopback address" in capsys.readouterr().err


def test_cli_refuses_an_empty_password_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "password"
    empty.write_text("\n")
    assert cli_main(["--port", "0", "--password-file", str(empty)]) == 2
    assert "is empty" in capsys.readouterr().err


def test_cli_serves_until_sigterm(tmp_path: Path) -> None:
    pytest.importorskip("confguard.sim.switch", reason="needs the real switch (sim-switch)")
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "confguard.sim",
            "--port",
            "0",
            "--password-file",
            str(password),
            "--time-scale",
            "0.1",
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert match, line

        async def talk(port: int) -> None:
            client = await Client.connect(port, authed=False)
            assert await client.command("auth s3cret") == "+OK accepted"
            await client.close()

        asyncio.run(talk(int(match.group(1))))
        process.terminate()
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_indexed_filters_decide_as_the_filter_list() -> None:
    """`EventFilters` (indexed by header and value) against `filter_allows` over the plain
    list the server used to keep: random adds and deletes (by name and value, by name, all) of
    exact, negative, sign-prefixed and regex filters in mixed case, random events with repeated
    and missing headers -- the same decision every time."""
    import random

    from confguard.sim.server import EventFilters, filter_allows

    names = ["Unique-ID", "unique-id", "Job-UUID", "Task-Group", "Event-Name", "X-Other"]
    values = ["aaa", "AAA", "bbb", "job-1", "job-x", "DTMF", "dtmf", "HEARTBEAT", ""]
    raw_values = [*values, "-DTMF", "-aaa", "+bbb", " -+aaa", "/^job-[0-9]+$/", "/^A/i", "/(/"]
    for seed in range(40):
        ops = random.Random(seed)
        indexed = EventFilters()
        reference: list[tuple[str, str]] = []
        decisions = set()
        for _ in range(300):
            roll = ops.random()
            if roll < 0.35:
                name, value = ops.choice(names), ops.choice(raw_values)
                indexed.add(name, value)
                reference.append((name, value))
            elif roll < 0.45 and reference:
                name, value = ops.choice(reference)
                name = ops.choice([name, name.upper()])
                only = None if ops.random() < 0.3 else value
                indexed.delete(name, only)
                reference = [
                    (key, existing)
                    for key, existing in reference
                    if not (key.lower() == name.lower() and (only is None or existing == only))
                ]
            elif roll < 0.47:
                indexed.clear()
                reference.clear()
            else:
                headers = [
                    (ops.choice(names), ops.choice(values)) for _ in range(ops.randrange(0, 6))
                ]
                event = SimEvent("CUSTOM", headers)
                decision = indexed.allows(event)
                assert decision == filter_allows(reference, headers), (seed, reference, headers)
                decisions.add(decision)
            assert len(indexed) == len(reference)
            assert sorted(indexed.items()) == sorted((k.lower(), v) for k, v in reference)
        assert decisions == {True, False}


def test_events_no_client_takes_are_stand_ins_that_keep_their_sequence_number() -> None:
    """With `wants` saying no, a channel or conference event is a stand-in (never offered, its
    headers never built) that still takes its Event-Sequence number; CHANNEL_DATA (what
    `uuid_dump` prints) is always built; with `wants` saying yes the event is whole."""
    from confguard.sim.clock import SimClock
    from confguard.sim.events import ChannelFacts, ConferenceFacts, EventFactory

    wanted = {"CHANNEL_ANSWER"}
    factory = EventFactory(
        SimClock(1.0), core_uuid="core", hostname="h", wants=lambda name, sub: name in wanted
    )
    facts = ChannelFacts(uuid="u-1", name="loopback/x-a", created=1.0)
    execute = factory.channel_execute(facts, "park", None, "app-1")
    room = factory.conference("add-member", ConferenceFacts("r", "c-1", "d"))
    assert execute.unsent and room.unsent and execute.get("Unique-ID") is None
    dump = factory.channel_event("CHANNEL_DATA", facts)
    answer = factory.channel_answer(facts)
    assert not dump.unsent and dump.get("Unique-ID") == "u-1"
    assert not answer.unsent and answer.get("Unique-ID") == "u-1"
    assert [dump.get("Event-Sequence"), answer.get("Event-Sequence")] == ["3", "4"]
    wanted.add("CUSTOM")
    assert factory.conference("add-member", ConferenceFacts("r", "c-1", "d")).get(
        "Event-Sequence"
    ) == "5"


async def test_server_wants_follows_the_subscriptions(stub_sim: Simulator) -> None:
    """`EslServer.wants` is true once some authenticated client subscribes to the type (or
    subclass, or ALL), false again after `nixevent` / `noevents` or when the client goes. Its
    answers are kept between changes: each question is asked again after every change."""
    server = stub_sim.server
    assert not server.wants("CHANNEL_EXECUTE")
    client = await Client.connect(stub_sim.port)
    await client.command("event plain CHANNEL_ANSWER CUSTOM conference::maintenance")
    assert server.wants("CHANNEL_ANSWER") and not server.wants("CHANNEL_EXECUTE")
    assert server.wants("CUSTOM", "conference::maintenance")
    assert not server.wants("CUSTOM", "other::thing")
    await client.command("event plain ALL")
    assert server.wants("CHANNEL_EXECUTE")
    await client.command("nixevent CHANNEL_EXECUTE")
    assert not server.wants("CHANNEL_EXECUTE") and server.wants("CHANNEL_ANSWER")
    await client.command("noevents")
    assert not server.wants("CHANNEL_ANSWER")
    assert not server.wants("CUSTOM", "conference::maintenance")
    await client.command("event json CHANNEL_ANSWER")
    assert server.wants("CHANNEL_ANSWER")
    other = await Client.connect(stub_sim.port)  # a second client, not subscribed
    assert server.wants("CHANNEL_ANSWER")
    assert await client.command("exit") == "+OK bye"
    while not await client.eof():  # the goodbye notice, then the server's close
        pass
    assert not server.wants("CHANNEL_ANSWER")
    await other.close()


async def test_publish_follows_the_subscriptions(stub_sim: Simulator) -> None:
    """`publish` keeps the connections that listen between changes: an event published after
    each change (auth, event, noevents, nixevent, a client gone) reaches exactly the clients
    subscribed at that moment."""
    switch = stub(stub_sim)
    first = await Client.connect(stub_sim.port)
    await first.command("event plain DTMF")
    second = await Client.connect(stub_sim.port, authed=False)

    async def published_to(*clients: Client) -> list[bool]:
        switch.publish(event("DTMF"))
        got = []
        for client in clients:
            if await client.nothing_pending(0.1):
                got.append(False)
            else:
                assert await client.event_names(1) == ["DTMF"]
                got.append(True)
        return got

    assert await published_to(first, second) == [True, False]
    assert await second.command("auth ClueCon") == "+OK accepted"
    assert await published_to(first, second) == [True, False]
    await second.command("event plain ALL")
    assert await published_to(first, second) == [True, True]
    await first.command("noevents")
    assert await published_to(first, second) == [False, True]
    await first.command("event plain DTMF")
    assert await published_to(first, second) == [True, True]
    await second.command("nixevent ALL")
    assert await published_to(first, second) == [True, False]
    await second.command("event plain DTMF")
    assert await second.command("exit") == "+OK bye"
    assert (await second.frame()).raw == GOODBYE
    assert await published_to(first) == [True]
    await first.close()


def test_event_header_lookup_ignores_case_and_takes_the_first_value() -> None:
    from confguard.sim.events import SimEvent

    event = SimEvent("CUSTOM", [("Event-Name", "CUSTOM"), ("Unique-ID", "u-1"),
                                ("unique-id", "u-2"), ("X-Empty", ""), ("Tail", "t")])
    assert event.first_value("unique-id") == "u-1"
    assert event.first_value("event-name") == "CUSTOM"
    assert event.first_value("x-empty") == ""
    assert event.first_value("tail") == "t"
    assert event.first_value("unique") is None and event.first_value("id") is None
    assert SimEvent("X", []).first_value("event-name") is None
    odd = SimEvent("X", [("Bad\nName", "v"), ("Good", "g")])  # not on the wire; still answered
    assert odd.first_value("good") == "g" and odd.first_value("bad") is None


def test_event_header_lookup_is_the_first_match_before_and_past_the_head() -> None:
    """`first_value` looks among the first HEAD_NAMES names (lower-cased lists kept by the
    names), then in all of them: whichever way it finds a header, the answer is the
    reference's (the first value, case ignored), also for heads seen before and once the table
    of heads has started over."""
    import random

    from confguard.sim import events
    from confguard.sim.events import HEAD_NAMES, SimEvent
    from confguard.sim.server import first_header

    ops = random.Random(7)
    names = ["Event-Name", "unique-id", "Unique-ID", "UNIQUE-ID", "Task-Group", "Job-UUID", "x"]
    for _ in range(events._LOWERED_HEADS_KEPT + 500):  # the table of heads starts over too
        count = ops.randrange(0, 2 * HEAD_NAMES + 4)
        pool = names if ops.random() < 0.5 else names[:2]  # few names: heads seen before
        headers = [(ops.choice(pool), str(index)) for index in range(count)]
        event = SimEvent("X", headers)
        for wanted in ("event-name", "unique-id", "task-group", "job-uuid", "x", "absent"):
            assert event.first_value(wanted) == first_header(headers, wanted), (headers, wanted)


def test_the_simulator_serves_on_uvloop(config: SimConfig) -> None:
    """`make bench` runs the simulator on uvloop (bench/sim_peer.py), whose transports are not
    asyncio.Transport subclasses and whose loop has no `_timer_handle_cancelled`: a call with a
    FreeSWITCH timer that hangs it up, and an ACL refusal, work there as on asyncio's loop."""
    uvloop = pytest.importorskip("uvloop")

    async def call_and_refusal() -> tuple[str, str, str, bytes]:
        async with Simulator(config) as simulator:
            client = await Client.connect(simulator.port)
            placed = await client.api("originate user/1001 &park()")
            call_uuid = placed.removeprefix("+OK ").strip()
            armed = await client.api(f"sched_hangup +1 {call_uuid}")
            for _ in range(100):  # the timer runs 1 simulated second later
                if (await client.api(f"uuid_exists {call_uuid}")).strip() == "false":
                    break
                await asyncio.sleep(0.02)
            gone = await client.api(f"uuid_exists {call_uuid}")
            await client.close()
        config.allow = ("192.0.2.0/24",)
        async with Simulator(config) as simulator:
            reader, writer = await asyncio.open_connection("127.0.0.1", simulator.port)
            refusal = await asyncio.wait_for(reader.read(), 3.0)
            writer.close()
        return placed, armed, gone, refusal

    placed, armed, gone, refusal = uvloop.run(call_and_refusal())
    assert placed.startswith("+OK ") and armed.strip() == "+OK"
    assert gone.strip() == "false"
    assert refusal == wire.encode_rude_rejection()


# ----------------------------------------------------------------------------- publish: stand-ins


def stand_in(name: str) -> SimEvent:
    return SimEvent(name, [("Event-Name", name)], unsent=True)


async def test_a_stand_in_is_never_written_and_one_a_client_takes_is_logged(
    stub_sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A stand-in (`unsent`: `EslServer.wants` said no client takes it) reaches no client; if a
    client does take its type after all, the server says so in its log and still writes
    nothing."""
    client = await Client.connect(stub_sim.port)
    host, port = client.writer.get_extra_info("sockname")[:2]  # the server's peer
    await client.command("event plain CHANNEL_ANSWER")
    with caplog.at_level(logging.ERROR, logger="confguard.sim.server"):
        stub_sim.server.publish(stand_in("CHANNEL_EXECUTE"))
        assert not caplog.records
        stub_sim.server.publish(stand_in("CHANNEL_ANSWER"))
        assert [record.getMessage() for record in caplog.records] == [
            f"event CHANNEL_ANSWER was not built but {host}:{port} takes it"
        ]
    stub_sim.server.publish(SimEvent("CHANNEL_ANSWER", [("Event-Name", "CHANNEL_ANSWER")]))
    assert await client.event_names(1) == ["CHANNEL_ANSWER"]
    assert await client.nothing_pending()
    await client.close()
