"""Events of the simulated switch: `SimEvent` and the header sets FreeSWITCH puts on each type.

Owns what an event *contains*: the common block every event opens with (Event-Name, Core-UUID,
FreeSWITCH-Hostname/-Switchname/-IPv4/-IPv6, the three Event-Date headers, where it was fired
from, Event-Sequence), the channel block (Channel-State ... Caller-* ...), the `variable_*`
headers on the event types that carry them, and the extra headers of each type, all in the
order of the recorded FreeSWITCH transcripts. It knows nothing about sockets, filters or the
scheduler's logic.

How an event is kept: `EventFactory` builds it straight as the json object `text/event-json`
carries (`_JsonEvent`: pre-encoded runs of fixed headers, values joined in C, one escaping
check), and its decoded header pairs are read back from that only when asked for (the plain
and xml formats, `uuid_dump`, tests). `EventFactory(..., as_pairs=True)` builds the same events
as header pairs block by block (`common_headers`, `channel_block`, `variable_headers`): the
reference the json is tested against byte for byte. The server (wire.py) URL-encodes and
frames the pairs for the other formats.

Header order facts taken from the transcripts:
- CUSTOM events open with `Event-Subclass`, *before* `Event-Name`.
- CHANNEL_HANGUP_COMPLETE carries `Hangup-Cause` twice: once right after the common block and
  once in the channel block (after `Answer-State`, as every event of a hung-up channel does).
- DTMF and conference::maintenance member events carry no `variable_*` headers.
"""

from __future__ import annotations

import itertools
import math
import operator
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from confguard.sim import wire
from confguard.sim.clock import SimClock
from confguard.sim.server import EVENT_NAMES

EVENT_TYPE_NAMES = EVENT_NAMES - {"ALL"}  # what `sendevent <NAME>` and `event` may name

Headers = list[tuple[str, str]]

SIM_IPV4 = "127.0.0.1"
SIM_IPV6 = "::1"

# Channel-State-Number of each Channel-State (switch_types.h order).
STATE_NUMBERS = {
    "CS_NEW": 0,
    "CS_INIT": 1,
    "CS_ROUTING": 2,
    "CS_SOFT_EXECUTE": 3,
    "CS_EXECUTE": 4,
    "CS_EXCHANGE_MEDIA": 5,
    "CS_PARK": 6,
    "CS_CONSUME_MEDIA": 7,
    "CS_HIBERNATE": 8,
    "CS_RESET": 9,
    "CS_HANGUP": 10,
    "CS_REPORTING": 11,
    "CS_DESTROY": 12,
}

# Q.850 numbers of the hangup causes the simulator produces or accepts.
CAUSE_CODES: dict[str, int] = {
    "UNSPECIFIED": 0,
    "UNALLOCATED_NUMBER": 1,
    "NO_ROUTE_TRANSIT_NET": 2,
    "NO_ROUTE_DESTINATION": 3,
    "NORMAL_CLEARING": 16,
    "USER_BUSY": 17,
    "NO_USER_RESPONSE": 18,
    "NO_ANSWER": 19,
    "SUBSCRIBER_ABSENT": 20,
    "CALL_REJECTED": 21,
    "NUMBER_CHANGED": 22,
    "DESTINATION_OUT_OF_ORDER": 27,
    "INVALID_NUMBER_FORMAT": 28,
    "FACILITY_REJECTED": 29,
    "NORMAL_UNSPECIFIED": 31,
    "NORMAL_CIRCUIT_CONGESTION": 34,
    "NETWORK_OUT_OF_ORDER": 38,
    "NORMAL_TEMPORARY_FAILURE": 41,
    "SWITCH_CONGESTION": 42,
    "REQUESTED_CHAN_UNAVAIL": 44,
    "BEARERCAPABILITY_NOTAVAIL": 58,
    "INCOMPATIBLE_DESTINATION": 88,
    "RECOVERY_ON_TIMER_EXPIRE": 102,
    "INTERWORKING": 127,
    "ORIGINATOR_CANCEL": 487,
    "CRASH": 500,
    "SYSTEM_SHUTDOWN": 501,
    "LOSE_RACE": 502,
    "MANAGER_REQUEST": 503,
    "BLIND_TRANSFER": 600,
    "ATTENDED_TRANSFER": 601,
    "ALLOTTED_TIMEOUT": 602,
    "USER_CHALLENGE": 603,
    "MEDIA_TIMEOUT": 604,
    "PICKED_OFF": 605,
    "USER_NOT_REGISTERED": 606,
    "PROGRESS_TIMEOUT": 607,
    "GATEWAY_DOWN": 609,
}
CAUSE_NAMES: dict[int, str] = {code: name for name, code in CAUSE_CODES.items()}
_header_name = operator.itemgetter(0)
HEAD_NAMES = 24  # SimEvent.first_value looks among these first (a channel event's Unique-ID)


# The header names `first_value` is asked for by every filter of the daemon and the bench (and
# the scheduler's routing): an event built from its json keeps their first values aside.
KNOWN_NAMES = ("event-name", "event-subclass", "unique-id", "job-uuid", "task-group")
_NO_KNOWN_VALUES: dict[str, str | None] = dict.fromkeys(KNOWN_NAMES)


