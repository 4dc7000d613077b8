"""The sans-I/O state machine of one invite, and the validated builders of its ESL commands.

Theory of operation
===================

One ``Invite`` follows one outbound call, from the ``originate`` to its single outcome. It owns
nothing but decisions: it never touches a socket, a clock, a logger or asyncio. The engine feeds it
four kinds of input and carries out the commands it returns:

* ``event(headers, body, now)`` -- an ESL event already routed to this invite (``Unique-ID`` or
  ``Task-Group`` equal to ``call_uuid``, or ``Job-UUID`` equal to ``job_uuid``);
* ``reply(tag, text, now)`` -- the ``api/response`` body of a ``SendApi`` it returned earlier. The
  engine owes exactly one reply per ``SendApi``; when the command could not be sent or its answer
  was lost it passes ``LOST_REPLY`` and why, which the machine never takes for the switch's word;
* ``tick(now)`` -- time passing, called at or after every ``WakeAt`` it asked for;
* operator and link news -- ``cancel``, ``connection_lost``, ``resync``, ``give_up``.

Every input returns a list of commands (``SendApi``, ``SendBgapi``, ``AddFilter``, ``DelFilter``,
``WakeAt``) and notifications (``StateChanged``, ``Finished``), in the order they must be acted on.
Time only ever comes in as arguments (``now`` is monotonic seconds, ``wall`` the epoch at start).

**FreeSWITCH keeps the truth that decides an invite, and does the deciding step itself.** The
originate carries everything (``build_originate``): ``api_on_originate`` arms the hangup timer at
invite time, and the answered call runs the waiting app (``build_waiting_app``) inside the switch:
a second timer of the same group, the prompt loop, the key recorded in ``confguard_key``, then --
only after the key -- ``sched_cancel`` of the call's timers and the move into the room, in that
order, on the call's own thread. So:

* a live call that has not been joined always has a hangup task (invariant 1), whether or not
  confguard runs; confguard never arms or deletes a timer itself;
* the call reaches the room only after its timers were cancelled, and never after one fired (a
  fired timer hangs the channel up, which ends the waiting app) (invariant 2); a time limit in the
  room (``max_duration``) is a new task armed after that cancel, the member's, not a waiting one;
* a key pressed while confguard cannot see the switch still counts: the switch joins the call,
  and the machine reads it back (``uuid_dump``: in the room, or ``confguard_key``) (invariant 6);
* waiting costs confguard nothing: no command per waiting call (invariant 8).

confguard watches (DTMF, DEL_SCHEDULE, add-member), probes a join that does not show up, hangs up
on a decline key, an operator cancel or an overdue timer, and reports the outcome.

States (``TRANSITIONS`` below lists every legal move; anything else is ignored, never guessed)::

    placing --channel--> ringing --answer--> waiting_key --key--> cancelling
        --timers gone--> joining --add-member--> joined --> ended
    (placing --answer--> waiting_key when the ringing events were missed; cancelling ->
     joined on add-member when the DEL_SCHEDULE events were missed;
     any state --hangup / originate error / give-up--> ended)

Whose fault is it (as in h11):

* ``BadInput`` -- the user was wrong (a spec field); raised on construction, nothing is ever sent.
* ``UsageError`` -- the caller of this machine was wrong: an event or reply routed to the wrong
  invite, a reply tag never issued or answered twice, an operator cancel after the call joined.
* ``ProtocolViolation`` -- the switch said something impossible for this call: an event without
  ``Event-Name``, a second ``BACKGROUND_JOB`` for our Job-UUID. The machine is left unchanged.
  Events that merely arrive in an unexpected state (duplicates, late ``DEL_SCHEDULE``, a DTMF
  while ringing, CHANNEL_HANGUP followed by CHANNEL_HANGUP_COMPLETE) are ignored: FreeSWITCH
  legitimately sends them.

After ``ended`` every input returns ``[]`` -- except ``cancel`` of a joined call, which raises.
A ``joined`` call keeps its ``Unique-ID`` filter (``watch_handover``): the member's time in the
room, until its hangup, is watched by confguard/room.py (``MemberWatch``), which deletes it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from confguard.routes import DialRoute

__all__ = [
    "KNOWN_HANGUP_CAUSES",
    "AddFilter",
    "BadInput",
    "Command",
    "DelFilter",
    "Finished",
    "Invite",
    "InviteSpec",
    "JoinTarget",
    "Outcome",
    "ProtocolViolation",
    "SendApi",
    "SendBgapi",
    "State",
    "StateChanged",
    "UsageError",
    "WakeAt",
    "build_dial",
    "build_dump",
    "build_kill",
    "build_originate",
    "check_timer_cause",
]

GRACE_S = 3.0
"""Seconds the machine waits beyond a due event (the timer, a kill) before it stops waiting."""

LOST_REPLY = "-ERR confguard:"
"""How the engine answers a ``SendApi`` whose reply was lost (the link dropped, the command
timed out, or it could not be written): the machine never takes it for the switch's answer."""

SETTLE_DELAY = 0.5
"""Seconds after a lost dump answer before the machine asks again (if the link is still up)."""

JOIN_DUE_S = 2 * GRACE_S
"""Seconds after the key by which the switch's join (add-member) is due; then a probe decides."""


class State(StrEnum):
    PLACING = "placing"
    RINGING = "ringing"
    WAITING_KEY = "waiting_key"
    CANCELLING = "cancelling"
    JOINING = "joining"
    JOINED = "joined"
    ENDED = "ended"


class Outcome(StrEnum):
    JOINED = "joined"
    TIMEOUT = "timeout"
    DECLINED = "declined"
    HUNG_UP = "hung_up"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    REJECTED = "rejected"
    UNREACHABLE = "unreachable"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"


# --------------------------------------------------------------------------------------------
# Errors: whose fault it is


class BadInput(ValueError):
    """The user was wrong: a spec field failed validation. Nothing was sent."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value if isinstance(value, str) else repr(value)
        self.reason = reason
        super().__init__(f"{field}: {reason} (got {self.value!r})")


class ProtocolViolation(Exception):
    """The switch said something impossible for this call. The machine did not change."""


class UsageError(RuntimeError):
    """The caller of the machine (engine or operator) was wrong. The machine did not change."""


# --------------------------------------------------------------------------------------------
# Commands (machine -> engine): small immutable values


@dataclass(frozen=True)
class SendApi:
    """Run ``api <command>`` and hand the response body back with ``reply(tag, text, now)``."""

    command: str
    tag: str


@dataclass(frozen=True)
class SendBgapi:
    """Run ``bgapi <command>`` with this Job-UUID; the result comes back as a BACKGROUND_JOB."""

    command: str
    job_uuid: str


@dataclass(frozen=True)
class AddFilter:
    header: str
    value: str


@dataclass(frozen=True)
class DelFilter:
    header: str
    value: str


@dataclass(frozen=True)
class WakeAt:
    """Call ``tick(now)`` at or after ``when`` (monotonic seconds). ``reason`` says why."""

    when: float
    reason: str = ""


@dataclass(frozen=True)
class StateChanged:
    state: State
    previous: State
    detail: Mapping[str, object]


@dataclass(frozen=True)
class Finished:
    outcome: Outcome
    cause: str | None
    detail: Mapping[str, object]


Command = SendApi | SendBgapi | AddFilter | DelFilter | WakeAt | StateChanged | Finished


# --------------------------------------------------------------------------------------------
# Validation

_EXTENSION_RE = re.compile(r"[0-9A-Za-z_.+-]{1,64}")
_NAME_RE = re.compile(r"[0-9A-Za-z_-]{1,64}")
_ROOM_RE = re.compile(r"[0-9A-Za-z_-]{1,64}(?:@[0-9A-Za-z_-]{1,64})?")
_KEYS = frozenset("0123456789*#ABCD")
_PROMPT_RE = re.compile(
    r"(?:[A-Za-z0-9_./][A-Za-z0-9_./-]*|(?:tone_stream|silence_stream)://[A-Za-z0-9%(),;=.@+_-]+)"
)
_PROMPT_MAX = 256
_CALLER_ID_NAME_RE = re.compile(r"[A-Za-z0-9 _.+-]{1,64}")
_CALLER_ID_NUMBER_RE = re.compile(r"[0-9+*#]{1,32}")
_VARIABLE_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_VARIABLE_VALUE_RE = re.compile(r"[A-Za-z0-9_.:;@+/=*#-]{0,256}")
_UUID_RE = re.compile(r"[0-9A-Za-z-]{1,64}")
_INVITE_ID_RE = re.compile(r"[0-9A-Za-z_.-]{1,64}")
MAX_TIMEOUT_S = 3600
MAX_DURATION_S = 86400
MAX_VARIABLES = 32
MEMBER_FLAGS = ("muted", "deaf", "moderator", "endconf")
"""The spec's member flags, in the order they are passed to mod_conference."""
_CONFERENCE_FLAG = {"muted": "mute", "deaf": "deaf", "moderator": "moderator", "endconf": "endconf"}
"""Each member flag as mod_conference names it (conference_utils_set_mflags)."""

