"""Scripted scenarios for the invite machine, replayed partly from the recorded transcripts."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import unquote

import pytest

from confguard.invite import (
    GRACE_S,
    JOIN_DUE_S,
    SETTLE_DELAY,
    AddFilter,
    BadInput,
    Command,
    DelFilter,
    Finished,
    Invite,
    InviteSpec,
    JoinTarget,
    Outcome,
    ProtocolViolation,
    SendApi,
    SendBgapi,
    State,
    StateChanged,
    UsageError,
    WakeAt,
    build_waiting_app,
)

U = "edc1452f-ddd4-43d2-b9a5-0b8cf6703a0e"
J = "c304d7d7-a906-4499-b925-6d75d3d6d878"
T0 = 1000.0
WALL = 1795853883.4


# ------------------------------------------------------------------------------ helpers


def plain_event(record: Mapping[str, str]) -> tuple[dict[str, str], str | None]:
    """One recorded text/event-plain frame as (decoded headers, body)."""
    outer = record["data"].split("\n\n", 1)[1]
    head, _, body = outer.partition("\n\n")
    headers: dict[str, str] = {}
    for header_line in head.split("\n"):
        name, sep, value = header_line.partition(": ")
        if sep and name not in headers:
            headers[name] = unquote(value)
    return headers, body or None


def load_events(path: Path) -> list[tuple[dict[str, str], str | None]]:
    """Every plain event of a transcript as (decoded headers, body)."""
    events = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record["dir"].startswith("S->C") and record["ctype"] == "text/event-plain":
            events.append(plain_event(record))
    return events


def routed(
    events: Iterable[tuple[dict[str, str], str | None]], call_uuid: str, job_uuid: str
) -> list[tuple[dict[str, str], str | None]]:
    """What the engine routes to one invite: Unique-ID or Task-Group = U, or Job-UUID = J."""
    return [
        (h, b)
        for h, b in events
        if h.get("Unique-ID") == call_uuid
        or h.get("Task-Group") == call_uuid
        or h.get("Job-UUID") == job_uuid
    ]


def ev(name: str, uuid: str = U, **headers: str) -> dict[str, str]:
    return {
        "Event-Name": name,
        "Unique-ID": uuid,
        **{k.replace("_", "-"): v for k, v in headers.items()},
    }


def sched(name: str, task_id: str, uuid: str = U) -> dict[str, str]:
    return {
        "Event-Name": name,
        "Task-ID": task_id,
        "Task-Desc": "switch_ivr_schedule_hangup",
        "Task-Group": uuid,
        "Task-Runtime": "1795853913",
    }


def hangup(cause: str, name: str = "CHANNEL_HANGUP_COMPLETE") -> dict[str, str]:
    return {"Event-Name": name, "Unique-ID": U, "Hangup-Cause": cause}


def job(body: str) -> tuple[dict[str, str], str]:
    return {"Event-Name": "BACKGROUND_JOB", "Job-UUID": J, "Job-Command": "originate"}, body


def add_member(room: str = "test1") -> dict[str, str]:
    return {
        "Event-Name": "CUSTOM",
        "Event-Subclass": "conference::maintenance",
        "Action": "add-member",
        "Conference-Name": room,
        "Member-ID": "1",
        "Unique-ID": U,
    }


def apis(commands: Iterable[Command]) -> list[SendApi]:
    return [c for c in commands if isinstance(c, SendApi)]


def api(commands: Iterable[Command], prefix: str) -> SendApi:
    found = [c for c in apis(commands) if c.command.startswith(prefix)]
    assert len(found) == 1, (prefix, list(commands))
    return found[0]


def finished(commands: Iterable[Command]) -> Finished:
    found = [c for c in commands if isinstance(c, Finished)]
    assert len(found) == 1, list(commands)
    return found[0]


def spec(**overrides: object) -> InviteSpec:
    values: dict[str, object] = {"extension": "1000", "room": "test1", "timeout": 30}
    values.update(overrides)
    return InviteSpec(**values)  # type: ignore[arg-type]


def make(now: float = T0, **overrides: object) -> tuple[Invite, list[Command]]:
    invite = Invite(
        spec(**overrides), call_uuid=U, job_uuid=J, invite_id="inv-1", now=now, wall=WALL
    )
    return invite, invite.start()


def answered(**overrides: object) -> Invite:
    invite, _ = make(**overrides)
    invite.event(sched("ADD_SCHEDULE", "4"), None, T0 + 0.01)
    invite.event(ev("CHANNEL_CREATE"), None, T0 + 0.02)
    invite.event(ev("CHANNEL_ANSWER"), None, T0 + 1.0)
    assert invite.state is State.WAITING_KEY
    return invite


def assert_ended_cleanly(invite: Invite, commands: list[Command]) -> None:
    dels = [c for c in commands if isinstance(c, DelFilter)]
    call = invite.call_uuid
    # A joined call's Unique-ID filter is handed over to its watch in the room (room.py).
    joined = invite.outcome is Outcome.JOINED
    assert invite.watch_handover is joined
    # one filter a call (its job and timers pass the permanent Event-Name filters)
    assert dels == ([] if joined else [DelFilter("Unique-ID", call)])
    assert isinstance(commands[-1], StateChanged) and commands[-1].state is State.ENDED
    assert invite.state is State.ENDED


# ------------------------------------------------------------------------------ start


def test_start_adds_filters_before_the_originate_and_arms_the_timer_inside_freeswitch() -> None:
    invite, commands = make(
        caller_id_name="Conf Guard",
        caller_id_number="+4930",
        variables={"sim_answer_after": "1"},
        ring_timeout=20,
    )
    assert commands[:1] == [AddFilter("Unique-ID", U)]  # one filter a call (esl.PERMANENT_FILTERS)
    bgapi = commands[1]
    assert isinstance(bgapi, SendBgapi) and bgapi.job_uuid == J
    assert bgapi.command == (
        "originate {"
        f"origination_uuid={U},originate_timeout=20,ignore_early_media=true,"
        f"confguard_invite=inv-1,confguard_room=test1,confguard_deadline={int(WALL) + 30},"
        "origination_caller_id_name='Conf Guard',origination_caller_id_number=+4930,"
        "sim_answer_after=1,"
        f"api_on_originate='sched_hangup +30 {U} ALLOTTED_TIMEOUT'"
        "}user/1000 "
        "'m:~:sched_hangup:+30 ALLOTTED_TIMEOUT"
        "~play_and_get_digits:1 1 31 5000 # silence silence_stream://250 confguard_key ^[1]$ "
        "5000 park inline~sched_cancel~conference:test1' inline"
    )
    assert commands[2] == StateChanged(State.PLACING, State.PLACING, commands[2].detail)  # type: ignore[union-attr]
    assert commands[3] == WakeAt(T0 + 30 + 3.0, commands[3].reason)  # type: ignore[union-attr]
    assert invite.deadline == T0 + 30


def test_the_waiting_app_has_the_key_the_prompt_the_timers_and_the_target() -> None:
    app = build_waiting_app(
        spec(timeout=45, key="#", decline_key="*", prompt="tone_stream://%(250,250,440);loops=2",
             reprompt_interval=0.5, hangup_cause="MEDIA_TIMEOUT",
             join=JoinTarget.dialplan("7001", "default"))
    )
    assert app == (
        "'m:~:sched_hangup:+45 MEDIA_TIMEOUT"
        "~play_and_get_digits:1 1 46 1000 D tone_stream://%(250,250,440);loops=2 "
        "silence_stream://250 confguard_key ^[#]$ 1000 park inline"
        "~sched_cancel~transfer:7001 XML default' inline"
    )
    # The apps are separated by `~` (set by `m:~:`), which no validated value can hold, and
    # quoted as one originate argument: nothing but the four apps.
    assert app.count("~") == 1 + 3 and app.count("'") == 2
    room_app = build_waiting_app(spec(room="sales-1", join=JoinTarget.inline("big@wide")))
    assert room_app.endswith("~sched_cancel~conference:big@wide' inline")


def test_ring_timeout_defaults_to_timeout() -> None:
    _, commands = make(timeout=45)
    assert "originate_timeout=45," in commands[1].command  # type: ignore[union-attr]


# ------------------------------------------------------------------------------ joined


def test_the_key_is_joined_by_the_switch_and_confguard_only_watches() -> None:
    """As the real switch runs the waiting app: DTMF, then add-member, then the DEL_SCHEDULE
    of each cancelled task (the scheduler's next pass) -- confguard sends nothing."""
    invite, _ = make()
    sent: list[Command] = []
    for headers, now in [
        (sched("ADD_SCHEDULE", "4"), T0 + 0.01),
        (ev("CHANNEL_CREATE"), T0 + 0.02),
        (ev("CHANNEL_ANSWER"), T0 + 1.0),
        (sched("ADD_SCHEDULE", "5"), T0 + 1.02),
        (sched("ADD_SCHEDULE", "6"), T0 + 1.02),
        (ev("DTMF", DTMF_Digit="1"), T0 + 3.0),
        (add_member(), T0 + 3.0),
        (sched("DEL_SCHEDULE", "4"), T0 + 3.0),
    ]:
        sent += invite.event(headers, None, now)
    assert apis(sent) == []
    assert finished(sent).outcome is Outcome.JOINED
    states = [c.state for c in sent if isinstance(c, StateChanged)]
    assert states == [
        State.RINGING,
        State.WAITING_KEY,
        State.CANCELLING,
        State.JOINING,
        State.JOINED,
        State.ENDED,
    ]
    assert_ended_cleanly(invite, sent[sent.index(finished(sent)) :])


def test_the_timers_gone_after_the_key_is_joining_then_add_member_joins() -> None:
    invite = answered()
    invite.event(sched("ADD_SCHEDULE", "5"), None, T0 + 1.02)
    out = invite.event(ev("DTMF", DTMF_Digit="1"), None, T0 + 3)
    assert [c.state for c in out if isinstance(c, StateChanged)] == [State.CANCELLING]
    assert WakeAt(T0 + 3 + JOIN_DUE_S, "add-member overdue: probe the channel") in out
    assert apis(out) == []
    assert invite.event(sched("DEL_SCHEDULE", "4"), None, T0 + 3.01) == []  # one task left
    out = invite.event(sched("DEL_SCHEDULE", "5"), None, T0 + 3.01)
    assert [c.state for c in out if isinstance(c, StateChanged)] == [State.JOINING]
    assert invite.event(sched("ADD_SCHEDULE", "7"), None, T0 + 3.02) == []  # late, ignored
    result = finished(invite.event(add_member(), None, T0 + 3.1))
    assert result.outcome is Outcome.JOINED and result.detail["member_id"] == "1"


def test_dialplan_join_target_and_profile_room() -> None:
    invite = answered(join=JoinTarget.dialplan("7001", "default"))
    invite.event(ev("DTMF", DTMF_Digit="1"), None, T0 + 3)
    # A dialplan target: any conference the dialplan puts the call in counts.
    assert finished(invite.event(add_member("other"), None, T0 + 3.1)).outcome is Outcome.JOINED
    invite = answered(room="test1@wide")
    invite.event(ev("DTMF", DTMF_Digit="1"), None, T0 + 3)
    assert invite.event(add_member("other"), None, T0 + 3.1) == []  # not our room
    assert finished(invite.event(add_member("test1"), None, T0 + 3.2)).outcome is Outcome.JOINED


# ------------------------------------------------------------------------------ timer


def test_confguard_never_arms_or_deletes_a_timer_itself() -> None:
    """The switch arms both timers (api_on_originate, the waiting app's sched_hangup) and
    cancels them after the key: whatever the timer events say, confguard sends no
    sched_hangup or sched_del -- a DEL_SCHEDULE while waiting is a timer that fired (its hangup
    follows) or the switch's own cancel after an unseen key (its join follows)."""
    invite, _ = make(timeout=30)
    sent = invite.event(ev("CHANNEL_CREATE"), None, T0 + 0.1)
    sent += invite.event(ev("CHANNEL_ANSWER"), None, T0 + 10.2)  # no ADD_SCHEDULE was seen
    sent += invite.event(sched("ADD_SCHEDULE", "4"), None, T0 + 10.3)
    sent += invite.event(sched("DEL_SCHEDULE", "4"), None, T0 + 20)
    assert apis(sent) == [] and invite.state is State.WAITING_KEY
    result = finished(invite.event(hangup("ALLOTTED_TIMEOUT"), None, T0 + 20))
    assert result.outcome is Outcome.TIMEOUT


def test_seconds_left_is_at_least_one() -> None:
    invite, _ = make(timeout=5)
    out = invite.event(ev("CHANNEL_ANSWER"), None, T0 + 7)
    change = next(c for c in out if isinstance(c, StateChanged))
    assert change.detail["seconds_left"] == 1


def test_silent_callee_timer_fires_replayed_from_transcript_07(transcripts_dir: Path) -> None:
    events = load_events(transcripts_dir / "07-silent-sched-hangup-5s-run1.jsonl")
    call = "61512b57-8d42-475d-855f-592269e1e559"
    job_uuid = "dce99f6a-fd0d-41e2-a83b-a69d85192b0d"
    invite = Invite(
        spec(timeout=5, hangup_cause="ALLOTTED_TIMEOUT"),
        call_uuid=call,
        job_uuid=job_uuid,
        invite_id="s1",
        now=T0,
        wall=WALL,
    )
    invite.start()
    out: list[Command] = []
    for headers, body in routed(events, call, job_uuid):
        out += invite.event(headers, body, T0 + 1)
    result = finished(out)
    assert result.outcome is Outcome.TIMEOUT and result.cause == "ALLOTTED_TIMEOUT"
    assert result.detail["event"] == "CHANNEL_HANGUP"


TRANSCRIPT_19 = "19-waiting-app-joins-in-switch.jsonl"
ORIGINATE_RE = re.compile(
    r"^bgapi originate \{origination_uuid=([0-9a-f-]{36}),.*\nJob-UUID: (\S+)\n"
)
TimedEvent = tuple[dict[str, str], str | None, float]


def daemon_calls(path: Path) -> tuple[list[tuple[str, str, float]], list[TimedEvent]]:
    """Transcript 19's conn 'daemon': its originates (call uuid, Job-UUID, when sent) and the
    plain events it received, each with its recorded time."""
    calls: list[tuple[str, str, float]] = []
    events: list[TimedEvent] = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record["dir"] == "C->S[daemon]":
            match = ORIGINATE_RE.match(record["data"])
            if match:
                calls.append((match.group(1), match.group(2), record["rel"]))
        elif record["dir"] == "S->C[daemon]" and record["ctype"] == "text/event-plain":
            events.append((*plain_event(record), record["rel"]))
    return calls, events


@pytest.mark.parametrize(
    ("index", "overrides", "outcome"),
    [
        # (a) 9, then 1: the switch cancels the timers and joins; confguard only watches.
        (0, {"prompt": "tone_stream://%(250,250,440);loops=2"}, Outcome.JOINED),
        # (b) nobody presses: api_on_originate's task hangs up (ALLOTTED_TIMEOUT).
        (1, {"timeout": 4, "reprompt_interval": 1.0}, Outcome.TIMEOUT),
        # (d) the key, then the dialplan join (transfer:7001 XML default, its conference).
        (2, {"join": JoinTarget.dialplan("7001")}, Outcome.JOINED),
    ],
    ids=["key-joins", "no-key-timeout", "dialplan-join"],
)
def test_transcript_19_the_switch_decides_and_confguard_sends_nothing(
    transcripts_dir: Path, index: int, overrides: dict[str, object], outcome: Outcome
) -> None:
    """Transcript 19's events, routed as the engine routes them (Unique-ID / Task-Group = the
    call, Job-UUID = its job) at their recorded times, with every wake-up the machine asks for
    honoured: the outcome is the switch's, and after the originate confguard sends no command
    at all (no sched_del, no transfer, no probe)."""
    calls, events = daemon_calls(transcripts_dir / TRANSCRIPT_19)
    assert len(calls) == 3
    call_uuid, job_uuid, sent_at = calls[index]
    invite = Invite(
        spec(extension="1001", **overrides),
        call_uuid=call_uuid,
        job_uuid=job_uuid,
        invite_id="rec1",
        now=T0,
        wall=WALL,
    )
    originate = next(c for c in invite.start() if isinstance(c, SendBgapi))
    assert originate.command.startswith(f"originate {{origination_uuid={call_uuid},")
    out: list[Command] = []
    wakes: list[float] = []
    mine = [(h, b, rel) for h, b, rel in events if routed([(h, b)], call_uuid, job_uuid)]
    assert mine, "no event of the call in the transcript"
    for headers, body, rel in mine:
        now = T0 + rel - sent_at
        for when in sorted(w for w in wakes if w <= now):
            wakes.remove(when)
            out += invite.tick(when)
        step = invite.event(headers, body, now)
        wakes += [c.when for c in step if isinstance(c, WakeAt)]
        out += step
    assert [c for c in out if isinstance(c, SendApi | SendBgapi)] == []
    result = finished(out)
    assert result.outcome is outcome
    if outcome is Outcome.TIMEOUT:
        assert result.cause == "ALLOTTED_TIMEOUT"
    else:
        names = [h["Event-Name"] for h, _, _ in mine]
        assert names.index("DTMF") < names.index("CUSTOM") < names.index("DEL_SCHEDULE")
    assert invite.state is State.ENDED


def test_the_timer_firing_as_the_key_comes_is_timeout() -> None:
    invite = answered()
    invite.event(ev("DTMF", DTMF_Digit="1"), None, T0 + 29.9)
    invite.event(sched("DEL_SCHEDULE", "4"), None, T0 + 30)
    assert invite.state is State.JOINING
    result = finished(invite.event(hangup("ALLOTTED_TIMEOUT"), None, T0 + 30))
    assert result.outcome is Outcome.TIMEOUT and result.cause == "ALLOTTED_TIMEOUT"


def test_callee_hangs_up_while_joining_is_hung_up() -> None:
    invite = answered()
    invite.event(ev("DTMF", DTMF_Digit="1"), None, T0 + 5)
    assert (
        finished(invite.event(hangup("NORMAL_CLEARING"), None, T0 + 5.5)).outcome is Outcome.HUNG_UP
    )


def test_dtmf_other_digits_and_other_states_are_ignored() -> None:
    invite, _ = make(decline_key="9")
    invite.event(ev("CHANNEL_CREATE"), None, T0)
    assert invite.event(ev("DTMF", DTMF_Digit="1"), None, T0 + 0.5) == []  # ringing
    invite.event(ev("CHANNEL_ANSWER"), None, T0 + 1)
    assert invite.event(ev("DTMF", DTMF_Digit="2"), None, T0 + 2) == []
    assert invite.state is State.WAITING_KEY
    invite.event(ev("DTMF", DTMF_Digit="1"), None, T0 + 3)
    assert invite.event(ev("DTMF", DTMF_Digit="1"), None, T0 + 3.1) == []  # cancelling
    assert invite.event(ev("DTMF", DTMF_Digit="9"), None, T0 + 3.2) == []


def test_decline_key_kills_with_call_rejected_and_ignores_later_keys() -> None:
    invite = answered(decline_key="9")
    out = invite.event(ev("DTMF", DTMF_Digit="9"), None, T0 + 2)
    assert api(out, "uuid_kill").command == f"uuid_kill {U} CALL_REJECTED"
    assert invite.event(ev("DTMF", DTMF_Digit="1"), None, T0 + 2.1) == []
    result = finished(invite.event(hangup("CALL_REJECTED"), None, T0 + 2.2))
    assert result.outcome is Outcome.DECLINED


# ------------------------------------------------------------------------------ prompt


def test_waiting_sends_nothing_the_prompt_loop_runs_inside_freeswitch() -> None:
    invite, _ = make(prompt="tone_stream://%(200,100,440)", reprompt_interval=5.0)
    invite.event(sched("ADD_SCHEDULE", "7"), None, T0)
    out = invite.event(ev("CHANNEL_ANSWER"), None, T0 + 1)
    assert apis(out) == [] and not [c for c in out if isinstance(c, WakeAt)]
    for second in range(2, 30):
        assert invite.tick(T0 + second) == []


# ------------------------------------------------------------------------------ outcomes by cause


@pytest.mark.parametrize(
    ("answer", "cause", "outcome"),
    [
        (False, "USER_BUSY", Outcome.BUSY),
        (False, "NO_ANSWER", Outcome.NO_ANSWER),
        (False, "PROGRESS_TIMEOUT", Outcome.NO_ANSWER),
        (False, "NO_USER_RESPONSE", Outcome.NO_ANSWER),
        (False, "ALLOTTED_TIMEOUT", Outcome.NO_ANSWER),
        (True, "ALLOTTED_TIMEOUT", Outcome.TIMEOUT),
        (False, "SUBSCRIBER_ABSENT", Outcome.UNREACHABLE),
        (False, "USER_NOT_REGISTERED", Outcome.UNREACHABLE),
        (False, "UNALLOCATED_NUMBER", Outcome.UNREACHABLE),
        (False, "NO_ROUTE_DESTINATION", Outcome.UNREACHABLE),
        (False, "CALL_REJECTED", Outcome.REJECTED),
        (True, "NORMAL_CLEARING", Outcome.HUNG_UP),
        (True, "MEDIA_TIMEOUT", Outcome.FAILED),
        # After the answer the callee was reached: these describe a failing join, not the callee.
        (True, "NO_ROUTE_DESTINATION", Outcome.FAILED),
        (True, "USER_BUSY", Outcome.FAILED),
        (True, "CALL_REJECTED", Outcome.FAILED),
        (False, "NORMAL_TEMPORARY_FAILURE", Outcome.FAILED),
    ],
)
def test_hangup_cause_mapping(answer: bool, cause: str, outcome: Outcome) -> None:
    invite, _ = make()
    invite.event(ev("CHANNEL_CREATE"), None, T0)
    if answer:
        invite.event(ev("CHANNEL_ANSWER"), None, T0 + 1)
    out = invite.event(hangup(cause), None, T0 + 2)
    result = finished(out)
    assert (result.outcome, result.cause) == (outcome, cause)
    assert_ended_cleanly(invite, out)
    assert invite.event(hangup(cause, "CHANNEL_HANGUP"), None, T0 + 2) == []


@pytest.mark.parametrize(
    ("body", "outcome"),
    [
        ("-ERR SUBSCRIBER_ABSENT\n", Outcome.UNREACHABLE),
        ("-ERR USER_BUSY\n", Outcome.BUSY),
        ("-ERR CALL_REJECTED\n", Outcome.REJECTED),
        ("-ERR NO_ANSWER\n", Outcome.NO_ANSWER),
        ("-ERR UNALLOCATED_NUMBER\n", Outcome.UNREACHABLE),
        ("-ERR INVALID_GATEWAY\n", Outcome.FAILED),
    ],
)
def test_originate_error_before_any_channel_finishes_at_once(body: str, outcome: Outcome) -> None:
    invite, _ = make()
    headers, text = job(body)
    out = invite.event(headers, text, T0 + 0.05)
    assert finished(out).outcome is outcome
    assert finished(out).cause == body.strip()[5:]
    assert_ended_cleanly(invite, out)


def test_originate_error_from_transcript_10(transcripts_dir: Path) -> None:
    events = load_events(transcripts_dir / "10-errors.jsonl")
    call, job_uuid = "86464610-d3f2-4722-af01-512babb71d11", "6e2ebf06-a043-4547-96b8-e7804d8a839a"
    invite = Invite(
        spec(extension="9999"), call_uuid=call, job_uuid=job_uuid, invite_id="e", now=T0, wall=WALL
    )
    invite.start()
    ((headers, body),) = routed(events, call, job_uuid)
    assert finished(invite.event(headers, body, T0)).outcome is Outcome.UNREACHABLE


def test_originate_error_after_channel_waits_for_the_hangup() -> None:
    invite, _ = make()
    invite.event(ev("CHANNEL_CREATE"), None, T0)
    headers, body = job("-ERR NO_ANSWER\n")
    assert invite.event(headers, body, T0 + 30) == []
    out = invite.event({"Event-Name": "CHANNEL_HANGUP", "Unique-ID": U}, None, T0 + 30.1)
    assert (finished(out).outcome, finished(out).cause) == (Outcome.NO_ANSWER, "NO_ANSWER")


def test_background_job_ok_counts_as_answer() -> None:
    invite, _ = make()
    invite.event(sched("ADD_SCHEDULE", "4"), None, T0 + 0.01)
    headers, body = job(f"+OK {U}\n")
    out = invite.event(headers, body, T0 + 1)
    assert invite.state is State.WAITING_KEY and apis(out) == [] and invite.timer_armed


# ------------------------------------------------------------------------------ cancel


def test_cancel_before_channel_kills_when_it_appears() -> None:
    invite, _ = make()
    assert invite.cancel(T0 + 0.001) == []
    out = invite.event(ev("CHANNEL_CREATE"), None, T0 + 0.02)
    assert api(out, "uuid_kill").command == f"uuid_kill {U} ORIGINATOR_CANCEL"
    result = finished(invite.event(hangup("ORIGINATOR_CANCEL"), None, T0 + 0.05))
    assert result.outcome is Outcome.CANCELLED


def test_cancel_before_channel_then_originate_error_is_cancelled() -> None:
    invite, _ = make()
    invite.cancel(T0)
    headers, body = job("-ERR ORIGINATOR_CANCEL\n")
    assert finished(invite.event(headers, body, T0 + 0.1)).outcome is Outcome.CANCELLED


@pytest.mark.parametrize("stage", ["ringing", "waiting_key", "cancelling", "joining"])
def test_cancel_in_each_live_state(stage: str) -> None:
    invite, _ = make()
    invite.event(ev("CHANNEL_CREATE"), None, T0)
    invite.event(sched("ADD_SCHEDULE", "4"), None, T0)
    if stage != "ringing":
        invite.event(ev("CHANNEL_ANSWER"), None, T0 + 1)
    if stage in ("cancelling", "joining"):
        invite.event(ev("DTMF", DTMF_Digit="1"), None, T0 + 2)
        if stage == "joining":
            invite.event(sched("DEL_SCHEDULE", "4"), None, T0 + 2)
    assert invite.state.value == stage
    out = invite.cancel(T0 + 3)
    assert api(out, "uuid_kill").command == f"uuid_kill {U} ORIGINATOR_CANCEL"
    assert invite.cancel(T0 + 3) == []  # idempotent
    assert (
        finished(invite.event(hangup("ORIGINATOR_CANCEL"), None, T0 + 4)).outcome
        is Outcome.CANCELLED
    )


def test_cancel_after_joined_is_refused_and_after_other_ends_ignored() -> None:
    invite = answered()
    invite.event(ev("DTMF", DTMF_Digit="1"), None, T0 + 2)
    invite.event(add_member(), None, T0 + 2.1)
    with pytest.raises(UsageError):
        invite.cancel(T0 + 3)
    other, _ = make()
    other.event(hangup("USER_BUSY"), None, T0 + 1)
    assert other.cancel(T0 + 2) == []


# ------------------------------------------------------------------------------ safety net


def test_safety_net_asks_then_kills_then_reports_timeout_when_the_kill_worked() -> None:
    invite = answered(timeout=10)
    assert invite.tick(T0 + 12.9) == []
    dump = api(invite.tick(T0 + 13), "uuid_dump")
    assert dump.command == f"uuid_dump {U} json"
    alive = json.dumps({"Answer-State": "answered", "Channel-State": "CS_EXECUTE"})
    out = invite.reply(dump.tag, alive, T0 + 13.01)
    kill = api(out, "uuid_kill")
    assert kill.command == f"uuid_kill {U} ALLOTTED_TIMEOUT"
    assert WakeAt(T0 + 16.01, "safety net: give up waiting for the hangup") in out
    assert invite.reply(kill.tag, "+OK\n", T0 + 13.02) == []
    assert invite.tick(T0 + 15) == []
    result = finished(invite.tick(T0 + 16.01))
    assert result.outcome is Outcome.TIMEOUT


def test_safety_net_never_kills_a_call_the_switch_put_in_the_room() -> None:
    """Its key and join fell in a gap, or its originate went out late (held back while the
    link was down: the switch's timer started later than confguard's deadline)."""
    invite = answered(timeout=10)
    dump = api(invite.tick(T0 + 13), "uuid_dump")
    in_room = json.dumps({"Answer-State": "answered", "Channel-State": "CS_EXECUTE",
                          "variable_confguard_key": "1", "variable_conference_name": "test1"})
    out = invite.reply(dump.tag, in_room, T0 + 13.01)
    assert finished(out).outcome is Outcome.JOINED
    assert not [c for c in apis(out) if c.command.startswith("uuid_kill")]
    invite = answered(timeout=10)
    dump = api(invite.tick(T0 + 13), "uuid_dump")
    joining = json.dumps({"Answer-State": "answered", "Channel-State": "CS_EXECUTE",
                          "variable_confguard_key": "1"})
    out = invite.reply(dump.tag, joining, T0 + 13.01)
    assert apis(out) == [] and invite.state is State.CANCELLING


def test_safety_net_hangup_event_decides_when_it_arrives() -> None:
    invite = answered(timeout=10)
    invite.tick(T0 + 13)
    assert (
        finished(invite.event(hangup("ALLOTTED_TIMEOUT"), None, T0 + 13.1)).outcome
        is Outcome.TIMEOUT
    )


def test_safety_net_unanswered_no_reply_is_lost() -> None:
    invite, _ = make(timeout=10)
    invite.event(ev("CHANNEL_CREATE"), None, T0 + 0.1)
    dump = api(invite.tick(T0 + 13), "uuid_dump")
    ringing = json.dumps({"Answer-State": "ringing", "Channel-State": "CS_CONSUME_MEDIA"})
    kill = api(invite.reply(dump.tag, ringing, T0 + 13), "uuid_kill")
    assert invite.reply(kill.tag, "-ERR connection lost", T0 + 13) == []
    assert finished(invite.tick(T0 + 16)).outcome is Outcome.LOST


def test_safety_net_no_such_channel_is_lost_at_once() -> None:
    invite, _ = make(timeout=10)
    dump = api(invite.tick(T0 + 13), "uuid_dump")  # placing: no channel past the bound is final
    assert (
        finished(invite.reply(dump.tag, "-ERR No such channel!\n", T0 + 13)).outcome
        is Outcome.LOST
    )


def test_a_join_that_does_not_show_up_is_probed_found_or_failed() -> None:
    in_room = json.dumps(
        {"Answer-State": "answered", "Channel-State": "CS_EXECUTE",
         "variable_conference_name": "test1"}
    )
    invite = answered()
    invite.event(ev("DTMF", DTMF_Digit="1"), None, T0 + 2)
    assert invite.tick(T0 + 2 + JOIN_DUE_S - 0.1) == []
    probe = api(invite.tick(T0 + 2 + JOIN_DUE_S), "uuid_dump")
    assert probe.command == f"uuid_dump {U} json"
    assert finished(invite.reply(probe.tag, in_room, T0 + 8.1)).outcome is Outcome.JOINED

    invite = answered()
    invite.event(ev("DTMF", DTMF_Digit="1"), None, T0 + 2)
    probe = api(invite.tick(T0 + 2 + JOIN_DUE_S), "uuid_dump")
    stuck = json.dumps({"Answer-State": "answered", "Channel-State": "CS_EXECUTE"})
    kill = api(invite.reply(probe.tag, stuck, T0 + 8.1), "uuid_kill")
    assert kill.command == f"uuid_kill {U}"
    result = finished(invite.event(hangup("NORMAL_CLEARING"), None, T0 + 8.2))
    assert (result.outcome, result.cause) == (Outcome.FAILED, "join not confirmed")


# ------------------------------------------------------------------------------ reconnect


def test_resync_no_such_channel_is_lost() -> None:
    invite = answered()
    assert apis(invite.connection_lost(T0 + 2)) == []
    dump = api(invite.resync(T0 + 8), "uuid_dump")
    assert dump.command == f"uuid_dump {U} json"
    assert (
        finished(invite.reply(dump.tag, "-ERR No such channel!\n", T0 + 8)).outcome is Outcome.LOST
    )


def test_resync_finds_the_answer_and_sends_nothing_more() -> None:
    invite, _ = make(prompt="ivr/press-one.wav")
    invite.event(ev("CHANNEL_CREATE"), None, T0)
    invite.connection_lost(T0 + 0.5)
    dump = api(invite.resync(T0 + 4), "uuid_dump")
    out = invite.reply(
        dump.tag, json.dumps({"Answer-State": "answered", "Channel-State": "CS_EXECUTE"}), T0 + 4
    )
    assert invite.state is State.WAITING_KEY
    # The switch arms its own timers and runs the prompt loop (build_waiting_app).
    assert apis(out) == []


# ------------------------------------------------------------------------------ misuse


def test_misrouted_inputs_raise_and_change_nothing() -> None:
    invite = answered()
    with pytest.raises(UsageError):
        invite.event(ev("DTMF", "00000000-0000-0000-0000-000000000000", DTMF_Digit="1"), None, T0)
    with pytest.raises(UsageError):
        invite.reply("sched_del#99", "+OK Deleted: 1", T0)
    with pytest.raises(ProtocolViolation):
        invite.event({"Unique-ID": U}, None, T0)
    assert invite.state is State.WAITING_KEY
    headers, body = job(f"+OK {U}")
    invite.event(headers, body, T0)
    with pytest.raises(ProtocolViolation):
        invite.event(headers, body, T0)
    with pytest.raises(UsageError):
        invite.start()


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("extension", ""),
        ("extension", "10 00"),
        ("extension", "1000}"),
        ("extension", "a" * 65),
        ("room", "test 1"),
        ("room", "a@b@c"),
        ("room", "x,y"),
        ("room", "room@"),
        ("timeout", 0),
        ("timeout", 3601),
        ("timeout", "30"),
        ("timeout", True),
        ("timeout", 2.5),
        ("ring_timeout", 31),
        ("ring_timeout", 0),
        ("key", "E"),
        ("key", "11"),
        ("key", ""),
        ("decline_key", "1"),
        ("decline_key", "x"),
        ("prompt", "a b.wav"),
        ("prompt", "a'b"),
        ("prompt", "{x}"),
        ("prompt", "a,b.wav"),
        ("prompt", "http://x/y.wav"),
        ("prompt", "a" * 257),
        ("prompt", "-both"),
        ("caller_id_name", "O'Brien"),
        ("caller_id_name", "a,b"),
        ("caller_id_name", ""),
        ("caller_id_number", "12a"),
        ("caller_id_number", "1" * 33),
        ("hangup_cause", "allotted_timeout"),
        ("hangup_cause", "BOGUS"),
        ("hangup_cause", "NORMAL_CLEARING"),
        ("hangup_cause", "17"),
        ("reprompt_interval", 0),
        ("reprompt_interval", float("nan")),
    ],
)
def test_bad_input_names_the_field(field: str, value: object) -> None:
    with pytest.raises(BadInput) as caught:
        spec(**{field: value})
    assert caught.value.field == field
    assert caught.value.reason


