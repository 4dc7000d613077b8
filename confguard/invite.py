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
  was lost it passes ``"-ERR <why>"``;
* ``tick(now)`` -- time passing, called at or after every ``WakeAt`` it asked for;
* operator and link news -- ``cancel``, ``connection_lost``, ``resync``.

Every input returns a list of commands (``SendApi``, ``SendBgapi``, ``AddFilter``, ``DelFilter``,
``WakeAt``) and notifications (``StateChanged``, ``Finished``), in the order they must be acted on.
Time only ever comes in as arguments (``now`` is monotonic seconds, ``wall`` the epoch at start).

The one promise the whole design protects: **a live call that has not been joined always has a
hangup task inside FreeSWITCH** (``sched_hangup`` armed by ``api_on_originate`` at invite time,
re-armed by us on answer when no ``ADD_SCHEDULE`` was seen), and **``uuid_transfer`` is sent only
after ``sched_del`` answered ``+OK Deleted: N`` with N >= 1** -- so a call can never reach the room
with a timer still pending, nor after the timer fired.

States (``TRANSITIONS`` below lists every legal move; anything else is ignored, never guessed)::

    placing --channel--> ringing --answer--> waiting_key --key--> cancelling
        --Deleted>=1--> joining --add-member--> joined --> ended
    (placing --answer--> waiting_key when the ringing events were missed;
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
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Literal

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
    "build_arm_timer",
    "build_broadcast",
    "build_dump",
    "build_kill",
    "build_originate",
    "build_sched_del",
    "build_transfer",
    "check_timer_cause",
    "parse_deleted",
]

GRACE_S = 3.0
"""Seconds the machine waits beyond a due event (the timer, a kill) before it stops waiting."""

LOST_REPLY = "-ERR confguard:"
"""How the engine answers a ``SendApi`` whose reply was lost (the link dropped, the command
timed out, or it could not be written): the machine never takes it for the switch's answer."""

SETTLE_DELAY = 0.5
"""Seconds after a lost reply before the machine asks the switch (if the link is still up)."""

SHOW_TASKS = "show tasks as json"


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
MAX_VARIABLES = 32

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

    def __post_init__(self) -> None:
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

    @property
    def effective_ring_timeout(self) -> int:
        return self.timeout if self.ring_timeout is None else self.ring_timeout

    @property
    def conference_name(self) -> str | None:
        """The conference the call joins (without ``@profile``), None for a dialplan target."""
        if self.join.kind != "conference":
            return None
        return (self.join.room or self.room).split("@", 1)[0]


# --------------------------------------------------------------------------------------------
# Command builders: only validated values go in, one ESL command line comes out.


def _uuid(value: str) -> str:
    if not _UUID_RE.fullmatch(value):
        raise UsageError(f"not a channel/job uuid: {value!r}")
    return value


def build_originate(
    spec: InviteSpec, *, call_uuid: str, invite_id: str, wall_deadline: int
) -> str:
    """``originate {vars}user/<ext> '<waiting app>' inline`` with the hangup timer armed at
    invite time: the answered call runs ``build_waiting_app``'s inline dialplan inside FreeSWITCH
    (transcript 18: the originate transfers the answered leg to it)."""
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
    parts.extend(f"{name}={value}" for name, value in spec.variables.items())
    parts.append(f"api_on_originate='sched_hangup +{spec.timeout} {uuid} {spec.hangup_cause}'")
    return (
        "originate {" + ",".join(parts) + "}user/" + spec.extension + " " + build_waiting_app(spec)
    )


KEY_VARIABLE = "confguard_key"
"""The channel variable in which FreeSWITCH itself records the key the callee pressed
(``play_and_get_digits`` of the waiting app, below): set the moment the key comes, whether or
not confguard can see the switch, and read back by ``uuid_dump`` on resync and adoption."""

INVALID_PROMPT = "silence_stream://250"
"""What ``play_and_get_digits`` plays after a key that is neither the key nor the decline key."""


