"""Invites from inside FreeSWITCH (confguard/fs_events.py): `CUSTOM confguard::invite` in,
`CUSTOM confguard::outcome` out.

- unit: an event's headers become the same invite specs the API makes; a room not allowed, a
  missing or hostile value (line breaks, braces, ESL syntax) is refused naming the field; the
  outcome event's values never become ESL syntax; `[events]` in the configuration;
- the simulator against the real switch's recording of `sendevent` and the `event` app
  (tests/transcripts/20-custom-events.json, tests/custom_events.py), and live on the real switch;
- end to end on both peers (`peer`: the simulator, and the real FreeSWITCH as `realfs`): the
  daemon with `[events]` on, a `sendevent` from a second connection and the dialplan's `event`
  app start an invite, and a watcher connection sees the outcome event; a refused event starts
  nothing; with `[events]` off (the default) the event is ignored; a reconnect keeps it working.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import peers
import pytest
import structlog.testing
from custom_events import RECORDING, RawEsl, comparable, next_custom, scenario, watcher
from hypothesis import given
from hypothesis import strategies as st
from peers import EslLink, Peer

from confguard.api import specs_from_request
from confguard.config import ConfigError, InviteConfig, load_config, render_config
from confguard.daemon import Daemon
from confguard.esl import EslSession, EslSettings, check_sendevent_header
from confguard.fs_events import (
    INVITE_SUBCLASS,
    OUTCOME_SUBCLASS,
    EventRefused,
    outcome_headers,
    request_id_of,
    specs_from_event,
)
from confguard.sim import SimConfig, Simulator

ROOMS = ("test1",)
DEFAULTS = InviteConfig()

# --- unit: event -> specs -----------------------------------------------------------------------


def test_an_event_makes_the_specs_the_api_makes_for_the_same_request() -> None:
    headers = {"Event-Subclass": INVITE_SUBCLASS, "ext": "1001", "room": "test1",
               "timeout": "20", "ring_timeout": "10", "key": "5", "decline_key": "9",
               "caller_id_name": "Front Desk", "caller_id_number": "7000",
               "Unique-ID": "4b7d", "variable_uuid": "4b7d"}  # the event app's channel data
    body = {"extensions": ["1001"], "room": "test1", "timeout": 20, "ring_timeout": 10,
            "key": "5", "decline_key": "9", "caller_id_name": "Front Desk",
            "caller_id_number": "7000"}
    assert specs_from_event(headers, ROOMS, DEFAULTS) == specs_from_request(body, DEFAULTS)


def test_an_event_sets_the_time_limit_and_member_flags_as_the_api_does() -> None:
    headers = {"ext": "1001", "room": "test1", "max_duration": "600", "muted": "true",
               "deaf": "false", "moderator": "true", "endconf": "false"}
    body = {"extensions": ["1001"], "room": "test1", "max_duration": 600, "muted": True,
            "deaf": False, "moderator": True, "endconf": False}
    [spec] = specs_from_event(headers, ROOMS, DEFAULTS)
    assert [spec] == specs_from_request(body, DEFAULTS)
    assert (spec.max_duration, spec.member_flags) == (600, ("muted", "moderator"))


def test_an_event_takes_the_invite_via_default_from_the_configured_routes() -> None:
    """`[invite] via` names a configured route: an event's invite dials through it (it used
    to be refused, `via: no such route`, for want of the routes)."""
    from dataclasses import replace

    from confguard.routes import DialRoute

    routes = {"lab": DialRoute("lab", "loopback/{ext}/confguard_callee/XML")}
    [spec] = specs_from_event({"ext": "1001", "room": "test1"}, ROOMS,
                              replace(DEFAULTS, via="lab"), routes)
    assert spec.route == routes["lab"]


def test_extensions_travel_space_separated() -> None:
    specs = specs_from_event({"extensions": "1001 1002  1003", "room": "test1"}, ROOMS, DEFAULTS)
    assert [s.extension for s in specs] == ["1001", "1002", "1003"]
    assert all(s.room == "test1" and s.timeout == DEFAULTS.timeout for s in specs)


@pytest.mark.parametrize(
    ("headers", "field", "cause"),
    [
        ({"ext": "1001", "room": "test2"}, "room", "ROOM_NOT_ALLOWED"),
        ({"ext": "1001", "room": "test1@other"}, "room", "ROOM_NOT_ALLOWED"),
        ({"ext": "1001"}, "room", "BAD_INPUT"),
        ({"room": "test1"}, "ext", "BAD_INPUT"),
        ({"ext": "1001", "extensions": "1002", "room": "test1"}, "ext", "BAD_INPUT"),
        ({"ext": "1001\napi originate user/1002 &park()", "room": "test1"}, "ext",
         "BAD_INPUT"),
        ({"ext": "{origination_uuid=x}1001", "room": "test1"}, "ext", "BAD_INPUT"),
        ({"extensions": "1001 10}02", "room": "test1"}, "extensions", "BAD_INPUT"),
        ({"ext": "1001", "room": "test1", "timeout": "30\nbgapi status"}, "timeout",
         "BAD_INPUT"),
        ({"ext": "1001", "room": "test1", "timeout": "-5"}, "timeout", "BAD_INPUT"),
        ({"ext": "1001", "room": "test1", "timeout": "99999"}, "timeout", "BAD_INPUT"),
        ({"ext": "1001", "room": "test1", "key": "1}"}, "key", "BAD_INPUT"),
        ({"ext": "1001", "room": "test1", "prompt": "/tmp/a'b.wav"}, "prompt", "BAD_INPUT"),
        ({"ext": "1001", "room": "test1", "caller_id_name": "x}{api_on_answer=y"},
         "caller_id_name", "BAD_INPUT"),
        ({"ext": "1001", "room": "test1", "join": "9999 elsewhere"}, "join", "BAD_INPUT"),
        ({"ext": "1001", "room": "test1", "join": "inline"}, "join", "BAD_INPUT"),
        ({"ext": "1001", "room": "test1", "variables": "a=b"}, "variables", "BAD_INPUT"),
        ({"extensions": "1001 1001", "room": "test1"}, "extensions", "BAD_INPUT"),
        # a route may dial out of the switch, a URL would make the daemon POST anywhere
        ({"ext": "1001", "room": "test1", "via": "mobile"}, "via", "BAD_INPUT"),
        ({"ext": "1001", "room": "test1", "notify": "http://127.0.0.1/x"}, "notify",
         "BAD_INPUT"),
        ({"ext": "1001", "room": "test1", "max_duration": "0"}, "max_duration", "BAD_INPUT"),
        ({"ext": "1001", "room": "test1", "max_duration": "3 "}, "max_duration", "BAD_INPUT"),
        ({"ext": "1001", "room": "test1", "muted": "yes"}, "muted", "BAD_INPUT"),
        ({"ext": "1001", "room": "test1", "endconf": "1"}, "endconf", "BAD_INPUT"),
    ],
)
def test_refused_events_name_the_field(headers: dict[str, str], field: str, cause: str) -> None:
    with pytest.raises(EventRefused) as refused:
        specs_from_event(headers, ROOMS, DEFAULTS)
    assert (refused.value.field, refused.value.cause) == (field, cause)
    # The reason is the rule, never the sender's value.
    assert "\n" not in refused.value.reason and "{" not in refused.value.reason


@pytest.mark.parametrize("value", ["a\nb", "x y", "{x}", "a%0Ab", "", "x" * 65])
def test_a_hostile_request_id_is_refused(value: str) -> None:
    with pytest.raises(EventRefused) as refused:
        request_id_of({"request_id": value})
    assert refused.value.field == "request_id"


def test_a_good_request_id_is_kept() -> None:
    assert request_id_of({"request_id": "moderator-7f3a:12"}) == "moderator-7f3a:12"
    assert request_id_of({}) is None


# --- unit: outcome events -----------------------------------------------------------------------


def test_outcome_headers_carry_every_field_once_in_order() -> None:
    headers = outcome_headers({"invite_id": "a1b2", "uuid": "u-1", "ext": "1001",
                               "room": "test1", "outcome": "joined", "cause": None,
                               "request_id": "r-1", "source": "event"})
    assert headers == [("Event-Subclass", OUTCOME_SUBCLASS), ("invite_id", "a1b2"),
                       ("uuid", "u-1"), ("ext", "1001"), ("room", "test1"),
                       ("outcome", "joined"), ("request_id", "r-1"), ("source", "event")]


def test_hostile_values_never_become_esl_syntax_in_an_outcome() -> None:
    headers = outcome_headers({
        "ext": "1001\n\nbgapi originate user/1002 &park()",
        "room": "test1\r\nContent-Length: 5",
        "reason": "x}{api_on_answer=y%0A",
        "cause": "\x00\x7f",
    })
    for name, value in headers:
        check_sendevent_header(name, value)
        assert "%" not in value and "{" not in value and "}" not in value
    values = dict(headers)
    assert values["ext"] == "1001__bgapi originate user/1002 _park()"
    assert values["room"] == "test1__Content-Length: 5"
    assert values["cause"] == "__"  # each unsafe character stands in as `_`
    assert "cause" not in dict(outcome_headers({"cause": "  "}))  # nothing left: no header


@given(st.dictionaries(st.sampled_from(["ext", "room", "cause", "reason", "request_id"]),
                       st.text(max_size=300)))
def test_any_value_gives_one_safe_header_line(fields: dict[str, str]) -> None:
    for name, value in outcome_headers(fields)[1:]:
        check_sendevent_header(name, value)  # raises on a line break or control character
        assert value == value.strip() and len(value) <= 256


@pytest.mark.parametrize(
    ("name", "value"),
    [("ext", "1\n2"), ("ext", "1\r"), ("ext", ""), ("ext", " 1"), ("Content-Length", "5"),
     ("Unique-ID", "abc"), ("bad name", "x"), ("ext:x", "y"), ("ext", "a\x00")],
)
async def test_sendevent_refuses_a_header_before_anything_is_written(name: str, value: str) -> None:
    session = EslSession(EslSettings(host="127.0.0.1", port=1, password="never-used-pw"))
    # Not connected: had the check not refused first, this would be EslNotConnected.
    with pytest.raises(ValueError):
        await session.sendevent("CUSTOM", [("Event-Subclass", OUTCOME_SUBCLASS), (name, value)])
    with pytest.raises(ValueError):
        await session.sendevent("CUSTOM\nbgapi status", [])


# --- unit: configuration ------------------------------------------------------------------------


def test_events_are_off_by_default_and_shown_with_sources(tmp_path: Path) -> None:
    config = load_config(None, env={}, euid=999)
    assert (config.events.invites, config.events.allowed_rooms, config.events.outcomes) == (
        False, (), False)
    path = tmp_path / "c.toml"
    path.write_text('[events]\ninvites = true\nallowed_rooms = ["test1", "sales@default"]\n')
    config = load_config(str(path), env={"CONFGUARD_EVENTS_OUTCOMES": "true"}, euid=999)
    assert config.events.allowed_rooms == ("test1", "sales@default")
    text = render_config(config)
    assert f'allowed_rooms = ["test1", "sales@default"]  # file:{path}' in text
    lines = {line.split(" = ")[0]: line for line in text.splitlines() if " = " in line}
    assert lines["invites"].startswith("invites = true ")
    assert lines["invites"].endswith(f"# file:{path}")
    assert lines["outcomes"].startswith("outcomes = true ")
    assert lines["outcomes"].endswith("# env:CONFGUARD_EVENTS_OUTCOMES")
    assert "[events]" in text


def test_invites_on_need_allowed_rooms(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, env={"CONFGUARD_EVENTS_INVITES": "true"}, euid=999)
    assert "events.allowed_rooms" in str(error.value)
    config = load_config(None, env={"CONFGUARD_EVENTS_INVITES": "yes",
                                    "CONFGUARD_EVENTS_ALLOWED_ROOMS": "test1, test2"}, euid=999)
    assert config.events.allowed_rooms == ("test1", "test2")


@pytest.mark.parametrize("rooms", ['["test 1"]', '["a}b"]', '[1]', '"x\\ny"'])
def test_bad_allowed_rooms_are_refused(tmp_path: Path, rooms: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[events]\nallowed_rooms = {rooms}\n")
    with pytest.raises(ConfigError) as error:
        load_config(str(path), env={}, euid=999)
    assert "events.allowed_rooms" in str(error.value)


# --- the simulator against the real switch ------------------------------------------------------


async def test_the_simulator_fires_what_the_real_switch_recorded() -> None:
    recorded = json.loads(RECORDING.read_text())["records"]
    async with Simulator(SimConfig(port=0, time_scale=0.1, password="Sim-Pw-20")) as sim:
        simulated = await scenario(sim.port, "Sim-Pw-20")
    assert [comparable(r) for r in simulated] == [comparable(r) for r in recorded]


@pytest.mark.realfs
async def test_the_real_switch_still_fires_what_the_simulator_does(real_switch) -> None:  # type: ignore[no-untyped-def]
    real = await scenario(real_switch.port, real_switch.password)
    async with Simulator(SimConfig(port=0, time_scale=0.1, password="Sim-Pw-20")) as sim:
        simulated = await scenario(sim.port, "Sim-Pw-20")
    assert [comparable(r) for r in simulated] == [comparable(r) for r in real]


async def test_the_simulator_hands_an_event_with_a_live_unique_id_to_the_call() -> None:
    """mod_event_socket queues a sendevent whose Unique-ID names a live call to that call:
    it is not fired (a reason the outcome event never carries a Unique-ID)."""
    async with Simulator(SimConfig(port=0, time_scale=0.1, password="Sim-Pw-20")) as sim:
        watch = await watcher(sim.port, "Sim-Pw-20", OUTCOME_SUBCLASS)
        sender = await RawEsl.open(sim.port, "Sim-Pw-20")
        try:
            reply = await sender.command("api originate user/1001 &park()")
            call_uuid = reply.split()[1]
            assert (await sender.sendevent("CUSTOM", [("Event-Subclass", OUTCOME_SUBCLASS),
                                                      ("Unique-ID", call_uuid),
                                                      ("n", "1")])).startswith("+OK ")
            assert (await sender.sendevent("CUSTOM", [("Event-Subclass", OUTCOME_SUBCLASS),
                                                      ("n", "2")])).startswith("+OK ")
            assert dict(await next_custom(watch))["n"] == "2"
        finally:
            await sender.close()
            await watch.close()


# --- end to end, on both peers ------------------------------------------------------------------


async def start_daemon(peer: Peer, link: EslLink, tmp_path: Path,
                       **events: object) -> tuple[Daemon, asyncio.Task[int]]:
    """peers.start_daemon with `events` as its [events] settings."""
    return await peers.start_daemon(peer, link, tmp_path,
                                    **{f"events.{k}": v for k, v in events.items()})


@pytest.fixture
async def events_daemon(peer: Peer, link: EslLink, tmp_path: Path) -> AsyncIterator[Daemon]:
    running, task = await start_daemon(peer, link, tmp_path, invites="true",
                                       allowed_rooms="test1")
    try:
        yield running
    finally:
        running.stopping.set()
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def outcomes(peer: Peer) -> AsyncIterator[RawEsl]:
    """A watcher on the switch: what a Lua script or a dialplan reacting to outcomes sees."""
    watch = await watcher(peer.port, peer.password, OUTCOME_SUBCLASS)
    try:
        yield watch
    finally:
        await watch.close()


@pytest.fixture
async def sender(peer: Peer) -> AsyncIterator[RawEsl]:
    esl = await RawEsl.open(peer.port, peer.password)
    try:
        yield esl
    finally:
        await esl.close()


def invite_event(**fields: str) -> list[tuple[str, str]]:
    return [("Event-Subclass", INVITE_SUBCLASS), *fields.items()]


def outcome_timeout(peer: Peer) -> float:
    return peer.real(60) + 10  # well past any invite's bound (its timeout is 30 peer seconds)


async def test_a_sendevent_invite_joins_and_its_outcome_comes_back(
    peer: Peer, link: EslLink, events_daemon: Daemon, outcomes: RawEsl, sender: RawEsl
) -> None:
    reply = await sender.sendevent("CUSTOM", invite_event(ext="1000", room="test1",
                                                          request_id="req-42"))
    assert reply.startswith("+OK ")
    event = dict(await next_custom(outcomes, outcome_timeout(peer)))
    assert event["Event-Name"] == "CUSTOM" and event["Event-Subclass"] == OUTCOME_SUBCLASS
    assert (event["ext"], event["room"], event["outcome"], event["request_id"],
            event["source"]) == ("1000", "test1", "joined", "req-42", "event")
    run = events_daemon.engine.get(event["invite_id"])
    assert run.call_uuid == event["uuid"] and str(run.outcome) == "joined"
    # The invite went through the daemon's one originate path.
    assert any(c.startswith("bgapi originate") and event["uuid"] in c for c in link.commands())


async def test_a_room_not_allowed_or_a_hostile_value_starts_nothing(
    peer: Peer, link: EslLink, events_daemon: Daemon, outcomes: RawEsl, sender: RawEsl
) -> None:
    await sender.sendevent("CUSTOM", invite_event(ext="1000", room="boardroom",
                                                  request_id="req-1"))
    first = await next_custom(outcomes)
    evidence(f"refused-room-{peer.name}", [first])
    refused = dict(first)
    assert (refused["outcome"], refused["cause"], refused["field"], refused["request_id"]) == (
        "refused", "ROOM_NOT_ALLOWED", "room", "req-1")
    assert "invite_id" not in refused and "uuid" not in refused
    # A value with braces and a (URL-encoded, so it arrives decoded) line break.
    await sender.sendevent("CUSTOM", invite_event(ext="{api_on_answer=x}1000%0Aexit",
                                                  room="test1", request_id="req-2"))
    second = await next_custom(outcomes)
    evidence(f"refused-hostile-{peer.name}", [second])
    refused = dict(second)
    assert (refused["outcome"], refused["field"], refused["request_id"]) == (
        "refused", "ext", "req-2")
    assert refused["ext"] == "_api_on_answer=x_1000_exit"  # echoed, made safe
    await sender.sendevent("CUSTOM", invite_event(ext="1000", room="test1",
                                                  request_id="bad id"))
    refused = dict(await next_custom(outcomes))
    assert (refused["field"], "request_id" in refused) == ("request_id", False)
    # Nothing of it reached FreeSWITCH as a command but the outcome events themselves.
    assert not any("originate" in c for c in link.commands())
    assert not events_daemon.engine.active()


async def test_with_events_off_the_invite_event_is_ignored(
    peer: Peer, link: EslLink, tmp_path: Path, outcomes: RawEsl, sender: RawEsl
) -> None:
    running, task = await start_daemon(peer, link, tmp_path)  # the defaults
    try:
        subscriptions = [c for c in link.commands() if c.startswith("event ")]
        assert subscriptions and not any(INVITE_SUBCLASS in c for c in subscriptions)
        assert not any("confguard::" in c for c in link.commands() if c.startswith("filter"))
        await sender.sendevent("CUSTOM", invite_event(ext="1000", room="test1"))
        # An API invite after it: its outcome (fired since the switch got the event first, and
        # with events off there is no outcome event to wait for) bounds the wait.
        run = await running.engine.invite(specs_from_request(
            {"extensions": ["1001"], "room": "test1", "timeout": peer.secs(1.5)},
            running.api.defaults)[0])
        await asyncio.wait_for(asyncio.shield(run.final_update()), outcome_timeout(peer))
        originates = [c for c in link.commands() if c.startswith("bgapi originate")]
        assert len(originates) == 1 and run.call_uuid in originates[0]
        assert not any(c.startswith("sendevent") for c in link.commands())
        seen = []  # the watcher takes HEARTBEAT as the daemon does: one may come meanwhile
        while not outcomes.events.empty():
            seen.append(dict(outcomes.events.get_nowait()).get("Event-Name"))
        assert [name for name in seen if name != "HEARTBEAT"] == []
    finally:
        running.stopping.set()
        await asyncio.wait_for(task, 10)


async def test_outcomes_for_every_invite_when_asked(
    peer: Peer, link: EslLink, tmp_path: Path, outcomes: RawEsl
) -> None:
    running, task = await start_daemon(peer, link, tmp_path, outcomes="true")
    try:
        spec = specs_from_request({"extensions": ["1002"], "room": "test1"},
                                  running.api.defaults)[0]
        run = await running.engine.invite(spec)
        event = dict(await next_custom(outcomes, outcome_timeout(peer)))
        assert (event["invite_id"], event["uuid"], event["ext"], event["outcome"],
                event["cause"], event["source"]) == (
            run.invite_id, run.call_uuid, "1002", "busy", "USER_BUSY", "api")
        assert "request_id" not in event
    finally:
        running.stopping.set()
        await asyncio.wait_for(task, 10)


async def test_after_a_reconnect_the_subscription_and_filter_are_back(
    peer: Peer, link: EslLink, events_daemon: Daemon, outcomes: RawEsl, sender: RawEsl
) -> None:
    before = link.connection_count
    link.cut()
    deadline = time.monotonic() + 20
    while not (events_daemon.session.connected and link.connection_count > before):
        assert time.monotonic() < deadline, "the daemon did not reconnect"
        await asyncio.sleep(0.05)
    again = link.connections[-1].commands
    assert any(c.startswith("event ") and INVITE_SUBCLASS in c for c in again)
    assert f"filter Event-Subclass {INVITE_SUBCLASS}" in again
    await sender.sendevent("CUSTOM", invite_event(ext="1002", room="test1", request_id="re-1"))
    event = dict(await next_custom(outcomes, outcome_timeout(peer)))
    assert (event["outcome"], event["request_id"]) == ("busy", "re-1")


async def test_an_invite_from_the_dialplan_event_app(
    peer: Peer, link: EslLink, events_daemon: Daemon, outcomes: RawEsl, sender: RawEsl
) -> None:
    """A call's dialplan runs `event Event-Subclass=confguard::invite,...`: the invite of 1000
    joins, and the outcome event names the request id the dialplan gave (its own uuid)."""
    reply = await sender.command(
        "api originate {origination_uuid=5e0c2a7e-0000-4000-8000-00000000d1a1}user/1001 "
        "'m:^:event:Event-Subclass=confguard::invite,Event-Name=CUSTOM,ext=1000,room=test1,"
        "request_id=${uuid}^park' inline"
    )
    assert reply.startswith("+OK"), reply
    event = dict(await next_custom(outcomes, outcome_timeout(peer)))
    assert (event["ext"], event["room"], event["outcome"], event["request_id"]) == (
        "1000", "test1", "joined", "5e0c2a7e-0000-4000-8000-00000000d1a1")
    members = await peer.members("test1")
    assert event["uuid"] in members


# --- the deploy example, on both peers -----------------------------------------------------------

EXAMPLE_SUBCLASSES = (INVITE_SUBCLASS, OUTCOME_SUBCLASS, "conference::maintenance")
EXAMPLE_DIALPLAN = Path(__file__).resolve().parent.parent / "deploy" / "freeswitch" / (
    "confguard_events.xml")


@pytest.fixture(scope="module")
def example_switch(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A real FreeSWITCH with deploy/freeswitch's example loaded (conf.py `events_example`)."""
    from conftest import REPO

    from confguard.realswitch import FreeSwitchNotFound, RealSwitch, find_freeswitch

    try:
        install = find_freeswitch(REPO)
    except FreeSwitchNotFound as missing:
        pytest.skip(str(missing))
    switch = RealSwitch(install, tmp_path_factory.mktemp("fs-events"), events_example=True)
    switch.start()
    try:
        yield switch
    finally:
        switch.stop()