@pytest.mark.parametrize(
    "variables",
    [
        {"api_on_answer": "x"},
        {"execute_on_answer": "x"},
        {"exec_after_bridge_app": "x"},
        {"origination_uuid": "x"},
        {"originate_timeout": "1"},
        {"ignore_early_media": "false"},
        {"group_confirm_key": "1"},
        {"confguard_room": "x"},
        {"hangup_after_bridge": "true"},
        {"bridge_early_media": "x"},
        {"transfer_after_bridge": "x"},
        {"sip_h_x": "y"},
        {"Upper": "x"},
        {"a-b": "x"},
        {"ok": "a,b"},
        {"ok": "a b"},
        {"ok": "${x}"},
        {"ok": "'"},
    ],
)
def test_bad_variables_are_refused(variables: Mapping[str, str]) -> None:
    with pytest.raises(BadInput) as caught:
        spec(variables=variables)
    assert caught.value.field.startswith("variables")


def test_bad_join_targets() -> None:
    with pytest.raises(BadInput) as caught:
        spec(join=JoinTarget.dialplan("70 01"))
    assert caught.value.field == "join.extension"
    with pytest.raises(BadInput) as caught:
        spec(join=JoinTarget.dialplan("7001", "de fault"))
    assert caught.value.field == "join.context"
    with pytest.raises(BadInput):
        spec(join=JoinTarget.inline("a b"))


