"""The member's watch in the room (confguard/room.py): why and when a joined member left, from
the events the real switch sends (their order as recorded on it: the in-room timer's hangup is
CHANNEL_HANGUP, then del-member carrying the cause; a kick is del-member first), and after a
restart from what ``uuid_dump`` can still tell."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confguard.invite import (
    AddFilter,
    DelFilter,
    Invite,
    InviteSpec,
    Outcome,
    SendApi,
    UsageError,
    WakeAt,
)
from confguard.room import Left, MemberWatch, Reason, WatchState

U = "7f0c1d2e-0000-4000-8000-00000000c411"
CAUSE = "ALLOTTED_TIMEOUT"


def watch(max_duration: int | None = 30) -> MemberWatch:
    return MemberWatch.after_join(call_uuid=U, max_duration=max_duration, timer_cause=CAUSE,
                                  now=100.0)


def hangup(cause: str, name: str = "CHANNEL_HANGUP", **extra: str) -> dict[str, str]:
    return {"Event-Name": name, "Unique-ID": U, "Hangup-Cause": cause, **extra}


def del_member(**extra: str) -> dict[str, str]:
    return {"Event-Name": "CUSTOM", "Event-Subclass": "conference::maintenance",
            "Action": "del-member", "Unique-ID": U, "Member-ID": "3", **extra}


def left(commands: list[object]) -> Left:
    found = [c for c in commands if isinstance(c, Left)]
    assert len(found) == 1, commands
    assert commands[-1] == DelFilter("Unique-ID", U)  # the handed-over filter goes at the end
    return found[0]


def test_after_the_join_the_watch_costs_nothing() -> None:
    member = watch()
    assert member.start() == []
    assert member.state is WatchState.IN_ROOM


def test_the_in_room_timer_is_told_by_its_cause_and_the_channel_variable() -> None:
    member = watch(30)
    done = left(member.event(hangup(CAUSE, variable_confguard_max_duration="30"), 130.5))
    assert done.reason is Reason.MAX_DURATION and done.cause == CAUSE
    assert done.detail["watched_s"] == 30.5
    assert member.state is WatchState.LEFT
    # The rest of the hangup changes nothing.
    assert member.event(del_member(**{"Hangup-Cause": CAUSE}), 130.6) == []
    assert member.event(hangup(CAUSE, "CHANNEL_HANGUP_COMPLETE"), 130.7) == []


@pytest.mark.parametrize(
    ("max_duration", "cause", "variable"),
    [
        (None, CAUSE, "30"),  # not bounded: the cause alone proves nothing
        (30, CAUSE, None),  # no variable: not a channel the timer was armed on
        (30, "NORMAL_CLEARING", "30"),  # another cause: the member (or the conference) ended it
    ],
)
def test_any_other_hangup_in_the_room_is_hung_up(
    max_duration: int | None, cause: str, variable: str | None
) -> None:
    member = watch(max_duration)
    extra = {} if variable is None else {"variable_confguard_max_duration": variable}
    done = left(member.event(hangup(cause, **extra), 101.0))
    assert done.reason is Reason.HUNG_UP and done.cause == cause


def test_leaving_the_room_alive_then_hanging_up_is_kicked() -> None:
    member = watch()
    assert member.event(del_member(), 105.0) == []
    assert member.state is WatchState.OUT_OF_ROOM
    done = left(member.event(hangup("NORMAL_CLEARING"), 105.1))
    assert done.reason is Reason.KICKED and done.cause == "NORMAL_CLEARING"


def test_a_del_member_of_a_channel_already_hanging_up_is_not_a_kick() -> None:
    member = watch()
    member.event(del_member(**{"Hangup-Cause": "NORMAL_CLEARING"}), 105.0)
    assert member.state is WatchState.IN_ROOM


def test_an_event_of_another_call_is_refused() -> None:
    with pytest.raises(UsageError):
        watch().event({"Event-Name": "CHANNEL_HANGUP", "Unique-ID": "other"}, 101.0)


def test_adopted_the_watch_asks_the_switch_and_a_gone_channel_left_unseen() -> None:
    member = MemberWatch.adopted(call_uuid=U, max_duration=None, timer_cause=CAUSE, now=50.0)
    first = member.start()
    assert first[0] == AddFilter("Unique-ID", U)  # the filter before the question
    probe = first[1]
    assert isinstance(probe, SendApi) and probe.command == f"uuid_dump {U} json"
    done = left(member.reply(probe.tag, "-ERR No such channel!\n", 50.2))
    assert done.reason is Reason.UNSEEN and done.cause is None


def test_adopted_a_member_still_in_the_room_is_watched_on() -> None:
    member = MemberWatch.adopted(call_uuid=U, max_duration=60, timer_cause=CAUSE, now=50.0)
    probe = member.start()[1]
    assert isinstance(probe, SendApi)
    dump = {"Channel-State": "CS_EXECUTE", "Answer-State": "answered",
            "variable_conference_member_id": "4", "variable_confguard_max_duration": "60"}
    assert member.reply(probe.tag, json.dumps(dump), 50.1) == []
    assert member.state is WatchState.IN_ROOM
    done = left(member.event(hangup(CAUSE, variable_confguard_max_duration="60"), 80.0))
    assert done.reason is Reason.MAX_DURATION


def test_a_channel_seen_hanging_up_gets_a_grace_for_its_event_then_is_unseen() -> None:
    member = MemberWatch.adopted(call_uuid=U, max_duration=None, timer_cause=CAUSE, now=50.0)
    probe = member.start()[1]
    assert isinstance(probe, SendApi)
    wake = member.reply(probe.tag, json.dumps({"Channel-State": "CS_HANGUP"}), 50.1)
    assert len(wake) == 1 and isinstance(wake[0], WakeAt)
    assert member.tick(wake[0].when - 0.1) == []
    assert left(member.tick(wake[0].when)).reason is Reason.UNSEEN


def test_a_lost_link_assumes_nothing_and_resync_asks() -> None:
    member = watch()
    assert member.connection_lost(110.0) == []
    again = member.resync(112.0)
    assert len(again) == 1 and isinstance(again[0], SendApi)
    assert member.reply(again[0].tag, "-ERR confguard: EslConnectionLost", 112.1) == []
    assert member.state is WatchState.IN_ROOM
    with pytest.raises(UsageError):
        member.reply(again[0].tag, "+OK", 112.2)  # answered twice


def test_the_joined_invite_hands_its_unique_id_filter_to_the_watch() -> None:
    spec = InviteSpec(extension="1000", room="test1", timeout=30, max_duration=10)
    invite = Invite(spec, call_uuid=U, job_uuid="j-1", invite_id="i-1", now=0.0, wall=0.0)
    invite.start()
    invite.event({"Event-Name": "CHANNEL_ANSWER", "Unique-ID": U}, None, 1.0)
    invite.event({"Event-Name": "DTMF", "Unique-ID": U, "DTMF-Digit": "1"}, None, 2.0)
    end = invite.event(
        {"Event-Name": "CUSTOM", "Event-Subclass": "conference::maintenance",
         "Action": "add-member", "Unique-ID": U, "Conference-Name": "test1", "Member-ID": "1"},
        None, 2.1,
    )
    assert invite.outcome is Outcome.JOINED and invite.watch_handover
    assert not [c for c in end if isinstance(c, DelFilter)]  # its one filter is the watch's now


# ------------------------------------------------------------------ the request, the config


def test_the_request_takes_flags_as_booleans_only_and_defaults_from_invite_config() -> None:
    from confguard.api import specs_from_request
    from confguard.config import InviteConfig
    from confguard.invite import BadInput

    defaults = InviteConfig(max_duration=600, muted=True)
    [spec] = specs_from_request({"extensions": ["1000"], "room": "test1"}, defaults)
    assert spec.max_duration == 600 and spec.member_flags == ("muted",)
    [spec] = specs_from_request(
        {"extensions": ["1000"], "room": "test1", "muted": False, "moderator": True,
         "endconf": True, "max_duration": 5},
        defaults,
    )
    assert spec.max_duration == 5 and spec.member_flags == ("moderator", "endconf")
    for field, value in (("muted", "yes"), ("deaf", 1), ("endconf", "true"), ("moderator", [])):
        with pytest.raises(BadInput) as refused:
            specs_from_request({"extensions": ["1000"], "room": "test1", field: value}, defaults)
        assert refused.value.field == field
    for value in (0, 86401, True, 2.5, "60"):
        with pytest.raises(BadInput) as refused:
            specs_from_request(
                {"extensions": ["1000"], "room": "test1", "max_duration": value}, InviteConfig()
            )
        assert refused.value.field == "max_duration"


def test_invite_config_keys_are_typed_and_shown_with_their_sources(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from confguard.config import ConfigError, load_config, render_config

    path = tmp_path / "c.toml"
    path.write_text("[invite]\nmax_duration = 900\nmoderator = true\n")
    config = load_config(str(path), env={"CONFGUARD_INVITE_MUTED": "yes"})
    assert config.invite.max_duration == 900 and config.invite.moderator
    assert config.invite.muted and not config.invite.deaf
    shown = render_config(config)
    assert any(line.startswith("max_duration = 900") and f"file:{path}" in line
               for line in shown.splitlines())
    assert any(line.startswith("muted = true") and "env:CONFGUARD_INVITE_MUTED" in line
               for line in shown.splitlines())
    assert any(line.startswith("deaf = false") and "# default" in line
               for line in shown.splitlines())
    path.write_text('[invite]\nmuted = "true"\n')  # a string is not a TOML boolean
    with pytest.raises(ConfigError, match=r"invite\.muted"):
        load_config(str(path), env={})
    with pytest.raises(ConfigError, match=r"invite\.max_duration"):
        load_config(None, env={"CONFGUARD_INVITE_MAX_DURATION": "0"})


def test_status_text_lists_members_with_flags_and_time_left() -> None:
    from confguard.cli import format_status

    text = format_status({
        "esl": {"target": "127.0.0.1:8021", "connected": True}, "invites": [],
        "members": [{"uuid": U, "ext": "1000", "room": "test1", "flags": ["muted", "endconf"],
                     "max_duration": 60, "in_room_s": 12.4, "seconds_left": 47.6}],
    })
    lines = text.splitlines()
    assert "no active invites" in lines and "1 member(s) in the room:" in lines
    assert lines[-1].split() == [U, "1000", "test1", "12s", "48s", "muted,endconf", "max", "60s"]


# ------------------------------------------------------------------ any order of events

_STEPS = st.lists(
    st.sampled_from(["hangup_timer", "hangup_clear", "hangup_complete", "del_member_alive",
                     "del_member_dying", "lost", "resync", "tick", "other_event"]),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(steps=_STEPS, bounded=st.booleans(), adopted=st.booleans(),
       dump=st.sampled_from(["-ERR No such channel!", '{"Channel-State": "CS_EXECUTE", '
                             '"variable_conference_member_id": "1"}', '{"Channel-State": '
                             '"CS_HANGUP"}']))
def test_whatever_the_order_a_member_leaves_once_and_its_filter_goes_last(
    steps: list[str], bounded: bool, adopted: bool, dump: str
) -> None:
    make = MemberWatch.adopted if adopted else MemberWatch.after_join
    member = make(call_uuid=U, max_duration=30 if bounded else None, timer_cause=CAUSE, now=0.0)
    out: list[object] = list(member.start())
    now = 0.0
    for step in [*steps, "resync", "hangup_clear"]:
        now += 1.0
        for command in [c for c in out if isinstance(c, SendApi)]:
            if command.tag in member._pending:
                out += member.reply(command.tag, dump, now)
        out = [c for c in out if not isinstance(c, SendApi)]  # answered (kept the rest)
        if step == "hangup_timer":
            out += member.event(hangup(CAUSE, variable_confguard_max_duration="30"), now)
        elif step == "hangup_clear":
            out += member.event(hangup("NORMAL_CLEARING"), now)
        elif step == "hangup_complete":
            out += member.event(hangup("NORMAL_CLEARING", "CHANNEL_HANGUP_COMPLETE"), now)
        elif step == "del_member_alive":
            out += member.event(del_member(), now)
        elif step == "del_member_dying":
            out += member.event(del_member(**{"Hangup-Cause": CAUSE}), now)
        elif step == "lost":
            out += member.connection_lost(now)
        elif step == "resync":
            out += member.resync(now)
        elif step == "tick":
            out += member.tick(now + 10)
        else:
            out += member.event({"Event-Name": "DTMF", "Unique-ID": U}, now)
        if member.state is WatchState.LEFT:
            break
    lefts = [c for c in out if isinstance(c, Left)]
    assert member.state is WatchState.LEFT and len(lefts) == 1
    assert out[-1] == DelFilter("Unique-ID", U)
    reason = lefts[0].reason
    # max_duration only from the timer's own hangup on a bounded member; unseen has no cause.
    assert reason is not Reason.MAX_DURATION or bounded
    assert (reason is Reason.UNSEEN) == (lefts[0].cause is None)
