"""Bad input at the control API and the `confguard invite` CLI, driven by hypothesis.

The daemon's pieces (EslSession, Engine, ControlServer) run against the simulator through the
recording relay `peers.EslLink`, on a loop in a background thread, so hypothesis's examples are
plain blocking requests on the Unix socket. Each rejected example poisons exactly one field of an
otherwise valid request (newline, CR, braces, quotes, comma, space, `${`, `%`, `|`, NUL,
non-ASCII, over-long) and must get 400 `bad_input` naming that field, one line of message, and
not one command more on the ESL link than the connection set-up. Accepted requests must put an
originate on the wire whose every value is inside the whitelist and that has no line break.
The CLI: a rejected argument exits 2 with a one-line message and connects to nothing (neither
the control socket nor, with --direct, the ESL port); an accepted one reaches the switch as the
same originate. Examples are derandomized (reproducible in CI) and bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peers import SIM_PASSWORD, EslLink, SimPeer

from confguard import cli
from confguard.api import MAX_BODY, ControlServer
from confguard.engine import Engine
from confguard.esl import EslSession, EslSettings

BOUNDED = settings(max_examples=60, deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.too_slow])

POISONS = ["\n", "\r", "\r\n", "{", "}", "'", '"', ",", " ", "${", "%", "|", "\x00", "é",
           "\u260e", "\u2028", "$", ";;"]


class Stack:
    """Simulator <- EslLink <- EslSession <- Engine <- ControlServer, on a loop in a thread."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.socket = str(workdir / "api.sock")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 15) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        self.thread.start()
        self.run(self._start())
        self.setup = self.commands()

    async def _start(self) -> None:
        self.peer = SimPeer(self.workdir)
        await self.peer.start()
        self.link = EslLink(self.peer)
        await self.link.start()
        self.session = EslSession(
            EslSettings(host="127.0.0.1", port=self.link.port, password=SIM_PASSWORD)
        )
        self.engine = Engine()
        self.engine.attach(self.session)
        await self.session.connect()
        await self.engine.start()
        self.control = ControlServer(self.engine, self.socket)
        await self.control.start()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self._stop(), timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _stop(self) -> None:
        await self.engine.stop(cancel_invites=True, timeout=4)
        await self.control.stop()
        await self.session.close()
        await self.link.stop()
        await self.peer.stop()

    def commands(self) -> list[str]:
        async def copy() -> list[str]:
            return list(self.link.commands())

        return list(self.run(copy()))


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack that only ever gets requests that must be refused."""
    stack = Stack(tmp_path_factory.mktemp("quiet"))
    stack.start()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack that places the accepted invites."""
    stack = Stack(tmp_path_factory.mktemp("busy"))
    stack.start()
    yield stack
    stack.stop()