class SimEvent:
    """One event as the switch fires it (decoded values; the server encodes and frames).

    An event is kept either as its header pairs, or (what `EventFactory` builds) as its json
    object, the bytes `text/event-json` carries, from which the pairs are read back only when
    someone asks for them (`headers`: the plain and xml formats, `uuid_dump`, tests); the first
    values of the `KNOWN_NAMES` it then keeps aside, for the filters.

    Once published an event is not changed: the server keeps what it derives from it (the
    header lookup of the filters, each format's encoded frame) in `derived`."""

    __slots__ = ("_headers", "_json", "_known", "body", "derived", "name", "subclass", "unsent")

    def __init__(
        self,
        name: str,
        headers: Headers | None = None,
        body: str | None = None,
        subclass: str | None = None,
        unsent: bool = False,
        *,
        json_object: bytes | None = None,
        known: dict[str, str | None] | None = None,
    ) -> None:
        if headers is None and json_object is None:
            raise ValueError("an event needs its headers or its json object")
        self.name = name  # Event-Name ("CHANNEL_CREATE", "CUSTOM", ...)
        self.body = body  # BACKGROUND_JOB result etc.
        self.subclass = subclass  # Event-Subclass for CUSTOM
        self.unsent = unsent  # a stand-in for an event no client takes (EventFactory.wants)
        self.derived: dict[str, object] = {}
        self._headers = headers
        # `{"name":"value",...` without the closing brace, as `wire.serialize_json` writes it
        self._json = json_object
        self._known = known  # KNOWN_NAMES -> first value (None: no such header), or None

    @property
    def headers(self) -> Headers:
        """Complete and ordered, no Content-Length/Content-Type (read back from the json once)."""
        headers = self._headers
        if headers is None:
            headers = self._headers = wire.json_headers(self._json)  # type: ignore[arg-type]
        return headers

    def __repr__(self) -> str:
        return f"SimEvent({self.name!r}, {self.headers!r}, body={self.body!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SimEvent):
            return NotImplemented
        return (self.name, self.headers, self.body, self.subclass, self.unsent) == (
            other.name, other.headers, other.body, other.subclass, other.unsent
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass it was

    def frame(self, event_format: wire.EventFormat) -> bytes:
        """The whole frame in `event_format` (the server keeps it in `derived`)."""
        if event_format == "json" and self._json is not None:
            return wire.encode_json_event(self._json, self.body)
        return wire.encode_event(self.headers, self.body, event_format)

    def first_value(self, lowered_name: str) -> str | None:
        """The first value of the header named `lowered_name` in any case (FreeSWITCH looks
        headers up ignoring case), or None. The `KNOWN_NAMES` of a built event are answered
        from what its builder kept aside. Otherwise looked up first among the event's first
        `HEAD_NAMES` names, lower-cased once per event (where Event-Name, Unique-ID and the
        scheduler's Task-Group are), then in one lower-cased string of all the names, made
        once per event: no dict of a hundred-odd headers for the few a filter asks."""
        known = self._known
        if known is not None and lowered_name in known:
            return known[lowered_name]
        headers = self.headers
        head = self.derived.get("head_names")
        if head is None:
            head = self.derived["head_names"] = _lowered_head(headers)
        if lowered_name in head:  # type: ignore[operator]
            return headers[head.index(lowered_name)][1]  # type: ignore[attr-defined]
        if len(headers) <= HEAD_NAMES:
            return None
        names = self.derived.get("lowered_names")
        if names is None:
            names = "\n" + "\n".join(map(_header_name, headers)).lower() + "\n"
            if names.count("\n") != len(headers) + 1:  # a newline in a name: not on the wire
                names = ""
            self.derived["lowered_names"] = names
        if not names:
            for name, value in headers:
                if name.lower() == lowered_name:
                    return value
            return None
        at = names.find("\n" + lowered_name + "\n")  # type: ignore[attr-defined]
        if at < 0:
            return None
        return headers[names.count("\n", 0, at)][1]  # type: ignore[attr-defined]

    def get(self, key: str, default: str | None = None) -> str | None:
        """The first value of header `key` (case-sensitive), or `default`."""
        for name, value in self.headers:
            if name == key:
                return value
        return default

    def get_all(self, key: str) -> list[str]:
        """Every value of header `key`, in order."""
        return [value for name, value in self.headers if name == key]


def _lowered_head(headers: Headers) -> list[str]:
    """The first HEAD_NAMES header names, lower-cased. Events of one kind open with the same
    names, so the lists are kept by those names (a bounded table; never changed once made)."""
    names = tuple(map(_header_name, headers[:HEAD_NAMES]))
    lowered = _LOWERED_HEADS.get(names)
    if lowered is None:
        lowered = list(map(str.lower, names))
        if len(_LOWERED_HEADS) >= _LOWERED_HEADS_KEPT:
            _LOWERED_HEADS.clear()
        _LOWERED_HEADS[names] = lowered
    return lowered


_LOWERED_HEADS: dict[tuple[str, ...], list[str]] = {}
_LOWERED_HEADS_KEPT = 1024


def micros(epoch_seconds: float) -> str:
    """Epoch seconds as the integer microseconds FreeSWITCH prints."""
    return str(int(epoch_seconds * 1_000_000))


def stamp_local(epoch_seconds: float) -> str:
    """`2026-11-28 08:17:55` in local time (Event-Date-Local, *_stamp variables); formatted
    once per whole second (every event of that second shows the same text)."""
    second = math.floor(epoch_seconds)
    text = _LOCAL_STAMPS.get(second)
    if text is None:
        text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        _keep_stamp(_LOCAL_STAMPS, second, text)
    return text


def stamp_gmt(epoch_seconds: float) -> str:
    """`Sat, 28 Nov 2026 08:17:55 GMT` (Event-Date-GMT); once per whole second, as above."""
    second = math.floor(epoch_seconds)
    text = _GMT_STAMPS.get(second)
    if text is None:
        text = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(second))
        _keep_stamp(_GMT_STAMPS, second, text)
    return text


# Whole epoch second -> its text. The stamps asked for are of the last seconds (now, when a
# call started or was answered), so a small table that starts over when full keeps them.
_LOCAL_STAMPS: dict[int, str] = {}
_GMT_STAMPS: dict[int, str] = {}
_STAMPS_KEPT = 4096


def _keep_stamp(stamps: dict[int, str], second: int, text: str) -> None:
    if len(stamps) >= _STAMPS_KEPT:
        stamps.clear()
    stamps[second] = text


@dataclass
class ChannelFacts:
    """What the channel block of an event shows about one channel (mutated by the switch)."""

    uuid: str
    name: str
    created: float  # simulated epoch seconds
    direction: str = "outbound"
    presence_id: str = ""
    state: str = "CS_INIT"
    state_number: int | None = None  # None: the number of `state`; FreeSWITCH sometimes lags
    call_state: str = "DOWN"
    answer_state: str = "ringing"
    hit_dialplan: bool = False
    hangup_cause: str | None = None
    # caller profile
    logical_direction: str = "outbound"
    dialplan: str = "XML"
    caller_id_name: str | None = None
    caller_id_number: str = "0000000000"
    orig_caller_id_number: str | None = "0000000000"
    callee_id_name: str | None = "Outbound Call"
    callee_id_number: str | None = "XML"
    ani: str = "0000000000"
    destination_number: str = ""
    source: str = "mod_loopback"
    transfer_source: str | None = None
    context: str = "default"
    rdnis: str | None = None
    profile_index: int = 1
    profile_created: float = 0.0
    answered: float = 0.0
    progress: float = 0.0
    progress_media: float = 0.0
    hungup: float = 0.0
    # The channel's variables in setting order; read them through `variables`.
    own_variables: dict[str, str] = field(default_factory=dict)
    # An application that advances lazily (play_and_get_digits coasting through its tries)
    # brings the variables up to the present before anyone reads or writes them.
    catch_up: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    @property
    def variables(self) -> dict[str, str]:
        if self.catch_up is not None:
            self.catch_up()
        return self.own_variables

    def set_var(self, name: str, value: str) -> None:
        """Set a channel variable; a variable set again moves to the end, as in FreeSWITCH."""
        variables = self.variables
        variables.pop(name, None)
        variables[name] = value

    def flip_caller_id(self) -> None:
        """After answer FreeSWITCH shows the outbound leg's caller/callee ids swapped."""
        self.caller_id_name = self.callee_id_name
        callee_number = self.callee_id_number
        self.callee_id_name = None
        self.callee_id_number = self.caller_id_number
        self.caller_id_number = callee_number or ""