def test_good_values_are_accepted() -> None:
    good = spec(
        extension="user.1+x-y_z",
        room="r-1@p_2",
        timeout=3600,
        ring_timeout=3600,
        key="#",
        decline_key="*",
        prompt="silence_stream://1000",
        caller_id_name="A b.c+d-e_f",
        caller_id_number="+49*1#",
        hangup_cause="NO_USER_RESPONSE",
        variables={"sim_dtmf": "2@1;1@2", "sim_mode": "answer"},
    )
    assert dict(good.variables) == {"sim_dtmf": "2@1;1@2", "sim_mode": "answer"}
    with pytest.raises(TypeError):
        good.variables["x"] = "y"  # type: ignore[index]


# ------------------------------------------------------------------------------ adopt


def adopted(now: float = T0) -> tuple[Invite, SendApi]:
    """An invite a restarted daemon takes over from its journal: no originate, a dump."""
    invite = Invite(spec(), call_uuid=U, job_uuid=J, invite_id="inv-1", now=now, wall=WALL)
    out = invite.adopt(now + 10)
    assert [c for c in out if isinstance(c, AddFilter)] == [AddFilter("Unique-ID", U)]
    assert not [c for c in out if isinstance(c, SendBgapi)]  # never a second originate
    return invite, api(out, "uuid_dump")


