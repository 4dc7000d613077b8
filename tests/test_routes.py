"""Dial routes (`[routes.<name>]`, `--via`, API `via`): checked templates, checked targets.

- Templates: hostile ones (each poison of ESL or dial-string syntax put into a good template,
  hypothesis) are refused when the configuration loads, naming the route; good ones load, and
  whatever they dial for any valid target stays inside the literal whitelist.
- Filling: the originate of a route, byte for byte; no route is the originate of always.
- Targets: checked by the route's placeholder rule at the API (400 naming the field) and the CLI
  (exit 2, one line), and nothing reaches the switch (the relay saw only the set-up).
- The journal keeps the route: the adopted spec builds the same originate; status/history say it.
- `confguard check` on the simulator: a sofia gateway route without mod_sofia (the endpoint is
  missing, the gateway "cannot tell"), and with mod_sofia and gateways up / down / unknown.
- Both peers (sim and the real switch): what `module_exists mod_sofia`, `sofia status gateway`,
  `show endpoint` and an originate to an endpoint that is not loaded answer; an invite through a
  `loopback/{ext}/confguard_callee/XML` route that joins, and one through a sofia route that
  fails with CHAN_NOT_IMPLEMENTED, end to end through the CLI and the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peers import EslLink, Peer, SimPeer
from test_hostile_input import Listeners, Stack, post, run_cli

from confguard import cli
from confguard.api import specs_from_request
from confguard.check import run_checks
from confguard.config import ConfigError, InviteConfig, load_config, render_config
from confguard.daemon import Daemon
from confguard.engine import InviteRun, journal_record, spec_from_journal
from confguard.invite import BadInput, Invite, build_originate
from confguard.routes import DEFAULT_ROUTE, PLACEHOLDERS, DialRoute, parse_routes
from confguard.sim import SimConfig, Simulator
from confguard.sim.switch import MODULES

BOUNDED = settings(max_examples=80, deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.too_slow])

GOOD_TEMPLATES = [
    "user/{ext}",
    "user/{ext}@pbx.example.com",
    "sofia/gateway/carrier/{number}",
    "sofia/gateway/carrier/+49{number}",
    "sofia/internal/{ext}@10.0.0.5:5080",
    "sofia/external/sip:{number}@carrier.example.net",
    "loopback/{ext}/confguard_callee/XML",
    "loopback/{ext}/default",
    "verto.rtc/{ext}",
    "error/{ext}",
]
# What must never reach a dial string: ESL line breaks and argument splits, originate quotes and
# {} [] <> variable blocks, the , | :_: ^^ separators, ${...} expansion, ; = URI parameters
# (mod_sofia reads some as channel settings), NUL, non-ASCII, backticks, braces that are no
# placeholder, a second or unknown placeholder.
POISONS = [" ", "\t", "\n", "\r", "\r\n", "'", '"', ",", "{", "}", "[", "]", "<", ">", "|", "^",
           "^^:", "${x}", "$", ";", "=", "\x00", "é", "\u2028", "`", "!", "&", "(", ")", "%",
           "*", "#", "\\", "~", "?", ":_:", "{foo}", "{ext}", "{number}", "{Ext}", "{}",
           "{ ext}", "$${x}"]


def toml_string(value: str) -> str:
    """A TOML basic string for any text (JSON's escapes are TOML's)."""
    return json.dumps(value)


def load_routes_file(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "routes.toml"
    path.write_text(text)
    return load_config(str(path), env={})


# ------------------------------------------------------------------------- templates at load


@pytest.mark.parametrize("template", GOOD_TEMPLATES)
def test_good_template_loads_and_is_shown_with_its_source(tmp_path: Path, template: str) -> None:
    config = load_routes_file(
        tmp_path, f"[routes.r1]\ndial = {toml_string(template)}\nring_timeout = 20\n"
    )
    route = config.routes["r1"]
    assert route.dial == template and route.ring_timeout == 20
    text = render_config(config)
    path = tmp_path / "routes.toml"
    lines = text.splitlines()
    at = lines.index("[routes.r1]")
    assert lines[at + 1].startswith(f"dial = {toml_string(template)}")
    assert lines[at + 1].endswith(f"# file:{path}")
    assert lines[at + 2].startswith("# caller_id_number = (not set)")
    assert lines[at + 3].startswith("ring_timeout = 20")
    assert lines[at + 3].endswith(f"# file:{path}")


@st.composite
def poisoned_template(draw: st.DrawFn) -> str:
    base = draw(st.sampled_from(GOOD_TEMPLATES))
    poison = draw(st.sampled_from(POISONS))
    # Anywhere except inside a placeholder's braces (there the result is an unknown placeholder,
    # refused too, but for a different reason than the poison).
    cuts = [i for i in range(len(base) + 1) if base.rfind("{", 0, i) <= base.rfind("}", 0, i)]
    at = draw(st.sampled_from(cuts))
    how = draw(st.sampled_from(["insert", "repeat", "replace"]))
    if how == "repeat":
        return base[:at] + poison * draw(st.integers(2, 5)) + base[at:]
    if how == "replace" and at < len(base) and base[at] not in "{}":
        return base[:at] + poison + base[at + 1:]
    return base[:at] + poison + base[at:]


@BOUNDED
@given(template=poisoned_template())
def test_hostile_template_is_refused_at_load_naming_the_route(tmp_path_factory: Any,
                                                              template: str) -> None:
    tmp = tmp_path_factory.mktemp("hostile")
    with pytest.raises(ConfigError) as caught:
        load_routes_file(tmp, f"[routes.mobile]\ndial = {toml_string(template)}\n")
    error = caught.value
    assert error.key == "routes.mobile.dial", error
    assert error.problem  # the reason


@pytest.mark.parametrize(("template", "reason"), [
    ("sofia/gateway/carrier/{number} ", "' '"),
    ("sofia/gateway/carrier/{number}\nbgapi status", "'\\n'"),
    ("{ignore_early_media=false}sofia/gateway/x/{number}", "unknown placeholder"),
    ("sofia/gateway/carrier/{number},user/1000", "','"),
    ("sofia/gateway/carrier/{number}|user/1000", "'|'"),
    ("sofia/gateway/a/{number}:_:sofia/gateway/b/1", "':_:'"),
    ("[leg_timeout=1]sofia/gateway/a/{number}", "'['"),
    ("sofia/gateway/${carrier}/{number}", "'${'"),
    ("sofia/gateway/carrier/{nmber}", "unknown placeholder '{nmber}'"),
    ("sofia/gateway/carrier/{number}/{ext}", "exactly one placeholder"),
    ("sofia/gateway/carrier/1000", "exactly one placeholder"),
    ("{number}", "endpoint type"),
    ("/user/{ext}", "endpoint type"),
    ("sofia/gateway/carrier/{number};fs_path=x", "';'"),
    ("user/{ext}'", "\"'\""),
    ("", "1-256 characters"),
    ("user/" + "x" * 256 + "{ext}", "1-256 characters"),
])
def test_refused_template_says_why(tmp_path: Path, template: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_routes_file(tmp_path, f"[routes.mobile]\ndial = {toml_string(template)}\n")
    assert caught.value.key == "routes.mobile.dial"
    assert reason in caught.value.problem, caught.value.problem
    assert str(tmp_path / "routes.toml") in str(caught.value)


@pytest.mark.parametrize(("text", "key", "reason"), [
    ('[routes."Mobile"]\ndial = "user/{ext}"\n', "routes.Mobile", "route name"),
    ('[routes."a b"]\ndial = "user/{ext}"\n', "routes.a b", "route name"),
    ('[routes."x\\ny"]\ndial = "user/{ext}"\n', "routes.x\ny", "route name"),
    ('[routes.user]\ndial = "user/{ext}@x"\n', "routes.user", "built-in"),
    ('[routes.m]\ndail = "user/{ext}"\n', "routes.m.dail", "unknown key"),
    ('[routes.m]\ncaller_id_number = "1"\n', "routes.m.dial", "required"),
    ('[routes.m]\ndial = 5\n', "routes.m.dial", "must be a string"),
    ('[routes.m]\ndial = "user/{ext}"\nring_timeout = "20"\n', "routes.m.ring_timeout", "whole"),
    ('[routes.m]\ndial = "user/{ext}"\nring_timeout = 0\n', "routes.m.ring_timeout", "1 to 3600"),
    ('[routes.m]\ndial = "user/{ext}"\ncaller_id_number = "1,2"\n',
     "routes.m.caller_id_number", "0-9"),
    ('[routes]\nm = "user/{ext}"\n', "routes.m", "table"),
    ('routes = 1\n', "routes", "tables"),
    ('[invite]\nvia = "mobile"\n', "invite.via", "no route 'mobile'"),
    ('[invite]\nvia = "Mobile!"\n', "invite.via", "not allowed"),
])
def test_bad_route_tables_are_refused(tmp_path: Path, text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_routes_file(tmp_path, text)
    assert caught.value.key == key, caught.value
    assert reason in str(caught.value), caught.value


# What a good template may be made of: literal runs of the whitelist around one placeholder.
LITERAL = st.text(alphabet="abcxyzABZ019/_.-@:+", max_size=12).filter(lambda s: ":_:" not in s)


@st.composite
def any_good_template(draw: st.DrawFn) -> str:
    endpoint = draw(st.sampled_from(["sofia", "loopback", "user", "verto.rtc", "x_y1"]))
    placeholder = draw(st.sampled_from(list(PLACEHOLDERS)))
    return f"{endpoint}/{draw(LITERAL)}{{{placeholder}}}{draw(LITERAL)}"


TARGETS = {"ext": st.from_regex(PLACEHOLDERS["ext"].rule, fullmatch=True),
           "number": st.from_regex(PLACEHOLDERS["number"].rule, fullmatch=True)}
DIAL_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/_.-@:+")


@BOUNDED
@given(data=st.data())
def test_what_a_good_template_dials_stays_in_the_whitelist(data: st.DataObject) -> None:
    template = data.draw(any_good_template())
    route = DialRoute("r", template)  # made of the whitelist only: never refused
    target = data.draw(TARGETS[route.placeholder])
    try:
        dial = route.fill(target)
    except BadInput as refused:
        assert "':_:'" in refused.reason  # an {ext} of '_' between two literal ':'
        return
    assert set(dial) <= DIAL_CHARS, dial
    assert ":_:" not in dial and target in dial


# ------------------------------------------------------------------------- filling, journal

MOBILE = DialRoute("mobile", "sofia/gateway/carrier/{number}", caller_id_number="+4930123",
                   ring_timeout=25)
LAB = DialRoute("lab", "loopback/{ext}/confguard_callee/XML")
ROUTES = {"mobile": MOBILE, "lab": LAB}
WAITING_APP = (
    "'m:~:sched_hangup:+30 ALLOTTED_TIMEOUT~play_and_get_digits:1 1 31 5000 # "
    "tone_stream://%(250,250,440);loops=2 silence_stream://250 confguard_key ^[1]$ 5000 park "
    "inline~sched_cancel~conference:test1' inline"
)


def originate_for(body: dict[str, Any], defaults: InviteConfig | None = None) -> str:
    spec = specs_from_request(body, defaults or InviteConfig(), ROUTES)[0]
    return build_originate(spec, call_uuid="c0ffee-1", invite_id="inv1", wall_deadline=1700000030)


def test_route_originate_byte_exact() -> None:
    line = originate_for({"extensions": ["+15551234"], "room": "test1", "via": "mobile"})
    assert line == (
        "originate {origination_uuid=c0ffee-1,originate_timeout=25,ignore_early_media=true,"
        "confguard_invite=inv1,confguard_room=test1,confguard_deadline=1700000030,"
        "origination_caller_id_number=+4930123,"
        "api_on_originate='sched_hangup +30 c0ffee-1 ALLOTTED_TIMEOUT'}"
        "sofia/gateway/carrier/+15551234 " + WAITING_APP
    )


def test_request_values_win_over_the_route_defaults() -> None:
    line = originate_for({"extensions": ["15551234"], "room": "test1", "via": "mobile",
                          "ring_timeout": 7, "caller_id_number": "1000"})
    assert "originate_timeout=7," in line and "origination_caller_id_number=1000," in line
    assert "}sofia/gateway/carrier/15551234 '" in line


def test_no_route_is_the_originate_of_always() -> None:
    expected = (
        "originate {origination_uuid=c0ffee-1,originate_timeout=30,ignore_early_media=true,"
        "confguard_invite=inv1,confguard_room=test1,confguard_deadline=1700000030,"
        "api_on_originate='sched_hangup +30 c0ffee-1 ALLOTTED_TIMEOUT'}user/1000 " + WAITING_APP
    )
    assert originate_for({"extensions": ["1000"], "room": "test1"}) == expected
    assert originate_for({"extensions": ["1000"], "room": "test1", "via": "user"}) == expected
    assert DEFAULT_ROUTE.fill("1000") == "user/1000"


def test_invite_via_default_names_the_route() -> None:
    defaults = InviteConfig(via="lab")
    line = originate_for({"extensions": ["1000"], "room": "test1"}, defaults)
    assert "}loopback/1000/confguard_callee/XML '" in line
    line = originate_for({"extensions": ["1000"], "room": "test1", "via": "user"}, defaults)
    assert "}user/1000 '" in line


@pytest.mark.parametrize(("via", "target", "field"), [
    ("mobile", "1000x", "extension"),
    ("mobile", "+", "extension"),
    ("mobile", "++15551234", "extension"),
    ("mobile", "1" * 21, "extension"),
    ("mobile", "+1555 1234", "extension"),
    ("lab", "a\nb", "extension"),
    ("nope", "1000", "via"),
    ("mobile\n", "1000", "via"),
    (5, "1000", "via"),
])
def test_target_checked_by_the_route_rule(via: Any, target: str, field: str) -> None:
    with pytest.raises(BadInput) as caught:
        specs_from_request({"extensions": [target], "room": "test1", "via": via},
                           InviteConfig(), ROUTES)
    assert caught.value.field == field


def test_journal_keeps_the_route_and_adoption_rebuilds_the_same_originate() -> None:
    spec = specs_from_request({"extensions": ["+15551234"], "room": "test1", "via": "mobile"},
                              InviteConfig(), ROUTES)[0]
    machine = Invite(spec, call_uuid="c0ffee-1", job_uuid="j-1", invite_id="inv1", now=0.0,
                     wall=1700000000)
    run = InviteRun(machine=machine, spec=spec, invite_id="inv1", started=0.0,
                    started_wall=1700000000)
    record = journal_record(run)
    assert record.detail["spec"]["route"] == MOBILE.as_dict()
    stored = json.loads(json.dumps(record.detail))  # what the journal's TEXT column gives back
    again = spec_from_journal(type("Row", (), {"detail": stored, "ext": record.ext,
                                               "room": record.room,
                                               "timeout": record.timeout})())
    assert again.route == MOBILE
    build = dict(call_uuid="c0ffee-1", invite_id="inv1", wall_deadline=1700000030)
    assert build_originate(again, **build) == build_originate(spec, **build)
    assert run.summary(0.0)["via"] == "mobile"
    # A template tampered with in the journal is refused again, not dialled.
    stored["spec"]["route"]["dial"] = "sofia/gateway/carrier/{number},user/1"
    with pytest.raises(BadInput):
        spec_from_journal(type("Row", (), {"detail": stored, "ext": "x", "room": "r",
                                           "timeout": 30})())


# --------------------------------------------------------------- targets at the API and the CLI


class RouteStack(Stack):
    """test_hostile_input's stack (sim <- relay <- session <- engine <- API), with ROUTES."""

    async def _start(self) -> None:
        await super()._start()
        self.control.routes = dict(ROUTES)


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouteStack]:
    stack = RouteStack(tmp_path_factory.mktemp("routes-quiet"))
    stack.start()
    yield stack
    stack.stop()


