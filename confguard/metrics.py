"""Prometheus metrics of the daemon, on confguard's own registry, and their HTTP exporter.

Owns: the metric names and label sets, the `Metrics` methods the engine calls at each moment of an
invite, the text exposition (`render()`), and a tiny asyncio HTTP responder serving `GET /metrics`
on the configured address only (off unless the daemon starts it).

The registry is private (`CollectorRegistry()`), never prometheus_client's global one: genesis
registers its own (OpenTelemetry) collectors globally, and tests create many `Metrics` objects.
Every label set is bounded: event names outside the subscribed set count as `other`, command verbs
outside confguard's own as `other`.

Timer lateness: FreeSWITCH's scheduler runs whole-second timers checked about every 0.5 s, so a
`sched_hangup +N` fires between N-1 and N+0.5 s after it was armed (FACTS.md). The histogram
`confguard_timer_fire_delay_seconds` records `hangup_time - (deadline - 1 s)`, i.e. the delay after
the earliest moment FreeSWITCH may fire: 0..1.5 is FreeSWITCH's normal window (1.0 = exactly at the
deadline), above 1.5 means late. The shift keeps observations non-negative, so `_sum` stays a
counter; a value below 0 (impossible per FreeSWITCH's source) is recorded as 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

OUTCOMES = (
    "joined", "timeout", "declined", "hung_up", "busy", "no_answer", "rejected",
    "unreachable", "failed", "cancelled", "lost",
)
# States in which an invite is active (`ended` is not: entering it removes the invite).
ACTIVE_STATES = ("placing", "ringing", "waiting_key", "cancelling", "joining", "joined")
# The events confguard subscribes to; anything else is counted as "other".
SUBSCRIBED_EVENTS = (
    "BACKGROUND_JOB", "CHANNEL_CREATE", "CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA",
    "CHANNEL_ANSWER", "CHANNEL_EXECUTE", "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_HANGUP",
    "CHANNEL_HANGUP_COMPLETE", "CHANNEL_DESTROY", "DTMF", "ADD_SCHEDULE", "DEL_SCHEDULE",
    "EXE_SCHEDULE", "RE_SCHEDULE", "HEARTBEAT", "SHUTDOWN", "CUSTOM",
    "conference::maintenance",
)
COMMAND_VERBS = (
    "originate", "sched_hangup", "sched_del", "sched_api", "uuid_transfer", "uuid_broadcast",
    "uuid_break", "uuid_kill", "uuid_exists", "uuid_getvar", "uuid_setvar", "uuid_dump",
    "show", "conference", "version", "status", "module_exists", "file_exists", "xml_locate",
    "event", "filter", "nixevent", "noevents", "auth", "exit",
)
OTHER = "other"
WEBHOOK_FAILURES = ("attempt", "given_up")

KEY_TO_JOINED_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
# Delay after the earliest moment FreeSWITCH may fire (deadline - 1 s): normal window is 0..1.5.
TIMER_FIRE_DELAY_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 3.0, 5.0, 10.0)
TIMER_EARLIEST_BEFORE_DEADLINE = 1.0
COMMAND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_MAX_REQUEST_HEAD = 8192


class Metrics:
    """confguard's metrics. Each method is cheap and never raises for unknown label values."""

    def __init__(self, *, event_names: Iterable[str] = SUBSCRIBED_EVENTS,
                 command_verbs: Iterable[str] = COMMAND_VERBS):
        self.registry = CollectorRegistry(auto_describe=True)
        self._event_names = frozenset(event_names)
        self._command_verbs = frozenset(command_verbs)
        reg = self.registry
        self.invites_started_total = Counter(
            "confguard_invites_started", "Invites started (originate about to be sent).",
            registry=reg)
        self.invites_finished_total = Counter(
            "confguard_invites_finished", "Invites finished, by final outcome.",
            ["outcome"], registry=reg)
        self.members_left_total = Counter(
            "confguard_members_left", "Joined members that left the room, by reason.",
            ["reason"], registry=reg)
        self.active_invites = Gauge(
            "confguard_active_invites", "Invites in progress, by state.", ["state"], registry=reg)
        self.esl_connected = Gauge(
            "confguard_esl_connected", "1 while the Event Socket session is up, else 0.",
            registry=reg)
        self.esl_reconnects_total = Counter(
            "confguard_esl_reconnects", "Event Socket reconnections after a loss.", registry=reg)
        self.events_received_total = Counter(
            "confguard_events_received",
            "Events received from FreeSWITCH, by Event-Name (CUSTOM by subclass); "
            "names outside the subscribed set count as 'other'.",
            ["event"], registry=reg)
        self.key_to_joined_seconds = Histogram(
            "confguard_key_to_joined_seconds",
            "From the confirming key press to the add-member event.",
            buckets=KEY_TO_JOINED_BUCKETS, registry=reg)
        self.timer_fire_delay_seconds = Histogram(
            "confguard_timer_fire_delay_seconds",
            "When FreeSWITCH's hangup timer fired, in seconds after the earliest moment it may "
            "(deadline - 1 s): 0..1.5 is FreeSWITCH's normal window, 1.0 is the deadline.",
            buckets=TIMER_FIRE_DELAY_BUCKETS, registry=reg)
        self.command_seconds = Histogram(
            "confguard_command_seconds", "ESL command round trip, by command verb.",
            ["verb"], buckets=COMMAND_BUCKETS, registry=reg)
        self.webhooks_delivered_total = Counter(
            "confguard_webhooks_delivered",
            "Webhook events delivered (a 2xx answer), one per event and URL.", registry=reg)
        self.webhooks_failed_total = Counter(
            "confguard_webhooks_failed",
            "Webhook failures: kind=attempt is one POST that failed (retried later), "
            "kind=given_up an event dropped after webhooks.give_up_after.",
            ["kind"], registry=reg)
        self.webhooks_queue_depth = Gauge(
            "confguard_webhooks_queue_depth",
            "Webhook events in the outbox, not yet delivered (one per event and URL).",
            registry=reg)
        self.webhooks_oldest_age_seconds = Gauge(
            "confguard_webhooks_oldest_undelivered_age_seconds",
            "Age of the oldest undelivered webhook event (0 when the outbox is empty).",
            registry=reg)
        self._webhook_failures = {
            kind: self.webhooks_failed_total.labels(kind=kind) for kind in WEBHOOK_FAILURES
        }
        # Children created up front so every series shows (as 0) from the first scrape.
        # The labelled children are kept: `labels()` costs a lock and a tuple per call, and the
        # engine counts every event and every state change.
        self._finished = {o: self.invites_finished_total.labels(outcome=o) for o in OUTCOMES}
        self._active: dict[str, int] = dict.fromkeys(ACTIVE_STATES, 0)
        self._active_gauges = {s: self.active_invites.labels(state=s) for s in ACTIVE_STATES}
        for gauge in self._active_gauges.values():
            gauge.set(0)
        self._events = {name: self.events_received_total.labels(event=name)
                        for name in (*sorted(self._event_names), OTHER)}
        self._other_events = self._events[OTHER]
        self.esl_connected.set(0)
        self._server: asyncio.Server | None = None

    # -- called by the engine ----------------------------------------------------------------

    def invite_started(self) -> None:
        self.invites_started_total.inc()

    def invite_finished(self, outcome: str) -> None:
        outcome = _value(outcome)
        child = self._finished.get(outcome)
        (child or self.invites_finished_total.labels(outcome=OTHER)).inc()

    def member_left(self, reason: str | None) -> None:
        known = ("max_duration", "kicked", "hung_up", "unseen")
        self.members_left_total.labels(reason=reason if reason in known else OTHER).inc()

    def state_changed(self, old: str | None, new: str | None) -> None:
        """Move one invite between states. `old=None`: a new invite; `new` of `ended` (or None):
        the invite is gone. Counts never go below zero, whatever the call order."""
        for state, step in ((old, -1), (new, +1)):
            if state is None:
                continue
            name = _value(state)
            if name not in self._active:
                continue  # "ended" and anything unknown is not an active state
            self._active[name] = max(0, self._active[name] + step)
            self._active_gauges[name].set(self._active[name])

    def esl_state(self, connected: bool) -> None:
        self.esl_connected.set(1 if connected else 0)

    def esl_reconnected(self) -> None:
        self.esl_reconnects_total.inc()

    def event_received(self, name: str) -> None:
        self._events.get(name, self._other_events).inc()

    def key_to_joined(self, seconds: float) -> None:
        self.key_to_joined_seconds.observe(max(0.0, seconds))

    def timer_lateness(self, seconds: float) -> None:
        """`seconds` = hangup time - deadline (negative when FreeSWITCH fired early)."""
        delay = seconds + TIMER_EARLIEST_BEFORE_DEADLINE
        self.timer_fire_delay_seconds.observe(max(0.0, delay))

    def command_done(self, verb: str, seconds: float) -> None:
        verb = verb.split(" ", 1)[0] if verb else OTHER
        self.command_seconds.labels(verb=verb if verb in self._command_verbs else OTHER).observe(
            max(0.0, seconds))

    def webhook_delivered(self) -> None:
        self.webhooks_delivered_total.inc()

    def webhook_failed(self, kind: str) -> None:
        """`attempt` (one failed POST) or `given_up` (an event dropped)."""
        self._webhook_failures.get(kind, self._webhook_failures["attempt"]).inc()

    def watch_webhook_queue(self, probe: Callable[[], tuple[int, float]]) -> None:
        """Read the outbox's depth and oldest age from `probe()` at every scrape."""
        self.webhooks_queue_depth.set_function(lambda: probe()[0])
        self.webhooks_oldest_age_seconds.set_function(lambda: probe()[1])

    def active_count(self) -> int:
        """Invites currently active (for the systemd STATUS= line)."""
        return sum(self._active.values())

    # -- exposition --------------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)

    content_type = CONTENT_TYPE_LATEST

    async def start_server(self, host: str, port: int) -> int:
        """Serve `GET /metrics` on host:port (port 0: any free port); returns the bound port.

        `host` must be an IP address or a host name; nothing else is accepted (no empty string,
        which asyncio would take as "every interface")."""
        if self._server is not None:
            raise RuntimeError("the metrics server is already running")
        check_listen_host(host)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValueError(f"metrics port must be an integer 0..65535, got {port!r}")
        self._server = await asyncio.start_server(self._serve_one, host=host, port=port)
        return self.port or 0

    @property
    def port(self) -> int | None:
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), timeout=2.0)

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5.0)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            if len(head) > _MAX_REQUEST_HEAD:
                await _respond(writer, 431, b"request head too large\n")
                return
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                await _respond(writer, 400, b"bad request\n")
                return
            method, target = parts[0], parts[1].split("?", 1)[0]
            if target != "/metrics":
                await _respond(writer, 404, b"not found; metrics are at /metrics\n")
                return
            if method not in ("GET", "HEAD"):
                await _respond(writer, 405, b"method not allowed\n", extra=b"Allow: GET, HEAD\r\n")
                return
            body = self.render()
            await _respond(writer, 200, body, content_type=self.content_type,
                           head_only=method == "HEAD")
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large"}


async def _respond(writer: asyncio.StreamWriter, status: int, body: bytes, *,
                   content_type: str = "text/plain; charset=utf-8", extra: bytes = b"",
                   head_only: bool = False) -> None:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
    ).encode("latin-1") + extra + b"\r\n"
    writer.write(head if head_only else head + body)
    await writer.drain()


def check_listen_host(host: object) -> str:
    """Accept an IP address literal or a DNS host name; raise ValueError for anything else."""
    if not isinstance(host, str) or not host:
        raise ValueError(f"metrics listen host must be an IP address or host name, got {host!r}")
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    if not _HOSTNAME.match(host):
        raise ValueError(f"metrics listen host must be an IP address or host name, got {host!r}")
    return host


def _value(item: object) -> str:
    value = getattr(item, "value", item)
    return str(value)