def test_adopt_answered_call_waits_for_the_key_and_arms_nothing() -> None:
    invite, dump = adopted()
    out = invite.reply(
        dump.tag, json.dumps({"Answer-State": "answered", "Channel-State": "CS_EXECUTE"}), T0 + 10
    )
    assert invite.state is State.WAITING_KEY and apis(out) == []
    invite.event(ev("DTMF", DTMF_Digit="1"), None, T0 + 12)
    assert finished(invite.event(add_member(), None, T0 + 12.1)).outcome is Outcome.JOINED


def test_adopt_call_already_in_the_room_is_joined() -> None:
    invite, dump = adopted()
    out = invite.reply(
        dump.tag,
        json.dumps({"Answer-State": "answered", "Channel-State": "CS_EXECUTE",
                    "variable_conference_name": "test1"}),
        T0 + 10,
    )
    assert finished(out).outcome is Outcome.JOINED
    assert not [c for c in out if isinstance(c, SendApi)]  # no timer armed on a member
    assert_ended_cleanly(invite, out)


def test_adopt_vanished_call_is_lost_and_adopt_twice_is_refused() -> None:
    invite, dump = adopted()
    out = invite.reply(dump.tag, "-ERR No such channel!\n", T0 + 10)
    assert finished(out).outcome is Outcome.LOST
    fresh, _ = make()
    with pytest.raises(UsageError):
        fresh.adopt(T0)


