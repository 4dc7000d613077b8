"""Property tests: the invite machine against a small model of FreeSWITCH, driven by hypothesis.

The model executes the machine's commands (FIFO, like api replies on one connection), produces
the events FreeSWITCH would, and hypothesis interleaves everything: answer, DTMF (right, wrong,
decline), the timer firing, callee hangups, command execution, reply and event delivery (replies
before or after the events a command caused), ticks, operator cancel, link loss and resync.
Like FreeSWITCH running the waiting app (invite.build_waiting_app), the model arms a second
timer at the answer, records the key in ``confguard_key`` (a refused key in
``confguard_key_invalid``) -- also while the link is down, when the DTMF event is lost -- and
then cancels the call's timers and joins it, add-member first and the DEL_SCHEDULE events after,
as the real switch orders them. Replies lost with the link come back as the engine gives them
(``LOST_REPLY``).
"""

from __future__ import annotations

import json
import re
from collections import deque

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from confguard.invite import (
    LOST_REPLY,
    MAX_DURATION_S,
    MEMBER_FLAGS,
    AddFilter,
    BadInput,
    Command,
    DelFilter,
    Finished,
    Invite,
    InviteSpec,
    JoinTarget,
    Outcome,
    SendApi,
    SendBgapi,
    State,
    UsageError,
    build_originate,
)

U = "11111111-2222-3333-4444-555555555555"
J = "99999999-8888-7777-6666-555555555555"
TIMEOUT = 20
CAUSE = "ALLOTTED_TIMEOUT"