def post(path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """POST /invites with `body` as it is, on a plain blocking Unix socket."""
    head = (
        "POST /invites HTTP/1.1\r\nhost: confguard\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    data = b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head + body)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(payload)


# ------------------------------------------------------------------ what a request may hold

VALID: dict[str, list[Any]] = {
    "room": ["test1", "test1@default", "r_2-x"],
    "timeout": [30, 1, 3600],
    "ring_timeout": [1, 20],
    "key": ["1", "5", "#"],
    "decline_key": ["2", "9", "*"],
    "prompt": ["ivr/ivr-welcome.wav", "tone_stream://%(250,250,440)", "silence_stream://250"],
    "caller_id_name": ["Conference Bot", "ops"],
    "caller_id_number": ["+4930123", "1000"],
    "join": ["inline", "7001 default"],
}
VALID_EXTENSIONS = ["1000", "1001", "2000", "alice.b", "x+1"]
VALID_VARIABLES = [("foo", "abc"), ("my_var", "x.y@z"), ("tag", ""), ("v2", "a:b;c=d/e*#")]
# Error field names that count as naming the poisoned one.
ERROR_FIELDS = {
    "extensions": {"extension", "extensions"},
    "join": {"join", "join.extension", "join.context"},
    "variables": None,  # "variables" or "variables.<name>"
}
NOT_SECONDS: list[Any] = ["30", "30\n", " 30", "3_0", "${x}", True, False, 1.5, -1, 0, 3601,
                          10**30, [30], {"s": 30}, "\u0663"]
NOT_KEYS: list[Any] = [1, "", "11", "E", "1\n", "\x00", "\u0661", ["1"], True]


def poison_excluded(field: str, base: str) -> set[str]:
    """Poisons the field's documented alphabet allows in that base value (not poisons there)."""
    if field == "caller_id_name":
        return {" "}
    if field == "prompt" and "://" in base:
        return {"%", ","}
    if field == "join" and base == "inline":
        return {" "}  # "inl ine" is the dialplan extension "inl" in context "ine"
    return set()


@st.composite
def poisoned_text(draw: st.DrawFn, field: str, base: str) -> str:
    allowed = poison_excluded(field, base)
    poison = draw(st.sampled_from([p for p in POISONS if p not in allowed]))
    how = draw(st.sampled_from(["insert", "alone", "repeat"]))
    if how == "alone":
        return poison
    if how == "repeat":
        return base + poison * draw(st.integers(1, 50))
    at = draw(st.integers(0, len(base)))
    return base[:at] + poison + base[at:]


@st.composite
def valid_request(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {
        "extensions": draw(st.lists(st.sampled_from(VALID_EXTENSIONS), min_size=1, max_size=3,
                                    unique=True)),
        "room": draw(st.sampled_from(VALID["room"])),
    }
    for name in ("timeout", "key", "decline_key", "prompt", "caller_id_name",
                 "caller_id_number", "join"):
        if draw(st.booleans()):
            body[name] = draw(st.sampled_from(VALID[name]))
    if "timeout" in body and draw(st.booleans()):
        body["ring_timeout"] = min(body["timeout"], draw(st.sampled_from(VALID["ring_timeout"])))
    if draw(st.booleans()):
        pairs = draw(st.lists(st.sampled_from(VALID_VARIABLES), max_size=3, unique=True))
        body["variables"] = dict(pairs)
    return body


@st.composite
def rejected_request(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A valid request with exactly one field poisoned; (body, the poisoned field)."""
    body = draw(valid_request())
    field = draw(st.sampled_from([
        "extensions", "room", "timeout", "ring_timeout", "key", "decline_key", "prompt",
        "caller_id_name", "caller_id_number", "join", "variable_name", "variable_value",
        "variables", "unknown",
    ]))
    if field == "extensions":
        exts = list(body["extensions"])
        at = draw(st.integers(0, len(exts) - 1))
        bad = draw(st.one_of(poisoned_text("extension", exts[at]),
                             st.sampled_from([None, 1000, 1e100, True, ["1000"], "9" * 65])))
        exts[at] = bad
        body["extensions"] = exts
    elif field in ("timeout", "ring_timeout"):
        body[field] = draw(st.sampled_from(NOT_SECONDS))
        if field == "ring_timeout":
            body.pop("timeout", None)
    elif field in ("key", "decline_key"):
        base = body.get(field) or VALID[field][0]
        body[field] = draw(st.one_of(poisoned_text(field, base), st.sampled_from(NOT_KEYS)))
        if field == "decline_key":
            body["key"] = "1"
    elif field in ("variable_name", "variable_value", "variables"):
        if field == "variables":
            body[field] = draw(st.sampled_from([[], "", 0, False, "a=b", [["a", "b"]],
                                                {"a": 1}, {"a": None}]))
        elif field == "variable_name":
            name = draw(st.one_of(
                poisoned_text("variable", "foo"),
                st.sampled_from(["api_on_answer", "execute_on_answer", "origination_uuid",
                                 "sip_h_X", "confguard_key", "Foo", "1abc", "", "a" * 65]),
            ))
            body["variables"] = {name: "abc"}
        else:
            value = draw(st.one_of(poisoned_text("variable", "abc"),
                                   st.sampled_from([1, None, ["a"], "a" * 257])))
            body["variables"] = {"foo": value}
        field = "variables"
    elif field == "unknown":
        name = draw(st.sampled_from(["hangup_cause", "reprompt_interval", "colour", "room\n",
                                     "", "Extensions", "${room}"]))
        body[name] = draw(st.sampled_from(["ALLOTTED_TIMEOUT", 5, "x"]))
        field = name
    else:
        base = body.get(field) or VALID[field][0]
        body[field] = draw(poisoned_text(field, base))
    return body, field


def assert_names(error: dict[str, Any], field: str) -> None:
    expected = ERROR_FIELDS.get(field, {field})
    if expected is None:
        assert error["field"].startswith(field), error
    else:
        assert error["field"] in expected, error


# ------------------------------------------------------------------------------ the API


def test_connection_set_up_is_all_the_quiet_switch_saw(quiet: Stack) -> None:
    assert quiet.setup, "the relay recorded nothing"
    for command in quiet.setup:
        assert command.startswith(("auth ", "event plain ", "filter Event-Name ")), command


@BOUNDED
@given(case=rejected_request(), ascii_only=st.booleans())
def test_rejected_request_is_400_naming_the_field_and_sends_nothing(
    quiet: Stack, case: tuple[dict[str, Any], str], ascii_only: bool
) -> None:
    body, field = case
    status, reply = post(quiet.socket, json.dumps(body, ensure_ascii=ascii_only).encode())
    assert status == 400, (body, reply)
    error = reply["error"]
    assert error["kind"] == "bad_input"
    assert_names(error, field)
    assert "\n" not in error["message"] and "\r" not in error["message"]
    assert quiet.commands() == quiet.setup, "a refused request reached the switch"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"extensions": ["1000"], "room": "te\xffst1"}', id="invalid-utf8"),
        pytest.param(b'{"extensions": ["1000"], "room": "test1"', id="truncated-json"),
        pytest.param(b'["1000"]', id="not-an-object"),
        pytest.param(b'{"extensions": ["1000"], "room": "test1"}\x00', id="trailing-nul"),
        pytest.param(b'{"extensions": ["1000"], "room": "test1", "room": "a\\nb"}',
                     id="duplicate-key"),
        pytest.param(b'{"extensions": ["1000"], "room": "test1", "timeout": 1' + b"0" * 5000
                     + b"}", id="5000-digit-number"),
        pytest.param(b'{"extensions": ["1000"], "room": "test1", "timeout": NaN}', id="nan"),
    ],
)
def test_malformed_body_is_refused_and_sends_nothing(quiet: Stack, raw: bytes) -> None:
    status, reply = post(quiet.socket, raw)
    assert status == 400, reply
    assert reply["error"]["kind"] in ("bad_json", "bad_input"), reply
    assert quiet.commands() == quiet.setup


@pytest.mark.parametrize("field", ["room", "prompt", "caller_id_name", "extensions", "join"])
def test_long_values_are_refused(quiet: Stack, field: str) -> None:
    """A 60 KB value (inside the body limit) is refused naming its field; a 1 MB one is over
    the body limit (413) before any field is looked at. Neither reaches the switch."""
    for size, want in ((60_000, 400), (1 << 20, 413)):
        value = "a" * size
        body: dict[str, Any] = {"extensions": ["1000"], "room": "test1"}
        body[field] = [value] if field == "extensions" else value
        status, reply = post(quiet.socket, json.dumps(body).encode())
        assert status == want, (size, reply)
        if want == 400:
            assert_names(reply["error"], field)
        else:
            assert reply["error"]["kind"] == "too_large" and size > MAX_BODY
    assert quiet.commands() == quiet.setup


# The originate a request may produce: every {} value either plain or '...'-quoted, in the
# whitelist; the dial string user/<extension>; then &park() or one single-quoted inline
# dialplan (the waiting app), whose words are the validated values.
ORIGINATE = re.compile(
    r"bgapi originate \{(?P<vars>[^{}]*)\}user/(?P<ext>[0-9A-Za-z_.+-]{1,64}) "
    r"(?:&park\(\)|'(?P<app>[^'{}\n\r\x00]*)' inline)"
)
PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.:;@+/=*#-]*")
QUOTED_VALUE = re.compile(r"'[A-Za-z0-9 _.+-]+'")


def originate_of(stack: Stack, call_uuid: str) -> str:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for command in stack.commands():
            if command.startswith("bgapi originate ") and call_uuid in command:
                return command
        time.sleep(0.02)
    raise AssertionError(f"no originate for {call_uuid} reached the switch")


def check_originate(
    line: str, extension: str, variables: dict[str, str], prompt: str | None = None
) -> None:
    assert not set(line) & {"\n", "\r", "\x00"}, line
    match = ORIGINATE.fullmatch(line)
    assert match, line
    assert match["ext"] == extension
    seen: dict[str, str] = {}
    for part in match["vars"].split(","):
        name, eq, value = part.partition("=")
        assert eq and re.fullmatch(r"[a-z][a-z0-9_]*", name), part
        assert PLAIN_VALUE.fullmatch(value) or QUOTED_VALUE.fullmatch(value), part
        seen[name] = value
    for name, value in variables.items():
        assert seen.get(name) == value, (name, line)
    if match["app"] is not None and prompt is not None:
        assert prompt in re.split(r"[ |]", match["app"]), line


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(body=valid_request())
def test_accepted_request_originates_inside_the_whitelist(busy: Stack, body: dict[str, Any]
                                                         ) -> None:
    status, reply = post(busy.socket, json.dumps(body).encode())
    assert status == 201, (body, reply)
    created = reply["invites"]
    assert [item["ext"] for item in created] == body["extensions"]
    for item in created:
        line = originate_of(busy, item["uuid"])
        check_originate(line, item["ext"], body.get("variables", {}), body.get("prompt"))
    for command in busy.commands():
        assert not set(command) & {"\n", "\r", "\x00"}, command


# ------------------------------------------------------------------------------ the CLI

FLAGS = {
    "room": "--room", "timeout": "--timeout", "ring_timeout": "--ring-timeout", "key": "--key",
    "decline_key": "--decline-key", "prompt": "--prompt", "caller_id_name": "--caller-id-name",
    "caller_id_number": "--caller-id-number", "join": "--join",
}


def argv_of(body: dict[str, Any]) -> list[str]:
    argv = ["invite"]
    for name, flag in FLAGS.items():
        if name in body:
            argv.append(f"{flag}={body[name]}")
    for name, value in (body.get("variables") or {}).items():
        argv.append(f"--var={name}={value}")
    return [*argv, "--", *body["extensions"]]


@st.composite
def rejected_argv(draw: st.DrawFn) -> tuple[list[str], str]:
    """A valid command line with one argument poisoned; (argv, the flag's field)."""
    body = draw(valid_request())
    body.pop("variables", None)
    field = draw(st.sampled_from([*FLAGS, "extensions", "var"]))
    extra: list[str] = []
    if field == "extensions":
        body["extensions"] = [draw(poisoned_text("extension", "1000"))]
    elif field in ("timeout", "ring_timeout"):
        body[field] = draw(st.sampled_from(
            ["30\n", " 30", "3_0", "-1", "0", "3601", "1.5", "abc", "\u0663", "${x}", "9" * 40]
        ))
        if field == "ring_timeout":
            body.pop("timeout", None)
    elif field == "var":
        item = draw(st.one_of(
            poisoned_text("variable", "foo=abc").filter(lambda s: "=" in s[:4] or "=" not in s),
            st.sampled_from(["noequals", "api_on_answer=x", "foo=a b", "foo=${x}", "=x"]),
        ))
        extra.append(f"--var={item}")
    elif field in ("key", "decline_key"):
        body[field] = draw(st.one_of(poisoned_text(field, VALID[field][0]),
                                     st.sampled_from(["", "11", "E", "1\n"])))
        if field == "decline_key":
            body["key"] = "1"
    else:
        base = body.get(field) or VALID[field][0]
        body[field] = draw(poisoned_text(field, base))
    argv = argv_of(body)
    return [*argv[: argv.index("--")], *extra, *argv[argv.index("--"):]], field


class Listeners:
    """A Unix socket and a TCP port on 127.0.0.1 that only record whether anyone connected."""

    def __init__(self, workdir: Path) -> None:
        self.unix_path = str(workdir / "nobody.sock")
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind(self.unix_path)
        self.unix.listen(8)
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(8)
        self.port = self.tcp.getsockname()[1]
        for sock in (self.unix, self.tcp):
            sock.setblocking(False)

    def anyone(self) -> bool:
        for sock in (self.unix, self.tcp):
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                continue
            conn.close()
            return True
        return False

    def close(self) -> None:
        self.unix.close()
        self.tcp.close()


@pytest.fixture(scope="module")
def listeners(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Listeners, Path]]:
    workdir = tmp_path_factory.mktemp("cli")
    secret = workdir / "esl-password"
    secret.write_text("Cli-Test-Pw-5e1d\n")
    secret.chmod(0o600)
    config = workdir / "confguard.toml"
    found = Listeners(workdir)
    config.write_text(f'[esl]\nhost = "127.0.0.1"\nport = {found.port}\n'
                      f'password_file = "{secret}"\n')
    yield found, config
    found.close()


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv, out)
        except SystemExit as exit_:  # argparse
            code = int(exit_.code or 0)
    return code, out.getvalue(), err.getvalue()


@BOUNDED
@given(case=rejected_argv(), direct=st.booleans())
def test_rejected_argument_exits_2_with_one_line_and_connects_nowhere(
    listeners: tuple[Listeners, Path], case: tuple[list[str], str], direct: bool
) -> None:
    found, config = listeners
    argv, field = case
    common = [f"--config={config}", f"--socket={found.unix_path}"]
    if direct:
        common.append("--direct")
    at = argv.index("--")
    code, out, err = run_cli([*argv[:at], *common, *argv[at:]])
    assert code == cli.EXIT_BAD_INPUT, (argv, code, err)
    assert out == ""
    lines = err.rstrip("\n").split("\n")
    last = lines[-1]
    if last.startswith("confguard: bad input:"):
        assert len(lines) == 1, err  # our own message: exactly one line
        named = last.removeprefix("confguard: bad input: ").split(":", 1)[0]
        aliases = {"extensions": {"extension"}, "var": {"var", "variables"},
                   "join": {"join", "join.extension", "join.context"}}
        assert named in aliases.get(field, {field}) or named.startswith("variables"), err
    else:  # argparse's own: usage, then one line naming the flag
        assert last.startswith("confguard invite: error: argument "), err
        assert FLAGS.get(field, "--" + field) in last, err
    assert not found.anyone(), "a refused command line connected to the daemon or the switch"


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(body=valid_request())
def test_accepted_argument_reaches_the_switch_as_a_whitelisted_originate(
    busy: Stack, body: dict[str, Any]
) -> None:
    argv = argv_of(body)
    at = argv.index("--")
    code, out, err = run_cli([*argv[:at], f"--socket={busy.socket}", "--no-wait", *argv[at:]])
    assert code == 0, err
    uuids = out.split()
    assert len(uuids) == len(body["extensions"])
    for call_uuid, extension in zip(uuids, body["extensions"], strict=True):
        check_originate(originate_of(busy, call_uuid), extension, body.get("variables", {}),
                        body.get("prompt"))