# The race of tests/test_e2e.py::test_restarted_daemon_finds_a_vanished_call_lost: the call is
# killed while no daemon runs; FreeSWITCH's hangup is still finishing when the new daemon's
# filters are in place, so the tail of it (CHANNEL_HANGUP_COMPLETE, or the originate's
# BACKGROUND_JOB) reaches the adopted invite before the answer to its uuid_dump. The adopted
# machine has not seen the call alive (it does not even know whether it was answered): a cause
# mapped from there says `failed` (NORMAL_CLEARING before an answer), the switch says the call
# vanished while confguard could not see it -> `lost`.


@pytest.mark.parametrize("name", ["CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE"])
@pytest.mark.parametrize("cause", ["NORMAL_CLEARING", "ALLOTTED_TIMEOUT", "USER_BUSY"])
def test_adopt_hangup_before_the_dump_answers_is_lost(name: str, cause: str) -> None:
    invite, dump = adopted()
    out = invite.event(hangup(cause, name), None, T0 + 10.01)
    done = finished(out)
    assert done.outcome is Outcome.LOST
    assert done.detail["hangup_cause"] == cause
    assert_ended_cleanly(invite, out)
    # The dump's answer comes after the event on the wire: the invite has already ended.
    assert invite.reply(dump.tag, "-ERR No such channel!\n", T0 + 10.02) == []
    assert invite.outcome is Outcome.LOST


