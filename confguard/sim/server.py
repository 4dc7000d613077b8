"""The simulator's Event Socket server: TCP, per-connection protocol state, event fan-out.

Owns what mod_event_socket owns in FreeSWITCH, and nothing about calls:

* the ACL (peers outside `SimConfig.allow` get `text/rude-rejection` and are closed), the
  `auth/request` greeting, `auth` (`+OK accepted` / `-ERR invalid` + goodbye notice + close),
  `-ERR command not found` before auth, the auth timeout (real seconds, `SimConfig.auth_timeout`);
* the commands `event plain|json|xml ...`, `nixevent`, `noevents`, `filter` / `filter delete`,
  `sendevent` (the switch builds and fires the event),
  `api`, `bgapi` (with the client's `Job-UUID:` cut to 36 characters), `exit`, and the reply to
  anything else;
* for every connection, the subscription, the filters (FreeSWITCH's rules: any positive filter
  that matches lets an event through, a matching `-value` vetoes it, with no filter everything
  subscribed passes) and an ordered outgoing queue: a connection answers its commands in order,
  and while one of its `api` commands runs nothing else is written to it (as in FreeSWITCH, where
  `api` runs on the connection's own thread); events queued meanwhile follow the reply.

Each connection is an `asyncio.Protocol` (`Connection`): commands are answered as their bytes
arrive, with no task or queue between the socket and the answer; only an `api` command that
waits on something runs on in a task. What a connection writes in one pass of the event loop
goes out in one `transport.write`; a client that does not read holds its connection
(`pause_writing`) until it does, and its events queue up to MAX_QUEUED_EVENTS.

The switch (channels, api commands, timers) is reached only through the small `SwitchLike`
protocol: `api(command)` for the api/response body and `background_job(job_uuid, command)`.
Values in events are the switch's; formatting (plain/json/xml) happens here via `wire`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

from confguard.sim import wire
from confguard.sim.config import SimConfig

if TYPE_CHECKING:
    from confguard.sim.events import SimEvent

log = logging.getLogger("confguard.sim.server")

# Every event type FreeSWITCH knows by name (switch_event.c); `ALL` stands for all of them.
EVENT_NAMES: frozenset[str] = frozenset(
    """
    CUSTOM CLONE CHANNEL_CREATE CHANNEL_DESTROY CHANNEL_STATE CHANNEL_CALLSTATE CHANNEL_ANSWER
    CHANNEL_HANGUP CHANNEL_HANGUP_COMPLETE CHANNEL_EXECUTE CHANNEL_EXECUTE_COMPLETE CHANNEL_HOLD
    CHANNEL_UNHOLD CHANNEL_BRIDGE CHANNEL_UNBRIDGE CHANNEL_PROGRESS CHANNEL_PROGRESS_MEDIA
    CHANNEL_OUTGOING CHANNEL_PARK CHANNEL_UNPARK CHANNEL_APPLICATION CHANNEL_ORIGINATE
    CHANNEL_UUID API LOG INBOUND_CHAN OUTBOUND_CHAN STARTUP SHUTDOWN PUBLISH UNPUBLISH TALK
    NOTALK SESSION_CRASH MODULE_LOAD MODULE_UNLOAD DTMF MESSAGE PRESENCE_IN NOTIFY_IN
    PRESENCE_OUT PRESENCE_PROBE MESSAGE_WAITING MESSAGE_QUERY ROSTER CODEC BACKGROUND_JOB
    DETECTED_SPEECH DETECTED_TONE PRIVATE_COMMAND HEARTBEAT TRAP ADD_SCHEDULE DEL_SCHEDULE
    EXE_SCHEDULE RE_SCHEDULE RELOADXML NOTIFY PHONE_FEATURE PHONE_FEATURE_SUBSCRIBE SEND_MESSAGE
    RECV_MESSAGE REQUEST_PARAMS CHANNEL_DATA GENERAL COMMAND SESSION_HEARTBEAT
    CLIENT_DISCONNECTED SERVER_DISCONNECTED SEND_INFO RECV_INFO RECV_RTCP_MESSAGE
    SEND_RTCP_MESSAGE CALL_SECURE NAT RECORD_START RECORD_STOP PLAYBACK_START PLAYBACK_STOP
    CALL_UPDATE FAILURE SOCKET_DATA MEDIA_BUG_START MEDIA_BUG_STOP CONFERENCE_DATA_QUERY
    CONFERENCE_DATA CALL_SETUP_REQ CALL_SETUP_RESULT CALL_DETAIL DEVICE_STATE TEXT
    SHUTDOWN_REQUESTED ALL
    """.split()  # noqa: SIM905 - a word list reads better than 90 quoted strings
)

MAX_QUEUED_EVENTS = 100_000  # FreeSWITCH's per-listener event queue
MAX_LOST_EVENTS = 500  # consecutive drops before FreeSWITCH kills the listener
WANTED_KEPT = 1024  # EslServer.wants' answers kept (names and subclasses)
JOB_UUID_MAX = 36  # FreeSWITCH copies the client's Job-UUID into a 37-byte buffer
WRITE_BATCH_BYTES = 256 * 1024  # queued events go out in writes of about this size

REPLY_NOT_FOUND = "-ERR command not found"
REPLY_NO_KEYWORDS = "-ERR no keywords supplied"


class SwitchLike(Protocol):
    """What the server needs from the switch."""

    async def api(self, command: str) -> str: ...

    def background_job(self, job_uuid: str, command: str) -> None: ...

    def send_event(
        self, command_line: str, headers: Sequence[tuple[str, str]], body: str | None
    ) -> str: ...


def event_type_name(token: str) -> str | None:
    """The canonical event name of a subscription token (case-insensitive, `SWITCH_EVENT_` ok)."""
    name = token.upper()
    if name.startswith("SWITCH_EVENT_"):
        name = name[len("SWITCH_EVENT_") :]
    return name if name in EVENT_NAMES else None


def first_header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    """The first value of `name` (case-insensitive, as FreeSWITCH looks headers up)."""
    wanted = name.lower()
    for key, value in headers:
        if key.lower() == wanted:
            return value
    return None


def _filter_sign(raw_value: str) -> tuple[bool, str]:
    """A filter value's sign and what it compares to: leading `+`/`-`/` ` set the sign (the
    last one wins), the rest is compared."""
    positive = True
    compare_to = raw_value
    while compare_to and compare_to[0] in "+- ":
        if compare_to[0] == "+":
            positive = True
        elif compare_to[0] == "-":
            positive = False
        compare_to = compare_to[1:]
    return positive, compare_to


def filter_allows(filters: Sequence[tuple[str, str]], headers: Sequence[tuple[str, str]]) -> bool:
    """FreeSWITCH's event filter decision for one event (the reference `EventFilters` follows).

    With no filter everything passes. Otherwise the event passes only if some filter whose header
    it has matches (exact, case-insensitive; a value starting with `/` is a regex, `/re/flags`),
    unless a matching negative filter (`-value`) vetoes it. An event lacking a filter's header
    is not matched by that filter.
    """
    if not filters:
        return True
    send = False
    for name, raw_value in filters:
        actual = first_header(headers, name)
        if actual is None:
            continue
        positive, compare_to = _filter_sign(raw_value)
        if send and positive:
            continue
        if raw_value.startswith("/"):
            matched = _regex_matches(raw_value, actual)
        else:
            matched = actual.lower() == compare_to.lower()
        if matched:
            if positive:
                send = True
            else:
                return False
    return send


@dataclass
class _HeaderFilters:
    """The filters on one header name: counts of each raw value and the indexes derived."""

    raw: dict[str, int] = field(default_factory=dict)
    positive: dict[str, int] = field(default_factory=dict)  # lower-cased compare-to values
    negative: dict[str, int] = field(default_factory=dict)
    patterns: dict[str, int] = field(default_factory=dict)  # raw `/re/flags` values

    def add(self, raw_value: str, count: int = 1) -> None:
        self.raw[raw_value] = self.raw.get(raw_value, 0) + count
        index, key = self._slot(raw_value)
        index[key] = index.get(key, 0) + count

    def remove(self, raw_value: str) -> None:
        count = self.raw.pop(raw_value, 0)
        if not count:
            return
        index, key = self._slot(raw_value)
        left = index[key] - count
        if left:
            index[key] = left
        else:
            del index[key]

    def _slot(self, raw_value: str) -> tuple[dict[str, int], str]:
        if raw_value.startswith("/"):
            return self.patterns, raw_value
        positive, compare_to = _filter_sign(raw_value)
        return (self.positive if positive else self.negative), compare_to.lower()


class EventFilters:
    """A connection's `filter` list, indexed so that deciding on an event costs the same with
    three filters or thirty thousand (the daemon keeps three per live call).

    The decision is `filter_allows`'s, which does not depend on the order of the filters: an
    event passes when no filter is set, or when no negative filter matches it and at least one
    positive filter does. Exact values are looked up by header name and lower-cased value;
    only regex filters (`/re/flags`) are tried one by one. Adding the same filter twice keeps
    two; `delete NAME VALUE` removes every copy, `delete NAME` every filter on that header."""

    def __init__(self) -> None:
        self._by_name: dict[str, _HeaderFilters] = {}
        self._count = 0
        self._vetoes = False  # some negative filter is set
        # Without negative filters the first positive match decides, so the header that
        # matched last (a connection's events mostly pass by the same one: Unique-ID) is
        # looked at first. Forgotten whenever a header's filters go.
        self._last_match: tuple[str, _HeaderFilters] | None = None

    def __len__(self) -> int:
        return self._count

    def add(self, name: str, raw_value: str) -> None:
        key = name.lower()
        filters = self._by_name.get(key)
        if filters is None:
            filters = self._by_name[key] = _HeaderFilters()
        filters.add(raw_value)
        self._count += 1
        self._vetoes = self._vetoes or bool(filters.negative)

    def delete(self, name: str, raw_value: str | None = None) -> None:
        key = name.lower()
        filters = self._by_name.get(key)
        if filters is None:
            return
        if raw_value is None:
            self._count -= sum(filters.raw.values())
            del self._by_name[key]
        else:
            self._count -= filters.raw.get(raw_value, 0)
            filters.remove(raw_value)
            if not filters.raw:
                del self._by_name[key]
        if key not in self._by_name:
            self._last_match = None
        if self._vetoes:  # (a delete cannot set one)
            self._vetoes = any(kept.negative for kept in self._by_name.values())

    def clear(self) -> None:
        self._by_name.clear()
        self._count = 0
        self._vetoes = False
        self._last_match = None

    def items(self) -> list[tuple[str, str]]:
        """(lower-cased header name, raw value) for every filter, one per copy."""
        return [
            (name, raw)
            for name, filters in self._by_name.items()
            for raw, count in filters.raw.items()
            for _ in range(count)
        ]

    def allows(self, event: SimEvent) -> bool:
        """The filter decision for `event` (see the class docstring)."""
        if not self._count:
            return True
        if not self._vetoes:
            # The first positive match decides: the header that matched last is tried first.
            last = self._last_match
            if last is not None:
                actual = event.first_value(last[0])
                if actual is not None:
                    filters = last[1]
                    if actual.lower() in filters.positive or (
                        filters.patterns and _any_pattern_matches(filters, actual)
                    ):
                        return True
            return self._any_matches(event, last)
        send = False
        for name, filters in self._by_name.items():
            if send and not filters.negative:
                continue  # passing already, and nothing on this header could veto it
            actual = event.first_value(name)
            if actual is None:
                continue
            lowered = actual.lower()
            if lowered in filters.negative:
                return False
            if send:
                continue
            send = lowered in filters.positive or (
                bool(filters.patterns) and _any_pattern_matches(filters, actual)
            )
        return send

    def _any_matches(self, event: SimEvent, last: tuple[str, _HeaderFilters] | None) -> bool:
        """`allows` when no filter is negative and the header that matched `last` did not:
        does a filter on another header match?"""
        for name, filters in self._by_name.items():
            if last is not None and filters is last[1]:
                continue  # looked at already
            actual = event.first_value(name)
            if actual is not None and (
                actual.lower() in filters.positive
                or (filters.patterns and _any_pattern_matches(filters, actual))
            ):
                self._last_match = (name, filters)
                return True
        return False


def _any_pattern_matches(filters: _HeaderFilters, actual: str) -> bool:
    return any(_regex_matches(pattern, actual) for pattern in filters.patterns)


def _regex_matches(expression: str, value: str) -> bool:
    pattern, flags = expression[1:], 0
    if "/" in pattern:
        pattern, options = pattern.rsplit("/", 1)
        if "i" in options:
            flags |= re.IGNORECASE
        if "s" in options:
            flags |= re.DOTALL
    try:
        return re.search(pattern, value, flags) is not None
    except re.error:
        return False


def peer_allowed(host: str, allow: Sequence[str]) -> bool:
    """True when `host` lies in one of the `allow` networks (IPv4-mapped IPv6 unwrapped)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for network in allow:
        try:
            if address in ipaddress.ip_network(network, strict=False):
                return True
        except ValueError:
            continue
    return False