def channel_block(ch: ChannelFacts) -> Headers:
    """Channel-* and Caller-* headers of `ch`, in FreeSWITCH's order."""
    number = ch.state_number if ch.state_number is not None else STATE_NUMBERS.get(ch.state, 0)
    headers: Headers = [
        ("Channel-State", ch.state),
        ("Channel-Call-State", ch.call_state),
        ("Channel-State-Number", str(number)),
        ("Channel-Name", ch.name),
        ("Unique-ID", ch.uuid),
        ("Call-Direction", ch.direction),
        ("Presence-Call-Direction", ch.direction),
        ("Channel-HIT-Dialplan", "true" if ch.hit_dialplan else "false"),
    ]
    if ch.presence_id:
        headers.append(("Channel-Presence-ID", ch.presence_id))
    headers += [("Channel-Call-UUID", ch.uuid), ("Answer-State", ch.answer_state)]
    if ch.hangup_cause is not None:
        headers.append(("Hangup-Cause", ch.hangup_cause))
    headers += [
        ("Channel-Read-Codec-Name", "L16"),
        ("Channel-Read-Codec-Rate", "8000"),
        ("Channel-Read-Codec-Bit-Rate", "128000"),
        ("Channel-Write-Codec-Name", "L16"),
        ("Channel-Write-Codec-Rate", "8000"),
        ("Channel-Write-Codec-Bit-Rate", "128000"),
        ("Caller-Direction", ch.direction),
        ("Caller-Logical-Direction", ch.logical_direction),
        ("Caller-Dialplan", ch.dialplan),
    ]
    if ch.caller_id_name is not None:
        headers.append(("Caller-Caller-ID-Name", ch.caller_id_name))
    headers.append(("Caller-Caller-ID-Number", ch.caller_id_number))
    if ch.orig_caller_id_number is not None:
        headers.append(("Caller-Orig-Caller-ID-Number", ch.orig_caller_id_number))
    if ch.callee_id_name is not None:
        headers.append(("Caller-Callee-ID-Name", ch.callee_id_name))
    if ch.callee_id_number is not None:
        headers.append(("Caller-Callee-ID-Number", ch.callee_id_number))
    headers += [
        ("Caller-ANI", ch.ani),
        ("Caller-Destination-Number", ch.destination_number),
        ("Caller-Unique-ID", ch.uuid),
        ("Caller-Source", ch.source),
    ]
    if ch.transfer_source is not None:
        headers.append(("Caller-Transfer-Source", ch.transfer_source))
    headers.append(("Caller-Context", ch.context))
    if ch.rdnis is not None:
        headers.append(("Caller-RDNIS", ch.rdnis))

    def t(value: float) -> str:
        return micros(value) if value else "0"

    headers += [
        ("Caller-Channel-Name", ch.name),
        ("Caller-Profile-Index", str(ch.profile_index)),
        ("Caller-Profile-Created-Time", t(ch.profile_created or ch.created)),
        ("Caller-Channel-Created-Time", t(ch.created)),
        ("Caller-Channel-Answered-Time", t(ch.answered)),
        ("Caller-Channel-Progress-Time", t(ch.progress)),
        ("Caller-Channel-Progress-Media-Time", t(ch.progress_media)),
        ("Caller-Channel-Hangup-Time", t(ch.hungup)),
        ("Caller-Channel-Transfer-Time", "0"),
        ("Caller-Channel-Resurrect-Time", "0"),
        ("Caller-Channel-Bridged-Time", "0"),
        ("Caller-Channel-Last-Hold", "0"),
        ("Caller-Channel-Hold-Accum", "0"),
        ("Caller-Screen-Bit", "true"),
        ("Caller-Privacy-Hide-Name", "false"),
        ("Caller-Privacy-Hide-Number", "false"),
    ]
    return headers


def variable_headers(variables: Mapping[str, str]) -> Headers:
    """`variable_<name>` headers in the channel's variable order (the prefixed names are
    kept, so a channel's hundred-odd headers are zipped up in C)."""
    names = map(_VARIABLE_HEADER_NAMES.__getitem__, variables)
    return list(zip(names, variables.values(), strict=True))


class _PrefixedNames(dict[str, str]):
    """Variable name -> `variable_<name>`, made on first use (a bounded table: the names come
    from the switch and the clients' variables)."""

    def __missing__(self, name: str) -> str:
        prefixed = "variable_" + name
        if len(self) < _PREFIXED_NAMES_KEPT:
            self[name] = prefixed
        return prefixed


_PREFIXED_NAMES_KEPT = 4096
_VARIABLE_HEADER_NAMES = _PrefixedNames()


@dataclass(frozen=True)
class Origin:
    """Where in FreeSWITCH an event type is fired from (Event-Calling-*)."""

    file: str
    function: str
    line: int


ORIGINS: dict[str, Origin] = {
    "CHANNEL_CREATE": Origin("switch_core_state_machine.c", "switch_core_session_run", 626),
    "CHANNEL_PROGRESS": Origin(
        "switch_channel.c", "switch_channel_perform_mark_ring_ready_value", 3567
    ),
    "CHANNEL_ANSWER": Origin("switch_channel.c", "switch_channel_perform_mark_answered", 3848),
    "CHANNEL_EXECUTE": Origin("switch_core_session.c", "switch_core_session_exec", 2932),
    "CHANNEL_EXECUTE_COMPLETE": Origin("switch_core_session.c", "switch_core_session_exec", 2972),
    "DTMF": Origin("switch_channel.c", "switch_channel_dequeue_dtmf", 678),
    "CHANNEL_HANGUP": Origin("switch_channel.c", "switch_channel_perform_hangup", 3447),
    "CHANNEL_HANGUP_COMPLETE": Origin(
        "switch_core_state_machine.c", "switch_core_session_reporting_state", 943
    ),
    "BACKGROUND_JOB": Origin("mod_event_socket.c", "api_exec", 1580),
    "ADD_SCHEDULE": Origin("switch_scheduler.c", "switch_scheduler_add_task_ex", 266),
    "DEL_SCHEDULE": Origin("switch_scheduler.c", "task_thread_loop", 151),
    "DEL_SCHEDULE_API": Origin("switch_scheduler.c", "switch_scheduler_del_task_id", 306),
    "DEL_SCHEDULE_GROUP": Origin("switch_scheduler.c", "switch_scheduler_del_task_group", 340),
    "HEARTBEAT": Origin("switch_core.c", "send_heartbeat", 84),
    "CHANNEL_DATA": Origin("mod_commands.c", "uuid_dump_function", 6495),
    "SHUTDOWN": Origin("switch_core.c", "switch_core_destroy", 3033),
    "conference-create": Origin("mod_conference.c", "conference_new", 3848),
    "conference-destroy": Origin("mod_conference.c", "conference_thread_run", 863),
    "add-member": Origin("conference_member.c", "conference_member_add", 962),
    "del-member": Origin("conference_member.c", "conference_member_del", 1355),
    "floor-change": Origin("conference_member.c", "conference_member_set_floor_holder", 1158),
    "sendevent": Origin("mod_event_socket.c", "parse_command", 2283),
    "event": Origin("mod_dptools.c", "event_function", 1902),
}

