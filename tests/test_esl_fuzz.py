"""Hostile ESL peers: the session against a fake FreeSWITCH on 127.0.0.1 that, once the set-up
(auth, event, the permanent filters) is done, sends malformed, truncated, oversized or random
bytes on its first connection, and behaves on every later one.

Whatever comes, the session must mark that connection lost (a protocol error, EOF or a dead
reader: never a hang, a crash or a connection that silently stops answering), reconnect, and
answer `api` on the new connection. A valid frame split at any byte must still parse. A peer that
streams 100 MB without a blank line must be dropped with bounded memory (tracemalloc).
Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from confguard.esl import (
    MAX_BODY_BYTES,
    MAX_HEADER_BLOCK_BYTES,
    PERMANENT_FILTERS,
    EslCommandError,
    EslConnectionLost,
    EslEvent,
    EslSession,
    EslSettings,
    EslTimeoutError,
)

PASSWORD = "Fuzz-Peer-Pw-31c7"
Payload = bytes | Callable[[asyncio.StreamWriter], Awaitable[None]]


def api_response(body: bytes) -> bytes:
    return b"Content-Type: api/response\nContent-Length: %d\n\n" % len(body) + body


def reply(text: str) -> bytes:
    return f"Content-Type: command/reply\nReply-Text: {text}\n\n".encode()


def custom_event(seq: int) -> bytes:
    inner = f"Event-Name: CUSTOM\nEvent-Subclass: fuzz%3A%3Aseq\nSeq: {seq}\n\n".encode()
    return b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(inner) + inner


@dataclass
class HostilePeer:
    """A fake FreeSWITCH: honest handshake on every connection; on the first, after the second
    `filter` reply, it sends `payload` (bytes, or a coroutine writing to the socket), then goes on
    answering (`api X` -> `+OK X`) until the client hangs up. `close_after` closes right after."""

    payload: Payload | None = None
    close_after: bool = False
    answer: Callable[[str, asyncio.StreamWriter], Awaitable[None]] | None = None
    port: int = 0
    connections: int = 0
    sent_at: float | None = None
    bytes_sent: int = 0
    server: asyncio.Server | None = None
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.connections
        self.connections += 1
        self.writers.append(writer)
        filters = 0
        try:
            writer.write(b"Content-Type: auth/request\n\n")
            while True:
                command = (await reader.readuntil(b"\n\n")).decode().split("\n", 1)[0]
                if command.startswith("auth "):
                    writer.write(reply("+OK accepted" if command == f"auth {PASSWORD}"
                                       else "-ERR invalid"))
                elif command.startswith(("event ", "filter ")):
                    writer.write(reply("+OK"))
                    filters += command.startswith("filter ")
                    set_up = filters == len(PERMANENT_FILTERS) and index == 0
                    if set_up and self.payload is not None:
                        await writer.drain()
                        await self._send_payload(writer)
                        if self.close_after:
                            writer.close()
                            return
                elif command.startswith("api ") and self.answer is not None:
                    await self.answer(command[4:], writer)
                elif command.startswith("api "):
                    writer.write(api_response(f"+OK {command[4:]}\n".encode()))
                else:
                    writer.write(reply("-ERR command not found"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()

    async def _send_payload(self, writer: asyncio.StreamWriter) -> None:
        self.sent_at = time.monotonic()
        if callable(self.payload):
            await self.payload(writer)
        else:
            assert self.payload is not None
            writer.write(self.payload)
            self.bytes_sent += len(self.payload)
            await writer.drain()


def fuzz_settings(port: int, **overrides: float) -> EslSettings:
    values: dict[str, float] = {
        "connect_timeout": 2.0, "auth_timeout": 2.0, "command_timeout": 1.0,
        "heartbeat_interval": 30.0,  # liveness by silence stays out of the way unless asked
        "reconnect_initial": 0.05, "reconnect_max": 0.2,
    }
    values.update(overrides)
    return EslSettings(host="127.0.0.1", port=port, password=PASSWORD, **values)  # type: ignore[arg-type]


async def _until(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.01)


@dataclass
class Outcome:
    reason: str | None
    detect_s: float | None
    reconnects: int


async def survive(peer: HostilePeer, *, within: float = 6.0, **overrides: float) -> Outcome:
    """Connect through `peer`, let it misbehave, and require a working session afterwards:
    the first connection dropped and a new one answering `api`. Bounded by `within`."""
    await peer.start()
    lost_at: list[float] = []

    def on_state(state: str) -> None:
        if state == "disconnected":
            lost_at.append(time.monotonic())

    session = EslSession(fuzz_settings(peer.port, **overrides), on_state=on_state)
    try:
        await asyncio.wait_for(session.connect(), within)
        await _until(lambda: peer.sent_at is not None, within, "the peer sent its payload")
        await _until(lambda: session.reconnects >= 1 and session.connected, within,
                     "the session dropped the hostile connection and reconnected")
        assert await asyncio.wait_for(session.api("status"), within) == "+OK status\n"
        assert peer.sent_at is not None
        return Outcome(session.last_disconnect_reason,
                       lost_at[0] - peer.sent_at if lost_at else None, session.reconnects)
    finally:
        await asyncio.wait_for(session.close(), within)
        await peer.stop()


# ------------------------------------------------------------------------ malformed frames

HOSTILE_FRAMES: list[tuple[str, bytes, str]] = [
    ("header without colon", b"this line has no colon\n\n", "without Content-Type"),
    ("header block of bare names", b"Content-Type\nReply-Text\n\n", "without Content-Type"),
    ("unknown Content-Type", b"Content-Type: text/plain\nContent-Length: 2\n\nhi",
     "unknown Content-Type"),
    ("empty Content-Type then the next reply", b"Content-Type: ", "unknown Content-Type"),
    ("huge Content-Length", b"Content-Type: api/response\nContent-Length: 99999999999\n\n",
     "Content-Length"),
    ("just over the body limit",
     b"Content-Type: api/response\nContent-Length: %d\n\n" % (MAX_BODY_BYTES + 1),
     "Content-Length"),
    ("negative Content-Length", b"Content-Type: api/response\nContent-Length: -5\n\n",
     "Content-Length"),
    ("non-numeric Content-Length", b"Content-Type: api/response\nContent-Length: ten\n\n",
     "Content-Length"),
    ("Content-Length with underscore", b"Content-Type: api/response\nContent-Length: 1_0\n\n",
     "Content-Length"),
    ("Content-Length in Arabic digits",
     "Content-Type: api/response\nContent-Length: \u0665\n\n".encode(), "Content-Length"),
    ("Content-Length url-encoded name",
     b"Content-Type: api/response\nContent%2DLength: -1\n\n", "Content-Length"),
    ("Content-Length after a unicode line break",
     "Content-Type: api/response\nX-A: b\u2028Content-Length: -1\n\n".encode(),
     "Content-Length"),
    ("two Content-Length headers",
     b"Content-Type: api/response\nContent-Length: 3\nContent-Length: 4\n\n+OK", "reader"),
    ("invalid UTF-8 in headers", b"Content-Type: api/resp\xff\xfeonse\n\n", "UnicodeDecodeError"),
    ("invalid UTF-8 in a body", api_response(b"+OK \xc3\x28\xa0\xa1"), "UnicodeDecodeError"),
    ("reply to no command", api_response(b"+OK nobody asked\n"), "to no command"),
    ("command/reply to no command", reply("+OK"), "to no command"),
    ("one header line over the line limit", b"X-Junk: " + b"a" * 200_000 + b"\n\n", "reader"),
    ("stray bytes before the next reply", b"garbage-without-newline", "without Content-Type"),
]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [pytest.param(p, e, id=name) for name, p, e in HOSTILE_FRAMES],
)
async def test_malformed_frame_drops_the_connection_and_reconnects(
    payload: bytes, expected: str
) -> None:
    peer = HostilePeer(payload=payload)
    if payload in (b"garbage-without-newline", b"Content-Type: "):
        # the bytes merge with the next reply's first header line: ask for that reply
        outcome = await _survive_with_command(peer)
    else:
        outcome = await survive(peer)
    assert expected in (outcome.reason or ""), outcome
    assert outcome.reconnects == 1


async def _survive_with_command(peer: HostilePeer) -> Outcome:
    """As `survive`, with one `api` sent on the hostile connection (it may fail, but bounded)."""
    await peer.start()
    session = EslSession(fuzz_settings(peer.port))
    try:
        await session.connect()
        await _until(lambda: peer.sent_at is not None, 4, "payload sent")
        with contextlib.suppress(EslConnectionLost, EslTimeoutError):
            await asyncio.wait_for(session.api("first"), 4)
        await _until(lambda: session.reconnects >= 1 and session.connected, 6, "reconnected")
        assert await asyncio.wait_for(session.api("status"), 4) == "+OK status\n"
        return Outcome(session.last_disconnect_reason, None, session.reconnects)
    finally:
        await session.close()
        await peer.stop()


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"Content-Type: api/response\nContent-Length: 100\n\nshort", id="body"),
        pytest.param(b"Content-Type: api/response\nContent-Len", id="header"),
    ],
)
async def test_truncated_frame_then_eof(payload: bytes) -> None:
    outcome = await survive(HostilePeer(payload=payload, close_after=True))
    assert outcome.reconnects == 1 and outcome.reason


async def test_truncated_body_then_silence_is_found_by_the_heartbeat_watch() -> None:
    """The peer announces 100 bytes, sends 5 and goes quiet (socket open): genesis waits in
    readexactly for ever; the session's silence watch (2 x heartbeat_interval) drops it."""
    peer = HostilePeer(payload=b"Content-Type: api/response\nContent-Length: 100\n\nshort")
    outcome = await survive(peer, heartbeat_interval=0.2)
    assert "no traffic" in (outcome.reason or ""), outcome