def poisoned(base: str) -> st.SearchStrategy[str]:
    poisons = [p for p in POISONS if p not in ("*", "#")] + ["x", "-", "1" * 30, "+"]

    @st.composite
    def build(draw: st.DrawFn) -> str:
        at = draw(st.integers(0, len(base)))
        return base[:at] + draw(st.sampled_from(poisons)) + base[at:]

    return build().filter(lambda s: not PLACEHOLDERS["number"].rule.fullmatch(s))


@BOUNDED
@given(target=poisoned("+15551234"))
def test_api_refuses_a_target_the_route_rule_does_not_take(quiet: RouteStack, target: str
                                                           ) -> None:
    body = {"extensions": [target], "room": "test1", "via": "mobile"}
    status, reply = post(quiet.socket, json.dumps(body).encode())
    assert status == 400, reply
    assert reply["error"]["kind"] == "bad_input"
    assert reply["error"]["field"] in ("extension", "extensions"), reply
    assert "\n" not in reply["error"]["message"]
    assert quiet.commands() == quiet.setup, "a refused request reached the switch"


@pytest.mark.parametrize("via", ["nope", "MOBILE", "mobile ", "mob\nile", "", 1, ["mobile"]])
def test_api_refuses_an_unknown_route(quiet: RouteStack, via: Any) -> None:
    body = {"extensions": ["1000"], "room": "test1", "via": via}
    status, reply = post(quiet.socket, json.dumps(body).encode())
    assert status == 400 and reply["error"]["field"] == "via", reply
    assert quiet.commands() == quiet.setup


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Listeners, Path]]:
    workdir = tmp_path_factory.mktemp("routes-cli")
    secret = workdir / "esl-password"
    secret.write_text("Cli-Test-Pw-5e1d\n")
    secret.chmod(0o600)
    found = Listeners(workdir)
    config = workdir / "confguard.toml"
    config.write_text(
        f'[esl]\nhost = "127.0.0.1"\nport = {found.port}\npassword_file = "{secret}"\n'
        '[routes.mobile]\ndial = "sofia/gateway/carrier/{number}"\n'
        '[routes.lab]\ndial = "loopback/{ext}/confguard_callee/XML"\n'
    )
    yield found, config
    found.close()