CONFERENCE_SUBCLASS = "conference::maintenance"


@dataclass
class ConferenceFacts:
    """What conference::maintenance events show about a room."""

    name: str
    uuid: str
    domain: str
    size: int = 0
    profile: str = "default"


@dataclass
class MemberFacts:
    """What add-member/del-member events show about one member."""

    member_id: int
    floor: bool = False
    hear: bool = True  # mod_conference's flags: `deaf` clears hear, `mute` speak
    speak: bool = True
    moderator: bool = False


class _KeptTexts(dict[str, str]):
    """Name -> a text made from it (`make`), made on first use; a bounded table (the names
    come from the switch and the clients' variables)."""

    def __init__(self, make: Callable[[str], str]) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, name: str) -> str:
        text = self._make(name)
        if len(self) < _PREFIXED_NAMES_KEPT:
            self[name] = text
        return text


# The encoded text before a value in an event's json (see _JsonEvent): `,"name":`.
_KEYS = _KeptTexts(lambda name: "," + wire.json_string(name) + ":")
_VARIABLE_KEYS = _KeptTexts(lambda name: "," + wire.json_string("variable_" + name) + ":")


@dataclass(frozen=True)
class _Layout:
    """A run of headers whose names (and some values) are always the same: `keys[i]` is the
    encoded text that comes before the i-th value not fixed, every fixed header before it
    included (see _JsonEvent)."""

    keys: tuple[str, ...]


def _layout(headers: Sequence[tuple[str, str | None]], *, opening: bool = False) -> _Layout:
    """The `_Layout` of (name, fixed value or None) headers; the last one's value is not fixed.
    `opening`: the run opens the event (`{` instead of the separating `,`)."""
    keys: list[str] = []
    text = ""
    for index, (name, fixed) in enumerate(headers):
        text += ("{" if opening and index == 0 else ",") + wire.json_string(name) + ":"
        if fixed is None:
            keys.append(text)
            text = ""
        else:
            text += wire.json_value(fixed)
    if text:
        raise ValueError("a layout ends with a value that is not fixed")
    return _Layout(tuple(keys))


def common_headers(
    factory: EventFactory,
    name: str,
    origin: Origin,
    subclass: str | None,
    now: float,
    sequence: int,
) -> Headers:
    """The block every event opens with (the reference of the json the factory writes)."""
    headers: Headers = []
    if subclass is not None:
        headers.append(("Event-Subclass", subclass))
    headers += [
        ("Event-Name", name),
        ("Core-UUID", factory.core_uuid),
        ("FreeSWITCH-Hostname", factory.hostname),
        ("FreeSWITCH-Switchname", factory.hostname),
        ("FreeSWITCH-IPv4", factory.ipv4),
        ("FreeSWITCH-IPv6", factory.ipv6),
        ("Event-Date-Local", stamp_local(now)),
        ("Event-Date-GMT", stamp_gmt(now)),
        ("Event-Date-Timestamp", micros(now)),
        ("Event-Calling-File", origin.file),
        ("Event-Calling-Function", origin.function),
        ("Event-Calling-Line-Number", str(origin.line)),
        ("Event-Sequence", str(sequence)),
    ]
    return headers


def _common_layout(
    factory: EventFactory, name: str, origin: Origin, subclass: str | None
) -> _Layout:
    """`common_headers` with the dates and the sequence left open (in that order)."""
    fixed: list[tuple[str, str | None]] = []
    if subclass is not None:
        fixed.append(("Event-Subclass", subclass))
    fixed += [
        ("Event-Name", name),
        ("Core-UUID", factory.core_uuid),
        ("FreeSWITCH-Hostname", factory.hostname),
        ("FreeSWITCH-Switchname", factory.hostname),
        ("FreeSWITCH-IPv4", factory.ipv4),
        ("FreeSWITCH-IPv6", factory.ipv6),
        ("Event-Date-Local", None),
        ("Event-Date-GMT", None),
        ("Event-Date-Timestamp", None),
        ("Event-Calling-File", origin.file),
        ("Event-Calling-Function", origin.function),
        ("Event-Calling-Line-Number", str(origin.line)),
        ("Event-Sequence", None),
    ]
    return _layout(fixed, opening=True)


class _CommonBlock:
    """The common block of one (name, origin, subclass) as a json event opens with it: `head`,
    the encoded text of all of it up to the Event-Sequence value, made for the instant `now`
    (again when an event of that kind fires at another one), and `known`, its KNOWN_NAMES
    values (see `_JsonEvent.__init__`)."""

    __slots__ = ("factory", "head", "keys", "known", "now", "origin")

    def __init__(
        self, factory: EventFactory, name: str, origin: Origin, subclass: str | None
    ) -> None:
        self.factory = factory
        self.origin = origin
        self.keys = _common_layout(factory, name, origin, subclass).keys
        self.known = _NO_KNOWN_VALUES.copy()
        self.known["event-name"] = name
        if subclass is not None:
            self.known["event-subclass"] = subclass
        self.now: float | None = None
        self.head = ""

    def head_at(self, now: float) -> None:
        local, gmt, stamp = self.factory.dates(now)
        keys = self.keys
        self.head = keys[0] + local + keys[1] + gmt + keys[2] + stamp + keys[3]
        self.now = now


# The channel block's optional headers, in the bits of its layout key (see _JsonEvent.channel).
_PRESENCE, _HANGUP, _CALLER_NAME, _ORIG_NUMBER, _CALLEE_NAME, _CALLEE_NUMBER = (1, 2, 4, 8, 16, 32)
_TRANSFER_SOURCE, _RDNIS = 64, 128