# Channel variables a user may never set: FreeSWITCH runs them as code, or confguard owns them.
DENIED_VARIABLE_PREFIXES: tuple[str, ...] = (
    "api_",
    "execute_",
    "exec_",
    "origination_",
    "originate_",
    "ignore_early_media",
    "group_confirm",
    "confguard_",
    "hangup_",
    "bridge_",
    "transfer_",
    "sip_",
    "session_in_hangup_hook",
    "nolocal",
    "bypass_media",
    "proxy_media",
    "park_",
    "continue_on_fail",
    "failure_causes",
    "call_timeout",
    "leg_",
    "fire_",
    "record_",
    "sched_",
    "loopback_",
    "effective_",
    "tod_",
    "media_",
    "dtmf_",
    "playback_",
    "enable_",
    "rtp_",
)

# The Q.850 / FreeSWITCH cause names (switch_channel.c's cause table), upper case.
KNOWN_HANGUP_CAUSES: frozenset[str] = frozenset(
    """
    UNSPECIFIED SUCCESS UNALLOCATED_NUMBER NO_ROUTE_TRANSIT_NET NO_ROUTE_DESTINATION
    CHANNEL_UNACCEPTABLE CALL_AWARDED_DELIVERED NORMAL_CLEARING USER_BUSY NO_USER_RESPONSE
    NO_ANSWER SUBSCRIBER_ABSENT CALL_REJECTED NUMBER_CHANGED REDIRECTION_TO_NEW_DESTINATION
    EXCHANGE_ROUTING_ERROR DESTINATION_OUT_OF_ORDER INVALID_NUMBER_FORMAT FACILITY_REJECTED
    RESPONSE_TO_STATUS_ENQUIRY NORMAL_UNSPECIFIED NORMAL_CIRCUIT_CONGESTION NETWORK_OUT_OF_ORDER
    NORMAL_TEMPORARY_FAILURE SWITCH_CONGESTION ACCESS_INFO_DISCARDED REQUESTED_CHAN_UNAVAIL
    PRE_EMPTED FACILITY_NOT_SUBSCRIBED OUTGOING_CALL_BARRED INCOMING_CALL_BARRED
    BEARERCAPABILITY_NOTAUTH BEARERCAPABILITY_NOTAVAIL SERVICE_UNAVAILABLE
    BEARERCAPABILITY_NOTIMPL CHAN_NOT_IMPLEMENTED FACILITY_NOT_IMPLEMENTED
    SERVICE_NOT_IMPLEMENTED INVALID_CALL_REFERENCE INCOMPATIBLE_DESTINATION
    INVALID_MSG_UNSPECIFIED MANDATORY_IE_MISSING MESSAGE_TYPE_NONEXIST WRONG_MESSAGE IE_NONEXIST
    INVALID_IE_CONTENTS WRONG_CALL_STATE RECOVERY_ON_TIMER_EXPIRE MANDATORY_IE_LENGTH_ERROR
    PROTOCOL_ERROR INTERWORKING ORIGINATOR_CANCEL CRASH SYSTEM_SHUTDOWN LOSE_RACE
    MANAGER_REQUEST BLIND_TRANSFER ATTENDED_TRANSFER ALLOTTED_TIMEOUT USER_CHALLENGE
    MEDIA_TIMEOUT PICKED_OFF USER_NOT_REGISTERED PROGRESS_TIMEOUT INVALID_GATEWAY GATEWAY_DOWN
    INVALID_URL INVALID_PROFILE NO_PICKUP SRTP_READ_ERROR BOWOUT BUSY_EVERYWHERE DECLINE
    DOES_NOT_EXIST_ANYWHERE NOT_ACCEPTABLE UNWANTED NO_IDENTITY BAD_IDENTITY_INFO
    UNSUPPORTED_CERTIFICATE INVALID_IDENTITY STALE_DATE
    """.split()  # noqa: SIM905
)

_NO_ANSWER_CAUSES = frozenset({"NO_ANSWER", "PROGRESS_TIMEOUT", "NO_USER_RESPONSE"})
_UNREACHABLE_CAUSES = frozenset(
    {"SUBSCRIBER_ABSENT", "USER_NOT_REGISTERED", "UNALLOCATED_NUMBER", "NO_ROUTE_DESTINATION"}
)
_HUNG_UP_CAUSES = frozenset({"NORMAL_CLEARING", "NORMAL_UNSPECIFIED"})
# A timer cause that also means something else would make the outcome ambiguous.
_AMBIGUOUS_TIMER_CAUSES = (
    _UNREACHABLE_CAUSES
    | _HUNG_UP_CAUSES
    | {"USER_BUSY", "NO_ANSWER", "PROGRESS_TIMEOUT", "CALL_REJECTED", "ORIGINATOR_CANCEL"}
    | {"SUCCESS", "UNSPECIFIED", "SYSTEM_SHUTDOWN", "LOSE_RACE", "CRASH"}
)


def check_timer_cause(cause: object) -> str:
    """The hangup cause the timer reports: a name FreeSWITCH knows (an unknown one silently
    becomes NORMAL_CLEARING) that no other outcome uses. Raises BadInput."""
    if not isinstance(cause, str) or cause not in KNOWN_HANGUP_CAUSES:
        raise BadInput("hangup_cause", cause, "must be a FreeSWITCH cause name")
    if cause in _AMBIGUOUS_TIMER_CAUSES:
        raise BadInput(
            "hangup_cause", cause,
            "would be mistaken for another outcome; use e.g. ALLOTTED_TIMEOUT",
        )
    return cause


def _check_text(field_name: str, value: object, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str):
        raise BadInput(field_name, value, "must be a string")
    if not pattern.fullmatch(value):
        raise BadInput(field_name, value, f"must be {what}")
    return value