@pytest.fixture(params=["sim", pytest.param("real", marks=pytest.mark.realfs)])
async def example_peer(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Peer]:
    """A peer with the example's dialplan: the simulator given deploy/freeswitch's
    confguard_events.xml (`SimConfig.extensions`), or the real switch with the whole example."""
    from peers import RealPeer, SimPeer

    from confguard.sim.xmlconf import dialplan_extensions

    if request.param == "sim":

        class ExampleSimPeer(SimPeer):
            def _config(self) -> SimConfig:
                config = super()._config()
                config.extensions = dialplan_extensions(str(EXAMPLE_DIALPLAN))
                return config

        async with ExampleSimPeer(tmp_path) as simulated:
            yield simulated
        return
    real = RealPeer(request.getfixturevalue("example_switch"))
    await real.clean()
    try:
        yield real
    finally:
        await real.clean()


@pytest.fixture
async def example_daemon(
    example_peer: Peer, tmp_path: Path
) -> AsyncIterator[tuple[Daemon, RawEsl]]:
    relay = EslLink(example_peer)
    await relay.start()
    watch = await watcher(example_peer.port, example_peer.password, *EXAMPLE_SUBCLASSES)
    running, task = await start_daemon(example_peer, relay, tmp_path, invites="true",
                                       allowed_rooms="test1")
    try:
        yield running, watch
    finally:
        running.stopping.set()
        await asyncio.wait_for(task, 10)
        await watch.close()
        await relay.stop()