def _channel_layout(optional: int) -> _Layout:
    """The channel block's layout for a set of optional headers (`channel_block`'s order)."""

    def maybe(bit: int, name: str) -> list[tuple[str, str | None]]:
        return [(name, None)] if optional & bit else []

    return _layout(
        [
            ("Channel-State", None),
            ("Channel-Call-State", None),
            ("Channel-State-Number", None),
            ("Channel-Name", None),
            ("Unique-ID", None),
            ("Call-Direction", None),
            ("Presence-Call-Direction", None),
            ("Channel-HIT-Dialplan", None),
            *maybe(_PRESENCE, "Channel-Presence-ID"),
            ("Channel-Call-UUID", None),
            ("Answer-State", None),
            *maybe(_HANGUP, "Hangup-Cause"),
            ("Channel-Read-Codec-Name", "L16"),
            ("Channel-Read-Codec-Rate", "8000"),
            ("Channel-Read-Codec-Bit-Rate", "128000"),
            ("Channel-Write-Codec-Name", "L16"),
            ("Channel-Write-Codec-Rate", "8000"),
            ("Channel-Write-Codec-Bit-Rate", "128000"),
            ("Caller-Direction", None),
            ("Caller-Logical-Direction", None),
            ("Caller-Dialplan", None),
            *maybe(_CALLER_NAME, "Caller-Caller-ID-Name"),
            ("Caller-Caller-ID-Number", None),
            *maybe(_ORIG_NUMBER, "Caller-Orig-Caller-ID-Number"),
            *maybe(_CALLEE_NAME, "Caller-Callee-ID-Name"),
            *maybe(_CALLEE_NUMBER, "Caller-Callee-ID-Number"),
            ("Caller-ANI", None),
            ("Caller-Destination-Number", None),
            ("Caller-Unique-ID", None),
            ("Caller-Source", None),
            *maybe(_TRANSFER_SOURCE, "Caller-Transfer-Source"),
            ("Caller-Context", None),
            *maybe(_RDNIS, "Caller-RDNIS"),
            ("Caller-Channel-Name", None),
            ("Caller-Profile-Index", None),
            ("Caller-Profile-Created-Time", None),
            ("Caller-Channel-Created-Time", None),
            ("Caller-Channel-Answered-Time", None),
            ("Caller-Channel-Progress-Time", None),
            ("Caller-Channel-Progress-Media-Time", None),
            ("Caller-Channel-Hangup-Time", None),
            ("Caller-Channel-Transfer-Time", "0"),
            ("Caller-Channel-Resurrect-Time", "0"),
            ("Caller-Channel-Bridged-Time", "0"),
            ("Caller-Channel-Last-Hold", "0"),
            ("Caller-Channel-Hold-Accum", "0"),
            ("Caller-Screen-Bit", "true"),
            ("Caller-Privacy-Hide-Name", "false"),
            ("Caller-Privacy-Hide-Number", None),  # "false": a layout ends open
        ]
    )


_CHANNEL_LAYOUTS = [_channel_layout(optional) for optional in range(256)]


class _MicrosTexts(dict[float, str]):
    """Epoch seconds -> the `micros` text of a channel block's time ("0" for 0: not yet), made
    on first use: a channel shows each of its times in every event (a bounded table)."""

    def __missing__(self, seconds: float) -> str:
        text = str(int(seconds * 1_000_000)) if seconds else "0"
        if len(self) >= _STAMPS_KEPT:
            self.clear()
        self[seconds] = text
        return text


_MICROS_TEXTS = _MicrosTexts()


