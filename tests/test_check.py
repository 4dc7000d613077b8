"""Tests for confguard.check, with a fake `api` answering the replies a real FreeSWITCH recorded."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from confguard.check import (
    EXIT_ALL_OK,
    EXIT_SOME_FAILED,
    CheckResult,
    connection_results,
    exit_code,
    format_results,
    run_checks,
)

TARGET = "127.0.0.1:8021"


def recorded_api_replies(path: Path) -> dict[str, str]:
    """`api <command>` -> the api/response body that followed it, from a .jsonl transcript."""
    replies: dict[str, str] = {}
    pending: str | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["dir"] == "C->S" and record["data"].startswith("api "):
            pending = record["data"].split("\n", 1)[0][4:]
        elif record["dir"] == "S->C" and record["ctype"] == "api/response" and pending:
            replies[pending] = record["data"].split("\n\n", 1)[1]
            pending = None
    return replies


@pytest.fixture(scope="module")
def recorded(transcripts_dir: Path) -> dict[str, str]:
    replies = recorded_api_replies(transcripts_dir / "00-server-info-and-callee-default.jsonl")
    more = recorded_api_replies(transcripts_dir / "04-run1-press1-sched-del-id-transfer-xml.jsonl")
    replies["conference list (one room)"] = more["conference list"]
    return replies


def loaded_modules(show_modules: str) -> set[str]:
    """The ikey column of `show modules` (csv: type,name,ikey,filename)."""
    return {row.split(",")[2] for row in show_modules.splitlines()[1:] if row.count(",") >= 3}


# A hand-written conference.conf as `xml_locate configuration configuration name conference.conf`
# returns it: the <configuration> element.
CONFERENCE_CONF = """<configuration name="conference.conf" description="Audio Conference">
  <advertise></advertise>
  <caller-controls><group name="default"></group></caller-controls>
  <profiles>
    <profile name="default"><param name="rate" value="8000"/></profile>
    <profile name="wideband"><param name="rate" value="16000"/></profile>
  </profiles>