async def collect_until(watch: RawEsl, done, seconds: float = 60) -> list[list[tuple[str, str]]]:  # type: ignore[no-untyped-def]
    """Every non-HEARTBEAT event on `watch` until `done(events)` holds."""
    seen: list[list[tuple[str, str]]] = []
    deadline = time.monotonic() + seconds
    while not done(seen):
        seen.append(await next_custom(watch, max(0.1, deadline - time.monotonic())))
    return seen


def evidence(name: str, events: list[list[tuple[str, str]]]) -> None:
    """Keep what the watcher saw (the closing note quotes it): $CONFGUARD_EVIDENCE/<name>.json."""
    import os

    folder = os.environ.get("CONFGUARD_EVIDENCE")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.json").write_text(json.dumps(events, indent=1))


def subclass_of(event: list[tuple[str, str]]) -> str:
    return dict(event).get("Event-Subclass", "")


def find(events: list[list[tuple[str, str]]], subclass: str, **match: str) -> dict[str, str]:
    for event in events:
        headers = dict(event)
        if subclass_of(event) == subclass and all(headers.get(k) == v for k, v in match.items()):
            return headers
    raise AssertionError(f"no {subclass} {match} in {[dict(e).get('Action') for e in events]}")


def announced(seen: list[list[tuple[str, str]]]) -> bool:
    """confguard_outcome.lua played its tone into the room (the real switch runs the hook)."""
    return any(subclass_of(e) == "conference::maintenance"
               and dict(e).get("Action") == "play-file" for e in seen)


