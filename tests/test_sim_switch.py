"""Tests of the simulated switch, driven directly (no TCP): replies, event sequences and header
sets compared with the recorded FreeSWITCH transcripts."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import unquote

import pytest

from confguard.sim import xmlconf
from confguard.sim.clock import SimClock
from confguard.sim.config import SimConfig
from confguard.sim.events import SimEvent
from confguard.sim.switch import Switch, parse_dial_string, split_args

SCALE = 0.01
U = "11111111-2222-3333-4444-555555555555"


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def recorded_reply(path: Path, command: str) -> str:
    """The api/response body FreeSWITCH sent for the first `api <command>` in a transcript."""
    recs = records(path)
    for index, rec in enumerate(recs):
        if rec["dir"] == "C->S" and rec["data"] == f"api {command}\n\n":
            for later in recs[index + 1 :]:
                if later["ctype"] == "api/response":
                    return str(later["data"]).split("\n\n", 1)[1]
    raise AssertionError(f"{command!r} not in {path.name}")


def recorded_event(path: Path, name: str, channel_suffix: str = "-a") -> list[tuple[str, str]]:
    """Headers of the first plain event `name` on the -a leg in a transcript."""
    for rec in records(path):
        if rec["ctype"] != "text/event-plain":
            continue
        inner = str(rec["data"]).split("\n\n", 1)[1]
        head = inner.split("\n\n", 1)[0]
        headers = [
            (k, unquote(v)) for k, _, v in (line.partition(": ") for line in head.split("\n"))
        ]
        values = dict(headers)
        if values.get("Event-Name") == name and values.get("Channel-Name", "").endswith(
            channel_suffix
        ):
            return headers
    raise AssertionError(f"{name} not in {path.name}")


@pytest.fixture
async def switch() -> AsyncIterator[tuple[Switch, list[SimEvent]]]:
    published: list[SimEvent] = []
    sw = Switch(SimConfig(heartbeat_interval=5.0), SimClock(SCALE), published.append)
    await sw.start()
    try:
        yield sw, published
    finally:
        await sw.stop()


async def until(sw: Switch, predicate: Callable[[], bool], sim_timeout: float = 20.0) -> None:
    """Wait (in simulated time) until `predicate()` holds; fail after `sim_timeout`."""
    waited = 0.0
    while not predicate():
        assert waited < sim_timeout, "condition not reached"
        await sw.clock.sleep(0.1)
        waited += 0.1


async def test_simple_replies_match_transcripts(switch, transcripts_dir: Path) -> None:
    sw, _ = switch
    info = transcripts_dir / "00-server-info-and-callee-default.jsonl"
    errors = transcripts_dir / "10-errors.jsonl"
    assert await sw.api("version") == recorded_reply(info, "version")
    assert await sw.api("module_exists mod_sofia") == recorded_reply(
        info, "module_exists mod_sofia"
    )
    assert await sw.api("sofia status") == recorded_reply(info, "sofia status")
    assert await sw.api("nosuchcommand foo") == recorded_reply(errors, "nosuchcommand foo")
    assert await sw.api("") == "-ERR  Command not found!\n"
    dead = "00000000-0000-0000-0000-000000000000"
    for command in (f"uuid_exists {dead}", f"uuid_kill {dead}", f"sched_hangup +10 {dead}",
                    f"uuid_transfer {dead} 7001 XML default", "conference test1 list",
                    "originate user/9999 &park()"):  # fmt: skip
        assert await sw.api(command) == recorded_reply(errors, command), command
    status = await sw.api("status")
    recorded = recorded_reply(info, "status")
    assert status.splitlines()[1] == recorded.splitlines()[1]
    assert len(status.splitlines()) == len(recorded.splitlines())
    assert await sw.api("show channels") == recorded_reply(info, "show channels")
    assert await sw.api("show channels as json") == '{"row_count": 0}'


async def test_press1_call_events_follow_transcript(switch, transcripts_dir: Path) -> None:
    sw, published = switch
    sw.background_job(
        "J", f"originate {{origination_uuid={U},callee_mode=press1}}user/1000 &park()"
    )
    await until(sw, lambda: any(e.name == "DTMF" for e in published))
    names = [e.name for e in published if e.name in
             ("CHANNEL_CREATE", "CHANNEL_ANSWER", "BACKGROUND_JOB", "DTMF")]  # fmt: skip
    assert names == ["CHANNEL_CREATE", "CHANNEL_ANSWER", "BACKGROUND_JOB", "DTMF"]
    job = next(e for e in published if e.name == "BACKGROUND_JOB")
    assert job.body == f"+OK {U}\n"
    assert job.get("Job-UUID") == "J" and job.get("Job-Command") == "originate"
    assert (
        job.get("Job-Command-Arg")
        == f"{{origination_uuid={U},callee_mode=press1}}user/1000 &park()"
    )
    dtmf = next(e for e in published if e.name == "DTMF")
    assert dtmf.get("DTMF-Digit") == "1"
    assert not [k for k, _ in dtmf.headers if k.startswith("variable_")]

    plain = transcripts_dir / "02-events-plain.jsonl"
    for name, ours in (("CHANNEL_CREATE", published[0]), ("DTMF", dtmf)):
        theirs = [k for k, _ in recorded_event(plain, name) if not k.startswith("variable_")]
        mine = [k for k, _ in ours.headers if not k.startswith("variable_")]
        assert mine == theirs, name
    create = next(e for e in published if e.name == "CHANNEL_CREATE")
    assert create.get("variable_callee_mode") == "press1"
    assert create.get("variable_origination_uuid") == U
    assert create.get("FreeSWITCH-IPv4") == "127.0.0.1"

    assert await sw.api(f"uuid_kill {U}") == "+OK\n"
    await until(sw, lambda: any(e.name == "CHANNEL_HANGUP_COMPLETE" for e in published))
    complete = next(e for e in published if e.name == "CHANNEL_HANGUP_COMPLETE")
    assert complete.get_all("Hangup-Cause") == ["NORMAL_CLEARING", "NORMAL_CLEARING"]
    recorded = [k for k, _ in recorded_event(plain, "CHANNEL_HANGUP_COMPLETE")
                if not k.startswith("variable_")]  # fmt: skip
    assert [k for k, _ in complete.headers if not k.startswith("variable_")] == recorded
    assert await sw.api(f"uuid_exists {U}") == "false"


@pytest.mark.parametrize(
    ("variables", "reply"),
    [("callee_mode=busy", "-ERR USER_BUSY\n"), ("callee_mode=reject", "-ERR CALL_REJECTED\n"),
     ("callee_mode=bogus", "-ERR UNALLOCATED_NUMBER\n"),
     ("callee_mode=noanswer,originate_timeout=2", "-ERR NO_ANSWER\n")],
)  # fmt: skip
async def test_originate_failures(switch, variables: str, reply: str) -> None:
    sw, published = switch
    assert await sw.api(f"originate {{{variables}}}user/1000 &park()") == reply
    # NO_ANSWER: the originate answers right after CHANNEL_HANGUP, before the channel's
    # CHANNEL_HANGUP_COMPLETE (transcript 16); the callee's refusals come after it.
    completed = any(e.name == "CHANNEL_HANGUP_COMPLETE" for e in published)
    assert completed is (reply != "-ERR NO_ANSWER\n")
    await until(sw, lambda: any(e.name == "CHANNEL_HANGUP_COMPLETE" for e in published))


async def test_api_on_originate_arms_timer_before_create(switch) -> None:
    sw, published = switch
    reply = await sw.api(
        f"originate {{origination_uuid={U},sim_dtmf=,api_on_originate='sched_hangup +3 {U}'}}"
        "user/1001 &park()"
    )
    assert reply == f"+OK {U}\n"
    names = [e.name for e in published]
    assert names.index("ADD_SCHEDULE") < names.index("CHANNEL_CREATE")
    add = next(e for e in published if e.name == "ADD_SCHEDULE")
    assert add.get("Task-Group") == U and add.get("Task-Desc") == "switch_ivr_schedule_hangup"
    await until(sw, lambda: any(e.name == "DEL_SCHEDULE" for e in published))
    hangup = next(e for e in published if e.name == "CHANNEL_HANGUP")
    assert hangup.get("Hangup-Cause") == "ALLOTTED_TIMEOUT"
    assert names.count("DEL_SCHEDULE") == 0
    assert [e.name for e in published].count("DEL_SCHEDULE") == 1


@pytest.mark.parametrize(
    ("when", "cause_arg", "cause"),
    [("+0", "", "ALLOTTED_TIMEOUT"), ("30", "", "ALLOTTED_TIMEOUT"),
     ("+1", "NOT_A_CAUSE", "NORMAL_CLEARING"), ("+1", "17", "USER_BUSY"),
     ("+1", "no_user_response", "NO_USER_RESPONSE")],
)  # fmt: skip
async def test_sched_hangup_quirks(switch, when: str, cause_arg: str, cause: str) -> None:
    sw, published = switch
    await sw.api(f"originate {{origination_uuid={U}}}user/1001 &park()")
    assert await sw.api(f"sched_hangup {when} {U} {cause_arg}".strip()) == "+OK\n"
    await until(sw, lambda: any(e.name == "CHANNEL_HANGUP_COMPLETE" for e in published))
    hangup = next(e for e in published if e.name == "CHANNEL_HANGUP")
    assert hangup.get("Hangup-Cause") == cause
    immediate = when in ("+0", "30")
    assert any(e.name == "ADD_SCHEDULE" for e in published) is not immediate


async def test_bare_large_number_makes_a_repeating_task(switch) -> None:
    sw, _published = switch
    await sw.api(f"originate {{origination_uuid={U}}}user/1001 &park()")
    assert await sw.api(f"sched_hangup 45 {U}") == "+OK\n"
    await sw.clock.sleep(1.0)
    assert await sw.api(f"uuid_exists {U}") == "true"
    task = sw.scheduler.live_tasks(U)[0]
    assert task.interval == 45


async def test_sched_del_group_counts_both_and_transfer_joins_conference(switch) -> None:
    sw, published = switch
    await sw.api(f"originate {{origination_uuid={U}}}user/1001 &park()")
    await sw.api(f"sched_hangup +30 {U} NO_USER_RESPONSE")
    await sw.api(f"sched_hangup +40 {U}")
    assert await sw.api(f"sched_del {U}") == "+OK Deleted: 2\n"
    assert await sw.api(f"sched_del {U}") == "+OK Deleted: 0\n"
    assert await sw.api(f"uuid_transfer {U} -both 'conference:test1' inline") == "+OK\n"
    await until(sw, lambda: len([e for e in published if e.name == "DEL_SCHEDULE"]) == 2)
    await until(sw, lambda: any(e.get("Action") == "add-member" for e in published))
    await until(sw, lambda: any(e.get("Action") == "floor-change" for e in published))
    actions = [e.get("Action") for e in published if e.name == "CUSTOM"]
    assert actions == ["conference-create", "add-member", "floor-change"]
    floor = next(e for e in published if e.get("Action") == "floor-change")
    assert (floor.get("Old-ID"), floor.get("New-ID"), floor.get("Floor")) == ("none", "1", "true")
    add = next(e for e in published if e.get("Action") == "add-member")
    assert add.headers[0] == ("Event-Subclass", "conference::maintenance")
    assert add.get("Unique-ID") == U and add.get("Conference-Name") == "test1"
    listing = await sw.api("conference test1 list")
    assert listing.startswith(f"{add.get('Member-ID')};") and U in listing
    assert await sw.api("conference test1 list count") == "1"
    members = json.loads(await sw.api("conference test1 json_list"))[0]["members"]
    assert [m["uuid"] for m in members] == [U]
    assert len([e for e in published if e.name == "DEL_SCHEDULE"]) == 2
    await sw.api(f"uuid_kill {U}")
    await until(sw, lambda: any(e.get("Action") == "conference-destroy" for e in published))
    actions = [e.get("Action") for e in published if e.name == "CUSTOM"]
    assert actions[-3:] == ["floor-change", "del-member", "conference-destroy"]
    assert await sw.api("conference test1 list") == "-ERR Conference test1 not found\n"


async def test_pending_timer_survives_transfer_into_conference(switch) -> None:
    sw, published = switch
    await sw.api(f"originate {{origination_uuid={U}}}user/1001 &park()")
    await sw.api(f"sched_hangup +2 {U} NO_USER_RESPONSE")
    await sw.api(f"uuid_transfer {U} 7001 XML default")
    await until(sw, lambda: any(e.get("Action") == "del-member" for e in published))
    names = [e.get("Action") or e.name for e in published]
    assert names.index("add-member") < names.index("CHANNEL_HANGUP") < names.index("del-member")
    assert next(e for e in published if e.name == "CHANNEL_HANGUP").get("Hangup-Cause") == (
        "NO_USER_RESPONSE"
    )


async def test_sched_api_and_unsched(switch) -> None:
    sw, _published = switch
    assert await sw.api("sched_api +10") == (
        "-ERR Invalid syntax. USAGE: [+@]<time> <group_name> <command_string>[&]\n"
    )
    reply = await sw.api("sched_api +1 mygroup status")
    assert reply.startswith("+OK Added: ") and reply.endswith("\n")
    assert await sw.api("unsched_api 999999") == "-ERR No such id\n"
    assert await sw.api("sched_del") == "+OK Deleted: 0\n"
    assert await sw.api("sched_hangup") == "-USAGE: [+]<time> <uuid> [<cause>]\n"


async def test_heartbeat_restart_and_shutdown(switch) -> None:
    sw, published = switch
    await until(sw, lambda: any(e.name == "HEARTBEAT" for e in published))
    beat = next(e for e in published if e.name == "HEARTBEAT")
    assert beat.get("Event-Info") == "System Ready"
    old_core = beat.get("Core-UUID")
    await sw.api(f"originate {{origination_uuid={U}}}user/1001 &park()")
    count = len(published)
    sw.restart()
    assert await sw.api(f"uuid_exists {U}") == "false"
    assert len(published) == count
    await sw.api(f"originate {{origination_uuid={U}}}user/1001 &park()")
    assert published[-1].get("Core-UUID") != old_core
    assert await sw.api("fsctl shutdown") == "+OK\n"
    await until(sw, lambda: published[-1].name == "CHANNEL_HANGUP_COMPLETE")
    tail = [e.name for e in published[count:]]
    assert tail.index("SHUTDOWN") < tail.index("CHANNEL_HANGUP")
    assert tail[-1] == "CHANNEL_HANGUP_COMPLETE"
    complete = [e for e in published if e.name == "CHANNEL_HANGUP_COMPLETE"][-1]
    assert complete.get("Hangup-Cause") == "SYSTEM_SHUTDOWN"


def test_argument_parsing() -> None:
    assert split_args("U -both 'conference:test1' inline") == [
        "U",
        "-both",
        "conference:test1",
        "inline",
    ]
    variables, target = parse_dial_string(
        "{origination_uuid=U,api_on_originate='sched_hangup +30 U',x='a,b'}user/1000"
    )
    assert target == "user/1000"
    assert variables == {"origination_uuid": "U", "api_on_originate": "sched_hangup +30 U",
                         "x": "a,b"}  # fmt: skip
    quoted = split_args("{a='x y,z'}user/1000 &park()", keep_quotes=True)
    assert parse_dial_string(quoted[0]) == ({"a": "x y,z"}, "user/1000")


def recorded_body(path: Path, seq: int) -> str:
    rec = next(r for r in records(path) if r["seq"] == seq)
    return str(rec["data"]).split("\n\n", 1)[1]


async def test_lists_print_like_freeswitch_after_an_inline_transfer(
    switch, transcripts_dir: Path
) -> None:
    sw, _published = switch
    assert await sw.api("conference list") == "+OK No active conferences.\n"
    await sw.api(f"originate {{origination_uuid={U},callee_mode=silent}}user/1000 &park()")
    assert await sw.api(f"uuid_transfer {U} conference:test1 inline") == "+OK\n"
    await until(sw, lambda: sw.conferences.get("test1") is not None)
    # cJSON's formatted print: `[{` on one line, tabs, `"name":<TAB>value` (transcript 04).
    recorded_json = recorded_body(
        transcripts_dir / "04-run1-press1-sched-del-id-transfer-xml.jsonl", 58
    )
    ours = await sw.api("conference test1 json_list")
    assert ours.startswith('[{\n\t\t"conference_name":\t"test1",\n')
    assert ours.endswith("\n\t\t\t}]\n\t}]")
    assert [line.split(":")[0] for line in ours.splitlines()] == [
        line.split(":")[0] for line in recorded_json.splitlines()
    ]
    assert json.loads(ours)[0]["members"][0]["uuid"] == U
    xml = await sw.api("conference test1 xml_list")
    assert xml.startswith('<?xml version="1.0"?>\n<conferences>\n  <conference name="test1"')
    assert f"<uuid>{U}</uuid>" in xml and "<has_floor>" in xml and xml.endswith("</conferences>\n")
    # show channels: the profile keeps its destination, the row lists the inline one (05).
    row = (await sw.api("show channels")).splitlines()[1].split(",")
    assert row[9:14] == ["conference:test1", "conference", "test1", "inline", "default"]
    assert row[26:29] == ["", "0000000000", "RECV"]
    # uuid_dump json (what confguard reads on resync) shows the membership.
    dump = json.loads(await sw.api(f"uuid_dump {U} json"))
    assert dump["Answer-State"] == "answered" and dump["Channel-State"] == "CS_EXECUTE"
    assert dump["variable_conference_name"] == "test1"
    assert dump["variable_conference_member_id"] == str(sw.channels[U].member_id)


async def test_show_tasks_as_xml_and_file_exists(switch, transcripts_dir: Path) -> None:
    sw, _published = switch
    recorded = recorded_body(transcripts_dir / "04-run1-press1-sched-del-id-transfer-xml.jsonl", 35)
    ours = await sw.api("show tasks as xml")
    # Same layout as the recording's first row (mod_hash's task 3), before the second row.
    first_row = recorded.split('  <row row_id="2">')[0]
    runtime = str(sw.scheduler.live_tasks()[0].runtime)
    expected = (
        first_row.replace('row_count="2"', 'row_count="1"')
        .replace("1795854766", runtime)
        .replace("<hostname>vm</hostname>", f"<hostname>{sw.config.hostname}</hostname>")
    )
    assert ours == expected + "</result>\n"
    assert await sw.api(f"file_exists {transcripts_dir}") == "true"
    assert await sw.api(f"file_exists {transcripts_dir}/no-such-file") == "false"


XML_LOCATE_ASKED = (  # transcript 17, but `xml_locate dialplan` (below)
    "xml_locate configuration configuration name conference.conf",
    "xml_locate dialplan context name default",
    "xml_locate dialplan context name public",
    "xml_locate dialplan context name DEFAULT",
    "xml_locate configuration configuration name no_such.conf",
    "xml_locate",
    "xml_locate dialplan context",
)
# conf.py's callee context, which the simulator's built-in callees do not need.
CALLEE_CONTEXT_RE = re.compile(r'\n *<context name="confguard_callee">.*?</context>\n', re.S)


async def test_xml_locate_prints_the_setup_as_the_real_switch_did(transcripts_dir: Path) -> None:
    """Byte for byte what the real switch printed for confguard.realswitch's set-up (the
    conformance replay blanks numbers; this does not)."""
    path = transcripts_dir / "17-xml-locate.jsonl"
    sw = Switch(SimConfig(domain="confguard.test"), SimClock(SCALE), lambda event: None)
    for command in XML_LOCATE_ASKED:
        assert await sw.api(command) == recorded_reply(path, command), command
    whole = recorded_reply(path, "xml_locate dialplan")
    assert CALLEE_CONTEXT_RE.search(whole)
    assert await sw.api("xml_locate dialplan") == CALLEE_CONTEXT_RE.sub("", whole, count=1)
    section = await sw.api("xml_locate Configuration")  # any case; only conference.conf
    assert section.startswith('<section name="configuration">\n      <configuration name=')
    assert section.count("<configuration ") == 1
    # The simulator's own domain; nothing else of its set-up varies.
    other = Switch(SimConfig(), SimClock(SCALE), lambda event: None)
    assert '<param name="domain" value="sim.local"></param>' in await other.api(
        XML_LOCATE_ASKED[0]
    )
    assert await sw.api("xml_locate directory") == "can't find anything\n"  # not modelled



def test_xml_printout_keeps_the_documents_whitespace() -> None:
    """The printing rules on a shape the simulator's own sections lack (elements inline in
    elements inline), as the real switch printed conf.py's directory while transcript 17 was
    made (one user of twenty, dial-string shortened)."""
    source = (
        '<section name="directory">\n    <domain name="confguard.test">\n      <groups>\n'
        '        <group name="default">\n          <users>\n            <user id="1001">'
        '<params><param name="dial-string" value="x"/></params></user>\n          </users>\n'
        "        </group>\n      </groups>\n    </domain>\n  </section>"
    )
    assert xmlconf.to_text(ET.fromstring(source)) == (
        '<section name="directory">\n      <domain name="confguard.test">\n'
        '          <groups>\n              <group name="default">\n                  <users>\n'
        '                      <user id="1001">\n            <params>\n'
        '              <param name="dial-string" value="x"></param>\n            </params>\n'
        "          </user>\n\n          </users>\n\n        </group>\n\n      </groups>\n\n"
        "    </domain>\n\n  </section>\n"
    )


@pytest.mark.parametrize(
    ("start", "timeout", "rings"),
    [(100.394, 2, 1.62), (100.499, 2, 1.52), (100.75, 3, 2.26), (100.0, 2, 2.0)],
)
def test_ring_time_limit_counts_whole_seconds(start: float, timeout: int, rings: float) -> None:
    """originate_timeout=N gives up on the first 20 ms check after second floor(start) + N
    (transcripts 10 and 16: N-1 ... N seconds of ringing)."""
    from confguard.sim.switch import ring_time_limit

    assert ring_time_limit(start, timeout) - start == pytest.approx(rings, abs=1e-6)


# ------------------------------------------------------------------ the inline waiting app

WAITING = (
    "'m:|:play_and_get_digits:1 1 3 1000 # tone_stream://%(250,250,440);loops=2 "
    "silence_stream://250 confguard_key ^[1]$|park' inline"
)


def executes(published: list[SimEvent]) -> list[tuple[str, str]]:
    """(event name, Application) of the call's CHANNEL_EXECUTE / _COMPLETE events, in order."""
    out = []
    for event in published:
        if event.name in ("CHANNEL_EXECUTE", "CHANNEL_EXECUTE_COMPLETE"):
            out.append((event.name, dict(event.headers)["Application"]))
    return out