def test_adopt_originate_error_before_the_dump_answers_is_lost() -> None:
    invite, dump = adopted()
    out = invite.event(
        {"Event-Name": "BACKGROUND_JOB", "Job-UUID": J}, "-ERR NORMAL_CLEARING\n", T0 + 10.01
    )
    assert finished(out).outcome is Outcome.LOST
    assert_ended_cleanly(invite, out)
    assert invite.reply(dump.tag, "-ERR No such channel!\n", T0 + 10.02) == []


def test_adopt_dump_of_a_channel_hanging_up_then_its_hangup_is_lost() -> None:
    invite, dump = adopted()
    out = invite.reply(
        dump.tag, json.dumps({"Answer-State": "hangup", "Channel-State": "CS_HANGUP"}), T0 + 10
    )
    assert [c for c in out if isinstance(c, WakeAt)] and invite.state is State.PLACING
    out = invite.event(hangup("NORMAL_CLEARING"), None, T0 + 10.05)
    assert finished(out).outcome is Outcome.LOST
    assert_ended_cleanly(invite, out)


def test_adopt_call_seen_alive_then_hung_up_maps_its_cause() -> None:
    # Once the adopted invite has seen the call alive (dump, or an event), a hangup is decided
    # as for any invite.
    invite, dump = adopted()
    invite.reply(
        dump.tag, json.dumps({"Answer-State": "answered", "Channel-State": "CS_EXECUTE"}), T0 + 10
    )
    out = invite.event(hangup("NORMAL_CLEARING"), None, T0 + 11)
    assert finished(out).outcome is Outcome.HUNG_UP
    invite, dump = adopted()
    invite.event(ev("CHANNEL_ANSWER"), None, T0 + 10.01)  # answered while the dump is out
    out = invite.event(hangup("ALLOTTED_TIMEOUT"), None, T0 + 10.02)
    assert finished(out).outcome is Outcome.TIMEOUT
    invite, dump = adopted()
    invite.reply(
        dump.tag, json.dumps({"Answer-State": "ringing", "Channel-State": "CS_EXECUTE"}), T0 + 10
    )
    out = invite.event(hangup("NO_ANSWER"), None, T0 + 12)
    assert finished(out).outcome is Outcome.NO_ANSWER