class _JsonEvent:
    """Builds one event straight as its json object (what `wire.serialize_json` would write
    for its headers), never as header pairs.

    The object is kept as two lists: `keys[i]`, the encoded text before the i-th value (one
    `,"name":`, a layout's whole run of fixed headers, or the common block up to its
    Event-Sequence, dates included), and `values[i]`, the value itself. Nearly always no value
    needs escaping (one check on them all: their bytes translated by
    `wire.JSON_ESCAPES_TO_NUL`, no NUL): then the object is the lists interleaved and joined
    with `"`, a few C calls for the whole event; otherwise the values that need it are encoded
    one by one. The first values of the KNOWN_NAMES are kept aside as the headers are added."""

    __slots__ = ("keys", "known", "values")

    def __init__(
        self, factory: EventFactory, name: str, origin: Origin, subclass: str | None = None
    ) -> None:
        """A new event with the block every event opens with (it takes its Event-Sequence)."""
        now = factory.clock.now()
        key = (name, id(origin), subclass)
        common = factory._commons.get(key)
        if common is None or common.origin is not origin:
            common = factory._commons[key] = _CommonBlock(factory, name, origin, subclass)
        if common.now != now:
            common.head_at(now)
        # The dates are in the head: only the sequence is a value.
        self.keys = [common.head]
        self.values = [str(next(factory._sequence))]
        self.known = common.known.copy()

    def pairs(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Headers named by the factory; none is one of the KNOWN_NAMES unless `know` says so."""
        names, values = zip(*pairs, strict=True)
        self.keys += map(_KEYS.__getitem__, names)
        self.values += values

    def know(self, lowered_name: str, value: str) -> None:
        """`pairs` just added the first header `lowered_name` (one of KNOWN_NAMES)."""
        self.known[lowered_name] = value

    def channel(self, ch: ChannelFacts) -> None:
        """`channel_block`'s headers: the values not fixed in the layout of the optional
        headers `ch` shows (see `_channel_layout`)."""
        number = ch.state_number if ch.state_number is not None else STATE_NUMBERS.get(ch.state, 0)
        uuid = ch.uuid
        direction = ch.direction
        values = self.values
        values += (
            ch.state,
            ch.call_state,
            str(number),
            ch.name,
            uuid,
            direction,
            direction,
            "true" if ch.hit_dialplan else "false",
        )
        optional = 0
        if ch.presence_id:
            optional = _PRESENCE
            values.append(ch.presence_id)
        values += (uuid, ch.answer_state)
        if ch.hangup_cause is not None:
            optional |= _HANGUP
            values.append(ch.hangup_cause)
        values += (direction, ch.logical_direction, ch.dialplan)
        if ch.caller_id_name is not None:
            optional |= _CALLER_NAME
            values.append(ch.caller_id_name)
        values.append(ch.caller_id_number)
        if ch.orig_caller_id_number is not None:
            optional |= _ORIG_NUMBER
            values.append(ch.orig_caller_id_number)
        if ch.callee_id_name is not None:
            optional |= _CALLEE_NAME
            values.append(ch.callee_id_name)
        if ch.callee_id_number is not None:
            optional |= _CALLEE_NUMBER
            values.append(ch.callee_id_number)
        values += (ch.ani, ch.destination_number, uuid, ch.source)
        if ch.transfer_source is not None:
            optional |= _TRANSFER_SOURCE
            values.append(ch.transfer_source)
        values.append(ch.context)
        if ch.rdnis is not None:
            optional |= _RDNIS
            values.append(ch.rdnis)
        micros_text = _MICROS_TEXTS
        created = ch.created
        values += (
            ch.name,
            str(ch.profile_index),
            micros_text[ch.profile_created or created],
            micros_text[created],
            micros_text[ch.answered],
            micros_text[ch.progress],
            micros_text[ch.progress_media],
            micros_text[ch.hungup],
            "false",
        )
        self.keys += _CHANNEL_LAYOUTS[optional].keys
        if self.known["unique-id"] is None:
            self.known["unique-id"] = uuid

    def variables(self, variables: Mapping[str, str]) -> None:
        self.keys += map(_VARIABLE_KEYS.__getitem__, variables)
        self.values += variables.values()

    def conference(self, conf: ConferenceFacts) -> None:
        self.keys += _CONFERENCE_LAYOUT.keys
        self.values += (conf.name, conf.domain, str(conf.size), conf.profile, conf.uuid)

    def member(self, member: MemberFacts, ch: ChannelFacts) -> None:
        self.keys += _FLOOR_LAYOUT.keys
        self.values.append("true" if member.floor else "false")
        self.channel(ch)
        self.keys += _MEMBER_TAIL_LAYOUT.keys
        self.values += (
            "true" if member.hear else "false",
            "true" if member.speak else "false",
            str(member.member_id),
            "moderator" if member.moderator else "member",
            "0",
        )

    def task(self, task_id: str, desc: str, group: str, runtime: str) -> None:
        self.keys += _TASK_LAYOUT.keys
        self.values += (task_id, desc, group, runtime)
        self.known["task-group"] = group

    def finish(self, name: str, body: str | None = None, subclass: str | None = None) -> SimEvent:
        keys, values = self.keys, self.values
        joined = _VALUE_SEPARATOR.join(values)
        marked = joined.encode("utf-8", "surrogateescape").translate(wire.JSON_ESCAPES_TO_NUL)
        if 0 in marked or wire.ARRAY_PREFIX in joined:  # a superset check for arrays
            encoded = _escaped_values(joined, marked, values)
            if encoded is None or body is not None:
                # Arrays, or the body: what serialize_json writes, from the pairs (rare).
                data = wire.to_bytes("".join(map(str.__add__, keys, map(wire.json_value, values))))
                return SimEvent(name, wire.json_headers(data), body, subclass)
            values = encoded
        # key, value, ..., key, value, "": joined with `"`, the last value's closing quote too.
        interleaved: list[str] = [""] * (2 * len(keys) + 1)
        interleaved[:-1:2] = keys
        interleaved[1::2] = values
        data = '"'.join(interleaved).encode("utf-8", "surrogateescape")  # wire.to_bytes
        return SimEvent(name, body=body, subclass=subclass, json_object=data, known=self.known)


# Joins an event's values for the one check (json writes it as it is) and, when some value
# needs escaping, for one call of the json encoder on them all.
_VALUE_SEPARATOR = "\x7f"


def _escaped_values(joined: str, marked: bytes, values: list[str]) -> list[str] | None:
    """Each value as json writes it between its quotes: from `joined` (the values joined by
    _VALUE_SEPARATOR, which json keeps as it is) and `marked` (its bytes with a NUL where json
    escapes one, see wire.JSON_ESCAPES_TO_NUL), only the values that hold a NUL are encoded.
    None when some value holds the separator itself or could be an array."""
    if wire.ARRAY_PREFIX in joined or joined.count(_VALUE_SEPARATOR) != len(values) - 1:
        return None
    encoded = values.copy()
    index = start = 0
    at = marked.find(0)
    while at >= 0:
        index += marked.count(_SEPARATOR_BYTE, start, at)
        encoded[index] = wire.json_string(values[index])[1:-1]
        start = marked.find(_SEPARATOR_BYTE, at)  # the end of that value
        if start < 0:
            break
        at = marked.find(0, start)
    return encoded


_SEPARATOR_BYTE = _VALUE_SEPARATOR.encode()


class _PairsEvent:
    """Builds one event as its header pairs, block by block (`common_headers`, `channel_block`,
    `variable_headers`): the reference `_JsonEvent` is tested against (`EventFactory(...,
    as_pairs=True)`), and what the few events that edit their headers use."""

    __slots__ = ("headers",)

    def __init__(
        self, factory: EventFactory, name: str, origin: Origin, subclass: str | None = None
    ) -> None:
        self.headers = factory.common(name, origin, subclass=subclass)

    def pairs(self, pairs: Sequence[tuple[str, str]]) -> None:
        self.headers += pairs

    def know(self, lowered_name: str, value: str) -> None:
        pass  # looked up in the pairs

    def channel(self, ch: ChannelFacts) -> None:
        self.headers += channel_block(ch)

    def variables(self, variables: Mapping[str, str]) -> None:
        self.headers += variable_headers(variables)

    def conference(self, conf: ConferenceFacts) -> None:
        self.headers += _conference_block(conf)

    def member(self, member: MemberFacts, ch: ChannelFacts) -> None:
        self.headers += _member_block(member, ch)

    def task(self, task_id: str, desc: str, group: str, runtime: str) -> None:
        self.headers += [
            ("Task-ID", task_id),
            ("Task-Desc", desc),
            ("Task-Group", group),
            ("Task-Runtime", runtime),
        ]

    def finish(self, name: str, body: str | None = None, subclass: str | None = None) -> SimEvent:
        return SimEvent(name, self.headers, body, subclass)


class EventFactory:
    """Builds every event of one switch run: owns Core-UUID, the sequence counter and the dates.

    Events are built straight as their json (`_JsonEvent`); `as_pairs=True` builds them as
    header pairs instead, block by block: the reference the tests hold the json against."""

    def __init__(
        self,
        clock: SimClock,
        *,
        core_uuid: str,
        hostname: str,
        ipv4: str = SIM_IPV4,
        ipv6: str = SIM_IPV6,
        wants: Callable[[str, str | None], bool] | None = None,
        as_pairs: bool = False,
    ) -> None:
        self.clock = clock
        self.core_uuid = core_uuid
        self.hostname = hostname
        self.ipv4 = ipv4
        self.ipv6 = ipv6
        # Does anyone take events of this name (and CUSTOM subclass)? None: everyone does.
        self.wants = wants
        self._sequence = itertools.count(1)
        # Making a builder opens an event: `self._builder(self, name, origin[, subclass])`.
        self._builder: type[_JsonEvent | _PairsEvent] = _PairsEvent if as_pairs else _JsonEvent
        # (name, origin, subclass) -> the common block's layout (Core-UUID etc. never change).
        # Keyed by the origin's identity (its dataclass hash is a Python call); the origin is
        # kept in its entry, so an id is never taken for another origin's.
        self._commons: dict[tuple[str, int, str | None], _CommonBlock] = {}
        self._dates_now: float | None = None
        self._dates = ("", "", "")

    def dates(self, now: float) -> tuple[str, str, str]:
        """Event-Date-Local, -GMT and -Timestamp at `now`, each encoded as a json string (most
        events fire at the same instant as the one before: made once per instant)."""
        if now != self._dates_now:
            self._dates = (
                wire.json_string(stamp_local(now)),
                wire.json_string(stamp_gmt(now)),
                '"' + str(int(now * 1_000_000)) + '"',
            )
            self._dates_now = now
        return self._dates

    def _unwanted(self, name: str, subclass: str | None = None) -> SimEvent | None:
        """For a channel or conference event that no client is subscribed to: a stand-in that
        only names it (it still takes its Event-Sequence number, as in FreeSWITCH every fired
        event does), so that its hundred-odd headers are never built. None: build it."""
        if self.wants is None or self.wants(name, subclass):
            return None
        next(self._sequence)
        return SimEvent(name, [("Event-Name", name)], subclass=subclass, unsent=True)

    # -- common block ------------------------------------------------------------------------

    def common(self, name: str, origin: Origin, *, subclass: str | None = None) -> Headers:
        """The block every event opens with, as header pairs."""
        return common_headers(self, name, origin, subclass, self.clock.now(), next(self._sequence))

    # -- system events -----------------------------------------------------------------------

    def heartbeat(
        self,
        *,
        uptime_seconds: float,
        version: str,
        session_count: int,
        sessions_since_startup: int,
        session_peak: int,
    ) -> SimEvent:
        """HEARTBEAT (switch_core.c send_heartbeat)."""
        event = self._builder(self, "HEARTBEAT", ORIGINS["HEARTBEAT"])
        event.pairs(
            [
                ("Event-Info", "System Ready"),
                ("Up-Time", uptime_text(uptime_seconds)),
                ("FreeSWITCH-Version", version),
                ("Uptime-msec", str(int(uptime_seconds * 1000))),
                ("Session-Count", str(session_count)),
                ("Max-Sessions", "200"),
                ("Session-Per-Sec", "30"),
                ("Session-Per-Sec-Last", "0"),
                ("Session-Per-Sec-Max", "1"),
                ("Session-Per-Sec-FiveMin", "0"),
                ("Session-Since-Startup", str(sessions_since_startup)),
                ("Session-Peak-Max", str(session_peak)),
                ("Session-Peak-FiveMin", str(session_peak)),
                ("Idle-CPU", "100.000000"),
            ]
        )
        return event.finish("HEARTBEAT")

    def shutdown(self) -> SimEvent:
        """SHUTDOWN (transcript 12)."""
        event = self._builder(self, "SHUTDOWN", ORIGINS["SHUTDOWN"])
        event.pairs([("Event-Info", "System Shutting Down")])
        return event.finish("SHUTDOWN")

    def background_job(self, job_uuid: str, command: str, arg: str, body: str) -> SimEvent:
        """BACKGROUND_JOB: Job-UUID, Job-Command, Job-Command-Arg (if any), the result as body."""
        event = self._builder(self, "BACKGROUND_JOB", ORIGINS["BACKGROUND_JOB"])
        pairs = [("Job-UUID", job_uuid), ("Job-Command", command)]
        if arg:
            pairs.append(("Job-Command-Arg", arg))
        event.pairs(pairs)
        event.know("job-uuid", job_uuid)
        return event.finish("BACKGROUND_JOB", body)

    # -- scheduler events --------------------------------------------------------------------

    def schedule(
        self, name: str, task_id: int, desc: str, group: str, runtime: int, origin: str = ""
    ) -> SimEvent:
        """ADD_SCHEDULE / DEL_SCHEDULE with Task-ID, Task-Desc, Task-Group, Task-Runtime."""
        event = self._builder(self, name, ORIGINS[origin or name])
        event.task(str(task_id), desc, group, str(runtime))
        return event.finish(name)

    # -- channel events ----------------------------------------------------------------------

    def channel_event(
        self,
        name: str,
        ch: ChannelFacts,
        *,
        with_variables: bool = True,
        extra: Headers | None = None,
    ) -> SimEvent:
        """A CHANNEL_* / DTMF event: common block, channel block, variables, then `extra`.
        (CHANNEL_DATA is not fired but read: `uuid_dump` serialises it, so it is always built.)"""
        if name != "CHANNEL_DATA":
            stand_in = self._unwanted(name)
            if stand_in is not None:
                return stand_in
        return self._channel_event(name, ch, with_variables, extra)

    def _channel_event(
        self, name: str, ch: ChannelFacts, with_variables: bool, extra: Headers | None
    ) -> SimEvent:
        """`channel_event` once it is known to be wanted."""
        event = self._builder(self, name, ORIGINS[name])
        if name == "CHANNEL_HANGUP_COMPLETE" and ch.hangup_cause is not None:
            event.pairs([("Hangup-Cause", ch.hangup_cause)])
        event.channel(ch)
        if with_variables:
            event.variables(ch.own_variables if ch.catch_up is None else ch.variables)  # no call
        if extra:
            event.pairs(extra)
        return event.finish(name)

    def channel_create(self, ch: ChannelFacts) -> SimEvent:
        return self.channel_event("CHANNEL_CREATE", ch)

    def channel_progress(self, ch: ChannelFacts) -> SimEvent:
        return self.channel_event("CHANNEL_PROGRESS", ch)

    def channel_answer(self, ch: ChannelFacts) -> SimEvent:
        return self.channel_event("CHANNEL_ANSWER", ch)

    def channel_execute(
        self, ch: ChannelFacts, application: str, data: str | None, app_uuid: str
    ) -> SimEvent:
        stand_in = self._unwanted("CHANNEL_EXECUTE")
        if stand_in is not None:
            return stand_in
        extra: Headers = [("Application", application)]
        if data:
            extra.append(("Application-Data", data))
        extra.append(("Application-UUID", app_uuid))
        return self._channel_event("CHANNEL_EXECUTE", ch, True, extra)

    def channel_execute_complete(
        self,
        ch: ChannelFacts,
        application: str,
        data: str | None,
        app_uuid: str,
        response: str = "_none_",
    ) -> SimEvent:
        stand_in = self._unwanted("CHANNEL_EXECUTE_COMPLETE")
        if stand_in is not None:
            return stand_in
        extra: Headers = [("Application", application)]
        if data:
            extra.append(("Application-Data", data))
        extra += [("Application-Response", response), ("Application-UUID", app_uuid)]
        return self._channel_event("CHANNEL_EXECUTE_COMPLETE", ch, True, extra)

    def dtmf(self, ch: ChannelFacts, digit: str, duration_samples: int = 2000) -> SimEvent:
        """DTMF: the channel block and the digit, no `variable_*` headers."""
        stand_in = self._unwanted("DTMF")
        if stand_in is not None:
            return stand_in
        extra: Headers = [
            ("DTMF-Digit", digit),
            ("DTMF-Duration", str(duration_samples)),
            ("DTMF-Source", "UNKNOWN"),
        ]
        return self._channel_event("DTMF", ch, False, extra)

    def channel_hangup(self, ch: ChannelFacts) -> SimEvent:
        return self.channel_event("CHANNEL_HANGUP", ch)

    def channel_hangup_complete(self, ch: ChannelFacts) -> SimEvent:
        return self.channel_event("CHANNEL_HANGUP_COMPLETE", ch)

    # -- events fired by clients and by the dialplan --------------------------------------

    def client_event(
        self,
        command_line: str,
        client_headers: Sequence[tuple[str, str]],
        event_uuid: str,
        body: str | None = None,
    ) -> SimEvent:
        """What `sendevent <NAME>` fires (mod_event_socket's parse_command, seen on the real
        switch): `Event-Subclass` on top (a CUSTOM event's, moved there), `Command` (the
        command line), the client's headers as sent (a client `Event-Name` is kept, and a second
        one follows), `Event-UUID`, then the common block. An unknown name fires a CLONE."""
        token = command_line[len("sendevent"):].strip(" \t").upper()
        name = token if token in EVENT_TYPE_NAMES else "CLONE"
        subclass = None
        if name == "CUSTOM":
            subclass = next(
                (v for k, v in client_headers if k.lower() == "event-subclass"), None
            )
        stand_in = self._unwanted(name, subclass)
        if stand_in is not None:
            return stand_in
        headers: Headers = [("Event-Subclass", subclass)] if subclass is not None else []
        headers.append(("Command", command_line))
        headers += [
            (k, v) for k, v in client_headers
            if subclass is None or k.lower() != "event-subclass"
        ]
        headers.append(("Event-UUID", event_uuid))
        headers += self.common(name, ORIGINS["sendevent"])
        return SimEvent(name, headers, body=body, subclass=subclass)

    def app_event(self, ch: ChannelFacts, data: str) -> SimEvent:
        """What the dialplan's `event` application fires (mod_dptools' event_function, seen on
        the real switch): up to 25 comma-separated `name=value` pairs (spaces around both
        trimmed, a part without `=` skipped) after the common block of a CHANNEL_APPLICATION;
        an `Event-Name` pair replaces the block's (at its own position), an `Event-Subclass`
        pair goes on top; then the channel's block and variables."""
        pairs: list[tuple[str, str]] = []
        for part in data.split(",", 24):
            var, sep, value = part.strip(" ").partition("=")
            if sep:
                pairs.append((var.rstrip(" "), value.lstrip(" ")))
        name = "CHANNEL_APPLICATION"
        subclass: str | None = None
        for var, value in pairs:
            if var.lower() == "event-name" and value.upper() in EVENT_TYPE_NAMES:
                name = value.upper()
            elif var.lower() == "event-subclass":
                subclass = value
        stand_in = self._unwanted(name, subclass)
        if stand_in is not None:
            return stand_in
        headers = self.common("CHANNEL_APPLICATION", ORIGINS["event"])
        for var, value in pairs:
            if var.lower() == "event-name":
                headers = [(k, v) for k, v in headers if k.lower() != "event-name"]
            elif var.lower() == "event-subclass":
                headers = [(k, v) for k, v in headers if k.lower() != "event-subclass"]
                headers.insert(0, (var, value))
                continue
            headers.append((var, value))
        headers += channel_block(ch)
        headers += variable_headers(ch.variables)
        return SimEvent(name, headers, subclass=subclass if name == "CUSTOM" else None)

    # -- conference::maintenance -------------------------------------------------------------

    def floor_change(
        self,
        conf: ConferenceFacts,
        *,
        member: MemberFacts | None = None,
        ch: ChannelFacts | None = None,
    ) -> SimEvent:
        """conference::maintenance floor-change, as recorded: Old-ID is always `none`; with a
        new holder the conference block repeats, then the member's blocks and New-ID."""
        stand_in = self._unwanted("CUSTOM", CONFERENCE_SUBCLASS)
        if stand_in is not None:
            return stand_in
        event = self._builder(self, "CUSTOM", ORIGINS["floor-change"], CONFERENCE_SUBCLASS)
        event.conference(conf)
        event.pairs([("Action", "floor-change"), ("Old-ID", "none")])
        if member is not None and ch is not None:
            event.conference(conf)
            event.member(member, ch)
            event.pairs([("New-ID", str(member.member_id))])
        else:
            event.pairs([("New-ID", "none")])
        return event.finish("CUSTOM", subclass=CONFERENCE_SUBCLASS)

    def conference(
        self,
        action: str,
        conf: ConferenceFacts,
        *,
        member: MemberFacts | None = None,
        ch: ChannelFacts | None = None,
    ) -> SimEvent:
        """CUSTOM conference::maintenance: conference-create/-destroy, add-/del-member."""
        stand_in = self._unwanted("CUSTOM", CONFERENCE_SUBCLASS)
        if stand_in is not None:
            return stand_in
        event = self._builder(self, "CUSTOM", ORIGINS[action], CONFERENCE_SUBCLASS)
        event.conference(conf)
        if member is not None and ch is not None:
            event.member(member, ch)
        event.pairs([("Action", action)])
        return event.finish("CUSTOM", subclass=CONFERENCE_SUBCLASS)