def test_inline_dialplan_parses_both_separators() -> None:
    from confguard.sim.switch import parse_inline_dialplan

    assert parse_inline_dialplan("m:|:play_and_get_digits:1 1 %(1,2,3)|park") == [
        ("play_and_get_digits", "1 1 %(1,2,3)"), ("park", None),
    ]  # fmt: skip
    assert parse_inline_dialplan("set:a=b,conference(test1),park") == [
        ("set", "a=b"), ("conference", "test1"), ("park", None),
    ]  # fmt: skip


def test_inline_apps_are_parsed_once_per_target_into_a_new_list_each_time() -> None:
    """The kept parse of an inline dialplan: a new list for each call (the channel pops its
    apps off it), equal to the parser's, also for targets past the table's bound."""
    from confguard.sim import switch as switch_module

    target = "m:~:sched_hangup:+30 X~play_and_get_digits:1 1 3 1000 # silence~park"
    first = switch_module.inline_apps(target)
    assert first == switch_module.parse_inline_dialplan(target)
    first.pop(0)
    assert switch_module.inline_apps(target) == switch_module.parse_inline_dialplan(target)
    for number in range(switch_module._INLINE_PARSED_KEPT + 10):
        other = f"playback:tone_stream://%({number},1,440),park"
        assert switch_module.inline_apps(other) == switch_module.parse_inline_dialplan(other)
    assert len(switch_module._INLINE_PARSED) <= switch_module._INLINE_PARSED_KEPT