@dataclass
class _Subscription:
    """A connection's `event` state: format, event types, CUSTOM subclasses."""

    enabled: bool = False  # FreeSWITCH's LFLAG_EVENTS
    event_format: wire.EventFormat = "plain"
    all_events: bool = False
    types: set[str] = field(default_factory=set)
    subclasses: set[str] = field(default_factory=set)

    def wants(self, event: SimEvent) -> bool:
        return self.wants_type(event.name, event.subclass)

    def wants_type(self, event_name: str, subclass: str | None) -> bool:
        if not self.enabled:
            return False
        if self.all_events:
            return True
        types = self.types
        name = event_name
        if name not in types:
            name = name.upper()
            if name not in types:
                return False
        if name != "CUSTOM" or not subclass:
            return True
        return subclass in self.subclasses


class _Resumed:
    """The rest of a coroutine whose first step already ran outside any task.

    `Connection` runs an `api` command's coroutine at once, on the spot, and nearly every one
    finishes in that first step (no task, no extra pass of the loop). One that waits on
    something is handed to a task through this awaitable: it gives the task what the first step
    waits on, then drives the coroutine as `await` would (values sent, exceptions thrown in,
    cancellation included). Python 3.12's eager tasks do the same."""

    __slots__ = ("_coroutine", "_waiting_on")

    def __init__(self, coroutine: Coroutine[object, object, str], waiting_on: object) -> None:
        self._coroutine = coroutine
        self._waiting_on = waiting_on

    def __await__(self) -> Generator[object, object, str]:
        coroutine, waiting_on = self._coroutine, self._waiting_on
        while True:
            try:
                sent = yield waiting_on
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:  # cancellation, or what the awaited future raised
                try:
                    waiting_on = coroutine.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    waiting_on = coroutine.send(sent)
                except StopIteration as done:
                    return done.value