# ------------------------------------------------------------------------------ nothing lost
# The switch keeps what decides an invite and does the deciding step itself; confguard reads it
# back after a gap (invariant 6), and settles a lost answer by asking (invariant 7).

LOST = "-ERR confguard: EslConnectionLost: ESL 127.0.0.1:8021: connection lost during api"


def waiting_dump(**variables: str) -> str:
    dump = {"Answer-State": "answered", "Channel-State": "CS_EXECUTE"}
    dump.update({f"variable_{name}": value for name, value in variables.items()})
    return json.dumps(dump)


def test_a_key_pressed_while_the_link_was_down_and_joined_by_the_switch_is_joined() -> None:
    invite = answered()
    invite.connection_lost(T0 + 2)  # the DTMF, add-member and DEL_SCHEDULE fall in the gap
    dump = api(invite.resync(T0 + 3), "uuid_dump")
    out = invite.reply(
        dump.tag,
        waiting_dump(confguard_key="1", current_application="conference",
                     conference_name="test1", conference_member_id="3"),
        T0 + 3.1,
    )
    assert finished(out).outcome is Outcome.JOINED and apis(out) == []
    states = [c.state for c in out if isinstance(c, StateChanged)]
    assert states == [State.CANCELLING, State.JOINING, State.JOINED, State.ENDED]


def test_a_key_recorded_in_the_gap_with_the_join_still_under_way_waits_for_it() -> None:
    invite = answered()
    invite.connection_lost(T0 + 2)
    dump = api(invite.resync(T0 + 3), "uuid_dump")
    out = invite.reply(dump.tag, waiting_dump(confguard_key="1"), T0 + 3.1)
    assert invite.state is State.CANCELLING and apis(out) == []
    change = next(c for c in out if isinstance(c, StateChanged))
    assert change.detail["source"] == "switch"
    assert finished(invite.event(add_member(), None, T0 + 3.2)).outcome is Outcome.JOINED


def test_a_decline_key_recorded_in_the_gap_declines() -> None:
    invite = answered(decline_key="9")
    invite.connection_lost(T0 + 2)
    dump = api(invite.resync(T0 + 3), "uuid_dump")
    out = invite.reply(dump.tag, waiting_dump(confguard_key_invalid="9"), T0 + 3.1)
    assert api(out, "uuid_kill").command == f"uuid_kill {U} CALL_REJECTED"
    out = invite.event(hangup("CALL_REJECTED"), None, T0 + 3.2)
    assert finished(out).outcome is Outcome.DECLINED


def test_no_key_in_the_dump_keeps_waiting_and_sends_nothing() -> None:
    invite = answered(decline_key="9")
    invite.connection_lost(T0 + 2)
    dump = api(invite.resync(T0 + 3), "uuid_dump")
    out = invite.reply(
        dump.tag,
        waiting_dump(current_application="play_and_get_digits", confguard_key_invalid="5"),
        T0 + 3,
    )
    assert apis(out) == [] and invite.state is State.WAITING_KEY


def test_a_probe_lost_with_the_link_is_probed_again_after_the_resync() -> None:
    invite = answered()
    invite.event(ev("DTMF", DTMF_Digit="1"), None, T0 + 2)
    probe = api(invite.tick(T0 + 2 + JOIN_DUE_S), "uuid_dump")
    invite.connection_lost(T0 + 8.05)
    assert apis(invite.reply(probe.tag, LOST, T0 + 8.1)) == []  # never "failed"
    out = invite.resync(T0 + 9)
    dump = api(out, "uuid_dump")
    assert WakeAt(T0 + 9 + JOIN_DUE_S, "add-member overdue: probe the channel") in out
    in_room = waiting_dump(conference_name="test1")
    assert finished(invite.reply(dump.tag, in_room, T0 + 9.1)).outcome is Outcome.JOINED


def test_a_dump_answer_lost_while_the_link_stays_up_is_asked_again() -> None:
    invite = answered()
    dump = api(invite.resync(T0 + 3), "uuid_dump")
    out = invite.reply(dump.tag, "-ERR confguard: EslTimeoutError: no reply", T0 + 13)
    assert WakeAt(T0 + 13 + SETTLE_DELAY, "the resync dump's answer was lost: ask again") in out
    again = api(invite.tick(T0 + 13 + SETTLE_DELAY), "uuid_dump")
    out = invite.reply(again.tag, waiting_dump(confguard_key="1"), T0 + 14)
    assert invite.state is State.CANCELLING


def test_a_kill_lost_with_the_link_is_sent_again_when_the_channel_lives_on() -> None:
    invite = answered(decline_key="9")
    kill = api(invite.event(ev("DTMF", DTMF_Digit="9"), None, T0 + 2), "uuid_kill")
    invite.connection_lost(T0 + 2.05)
    invite.reply(kill.tag, LOST, T0 + 2.1)
    dump = api(invite.resync(T0 + 3), "uuid_dump")
    again = api(invite.reply(dump.tag, waiting_dump(), T0 + 3.1), "uuid_kill")
    assert again.command == f"uuid_kill {U} CALL_REJECTED"


