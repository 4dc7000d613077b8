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
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

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
READ_CHUNK = 65536
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

    def __len__(self) -> int:
        return self._count

    def add(self, name: str, raw_value: str) -> None:
        key = name.lower()
        filters = self._by_name.get(key)
        if filters is None:
            filters = self._by_name[key] = _HeaderFilters()
        filters.add(raw_value)
        self._count += 1

    def delete(self, name: str, raw_value: str | None = None) -> None:
        key = name.lower()
        filters = self._by_name.get(key)
        if filters is None:
            return
        if raw_value is None:
            self._count -= sum(filters.raw.values())
            del self._by_name[key]
            return
        self._count -= filters.raw.get(raw_value, 0)
        filters.remove(raw_value)
        if not filters.raw:
            del self._by_name[key]

    def clear(self) -> None:
        self._by_name.clear()
        self._count = 0

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
            send = lowered in filters.positive or any(
                _regex_matches(pattern, actual) for pattern in filters.patterns
            )
        return send


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
        name = event_name.upper()
        if name not in self.types:
            return False
        if name != "CUSTOM" or not subclass:
            return True
        return subclass in self.subclasses


_WAKE = object()  # inbox token: events are waiting
_EOF = object()  # inbox token: the client closed or the read failed


class Connection:
    """One client: protocol state, an inbox of commands, an outgoing event queue."""

    def __init__(
        self,
        server: EslServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer_host: str = str(peer[0]) if peer else ""
        self.peer: str = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.authed = False
        self.subscription = _Subscription()
        self.filters = EventFilters()
        self.events: deque[SimEvent | bytes] = deque()
        self.lost_events = 0
        self.closed = False
        self._close_after_flush = False
        self._inbox: asyncio.Queue[object] = asyncio.Queue()
        self._wake_pending = False
        self._out: list[bytes] = []  # written this pass of the loop, not yet sent
        self._out_size = 0
        self._out_scheduled = False

    # ----------------------------------------------------------------- fan-in from the switch

    def offer(self, event: SimEvent) -> None:
        """Queue `event` if this connection is subscribed to it and its filters let it through."""
        if self.closed or not self.authed or not self.subscription.wants(event):
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
        self._wake()

    def inject(self, frame: bytes) -> None:
        """Queue raw bytes in the event stream (faults), bypassing subscription and filters."""
        if self.closed:
            return
        self.events.append(frame)
        self._wake()

    def _wake(self) -> None:
        if not self._wake_pending:
            self._wake_pending = True
            self._inbox.put_nowait(_WAKE)

    # ----------------------------------------------------------------- life cycle

    async def run(self) -> None:
        """Serve the connection until it ends (exit, auth failure, EOF, fault, shutdown)."""
        if not peer_allowed(self.peer_host, self.server.config.allow):
            log.info("rejected %s (not in the ACL)", self.peer)
            with contextlib.suppress(ConnectionError):
                await self._write(wire.encode_rude_rejection())
            await self.close()
            return
        reader_task = asyncio.create_task(self._read_loop(), name=f"esl-read-{self.peer}")
        try:
            await self._write(wire.encode_auth_request())
            await self._serve()
        except (ConnectionError, OSError):
            pass
        finally:
            reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader_task
            await self.close()

    async def _read_loop(self) -> None:
        parser = wire.CommandParser()
        try:
            while True:
                data = await self.reader.read(READ_CHUNK)
                if not data:
                    break
                for command in parser.feed(data):
                    self._inbox.put_nowait(command)
        except wire.WireError as exc:
            log.info("dropping %s: %s", self.peer, exc)
        except (ConnectionError, OSError):
            pass
        self._inbox.put_nowait(_EOF)

    async def _serve(self) -> None:
        auth_deadline = time.monotonic() + self.server.config.auth_timeout
        while not self.closed:
            try:
                if self.authed:
                    item = await self._inbox.get()
                else:
                    remaining = auth_deadline - time.monotonic()
                    item = await asyncio.wait_for(self._inbox.get(), max(0.0, remaining))
            except TimeoutError:
                log.info("no auth from %s within %ss", self.peer, self.server.config.auth_timeout)
                await self._goodbye(wire.GOODBYE_TEXT)
                return
            if self.events or self._close_after_flush:
                await self._flush_events()
            else:
                self._wake_pending = False
            if item is _EOF or self.closed:
                return
            if isinstance(item, wire.ClientCommand):
                keep_going = await self._handle(item)
                if not keep_going:
                    return

    async def _flush_events(self) -> None:
        """Write every queued event, in order, as one write per batch (not a send per event)."""
        self._wake_pending = False
        while self.events and not self.closed:
            batch: list[bytes] = []
            size = 0
            while self.events and size < WRITE_BATCH_BYTES:
                item = self.events.popleft()
                frame = item if isinstance(item, bytes) else self._frame(item)
                batch.append(frame)
                size += len(frame)
            await self._write(b"".join(batch))
        if self._close_after_flush:
            await self.close()

    def _frame(self, event: SimEvent) -> bytes:
        """The event's frame in this connection's format, encoded once per event and format
        (every connection that takes the event shares it)."""
        event_format = self.subscription.event_format
        frame = event.derived.get(event_format)
        if frame is None:
            frame = event.derived[event_format] = event.frame(event_format)
        return frame  # type: ignore[return-value]

    async def _write(self, data: bytes) -> None:
        """Queue `data` for the socket. What one pass of the event loop writes to this client
        (the replies to a pipelined run of commands, events) goes out in one send at the end
        of the pass instead of a send each; order is kept, and the transport's back-pressure
        still holds this connection up when the client does not read."""
        if self.server.stalled:
            await self.server.wait_unstalled()
        if self.closed or self.writer.is_closing():
            raise ConnectionResetError("connection closed")
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size >= WRITE_BATCH_BYTES:
            self._send_out()
        elif not self._out_scheduled:
            self._out_scheduled = True
            asyncio.get_running_loop().call_soon(self._send_out)
        await self.writer.drain()

    def _send_out(self) -> None:
        self._out_scheduled = False
        if not self._out:
            return
        data = b"".join(self._out)
        self._out.clear()
        self._out_size = 0
        if not self.writer.is_closing():
            self.writer.write(data)

    async def _reply(self, text: str, extra: Sequence[tuple[str, str]] = ()) -> None:
        await self._write(wire.encode_command_reply(text, extra))

    async def _goodbye(self, text: str) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self._write(wire.encode_disconnect_notice(text))
        await self.close()

    async def close(self) -> None:
        """Close the socket (pending writes are flushed by the transport)."""
        if self.closed:
            return
        self.closed = True
        self.server.forget(self)
        with contextlib.suppress(Exception):
            self._send_out()
            self.writer.close()
        self._inbox.put_nowait(_EOF)

    def abort(self) -> None:
        """Drop the socket at once, without any notice."""
        if self.closed:
            return
        self.closed = True
        self.server.forget(self)
        with contextlib.suppress(Exception):
            self._send_out()  # what was written reaches the socket, as the transport would
            self.writer.transport.abort()
        self._inbox.put_nowait(_EOF)

    def say_goodbye(self, text: str) -> None:
        """After the events already queued: a disconnect notice with `text`, then close."""
        if self.closed:
            return
        self.events.append(wire.encode_disconnect_notice(text))
        self._close_after_flush = True
        self._wake()

    # ----------------------------------------------------------------- commands

    async def _handle(self, command: wire.ClientCommand) -> bool:
        """Answer one command; False when the connection must end."""
        line = command.line
        lowered = line.lower()
        if lowered.startswith("exit") or lowered.startswith("..."):
            await self._reply("+OK bye")
            await self._goodbye(wire.GOODBYE_TEXT)
            return False
        if not self.authed:
            if lowered.startswith("auth "):
                if line[5:].strip() == self.server.config.password:
                    self.authed = True
                    self.server.subscriptions_changed()
                    await self._reply("+OK accepted")
                    return True
                log.info("bad password from %s", self.peer)
                await self._reply("-ERR invalid")
                await self._goodbye(wire.GOODBYE_TEXT)
                return False
            await self._reply(REPLY_NOT_FOUND)
            return True
        if lowered.startswith("sendevent"):
            await self._reply(self._sendevent(command))
        elif lowered.startswith("filter "):
            await self._reply(self._filter(line[len("filter ") :]))
        elif lowered.startswith("api "):
            await self._api(line[len("api ") :])
        elif lowered.startswith("bgapi "):
            await self._bgapi(line[len("bgapi ") :], command.header("Job-UUID"))
        elif lowered.startswith("event"):
            reply = self._event(line)
            self.server.subscriptions_changed()
            await self._reply(reply)
        elif lowered.startswith("nixevent"):
            reply = self._nixevent(line)
            self.server.subscriptions_changed()
            await self._reply(reply)
        elif lowered.startswith("noevents"):
            reply = self._noevents()
            self.server.subscriptions_changed()
            await self._reply(reply)
        else:
            await self._reply(REPLY_NOT_FOUND)
        return True

    async def _api(self, api_command: str) -> None:
        body = await self.server.run_api(api_command)
        await self._write(wire.encode_api_response(body))

    async def _bgapi(self, api_command: str, client_job_uuid: str | None) -> None:
        job_uuid = client_job_uuid[:JOB_UUID_MAX] if client_job_uuid else str(uuid.uuid4())
        await self._reply(f"+OK Job-UUID: {job_uuid}", [("Job-UUID", job_uuid)])
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
        self._tasks: set[asyncio.Task[None]] = set()
        self._stalled_until = 0.0
        self.port: int = config.port
        self._wanted: dict[tuple[str, str | None], bool] = {}  # `wants`' answers

    # ----------------------------------------------------------------- life cycle

    async def start(self) -> None:
        """Bind and listen on `config.host:config.port` (port 0 picks a free one)."""
        self._server = await asyncio.start_server(
            self._accept, self.config.host, self.config.port, reuse_address=True
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
        """Stop listening, drop every connection, wait for their tasks."""
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

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = Connection(self, reader, writer)
        self.connections.add(connection)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await connection.run()
        except asyncio.CancelledError:
            # stop() cancels handlers; asyncio's stream callback would log a cancelled handler
            connection.abort()
        finally:
            if task is not None:
                self._tasks.discard(task)

    def forget(self, connection: Connection) -> None:
        """Remove a closed connection from the fan-out."""
        self.connections.discard(connection)
        self.subscriptions_changed()

    # ----------------------------------------------------------------- switch side

    def wants(self, event_name: str, subclass: str | None = None) -> bool:
        """Would some connection take an event of this name (and CUSTOM subclass)? The switch
        asks before building a channel or conference event (its filters may still drop it).
        Answers are kept until a subscription changes (`subscriptions_changed`)."""
        key = (event_name, subclass)
        answer = self._wanted.get(key)
        if answer is None:
            answer = any(
                connection.authed
                and not connection.closed
                and connection.subscription.wants_type(event_name, subclass)
                for connection in self.connections
            )
            if len(self._wanted) >= WANTED_KEPT:
                self._wanted.clear()
            self._wanted[key] = answer
        return answer

    def subscriptions_changed(self) -> None:
        """A connection subscribed, unsubscribed, authenticated or went: `wants` asks again."""
        self._wanted.clear()

    def publish(self, event: SimEvent) -> None:
        """Offer one switch event to every connection (each applies its subscription/filters)."""
        for connection in list(self.connections):
            connection.offer(event)

    async def run_api(self, command: str) -> str:
        """The api/response body for `command` (FreeSWITCH answers an empty result as no reply)."""
        if self._is_shutdown_request(command):
            if self.on_shutdown_request is not None:
                self._keep(asyncio.create_task(self.on_shutdown_request(), name="sim-shutdown"))
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
            self._keep(asyncio.create_task(self.on_shutdown_request(), name="sim-shutdown"))
            return
        if self.switch is not None:
            self.switch.background_job(job_uuid, command)

    @staticmethod
    def _is_shutdown_request(command: str) -> bool:
        words = command.lower().split()
        return words[:2] == ["fsctl", "shutdown"] and (len(words) == 2 or words[2] != "cancel")

    def _keep(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ----------------------------------------------------------------- faults

    @property
    def stalled(self) -> bool:
        """Whether a `stall` fault is (or was) set: `wait_unstalled` has something to do."""
        return self._stalled_until > 0.0

    async def wait_unstalled(self) -> None:
        """Sleep while a `stall` fault is in force."""
        while True:
            remaining = self._stalled_until - time.monotonic()
            if remaining <= 0:
                return
            await asyncio.sleep(remaining)

    def stall(self, seconds: float) -> None:
        """Delay every reply and event on every connection for `seconds` real seconds."""
        self._stalled_until = max(self._stalled_until, time.monotonic() + max(0.0, seconds))

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