@BOUNDED
@given(target=st.one_of(poisoned("+15551234"), st.sampled_from(["1000x", "alice", "+"])),
       direct=st.booleans())
def test_cli_refuses_a_target_with_exit_2_and_connects_nowhere(
    cli_env: tuple[Listeners, Path], target: str, direct: bool
) -> None:
    found, config = cli_env
    argv = ["invite", f"--config={config}", f"--socket={found.unix_path}", "--room=test1",
            "--via=mobile", *(["--direct"] if direct else []), "--", target]
    code, out, err = run_cli(argv)
    assert code == cli.EXIT_BAD_INPUT, (code, err)
    assert out == ""
    lines = err.rstrip("\n").split("\n")
    if lines[-1].startswith("confguard: bad input:"):
        assert len(lines) == 1, err
        assert lines[0].startswith("confguard: bad input: extension: route 'mobile'"), err
    else:  # argparse: a target that looks like a flag
        assert lines[-1].startswith("confguard invite: error:"), err
    assert not found.anyone(), "a refused command line connected to the daemon or the switch"


def test_cli_refuses_an_unknown_route(cli_env: tuple[Listeners, Path]) -> None:
    found, config = cli_env
    code, _, err = run_cli(["invite", f"--config={config}", f"--socket={found.unix_path}",
                            "--room=test1", "--via=carrier", "1000"])
    assert code == cli.EXIT_BAD_INPUT
    assert err.startswith("confguard: bad input: via: no such route (configured: user, lab, "
                          "mobile)"), err
    assert not found.anyone()