def build_waiting_app(spec: InviteSpec) -> str:
    """The inline dialplan the answered call runs, inside FreeSWITCH, until confguard moves it.

    ``'m:|:play_and_get_digits:1 1 TRIES MS TERM PROMPT INVALID confguard_key ^[KD]$|park' inline``

    * ``play_and_get_digits`` plays the prompt and waits ``MS`` for one key, ``TRIES`` times --
      the re-prompt loop runs in the switch, so a waiting call costs confguard nothing;
    * the key (or the decline key) is stored by FreeSWITCH in ``confguard_key`` (``KEY_VARIABLE``)
      the moment it comes -- a key pressed while confguard cannot see the switch still counts;
      any other key is refused by the regex (stored in ``confguard_key_invalid``) and retried;
    * ``TRIES`` is one per second of the timeout plus one and each try lasts at least 1 s, so
      the loop outlasts the hangup timer; ``park`` then holds the call (never a hangup by
      running out of dialplan) until confguard's ``uuid_transfer`` or the timer;
    * ``m:|:`` makes ``|`` the inline dialplan's separator (mod_dptools' inline_dialplan_hunt):
      a prompt may contain commas (``tone_stream://%(250,250,440)``); ``|`` is in no validated
      value, nor are the single quotes that group the app for ``originate``.
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
    collect = (
        f"play_and_get_digits:1 1 {tries} {wait_ms} {terminator} {prompt} {INVALID_PROMPT} "
        f"{KEY_VARIABLE} ^[{keys}]$"
    )
    return f"'m:|:{collect}|park' inline"


def build_arm_timer(call_uuid: str, seconds: int, cause: str) -> str:
    """``sched_hangup +N U CAUSE`` -- always with the ``+`` (a bare N hangs up or repeats)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1:
        raise UsageError(f"timer seconds must be a positive int: {seconds!r}")
    if cause not in KNOWN_HANGUP_CAUSES:
        raise UsageError(f"unknown cause {cause!r}")
    return f"sched_hangup +{seconds} {_uuid(call_uuid)} {cause}"


def build_sched_del(call_uuid: str) -> str:
    """``sched_del U``: deletes every task of the call's group (ours and api_on_originate's)."""
    return f"sched_del {_uuid(call_uuid)}"


def build_transfer(spec: InviteSpec, call_uuid: str) -> str:
    uuid = _uuid(call_uuid)
    if spec.join.kind == "dialplan":
        return f"uuid_transfer {uuid} {spec.join.extension} XML {spec.join.context}"
    return f"uuid_transfer {uuid} conference:{spec.join.room or spec.room} inline"


def build_broadcast(call_uuid: str, prompt: str) -> str:
    if not _PROMPT_RE.fullmatch(prompt) or len(prompt) > _PROMPT_MAX:
        raise UsageError(f"prompt not validated: {prompt!r}")
    return f"uuid_broadcast {_uuid(call_uuid)} {prompt} aleg"


def build_kill(call_uuid: str, cause: str | None = None) -> str:
    if cause is None:
        return f"uuid_kill {_uuid(call_uuid)}"
    if cause not in KNOWN_HANGUP_CAUSES:
        raise UsageError(f"unknown cause {cause!r}")
    return f"uuid_kill {_uuid(call_uuid)} {cause}"


def build_dump(call_uuid: str) -> str:
    return f"uuid_dump {_uuid(call_uuid)} json"


_DELETED_RE = re.compile(r"\+OK Deleted: (\d+)")


def parse_deleted(text: str) -> int | None:
    """The N of ``+OK Deleted: N``; None for anything else (``-ERR``, garbage)."""
    match = _DELETED_RE.fullmatch(text.strip())
    return int(match.group(1)) if match else None


# --------------------------------------------------------------------------------------------
# The transition table. Inputs are what the machine concluded from an event/reply/tick.


class Input(StrEnum):
    CHANNEL = "channel"  # CHANNEL_CREATE / PROGRESS / PROGRESS_MEDIA, resync says ringing
    ANSWER = "answer"  # CHANNEL_ANSWER, BACKGROUND_JOB +OK, resync says answered
    KEY = "key"  # the confirmation key while waiting
    DELETED = "deleted"  # sched_del answered Deleted >= 1 and nothing forbids joining
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
_FILTER_HEADERS = ("Unique-ID", "Job-UUID", "Task-Group")
_WAITING_APPS = frozenset({"park", "play_and_get_digits"})  # build_waiting_app's apps
_UNSEEN_END = "the call ended before this daemon saw it alive (adopted)"


