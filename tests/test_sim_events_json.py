"""The simulator's events built straight as json (events._JsonEvent) against the reference: the
same factory building header pairs block by block (`EventFactory(..., as_pairs=True)`) and the
reference encoders of wire.py. For every event type and for values that need escaping (quotes,
backslashes, control characters, DEL, non-ASCII, lone surrogates, `ARRAY::` values), the
frames in every format, the headers read back and the filters' header lookups are the same."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from confguard.sim import wire
from confguard.sim.events import (
    KNOWN_NAMES,
    ORIGINS,
    ChannelFacts,
    ConferenceFacts,
    EventFactory,
    MemberFacts,
    SimEvent,
)
from confguard.sim.server import first_header

# Text that stresses the encoders: mostly plain, sometimes what json or the url encoder escapes.
_SPECIAL = ['"', "\\", "\n", "\r", "\t", "\x00", "\x1f", "\x7f", "é", "€", "\udcff", "%", "%41",
            "<", "&", " ", "|:", "{", "}", ":", ","]
_PIECES = st.one_of(st.sampled_from(_SPECIAL), st.text(alphabet="abcXYZ019-_.@/", max_size=6))
_TEXT = st.one_of(
    st.text(alphabet="abcdefXYZ0189-_.@/ ", max_size=12),
    st.lists(_PIECES, max_size=5).map("".join),
    st.lists(_PIECES, max_size=3).map(lambda parts: wire.ARRAY_PREFIX + "|:".join(parts)),
)
_PLAIN = st.text(alphabet="abcdefXYZ0189-_.", min_size=1, max_size=10)
_NAME = st.one_of(_PLAIN, _TEXT.filter(bool))
_TIME = st.one_of(st.just(0.0), st.floats(min_value=1.0, max_value=2e9, allow_nan=False))


@st.composite
def _channels(draw: st.DrawFn) -> ChannelFacts:
    optional = st.one_of(st.none(), _TEXT)
    ch = ChannelFacts(uuid=draw(_TEXT), name=draw(_TEXT), created=draw(_TIME))
    ch.direction = draw(_TEXT)
    ch.presence_id = draw(_TEXT)
    ch.state = draw(st.sampled_from(["CS_INIT", "CS_EXECUTE", "CS_HANGUP", "CS_WEIRD"]))
    ch.state_number = draw(st.one_of(st.none(), st.integers(0, 12)))
    ch.call_state = draw(_TEXT)
    ch.answer_state = draw(_TEXT)
    ch.hit_dialplan = draw(st.booleans())
    ch.hangup_cause = draw(optional)
    ch.logical_direction = draw(_TEXT)
    ch.caller_id_name = draw(optional)
    ch.caller_id_number = draw(_TEXT)
    ch.orig_caller_id_number = draw(optional)
    ch.callee_id_name = draw(optional)
    ch.callee_id_number = draw(optional)
    ch.ani = draw(_TEXT)
    ch.destination_number = draw(_TEXT)
    ch.transfer_source = draw(optional)
    ch.context = draw(_TEXT)
    ch.rdnis = draw(optional)
    ch.profile_index = draw(st.integers(1, 5))
    ch.profile_created = draw(_TIME)
    ch.answered, ch.progress, ch.progress_media, ch.hungup = (draw(_TIME) for _ in range(4))
    for name, value in draw(st.lists(st.tuples(_NAME, _TEXT), max_size=12)):
        ch.set_var(name, value)  # a name set again moves to the end
    return ch


def _factories(hostname: str, core_uuid: str, now: float) -> tuple[EventFactory, EventFactory]:
    class Clock:
        def now(self) -> float:
            return now

    fast = EventFactory(Clock(), core_uuid=core_uuid, hostname=hostname)  # type: ignore[arg-type]
    reference = EventFactory(
        Clock(), core_uuid=core_uuid, hostname=hostname, as_pairs=True  # type: ignore[arg-type]
    )
    return fast, reference


def _build_all(factory: EventFactory, ch: ChannelFacts, text: str, number: int) -> list[SimEvent]:
    """One event of every kind the factory builds, from the same facts."""
    room = ConferenceFacts(name=text, uuid=text + "-c", domain=text, size=number, profile=text)
    member = MemberFacts(number, floor=number % 2 == 0, hear=number % 3 == 0, moderator=True)
    return [
        factory.channel_create(ch),
        factory.channel_progress(ch),
        factory.channel_answer(ch),
        factory.channel_execute(ch, text, text or None, text + "-app"),
        factory.channel_execute_complete(ch, text, text or None, "app", response=text),
        factory.dtmf(ch, text, number),
        factory.channel_hangup(ch),
        factory.channel_hangup_complete(ch),
        factory.channel_event("CHANNEL_DATA", ch),
        factory.background_job(text, "originate", text, text),
        factory.background_job(text, "status", "", ""),
        factory.schedule("ADD_SCHEDULE", number, text, text, number),
        factory.schedule("DEL_SCHEDULE", number, text, text, number, origin="DEL_SCHEDULE_API"),
        factory.heartbeat(uptime_seconds=number, version=text, session_count=number,
                          sessions_since_startup=number, session_peak=number),
        factory.shutdown(),
        factory.conference("conference-create", room),
        factory.conference("add-member", room, member=member, ch=ch),
        factory.floor_change(room),
        factory.floor_change(room, member=member, ch=ch),
        factory.app_event(ch, f"Event-Name=CUSTOM,Event-Subclass={text},x={text}"),
        factory.client_event("sendevent CUSTOM", [("Event-Subclass", text), ("Unique-ID", text)],
                             text + "-ev", text or None),
    ]


_LOOKED_UP = (*KNOWN_NAMES, "core-uuid", "hangup-cause", "caller-caller-id-name", "action",
              "variable_a", "application", "dtmf-digit", "job-command-arg", "absent")


def _assert_same(fast: SimEvent, reference: SimEvent) -> None:
    # Lookups first: a built event answers them before its headers are read back.
    for name in _LOOKED_UP:
        assert fast.first_value(name) == first_header(reference.headers, name), name
    assert fast.headers == reference.headers
    assert (fast.name, fast.body, fast.subclass) == (
        reference.name, reference.body, reference.subclass
    )
    for event_format in wire.EVENT_FORMATS:
        expected = wire.encode_event(reference.headers, reference.body, event_format)
        assert fast.frame(event_format) == expected, event_format


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ch=_channels(),
    text=_TEXT,
    number=st.integers(0, 99999),
    hostname=st.one_of(st.just("confguard-sim"), _TEXT),
    core_uuid=st.one_of(st.just("c0ffee00-0000"), _TEXT),
    now=st.floats(min_value=1.0, max_value=2e9, allow_nan=False),
)
def test_json_built_events_are_the_reference_byte_for_byte(
    ch: ChannelFacts, text: str, number: int, hostname: str, core_uuid: str, now: float
) -> None:
    fast, reference = _factories(hostname, core_uuid, now)
    built = _build_all(fast, ch, text, number)
    expected = _build_all(reference, ch, text, number)
    assert len(built) == len(expected)
    for mine, theirs in zip(built, expected, strict=True):
        _assert_same(mine, theirs)


def test_the_escaping_paths_are_taken_and_still_the_reference() -> None:
    """Plain values (one join), a value to escape (one encoder call over them all), a value
    holding the separator of that call or an array (each value on its own), with a body or
    not: each way gives the reference's bytes, repeated Hangup-Cause included."""
    cases = ["plain", '"Outbound Call" <XML>', "back\\slash\x01", "del\x7f\"", "ARRAY::a|:b"]
    for value in cases:
        ch = ChannelFacts(uuid="u-1", name="loopback/x-a", created=5.5, hangup_cause="NORMAL")
        ch.set_var("caller_id", value)
        ch.set_var("b", "2")
        fast, reference = _factories("h", "core", 7.25)
        for make in (
            lambda f: f.channel_hangup_complete(ch),  # noqa: B023
            lambda f: f.background_job("job-1", "originate", value, value),  # noqa: B023
        ):
            mine, theirs = make(fast), make(reference)
            _assert_same(mine, theirs)
        complete = fast.channel_hangup_complete(ch)
        assert complete.get_all("Hangup-Cause") == ["NORMAL", "NORMAL"]