def _check_seconds(field_name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(field_name, value, "must be a whole number of seconds")
    if not 1 <= value <= MAX_TIMEOUT_S:
        raise BadInput(field_name, value, f"must be between 1 and {MAX_TIMEOUT_S} seconds")
    return value


def _check_key(field_name: str, value: object) -> str:
    if not isinstance(value, str) or len(value) != 1 or value not in _KEYS:
        raise BadInput(field_name, value, "must be one DTMF key of 0-9 * # A B C D")
    return value


def validate_variable(name: object, value: object) -> None:
    """Refuse a user channel variable unless both name and value are plainly inert."""
    if not isinstance(name, str) or not _VARIABLE_NAME_RE.fullmatch(name):
        raise BadInput("variables", name, "name must match [a-z][a-z0-9_]{0,63}")
    for prefix in DENIED_VARIABLE_PREFIXES:
        if name.startswith(prefix):
            raise BadInput("variables", name, f"names starting with {prefix!r} are not allowed")
    if not isinstance(value, str) or not _VARIABLE_VALUE_RE.fullmatch(value):
        raise BadInput(
            f"variables.{name}", value, "value must be up to 256 of A-Z a-z 0-9 _.:;@+/=*#-"
        )


@dataclass(frozen=True)
class JoinTarget:
    """Where an accepted call goes: the inline conference ``room[@profile]`` or a dialplan
    ``extension`` in ``context``. ``JoinTarget.inline()`` means the spec's own room."""

    kind: Literal["conference", "dialplan"] = "conference"
    room: str | None = None
    extension: str | None = None
    context: str | None = None

    @classmethod
    def inline(cls, room: str | None = None) -> JoinTarget:
        return cls("conference", room=room)

    @classmethod
    def dialplan(cls, extension: str, context: str = "default") -> JoinTarget:
        return cls("dialplan", extension=extension, context=context)

    def validate(self) -> None:
        if self.kind == "conference":
            if self.room is not None:
                _check_text("join.room", self.room, _ROOM_RE, "room[@profile] of 0-9 A-Z a-z _ -")
        elif self.kind == "dialplan":
            _check_text("join.extension", self.extension, _EXTENSION_RE, "0-9 A-Z a-z _ . + -")
            _check_text("join.context", self.context, _NAME_RE, "0-9 A-Z a-z _ -")
        else:
            raise BadInput("join", self.kind, "must be 'conference' or 'dialplan'")


@dataclass(frozen=True)
class InviteSpec:
    """What the user asked for. Every field is validated on construction (``BadInput``)."""

    extension: str
    room: str
    timeout: int
    ring_timeout: int | None = None
    key: str = "1"
    decline_key: str | None = None
    prompt: str | None = None
    caller_id_name: str | None = None
    caller_id_number: str | None = None
    hangup_cause: str = "ALLOTTED_TIMEOUT"
    join: JoinTarget = field(default_factory=JoinTarget.inline)
    reprompt_interval: float = 5.0
    variables: Mapping[str, str] = field(default_factory=dict)
    # Status webhook URLs of this invite only (confguard.webhooks; never part of an ESL command).
    notify: tuple[str, ...] = ()
    max_duration: int | None = None  # seconds in the room, then FreeSWITCH hangs up
    muted: bool = False
    deaf: bool = False
    moderator: bool = False
    endconf: bool = False
    # The dial route (confguard.routes.DialRoute); None: `user/<extension>`, as always.
    route: DialRoute | None = None

    def __post_init__(self) -> None:
        if self.route is not None:  # the route's placeholder rule first: its message names it
            from confguard.routes import DialRoute

            if not isinstance(self.route, DialRoute):
                raise BadInput("via", self.route, "must be a configured route")
            self.route.fill(self.extension)
        _check_text("extension", self.extension, _EXTENSION_RE, "1-64 of 0-9 A-Z a-z _ . + -")
        _check_text("room", self.room, _ROOM_RE, "room[@profile], each 1-64 of 0-9 A-Z a-z _ -")
        _check_seconds("timeout", self.timeout)
        if self.ring_timeout is not None:
            _check_seconds("ring_timeout", self.ring_timeout)
            if self.ring_timeout > self.timeout:
                raise BadInput("ring_timeout", self.ring_timeout, "must not exceed timeout")
        _check_key("key", self.key)
        if self.decline_key is not None:
            _check_key("decline_key", self.decline_key)
            if self.decline_key == self.key:
                raise BadInput("decline_key", self.decline_key, "must differ from key")
        if self.prompt is not None:
            _check_text("prompt", self.prompt, _PROMPT_RE, "a file path or tone_stream:// URL")
            if len(self.prompt) > _PROMPT_MAX:
                raise BadInput("prompt", self.prompt, f"must be at most {_PROMPT_MAX} characters")
        if self.caller_id_name is not None:
            _check_text(
                "caller_id_name", self.caller_id_name, _CALLER_ID_NAME_RE,
                "1-64 of A-Z a-z 0-9 space _ . + -",
            )
        if self.caller_id_number is not None:
            _check_text(
                "caller_id_number", self.caller_id_number, _CALLER_ID_NUMBER_RE,
                "1-32 of 0-9 + * #",
            )
        check_timer_cause(self.hangup_cause)
        if not isinstance(self.join, JoinTarget):
            raise BadInput("join", self.join, "must be a JoinTarget")
        self.join.validate()
        interval = self.reprompt_interval
        if isinstance(interval, bool) or not isinstance(interval, int | float):
            raise BadInput("reprompt_interval", interval, "must be a number of seconds")
        if not (math.isfinite(interval) and 0.5 <= interval <= MAX_TIMEOUT_S):
            raise BadInput("reprompt_interval", interval, "must be between 0.5 and 3600 seconds")
        if not isinstance(self.variables, Mapping):
            raise BadInput("variables", self.variables, "must be a mapping of name to value")
        if len(self.variables) > MAX_VARIABLES:
            raise BadInput("variables", str(len(self.variables)), f"at most {MAX_VARIABLES}")
        for name, value in self.variables.items():
            validate_variable(name, value)
        object.__setattr__(self, "variables", MappingProxyType(dict(self.variables)))
        object.__setattr__(self, "notify", _check_notify(self.notify) if self.notify else ())
        if self.max_duration is not None:
            bound: object = self.max_duration
            if isinstance(bound, bool) or not isinstance(bound, int):
                raise BadInput("max_duration", bound, "must be a whole number of seconds")
            if not 1 <= bound <= MAX_DURATION_S:
                raise BadInput(
                    "max_duration", bound, f"must be between 1 and {MAX_DURATION_S} seconds"
                )
        for name in MEMBER_FLAGS:
            if type(getattr(self, name)) is not bool:
                raise BadInput(name, getattr(self, name), "must be true or false")
        if self.member_flags and self.join.kind != "conference":
            raise BadInput(
                self.member_flags[0], True, "member flags need the inline conference join"
            )

    @property
    def effective_ring_timeout(self) -> int:
        return self.timeout if self.ring_timeout is None else self.ring_timeout

    @property
    def member_flags(self) -> tuple[str, ...]:
        """The member flags that are set (``muted``, ``deaf``, ``moderator``, ``endconf``)."""
        return tuple(name for name in MEMBER_FLAGS if getattr(self, name))

    @property
    def conference_name(self) -> str | None:
        """The conference the call joins (without ``@profile``), None for a dialplan target."""
        if self.join.kind != "conference":
            return None
        return (self.join.room or self.room).split("@", 1)[0]


def _check_notify(urls: object) -> tuple[str, ...]:
    from confguard.webhooks import MAX_NOTIFY_URLS, BadUrl, check_url

    if isinstance(urls, str) or not isinstance(urls, list | tuple):
        raise BadInput("notify", str(urls)[:80], "a list of http(s) URLs")
    if len(urls) > MAX_NOTIFY_URLS:
        raise BadInput("notify", str(len(urls)), f"at most {MAX_NOTIFY_URLS} URLs per invite")
    checked: list[str] = []
    for url in urls:
        try:
            checked.append(check_url(url))
        except BadUrl as exc:
            raise BadInput("notify", str(url)[:80], str(exc)) from None
    return tuple(dict.fromkeys(checked))


# --------------------------------------------------------------------------------------------
# Command builders: only validated values go in, one ESL command line comes out.


def _uuid(value: str) -> str:
    if not _UUID_RE.fullmatch(value):
        raise UsageError(f"not a channel/job uuid: {value!r}")
    return value


def build_originate(
    spec: InviteSpec, *, call_uuid: str, invite_id: str, wall_deadline: int
) -> str:
    """``originate {vars}<dial> '<waiting app>' inline`` (``build_dial``): the hangup timer
    armed at invite time (``api_on_originate``), and the answered call running
    ``build_waiting_app`` inside FreeSWITCH (the prompt, the key into ``confguard_key``, the
    timers cancelled, the join)."""
    uuid = _uuid(call_uuid)
    if not _INVITE_ID_RE.fullmatch(invite_id):
        raise UsageError(f"invite_id must be 1-64 of 0-9 A-Z a-z _ . -: {invite_id!r}")
    parts = [
        f"origination_uuid={uuid}",
        f"originate_timeout={spec.effective_ring_timeout}",
        "ignore_early_media=true",
        f"confguard_invite={invite_id}",
        f"confguard_room={spec.room}",
        f"confguard_deadline={int(wall_deadline)}",
    ]
    if spec.caller_id_name is not None:
        parts.append(f"origination_caller_id_name='{spec.caller_id_name}'")
    if spec.caller_id_number is not None:
        parts.append(f"origination_caller_id_number={spec.caller_id_number}")
    if spec.max_duration is not None:
        parts.append(f"{MAX_DURATION_VARIABLE}={int(spec.max_duration)}")
    parts.extend(f"{name}={value}" for name, value in spec.variables.items())
    parts.append(f"api_on_originate='sched_hangup +{spec.timeout} {uuid} {spec.hangup_cause}'")
    return (
        "originate {" + ",".join(parts) + "}" + build_dial(spec) + " " + build_waiting_app(spec)
    )


def build_dial(spec: InviteSpec) -> str:
    """Where the call goes: ``user/<ext>``, or the spec's route filled with its target."""
    if spec.route is None:
        return "user/" + spec.extension
    return spec.route.fill(spec.extension)


KEY_VARIABLE = "confguard_key"
"""The channel variable in which FreeSWITCH itself records the key the callee pressed
(``play_and_get_digits`` of the waiting app): set the moment the key comes, whether or not
confguard can see the switch, and read back by ``uuid_dump`` on resync and adoption. A refused
key (e.g. the decline key) lands in ``confguard_key_invalid``."""

MAX_DURATION_VARIABLE = "confguard_max_duration"
"""The channel variable that says the call's time in the room is bounded (its seconds): set by
the originate, so that the hangup of its in-room timer (``sched_hangup +S CAUSE`` after the
join's ``sched_cancel``) can be told from any other (``room.left_reason``)."""

APP_SEPARATOR = "~"
"""The inline dialplan's application separator (``m:~:``): in no validated value, no app
argument and no member flag list (which uses ``|``)."""

INVALID_PROMPT = "silence_stream://250"
"""What ``play_and_get_digits`` plays after a key that is not the key."""


def build_join_app(spec: InviteSpec) -> str:
    """The dialplan application that moves an accepted call to its target."""
    if spec.join.kind == "dialplan":
        return f"transfer:{spec.join.extension} XML {spec.join.context}"
    flags = "|".join(_CONFERENCE_FLAG[name] for name in spec.member_flags)
    suffix = "+flags{" + flags + "}" if flags else ""
    return f"conference:{spec.join.room or spec.room}{suffix}"


def build_waiting_app(spec: InviteSpec) -> str:
    """The inline dialplan the answered call runs inside FreeSWITCH: the whole "key -> cancel
    the timer -> join" step, so that it holds whether or not confguard can see the switch::

        'm:~:sched_hangup:+T CAUSE
            ~play_and_get_digits:1 1 TRIES MS TERM PROMPT INVALID confguard_key ^[K]$ MS park inline
            ~sched_cancel[~sched_hangup:+S CAUSE]
            ~conference:ROOM[+flags{mute|deaf|moderator|endconf}]' inline

    * ``sched_hangup +T`` (the dialplan app) arms a second hangup task of the call's group at the
      answer: the call stays bounded even if ``api_on_originate``'s task was never armed. The
      first task still ends the call at the invite's deadline; this one at most T after answer.
    * ``play_and_get_digits`` plays the prompt and waits ``MS`` for one key, ``TRIES`` times: the
      re-prompt loop runs in the switch. Only the key matches the regex: FreeSWITCH stores it in
      ``confguard_key`` and goes on to the next app; any other key is refused (stored in
      ``confguard_key_invalid``) and retried. ``TRIES`` is one per second of the timeout plus one
      and each try lasts at least 1 s, so the loop outlasts the timers; should it ever run out,
      its failure transfer parks the call (``park inline``) -- it never reaches the join.
    * ``sched_cancel`` (no argument: the call's own group, which holds both hangup tasks) runs
      only after the key, on the call's thread, before ``conference``: the call can never be in
      the room with a timer pending, and a timer that fired first has hung the channel up, which
      ends the dialplan before the join.
    * with ``max_duration`` S, ``sched_hangup +S`` after ``sched_cancel`` arms the member's time
      in the room: a new task of the call's group (the cancel already took the old ones), inside
      FreeSWITCH, so the bound holds whether or not confguard runs. It hangs up with the timer's
      cause; ``confguard_max_duration`` (set by the originate) tells that hangup from others.
    * member flags go the way mod_conference's app reads them: ``ROOM+flags{a|b}``.
    * ``m:~:`` makes ``~`` the inline dialplan's separator (mod_dptools' inline_dialplan_hunt):
      a prompt may contain commas (``tone_stream://%(250,250,440)``) and the flag list ``|``;
      ``~`` is in no validated value, nor are the single quotes that group the extension.
    The terminator is a DTMF key that is neither the key nor the decline key (a terminator press
    ends a try with no digit: it is retried).
    """
    keys = spec.key + (spec.decline_key or "")
    terminator = next(k for k in "#*DC" if k not in keys)
    tries = spec.timeout + 1
    wait_ms = max(1000, round(spec.reprompt_interval * 1000))
    prompt = spec.prompt if spec.prompt is not None else "silence"
    if not _PROMPT_RE.fullmatch(prompt) or len(prompt) > _PROMPT_MAX:
        raise UsageError(f"prompt not validated: {prompt!r}")
    if spec.hangup_cause not in KNOWN_HANGUP_CAUSES:
        raise UsageError(f"unknown cause {spec.hangup_cause!r}")
    collect = (
        f"play_and_get_digits:1 1 {tries} {wait_ms} {terminator} {prompt} {INVALID_PROMPT} "
        f"{KEY_VARIABLE} ^[{spec.key}]$ {wait_ms} park inline"
    )
    apps = [f"sched_hangup:+{spec.timeout} {spec.hangup_cause}", collect, "sched_cancel"]
    if spec.max_duration is not None:
        apps.append(f"sched_hangup:+{int(spec.max_duration)} {spec.hangup_cause}")
    apps.append(build_join_app(spec))
    if any(APP_SEPARATOR in app or "'" in app for app in apps):
        raise UsageError(f"an application holds the separator {APP_SEPARATOR!r}: {apps!r}")
    return f"'m:{APP_SEPARATOR}:" + APP_SEPARATOR.join(apps) + "' inline"


def build_kill(call_uuid: str, cause: str | None = None) -> str:
    if cause is None:
        return f"uuid_kill {_uuid(call_uuid)}"
    if cause not in KNOWN_HANGUP_CAUSES:
        raise UsageError(f"unknown cause {cause!r}")
    return f"uuid_kill {_uuid(call_uuid)} {cause}"


def build_dump(call_uuid: str) -> str:
    return f"uuid_dump {_uuid(call_uuid)} json"


# --------------------------------------------------------------------------------------------
# The transition table. Inputs are what the machine concluded from an event/reply/tick.


class Input(StrEnum):
    CHANNEL = "channel"  # CHANNEL_CREATE / PROGRESS / PROGRESS_MEDIA, resync says ringing
    ANSWER = "answer"  # CHANNEL_ANSWER, BACKGROUND_JOB +OK, resync says answered
    KEY = "key"  # the key: its DTMF event, or confguard_key in a dump
    DELETED = "deleted"  # the last hangup task of the call is gone after the key (DEL_SCHEDULE)
    MEMBER = "member"  # conference::maintenance add-member, resync finds it in the room


TRANSITIONS: Mapping[State, Mapping[Input, State]] = {
    State.PLACING: {
        Input.CHANNEL: State.RINGING,
        Input.ANSWER: State.WAITING_KEY,
    },
    State.RINGING: {Input.ANSWER: State.WAITING_KEY},
    State.WAITING_KEY: {Input.KEY: State.CANCELLING},
    State.CANCELLING: {Input.DELETED: State.JOINING},
    State.JOINING: {Input.MEMBER: State.JOINED},
    State.JOINED: {},
    State.ENDED: {},
}
"""Every move except the one to ``ended``, which any state may make (hangup, give-up)."""

_CHANNEL_EVENTS = frozenset({"CHANNEL_CREATE", "CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA"})
_HANGUP_EVENTS = frozenset({"CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE"})
_TIMER_DESC = "switch_ivr_schedule_hangup"
_NO_SUCH_CHANNEL = "-ERR No such channel"
# One filter per call. Its BACKGROUND_JOB passes the connection's permanent Event-Name filter,
# and so do the timers' ADD_SCHEDULE / DEL_SCHEDULE (they carry Task-Group, not Unique-ID):
# confguard.esl.PERMANENT_FILTERS. Two filter round trips a call instead of six.
_FILTER_HEADERS = ("Unique-ID",)
_UNSEEN_END = "the call ended before this daemon saw it alive (adopted)"


class Invite:
    """One invite's decisions. See the module docstring for the theory of operation."""

    # Thousands live at once (every waiting callee): no per-instance dict.
    __slots__ = (
        "_pending",
        "_tag_counter",
        "adopted",
        "adopted_from",
        "answered",
        "call_uuid",
        "cancel_requested",
        "cause",
        "channel_seen",
        "connection_lost_at",
        "deadline",
        "declined",
        "give_up_at",
        "grace",
        "invite_id",
        "job_cause",
        "job_result",
        "job_uuid",
        "join_probe_at",
        "kill_confirmed",
        "kill_sent",
        "outcome",
        "safety_kill_sent",
        "safety_probe_sent",
        "seen_alive",
        "settle_at",
        "spec",
        "started",
        "started_at",
        "state",
        "timer_task_seen",
        "timer_tasks",
        "verdict",
        "wall_deadline",
        "watch_handover",
    )

    def __init__(
        self,
        spec: InviteSpec,
        *,
        call_uuid: str,
        job_uuid: str,
        invite_id: str,
        now: float,
        wall: float,
        grace: float = GRACE_S,
    ) -> None:
        self.spec = spec
        self.call_uuid = _uuid(call_uuid)
        self.job_uuid = _uuid(job_uuid)
        if not _INVITE_ID_RE.fullmatch(invite_id):
            raise UsageError(f"invite_id must be 1-64 of 0-9 A-Z a-z _ . -: {invite_id!r}")
        self.invite_id = invite_id
        self.started_at = now
        self.wall_deadline = int(wall) + spec.timeout
        self.deadline = now + spec.timeout
        self.grace = grace
        self.state = State.PLACING
        self.outcome: Outcome | None = None
        self.cause: str | None = None
        # What the machine has learnt so far.
        self.started = False
        self.adopted = False  # taken over from an earlier run of the daemon (adopt())
        # The last state that run journalled; `placing` (and a fresh invite) means the channel
        # may not exist yet, so "no such channel" proves nothing.
        self.adopted_from = State.PLACING
        # An adopted invite has seen its call alive itself (a channel event, the answer, or a
        # uuid_dump saying ringing/early/answered), so it knows whether the call was answered.
        # Until then a hangup cannot be mapped to an outcome: the call ended unseen -> lost.
        self.seen_alive = False
        self.channel_seen = False
        self.answered = False
        # Live Task-IDs of our hangup timers (ADD_SCHEDULE): one or two, so a tuple (a set is
        # 216 bytes, and thousands of invites wait at once).
        self.timer_tasks: tuple[str, ...] = ()
        self.timer_task_seen = False  # any ADD_SCHEDULE of ours ever
        self.declined = False
        self.cancel_requested = False
        self.kill_sent = False
        self.kill_confirmed = False  # some uuid_kill answered +OK
        self.safety_probe_sent = False  # the timer is overdue: the switch was asked first
        self.safety_kill_sent = False
        self.give_up_at: float | None = None  # after a kill: finish by then whatever happens
        self.verdict: tuple[Outcome, str | None] | None = None  # outcome decided before hangup
        self.job_result: str | None = None
        self.job_cause: str | None = None
        self.connection_lost_at: float | None = None
        self.join_probe_at: float | None = None  # after the key: the member is due by then
        self.settle_at: float | None = None  # a dump's answer was lost: ask again then
        self._pending: dict[str, str] = {}  # tag -> kind of every SendApi awaiting its reply
        self._tag_counter = 0
        # Joined: the Unique-ID filter was left in place for the member's watch in the room.
        self.watch_handover = False

    # ---------------------------------------------------------------------------- helpers

    def _elapsed(self, now: float) -> float:
        return round(now - self.started_at, 3)

    def _api(self, kind: str, command: str) -> SendApi:
        self._tag_counter += 1
        tag = f"{kind}#{self._tag_counter}"
        self._pending[tag] = kind
        return SendApi(command, tag)

    def _move(self, to: State, now: float, /, **detail: object) -> StateChanged:
        previous = self.state
        self.state = to
        return StateChanged(to, previous, {"elapsed_s": self._elapsed(now), **detail})

    def _fire(self, inp: Input, now: float, /, **detail: object) -> list[Command]:
        """Apply one table transition; returns [] when the table has no move for this input."""
        target = TRANSITIONS[self.state].get(inp)
        if target is None:
            return []
        return [self._move(target, now, **detail)]

    def _finish(
        self, outcome: Outcome, cause: str | None, now: float, /, **detail: object
    ) -> list[Command]:
        if self.state is State.ENDED:
            return []
        self.outcome = outcome
        self.cause = cause
        self._pending.clear()
        full = {"elapsed_s": self._elapsed(now), "answered": self.answered, **detail}
        commands: list[Command] = [Finished(outcome, cause, full)]
        if self.started:
            # A joined call is watched on in the room (confguard/room.py, until its hangup):
            # its Unique-ID filter is handed over to that watch, the others go.
            self.watch_handover = outcome is Outcome.JOINED
            commands.extend(
                DelFilter(header, value)
                for header, value in zip(_FILTER_HEADERS, self._filter_values(), strict=True)
                if not (self.watch_handover and header == "Unique-ID")
            )
        commands.append(self._move(State.ENDED, now, outcome=str(outcome), cause=cause))
        return commands

    def _filter_values(self) -> tuple[str]:
        return (self.call_uuid,)

    def _seconds_left(self, now: float) -> int:
        return max(1, math.ceil(self.deadline - now))

    def _kill(self, cause: str | None, now: float, why: str) -> list[Command]:
        """Ask FreeSWITCH to hang up, and stop waiting for the hangup after one grace period."""
        self.kill_sent = True
        self.give_up_at = now + self.grace
        return [
            self._api("kill", build_kill(self.call_uuid, cause)),
            WakeAt(self.give_up_at, f"give up waiting for the hangup after {why}"),
        ]

    def _kill_cause(self) -> str | None:
        if self.declined:
            return "CALL_REJECTED"
        if self.cancel_requested:
            return "ORIGINATOR_CANCEL"
        if self.safety_kill_sent:
            return self.spec.hangup_cause
        return None

    def _known_outcome(self) -> tuple[Outcome, str | None] | None:
        """The outcome already decided by what we did or learnt, without a hangup event."""
        if self.declined:
            return Outcome.DECLINED, "CALL_REJECTED"
        if self.cancel_requested:
            return Outcome.CANCELLED, "ORIGINATOR_CANCEL"
        if self.verdict is not None:
            return self.verdict
        if self.kill_confirmed and self.safety_kill_sent:
            outcome = Outcome.TIMEOUT if self.answered else Outcome.NO_ANSWER
            return outcome, self.spec.hangup_cause
        return None

    def _give_up(self, now: float, why: str, **detail: object) -> list[Command]:
        """No hangup event is coming: finish with what is known, else ``lost``."""
        known = self._known_outcome()
        if known is None:
            return self._finish(Outcome.LOST, None, now, gave_up=why, **detail)
        return self._finish(*known, now, gave_up=why, **detail)

    def _on_answer(self, now: float, source: str) -> list[Command]:
        """The callee answered: FreeSWITCH now runs the waiting app (build_waiting_app), which
        arms a second hangup timer itself, prompts, and waits for the key. Nothing to send."""
        self.channel_seen = True
        self.seen_alive = True
        if self.answered:
            return []
        self.answered = True
        left = self._seconds_left(now)
        commands = self._fire(Input.ANSWER, now, source=source, seconds_left=left)
        if self.cancel_requested and not self.kill_sent:
            return commands + self._kill("ORIGINATOR_CANCEL", now, "operator cancel")
        return commands

    def _map_cause(self, cause: str | None) -> Outcome:
        """The outcome of a call that ended with ``cause`` and nothing decided beforehand."""
        if cause is not None and cause == self.spec.hangup_cause:
            return Outcome.TIMEOUT if self.answered else Outcome.NO_ANSWER
        if not self.answered:
            # Causes that describe reaching the callee mean that only before the answer.
            if cause == "USER_BUSY":
                return Outcome.BUSY
            if cause in _NO_ANSWER_CAUSES:
                return Outcome.NO_ANSWER
            if cause in _UNREACHABLE_CAUSES:
                return Outcome.UNREACHABLE
            if cause == "CALL_REJECTED":
                return Outcome.REJECTED
            return Outcome.FAILED
        if cause in _HUNG_UP_CAUSES:
            return Outcome.HUNG_UP
        # After the answer, e.g. NO_ROUTE_DESTINATION from a join target that does not exist.
        return Outcome.FAILED

    def _decide(self, cause: str | None) -> tuple[Outcome, str | None]:
        """Outcome at the hangup: what we did first (decline, cancel, failure), then the cause."""
        if self.declined:
            return Outcome.DECLINED, cause
        if self.cancel_requested:
            return Outcome.CANCELLED, cause
        if self.verdict is not None:
            return self.verdict
        return self._map_cause(cause), cause

    # ---------------------------------------------------------------------------- inputs

    def start(self) -> list[Command]:
        """Filters first (so no event of the call can slip past), then the originate."""
        if self.started:
            raise UsageError("start() called twice")
        self.started = True
        command = build_originate(
            self.spec,
            call_uuid=self.call_uuid,
            invite_id=self.invite_id,
            wall_deadline=self.wall_deadline,
        )
        return [
            *(
                AddFilter(header, value)
                for header, value in zip(_FILTER_HEADERS, self._filter_values(), strict=True)
            ),
            SendBgapi(command, self.job_uuid),
            StateChanged(
                State.PLACING,
                State.PLACING,
                {
                    "elapsed_s": 0.0,
                    "extension": self.spec.extension,
                    "room": self.spec.room,
                    "timeout": self.spec.timeout,
                    "seconds_left": self.spec.timeout,
                },
            ),
            WakeAt(self.deadline + self.grace, "safety net: the FreeSWITCH timer is overdue"),
        ]

    def adopt(self, now: float, last_state: State | str = State.WAITING_KEY) -> list[Command]:
        """Take over an invite that an earlier run of the daemon started (its journal row).

        The originate went out back then and the call's events since are lost, so instead of
        originating: the call's filters, then ``uuid_dump`` as after a reconnect. The dump decides:
        no channel -> ``lost`` (unless the journal's ``last_state`` is ``placing``: the originate
        may still be in FreeSWITCH's queue, so its job, its events or the safety net decide);
        in a conference -> ``joined``; answered with the key recorded in
        ``confguard_key`` -> the switch is joining it (``cancelling``); answered without -> waiting
        for the key (the switch keeps its timers and its prompt loop); ringing -> ringing.

        Until the machine has seen the call alive itself (the dump, or a channel event), it does
        not know what happened while no daemon watched -- not even whether the call was answered
        -- so the end of a call it never saw alive is ``lost`` (or what confguard itself decided,
        e.g. an operator cancel), never an outcome mapped from the hangup cause. This matters
        because the filters go out before the dump: the tail of a hangup that began while no
        daemon ran (CHANNEL_HANGUP_COMPLETE, the originate's ``BACKGROUND_JOB -ERR``) can reach
        the invite before the dump's ``-ERR No such channel!``; so can a dump of a channel that
        is already hanging up, followed by its hangup event.
        """
        if self.started:
            raise UsageError("adopt() on an invite that was started")
        self.started = True
        self.adopted = True
        self.adopted_from = State(last_state)
        return [
            *(
                AddFilter(header, value)
                for header, value in zip(_FILTER_HEADERS, self._filter_values(), strict=True)
            ),
            self._api("resync", build_dump(self.call_uuid)),
            WakeAt(self.deadline + self.grace, "safety net: the FreeSWITCH timer is overdue"),
        ]

    def event(self, headers: Mapping[str, str], body: str | None, now: float) -> list[Command]:
        if self.state is State.ENDED:
            return []
        name = headers.get("Event-Name")
        if not name:
            raise ProtocolViolation(f"event without Event-Name for invite {self.invite_id}")
        unique_id = headers.get("Unique-ID")
        addressed = (
            unique_id == self.call_uuid
            or headers.get("Task-Group") == self.call_uuid
            or headers.get("Job-UUID") == self.job_uuid
        )
        if not addressed:
            raise UsageError(f"{name} event routed to invite {self.invite_id} is not for it")
        if name == "BACKGROUND_JOB":
            if headers.get("Job-UUID") != self.job_uuid:
                return []
            return self._on_job(body or "", now)
        if name in ("ADD_SCHEDULE", "DEL_SCHEDULE"):
            if headers.get("Task-Group") != self.call_uuid:
                return []
            return self._on_schedule(name, headers, now)
        if unique_id != self.call_uuid:
            return []  # e.g. a job event quoting our uuid in another header
        if name in _CHANNEL_EVENTS:
            self.channel_seen = True
            self.seen_alive = True
            commands = self._fire(Input.CHANNEL, now, event=name)
            if self.cancel_requested and not self.kill_sent:
                commands += self._kill("ORIGINATOR_CANCEL", now, "operator cancel")
            return commands
        if name == "CHANNEL_ANSWER":
            return self._on_answer(now, name)
        if name == "DTMF":
            return self._on_digit(headers.get("DTMF-Digit", ""), now)
        if name in _HANGUP_EVENTS:
            cause = headers.get("Hangup-Cause") or self.job_cause
            if self._was_in_the_room(headers):
                # The hangup carries the channel's variables: the switch had put the call in
                # the room (its key and add-member fell in a gap), and it has left it since.
                self.answered = self.seen_alive = True
                moves = self._fire(Input.ANSWER, now, source=name)
                moves += self._fire(Input.KEY, now, source="switch")
                return moves + self._joined(now, via=name, hangup_cause=cause)
            if self.adopted and not self.seen_alive:
                return self._give_up(now, _UNSEEN_END, event=name, hangup_cause=cause)
            outcome, decided_cause = self._decide(cause)
            return self._finish(outcome, decided_cause, now, event=name, hangup_cause=cause)
        if name == "CUSTOM" and headers.get("Event-Subclass") == "conference::maintenance":
            return self._on_conference(headers, now)
        return []

    def _was_in_the_room(self, fields: Mapping[str, object]) -> bool:
        """Whether channel variables (an event's ``variable_*`` headers, a dump) show the call
        was put in the room: set by the conference application, kept until the channel ends."""
        room = fields.get("variable_conference_name")
        if not room or not fields.get("variable_conference_member_id"):
            return False
        expected = self.spec.conference_name
        return expected is None or room == expected

    def _on_job(self, body: str, now: float) -> list[Command]:
        if self.job_result is not None:
            raise ProtocolViolation(f"second BACKGROUND_JOB for job {self.job_uuid}")
        result = body.strip()
        self.job_result = result
        if result.startswith("+OK"):
            # ignore_early_media=true: the originate succeeds only once the callee answered.
            return self._on_answer(now, "BACKGROUND_JOB")
        cause = result[4:].strip() if result.startswith("-ERR") else result
        self.job_cause = cause or None
        if self.channel_seen:
            return []  # the hangup event decides; job_cause stands in if it lacks a cause
        if self.adopted and not self.seen_alive:
            # The originate of an earlier run ended (answered or not: unknown) before we saw it.
            return self._give_up(now, _UNSEEN_END, event="BACKGROUND_JOB", reply=result)
        outcome, decided_cause = self._decide(cause or None)
        return self._finish(outcome, decided_cause, now, event="BACKGROUND_JOB", reply=result)

    def _on_schedule(self, name: str, headers: Mapping[str, str], now: float) -> list[Command]:
        if headers.get("Task-Desc") != _TIMER_DESC:
            return []
        task_id = headers.get("Task-ID", "")
        if name == "ADD_SCHEDULE":
            if self.state in (State.CANCELLING, State.JOINING, State.JOINED):
                return []  # a late event of a task the switch already cancelled
            if task_id not in self.timer_tasks:
                self.timer_tasks += (task_id,)
            self.timer_task_seen = True
            return []
        self.timer_tasks = tuple(task for task in self.timer_tasks if task != task_id)
        # The switch deletes a hangup task when it fires (the hangup follows) or when the
        # waiting app cancels it after the key (sched_cancel; the join follows). Nothing to
        # do either way -- except to note that, after the key, the timers are gone.
        if self.state is State.CANCELLING and not self.timer_tasks:
            return self._fire(Input.DELETED, now, task_id=task_id)
        return []

    def _on_digit(self, digit: str, now: float, **detail: object) -> list[Command]:
        """The key or the decline key, from a DTMF event or from what a dump shows recorded."""
        if self.state is not State.WAITING_KEY or self.declined or self.kill_sent:
            return []
        if digit == self.spec.key:
            # FreeSWITCH's waiting app recorded it and now cancels the call's timers itself,
            # then moves it into the room (build_waiting_app); confguard only watches.
            self.join_probe_at = now + JOIN_DUE_S
            return [
                *self._fire(
                    Input.KEY, now, digit=digit, seconds_left=self._seconds_left(now), **detail
                ),
                WakeAt(self.join_probe_at, "add-member overdue: probe the channel"),
            ]
        if self.spec.decline_key is not None and digit == self.spec.decline_key:
            self.declined = True
            return self._kill("CALL_REJECTED", now, "decline key")
        return []

    def _on_conference(self, headers: Mapping[str, str], now: float) -> list[Command]:
        if headers.get("Action") != "add-member":
            return []
        if self.state not in (State.CANCELLING, State.JOINING):
            return []
        expected = self.spec.conference_name
        conference = headers.get("Conference-Name")
        if expected is not None and conference != expected:
            return []
        return self._joined(now, conference=conference, member_id=headers.get("Member-ID"))

    def _joined(self, now: float, **detail: object) -> list[Command]:
        """Into the room. Its timers were cancelled before the join (the waiting app's
        sched_cancel runs first), even when their DEL_SCHEDULE events come later or not at all."""
        self.timer_tasks = ()
        commands: list[Command] = []
        if self.state is State.CANCELLING:
            commands += self._fire(Input.DELETED, now, source="member")
        commands += self._fire(Input.MEMBER, now, **detail)
        return commands + self._finish(Outcome.JOINED, None, now, **detail)

    def reply(self, tag: str, text: str, now: float) -> list[Command]:
        if self.state is State.ENDED:
            return []
        kind = self._pending.pop(tag, None)
        if kind is None:
            raise UsageError(f"reply for tag {tag!r} that invite {self.invite_id} is not awaiting")
        text = text.strip()
        if text.startswith(LOST_REPLY):
            return self._on_lost_reply(kind, now)
        if kind == "kill":
            if text.startswith("+OK"):
                self.kill_confirmed = True
                return []
            if text.startswith(_NO_SUCH_CHANNEL):
                return self._give_up(now, "the channel is gone and its hangup was not seen")
            return []  # unknown: give_up_at decides
        if kind in ("resync", "probe", "overdue"):
            return self._on_dump(kind, text, now)
        return []

    def _on_lost_reply(self, kind: str, now: float) -> list[Command]:
        """The command went out (or may have) but its answer was lost with the link or timed
        out: nothing is assumed (invariant 7). A lost kill is sent again if a later dump finds
        the channel alive; a lost dump is asked again -- on the next resync, or after
        ``SETTLE_DELAY`` if the link is still up."""
        if kind == "overdue":
            self.safety_probe_sent = False  # asked again at the next tick
            return [WakeAt(now + SETTLE_DELAY, "the overdue call's dump was lost: ask again")]
        if kind in ("resync", "probe") and self.settle_at is None:
            self.settle_at = now + SETTLE_DELAY
            return [WakeAt(self.settle_at, f"the {kind} dump's answer was lost: ask again")]
        return []

    def _on_dump(self, kind: str, text: str, now: float) -> list[Command]:
        if not text.startswith("{"):
            if (
                self.state is State.PLACING
                and self.adopted_from is State.PLACING
                and not self.kill_sent
                and now < self.deadline + self.grace
            ):
                # Not conclusive: FreeSWITCH may not have run the originate yet (its bgapi
                # queue), also one an earlier daemon wrote just before it died; the
                # BACKGROUND_JOB, the channel's events or the safety net (past the call's
                # bound, "no such channel" is final) decide.
                return []
            return self._give_up(now, "the channel is gone", reply=text[:200], via=kind)
        try:
            dump = json.loads(text)
        except ValueError:
            dump = None
        if not isinstance(dump, dict):
            return self._give_up(now, "unreadable uuid_dump", reply=text[:200], via=kind)
        in_conference = any(
            dump.get(key)
            for key in (
                "variable_conference_name",
                "variable_conference_member_id",
                "conference_name",
                "conference_member_id",
            )
        )
        answer_state = str(dump.get("Answer-State", ""))
        channel_state = str(dump.get("Channel-State", ""))
        if channel_state in ("CS_HANGUP", "CS_REPORTING", "CS_DESTROY") or answer_state == "hangup":
            if self.give_up_at is None:
                self.give_up_at = now + self.grace
                return [WakeAt(self.give_up_at, "the channel is hanging up: await its hangup")]
            return []
        if answer_state in ("answered", "ringing", "early"):
            self.seen_alive = True  # and `answered` is right from here on (below)
        if in_conference and not self.kill_sent:
            # The key was pressed and FreeSWITCH joined the call, whether confguard saw it or not.
            self.answered = True
            moves = self._fire(Input.ANSWER, now, source=kind)
            moves += self._fire(Input.KEY, now, source="switch")
            return moves + self._joined(now, via=kind)
        if self.kill_sent:
            # A kill was sent (decline, cancel, failure, safety net) yet the channel lives on,
            # perhaps because the kill was lost with the link: send it again.
            cause = self._kill_cause()
            return self._kill(cause, now, "a kill the channel survived")
        if kind == "probe" and self.state in (State.CANCELLING, State.JOINING):
            self.verdict = (Outcome.FAILED, "join not confirmed")
            return self._kill(None, now, "join not confirmed")
        if kind == "overdue" and self.state in (State.CANCELLING, State.JOINING):
            return []  # the join probe decides
        commands: list[Command] = []
        if answer_state == "answered" and not self.answered:
            commands += self._on_answer(now, kind)
        elif answer_state in ("ringing", "early"):
            self.channel_seen = True
            commands += self._fire(Input.CHANNEL, now, source=kind)
            if self.cancel_requested and not self.kill_sent:
                commands += self._kill("ORIGINATOR_CANCEL", now, "operator cancel")
        if answer_state == "answered" and self.state is State.WAITING_KEY:
            # What FreeSWITCH's waiting app recorded while nobody watched: the key (it is
            # joining the call), or the decline key among the refused ones.
            if str(dump.get(f"variable_{KEY_VARIABLE}", "")) == self.spec.key:
                commands += self._on_digit(self.spec.key, now, source="switch")
            elif (
                self.spec.decline_key is not None
                and str(dump.get(f"variable_{KEY_VARIABLE}_invalid", "")) == self.spec.decline_key
            ):
                commands += self._on_digit(self.spec.decline_key, now, source="switch")
        if (
            kind == "overdue"
            and self.state not in (State.CANCELLING, State.JOINING)
            and not self.kill_sent
        ):
            # Alive past its bound, neither in the room nor joining (no key recorded), and not
            # being hung up already (decline, cancel): the safety net's kill.
            commands += self._safety_kill(now)
        return commands

    def tick(self, now: float) -> list[Command]:
        if self.state is State.ENDED:
            return []
        if self.connection_lost_at is not None and now >= self.deadline + 2 * self.grace:
            # The link has not come back and the call's bound has passed: FreeSWITCH's timer
            # (or our kill) has ended it, but nothing can tell us how.
            return self._give_up(
                now, "no link to FreeSWITCH since the call's deadline passed",
                link_lost_s=round(now - self.connection_lost_at, 3),
            )
        commands: list[Command] = []
        if self.settle_at is not None and now >= self.settle_at:
            self.settle_at = None
            if self.connection_lost_at is None:
                commands.append(self._api("resync", build_dump(self.call_uuid)))
            # else: resync() asks when the link is back
        if self.give_up_at is not None and now >= self.give_up_at:
            if self.connection_lost_at is not None:
                # The hangup may be sitting in the dropped link, or the kill never left:
                # resync decides (and kills again if the channel is still there).
                return commands
            return self._give_up(now, "no hangup after the kill")
        if self.state in (State.CANCELLING, State.JOINING):
            if self.join_probe_at is not None and now >= self.join_probe_at:
                self.join_probe_at = None
                if self.connection_lost_at is None:
                    commands.append(self._api("probe", build_dump(self.call_uuid)))
            return commands
        if now >= self.deadline + self.grace and not self.safety_probe_sent:
            # The FreeSWITCH timer should have hung the call up by now. Ask before acting: the
            # call may be in the room (its key and join fell in a gap), or placed late (an
            # originate held back while the link was down arms its timer later).
            self.safety_probe_sent = True
            commands.append(self._api("overdue", build_dump(self.call_uuid)))
        return commands

    def _safety_kill(self, now: float) -> list[Command]:
        """The call outlived its timer and is neither in the room nor joining: hang it up."""
        self.safety_kill_sent = True
        self.kill_sent = True
        self.give_up_at = now + self.grace
        return [
            self._api("kill", build_kill(self.call_uuid, self.spec.hangup_cause)),
            WakeAt(self.give_up_at, "safety net: give up waiting for the hangup"),
        ]

    def give_up(self, now: float, why: str) -> list[Command]:
        """The engine can no longer follow the call (its originate's answer was lost and no
        channel of it appeared): finish with what is already known, else ``lost``."""
        if self.state is State.ENDED:
            return []
        return self._give_up(now, why)

    def cancel(self, now: float) -> list[Command]:
        """Operator cancel. Refused (UsageError) once the call has joined the room."""
        if self.outcome is Outcome.JOINED or self.state is State.JOINED:
            raise UsageError(f"invite {self.invite_id} already joined; hang the member up instead")
        if self.state is State.ENDED or self.cancel_requested:
            return []
        self.cancel_requested = True
        if not self.channel_seen or self.kill_sent:
            return []  # killed when the channel appears; the originate error/hangup finishes
        return self._kill("ORIGINATOR_CANCEL", now, "operator cancel")

    def connection_lost(self, now: float) -> list[Command]:
        """Events may be missed from now on; nothing to send until ``resync``. If the link
        never comes back, the invite ends ``lost`` once its deadline and two graces passed."""
        if self.state is State.ENDED:
            return []
        self.connection_lost_at = now
        bound = max(now, self.deadline + 2 * self.grace)
        return [WakeAt(bound, "the link is down: stop waiting at the call's bound")]

    def resync(self, now: float) -> list[Command]:
        """After a reconnect: ask the switch what became of the channel (``uuid_dump``)."""
        if self.state is State.ENDED:
            return []
        self.connection_lost_at = None
        self.settle_at = None
        commands: list[Command] = [self._api("resync", build_dump(self.call_uuid))]
        if self.state in (State.CANCELLING, State.JOINING) and self.join_probe_at is None:
            self.join_probe_at = now + JOIN_DUE_S  # its probe fell in the gap: probe again
            commands.append(WakeAt(self.join_probe_at, "add-member overdue: probe the channel"))
        return commands

    # ---------------------------------------------------------------------------- views

    @property
    def timer_armed(self) -> bool:
        """Whether the machine believes a hangup task of this call is pending in FreeSWITCH."""
        return bool(self.timer_tasks)

    @property
    def pending_tags(self) -> frozenset[str]:
        return frozenset(self._pending)
