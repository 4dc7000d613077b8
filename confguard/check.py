"""`confguard check`: is this FreeSWITCH ready for confguard? One line per check, with the fix.

Owns the checks that run over an authenticated ESL session through a single `api(command) ->
reply` callable (so they are I/O-light and testable with recorded replies), the connection
checks' wording (`connection_results`), the report format and the exit code. The CLI opens the
session; this module never connects anywhere.

Checks and the FreeSWITCH commands they use (replies as in the recorded transcripts and the
FreeSWITCH source, mod_commands.c / conference_api.c):
- version: `version` -> "FreeSWITCH Version 1.11.3-dev+git~... (git cc93a68 ... 64bit)".
- modules: `module_exists mod_commands|mod_dptools|mod_conference` -> `true` / `false` (no
  newline). `module_exists` lives in mod_commands, so "Command not found" means mod_commands is out.
- join target, inline mode: `conference list` answers `+OK ...` (also "+OK No active
  conferences.") when mod_conference is loaded, `-ERR conference Command not found!` when not;
  the profile is looked up with
  `xml_locate configuration configuration name conference.conf` (its `<profiles>`). A missing
  profile does not stop a join (FreeSWITCH falls back to built-in settings) but is reported ✗,
  since a named profile that is not there is a typo.
- join target, dialplan mode: `xml_locate dialplan context name <context>`, then the extension is
  found by matching its `destination_number` condition expressions against the number (Python's
  `re`, close to PCRE for dialplan patterns). It cannot see other conditions of that extension,
  nor dialplans generated at call time (mod_xml_curl, Lua): those show as "cannot tell".
- prompt: an absolute path -> `file_exists <path>` (`true`/`false`; existence, not permissions);
  `tone_stream://` / `silence_stream://` -> `module_exists mod_tone_stream`; relative paths (which
  FreeSWITCH resolves against the channel's `sound_prefix` / `sounds_dir`) and other schemes
  (`say:`, `phrase:`, `http://`, ...) -> "cannot tell".
- dial routes (`[routes.<name>]`): their endpoint and sofia gateway, see confguard.check_routes.

A result is ok (✓), failed (✗) or cannot tell (?, does not fail the run).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ApiCall = Callable[[str], Awaitable[str]]

REQUIRED_MODULES = ("mod_commands", "mod_dptools", "mod_conference")
MARK_OK, MARK_FAILED, MARK_UNKNOWN = "✓", "✗", "?"
EXIT_ALL_OK = 0
EXIT_SOME_FAILED = 1

_VERSION_RE = re.compile(
    r"FreeSWITCH Version (?P<version>\d+\.\d+(?:\.\d+)?[^\s+(]*)\S*\s*(?:\((?P<build>[^)]*)\))?"
)
_NOT_FOUND_RE = re.compile(r"^-ERR \S* ?Command not found!?", re.IGNORECASE)
_MODULE_RE = re.compile(r"^mod_[a-z0-9_]{1,64}$")
_PROFILE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_EXTENSION_RE = re.compile(r"^[0-9A-Za-z_+*#.\-]{1,64}$")
_CONTEXT_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_STREAM_SCHEMES = ("tone_stream://", "silence_stream://")


@dataclass(frozen=True)
class CheckResult:
    """One line of `confguard check`. `ok` is True (✓), False (✗) or None (cannot tell)."""

    name: str
    ok: bool | None
    detail: str
    fix: str | None = None

    @property
    def mark(self) -> str:
        return MARK_OK if self.ok else MARK_UNKNOWN if self.ok is None else MARK_FAILED


async def run_checks(
    api: ApiCall,
    *,
    target: str,
    join_mode: str,
    join_target: str,
    prompt: str | None,
    routes: Mapping[str, Any] | None = None,
) -> list[CheckResult]:
    """Run every check over `api` (an authenticated session's `api`), in a fixed order.

    `target` is "host:port" (for the messages). `join_target`: in `inline` mode a room spec,
    `room@profile` or `@profile` (no `@`, e.g. `test1` or empty: profile `default`, as
    mod_conference does); in
    `dialplan` mode `<extension> XML <context>`, `<extension> <context>`, `<extension>@<context>`
    or `<extension>` (context `default`). A failing `api` call becomes a ✗ line of its own."""
    results = [await _check_version(api, target)]
    for module in REQUIRED_MODULES:
        results.append(await _check_module(api, module))
    if join_mode == "inline":
        results.extend(await _check_inline(api, join_target))
    elif join_mode == "dialplan":
        results.append(await _check_dialplan(api, join_target))
    else:
        results.append(CheckResult(
            "join target", False, f"unknown join mode {join_mode!r}",
            "set [invite] join_mode to inline or dialplan"))
    results.append(await _check_prompt(api, prompt))
    if routes:
        from confguard.check_routes import route_results  # `[routes.<name>]`: one module

        results.extend(await route_results(api, routes))
    return results


def connection_results(target: str, error: BaseException | None) -> list[CheckResult]:
    """The reachability and password lines, from the outcome of opening the ESL session.

    `error` is None when connect + auth succeeded, else the exception (confguard.esl's
    EslConnectError / EslTimeoutError / EslRejectedError / EslAuthError, or anything else)."""
    reach = f"reachable at {target}"
    auth = "password accepted"
    if error is None:
        return [CheckResult(reach, True, "TCP connected, auth/request received"),
                CheckResult(auth, True, "+OK accepted")]
    kind = type(error).__name__
    message = str(error) or kind
    if kind == "EslAuthError":
        return [CheckResult(reach, True, "TCP connected, auth/request received"),
                CheckResult(auth, False, message,
                            "set [esl] password_file (or $CREDENTIALS_DIRECTORY/esl-password) to "
                            "the password in FreeSWITCH's autoload_configs/event_socket.conf.xml")]
    if kind == "EslRejectedError":
        return [CheckResult(reach, False, f"refused by FreeSWITCH's ACL: {message}",
                            "allow this host in event_socket.conf.xml's apply-inbound-acl "
                            "(see deploy/freeswitch/), then `reloadacl` in fs_cli")]
    if kind == "EslTimeoutError":
        return [CheckResult(reach, False, message,
                            "check that FreeSWITCH is running and that no firewall drops port "
                            f"{_port_of(target)}; raise [esl] connect_timeout on slow links")]
    if kind == "EslConnectError":
        return [CheckResult(reach, False, message,
                            "start FreeSWITCH, or set [esl] host/port to where mod_event_socket "
                            "listens (`netstat -lnpt | grep 8021` on the switch)")]
    return [CheckResult(reach, False, f"{kind}: {message}",
                        "see the error; run with --log-level debug for details")]


def format_results(results: Sequence[CheckResult]) -> str:
    """One `✓`/`✗`/`?` line per check, a `fix:` line under each ✗ (and under ? when known),
    and a summary line."""
    lines: list[str] = []
    for result in results:
        lines.append(f"{result.mark} {result.name}: {result.detail}")
        if result.fix and not result.ok:
            lines.append(f"    fix: {result.fix}")
    failed = sum(1 for r in results if r.ok is False)
    unknown = sum(1 for r in results if r.ok is None)
    summary = f"{len(results) - failed - unknown} ok, {failed} failed, {unknown} cannot tell"
    lines.append(summary)
    return "\n".join(lines) + "\n"


def exit_code(results: Sequence[CheckResult]) -> int:
    """0 when nothing failed ("cannot tell" does not fail), else 1."""
    return EXIT_SOME_FAILED if any(r.ok is False for r in results) else EXIT_ALL_OK


# -- the checks --------------------------------------------------------------------------------


async def _call(api: ApiCall, command: str) -> tuple[str | None, str | None]:
    """(reply, None) or (None, error text)."""
    try:
        return await api(command), None
    except Exception as exc:  # the session's typed errors, or anything the transport raised
        return None, f"`{command}` failed: {type(exc).__name__}: {exc}"


def _connection_fix() -> str:
    return "check the ESL connection (confguard check reachability/password lines above)"


async def _check_version(api: ApiCall, target: str) -> CheckResult:
    reply, error = await _call(api, "version")
    if reply is None:
        return CheckResult("version", False, error or "", _connection_fix())
    match = _VERSION_RE.search(reply)
    if not match:
        return CheckResult("version", False, f"unexpected `version` reply: {_short(reply)}",
                           f"is {target} a FreeSWITCH Event Socket?")
    build = f" ({match.group('build')})" if match.group("build") else ""
    return CheckResult("version", True, f"FreeSWITCH {match.group('version')}{build}")


async def _check_module(api: ApiCall, module: str) -> CheckResult:
    name = f"{module} loaded"
    if not _MODULE_RE.match(module):
        return CheckResult(name, False, f"not a module name: {module!r}")
    reply, error = await _call(api, f"module_exists {module}")
    if reply is None:
        return CheckResult(name, False, error or "", _connection_fix())
    answer = reply.strip()
    fix = (f"`load {module}` in fs_cli, and add <load module=\"{module}\"/> to "
           "autoload_configs/modules.conf.xml so it loads at start")
    if answer == "true":
        return CheckResult(name, True, "module_exists: true")
    if answer == "false":
        return CheckResult(name, False, "module_exists: false", fix)
    if _NOT_FOUND_RE.match(answer):
        # module_exists itself is a mod_commands API: its absence means mod_commands is out.
        return CheckResult(name, False, f"cannot ask: {_short(answer)} (mod_commands not loaded?)",
                           "load mod_commands: `load mod_commands` in fs_cli and in "
                           "autoload_configs/modules.conf.xml")
    return CheckResult(name, False, f"unexpected reply: {_short(answer)}", fix)


async def _check_inline(api: ApiCall, join_target: str) -> list[CheckResult]:
    profile = _profile_of(join_target)
    answers = "conference api answers"
    reply, error = await _call(api, "conference list")
    if reply is None:
        results = [CheckResult(answers, False, error or "", _connection_fix())]
    elif not reply.startswith("-ERR"):
        first = reply.strip().splitlines()[0] if reply.strip() else "(empty reply)"
        results = [CheckResult(answers, True, _short(first))]
    else:
        results = [CheckResult(answers, False, f"`conference list`: {_short(reply)}",
                               "load mod_conference (see the mod_conference line)")]
    results.append(await _check_profile(api, profile))
    return results


async def _check_profile(api: ApiCall, profile: str | None) -> CheckResult:
    name = "conference profile"
    if profile is None:
        return CheckResult(name, False, "not a valid profile name",
                           "use 1-64 of A-Z a-z 0-9 _ . - after @ in the room")
    name = f"conference profile {profile}"
    reply, error = await _call(api, "xml_locate configuration configuration name conference.conf")
    if reply is None:
        return CheckResult(name, False, error or "", _connection_fix())
    root = _parse_xml(reply)
    if root is None:
        return CheckResult(name, None, f"cannot tell: conference.conf not readable through "
                                       f"xml_locate ({_short(reply)})")
    profiles = [p.get("name", "") for p in root.iter("profile")
                if _parent_tag(root, p) == "profiles"]
    if profile in profiles:
        return CheckResult(name, True, f"defined in conference.conf (profiles: "
                                       f"{', '.join(profiles)})")
    return CheckResult(
        name, False,
        f"not in conference.conf (profiles: {', '.join(profiles) or 'none'}); FreeSWITCH would "
        "create the room with built-in settings",
        f"add <profile name=\"{profile}\"> to autoload_configs/conference.conf.xml and "
        "`reload mod_conference`, or use a room without @profile")


async def _check_dialplan(api: ApiCall, join_target: str) -> CheckResult:
    parsed = _extension_and_context(join_target)
    if parsed is None:
        return CheckResult("dialplan extension", False, f"cannot read {join_target!r}",
                           "set [invite] join_extension (e.g. 7001) and join_context "
                           "(e.g. default)")
    extension, context = parsed
    name = f"dialplan extension {extension} in context {context}"
    reply, error = await _call(api, f"xml_locate dialplan context name {context}")
    if reply is None:
        return CheckResult(name, False, error or "", _connection_fix())
    if reply.strip().startswith("can't find anything"):
        return CheckResult(name, False, f"no context {context} in the XML dialplan",
                           f"add <context name=\"{context}\"> to the dialplan (see "
                           "deploy/freeswitch/), `reloadxml`; or fix [invite] join_context")
    root = _parse_xml(reply)
    if root is None:
        return CheckResult(name, None, f"cannot tell: `xml_locate` reply is not XML "
                                       f"({_short(reply)})")
    context_element = root if root.tag == "context" else root.find(f".//context[@name='{context}']")
    if context_element is None:
        return CheckResult(name, None, "cannot tell: no <context> in the xml_locate reply")
    unreadable = False
    for ext in context_element.iter("extension"):
        for condition in ext.iter("condition"):
            if condition.get("field") != "destination_number":
                continue
            expression = condition.get("expression", "")
            try:
                matched = re.search(expression, extension) is not None
            except re.error:
                unreadable = True
                continue
            if matched:
                return CheckResult(
                    name, True,
                    f"extension {ext.get('name', '?')!r} matches by destination_number "
                    f"{expression!r} (its other conditions are not evaluated)")
    if unreadable:
        return CheckResult(name, None, f"cannot tell: some destination_number expressions in "
                                       f"context {context} are not readable here")
    return CheckResult(
        name, False,
        f"no extension in context {context} matches {extension} by destination_number "
        "(a dialplan generated at call time, e.g. by mod_xml_curl or Lua, is not visible)",
        f"add an extension with <condition field=\"destination_number\" "
        f"expression=\"^{re.escape(extension)}$\"> (see deploy/freeswitch/), `reloadxml`")


async def _check_prompt(api: ApiCall, prompt: str | None) -> CheckResult:
    name = "prompt"
    if prompt is None or prompt == "":
        return CheckResult(name, True, "none configured (the callee hears no prompt)")
    name = f"prompt {prompt}"
    if _CONTROL_RE.search(prompt):
        return CheckResult("prompt", False, f"contains a control character: {prompt!r}",
                           "set [invite] prompt to a path or tone_stream:// URL on one line")
    if prompt.startswith(_STREAM_SCHEMES):
        reply, error = await _call(api, "module_exists mod_tone_stream")
        if reply is None:
            return CheckResult(name, False, error or "", _connection_fix())
        if reply.strip() == "true":
            return CheckResult(name, True, "mod_tone_stream loaded (plays tone_stream:// and "
                                           "silence_stream://)")
        return CheckResult(name, False, f"mod_tone_stream: {_short(reply.strip())}",
                           "`load mod_tone_stream` in fs_cli and in modules.conf.xml")
    if prompt.startswith("/"):
        reply, error = await _call(api, f"file_exists {prompt}")
        if reply is None:
            return CheckResult(name, False, error or "", _connection_fix())
        answer = reply.strip()
        if answer == "true":
            return CheckResult(name, True, "exists on the FreeSWITCH host (permissions not "
                                           "checked: it must be readable by FreeSWITCH's user)")
        if answer == "false":
            return CheckResult(name, False, "no such file on the FreeSWITCH host",
                               "record or copy the prompt there (see deploy/freeswitch/), "
                               "readable by FreeSWITCH's user, or fix [invite] prompt")
        return CheckResult(name, None, f"cannot tell: `file_exists` answered {_short(answer)}")
    if "://" in prompt or re.match(r"^[a-z_]+:", prompt):
        return CheckResult(name, None, "cannot tell: FreeSWITCH resolves this scheme when "
                                       "playing it")
    return CheckResult(name, None, "cannot tell: a relative path is resolved against the "
                                   "channel's sound_prefix / sounds_dir when played; use an "
                                   "absolute path to have it checked")


# -- helpers -----------------------------------------------------------------------------------


def _profile_of(join_target: str) -> str | None:
    spec = join_target.strip()
    profile = spec.rsplit("@", 1)[1] if "@" in spec else "default"
    return profile if _PROFILE_RE.match(profile) else None


def _extension_and_context(join_target: str) -> tuple[str, str] | None:
    spec = join_target.strip()
    if "@" in spec and " " not in spec:
        extension, context = spec.split("@", 1)
    else:
        words = spec.split()
        if len(words) == 1:
            extension, context = words[0], "default"
        elif len(words) == 2:
            extension, context = words
        elif len(words) == 3 and words[1] == "XML":
            extension, context = words[0], words[2]
        else:
            return None
    if not (_EXTENSION_RE.match(extension) and _CONTEXT_RE.match(context)):
        return None
    return extension, context


def _parse_xml(text: str) -> ET.Element | None:
    body = text.strip()
    if not body.startswith("<"):
        return None
    try:
        return ET.fromstring(body)
    except ET.ParseError:
        return None


def _parent_tag(root: ET.Element, child: ET.Element) -> str | None:
    for parent in root.iter():
        if child in list(parent):
            return parent.tag
    return None


def _short(text: str, limit: int = 120) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 3] + "..."


def _port_of(target: str) -> str:
    return target.rsplit(":", 1)[-1] if ":" in target else "8021"