# ------------------------------------------------------------------ a valid frame, split up


async def test_valid_frames_split_at_every_byte_still_parse() -> None:
    """An event and an api reply, written in two pieces cut at every byte offset (with a pause
    between): every reply and every event arrives whole and in order, on one connection."""
    frame_len: list[int] = []

    async def answer(command: str, writer: asyncio.StreamWriter) -> None:
        seq = int(command.split()[1])
        whole = custom_event(seq) + api_response(f"+OK {seq}\n".encode())
        frame_len.append(len(whole))
        cut = seq % len(whole)
        writer.write(whole[:cut])
        await writer.drain()
        await asyncio.sleep(0.002)
        writer.write(whole[cut:])

    peer = HostilePeer(answer=answer)
    await peer.start()
    session = EslSession(fuzz_settings(peer.port))
    seen: list[EslEvent] = []

    async def consume() -> None:
        async for event in session.events():
            seen.append(event)

    try:
        await session.connect()
        consumer = asyncio.create_task(consume())
        seq = 0
        while not frame_len or seq < frame_len[0] + 2:
            assert await asyncio.wait_for(session.api(f"echo {seq}"), 2) == f"+OK {seq}\n"
            seq += 1
        await _until(lambda: len(seen) == seq, 2, "every event")
        assert [int(e.headers["Seq"]) for e in seen] == list(range(seq))
        assert session.reconnects == 0 and session.connected
        consumer.cancel()
    finally:
        await session.close()
        await peer.stop()