</configuration>
"""


class FakeSwitch:
    """`api` over recorded replies; module_exists answered from the recorded `show modules`."""

    def __init__(self, recorded: dict[str, str]):
        self.recorded = recorded
        self.modules = loaded_modules(recorded["show modules"])
        self.files: set[str] = set()
        self.overrides: dict[str, str | Exception] = {}
        self.sent: list[str] = []
        self.conference_running = False

    def context_xml(self, name: str) -> str | None:
        section = ET.fromstring(self.recorded["xml_locate dialplan"])
        element = section.find(f"context[@name='{name}']")
        return None if element is None else ET.tostring(element, encoding="unicode")

    async def api(self, command: str) -> str:
        self.sent.append(command)
        if command in self.overrides:
            reply = self.overrides[command]
            if isinstance(reply, Exception):
                raise reply
            return reply
        verb, _, args = command.partition(" ")
        if command in self.recorded:
            return self.recorded[command]
        if verb == "module_exists":
            return "true" if args in self.modules else "false"
        if command == "conference list":
            if self.conference_running:
                return self.recorded["conference list (one room)"]
            return "+OK No active conferences.\n"  # conference_api.c, no conference running
        if command == "xml_locate configuration configuration name conference.conf":
            return CONFERENCE_CONF
        m = re.fullmatch(r"xml_locate dialplan context name (\S+)", command)
        if m:
            return self.context_xml(m.group(1)) or "can't find anything\n"
        if verb == "file_exists":
            return "true" if args in self.files else "false"
        return f"-ERR {verb} Command not found!\n"


@pytest.fixture
def switch(recorded: dict[str, str]) -> FakeSwitch:
    return FakeSwitch(recorded)


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


def test_fake_module_rule_agrees_with_recorded_module_exists(recorded: dict[str, str]) -> None:
    modules = loaded_modules(recorded["show modules"])
    assert recorded["module_exists mod_loopback"] == ("true" if "mod_loopback" in modules else "")
    assert recorded["module_exists mod_sofia"] == ("false" if "mod_sofia" not in modules else "")
    assert {"mod_commands", "mod_dptools", "mod_conference", "mod_tone_stream"} <= modules


async def test_all_good_inline(switch: FakeSwitch) -> None:
    results = await run_checks(switch.api, target=TARGET, join_mode="inline", join_target="test1",
                               prompt="tone_stream://%(250,250,440);loops=2")
    lines = by_name(results)
    assert [r.ok for r in results] == [True] * len(results), format_results(results)
    assert lines["version"].detail.startswith("FreeSWITCH 1.11.3-dev")
    assert "git cc93a68" in lines["version"].detail
    for module in ("mod_commands", "mod_dptools", "mod_conference"):
        assert lines[f"{module} loaded"].ok is True
    assert "No active conferences" in lines["conference api answers"].detail
    assert lines["conference profile default"].ok is True
    assert "module_exists mod_tone_stream" in switch.sent
    assert exit_code(results) == EXIT_ALL_OK


async def test_inline_with_running_conference_and_named_profile(switch: FakeSwitch) -> None:
    switch.conference_running = True
    results = by_name(await run_checks(
        switch.api, target=TARGET, join_mode="inline", join_target="test1@wideband", prompt=None))
    assert results["conference api answers"].ok is True
    assert "Conference test1" in results["conference api answers"].detail
    assert results["conference profile wideband"].ok is True
    assert results["prompt"].ok is True


async def test_missing_profile_fails_with_fix(switch: FakeSwitch) -> None:
    results = await run_checks(switch.api, target=TARGET, join_mode="inline",
                               join_target="test1@hd", prompt=None)
    line = by_name(results)["conference profile hd"]
    assert line.ok is False and "default, wideband" in line.detail
    assert "conference.conf.xml" in (line.fix or "")
    assert exit_code(results) == EXIT_SOME_FAILED


async def test_missing_module_fails(switch: FakeSwitch) -> None:
    switch.modules.discard("mod_conference")
    switch.overrides["conference list"] = "-ERR conference Command not found!\n"
    results = await run_checks(switch.api, target=TARGET, join_mode="inline", join_target="",
                               prompt=None)
    lines = by_name(results)
    assert lines["mod_conference loaded"].ok is False
    assert "load mod_conference" in (lines["mod_conference loaded"].fix or "")
    assert lines["conference api answers"].ok is False
    assert lines["mod_dptools loaded"].ok is True
    text = format_results(results)
    assert "✗ mod_conference loaded: module_exists: false" in text
    assert "    fix: `load mod_conference` in fs_cli" in text
    assert exit_code(results) == EXIT_SOME_FAILED


async def test_module_exists_missing_means_mod_commands_out(switch: FakeSwitch) -> None:
    for module in ("mod_commands", "mod_dptools", "mod_conference"):
        switch.overrides[f"module_exists {module}"] = "-ERR module_exists Command not found!\n"
    lines = by_name(await run_checks(switch.api, target=TARGET, join_mode="inline",
                                     join_target="", prompt=None))
    assert lines["mod_commands loaded"].ok is False
    assert "mod_commands not loaded" in lines["mod_commands loaded"].detail


async def test_dialplan_extension_found_in_recorded_dialplan(switch: FakeSwitch) -> None:
    for target in ("7001 XML default", "7001@default", "7001", "7001 default"):
        switch.sent.clear()
        lines = by_name(await run_checks(switch.api, target=TARGET, join_mode="dialplan",
                                         join_target=target, prompt=None))
        line = lines["dialplan extension 7001 in context default"]
        assert line.ok is True, line
        assert "conf_test" in line.detail
        assert "xml_locate dialplan context name default" in switch.sent


async def test_dialplan_extension_missing_or_context_missing(switch: FakeSwitch) -> None:
    lines = by_name(await run_checks(switch.api, target=TARGET, join_mode="dialplan",
                                     join_target="7002 XML default", prompt=None))
    line = lines["dialplan extension 7002 in context default"]
    assert line.ok is False and "^7002$" in (line.fix or "")
    lines = by_name(await run_checks(switch.api, target=TARGET, join_mode="dialplan",
                                     join_target="7001 XML public", prompt=None))
    line = lines["dialplan extension 7001 in context public"]
    assert line.ok is False and "no context public" in line.detail


async def test_dialplan_target_that_would_be_syntax_is_refused(switch: FakeSwitch) -> None:
    results = await run_checks(switch.api, target=TARGET, join_mode="dialplan",
                               join_target="7001 XML default;bad stuff", prompt=None)
    assert by_name(results)["dialplan extension"].ok is False
    assert not any(c.startswith("xml_locate") for c in switch.sent)


async def test_prompt_file(switch: FakeSwitch) -> None:
    path = "/usr/share/freeswitch/sounds/confguard/press-1.wav"
    lines = by_name(await run_checks(switch.api, target=TARGET, join_mode="inline",
                                     join_target="", prompt=path))
    assert lines[f"prompt {path}"].ok is False
    assert f"file_exists {path}" in switch.sent
    switch.files.add(path)
    lines = by_name(await run_checks(switch.api, target=TARGET, join_mode="inline",
                                     join_target="", prompt=path))
    assert lines[f"prompt {path}"].ok is True


@pytest.mark.parametrize("prompt", ["ivr/ivr-welcome.wav", "say:hello", "phrase:greeting",
                                    "http://example.invalid/p.wav"])
async def test_prompt_cannot_tell(switch: FakeSwitch, prompt: str) -> None:
    results = await run_checks(switch.api, target=TARGET, join_mode="inline", join_target="",
                               prompt=prompt)
    line = by_name(results)[f"prompt {prompt}"]
    assert line.ok is None and line.detail.startswith("cannot tell")
    assert not any(c.startswith("file_exists") for c in switch.sent)
    assert exit_code(results) == EXIT_ALL_OK
    assert f"? prompt {prompt}: cannot tell" in format_results(results)


async def test_prompt_with_newline_is_not_sent(switch: FakeSwitch) -> None:
    results = await run_checks(switch.api, target=TARGET, join_mode="inline", join_target="",
                               prompt="/tmp/x.wav\nexit")
    assert by_name(results)["prompt"].ok is False
    assert not any("x.wav" in c for c in switch.sent)


async def test_tone_stream_without_module(switch: FakeSwitch) -> None:
    switch.modules.discard("mod_tone_stream")
    results = await run_checks(switch.api, target=TARGET, join_mode="inline", join_target="",
                               prompt="silence_stream://1000")
    line = by_name(results)["prompt silence_stream://1000"]
    assert line.ok is False and "mod_tone_stream" in (line.fix or "")


async def test_unexpected_version_and_failing_api(switch: FakeSwitch) -> None:
    switch.overrides["version"] = "-ERR version Command not found!\n"
    switch.overrides["module_exists mod_dptools"] = TimeoutError("no reply within 10 s")
    results = by_name(await run_checks(switch.api, target=TARGET, join_mode="inline",
                                       join_target="", prompt=None))
    assert results["version"].ok is False
    assert "unexpected" in results["version"].detail
    assert results["mod_dptools loaded"].ok is False
    assert "TimeoutError" in results["mod_dptools loaded"].detail
    assert results["mod_conference loaded"].ok is True  # one failure does not stop the rest


async def test_unknown_join_mode(switch: FakeSwitch) -> None:
    results = await run_checks(switch.api, target=TARGET, join_mode="bridge", join_target="",
                               prompt=None)
    assert by_name(results)["join target"].ok is False


def _error(name: str) -> Exception:
    cls: Callable[..., Exception] = type(name, (Exception,), {})
    return cls(f"{name} for {TARGET}")


@pytest.mark.parametrize(
    ("error_name", "reach_ok", "auth_ok", "fix_word"),
    [("EslConnectError", False, None, "start FreeSWITCH"),
     ("EslTimeoutError", False, None, "firewall"),
     ("EslRejectedError", False, None, "apply-inbound-acl"),
     ("EslAuthError", True, False, "password_file"),
     ("RuntimeError", False, None, "log-level")],
)
def test_connection_results(error_name: str, reach_ok: bool, auth_ok: bool | None,
                            fix_word: str) -> None:
    results = connection_results(TARGET, _error(error_name))
    assert results[0].ok is reach_ok
    failed = [r for r in results if r.ok is False]
    assert len(failed) == 1 and fix_word in (failed[0].fix or "")
    if auth_ok is None:
        assert len(results) == 1
    else:
        assert results[1].ok is auth_ok
    assert exit_code(results) == EXIT_SOME_FAILED


def test_connection_results_with_real_esl_error_classes() -> None:
    esl = pytest.importorskip("confguard.esl")
    auth = connection_results(TARGET, esl.EslAuthError("-ERR invalid"))
    assert [r.ok for r in auth] == [True, False]
    ok = connection_results(TARGET, None)
    assert [r.ok for r in ok] == [True, True] and exit_code(ok) == EXIT_ALL_OK


def test_format_results_lines() -> None:
    results = [
        CheckResult("reachable at 127.0.0.1:8021", True, "TCP connected"),
        CheckResult("mod_conference loaded", False, "module_exists: false", "load it"),
        CheckResult("prompt x.wav", None, "cannot tell: relative"),
    ]
    assert format_results(results) == (
        "✓ reachable at 127.0.0.1:8021: TCP connected\n"
        "✗ mod_conference loaded: module_exists: false\n"
        "    fix: load it\n"
        "? prompt x.wav: cannot tell: relative\n"
        "1 ok, 1 failed, 1 cannot tell\n"
    )
    assert exit_code(results) == EXIT_SOME_FAILED
    assert exit_code(results[::2]) == EXIT_ALL_OK


async def test_real_switch_xml_locate_replies(switch: FakeSwitch, transcripts_dir: Path) -> None:
    """The conference.conf and dialplan a real switch printed (transcript 17, confguard.realswitch's
    set-up) read as they should: profile default there, 7001 found in default, no public."""
    real = recorded_api_replies(transcripts_dir / "17-xml-locate.jsonl")
    switch.overrides.update({c: r for c, r in real.items() if c.startswith("xml_locate ")})
    lines = by_name(await run_checks(switch.api, target=TARGET, join_mode="inline",
                                     join_target="test1", prompt=None))
    line = lines["conference profile default"]
    assert line.ok is True and line.detail == "defined in conference.conf (profiles: default)"
    for target, ok, detail in (
        ("7001 XML default", True, "extension 'confguard_join' matches by destination_number"),
        ("7002 XML default", False, "no extension in context default matches 7002"),
        ("7001 XML public", False, "no context public in the XML dialplan"),
    ):
        results = await run_checks(switch.api, target=TARGET, join_mode="dialplan",
                                   join_target=target, prompt=None)
        line = results[-2]
        assert line.name.startswith("dialplan extension") and line.ok is ok, line
        assert line.detail.startswith(detail), line


async def test_against_the_simulator(sim) -> None:  # type: ignore[no-untyped-def]
    """The simulator's switch answers what a real one does: every line ✓, none '?'."""
    results = await run_checks(sim.switch.api, target=f"127.0.0.1:{sim.port}", join_mode="inline",
                               join_target="test1", prompt="tone_stream://%(250,250,440)")
    lines = by_name(results)
    assert lines["version"].ok is True and "1.11" in lines["version"].detail
    for module in ("mod_commands", "mod_dptools", "mod_conference"):
        assert lines[f"{module} loaded"].ok is True
    assert lines["conference api answers"].ok is True
    assert lines["conference profile default"].ok is True  # xml_locate of conference.conf
    assert [r.ok for r in results] == [True] * len(results), format_results(results)
    missing = by_name(await run_checks(sim.switch.api, target="sim", join_mode="inline",
                                       join_target="test1@hd", prompt=None))
    assert missing["conference profile hd"].ok is False
    assert "(profiles: default)" in missing["conference profile hd"].detail
    for target, ok in (("7001 XML default", True), ("7002 XML default", False),
                       ("7001 XML public", False)):
        dialplan = await run_checks(sim.switch.api, target="sim", join_mode="dialplan",
                                    join_target=target, prompt=None)
        assert dialplan[-2].name.startswith("dialplan extension")
        assert dialplan[-2].ok is ok, format_results(dialplan)