async def _finish(rest: _Resumed) -> str:
    return await rest


class Connection(asyncio.Protocol):
    """One client: protocol state, the commands not yet answered, an outgoing event queue.

    Commands are parsed and answered as their bytes arrive (`data_received`), in order. The
    connection is *held* while one of its `api` commands waits on something (as FreeSWITCH runs
    a connection's commands one after another on its own thread), while the transport's buffer
    is full (`pause_writing`: the client does not read) and while a `stall` fault is in force;
    commands received meanwhile wait in `_pending`, events in `events`, and both go on, in
    order, when the hold ends. Queued events are written before the reply to the next command
    and otherwise on the next pass of the loop. Everything written in one pass of the loop goes
    to the socket in one `transport.write` at the end of that pass."""

    def __init__(self, server: EslServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer_host = ""
        self.peer = "?"
        self.authed = False
        self.subscription = _Subscription()
        self.filters = EventFilters()
        self.events: deque[SimEvent | bytes] = deque()
        self.lost_events = 0
        self.closed = False
        self._close_after_flush = False
        self._parser = wire.CommandParser()
        self._pending: deque[wire.ClientCommand] = deque()  # received, not yet answered
        self._api_running = False
        self._paused = False  # the transport's buffer is over its high-water mark
        self._client_done = False  # the client closed its side (or sent garbage)
        self._greeted = False  # auth/request written (and the auth timeout counting)
        self._loop = asyncio.get_running_loop()
        self._pass_scheduled = False
        self._out: list[bytes] = []  # written this pass of the loop, not yet sent
        self._out_size = 0
        self._auth_timer: asyncio.TimerHandle | None = None
        self._stall_timer: asyncio.TimerHandle | None = None

    # ----------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not an asyncio.Transport subclass: no isinstance).
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_host, self.peer = str(peer[0]), f"{peer[0]}:{peer[1]}"
        if not peer_allowed(self.peer_host, self.server.config.allow):
            log.info("rejected %s (not in the ACL)", self.peer)
            self.closed = True
            self.transport.write(wire.encode_rude_rejection())
            transport.close()
            return
        self.server.connections.add(self)
        self._resume()  # the greeting, unless a stall holds it

    def data_received(self, data: bytes) -> None:
        if self.closed or self._client_done:
            return
        try:
            commands = self._parser.feed(data)
        except wire.WireError as exc:
            log.info("dropping %s: %s", self.peer, exc)
            self.eof_received()
            return
        for command in commands:
            if self._pending or not self._greeted or self._held():
                self._pending.append(command)
            else:
                self._run(command)
                if self.closed:
                    return

    def eof_received(self) -> bool:
        """The client closed its side: answer what it sent before, then close (kept open
        until then)."""
        self._client_done = True
        self._resume()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._schedule_pass()

    # ----------------------------------------------------------------- fan-in from the switch

    def offer(self, event: SimEvent) -> None:
        """Queue `event` if this connection is subscribed to it and its filters let it through."""
        if (
            self.closed
            or not self.authed
            or not self.subscription.wants_type(event.name, event.subclass)
        ):
            return
        if event.unsent:  # a stand-in: EslServer.wants said no one would take it
            log.error("event %s was not built but %s takes it", event.name, self.peer)
            return
        if not self.filters.allows(event):
            return
        if len(self.events) >= MAX_QUEUED_EVENTS:
            self.lost_events += 1
            if self.lost_events > MAX_LOST_EVENTS:
                log.warning("killed listener %s because of lost events", self.peer)
                self.abort()
            return
        self.lost_events = 0
        self.events.append(event)
        if not self._pass_scheduled:
            self._pass_scheduled = True
            self._loop.call_soon(self._pass)

    def inject(self, frame: bytes) -> None:
        """Queue raw bytes in the event stream (faults), bypassing subscription and filters."""
        if self.closed:
            return
        self.events.append(frame)
        self._schedule_pass()

    # ----------------------------------------------------------------- order and holds

    def _held(self) -> bool:
        """Whether nothing may be answered or flushed now (see the class docstring)."""
        return self._api_running or self._paused or (self.server.stalled and self._stalled())

    def _stalled(self) -> bool:
        remaining = self.server.stall_remaining()
        if remaining <= 0.0:
            return False
        if self._stall_timer is None:
            self._stall_timer = self._loop.call_later(remaining, self._stall_over)
        return True

    def _stall_over(self) -> None:
        self._stall_timer = None
        self._resume()

    def _schedule_pass(self) -> None:
        if not self._pass_scheduled and not self.closed:
            self._pass_scheduled = True
            self._loop.call_soon(self._pass)

    def _pass(self) -> None:
        """End of a pass of the loop: go on with what waited, then send what was written
        (what this writes goes out now: no other pass is asked for meanwhile)."""
        try:
            if not self.closed:
                if self._pending or not self._greeted or self._client_done:
                    self._resume()
                elif not self._held() and (self.events or self._close_after_flush):
                    self._flush_events()  # what `_resume` comes to in nearly every pass
                self._send_out()
        finally:
            self._pass_scheduled = False

    def _resume(self) -> None:
        """Answer the commands that waited, flush the queued events, close once the client
        has closed: as far as no hold stops it."""
        if not self._greeted:
            if self.closed or self._held():
                return
            self._greeted = True
            self._write(wire.encode_auth_request())
            self._auth_timer = self._loop.call_later(
                self.server.config.auth_timeout, self._auth_timed_out
            )
        pending = self._pending
        while pending and not self.closed:
            if self._held():
                return
            self._run(pending.popleft())
        if self.closed or self._held():
            return
        if self.events or self._close_after_flush:
            self._flush_events()
        if self._client_done and not self.closed and not self._paused:
            self.close()

    def _run(self, command: wire.ClientCommand) -> None:
        """Flush the queued events, then answer `command` (the connection is not held)."""
        if self.events or self._close_after_flush:
            self._flush_events()
            if self.closed:
                return
            if self._paused:  # the flush filled the transport: the command waits its turn
                self._pending.appendleft(command)
                return
        self._handle(command)

    def _flush_events(self) -> None:
        """Write every queued event, in order, until the transport's buffer is full."""
        events = self.events
        out = self._out
        size = self._out_size
        event_format = self.subscription.event_format
        while events:
            item = events.popleft()
            if isinstance(item, bytes):
                frame = item
            else:  # encoded once per event and format: the connections taking it share it
                frame = item.derived.get(event_format)  # type: ignore[assignment]
                if frame is None:
                    frame = item.derived[event_format] = item.frame(event_format)
            out.append(frame)
            size += len(frame)
            if size >= WRITE_BATCH_BYTES:
                self._out_size = size
                self._send_out()
                size = 0
                if self._paused or self.closed:
                    return
        self._out_size = size
        if not self._pass_scheduled:
            self._pass_scheduled = True
            self._loop.call_soon(self._pass)
        if self._close_after_flush:
            self.close()

    def _write(self, data: bytes) -> None:
        """Queue `data` for the socket: it goes out at the end of this pass of the loop with
        everything else written in the pass, or at once past WRITE_BATCH_BYTES."""
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size >= WRITE_BATCH_BYTES:
            self._send_out()
        elif not self._pass_scheduled:
            self._pass_scheduled = True
            self._loop.call_soon(self._pass)

    def _send_out(self) -> None:
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self._out_size = 0
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _reply(self, text: str, extra: Sequence[tuple[str, str]] = ()) -> None:
        self._write(wire.encode_command_reply(text, extra))

    def _goodbye(self, text: str) -> None:
        self._write(wire.encode_disconnect_notice(text))
        self.close()

    def _auth_timed_out(self) -> None:
        self._auth_timer = None
        if self.closed or self.authed:
            return
        log.info("no auth from %s within %ss", self.peer, self.server.config.auth_timeout)
        self._pending.clear()  # what it sent meanwhile is not answered
        self.say_goodbye(wire.GOODBYE_TEXT)

    # ----------------------------------------------------------------- life cycle

    def close(self) -> None:
        """Close the socket (what was written is flushed by the transport first)."""
        if self.closed:
            return
        self._send_out()
        self._end()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the socket at once, without any notice."""
        if self.closed:
            return
        self._send_out()  # what was written reaches the transport, which drops it
        self._end()
        if self.transport is not None:
            self.transport.abort()

    def _end(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._pending.clear()
        for timer in (self._auth_timer, self._stall_timer):
            if timer is not None:
                timer.cancel()
        self._auth_timer = self._stall_timer = None
        self.server.forget(self)

    def say_goodbye(self, text: str) -> None:
        """After the events already queued: a disconnect notice with `text`, then close."""
        if self.closed:
            return
        self.events.append(wire.encode_disconnect_notice(text))
        self._close_after_flush = True
        self._schedule_pass()

    # ----------------------------------------------------------------- commands

    def _handle(self, command: wire.ClientCommand) -> None:
        """Answer one command (its reply written; an `api` that waits holds the connection)."""
        line = command.line
        lowered = line[:9].lower()  # the longest name compared is 9 long (an originate is long)
        if lowered.startswith("exit") or lowered.startswith("..."):
            self._reply("+OK bye")
            self._goodbye(wire.GOODBYE_TEXT)
            return
        if not self.authed:
            if lowered.startswith("auth "):
                if line[5:].strip() == self.server.config.password:
                    self.authed = True
                    if self._auth_timer is not None:
                        self._auth_timer.cancel()
                        self._auth_timer = None
                    self.server.subscriptions_changed()
                    self._reply("+OK accepted")
                    return
                log.info("bad password from %s", self.peer)
                self._reply("-ERR invalid")
                self._goodbye(wire.GOODBYE_TEXT)
                return
            self._reply(REPLY_NOT_FOUND)
            return
        if lowered.startswith("filter "):
            self._reply(self._filter(line[len("filter ") :]))
        elif lowered.startswith("bgapi "):
            self._bgapi(line[len("bgapi ") :], command.header("Job-UUID"))
        elif lowered.startswith("api "):
            self._api(line[len("api ") :])
        elif lowered.startswith("sendevent"):
            self._reply(self._sendevent(command))
        elif lowered.startswith("event"):
            reply = self._event(line)
            self.server.subscriptions_changed()
            self._reply(reply)
        elif lowered.startswith("nixevent"):
            reply = self._nixevent(line)
            self.server.subscriptions_changed()
            self._reply(reply)
        elif lowered.startswith("noevents"):
            reply = self._noevents()
            self.server.subscriptions_changed()
            self._reply(reply)
        else:
            self._reply(REPLY_NOT_FOUND)

    def _api(self, api_command: str) -> None:
        """Run the api command now; if it waits on something, in a task that holds the
        connection until its response is written."""
        coroutine = self.server.run_api(api_command)
        try:
            waiting_on = coroutine.send(None)
        except StopIteration as done:
            self._write(wire.encode_api_response(done.value))
            return
        self._api_running = True
        task = self._loop.create_task(
            _finish(_Resumed(coroutine, waiting_on)), name=f"esl-api-{self.peer}"
        )
        self.server.keep(task)
        task.add_done_callback(self._api_done)

    def _api_done(self, task: asyncio.Task[str]) -> None:
        self._api_running = False
        if task.cancelled():
            return
        try:
            body = task.result()  # run_api answers the switch's failures with a body already
        except Exception:
            log.exception("api on %s failed inside the simulator", self.peer)
            body = "-ERR simulator error\n"
        if self.closed:
            return
        self._write(wire.encode_api_response(body))
        self._resume()

    def _bgapi(self, api_command: str, client_job_uuid: str | None) -> None:
        job_uuid = client_job_uuid[:JOB_UUID_MAX] if client_job_uuid else str(uuid.uuid4())
        self._reply(f"+OK Job-UUID: {job_uuid}", [("Job-UUID", job_uuid)])
        self.server.start_background_job(job_uuid, api_command)

    def _sendevent(self, command: wire.ClientCommand) -> str:
        """`sendevent <NAME>` and header lines (a body after Content-Length): the switch fires
        the event (or hands it to the call its Unique-ID names); `+OK <Event-UUID>`."""
        switch = self.server.switch
        body = command.body.decode("utf-8", "replace") if command.body else None
        if switch is None:
            return f"+OK {uuid.uuid4()}"
        return switch.send_event(command.line, command.headers, body)

    def _event(self, line: str) -> str:
        subscription = self.subscription
        key_count = 0
        custom = False
        space = line.find(" ", 5)
        tokens = line[space + 1 :].split(" ") if space >= 0 else []
        for index, token in enumerate(tokens):
            if index == 0 and token.lower() in wire.EVENT_FORMATS:
                subscription.event_format = token.lower()  # type: ignore[assignment]
                continue
            if custom:
                if token:
                    subscription.subclasses.add(token)
                continue
            name = event_type_name(token)
            if name is None:
                continue
            key_count += 1
            if name == "ALL":
                subscription.all_events = True
                subscription.types.update(EVENT_NAMES - {"ALL"})
            else:
                subscription.types.add(name)
            if name == "CUSTOM":
                custom = True
        if not key_count:
            return REPLY_NO_KEYWORDS
        subscription.enabled = True
        return f"+OK event listener enabled {subscription.event_format}"

    def _nixevent(self, line: str) -> str:
        subscription = self.subscription
        key_count = 0
        custom = False
        space = line.find(" ", 8)
        tokens = line[space + 1 :].split(" ") if space >= 0 else []
        for token in tokens:
            if custom:
                subscription.subclasses.discard(token)
                continue
            name = event_type_name(token)
            if name is None:
                continue
            key_count += 1
            if name == "CUSTOM":
                custom = True
            elif name == "ALL":
                subscription.all_events = False
                subscription.types.clear()
            else:
                if subscription.all_events:
                    subscription.all_events = False
                    subscription.types.update(EVENT_NAMES - {"ALL"})
                subscription.types.discard(name)
        if not key_count:
            return REPLY_NO_KEYWORDS
        subscription.enabled = True
        return "+OK events nixed"

    def _noevents(self) -> str:
        self.events = deque(item for item in self.events if isinstance(item, bytes))
        if not self.subscription.enabled:
            return "-ERR not listening for events"
        self.subscription = _Subscription(event_format=self.subscription.event_format)
        return "+OK no longer listening for events"

    def _filter(self, rest: str) -> str:
        name, _, value_part = rest.partition(" ")
        value: str | None = value_part if _ else None
        if name.lower() == "delete" and value is not None:
            name, _, value_part = value.partition(" ")
            value = value_part if _ else None
            if name.lower() == "all":
                self.filters.clear()
            else:
                self.filters.delete(name, value)
            return f"+OK filter deleted. [{name}][{value or ''}]"
        if value is None:
            return "-ERR invalid syntax"
        if name.lower() == "add":
            name, _, value_part = value.partition(" ")
            value = value_part if _ else None
        if value is not None:
            self.filters.add(name, value)
        return f"+OK filter added. [{name}]=[{value if value is not None else '(null)'}]"


class EslServer:
    """The listening socket and every connection; `publish()` fans switch events out."""

    def __init__(
        self,
        config: SimConfig,
        switch: SwitchLike | None = None,
        *,
        on_shutdown_request: Callable[[], Coroutine[object, object, None]] | None = None,
    ) -> None:
        self.config = config
        self.switch = switch
        self.on_shutdown_request = on_shutdown_request
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stalled_until = 0.0
        # Whether a `stall` fault is (or was) set: `stall_remaining` has something to say. An
        # attribute, not a property: every connection reads it before each answer and flush.
        self.stalled = False
        self.port: int = config.port
        self._wanted_names: dict[str, bool] = {}  # `wants`' answers, by name (no subclass)
        self._wanted: dict[tuple[str, str | None], bool] = {}  # and by name and subclass
        # The connections `publish` offers events to (authenticated, listening), made again
        # after a subscription changes (`subscriptions_changed`), in `connections`' order.
        self._listeners: tuple[Connection, ...] | None = None

    # ----------------------------------------------------------------- life cycle

    async def start(self) -> None:
        """Bind and listen on `config.host:config.port` (port 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection(self), self.config.host, self.config.port, reuse_address=True
        )
        sockets = self._server.sockets or ()
        if sockets:
            self.port = int(sockets[0].getsockname()[1])

    @property
    def listening(self) -> bool:
        """True while the listening socket is open."""
        return self._server is not None and self._server.is_serving()

    async def stop_listening(self) -> None:
        """Close the listening socket; existing connections stay."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def stop(self) -> None:
        """Stop listening, drop every connection, cancel their api commands still running."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    def forget(self, connection: Connection) -> None:
        """Remove a closed connection from the fan-out."""
        self.connections.discard(connection)
        self.subscriptions_changed()

    # ----------------------------------------------------------------- switch side

    def wants(self, event_name: str, subclass: str | None = None) -> bool:
        """Would some connection take an event of this name (and CUSTOM subclass)? The switch
        asks before building a channel or conference event (its filters may still drop it).
        Answers are kept until a subscription changes (`subscriptions_changed`)."""
        if subclass is None:  # nearly every question: no tuple to build
            answer = self._wanted_names.get(event_name)
            if answer is None:
                answer = self._ask_wanted(event_name, None)
                if len(self._wanted_names) >= WANTED_KEPT:
                    self._wanted_names.clear()
                self._wanted_names[event_name] = answer
            return answer
        key = (event_name, subclass)
        answer = self._wanted.get(key)
        if answer is None:
            answer = self._ask_wanted(event_name, subclass)
            if len(self._wanted) >= WANTED_KEPT:
                self._wanted.clear()
            self._wanted[key] = answer
        return answer

    def _ask_wanted(self, event_name: str, subclass: str | None) -> bool:
        return any(
            connection.authed
            and not connection.closed
            and connection.subscription.wants_type(event_name, subclass)
            for connection in self.connections
        )

    def subscriptions_changed(self) -> None:
        """A connection subscribed, unsubscribed, authenticated or went: `wants` asks again,
        and `publish` looks again for the connections that listen."""
        self._wanted_names.clear()
        self._wanted.clear()
        self._listeners = None

    def publish(self, event: SimEvent) -> None:
        """Offer one switch event to every connection that listens (each applies its
        subscription and filters)."""
        if event.unsent and not self.wants(event.name, event.subclass):
            return  # a stand-in no connection takes (each would say no in `offer`)
        listeners = self._listeners
        if listeners is None:
            listeners = self._listeners = tuple(
                connection
                for connection in self.connections
                if connection.authed and connection.subscription.enabled
            )
        for connection in listeners:
            connection.offer(event)

    async def run_api(self, command: str) -> str:
        """The api/response body for `command` (FreeSWITCH answers an empty result as no reply)."""
        if self._is_shutdown_request(command):
            if self.on_shutdown_request is not None:
                self.keep(asyncio.create_task(self.on_shutdown_request(), name="sim-shutdown"))
            return "+OK\n"
        if self.switch is None:
            return f"-ERR {command.split(' ', 1)[0]} Command not found!\n"
        try:
            body = await self.switch.api(command)
        except Exception:  # the simulator must keep serving; the traceback goes to the log
            log.exception("api %r failed inside the simulator", command)
            body = "-ERR simulator error\n"
        return body if body else "-ERR no reply\n"

    def start_background_job(self, job_uuid: str, command: str) -> None:
        """Hand a bgapi to the switch (it publishes BACKGROUND_JOB when done)."""
        if self._is_shutdown_request(command) and self.on_shutdown_request is not None:
            self.keep(asyncio.create_task(self.on_shutdown_request(), name="sim-shutdown"))
            return
        if self.switch is not None:
            self.switch.background_job(job_uuid, command)

    @staticmethod
    def _is_shutdown_request(command: str) -> bool:
        if command.lstrip()[:5].lower() != "fsctl":
            return False  # (an originate is long: not split into words for nothing)
        words = command.lower().split()
        return words[:2] == ["fsctl", "shutdown"] and (len(words) == 2 or words[2] != "cancel")

    def keep(self, task: asyncio.Task[Any]) -> None:
        """Hold a reference to `task` until it is done; `stop` cancels it."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ----------------------------------------------------------------- faults

    def stall_remaining(self) -> float:
        """Real seconds left of the `stall` fault in force (0 or less: none)."""
        return self._stalled_until - time.monotonic()

    def stall(self, seconds: float) -> None:
        """Delay every reply and event on every connection for `seconds` real seconds."""
        self._stalled_until = max(self._stalled_until, time.monotonic() + max(0.0, seconds))
        self.stalled = self._stalled_until > 0.0

    def drop_connections(self) -> None:
        """Close every client socket at once, without a notice."""
        for connection in list(self.connections):
            connection.abort()

    def inject(self, frame: bytes) -> None:
        """Queue raw bytes on every authenticated connection."""
        for connection in list(self.connections):
            if connection.authed:
                connection.inject(frame)

    def goodbye_all(self, text: str) -> None:
        """Send every connection (after its queued events) a disconnect notice, then close it."""
        for connection in list(self.connections):
            connection.say_goodbye(text)