def test_an_invite_whose_link_never_comes_back_ends_lost_after_its_bound() -> None:
    invite = answered()  # timeout 30 s from T0
    out = invite.connection_lost(T0 + 5)
    bound = T0 + 30 + 2 * GRACE_S
    assert WakeAt(bound, "the link is down: stop waiting at the call's bound") in out
    assert [c for c in invite.tick(bound - 0.01) if isinstance(c, Finished)] == []
    done = finished(invite.tick(bound))
    assert done.outcome is Outcome.LOST
    assert done.detail["gave_up"] == "no link to FreeSWITCH since the call's deadline passed"


def test_no_such_channel_while_placing_is_not_an_outcome() -> None:
    """FreeSWITCH may not have run the originate yet (its bgapi queue) when a resync asks."""
    invite, _ = make()
    invite.connection_lost(T0 + 0.1)
    dump = api(invite.resync(T0 + 1), "uuid_dump")
    assert invite.reply(dump.tag, "-ERR No such channel!\n", T0 + 1.1) == []
    assert invite.state is State.PLACING
    headers, body = job("-ERR USER_BUSY\n")
    assert finished(invite.event(headers, body, T0 + 2)).outcome is Outcome.BUSY


def test_adopted_call_with_the_key_recorded_joins_when_the_switch_joins_it() -> None:
    invite, dump = adopted()
    out = invite.reply(dump.tag, waiting_dump(confguard_key="1"), T0 + 10)
    assert invite.state is State.CANCELLING and apis(out) == []
    assert finished(invite.event(add_member(), None, T0 + 10.1)).outcome is Outcome.JOINED


def test_adopted_placing_invite_without_a_channel_waits_for_its_originate() -> None:
    """The earlier daemon journalled the invite and died around writing its originate: the
    channel may still come (FreeSWITCH's bgapi queue), so no channel is not yet an outcome."""
    invite = Invite(spec(), call_uuid=U, job_uuid=J, invite_id="inv-1", now=T0, wall=WALL)
    dump = api(invite.adopt(T0 + 0.05, State.PLACING), "uuid_dump")
    assert invite.reply(dump.tag, "-ERR No such channel!\n", T0 + 0.1) == []
    invite.event(ev("CHANNEL_CREATE"), None, T0 + 0.3)
    invite.event(ev("CHANNEL_ANSWER"), None, T0 + 1.3)
    assert invite.state is State.WAITING_KEY
    invite.event(ev("DTMF", DTMF_Digit="1"), None, T0 + 2)
    assert finished(invite.event(add_member(), None, T0 + 2.1)).outcome is Outcome.JOINED


def test_a_placing_invite_whose_overdue_dump_was_lost_ends_at_the_next_resync() -> None:
    """No channel ever showed up; the safety net's question was lost with the link: the dump
    after the reconnect is final then (found by the chaos soak: invites stuck placing)."""
    invite, _ = make(timeout=5)
    invite.connection_lost(T0 + 0.1)
    dump = api(invite.tick(T0 + 5 + GRACE_S), "uuid_dump")
    invite.reply(dump.tag, LOST, T0 + 8.1)
    dump = api(invite.resync(T0 + 9), "uuid_dump")
    result = finished(invite.reply(dump.tag, "-ERR No such channel!\n", T0 + 9.1))
    assert result.outcome is Outcome.LOST


def test_a_hangup_showing_the_room_is_joined_when_the_join_fell_in_a_gap() -> None:
    """CHANNEL_HANGUP_COMPLETE carries the channel's variables (transcript 19): when the key
    and add-member were lost and every dump failed, the hangup still tells that the switch put
    the call in the room (chaos soak: joined members reported hung_up)."""
    invite = answered()
    invite.connection_lost(T0 + 2)
    invite.resync(T0 + 6)  # its dump is still out when the callee leaves the room
    left = hangup("NORMAL_CLEARING")
    left.update({"variable_confguard_key": "1", "variable_conference_name": "test1",
                 "variable_conference_member_id": "7"})
    result = finished(invite.event(left, None, T0 + 9))
    assert result.outcome is Outcome.JOINED and result.detail["hangup_cause"] == "NORMAL_CLEARING"
    other_room = hangup("NORMAL_CLEARING")
    other_room.update({"variable_conference_name": "elsewhere",
                       "variable_conference_member_id": "7"})
    invite = answered()
    assert finished(invite.event(other_room, None, T0 + 9)).outcome is Outcome.HUNG_UP


# ------------------------------------------------------------------------------ the room


def test_the_time_limits_task_after_the_key_neither_blocks_the_join_nor_counts_as_a_timer() -> None:
    """The order the real switch sent with max_duration (recorded while building it): the key,
    then the in-room task's ADD_SCHEDULE (armed right after sched_cancel), the cancelled tasks'
    DEL_SCHEDULE, add-member; the in-room task is the member's, not a waiting timer."""
    invite = answered(max_duration=60)
    invite.event(sched("ADD_SCHEDULE", "5"), None, T0 + 1.01)  # the waiting app's own timer
    invite.event(ev("DTMF", DTMF_Digit="1"), None, T0 + 2.0)
    assert invite.state is State.CANCELLING
    assert invite.event(sched("ADD_SCHEDULE", "6"), None, T0 + 2.01) == []
    invite.event(sched("DEL_SCHEDULE", "4"), None, T0 + 2.01)
    out = invite.event(add_member(), None, T0 + 2.02)
    assert finished(out).outcome is Outcome.JOINED
    assert not invite.timer_armed  # the in-room task is the watch's business (room.py)
    assert DelFilter("Unique-ID", U) not in out  # handed over to the member's watch
    assert invite.event(sched("DEL_SCHEDULE", "5"), None, T0 + 2.5) == []


def test_the_originate_carries_the_limit_and_the_flags() -> None:
    _, commands = make(max_duration=600, muted=True, deaf=True, moderator=True, endconf=True)
    command = commands[1].command  # type: ignore[union-attr]
    assert ",confguard_max_duration=600," in command
    assert command.endswith(
        "~sched_cancel~sched_hangup:+600 ALLOTTED_TIMEOUT"
        "~conference:test1+flags{mute|deaf|moderator|endconf}' inline"
    )
    _, plain = make()
    assert "max_duration" not in plain[1].command  # type: ignore[union-attr]
    assert "+flags" not in plain[1].command  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("field", "value"),
    [("muted", "true"), ("deaf", 1), ("moderator", None), ("endconf", 0),
     ("max_duration", 0), ("max_duration", 86401), ("max_duration", True),
     ("max_duration", 1.5), ("max_duration", "60")],
)
def test_room_fields_are_validated(field: str, value: object) -> None:
    with pytest.raises(BadInput) as refused:
        spec(**{field: value})
    assert refused.value.field == field