def answered(seen: list[list[tuple[str, str]]]) -> bool:
    return any(subclass_of(e) == OUTCOME_SUBCLASS for e in seen)


async def test_a_dialled_code_invites_through_the_dialplan(
    example_peer: Peer, example_daemon: tuple[Daemon, RawEsl]
) -> None:
    """deploy/freeswitch/confguard_events.xml: a phone dials *71000; its dialplan's `event` app
    fires the invite, 1000 joins test1, the outcome event comes back with the caller's uuid;
    on the real switch confguard_outcome.lua (the lua.conf.xml hook) then plays the joined tone
    into the room (the simulator runs no Lua)."""
    running, watch = example_daemon
    reply = await example_peer.api("originate user/1001 *71000 XML default")
    assert reply.startswith("+OK"), reply
    caller = reply.split()[1]
    events = await collect_until(watch, announced if example_peer.name == "real" else answered,
                                 outcome_timeout(example_peer))
    evidence(f"dialled-code-{example_peer.name}", events)
    invite = find(events, INVITE_SUBCLASS)
    assert (invite["ext"], invite["room"], invite["request_id"], invite["Unique-ID"]) == (
        "1000", "test1", caller, caller)
    assert invite["Event-Calling-Function"] == "event_function"
    outcome = find(events, OUTCOME_SUBCLASS)
    assert (outcome["ext"], outcome["outcome"], outcome["request_id"]) == (
        "1000", "joined", caller)
    find(events, "conference::maintenance", Action="add-member", **{"Unique-ID": outcome["uuid"]})
    if example_peer.name == "real":
        played = find(events, "conference::maintenance", Action="play-file")
        assert played["File"].startswith("tone_stream://%(150,50,660)")  # the joined tone
    assert str(running.engine.get(outcome["invite_id"]).outcome) == "joined"