# ------------------------------------------------------------------------- check, simulator


def check_config(tmp_path: Path, port: int, password_file: Path) -> Path:
    path = tmp_path / "check.toml"
    path.write_text(
        f'[esl]\nhost = "127.0.0.1"\nport = {port}\npassword_file = "{password_file}"\n'
        '[routes.mobile]\ndial = "sofia/gateway/carrier/{number}"\n'
        '[routes.backup]\ndial = "sofia/gateway/backup/{number}"\n'
        '[routes.nowhere]\ndial = "sofia/gateway/nowhere/{number}"\n'
        '[routes.lab]\ndial = "loopback/{ext}/confguard_callee/XML"\n'
        '[routes.desk]\ndial = "user/{ext}@confguard.test"\n'
        '[routes.web]\ndial = "verto.rtc/{ext}"\n'
        '[routes.odd]\ndial = "odd_tech/{ext}"\n'
    )
    return path


@pytest.fixture
async def sim_with(tmp_path: Path) -> AsyncIterator[Any]:
    started: list[Simulator] = []

    async def start(**config: Any) -> tuple[Simulator, Path]:
        secret = tmp_path / "sim-password"
        secret.write_text("Route-Check-Pw-1\n")
        sim = Simulator(SimConfig(host="127.0.0.1", port=0, password="Route-Check-Pw-1",
                                  **config))
        await sim.start()
        started.append(sim)
        return sim, check_config(tmp_path, sim.port, secret)

    yield start
    for sim in started:
        await sim.stop()