class Model:
    """Just enough of FreeSWITCH for one call, and the invariant checks on what the machine did."""

    def __init__(self, invite: Invite, arm_on_originate: bool) -> None:
        self.invite = invite
        self.arm_on_originate = arm_on_originate
        self.channel: str | None = None  # None, "ringing", "answered", "gone"
        self.tasks: set[str] = set()
        self.task_counter = 10
        self.events: deque[tuple[dict[str, str], str | None]] = deque()
        self.replies: deque[tuple[str, str]] = deque()
        self.inflight: deque[SendApi] = deque()
        self.originated = False
        self.job_done = False
        self.fired = False
        self.in_conference = False
        self.joined_ever = False  # the switch put the call in the room (it may have left since)
        self.link_up = True
        self.now = 0.0
        # what the machine did
        self.commands: list[Command] = []
        self.finished: list[Finished] = []
        # what the switch recorded
        self.key_variable: str | None = None  # confguard_key
        self.invalid_variable: str | None = None  # confguard_key_invalid
        self.key_recorded_before_fire = False
        self.callee_hung_up = False
        self.killed = False

    # ------------------------------------------------------------------ machine side

    def take(self, commands: list[Command]) -> None:
        if self.finished and commands:
            raise AssertionError(f"commands after Finished: {commands}")
        for command in commands:
            self.check_syntax(command)
            self.commands.append(command)
            if isinstance(command, SendBgapi):
                assert [c for c in self.commands if isinstance(c, AddFilter)] == [
                    AddFilter("Unique-ID", U),
                ], "the call's filter must be added before the originate"
                self.originated = True
            elif isinstance(command, SendApi):
                verb = command.command.split()[0]
                # The switch owns the timers and the join: confguard only kills and asks.
                assert verb in ("uuid_kill", "uuid_dump"), f"confguard sent {command.command!r}"
                if self.link_up:
                    self.inflight.append(command)
                else:
                    self.replies.append((command.tag, f"{LOST_REPLY} EslNotConnected: down"))
            elif isinstance(command, Finished):
                self.finished.append(command)
                assert len(self.finished) == 1, "more than one Finished"
                if command.outcome is Outcome.JOINED:
                    assert self.joined_ever, "joined, yet the switch never put it in the room"

    @staticmethod
    def check_syntax(command: Command) -> None:
        text = getattr(command, "command", None)
        if text is None:
            return
        assert "\n" not in text and "\r" not in text
        if isinstance(command, SendBgapi):
            assert text.count("{") == 1 and text.count("}") == 1 and text.startswith("originate {")
        else:
            assert "{" not in text and "}" not in text

    def check_switch_invariant(self) -> None:
        """Invariant 1, which the switch keeps by itself: an answered live call outside the room
        holds a hangup task (the model's own consistency: the machine cannot break it)."""
        if self.channel == "answered" and not self.in_conference:
            assert self.tasks, "answered call outside the room without a timer"

    def feed_event(self) -> None:
        headers, body = self.events.popleft()
        self.take(self.invite.event(headers, body, self.now))

    def feed_reply(self) -> None:
        tag, text = self.replies.popleft()
        self.take(self.invite.reply(tag, text, self.now))

    # ------------------------------------------------------------------ switch side

    def queue_event(self, item: tuple[dict[str, str], str | None]) -> None:
        if self.link_up:  # while the link is down, FreeSWITCH's events for us are lost
            self.events.append(item)

    def channel_event(self, name: str, **extra: str) -> None:
        self.queue_event(({"Event-Name": name, "Unique-ID": U, **extra}, None))

    def schedule_event(self, name: str, task: str) -> None:
        self.queue_event(
            (
                {
                    "Event-Name": name,
                    "Task-ID": task,
                    "Task-Desc": "switch_ivr_schedule_hangup",
                    "Task-Group": U,
                },
                None,
            )
        )

    def add_task(self) -> None:
        self.task_counter += 1
        task = str(self.task_counter)
        self.tasks.add(task)
        self.schedule_event("ADD_SCHEDULE", task)

    def drop_tasks(self) -> int:
        count = len(self.tasks)
        for task in sorted(self.tasks):
            self.schedule_event("DEL_SCHEDULE", task)
        self.tasks.clear()
        return count

    def alive(self) -> bool:
        return self.channel in ("ringing", "answered")

    def end_call(self, cause: str, hangup_first: bool = True) -> None:
        was_ringing = self.channel == "ringing"
        self.channel = "gone"
        self.in_conference = False
        if hangup_first:
            self.channel_event("CHANNEL_HANGUP", **{"Hangup-Cause": cause})
        self.drop_tasks()
        self.channel_event("CHANNEL_HANGUP_COMPLETE", **{"Hangup-Cause": cause})
        if was_ringing and not self.job_done:
            self.job_done = True
            self.queue_event(({"Event-Name": "BACKGROUND_JOB", "Job-UUID": J}, f"-ERR {cause}\n"))

    def create(self) -> None:
        self.channel = "ringing"
        if self.arm_on_originate:
            self.add_task()
        self.channel_event("CHANNEL_CREATE")

    def answer(self) -> None:
        self.channel = "answered"
        self.channel_event("CHANNEL_ANSWER")
        self.job_done = True
        self.queue_event(({"Event-Name": "BACKGROUND_JOB", "Job-UUID": J}, f"+OK {U}\n"))
        self.add_task()  # the waiting app's own sched_hangup

    def press(self, digit: str) -> None:
        """The callee presses a key: a DTMF event (lost if the link is down); the waiting app
        records the key and, only then, cancels the timers and joins (add-member, then the
        DEL_SCHEDULE events); any other key is refused (confguard_key_invalid)."""
        if self.channel != "answered":
            return
        self.channel_event("DTMF", **{"DTMF-Digit": digit})
        if self.key_variable is not None or self.in_conference:
            return
        if digit != "1":
            self.invalid_variable = digit
            return
        self.key_variable = digit
        self.key_recorded_before_fire = not self.fired
        self.in_conference = True
        self.joined_ever = True
        self.queue_event(
            (
                {
                    "Event-Name": "CUSTOM",
                    "Event-Subclass": "conference::maintenance",
                    "Action": "add-member",
                    "Conference-Name": "test1",
                    "Unique-ID": U,
                },
                None,
            )
        )
        self.drop_tasks()

    def fire(self) -> None:
        self.fired = True
        self.end_call(CAUSE)

    def execute(self) -> None:
        command = self.inflight.popleft()
        words = command.command.split()
        verb = words[0]
        reply = "-ERR No such channel!\n"
        if verb == "uuid_kill":
            if self.alive():
                self.killed = True
                self.end_call(words[2] if len(words) > 2 else "NORMAL_CLEARING", False)
                reply = "+OK\n"
        elif verb == "uuid_dump" and self.alive():
            dump = {"Answer-State": self.channel, "Channel-State": "CS_EXECUTE"}
            if self.channel == "answered":
                dump["variable_current_application"] = (
                    "conference" if self.in_conference else "play_and_get_digits"
                )
            if self.key_variable is not None:
                dump["variable_confguard_key"] = self.key_variable
            if self.invalid_variable is not None:
                dump["variable_confguard_key_invalid"] = self.invalid_variable
            if self.in_conference:
                dump["variable_conference_name"] = "test1"
            reply = json.dumps(dump)
        self.replies.append((command.tag, reply))

    def drop_link(self) -> None:
        self.link_up = False
        self.events.clear()
        lost_text = f"{LOST_REPLY} EslConnectionLost: connection lost"
        lost = [(c.tag, lost_text) for c in self.inflight]
        lost += [(tag, lost_text) for tag, _ in self.replies]
        self.inflight.clear()
        self.replies = deque(lost)
        self.take(self.invite.connection_lost(self.now))

    def restore_link(self) -> None:
        self.link_up = True
        self.take(self.invite.resync(self.now))