def test_variables_set_again_move_to_the_end_of_the_event() -> None:
    """The json follows the channel's variables as they are when the event fires: a variable set
    again moves to the end, one popped from the dict is gone, one assigned in place stays."""
    ch = ChannelFacts(uuid="u-1", name="loopback/x-a", created=1.0)
    for name in ("a", "b", "c", "d"):
        ch.set_var(name, name.upper())
    ch.set_var("a", "again")
    ch.variables.pop("b")
    ch.variables["c"] = "in place"
    fast, reference = _factories("h", "core", 2.0)
    mine, theirs = fast.channel_answer(ch), reference.channel_answer(ch)
    _assert_same(mine, theirs)
    assert [(k, v) for k, v in mine.headers if k.startswith("variable_")] == [
        ("variable_c", "in place"), ("variable_d", "D"), ("variable_a", "again")
    ]


def test_an_event_fired_keeps_its_values_when_the_channel_changes_after() -> None:
    ch = ChannelFacts(uuid="u-1", name="loopback/x-a", created=1.0)
    ch.set_var("x", "1")
    fast, _ = _factories("h", "core", 2.0)
    event = fast.channel_progress(ch)
    ch.set_var("x", "2")
    ch.state = "CS_HANGUP"
    assert event.get("variable_x") == "1" and event.get("Channel-State") == "CS_INIT"


def test_a_common_layout_is_per_origin_and_subclass() -> None:
    """DEL_SCHEDULE fired from two places: each event names its own origin."""
    fast, reference = _factories("h", "core", 3.0)
    for origin in ("", "DEL_SCHEDULE_API", "DEL_SCHEDULE_GROUP", ""):
        mine = fast.schedule("DEL_SCHEDULE", 1, "d", "g", 9, origin=origin)
        theirs = reference.schedule("DEL_SCHEDULE", 1, "d", "g", 9, origin=origin)
        _assert_same(mine, theirs)
        assert mine.get("Event-Calling-Function") == ORIGINS[origin or "DEL_SCHEDULE"].function