async def test_waiting_app_refuses_a_wrong_key_then_takes_the_key_and_parks(switch) -> None:
    sw, published = switch
    reply = await sw.api(
        f"originate {{origination_uuid={U},sim_answer_after=0,sim_dtmf=9@0.5;1@2.5}}user/1001 "
        + WAITING
    )
    assert reply == f"+OK {U}\n"
    assert executes(published) == [("CHANNEL_EXECUTE", "play_and_get_digits")]
    assert await sw.api(f"uuid_getvar {U} current_application") == "play_and_get_digits"
    assert await sw.api(f"uuid_getvar {U} confguard_key") == "_undef_"
    await until(sw, lambda: len(executes(published)) == 3)
    assert executes(published) == [
        ("CHANNEL_EXECUTE", "play_and_get_digits"),
        ("CHANNEL_EXECUTE_COMPLETE", "play_and_get_digits"),
        ("CHANNEL_EXECUTE", "park"),
    ]
    names = [event.name for event in published]
    # Every key fires DTMF; the key's comes just before the completion.
    assert names.count("DTMF") == 2
    assert names.index("CHANNEL_EXECUTE_COMPLETE") == len(names) - 2
    assert names[-3] == "DTMF"
    assert await sw.api(f"uuid_getvar {U} confguard_key") == "1"
    assert await sw.api(f"uuid_getvar {U} confguard_key_invalid") == "9"
    dump = json.loads(await sw.api(f"uuid_dump {U} json"))
    assert dump["variable_current_application"] == "park"
    assert "variable_current_application_data" not in dump
    assert dump["variable_read_result"] == "success"
    assert dump["Caller-Dialplan"] == "inline"
    # A transfer moves the parked call on, as with &park().
    assert await sw.api(f"uuid_transfer {U} conference:test1 inline") == "+OK\n"
    await until(sw, lambda: sw.conferences.get("test1") is not None)
    assert executes(published)[-2:] == [
        ("CHANNEL_EXECUTE_COMPLETE", "park"), ("CHANNEL_EXECUTE", "conference"),
    ]  # fmt: skip