def check_lines(out: str) -> dict[str, str]:
    """check name -> the whole line, from `format_results` output."""
    lines: dict[str, str] = {}
    for line in out.splitlines():
        if line[:2] in ("✓ ", "✗ ", "? "):
            lines[line[2:].split(": ", 1)[0]] = line
    return lines


async def test_check_without_mod_sofia_cannot_tell_the_gateway(sim_with: Any) -> None:
    _, config = await sim_with()
    code, out, _ = await asyncio.to_thread(run_cli, ["check", f"--config={config}"])
    lines = check_lines(out)
    mobile = lines["route mobile (sofia/gateway/carrier/{number})"]
    assert mobile.startswith("✗ ") and "endpoint 'sofia' is not loaded" in mobile, out
    assert "CHAN_NOT_IMPLEMENTED" in mobile
    gateway = lines["route mobile gateway carrier"]
    assert gateway.startswith("? ") and "cannot tell: mod_sofia is not loaded" in gateway, out
    assert lines["route lab (loopback/{ext}/confguard_callee/XML)"].startswith(
        "✓ route lab (loopback/{ext}/confguard_callee/XML): endpoint loopback loaded: "
        "mod_loopback (module_exists: true)")
    assert lines["route desk (user/{ext}@confguard.test)"].startswith("✓ "), out
    assert "up to the directory" in lines["route desk (user/{ext}@confguard.test)"]
    web = lines["route web (verto.rtc/{ext})"]
    assert web.startswith("✗ ") and "mod_verto (module_exists: false)" in web, out
    # A type whose module confguard does not know: the switch's `show endpoint` list decides.
    odd = lines["route odd (odd_tech/{ext})"]
    assert odd.startswith("✗ ") and "not in `show endpoint`" in odd, out
    assert code == 1  # a route that cannot work is a failure of the setup


async def test_check_with_mod_sofia_asks_each_gateway(sim_with: Any) -> None:
    _, config = await sim_with(modules=(*MODULES, "mod_sofia"),
                               gateways={"carrier": True, "backup": False})
    code, out, _ = await asyncio.to_thread(run_cli, ["check", f"--config={config}"])
    lines = check_lines(out)
    assert lines["route mobile (sofia/gateway/carrier/{number})"].startswith(
        "✓ route mobile (sofia/gateway/carrier/{number}): endpoint sofia loaded: mod_sofia "
        "(module_exists: true)")
    assert lines["route mobile gateway carrier"] == (
        "✓ route mobile gateway carrier: up (Status UP, State REGED)")
    backup = lines["route backup gateway backup"]
    assert backup.startswith("✗ route backup gateway backup: down (Status DOWN, State "
                             "FAIL_WAIT)"), out
    assert lines["route nowhere gateway nowhere"].startswith(
        "✗ route nowhere gateway nowhere: unknown gateway"), out
    assert code == 1