ACTIONS = (
    ["create"] * 3
    + ["answer"] * 3
    + ["execute"] * 8
    + ["event"] * 10
    + ["reply"] * 8
    + ["dtmf_key"] * 3
    + ["dtmf_wrong", "dtmf_decline", "fire", "callee_hangup", "ring_fail"]
    + ["originate_fail", "tick", "tick", "cancel", "drop", "restore", "restore"]
    + ["press_in_gap"] * 3
)


def step(model: Model, action: str, data: st.DataObject) -> None:
    invite = model.invite
    if action == "create" and model.originated and model.channel is None:
        model.create()
    elif action == "originate_fail" and model.originated and model.channel is None:
        model.channel = "gone"
        model.job_done = True
        cause = data.draw(st.sampled_from(["USER_BUSY", "SUBSCRIBER_ABSENT", "CALL_REJECTED"]))
        model.queue_event(({"Event-Name": "BACKGROUND_JOB", "Job-UUID": J}, f"-ERR {cause}\n"))
    elif action == "answer" and model.channel == "ringing":
        model.answer()
    elif action == "ring_fail" and model.channel == "ringing":
        model.end_call(data.draw(st.sampled_from(["NO_ANSWER", "USER_BUSY", "CALL_REJECTED"])))
    elif action == "press_in_gap" and model.channel == "answered":
        # The link drops and the key comes while confguard cannot see the switch.
        if model.link_up:
            model.drop_link()
        model.press("1")
    elif action.startswith("dtmf") and model.channel == "answered":
        model.press({"dtmf_key": "1", "dtmf_wrong": "2", "dtmf_decline": "9"}[action])
    elif action == "fire" and model.alive() and model.tasks and not model.in_conference:
        model.fire()
    elif action == "callee_hangup" and model.channel == "answered":
        model.callee_hung_up = True
        model.end_call("NORMAL_CLEARING")
    elif action == "execute" and model.inflight:
        model.execute()
    elif action == "event" and model.events:
        model.feed_event()
    elif action == "reply" and model.replies:
        model.feed_reply()
    elif action == "tick":
        model.now += data.draw(st.sampled_from([0.5, 1.0, 3.0, 7.0]))
        model.take(invite.tick(model.now))
    elif action == "cancel":
        try:
            model.take(invite.cancel(model.now))
        except UsageError:
            assert invite.outcome is Outcome.JOINED
    elif action == "drop" and model.link_up:
        model.drop_link()
    elif action == "restore" and not model.link_up:
        model.restore_link()
    model.check_switch_invariant()


def drain(model: Model, callee: str = "ring_out") -> None:
    """Let everything settle: the link comes back, commands run, the callee does what
    ``callee`` says (``press``, ``decline``, ``silent``, ``ring_out``), time passes, the timer
    fires."""
    if not model.link_up:
        model.restore_link()
    pressed = False
    for _ in range(400):
        if model.finished:
            break
        if model.inflight:
            model.execute()
        elif model.replies:
            model.feed_reply()
        elif model.events:
            model.feed_event()
        elif model.originated and model.channel is None:
            model.create()
        elif model.channel == "ringing" and callee != "ring_out":
            model.answer()
        elif (
            model.channel == "answered"
            and callee in ("press", "decline")
            and not pressed
            and model.invite.state is State.WAITING_KEY
        ):
            pressed = True
            model.press("1" if callee == "press" else "9")
        elif model.alive() and model.tasks and not model.in_conference and model.now >= TIMEOUT:
            model.fire()
        else:
            model.now += 1.0
            model.take(model.invite.tick(model.now))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), arm_on_originate=st.booleans(), prompt=st.booleans())