# ---------------------------------------------------------------------- random byte streams


@settings(max_examples=40, deadline=None, derandomize=True, phases=[Phase.generate],
          suppress_health_check=[HealthCheck.too_slow])
@given(
    garbage=st.one_of(
        st.binary(min_size=1, max_size=300),
        st.lists(
            st.sampled_from([
                b"Content-Type: api/response\n", b"Content-Type: command/reply\n",
                b"Content-Type: text/event-plain\n", b"Content-Length: 7\n",
                b"Content-Length: -1\n", b"Reply-Text: +OK\n", b"\n", b"\r\n", b"\xff",
                b"abc", b": ", b"%", b"\x00",
            ]),
            min_size=1, max_size=12,
        ).map(b"".join),
    )
)
def test_random_bytes_never_leave_a_stuck_session(garbage: bytes) -> None:
    """After arbitrary bytes, `api` works again within a bounded time: on the same connection
    with the right answer (still in step), or on a new connection after the old one was
    dropped. Never a connection that stays up while every reply goes to the wrong command."""

    async def scenario() -> None:
        peer = HostilePeer(payload=garbage)
        await peer.start()
        session = EslSession(fuzz_settings(peer.port, heartbeat_interval=1.0))
        try:
            await asyncio.wait_for(session.connect(), 4)
            await _until(lambda: peer.sent_at is not None, 4, "payload sent")
            deadline = time.monotonic() + 8
            while True:
                assert time.monotonic() < deadline, "api never worked again"
                try:
                    answer = await asyncio.wait_for(session.api("probe"), 3)
                except (EslConnectionLost, EslTimeoutError, EslCommandError):
                    await asyncio.sleep(0.05)  # the one reply the garbage garbled
                    continue
                assert answer == "+OK probe\n", (garbage, answer)  # in step, never shifted
                break
        finally:
            await asyncio.wait_for(session.close(), 4)
            await peer.stop()

    asyncio.run(scenario())


# -------------------------------------------------------------------- 100 MB, no blank line

FLOOD_BYTES = 100 * 1024 * 1024
GROWTH_LIMIT = 20 * 1024 * 1024


def flood(chunk: bytes) -> Callable[[asyncio.StreamWriter], Awaitable[None]]:
    async def write(writer: asyncio.StreamWriter) -> None:
        peer_sent = 0
        with contextlib.suppress(ConnectionError, OSError):
            while peer_sent < FLOOD_BYTES and not writer.is_closing():
                writer.write(chunk)
                await writer.drain()
                peer_sent += len(chunk)
        flooded.append(peer_sent)

    flooded: list[int] = []
    write.flooded = flooded  # type: ignore[attr-defined]
    return write


@pytest.mark.parametrize(
    "chunk",
    [
        pytest.param((b"X-Junk: " + b"a" * 1015 + b"\n") * 256, id="short-lines"),
        pytest.param(b"a" * (256 * 1024), id="one-endless-line"),
    ],
)
async def test_100mb_without_a_blank_line_is_dropped_with_bounded_memory(chunk: bytes) -> None:
    sender = flood(chunk)
    peer = HostilePeer(payload=sender)
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        outcome = await survive(peer, within=30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    growth = peak - baseline
    sent = sender.flooded[0] if sender.flooded else None  # type: ignore[attr-defined]
    assert growth < GROWTH_LIMIT, f"memory grew {growth} bytes (peer sent {sent})"
    assert sent is not None and sent < FLOOD_BYTES, "the peer could send all 100 MB"
    assert outcome.reconnects == 1
    if chunk.count(b"\n") > 1:
        assert f"header block over {MAX_HEADER_BLOCK_BYTES}" in (outcome.reason or "")