def _conference_block(conf: ConferenceFacts) -> Headers:
    return [
        ("Conference-Name", conf.name),
        ("Conference-Domain", conf.domain),
        ("Conference-Size", str(conf.size)),
        ("Conference-Ghosts", "0"),
        ("Conference-Profile-Name", conf.profile),
        ("Conference-Unique-ID", conf.uuid),
    ]


def _member_block(member: MemberFacts, ch: ChannelFacts) -> Headers:
    headers: Headers = [("Floor", "true" if member.floor else "false")]
    headers += channel_block(ch)
    headers += [
        ("Video", "false"),
        ("Hear", "true" if member.hear else "false"),
        ("See", "true"),
        ("Speak", "true" if member.speak else "false"),
        ("Talking", "false"),
        ("Mute-Detect", "false"),
        ("Hold", "false"),
        ("Member-ID", str(member.member_id)),
        ("Member-Type", "moderator" if member.moderator else "member"),
        ("Member-Ghost", "false"),
        ("Energy-Level", "100"),
        ("Current-Energy", "0"),
    ]
    return headers


# The fixed-name runs of conference::maintenance and scheduler events (the reference is
# _conference_block, _member_block and EventFactory.schedule's pairs).
_CONFERENCE_LAYOUT = _layout(
    [
        ("Conference-Name", None),
        ("Conference-Domain", None),
        ("Conference-Size", None),
        ("Conference-Ghosts", "0"),
        ("Conference-Profile-Name", None),
        ("Conference-Unique-ID", None),
    ]
)
_FLOOR_LAYOUT = _layout([("Floor", None)])
_MEMBER_TAIL_LAYOUT = _layout(
    [
        ("Video", "false"),
        ("Hear", None),
        ("See", "true"),
        ("Speak", None),
        ("Talking", "false"),
        ("Mute-Detect", "false"),
        ("Hold", "false"),
        ("Member-ID", None),
        ("Member-Type", None),
        ("Member-Ghost", "false"),
        ("Energy-Level", "100"),
        ("Current-Energy", None),  # "0": a layout ends open
    ]
)
_TASK_LAYOUT = _layout(
    [("Task-ID", None), ("Task-Desc", None), ("Task-Group", None), ("Task-Runtime", None)]
)


def uptime_text(seconds: float) -> str:
    """`0 years, 0 days, 0 hours, 1 minute, 50 seconds, 361 milliseconds, 762 microseconds`."""
    total_us = int(seconds * 1_000_000)
    us = total_us % 1000
    ms = (total_us // 1000) % 1000
    whole = total_us // 1_000_000
    secs = whole % 60
    mins = (whole // 60) % 60
    hours = (whole // 3600) % 24
    days = (whole // 86400) % 365
    years = whole // (86400 * 365)

    def unit(value: int, name: str) -> str:
        return f"{value} {name}" + ("" if value == 1 else "s")

    return ", ".join(
        [
            unit(years, "year"),
            unit(days, "day"),
            unit(hours, "hour"),
            unit(mins, "minute"),
            unit(secs, "second"),
            unit(ms, "millisecond"),
            unit(us, "microsecond"),
        ]
    )