def test_interleavings_keep_the_invariants(
    data: st.DataObject, arm_on_originate: bool, prompt: bool
) -> None:
    spec = InviteSpec(
        extension="1000",
        room="test1",
        timeout=TIMEOUT,
        decline_key="9",
        prompt="ivr/press-one.wav" if prompt else None,
        hangup_cause=CAUSE,
    )
    invite = Invite(spec, call_uuid=U, job_uuid=J, invite_id="p", now=0.0, wall=1.8e9)
    model = Model(invite, arm_on_originate)
    model.take(invite.start())
    for action in data.draw(st.lists(st.sampled_from(ACTIONS), max_size=80)):
        step(model, action, data)
    drain(model, data.draw(st.sampled_from(["press", "press", "decline", "silent", "ring_out"])))
    assert len(model.finished) == 1, "the invite never finished"
    assert invite.state is State.ENDED
    dels = [c for c in model.commands if isinstance(c, DelFilter)]
    outcome = model.finished[0].outcome
    # Joined: the Unique-ID filter stays for the member's watch in the room (room.py).
    handed_over = [] if outcome is Outcome.JOINED else [DelFilter("Unique-ID", U)]
    assert dels == handed_over
    assert invite.watch_handover is (outcome is Outcome.JOINED)
    # Invariant 6: joined <=> the switch put the call in the room -- whether or not confguard
    # saw the key, the add-member or anything else; unless confguard hung up the member, which
    # it does only when it did not know (a cancel or decline raced with the key).
    if outcome is Outcome.JOINED:
        assert model.joined_ever
    if model.fired and not model.joined_ever:
        assert outcome is not Outcome.JOINED
    excused = (
        model.fired
        or model.callee_hung_up
        or model.killed
        or invite.cancel_requested
        or model.now >= TIMEOUT  # the model's timer is late only because no action fired it
    )
    if model.key_recorded_before_fire and not excused:
        assert outcome is Outcome.JOINED, (outcome, model.finished[0].detail)
    # after ended, nothing the switch says produces anything
    for headers, body in list(model.events):
        assert invite.event(headers, body, model.now) == []
    assert invite.tick(model.now + 1000) == []


# ------------------------------------------------------------------ no text becomes syntax

FORBIDDEN = re.compile(r"[\n\r{}]")


def accepted(**fields: object) -> InviteSpec | None:
    base: dict[str, object] = {"extension": "1000", "room": "test1", "timeout": 30}
    base.update(fields)
    try:
        return InviteSpec(**base)  # type: ignore[arg-type]
    except BadInput as error:
        assert error.field and error.reason
        return None


TEXT_FIELDS = [
    "extension",
    "room",
    "key",
    "decline_key",
    "prompt",
    "caller_id_name",
    "caller_id_number",
    "hangup_cause",
]


def all_commands(spec: InviteSpec) -> list[str]:
    invite = Invite(spec, call_uuid=U, job_uuid=J, invite_id="p", now=0.0, wall=0.0)
    commands = invite.start()
    commands += invite.event({"Event-Name": "CHANNEL_ANSWER", "Unique-ID": U}, None, 1.0)
    key_event = {"Event-Name": "DTMF", "Unique-ID": U, "DTMF-Digit": spec.key}
    commands += invite.event(key_event, None, 2.0)
    commands += invite.tick(2.0 + 60)  # the join probe, then the safety net's kill
    return [c.command for c in commands if isinstance(c, SendApi | SendBgapi)]


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(TEXT_FIELDS), text=st.text(max_size=80))
def test_arbitrary_text_in_any_field_never_becomes_syntax(field: str, text: str) -> None:
    spec = accepted(**{field: text})
    if spec is None:
        return
    for command in all_commands(spec):
        outside = command
        if command.startswith("originate {"):
            inner = command[len("originate {") : command.rindex("}")]
            assert not FORBIDDEN.search(inner)
            assert inner.count("'") % 2 == 0  # quotes stay balanced
            outside = command[command.rindex("}") + 1 :]
            # The waiting app: one quoted argument of exactly four apps, whatever the values.
            assert outside.count("'") == 2 and outside.count("~") == 1 + 3
        assert not FORBIDDEN.search(outside)
    if field in ("extension", "room", "caller_id_name", "caller_id_number", "prompt"):
        assert not set(text) & set("\n\r{},'\"$")