class Invite:
    """One invite's decisions. See the module docstring for the theory of operation."""

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
        # An adopted invite has seen its call alive itself (a channel event, the answer, or a
        # uuid_dump saying ringing/early/answered), so it knows whether the call was answered.
        # Until then a hangup cannot be mapped to an outcome: the call ended unseen -> lost.
        self.seen_alive = False
        self.channel_seen = False
        self.answered = False
        self.timer_tasks: set[str] = set()  # live Task-IDs of our hangup timer (ADD_SCHEDULE)
        self.timer_task_seen = False  # any ADD_SCHEDULE of ours ever
        self.timer_armed_by_us = False  # we sent sched_hangup (reply not -ERR)
        self.timer_fired = False  # sched_del said Deleted: 0 -- the timer already ran
        self.declined = False
        self.cancel_requested = False
        self.kill_sent = False
        self.kill_confirmed = False  # some uuid_kill answered +OK
        self.safety_kill_sent = False
        self.give_up_at: float | None = None  # after a kill: finish by then whatever happens
        self.verdict: tuple[Outcome, str | None] | None = None  # outcome decided before hangup
        self.job_result: str | None = None
        self.job_cause: str | None = None
        self.connection_lost_at: float | None = None
        self.join_probe_at: float | None = None
        # Commands whose answer was lost (LOST_REPLY): settled by asking the switch.
        self.unsettled: set[str] = set()
        self.settle_at: float | None = None
        self.settle_sched_del = False  # a sched_del's answer was lost: ask again after a dump
        self.settle_transfer = False  # a uuid_transfer's answer was lost: the dump decides
        self.transfer_resent = False
        self.sched_del_repeated = False  # a second sched_del went out (settling a lost one)
        self.tasks_query_pending = False
        self._pending: dict[str, str] = {}  # tag -> kind of every SendApi awaiting its reply
        self._tag_counter = 0

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
            commands.extend(
                DelFilter(header, value)
                for header, value in zip(_FILTER_HEADERS, self._filter_values(), strict=True)
            )
        commands.append(self._move(State.ENDED, now, outcome=str(outcome), cause=cause))
        return commands

    def _filter_values(self) -> tuple[str, str, str]:
        return (self.call_uuid, self.job_uuid, self.call_uuid)

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
        if self.timer_fired:
            return Outcome.TIMEOUT, self.spec.hangup_cause
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
        self.channel_seen = True
        self.seen_alive = True
        if self.answered:
            return []
        self.answered = True
        left = self._seconds_left(now)
        commands = self._fire(Input.ANSWER, now, source=source, seconds_left=left)
        if self.cancel_requested and not self.kill_sent:
            return commands + self._kill("ORIGINATOR_CANCEL", now, "operator cancel")
        if self.state is State.WAITING_KEY and not self.kill_sent:
            commands += self._arm_if_needed(now)
        return commands

    def _arm_if_needed(self, now: float) -> list[Command]:
        """At the answer: a timer exists if its ADD_SCHEDULE was seen; if none was (adopted,
        or the events were lost with the link), ask ``show tasks`` before arming another."""
        if self.timer_tasks or self.timer_armed_by_us:
            return []
        if not self.timer_task_seen:
            return self._ensure_timer(now)
        return self._arm(now)

    def _ensure_timer(self, now: float) -> list[Command]:
        if self.timer_tasks or self.timer_armed_by_us or self.tasks_query_pending:
            return []
        self.tasks_query_pending = True
        return [self._api("tasks", SHOW_TASKS)]

    def _arm(self, now: float) -> list[Command]:
        self.timer_armed_by_us = True
        seconds = self._seconds_left(now)
        return [
            self._api("arm", build_arm_timer(self.call_uuid, seconds, self.spec.hangup_cause))
        ]

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
        """Outcome at the hangup: what we did first (decline, cancel, failure, known firing),
        then the cause."""
        if self.declined:
            return Outcome.DECLINED, cause
        if self.cancel_requested:
            return Outcome.CANCELLED, cause
        if self.verdict is not None:
            return self.verdict
        if self.timer_fired:
            return Outcome.TIMEOUT, cause
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

    def adopt(self, now: float) -> list[Command]:
        """Take over an invite that an earlier run of the daemon started (its journal row).

        The originate went out back then and the call's events since are lost, so instead of
        originating: the call's filters, then ``uuid_dump`` as after a reconnect. The dump decides:
        no channel -> ``lost``; in a conference -> ``joined``; answered -> waiting for the key,
        with a timer of our own armed because no ``ADD_SCHEDULE`` can be seen (invariant 1: two
        tasks in the group are harmless, ``sched_del <uuid>`` removes both); ringing -> ringing.

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
            if self.adopted and not self.seen_alive:
                return self._give_up(now, _UNSEEN_END, event=name, hangup_cause=cause)
            outcome, decided_cause = self._decide(cause)
            return self._finish(outcome, decided_cause, now, event=name, hangup_cause=cause)
        if name == "CUSTOM" and headers.get("Event-Subclass") == "conference::maintenance":
            return self._on_conference(headers, now)
        return []

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
            self.timer_tasks.add(task_id)
            self.timer_task_seen = True
            return []
        if task_id not in self.timer_tasks:
            return []
        self.timer_tasks.discard(task_id)
        # The last task vanished without our sched_del: fired (its hangup is on the way) or
        # deleted by someone else. Belt and braces: a live unjoined call keeps a timer.
        if (
            not self.timer_tasks
            and self.state in (State.RINGING, State.WAITING_KEY)
            and not self.kill_sent
        ):
            self.timer_armed_by_us = False
            return self._arm(now)
        return []

    def _on_digit(self, digit: str, now: float, **detail: object) -> list[Command]:
        """The key or the decline key, from a DTMF event or from ``confguard_key`` in a dump."""
        if self.state is not State.WAITING_KEY or self.declined or self.kill_sent:
            return []
        if digit == self.spec.key:
            commands = self._fire(
                Input.KEY, now, digit=digit, seconds_left=self._seconds_left(now), **detail
            )
            return [*commands, self._api("sched_del", build_sched_del(self.call_uuid))]
        if self.spec.decline_key is not None and digit == self.spec.decline_key:
            self.declined = True
            return self._kill("CALL_REJECTED", now, "decline key")
        return []

    def _on_conference(self, headers: Mapping[str, str], now: float) -> list[Command]:
        if headers.get("Action") != "add-member" or self.state is not State.JOINING:
            return []
        expected = self.spec.conference_name
        conference = headers.get("Conference-Name")
        if expected is not None and conference != expected:
            return []
        return self._joined(now, conference=conference, member_id=headers.get("Member-ID"))

    def _joined(self, now: float, **detail: object) -> list[Command]:
        commands = self._fire(Input.MEMBER, now, **detail)
        return commands + self._finish(Outcome.JOINED, None, now, **detail)

    def reply(self, tag: str, text: str, now: float) -> list[Command]:
        if self.state is State.ENDED:
            return []
        kind = self._pending.pop(tag, None)
        if kind is None:
            raise UsageError(f"reply for tag {tag!r} that invite {self.invite_id} is not awaiting")
        text = text.strip()
        if text.startswith(LOST_REPLY):
            return self._on_lost_reply(kind, text, now)
        if kind == "sched_del":
            return self._on_sched_del_reply(text, now)
        if kind == "transfer":
            if text.startswith("+OK"):
                self.join_probe_at = now + self.grace
                return [WakeAt(self.join_probe_at, "add-member overdue: probe the channel")]
            self.verdict = (Outcome.FAILED, text or "empty reply")
            return self._kill(None, now, "transfer failed")
        if kind == "kill":
            if text.startswith("+OK"):
                self.kill_confirmed = True
                return []
            if text.startswith(_NO_SUCH_CHANNEL):
                return self._give_up(now, "the channel is gone and its hangup was not seen")
            return []  # unknown: give_up_at decides
        if kind == "arm":
            if not text.startswith("+OK"):
                self.timer_armed_by_us = False
            return []
        if kind == "tasks":
            self.tasks_query_pending = False
            return self._on_tasks(text, now)
        if kind in ("resync", "probe", "confirm"):
            return self._on_dump(kind, text, now)
        return []

    def _on_lost_reply(self, kind: str, text: str, now: float) -> list[Command]:
        """The command went out (or may have) but its answer was lost with the link or timed
        out: nothing is assumed. The switch is asked (``uuid_dump`` on the next resync, or after
        ``SETTLE_DELAY`` if the link is still up) and the dump settles it (invariant 7)."""
        self.unsettled.add(kind)
        if kind == "tasks":
            self.tasks_query_pending = False
        if kind == "arm":
            self.timer_armed_by_us = False  # unknown: the dump's answer re-arms if needed
        if kind == "sched_del":
            self.settle_sched_del = True
        if kind == "transfer":
            self.settle_transfer = True
        if self.settle_at is None:
            self.settle_at = now + SETTLE_DELAY
            return [WakeAt(self.settle_at, f"settle a lost {kind} reply: ask the switch")]
        return []

    def _on_sched_del_reply(self, text: str, now: float) -> list[Command]:
        deleted = parse_deleted(text)
        if deleted is None:
            self.verdict = (Outcome.FAILED, text or "empty reply")
            return self._kill(None, now, "sched_del failed")
        if deleted == 0:
            if not (self.sched_del_repeated or self.adopted):
                # The timer already ran: its hangup is coming. Never transfer.
                self.timer_fired = True
                return []
            # Nothing left to delete: the timer ran (FreeSWITCH hangs the channel up in the
            # scheduler's thread before the task leaves the list), or an earlier sched_del --
            # ours whose answer was lost, or the previous daemon's -- deleted it. Never transfer
            # on this answer alone: a dump tells which (hanging up or gone, vs alive, answered
            # and not hanging up).
            return [self._api("confirm", build_dump(self.call_uuid))]
        self.timer_tasks.clear()
        return self._transfer_after_delete(now, deleted=deleted, reply=text)

    def _transfer_after_delete(self, now: float, /, **detail: object) -> list[Command]:
        self.timer_tasks.clear()
        self.timer_armed_by_us = False
        if self.kill_sent or self.cancel_requested or self.declined:
            return []
        commands = self._fire(Input.DELETED, now, **detail)
        if self.state is not State.JOINING:
            return commands
        return [*commands, self._api("transfer", build_transfer(self.spec, self.call_uuid))]

    def _on_tasks(self, text: str, now: float) -> list[Command]:
        """``show tasks as json``: does the call's group hold a hangup task? (adoption and
        resyncs that saw no ADD_SCHEDULE: arm a timer only if there is none)."""
        try:
            rows = json.loads(text).get("rows") or []
        except (ValueError, AttributeError):
            rows = None
        if not isinstance(rows, list):
            rows = None
        if rows is not None:
            for row in rows:
                if (
                    isinstance(row, dict)
                    and row.get("task_group") == self.call_uuid
                    and row.get("task_desc") == _TIMER_DESC
                ):
                    self.timer_tasks.add(str(row.get("task_id", "")))
                    self.timer_task_seen = True
        if self.timer_tasks or self.kill_sent or self.declined or self.cancel_requested:
            return []
        if self.state not in (State.RINGING, State.WAITING_KEY):
            return []
        # No hangup task of ours (or an unreadable answer): arm one. Two in the group are
        # harmless -- sched_del <uuid> deletes them all.
        return self._arm(now)

    def _on_dump(self, kind: str, text: str, now: float) -> list[Command]:
        if text.startswith(LOST_REPLY):
            return []  # handled by _on_lost_reply
        if not text.startswith("{"):
            if kind == "confirm" and not self.sched_del_repeated:
                self.timer_fired = True  # sched_del found nothing, and the call is gone
            return self._give_up(now, "the channel is gone", reply=text[:200], via=kind)
        try:
            dump = json.loads(text)
        except ValueError:
            dump = None
        if not isinstance(dump, dict):
            return self._give_up(now, "unreadable uuid_dump", reply=text[:200], via=kind)
        self.unsettled.clear()
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
            if kind == "confirm" and not self.sched_del_repeated:
                self.timer_fired = True  # sched_del found nothing, and the call is ending
            if self.give_up_at is None:
                self.give_up_at = now + self.grace
                return [WakeAt(self.give_up_at, "the channel is hanging up: await its hangup")]
            return []
        if in_conference and (self.state is State.JOINING or self.adopted):
            return self._joined(now, via=kind)
        if self.kill_sent:
            # A kill was sent (decline, cancel, failure, safety net) yet the channel lives on,
            # perhaps because the kill was lost with the link: send it again.
            cause = self._kill_cause()
            return self._kill(cause, now, "a kill the channel survived")
        if kind == "confirm":
            # sched_del deleted nothing, yet the call is alive and not hanging up: its timer
            # did not fire (a fired timer hangs up at once), so an earlier sched_del of ours
            # deleted it. The key is in: move on.
            if self.state is State.CANCELLING and answer_state == "answered":
                self.settle_sched_del = False
                return self._transfer_after_delete(now, deleted=0, via="confirm")
            return []
        if self.state is State.CANCELLING and self.settle_sched_del:
            # The sched_del's answer was lost: ask again (deleting the group twice is safe).
            self.settle_sched_del = False
            self.sched_del_repeated = True
            return [self._api("sched_del", build_sched_del(self.call_uuid))]
        if self.state is State.JOINING and self.settle_transfer:
            self.settle_transfer = False
            application = str(dump.get("variable_current_application", ""))
            if application in _WAITING_APPS and not self.transfer_resent:
                # Still in the waiting app: the transfer never reached the channel.
                self.transfer_resent = True
                return [self._api("transfer", build_transfer(self.spec, self.call_uuid))]
            self.join_probe_at = now + self.grace
            return [WakeAt(self.join_probe_at, "add-member overdue: probe the channel")]
        if kind == "probe":
            if self.state is State.JOINING and not self.kill_sent:
                self.verdict = (Outcome.FAILED, "join not confirmed")
                return self._kill(None, now, "join not confirmed")
            return []
        commands: list[Command] = []
        if answer_state in ("answered", "ringing", "early"):
            self.seen_alive = True  # and `answered` is right from here on (below)
        if answer_state == "answered" and not self.answered:
            commands += self._on_answer(now, "resync")
        elif answer_state in ("ringing", "early"):
            self.channel_seen = True
            commands += self._fire(Input.CHANNEL, now, source="resync")
            if self.cancel_requested and not self.kill_sent:
                commands += self._kill("ORIGINATOR_CANCEL", now, "operator cancel")
        elif (
            self.state is State.WAITING_KEY
            and not self.kill_sent
            and not self.declined
            and not self.timer_task_seen
        ):
            # Answered before the link dropped and no ADD_SCHEDULE seen: make sure one exists.
            commands += self._ensure_timer(now)
        if answer_state == "answered":
            # The key FreeSWITCH recorded while nobody watched (play_and_get_digits).
            recorded = str(dump.get(f"variable_{KEY_VARIABLE}", ""))
            if recorded:
                commands += self._on_digit(recorded, now, source="switch")
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
        if self.state is State.JOINING:
            if self.join_probe_at is not None and now >= self.join_probe_at:
                self.join_probe_at = None
                commands.append(self._api("probe", build_dump(self.call_uuid)))
            return commands
        if now >= self.deadline + self.grace and not self.safety_kill_sent:
            # The FreeSWITCH timer should have hung the call up by now: do it ourselves.
            self.safety_kill_sent = True
            self.kill_sent = True
            self.give_up_at = self.deadline + 2 * self.grace
            commands += [
                self._api("kill", build_kill(self.call_uuid, self.spec.hangup_cause)),
                WakeAt(self.give_up_at, "safety net: give up waiting for the hangup"),
            ]
        return commands

    def give_up(self, now: float, why: str) -> list[Command]:
        """The engine can no longer follow the call (its originate's answer was lost and no
        channel of it exists): finish with what is already known, else ``lost``."""
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
        return [self._api("resync", build_dump(self.call_uuid))]

    # ---------------------------------------------------------------------------- views

    @property
    def timer_armed(self) -> bool:
        """Whether the machine believes a hangup task of this call is pending in FreeSWITCH."""
        return bool(self.timer_tasks) or self.timer_armed_by_us

    @property
    def pending_tags(self) -> frozenset[str]:
        return frozenset(self._pending)
