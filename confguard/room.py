"""The sans-I/O watch of one member in the room: from its join until its channel hangs up.

An invite's outcome is decided at the join (``joined``, confguard/invite.py); what happens in the
room after that is this machine's: *when* and *why* the member left. It is pure like the invite
machine -- events, api replies and time in, commands out (``SendApi``, ``AddFilter``,
``DelFilter`` from confguard.invite, and ``Left``) -- and it costs one event filter per member
(``Unique-ID`` of the call, handed over by the invite machine), no command while it watches.

Phases (``WatchState``)::

    in_room --del-member (channel alive)--> out_of_room --hangup--> left
    in_room --hangup--> left
    probing --dump: channel alive--> in_room      (adopted after a daemon restart, or resync)
    probing --dump: no such channel--> left (unseen)

Why it left (``Reason``), from the first hangup event (CHANNEL_HANGUP or _COMPLETE):

* ``max_duration`` -- the in-room timer (``sched_hangup +S CAUSE`` of the waiting app) hung it up:
  the hangup cause is the timer's and the channel carries ``confguard_max_duration``;
* ``kicked`` -- it left the room (its del-member) while the channel lived, and the dialplan then
  ended the call: ``conference ROOM kick``/``hup`` of that member;
* ``hung_up`` -- the channel hung up while in the room: the member hung up, a ``uuid_kill``, or the
  conference ended (an ``endconf`` member left: FreeSWITCH hangs the others up, NORMAL_CLEARING);
* ``unseen`` -- the channel was gone when this daemon looked (it left while no daemon watched, e.g.
  across a restart): FreeSWITCH keeps nothing of a channel that ended, so the moment recorded is
  when that was found out, and the cause is unknown.

While the link is down nothing is assumed; ``resync`` asks the switch (``uuid_dump``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from confguard.invite import (
    GRACE_S,
    LOST_REPLY,
    MAX_DURATION_VARIABLE,
    AddFilter,
    DelFilter,
    SendApi,
    UsageError,
    WakeAt,
    build_dump,
)

__all__ = ["Left", "MemberWatch", "Reason", "WatchState"]

_HANGUP_EVENTS = frozenset({"CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE"})
_GONE_STATES = frozenset({"CS_HANGUP", "CS_REPORTING", "CS_DESTROY"})


class WatchState(StrEnum):
    PROBING = "probing"
    IN_ROOM = "in_room"
    OUT_OF_ROOM = "out_of_room"
    LEFT = "left"


class Reason(StrEnum):
    MAX_DURATION = "max_duration"
    KICKED = "kicked"
    HUNG_UP = "hung_up"
    UNSEEN = "unseen"


@dataclass(frozen=True)
class Left:
    """The member has left: why, the hangup cause (None when unseen), and detail."""

    reason: Reason
    cause: str | None
    detail: Mapping[str, object]


WatchCommand = SendApi | AddFilter | DelFilter | WakeAt | Left


class MemberWatch:
    """One joined call, until its hangup. ``after_join`` continues an invite that just joined
    (its Unique-ID filter is in place); ``adopted`` takes over one an earlier daemon left."""

    def __init__(
        self,
        *,
        call_uuid: str,
        max_duration: int | None,
        timer_cause: str,
        now: float,
        state: WatchState,
        grace: float = GRACE_S,
    ) -> None:
        self.call_uuid = call_uuid
        self.max_duration = max_duration
        self.timer_cause = timer_cause
        self.since = now
        self.state = state
        self.grace = grace
        self.reason: Reason | None = None
        self.cause: str | None = None
        self.link_down = False
        self.give_up_at: float | None = None
        self._pending: dict[str, str] = {}
        self._tags = 0

    @classmethod
    def after_join(
        cls, *, call_uuid: str, max_duration: int | None, timer_cause: str, now: float
    ) -> MemberWatch:
        return cls(call_uuid=call_uuid, max_duration=max_duration, timer_cause=timer_cause,
                   now=now, state=WatchState.IN_ROOM)

    @classmethod
    def adopted(
        cls, *, call_uuid: str, max_duration: int | None, timer_cause: str, now: float
    ) -> MemberWatch:
        return cls(call_uuid=call_uuid, max_duration=max_duration, timer_cause=timer_cause,
                   now=now, state=WatchState.PROBING)

    # ---------------------------------------------------------------------------- helpers

    def _api(self, kind: str, command: str) -> SendApi:
        self._tags += 1
        tag = f"{kind}#{self._tags}"
        self._pending[tag] = kind
        return SendApi(command, tag)

    def _leave(self, reason: Reason, cause: str | None, now: float, **detail: object) -> list[
        WatchCommand
    ]:
        if self.state is WatchState.LEFT:
            return []
        self.state = WatchState.LEFT
        self.reason, self.cause = reason, cause
        self._pending.clear()
        full = {"watched_s": round(now - self.since, 3), **detail}
        return [Left(reason, cause, full), DelFilter("Unique-ID", self.call_uuid)]

    def _timer_hangup(self, cause: str | None, fields: Mapping[str, object]) -> bool:
        """Whether the hangup is the in-room timer's: its cause, on a channel it was armed on."""
        return (
            self.max_duration is not None
            and cause == self.timer_cause
            and bool(fields.get(f"variable_{MAX_DURATION_VARIABLE}"))
        )

    # ---------------------------------------------------------------------------- inputs

    def start(self) -> list[WatchCommand]:
        """After a join: nothing to send (the invite handed its Unique-ID filter over).
        Adopted: the filter, then ask the switch whether the channel is still there."""
        if self.state is WatchState.PROBING:
            return [AddFilter("Unique-ID", self.call_uuid), self._api("probe",
                                                                     build_dump(self.call_uuid))]
        return []

    def event(self, headers: Mapping[str, str], now: float) -> list[WatchCommand]:
        if self.state is WatchState.LEFT:
            return []
        if headers.get("Unique-ID") != self.call_uuid:
            raise UsageError(f"event for {headers.get('Unique-ID')!r} routed to the watch of "
                             f"{self.call_uuid}")
        name = headers.get("Event-Name")
        if name in _HANGUP_EVENTS:
            cause = headers.get("Hangup-Cause") or None
            if self._timer_hangup(cause, headers):
                return self._leave(Reason.MAX_DURATION, cause, now, esl_event=name)
            if self.state is WatchState.OUT_OF_ROOM:
                return self._leave(Reason.KICKED, cause, now, esl_event=name)
            return self._leave(Reason.HUNG_UP, cause, now, esl_event=name)
        if (
            name == "CUSTOM"
            and headers.get("Event-Subclass") == "conference::maintenance"
            and headers.get("Action") == "del-member"
            and not headers.get("Hangup-Cause")  # a channel already hanging up carries it
            and self.state in (WatchState.IN_ROOM, WatchState.PROBING)
        ):
            self.state = WatchState.OUT_OF_ROOM
        return []

    def reply(self, tag: str, text: str, now: float) -> list[WatchCommand]:
        if self.state is WatchState.LEFT:
            return []
        if self._pending.pop(tag, None) is None:
            raise UsageError(f"reply for tag {tag!r} that the watch of {self.call_uuid} "
                             "is not awaiting")
        text = text.strip()
        if text.startswith(LOST_REPLY):
            return []  # nothing assumed: the next resync asks again
        if not text.startswith("{"):
            # "-ERR No such channel!": it ended while nobody watched; how is not known.
            return self._leave(Reason.UNSEEN, None, now, reply=text[:200])
        try:
            dump = json.loads(text)
        except ValueError:
            dump = None
        if not isinstance(dump, dict):
            return self._leave(Reason.UNSEEN, None, now, reply=text[:200])
        if str(dump.get("Channel-State", "")) in _GONE_STATES or dump.get(
            "Answer-State"
        ) == "hangup":
            # Hanging up now: its hangup event follows (the filter is in place), else unseen.
            self.give_up_at = now + self.grace
            return [WakeAt(self.give_up_at, "the member's channel is hanging up")]
        in_room = bool(dump.get("variable_conference_member_id"))
        if self.state is WatchState.PROBING:
            self.state = WatchState.IN_ROOM if in_room else WatchState.OUT_OF_ROOM
        elif self.state is WatchState.IN_ROOM and not in_room:
            self.state = WatchState.OUT_OF_ROOM
        return []

    def tick(self, now: float) -> list[WatchCommand]:
        if self.state is WatchState.LEFT or self.give_up_at is None or now < self.give_up_at:
            return []
        if self.link_down:
            return []  # resync asks again
        return self._leave(Reason.UNSEEN, None, now, gave_up="no hangup after the channel "
                           "was seen hanging up")

    def connection_lost(self, now: float) -> list[WatchCommand]:
        self.link_down = True
        return []

    def resync(self, now: float) -> list[WatchCommand]:
        """After a reconnect: the hangup may have fallen in the gap; ask the switch."""
        if self.state is WatchState.LEFT:
            return []
        self.link_down = False
        self.give_up_at = None
        return [self._api("resync", build_dump(self.call_uuid))]