async def test_waiting_app_without_a_key_parks_after_its_tries(switch) -> None:
    """Three tries of prompt 1 s + wait 1 s + invalid 0.25 s: park 6.75 s after the start."""
    sw, published = switch
    await sw.api(f"originate {{origination_uuid={U},sim_answer_after=0}}user/1001 " + WAITING)
    started = sw.clock.now()
    await until(sw, lambda: ("CHANNEL_EXECUTE", "park") in executes(published))
    # (not a fourth try: that would end at 9 s)
    assert 6.75 <= sw.clock.now() - started < 9.0
    assert await sw.api(f"uuid_getvar {U} read_result") == "failure"
    assert await sw.api(f"uuid_getvar {U} confguard_key") == "_undef_"
    assert await sw.api(f"uuid_getvar {U} playback_ms") == "250"


async def test_a_transfer_ends_the_waiting_app_and_park_never_runs(switch) -> None:
    sw, published = switch
    await sw.api(f"originate {{origination_uuid={U},sim_answer_after=0}}user/1001 " + WAITING)
    await sw.clock.sleep(1.5)  # in the first try's wait
    assert await sw.api(f"uuid_transfer {U} conference:test1 inline") == "+OK\n"
    await until(sw, lambda: sw.conferences.get("test1") is not None)
    await sw.clock.sleep(8.0)  # past where the tries would have ended
    assert executes(published) == [
        ("CHANNEL_EXECUTE", "play_and_get_digits"),
        ("CHANNEL_EXECUTE_COMPLETE", "play_and_get_digits"),
        ("CHANNEL_EXECUTE", "conference"),
    ]
    assert await sw.api(f"uuid_getvar {U} read_result") == "failure"
    assert await sw.api(f"uuid_exists {U}") == "true"
    await sw.api(f"uuid_kill {U}")
    await until(sw, lambda: U not in sw.channels)
    assert await sw.api(f"uuid_exists {U}") == "false"