@settings(max_examples=200, deadline=None)
@given(
    name=st.one_of(
        st.text(max_size=20),
        st.sampled_from(["api_on_answer", "execute_on_ring", "origination_uuid", "sip_h_x"]),
    ),
    value=st.text(max_size=40),
)
def test_arbitrary_variables_never_become_syntax(name: str, value: str) -> None:
    spec = accepted(variables={name: value})
    if spec is None:
        return
    command = build_originate(spec, call_uuid=U, invite_id="p", wall_deadline=0)
    inner = command[len("originate {") : command.rindex("}")]
    assert not FORBIDDEN.search(inner) and "," not in value and "'" not in value
    assert not name.startswith(("api_", "execute_", "origination_", "sip_"))


@pytest.mark.parametrize("text", ["a\nb", "a}b", "a{b", "x\r", "a,b", "${x}"])
def test_specific_nasty_values_are_refused_everywhere(text: str) -> None:
    for field in TEXT_FIELDS:
        assert accepted(**{field: text}) is None, field
    assert accepted(variables={"ok": text}) is None


# ------------------------------------------------------------------ the room: time and flags

ANYTHING = st.one_of(
    st.booleans(), st.none(), st.integers(-5, 100_000), st.floats(allow_nan=True),
    st.text(max_size=10), st.lists(st.booleans(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(
    flags=st.fixed_dictionaries({name: ANYTHING for name in MEMBER_FLAGS}),
    max_duration=ANYTHING,
    room=st.sampled_from(["test1", "test1@default", "big_room-2"]),
)
def test_member_flags_and_max_duration_are_validated_and_never_become_syntax(
    flags: dict[str, object], max_duration: object, room: str
) -> None:
    spec = accepted(room=room, max_duration=max_duration, **flags)
    valid_flags = all(type(value) is bool for value in flags.values())
    valid_duration = max_duration is None or (
        type(max_duration) is int and 1 <= max_duration <= MAX_DURATION_S
    )
    assert (spec is not None) == (valid_flags and valid_duration)
    if spec is None:
        return
    command = build_originate(spec, call_uuid=U, invite_id="p", wall_deadline=0)
    head, _, app = command.partition("}user/1000 ")
    assert not FORBIDDEN.search(head[len("originate {"):])
    # One quoted argument: the four apps, plus the in-room timer when bounded.
    bounded = spec.max_duration is not None
    assert app.count("'") == 2 and app.count("~") == 1 + 3 + bounded
    apps = app[len("'m:~:") : app.rindex("'")].split("~")
    assert apps[2] == "sched_cancel"
    if bounded:
        assert apps[3] == f"sched_hangup:+{spec.max_duration} {spec.hangup_cause}"
        assert f",confguard_max_duration={spec.max_duration}," in head
    else:
        assert "sched_hangup" not in "~".join(apps[3:]) and "confguard_max_duration" not in head
    wanted = [word for name, word in
              (("muted", "mute"), ("deaf", "deaf"), ("moderator", "moderator"),
               ("endconf", "endconf")) if flags[name]]
    expected = f"conference:{room}" + ("+flags{" + "|".join(wanted) + "}" if wanted else "")
    assert apps[-1] == expected
    # Braces and `|` appear only inside the flag list.
    assert "{" not in app.replace("+flags{", "") and app.count("}") == (1 if wanted else 0)


def test_member_flags_need_the_inline_conference_join() -> None:
    with pytest.raises(BadInput) as refused:
        InviteSpec(extension="1000", room="test1", timeout=30, muted=True,
                   join=JoinTarget.dialplan("7001", "default"))
    assert refused.value.field == "muted"
    # The time limit applies after a dialplan join too (the timer is the call's).
    spec = InviteSpec(extension="1000", room="test1", timeout=30, max_duration=60,
                      join=JoinTarget.dialplan("7001", "default"))
    assert "~sched_cancel~sched_hangup:+60 ALLOTTED_TIMEOUT~transfer:7001 XML default'" in (
        build_originate(spec, call_uuid=U, invite_id="p", wall_deadline=0)
    )