@pytest.mark.realfs
async def test_real_a_moderator_presses_a_key_to_invite(example_switch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """deploy/freeswitch/conference_moderator.xml: the moderator (7002: test1 with the moderator
    flag) presses *1; the caller control's execute_application runs the `event` app on the
    moderator's channel; confguard invites 1000, which joins; the outcome is announced.
    (Real switch only: the simulator's conferences have no caller controls.)"""
    from peers import RealPeer

    peer = RealPeer(example_switch)
    await peer.clean()
    relay = EslLink(peer)
    await relay.start()
    watch = await watcher(peer.port, peer.password, *EXAMPLE_SUBCLASSES)
    running, task = await start_daemon(peer, relay, tmp_path, invites="true",
                                       allowed_rooms="test1")
    try:
        reply = await peer.api("originate {sim_dtmf=*1@2}user/1001 7002 XML default")
        assert reply.startswith("+OK"), reply
        moderator = reply.split()[1]
        events = await collect_until(watch, announced)
        evidence("moderator-key", events)
        find(events, "conference::maintenance", Action="add-member", **{"Unique-ID": moderator})
        pressed = find(events, "conference::maintenance", Action="execute_app")
        assert pressed["Unique-ID"] == moderator and pressed["Application"].startswith("event ")
        invite = find(events, INVITE_SUBCLASS)
        assert (invite["ext"], invite["room"], invite["request_id"]) == (
            "1000", "test1", moderator)
        outcome = find(events, OUTCOME_SUBCLASS)
        assert (outcome["ext"], outcome["room"], outcome["outcome"], outcome["request_id"]) == (
            "1000", "test1", "joined", moderator)
        members = (await peer.api("conference test1 list")).splitlines()
        assert any(outcome["uuid"] in line for line in members)
        assert any(moderator in line and "moderator" in line for line in members)
        assert running.engine.get(outcome["uuid"]).spec.extension == "1000"
    finally:
        running.stopping.set()
        await asyncio.wait_for(task, 10)
        await watch.close()
        await relay.stop()
        await peer.clean()


# --- the outcome side without a switch ----------------------------------------------------------


class FakeSession:
    def __init__(self, connected: bool) -> None:
        self.connected = connected
        self.sent: list[list[tuple[str, str]]] = []

    async def wait_connected(self, timeout: float) -> bool:
        return self.connected

    async def sendevent(self, name: str, headers: list[tuple[str, str]]) -> str:
        assert name == "CUSTOM"
        for header, value in headers:
            check_sendevent_header(header, value)
        self.sent.append(headers)
        return f"event-{len(self.sent)}"


class FakeEngine:
    def __init__(self, fail: Exception | None = None) -> None:
        self.observers: list = []  # type: ignore[type-arg]
        self.started: list[tuple[object, dict[str, str]]] = []
        self.fail = fail

    def add_observer(self, observer) -> None:  # type: ignore[no-untyped-def]
        self.observers.append(observer)

    def add_event_tap(self, subclass: str, handler) -> None:  # type: ignore[no-untyped-def]
        pass

    async def invite(self, spec, *, origin):  # type: ignore[no-untyped-def]
        if self.fail is not None:
            raise self.fail
        self.started.append((spec, dict(origin)))
        return type("Run", (), {"invite_id": f"i{len(self.started)}", "call_uuid": "u",
                                "spec": spec, "origin": dict(origin)})()


async def fs_events_of(engine: FakeEngine, session: FakeSession, **config: object):  # type: ignore[no-untyped-def]
    from confguard.config import EventsConfig
    from confguard.fs_events import FsEvents

    events = FsEvents(engine, session, EventsConfig(**config), lambda: DEFAULTS,  # type: ignore[arg-type]
                      reconnect_wait=0.0)
    events.session = session
    events._started = True  # what start() does, without a real session's subscribe
    engine.add_observer(events._on_update)
    events._sender = asyncio.create_task(events._send_outcomes())
    return events


async def drained(events, session: FakeSession, count: int) -> None:  # type: ignore[no-untyped-def]
    for _ in range(200):
        if len(session.sent) >= count and events._outbox.empty():
            return
        await asyncio.sleep(0.005)


async def test_outcomes_go_out_in_order_and_only_for_event_invites_by_default() -> None:
    engine, session = FakeEngine(), FakeSession(connected=True)
    events = await fs_events_of(engine, session, invites=True, allowed_rooms=("test1",))
    try:
        ids = await events.handle_invite_event({"extensions": "1000 1001", "room": "test1",
                                                "request_id": "r-9"})
        assert ids == ["i1", "i2"]
        assert [origin for _, origin in engine.started] == [
            {"source": "event", "request_id": "r-9"}] * 2
        api_run = type("Run", (), {"invite_id": "api-1", "call_uuid": "u2",
                                   "spec": engine.started[0][0], "origin": {}})()
        for observer in engine.observers:
            observer(api_run, {"outcome": "joined"})  # an API invite: no event by default
            observer(type("Run", (), {"invite_id": "i2", "call_uuid": "u", "origin":
                                      {"source": "event", "request_id": "r-9"},
                                      "spec": engine.started[1][0]})(),
                     {"outcome": "busy", "cause": "USER_BUSY"})
            observer(type("Run", (), {"invite_id": "i1", "call_uuid": "u", "origin":
                                      {"source": "event", "request_id": "r-9"},
                                      "spec": engine.started[0][0]})(),
                     {"state": "ringing"})  # not an outcome
        await drained(events, session, 1)
        assert [dict(h).get("invite_id") for h in session.sent] == ["i2"]
        assert dict(session.sent[0])["request_id"] == "r-9"
    finally:
        await events.stop()


async def test_a_members_leaving_is_no_second_outcome_event() -> None:
    """The room's `state: left` update (it carries `outcome: joined`) comes after the outcome:
    no second confguard::outcome for it."""
    engine, session = FakeEngine(), FakeSession(connected=True)
    events = await fs_events_of(engine, session, invites=True, allowed_rooms=("test1",))
    try:
        [invite_id] = await events.handle_invite_event({"ext": "1000", "room": "test1"})
        run = type("Run", (), {"invite_id": invite_id, "call_uuid": "u", "origin":
                               {"source": "event"}, "spec": engine.started[0][0]})()
        for observer in engine.observers:
            observer(run, {"state": "ended", "outcome": "joined"})
            observer(run, {"state": "left", "outcome": "joined", "left_reason": "max_duration"})
        await drained(events, session, 1)
        await asyncio.sleep(0.05)
        assert [dict(h)["outcome"] for h in session.sent] == ["joined"]
    finally:
        await events.stop()


async def test_an_outcome_with_the_link_down_is_dropped_with_a_log_line() -> None:
    engine, session = FakeEngine(), FakeSession(connected=False)
    events = await fs_events_of(engine, session, outcomes=True)
    found: list[Any] = []
    try:
        run = type("Run", (), {"invite_id": "x1", "call_uuid": "u", "origin": {},
                               "spec": specs_from_request({"extensions": ["1000"],
                                                           "room": "test1"}, DEFAULTS)[0]})()
        with structlog.testing.capture_logs() as logs:
            engine.observers[0](run, {"outcome": "lost", "cause": "LINK"})
            for _ in range(200):
                found = [e for e in logs if e["event"] == "fs_event.outcome_not_sent"]
                if found:
                    break
                await asyncio.sleep(0.005)
        assert [(e["outcome"], e["invite_id"]) for e in found] == [("lost", "x1")], logs
        session.connected = True
        engine.observers[0](run, {"outcome": "joined"})
        await drained(events, session, 1)
        assert [dict(h)["outcome"] for h in session.sent] == ["joined"]
    finally:
        await events.stop()


async def test_an_engine_that_cannot_take_the_invite_is_answered_refused() -> None:
    from confguard.engine import NotConnected

    engine, session = FakeEngine(fail=NotConnected("down")), FakeSession(connected=True)
    events = await fs_events_of(engine, session, invites=True, allowed_rooms=("test1",))
    try:
        assert await events.handle_invite_event({"ext": "1000", "room": "test1"}) == []
        await drained(events, session, 1)
        assert dict(session.sent[0])["outcome"] == "refused"
        assert dict(session.sent[0])["cause"] == "NOT_CONNECTED"
    finally:
        await events.stop()


async def test_an_adopted_event_invite_still_answers_with_its_request_id(
    peer: Peer, link: EslLink, tmp_path: Path, outcomes: RawEsl, sender: RawEsl
) -> None:
    """The daemon stops while an event's invite rings; the next one adopts it from the journal
    (where its origin is kept) and fires its outcome event with the sender's request id."""
    first, task = await start_daemon(peer, link, tmp_path, invites="true", allowed_rooms="test1")
    try:
        await sender.sendevent("CUSTOM", invite_event(ext="1001", room="test1",
                                                      # the restart must fit in it (a call
                                                      # gone before adoption is `lost`)
                                                      timeout=str(peer.secs(8)),
                                                      request_id="before-restart"))
        # Until it rings, the originate may not have left: stopped then, the invite is never
        # placed, and the next daemon can only call it lost (a loaded run of 12-02 did).
        deadline = time.monotonic() + 15
        while not [row for row in first.engine.active()
                   if row["state"] in ("ringing", "waiting_key")]:
            assert time.monotonic() < deadline, "the event started no invite that rang"
            await asyncio.sleep(0.02)
        call_uuid = first.engine.active()[0]["uuid"]
    finally:
        first.stopping.set()
        await asyncio.wait_for(task, 10)
    second, task = await start_daemon(peer, link, tmp_path, invites="true",
                                      allowed_rooms="test1")
    try:
        event = dict(await next_custom(outcomes, outcome_timeout(peer)))
        assert (event["uuid"], event["outcome"], event["request_id"], event["source"]) == (
            call_uuid, "timeout", "before-restart", "event")
        assert second.engine.get(call_uuid).origin == {"source": "event",
                                                        "request_id": "before-restart"}
    finally:
        second.stopping.set()
        await asyncio.wait_for(task, 10)


def test_confguard_sim_takes_the_example_dialplan(tmp_path: Path) -> None:
    from confguard.sim.cli import UsageError, build_parser, config_from_args

    config = config_from_args(build_parser().parse_args(["--dialplan", str(EXAMPLE_DIALPLAN)]))
    assert dict(config.extensions)[r"^\*7([0-9]{3,6})$"][1] == (
        "event", "Event-Subclass=confguard::invite,Event-Name=CUSTOM,ext=$1,room=test1,"
        "request_id=${uuid}")
    assert dict(config.extensions)["^7002$"][1] == (
        "conference", "test1@confguard+flags{moderator}")
    broken = tmp_path / "broken.xml"
    broken.write_text("<include><extension>")
    with pytest.raises(UsageError):
        config_from_args(build_parser().parse_args(["--dialplan", str(broken)]))