async def _waiting_call_seen(coasting: bool, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """A waiting call looked at mid-phase, pressed late, then killed: what the looks show."""
    from confguard.sim.switch import DigitCollector

    if not coasting:
        monkeypatch.setattr(DigitCollector, "_coast", lambda self: None)
    published: list[SimEvent] = []
    sw = Switch(SimConfig(heartbeat_interval=60.0), SimClock(0.2), published.append)
    await sw.start()
    app = WAITING.replace(" 1 3 1000 ", " 1 6 1000 ")  # six tries of 1 + 1 + 0.25 s
    try:
        await sw.api(f"originate {{origination_uuid={U},sim_answer_after=0,"
                     f"sim_dtmf=1@12.9}}user/1001 " + app)
        started, seen = sw.clock.now(), []
        # mid-phase: prompt, wait, invalid of try 1; try 2's wait; tries 4 and 6's prompts
        for at in (0.5, 1.5, 2.12, 3.9, 7.3, 11.7):
            await sw.clock.sleep(at - (sw.clock.now() - started))
            dump = json.loads(await sw.api(f"uuid_dump {U} json"))
            # every variable in order; the values of the two that hold a time and a uuid aside
            seen.append([(k, "" if k in ("variable_transfer_history", "variable_transfer_source")
                          else v) for k, v in dump.items() if k.startswith("variable_")])
        await until(sw, lambda: ("CHANNEL_EXECUTE", "park") in executes(published))
        seen.append(await sw.api(f"uuid_getvar {U} confguard_key"))
        await sw.api(f"uuid_kill {U}")
        await until(sw, lambda: U not in sw.channels)
        seen.append([(name, value) for name, value in published[-1].headers
                     if name.startswith("variable_read") or name.startswith("variable_playback")])
        return seen
    finally:
        await sw.stop()


async def _waiting_call_killed(coasting: bool, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """A waiting call nobody looks at, killed in its fourth try's wait: its hangup's events."""
    from confguard.sim.switch import DigitCollector

    if not coasting:
        monkeypatch.setattr(DigitCollector, "_coast", lambda self: None)
    published: list[SimEvent] = []
    sw = Switch(SimConfig(heartbeat_interval=60.0), SimClock(0.2), published.append)
    await sw.start()
    app = WAITING.replace(" 1 3 1000 ", " 1 6 1000 ")
    try:
        await sw.api(f"originate {{origination_uuid={U},sim_answer_after=0}}user/1001 " + app)
        await sw.clock.sleep(8.2)  # try 4: 6.75 + 1 s prompt, then its wait
        await sw.api(f"uuid_kill {U}")
        await until(sw, lambda: U not in sw.channels)
        return [
            (event.name, [(k, v) for k, v in event.headers
                          if k.startswith(("variable_read", "variable_playback"))])
            for event in published
            if event.name in ("CHANNEL_HANGUP", "CHANNEL_EXECUTE_COMPLETE",
                              "CHANNEL_HANGUP_COMPLETE")
        ]
    finally:
        await sw.stop()


async def test_a_coasting_collector_shows_what_running_every_try_shows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The waiting app's tries without a key run no timers (coasting); whoever looks -- a dump
    mid-prompt, mid-wait, mid-invalid, many tries on, the late key, the hangup -- sees the same
    variables, values and order as when every phase ran on its own timer."""
    eager = await _waiting_call_seen(False, monkeypatch)
    monkeypatch.undo()
    coasting = await _waiting_call_seen(True, monkeypatch)
    assert coasting == eager
    assert eager[6] == "1"  # the late key was taken (in the sixth try)
    reads = [dict(look).get("variable_read_result") for look in eager[:6]]
    assert reads == [None, None, "failure", None, None, None]
    assert dict(eager[1])["variable_playback_ms"] == "1000"  # try 1's prompt played
    assert dict(eager[2])["variable_playback_ms"] == "1000"  # invalid (250 ms) not over yet
    assert dict(eager[3])["variable_playback_ms"] == "1000"  # try 2's prompt, after its invalid
    monkeypatch.undo()
    eager_kill = await _waiting_call_killed(False, monkeypatch)
    monkeypatch.undo()
    assert await _waiting_call_killed(True, monkeypatch) == eager_kill
    hangup = dict(eager_kill[0][1])
    assert eager_kill[0][0] == "CHANNEL_HANGUP" and hangup["variable_playback_ms"] == "1000"
    assert "variable_read_result" not in hangup  # try 4 cleared it; killed in its wait


async def test_keys_pressed_before_the_app_wait_for_its_first_prompt(switch) -> None:
    """A key that comes before play_and_get_digits runs waits on the channel (FreeSWITCH's DTMF
    queue) and is the first prompt's: the app takes it at once."""
    sw, _ = switch
    await sw.api(f"originate {{origination_uuid={U},sim_answer_after=0}}user/1001 &park()")
    channel = sw.channels[U]
    channel.application = None  # between apps (as before an originate's first one)
    sw._press(channel, "1")
    assert channel.queued_dtmf == ["1"]
    sw._start_app(channel, "play_and_get_digits", WAITING.split("play_and_get_digits:")[1]
                  .split("|")[0])
    assert channel.queued_dtmf == []
    assert channel.facts.variables.get("confguard_key") == "1"  # and the app is over
    assert channel.collector is None
    channel.hung_up = False  # (the inline dialplan ran out: back to a live channel)
    channel.application = None
    sw._press(channel, "2")
    sw._start_app(channel, "park", None)  # park reads the queue and drops what waited
    assert channel.queued_dtmf == []


def test_event_date_stamps_are_formatted_once_a_second_and_stay_right() -> None:
    """Event-Date-Local / -GMT and the *_stamp variables come from a table of whole seconds:
    every time, fractions, second boundaries, and after the table has started over, the text
    is what strftime gives for that second."""
    import random
    import time

    from confguard.sim import events

    def reference(epoch: float) -> tuple[str, str]:
        return (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)),
                time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(epoch)))  # fmt: skip

    ops = random.Random(3)
    base = 1_764_633_599.0  # a day's last second in UTC
    times = [base, base + 0.999999, base + 1.0, base + 1.5, 0.0, 59.99]
    times += [base + ops.uniform(-3 * 86400, 3 * 86400) for _ in range(events._STAMPS_KEPT + 50)]
    for _ in range(2):  # the second time from the table (which started over meanwhile)
        for epoch in times:
            assert (events.stamp_local(epoch), events.stamp_gmt(epoch)) == reference(epoch)
    assert len(events._LOCAL_STAMPS) <= events._STAMPS_KEPT