async def test_check_sends_only_checked_gateway_names(sim_with: Any) -> None:
    sim, _ = await sim_with(modules=(*MODULES, "mod_sofia"), gateways={"carrier": True})
    sent: list[str] = []

    async def api(command: str) -> str:
        sent.append(command)
        return await sim.switch.api(command)

    routes = parse_routes({"mobile": {"dial": "sofia/gateway/carrier/{number}"}})
    await run_checks(api, target="x", join_mode="inline", join_target="", prompt=None,
                     routes=routes)
    assert sent[-2:] == ["module_exists mod_sofia", "sofia status gateway carrier"]
    assert "show endpoint as json" not in sent  # sofia's module is known: module_exists
    sent.clear()
    routes = parse_routes({"odd": {"dial": "null/{ext}"}, "x": {"dial": "x_tech/{ext}"}})
    results = await run_checks(api, target="x", join_mode="inline", join_target="",
                               prompt=None, routes=routes)
    assert sent[-2:] == ["show endpoint as json", "module_exists mod_loopback"]
    assert [r.ok for r in results[-2:]] == [True, False]


# ------------------------------------------------------------ both peers: what the switch says


async def test_the_switch_answers_about_endpoints_and_sofia(peer: Peer) -> None:
    """Facts of the lab build (no mod_sofia), the same on the simulator and the real switch."""
    assert (await peer.api("module_exists mod_sofia")).strip() == "false"
    assert (await peer.api("module_exists mod_loopback")).strip() == "true"
    assert await peer.api("sofia status gateway carrier") == "-ERR sofia Command not found!\n"
    # `show endpoint` reads the core database, which the SQL thread fills from MODULE_LOAD
    # events: just after a start it can lack the last modules (seen: 4 rows, no mod_loopback's,
    # while `module_exists mod_loopback` already said true).
    deadline = time.monotonic() + 5
    while True:
        endpoints = json.loads(await peer.api("show endpoint as json"))
        if endpoints.get("row_count") == 6 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert endpoints == {"row_count": 6, "rows": [
        {"type": "endpoint", "name": name, "ikey": module}
        for name, module in [("error", "mod_dptools"), ("group", "mod_dptools"),
                             ("loopback", "mod_loopback"), ("null", "mod_loopback"),
                             ("pickup", "mod_dptools"), ("user", "mod_dptools")]
    ]}
    text = await peer.api("show endpoint")
    assert text.startswith("type,name,ikey\nendpoint,error,mod_dptools\n")
    assert text.endswith("\n\n6 total.\n")
    # An endpoint whose module is not loaded: refused at once, no channel, no timer armed.
    call_uuid = "7e5a1c2e-0000-4000-8000-00000000c0de"
    answer = await peer.api(
        f"originate {{origination_uuid={call_uuid},originate_timeout=5,"
        f"api_on_originate='sched_hangup +5 {call_uuid} ALLOTTED_TIMEOUT'}}"
        "sofia/gateway/carrier/+15551234 &park()")
    assert answer == "-ERR CHAN_NOT_IMPLEMENTED\n"
    assert not await peer.exists(call_uuid)
    assert await peer.tasks_of(call_uuid) == []
    assert await peer.channel_count() == 0


async def test_check_of_the_routes_on_both_peers(peer: Peer, tmp_path: Path) -> None:
    """On the lab build: the loopback route ✓, the sofia route ✗ (not loaded) with its gateway
    "cannot tell" -- the same lines from the simulator and the real switch."""
    config = check_config(tmp_path, peer.port, peer.password_file)
    code, out, _ = await asyncio.to_thread(run_cli, ["check", f"--config={config}"])
    lines = check_lines(out)
    assert lines["route lab (loopback/{ext}/confguard_callee/XML)"].startswith("✓ "), out
    assert lines["route mobile (sofia/gateway/carrier/{number})"].startswith("✗ "), out
    assert lines["route mobile gateway carrier"] == (
        "? route mobile gateway carrier: cannot tell: mod_sofia is not loaded"), out
    assert lines["route odd (odd_tech/{ext})"].startswith("✗ "), out
    assert code == 1


# ---------------------------------------------------------------- end to end, on both peers

E2E_ROUTES = (
    '[routes.lab]\ndial = "loopback/{ext}/confguard_callee/XML"\n'
    '[routes.void]\ndial = "loopback/{ext}/nowhere"\n'
    '[routes.mobile]\ndial = "sofia/gateway/carrier/{number}"\nring_timeout = 8\n'
    '[routes.backup]\ndial = "sofia/gateway/backup/{number}"\n'
    '[routes.nowhere]\ndial = "sofia/gateway/nowhere/{number}"\n'
)


