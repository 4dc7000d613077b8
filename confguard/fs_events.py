"""Invites from inside FreeSWITCH: `CUSTOM confguard::invite` in, `CUSTOM confguard::outcome` out.

Owns the event side of an invite:
- turning an invite event's headers (`ext` or `extensions`, `room`, `timeout`, `key`, ...,
  `max_duration` and the member flags `muted` ... `endconf`; an optional `request_id`; never a
  join target, channel variables, a dial route or webhook URLs) into invite specs through
  the control API's own validation (`confguard.api.specs_from_request`), plus the rooms
  `[events] allowed_rooms` lets an event invite into; whatever fails starts nothing, is logged
  (one line naming the field) and is answered with a `refused` outcome event;
- the subscription and the permanent filter that let the invite event through the daemon's
  per-call filters (remembered by the ESL session, so a reconnect brings both back);
- the outcome events: one `sendevent CUSTOM` per finished invite (the engine's observer), with
  values that cannot become ESL syntax (`outcome_headers`), sent in order by one worker.

An invite event comes from the dialplan's `event` application
(`event Event-Subclass=confguard::invite,Event-Name=CUSTOM,ext=1001,room=test1`), a caller
control's `execute_application`, a Lua script or `sendevent` on any ESL connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

from confguard.api import MAX_EXTENSIONS, specs_from_request
from confguard.config import EventsConfig, InviteConfig
from confguard.esl import EslError, check_sendevent_header
from confguard.invite import BadInput, InviteSpec

log = structlog.get_logger("confguard.fs_events")

INVITE_SUBCLASS = "confguard::invite"
OUTCOME_SUBCLASS = "confguard::outcome"
REFUSED = "refused"  # the outcome of an invite event that started nothing

# Invite-event header -> control API request field. Values arrive as text; numbers are parsed.
TEXT_FIELDS = ("room", "key", "decline_key", "prompt", "caller_id_name", "caller_id_number")
# Not from an event: a join target would send the callee elsewhere than the allowed room,
# channel variables are the operator's (the API's `variables`), a route may dial out of the
# switch (a carrier: anyone who can fire the event could place toll calls), and webhook URLs
# would let the switch side make the daemon POST anywhere. Refused naming the header, never
# ignored: a sender must not believe it got what it asked for.
REFUSED_FIELDS = {"join": "not taken from an event: [invite] join_mode applies",
                  "variables": "not taken from an event",
                  "via": "not taken from an event: [invite] via applies",
                  "notify": "not taken from an event: [webhooks] urls apply"}
NUMBER_FIELDS = ("timeout", "ring_timeout", "max_duration")
# Member flags, as the API takes them (only `true` or `false`); the invite's room is still one
# of [events] allowed_rooms.
FLAG_FIELDS = ("muted", "deaf", "moderator", "endconf")
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9_.:@+-]{1,64}")
_SECONDS_RE = re.compile(r"[0-9]{1,5}")
# What an outcome event's values may hold: nothing FreeSWITCH would read as ESL syntax, and no
# `%` either (FreeSWITCH's plain-event encoding leaves `%` as it is, so a receiver decoding the
# values could not tell `%20` sent from a space sent).
_SAFE_VALUE_RE = re.compile(r"[A-Za-z0-9_.:@+/=,;()\[\] -]{1,256}")
_UNSAFE_CHAR_RE = re.compile(r"[^A-Za-z0-9_.:@+/=,;()\[\] -]")


class EventRefused(Exception):
    """An invite event that starts nothing: the field at fault and why (fixed text, never the
    sender's value, which may be hostile)."""

    def __init__(self, field: str, reason: str, cause: str = "BAD_INPUT") -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.cause = cause


def request_id_of(headers: Mapping[str, str]) -> str | None:
    """The sender's `request_id`, if it gave a valid one (EventRefused for an invalid one)."""
    value = headers.get("request_id")
    if value is None:
        return None
    if not REQUEST_ID_RE.fullmatch(value):
        raise EventRefused("request_id", "1-64 of A-Z a-z 0-9 _ . : @ + -")
    return value


def request_from_event(headers: Mapping[str, str], allowed_rooms: Sequence[str]) -> dict[str, Any]:
    """The control API request body an invite event stands for. Raises EventRefused."""
    single, many = headers.get("ext"), headers.get("extensions")
    if single is not None and many is not None:
        raise EventRefused("ext", "give ext or extensions, not both")
    if single is not None:
        extensions: list[str] = [single]
    elif many is not None:
        # The `event` application splits its data at commas: a list travels space-separated.
        extensions = many.split()
        if len(extensions) > MAX_EXTENSIONS:
            raise EventRefused("extensions", f"at most {MAX_EXTENSIONS} at once")
    else:
        raise EventRefused("ext", "required: the extension to invite (or extensions)")
    for name, reason in REFUSED_FIELDS.items():
        if name in headers:
            raise EventRefused(name, reason)
    body: dict[str, Any] = {"extensions": extensions}
    for name in TEXT_FIELDS:
        if name in headers:
            body[name] = headers[name]
    for name in NUMBER_FIELDS:
        if name in headers:
            if not _SECONDS_RE.fullmatch(headers[name]):
                raise EventRefused(name, "a whole number of seconds")
            body[name] = int(headers[name])
    for name in FLAG_FIELDS:
        if name in headers:
            if headers[name] not in ("true", "false"):
                raise EventRefused(name, "true or false")
            body[name] = headers[name] == "true"
    room = body.get("room")
    if room is None:
        raise EventRefused("room", "required: the conference room")
    if room not in allowed_rooms:
        raise EventRefused("room", "not in [events] allowed_rooms", cause="ROOM_NOT_ALLOWED")
    return body


def specs_from_event(
    headers: Mapping[str, str], allowed_rooms: Sequence[str], defaults: InviteConfig,
    routes: Mapping[str, Any] | None = None,
) -> list[InviteSpec]:
    """Validated invite specs for an invite event, as the API would make them for the same
    request (`routes`: the configured `[routes.<name>]`, which `[invite] via` may name).
    Raises EventRefused naming the field."""
    body = request_from_event(headers, allowed_rooms)
    try:
        return specs_from_request(body, defaults, routes)
    except BadInput as exc:
        field = exc.field
        if field == "extension":  # the API's name for one of the list: the event's header
            field = "ext" if "ext" in headers else "extensions"
        raise EventRefused(field, exc.reason) from None


def safe_value(value: object) -> str | None:
    """`value` as an outcome event's header value: characters outside a small whitelist become
    `_`, at most 256; None for nothing left."""
    if value is None:
        return None
    text = _UNSAFE_CHAR_RE.sub("_", str(value))[:256].strip()
    if not text or not _SAFE_VALUE_RE.fullmatch(text):
        return None
    return text


def outcome_headers(fields: Mapping[str, object]) -> list[tuple[str, str]]:
    """The headers of one `confguard::outcome` event: `Event-Subclass` first, then each of
    `fields` (invite_id, uuid, ext, room, outcome, cause, request_id, field, reason, source)
    that has a value, made safe; every header checked as `sendevent` needs it."""
    headers = [("Event-Subclass", OUTCOME_SUBCLASS)]
    for name, value in fields.items():
        text = safe_value(value)
        if text is None:
            continue
        check_sendevent_header(name, text)  # cannot fail for a safe value; kept as the guard
        headers.append((name, text))
    return headers


class FsEvents:
    """The `[events]` feature on one engine and its ESL session. `await start()` once the
    engine has started; `await stop()` at shutdown."""

    def __init__(
        self,
        engine: Any,
        session: Any,
        config: EventsConfig,
        defaults: Callable[[], InviteConfig],
        *,
        reconnect_wait: float = 5.0,
        routes: Callable[[], Mapping[str, Any]] = dict,
    ) -> None:
        self.engine = engine
        self.session = session
        self.config = config
        self.defaults = defaults
        self.routes = routes  # the configured routes now (SIGHUP reloads them)
        self.reconnect_wait = reconnect_wait
        self._outbox: asyncio.Queue[list[tuple[str, str]]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sender: asyncio.Task[None] | None = None
        self._started = False

    @property
    def enabled(self) -> bool:
        return self.config.invites or self.config.outcomes

    async def start(self) -> None:
        """Subscribe to the invite event and let it through the filters (when invites are on),
        watch the engine's outcomes (when anything is on). Idempotent."""
        if self._started or not self.enabled:
            return
        self._started = True
        if self.config.invites:
            self.engine.add_event_tap(INVITE_SUBCLASS, self._on_invite_event)
            await self.session.subscribe([INVITE_SUBCLASS])
            await self.session.add_filter("Event-Subclass", INVITE_SUBCLASS)
            log.info("fs_events.listening", subclass=INVITE_SUBCLASS,
                     allowed_rooms=list(self.config.allowed_rooms))
        self.engine.add_observer(self._on_update)
        self._sender = asyncio.create_task(self._send_outcomes(), name="confguard-outcome-events")

    async def stop(self) -> None:
        for task in [*self._tasks, *([self._sender] if self._sender else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._sender = None

    # --- invite events ------------------------------------------------------------------------

    def _on_invite_event(self, event: Any) -> None:
        task = asyncio.create_task(self.handle_invite_event(event.headers))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def handle_invite_event(self, headers: Mapping[str, str]) -> list[str]:
        """Start the invites one event asks for; the invite ids started (none when refused)."""
        from confguard.engine import EngineError, NotConnected

        sender = {"sender_uuid": headers.get("Unique-ID"),
                  "sender_event": headers.get("Event-UUID")}
        sender = {k: v for k, v in sender.items() if v}
        request_id: str | None = None
        try:
            request_id = request_id_of(headers)
            specs = specs_from_event(headers, self.config.allowed_rooms, self.defaults(),
                                     self.routes())
        except EventRefused as refused:
            log.warning("fs_event.refused", field=refused.field, reason=refused.reason,
                        cause=refused.cause, request_id=request_id, **sender)
            self._queue({"outcome": REFUSED, "cause": refused.cause, "field": refused.field,
                         "reason": refused.reason, "request_id": request_id,
                         "ext": headers.get("ext"), "room": headers.get("room"),
                         "source": "event"})
            return []
        started: list[str] = []
        for spec in specs:
            origin = {"source": "event", **({"request_id": request_id} if request_id else {})}
            try:
                run = await self.engine.invite(spec, origin=origin)
            except EngineError as exc:
                cause = "NOT_CONNECTED" if isinstance(exc, NotConnected) else "UNAVAILABLE"
                log.warning("fs_event.refused", field="engine", reason=str(exc), cause=cause,
                            ext=spec.extension, room=spec.room, request_id=request_id, **sender)
                self._queue({"outcome": REFUSED, "cause": cause, "ext": spec.extension,
                             "room": spec.room, "request_id": request_id, "source": "event"})
                continue
            started.append(run.invite_id)
            log.info("fs_event.invite", invite=run.invite_id, uuid=run.call_uuid,
                     ext=spec.extension, room=spec.room, request_id=request_id, **sender)
        return started

    # --- outcome events -----------------------------------------------------------------------

    def _on_update(self, run: Any, update: Mapping[str, Any]) -> None:
        """Engine observer: an invite's outcome becomes an outcome event (for every invite with
        `[events] outcomes = true`, else only for invites an event started -- also when a
        restarted daemon adopted it: the origin is in the journal)."""
        outcome = update.get("outcome")
        if not outcome or update.get("state") == "left":  # a member leaving is no new outcome
            return
        from_event = run.origin.get("source") == "event"
        if not (from_event or self.config.outcomes):
            return
        request_id = run.origin.get("request_id")
        self._queue({"invite_id": run.invite_id, "uuid": run.call_uuid,
                     "ext": run.spec.extension, "room": run.spec.room, "outcome": outcome,
                     "cause": update.get("cause"), "request_id": request_id,
                     "source": "event" if from_event else "api"})

    def _queue(self, fields: Mapping[str, object]) -> None:
        self._outbox.put_nowait(outcome_headers(fields))

    async def _send_outcomes(self) -> None:
        """One at a time, in order. While the link is down an event waits up to
        `reconnect_wait` for it, then is dropped with a log line (at most once, no replay)."""
        while True:
            headers = await self._outbox.get()
            fields = dict(headers[1:])
            try:
                if not self.session.connected and not await self.session.wait_connected(
                    self.reconnect_wait
                ):
                    raise EslError("not connected")
                event_uuid = await self.session.sendevent("CUSTOM", headers)
            except (EslError, ValueError) as exc:
                log.warning("fs_event.outcome_not_sent", error=str(exc), **fields)
                continue
            log.info("fs_event.outcome_sent", event_uuid=event_uuid, **fields)