def test_variable_headers_keep_the_order_and_prefix_past_the_names_table() -> None:
    """`variable_<name>` headers come from a table of prefixed names: in the channel's order,
    the same as prefixing each name, also once the table is full."""
    from confguard.sim import events

    variables = {f"v{index}": str(index) for index in range(events._PREFIXED_NAMES_KEPT + 10)}
    for _ in range(2):
        assert events.variable_headers(variables) == [
            (f"variable_{name}", value) for name, value in variables.items()
        ]
    assert len(events._VARIABLE_HEADER_NAMES) <= events._PREFIXED_NAMES_KEPT
    assert events.variable_headers({}) == []


def test_event_wanted_reaches_every_event_factory() -> None:
    """The switch hands `event_wanted` to its event factory, the current run's and the next
    one's (a restart makes a new factory): events no client takes are not built in either."""
    switch = Switch(SimConfig(port=0, seed=1), SimClock(1.0), lambda event: None)
    assert switch.events._unwanted("DTMF") is None  # nobody said: everything is built
    switch.event_wanted = lambda name, _subclass: name != "DTMF"
    assert switch.events._unwanted("DTMF") is not None
    assert switch.events._unwanted("CHANNEL_ANSWER") is None
    switch.restart()
    stand_in = switch.events._unwanted("DTMF")
    assert stand_in is not None and stand_in.unsent
    switch.event_wanted = None
    assert switch.event_wanted is None
    assert switch.events._unwanted("DTMF") is None