@contextlib.asynccontextmanager
async def running_daemon(peer: Peer, tmp_path: Path
                         ) -> AsyncIterator[tuple[Daemon, EslLink, Path]]:
    """A daemon with E2E_ROUTES on `peer`, through a recording relay."""
    link = EslLink(peer)
    await link.start()
    path = tmp_path / "confguard.toml"
    path.write_text(E2E_ROUTES)
    overrides: dict[str, object] = {
        "esl.host": "127.0.0.1", "esl.port": link.port,
        "esl.password_file": str(peer.password_file),
        "api.socket": str(tmp_path / "confguard.sock"),
        "journal.path": str(tmp_path / "journal.sqlite3"),
        "invite.prompt": "tone_stream://%(200,100,440)",
    }
    config = load_config(str(path), env={}, overrides=overrides)
    running = Daemon(config, config_path=str(path), overrides=overrides, handle_signals=False)
    task = asyncio.create_task(running.run())
    try:
        await asyncio.wait_for(running.linked.wait(), 15)
        yield running, link, path
    finally:
        running.stopping.set()
        await asyncio.wait_for(task, 10)
        await link.stop()


@pytest.fixture
async def route_daemon(peer: Peer, tmp_path: Path) -> AsyncIterator[tuple[Daemon, EslLink, Path]]:
    async with running_daemon(peer, tmp_path) as running:
        yield running


class SofiaSimPeer(SimPeer):
    """The simulator told it has mod_sofia, gateway `carrier` up and `backup` down."""

    def _config(self) -> SimConfig:
        config = super()._config()
        config.modules = (*MODULES, "mod_sofia")
        config.gateways = {"carrier": True, "backup": False}
        return config


@pytest.fixture
async def sofia_daemon(tmp_path: Path) -> AsyncIterator[tuple[Daemon, EslLink, Path, Peer]]:
    sim = SofiaSimPeer(tmp_path)
    await sim.start()
    try:
        async with running_daemon(sim, tmp_path) as (daemon, link, path):
            yield daemon, link, path, sim
    finally:
        await sim.stop()


async def originates_of(link: EslLink, call_uuid: str) -> list[str]:
    """The originates of the call that crossed the relay (--no-wait returns before it may)."""
    deadline = time.monotonic() + 5
    while True:
        found = [c for c in link.commands() if f"origination_uuid={call_uuid}," in c]
        if found or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


async def cli_json(*argv: str) -> tuple[int, list[dict[str, Any]]]:
    code, out, _ = await asyncio.to_thread(run_cli, [*argv, "--json"])
    return code, [json.loads(line) for line in out.splitlines() if line.startswith("{")]


async def test_invite_via_a_route_joins_and_is_shown(peer: Peer, route_daemon: Any) -> None:
    daemon, link, path = route_daemon
    sock = str(daemon.config.api.socket)
    journal = str(daemon.config.journal.path)
    code, out, _ = await asyncio.to_thread(run_cli, [
        "invite", "1000", "--room", "test1", "--timeout", str(peer.secs(12)), "--via", "lab",
        "--var", f"sim_dtmf=1@{peer.secs(1.5)}", "--no-wait", "--config", str(path),
        "--socket", sock])
    assert code == 0, out
    call_uuid = out.strip()
    _, status_out, _ = await asyncio.to_thread(run_cli, ["status", "--config", str(path),
                                                         "--socket", sock])
    row = next(line for line in status_out.splitlines() if line.startswith(call_uuid))
    assert row.split()[-2] == "lab", status_out  # ... VIA FLAGS
    originates = await originates_of(link, call_uuid)
    assert len(originates) == 1
    assert "}loopback/1000/confguard_callee/XML 'm:~:" in originates[0]
    run = daemon.engine.get(call_uuid)
    final = await asyncio.wait_for(asyncio.shield(run.final_update()), 30)
    assert final["outcome"] == "joined", final
    assert call_uuid in await peer.members("test1")
    _, history_out, _ = await asyncio.to_thread(run_cli, [
        "history", "--config", str(path), "--journal", journal, "--json"])
    item = json.loads(history_out.splitlines()[0])
    assert item["call_uuid"] == call_uuid and item["via"] == "lab", item
    assert item["detail"]["spec"]["route"]["dial"] == "loopback/{ext}/confguard_callee/XML"


async def test_invite_via_a_route_the_switch_cannot_dial_fails(peer: Peer, route_daemon: Any
                                                               ) -> None:
    """The lab switch has no mod_sofia: the originate is refused at once (CHAN_NOT_IMPLEMENTED,
    no channel); the invite ends `failed` with that cause, exit code of `failed`."""
    daemon, link, path = route_daemon
    code, updates = await cli_json(
        "invite", "+15551234", "--room", "test1", "--timeout", str(peer.secs(10)), "--via",
        "mobile", "--config", str(path), "--socket", str(daemon.config.api.socket))
    assert updates[-1]["outcome"] == "failed", updates
    assert updates[-1]["cause"] == "CHAN_NOT_IMPLEMENTED", updates[-1]
    assert code == cli.OUTCOME_EXIT["failed"]
    call_uuid = updates[0]["uuid"]
    originates = [c for c in link.commands() if f"origination_uuid={call_uuid}," in c]
    assert len(originates) == 1 and ",originate_timeout=8," in originates[0]
    assert "}sofia/gateway/carrier/+15551234 'm:~:" in originates[0]
    assert not await peer.exists(call_uuid)
    assert await peer.no_task_left(call_uuid)


async def test_bad_target_through_the_daemon_sends_nothing(peer: Peer, route_daemon: Any
                                                          ) -> None:
    daemon, link, path = route_daemon
    before = list(link.commands())
    code, out, err = await asyncio.to_thread(run_cli, [
        "invite", "1000;x", "--room", "test1", "--via", "mobile", "--config", str(path),
        "--socket", str(daemon.config.api.socket)])
    assert code == cli.EXIT_BAD_INPUT and out == ""
    assert "extension: route 'mobile'" in err
    # The API itself refuses it too (a client that skips the CLI's own check).
    status, reply = await asyncio.to_thread(
        post, str(daemon.config.api.socket),
        json.dumps({"extensions": ["1000x"], "room": "test1", "via": "mobile"}).encode())
    assert status == 400 and reply["error"]["field"] == "extension"
    await asyncio.sleep(0.2)
    assert link.commands() == before
    assert await peer.channel_count() == 0



async def test_invite_into_a_context_without_the_number_is_unreachable(peer: Peer,
                                                                       route_daemon: Any) -> None:
    """loopback/<n>/nowhere: the switch makes the channel, finds no extension, hangs it up
    NO_ROUTE_DESTINATION (seen on the real switch; the simulator does the same)."""
    daemon, _, path = route_daemon
    code, updates = await cli_json(
        "invite", "1000", "--room", "test1", "--timeout", str(peer.secs(10)), "--via", "void",
        "--config", str(path), "--socket", str(daemon.config.api.socket))
    assert updates[-1]["outcome"] == "unreachable", updates
    assert updates[-1]["cause"] == "NO_ROUTE_DESTINATION"
    assert code == cli.OUTCOME_EXIT["unreachable"]
    assert await peer.no_task_left(updates[0]["uuid"])
    assert not await peer.exists(updates[0]["uuid"])


@pytest.mark.parametrize(("via", "outcome", "cause"), [
    ("mobile", "joined", None),
    ("backup", "failed", "GATEWAY_DOWN"),
    ("nowhere", "failed", "INVALID_GATEWAY"),
])
async def test_sofia_routes_on_a_simulator_with_mod_sofia(
    sofia_daemon: Any, via: str, outcome: str, cause: str | None
) -> None:
    """With mod_sofia (simulator only: the lab switch has none), a gateway that is up places
    the call; one that is down or unknown refuses it with mod_sofia's cause, no channel."""
    daemon, link, path, sim = sofia_daemon
    code, updates = await cli_json(
        "invite", "+15551234", "--room", "test1", "--timeout", str(sim.secs(10)), "--via", via,
        "--var", f"sim_dtmf=1@{sim.secs(1.5)}", "--config", str(path),
        "--socket", str(daemon.config.api.socket))
    assert updates[-1]["outcome"] == outcome, updates
    assert updates[-1]["cause"] == cause
    assert code == cli.OUTCOME_EXIT.get(outcome, 0)
    call_uuid = updates[0]["uuid"]
    assert (call_uuid in await sim.members("test1")) == (outcome == "joined")
    assert any(f"}}sofia/gateway/{'carrier' if via == 'mobile' else via}/+15551234 'm:~:" in c
               for c in link.commands() if call_uuid in c)


async def test_sighup_reloads_the_routes_and_keeps_them_on_a_bad_file(
    sofia_daemon: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon, link, path, _ = sofia_daemon
    for name in [n for n in os.environ if n.startswith("CONFGUARD_")]:
        monkeypatch.delenv(name)
    sock = str(daemon.config.api.socket)
    path.write_text('[routes.desk]\ndial = "user/{ext}"\n')
    daemon.reload()
    assert sorted(daemon.api.routes) == ["desk"]
    before = list(link.commands())
    body = {"extensions": ["+1555"], "room": "test1", "via": "mobile"}
    status, reply = await asyncio.to_thread(post, sock, json.dumps(body).encode())
    assert status == 400 and reply["error"]["field"] == "via", reply
    assert "configured: user, desk" in reply["error"]["message"]
    path.write_text('[routes.desk]\ndial = "user/{ext},user/1001"\n')  # refused: kept as it was
    daemon.reload()
    assert daemon.api.routes["desk"].dial == "user/{ext}"
    assert link.commands() == before