@pytest.mark.parametrize("execute_wanted", [True, False])
async def test_application_uuid_drawn_only_for_a_client(switch, execute_wanted: bool) -> None:
    """An app's Application-UUID is one uuid in its CHANNEL_EXECUTE and _COMPLETE; when no
    client takes CHANNEL_EXECUTE none is drawn for it, and the COMPLETE still carries one."""
    sw, published = switch
    if not execute_wanted:
        sw.event_wanted = lambda name, _subclass: name != "CHANNEL_EXECUTE"
    reply = await sw.api(
        f"originate {{origination_uuid={U},sim_dtmf=}}user/1001 "
        "sched_cancel,sched_cancel,park inline"
    )
    assert reply == f"+OK {U}\n"
    await until(sw, lambda: sum(e.name == "CHANNEL_EXECUTE_COMPLETE" for e in published) >= 2)
    await sw.api(f"uuid_kill {U}")
    await until(sw, lambda: U not in sw.channels)
    shape = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
    executes = [e for e in published if e.name == "CHANNEL_EXECUTE"]
    completes = [e for e in published if e.name == "CHANNEL_EXECUTE_COMPLETE"]
    assert [e.get("Application") for e in completes] == ["sched_cancel", "sched_cancel", "park"]
    uuids = [e.get("Application-UUID") or "" for e in completes]
    assert all(shape.fullmatch(value) for value in uuids) and len(set(uuids)) == 3
    if execute_wanted:
        assert [e.get("Application-UUID") for e in executes] == uuids
    else:
        assert len(executes) == 3 and all(e.unsent for e in executes)
