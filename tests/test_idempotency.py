"""Idempotent invites (`Idempotency-Key` on POST /invites, `confguard invite --idempotency-key`).

Unit level: the key's whitelist, the canonical request hash, the journal's table (and its
migration onto an older journal), the store's window. Through the real control socket, with the
daemon on the simulator behind a relay (`GatedLink`, which can also hold the link down): a
replay places no second call, a different body is 409, bad input stores no key, two requests at
once place one call, a 503 leaves the key unused, an expired key is a new request, the CLI's
replay follows the same invite to the same exit code, and `confguard serve` as its own process
keeps the key across a SIGKILL. One `realfs` test counts the channels the real FreeSWITCH created
for a request retried with the same key.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from peers import EslLink, Peer, RealPeer, SimPeer, start_daemon
from test_e2e import ROOM, ServeProcess, run_cli

from confguard import cli
from confguard.api import ApiError, ControlClient, ControlServer, specs_from_request
from confguard.config import InviteConfig, load_config, render_config
from confguard.daemon import Daemon
from confguard.engine import NotConnected
from confguard.esl import EslSession
from confguard.idempotency import (
    HEADER,
    REPLAYED_HEADER,
    IdempotencyStore,
    check_key,
    request_hash,
)
from confguard.invite import BadInput
from confguard.journal import SCHEMA_VERSION, Journal

BODY = {"extensions": ["1000"], "room": ROOM, "timeout": 10}

# --------------------------------------------------------------------------- unit level


@pytest.mark.parametrize(
    "key", ["a", "K-1", "order:2026-12-02.1", "x" * 128, "A_b-C.d:E", "0123456789"]
)
def test_key_whitelist_accepts(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize(
    "key", ["", "x" * 129, "a b", "a\nb", "a/b", "ä", "a{b}", "a,b", "${x}", "a\tb", None, 7]
)
def test_key_whitelist_refuses_naming_the_field(key: object) -> None:
    with pytest.raises(BadInput) as caught:
        check_key(key)
    assert caught.value.field == HEADER
    with pytest.raises(BadInput) as caught:
        check_key(key, "--idempotency-key")
    assert caught.value.field == "--idempotency-key"


def _hash(body: dict[str, Any], defaults: InviteConfig | None = None) -> str:
    return request_hash(specs_from_request(body, defaults or InviteConfig()))


def test_request_hash_is_what_the_request_places_not_how_it_is_spelled() -> None:
    base = {"extensions": ["1000", "1001"], "room": "test1"}
    same = {"room": "test1", "extensions": ["1001", "1000"]}  # other field and list order
    defaults = InviteConfig()
    spelled_out = {**base, "timeout": defaults.timeout, "key": defaults.key, "join": "inline",
                   "variables": {}, "prompt": defaults.prompt}  # each default given explicitly
    nulls = {**base, "timeout": None, "key": None, "caller_id_name": None}
    digest = _hash(base)
    assert _hash(same) == digest
    assert _hash(spelled_out) == digest
    assert _hash(nulls) == digest
    assert _hash({**base, "extensions": ["1000", "1002"]}) != digest  # another extension
    assert _hash({**base, "extensions": ["1000"]}) != digest
    assert _hash({**base, "room": "test2"}) != digest
    assert _hash({**base, "timeout": 31}) != digest
    assert _hash({**base, "variables": {"trace_tag": "a"}}) != digest
    assert _hash({**base, "variables": {"trace_tag": "b"}}) != _hash(
        {**base, "variables": {"trace_tag": "a"}}
    )


def test_journal_keeps_keys_and_migrates_an_older_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal.sqlite3"
    with Journal(path) as journal:
        assert journal.get_idempotency("k1") is None
        journal.put_idempotency("k1", "h1", [{"invite_id": "a"}], complete=False, created_at=10.0)
        journal.put_idempotency("k1", "h1", [{"invite_id": "a"}, {"invite_id": "b"}],
                                complete=True, created_at=10.0)
        journal.put_idempotency("k2", "h2", [{"invite_id": "c"}], complete=True, created_at=50.0)
    with Journal(path, readonly=True) as reader:  # durable: another connection reads it
        row = reader.get_idempotency("k1")
    assert row == {"key": "k1", "request_hash": "h1", "complete": True, "created_at": 10.0,
                   "invites": [{"invite_id": "a"}, {"invite_id": "b"}]}
    with Journal(path) as journal:
        assert journal.prune_idempotency(cutoff=20.0) == 1
        assert journal.get_idempotency("k1") is None
        assert journal.get_idempotency("k2") is not None

    # A journal written before this table existed (schema version 1) gains it on open and
    # keeps its invites.
    old = tmp_path / "old.sqlite3"
    from confguard import journal as journal_module

    with monkeypatch.context() as patch:  # a version-1 journal, as an earlier confguard wrote it
        patch.setattr(journal_module, "_MIGRATIONS", ())
        patch.setattr(journal_module, "SCHEMA_VERSION", 1)
        with Journal(old):
            pass
    conn = sqlite3.connect(old)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.execute("INSERT INTO invites (invite_id, call_uuid, job_uuid, ext, room, timeout, "
                 "deadline, created_at, updated_at, state) VALUES ('i1', 'u', 'j', '1000', "
                 "'test1', 30, 40, 10, 10, 'placing')")
    conn.commit()
    conn.close()
    with Journal(old) as journal:
        assert [r.invite_id for r in journal.active()] == ["i1"]
        journal.put_idempotency("k", "h", [], complete=True, created_at=1.0)
        assert journal.get_idempotency("k") is not None
    conn = sqlite3.connect(old)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 2
    conn.close()


def test_store_window_counts_from_the_first_use_and_prunes(tmp_path: Path) -> None:
    now = [1000.0]
    with Journal(tmp_path / "j.sqlite3") as journal:
        store = IdempotencyStore(journal, retention=60, clock=lambda: now[0])
        store.record("old", "h", [{"invite_id": "a"}], complete=True, created_at=now[0])
        now[0] += 59
        assert store.lookup("old") is not None
        now[0] += 2  # 61 s after the first use
        assert store.lookup("old") is None  # expired: as if never used
        assert journal.get_idempotency("old") is not None  # not yet pruned
        store.record("new", "h", [{"invite_id": "b"}], complete=True, created_at=now[0])
        assert journal.get_idempotency("old") is None  # a new key prunes the expired ones
        # a restarted daemon (an empty memory) finds the key in the journal
        fresh = IdempotencyStore(journal, retention=60, clock=lambda: now[0])
        assert fresh.lookup("new") == {"key": "new", "request_hash": "h", "complete": True,
                                       "created_at": now[0], "invites": [{"invite_id": "b"}]}


# ------------------------------------------- the API's rules, on an engine with a script


class ScriptedRun:
    def __init__(self, n: int) -> None:
        self.invite_id = f"inv{n:04d}"
        self.call_uuid = f"00000000-0000-0000-0000-{n:012d}"


class ScriptedEngine:
    """Places invites as told: `down` extensions get NotConnected (nothing placed)."""

    def __init__(self) -> None:
        self.placed: list[str] = []
        self.down: set[str] = set()

    async def invite(self, spec: Any) -> ScriptedRun:
        if spec.extension in self.down:
            raise NotConnected("not connected to FreeSWITCH; nothing was sent")
        self.placed.append(spec.extension)
        return ScriptedRun(len(self.placed))


async def test_a_retry_after_a_503_half_way_places_only_the_missing_extension(
    tmp_path: Path,
) -> None:
    engine = ScriptedEngine()
    journal = Journal(tmp_path / "j.sqlite3")
    control = ControlServer(engine, str(tmp_path / "c.sock"), journal=journal,  # type: ignore[arg-type]
                            idempotency=IdempotencyStore(journal))
    await control.start()
    client = ControlClient(control.path)
    body = {"extensions": ["1000", "1001"], "room": ROOM}
    try:
        engine.down = {"1001"}
        with pytest.raises(ApiError) as caught:
            await client.exchange("POST", "/invites", body, [(HEADER, "half")])
        assert caught.value.status == 503
        assert [i["ext"] for i in caught.value.error["created"]] == ["1000"]
        row = journal.get_idempotency("half")
        assert row is not None and not row["complete"] and len(row["invites"]) == 1
        engine.down = set()
        status, answer, headers = await client.exchange("POST", "/invites", body,
                                                        [(HEADER, "half")])
        assert status == 201 and REPLAYED_HEADER.lower() not in headers
        assert engine.placed == ["1000", "1001"]  # 1000 once, then only 1001
        assert [i["ext"] for i in answer["invites"]] == ["1000", "1001"]
        assert answer["invites"][0] == caught.value.error["created"][0]
        status, again, headers = await client.exchange("POST", "/invites", body,
                                                       [(HEADER, "half")])
        assert (status, again, headers[REPLAYED_HEADER.lower()]) == (200, answer, "true")
        assert engine.placed == ["1000", "1001"]
    finally:
        await control.stop()
        journal.close()


# --------------------------------------------------------- the daemon on the simulator


class GatedLink(EslLink):
    """The relay, with a gate: while it is closed, a new connection is held (not relayed)."""

    def __init__(self, peer: Peer) -> None:
        super().__init__(peer)
        self.gate = asyncio.Event()
        self.gate.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.gate.wait()
        await super()._accept(reader, writer)


def originates(link: EslLink) -> list[str]:
    return [c for c in link.commands() if c.split(" ", 2)[:2] == ["bgapi", "originate"]]


async def originate_count(link: EslLink, expected: int) -> int:
    """The originates that crossed the link, once `expected` did (the engine's worker writes
    them after the API answered) and a quiet moment after that showed no more."""
    for _ in range(500):
        if len(originates(link)) >= expected:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    return len(originates(link))


@pytest.fixture
async def link(sim_peer: SimPeer) -> AsyncIterator[GatedLink]:
    relay = GatedLink(sim_peer)
    await relay.start()
    try:
        yield relay
    finally:
        relay.gate.set()
        await relay.stop()


@pytest.fixture
async def daemon(sim_peer: SimPeer, link: GatedLink, tmp_path: Path) -> AsyncIterator[Daemon]:
    running, task = await start_daemon(sim_peer, link, tmp_path, **{"esl.reconnect_wait": 3.0})
    try:
        yield running
    finally:
        running.stopping.set()
        await asyncio.wait_for(task, 10)


async def post(
    daemon: Daemon, body: dict[str, Any], key: str | None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = [] if key is None else [(HEADER, key)]
    return await ControlClient(daemon.config.api.socket).exchange("POST", "/invites", body,
                                                                  headers)


async def outcome_of(daemon: Daemon, invite_id: str) -> str:
    run = daemon.engine.get(invite_id)
    return str((await asyncio.wait_for(asyncio.shield(run.final_update()), 15))["outcome"])


async def test_same_key_returns_the_same_invites_and_places_one_call(
    daemon: Daemon, link: GatedLink, sim_peer: SimPeer
) -> None:
    status, first, headers = await post(daemon, BODY, "order-1")
    assert status == 201 and REPLAYED_HEADER.lower() not in headers
    assert await outcome_of(daemon, first["invites"][0]["invite_id"]) == "joined"
    # the same request, spelled differently (field order, a default given explicitly)
    respelled = {"timeout": 10, "room": ROOM, "extensions": ["1000"], "key": "1"}
    status, second, headers = await post(daemon, respelled, "order-1")
    assert status == 200 and headers[REPLAYED_HEADER.lower()] == "true"
    assert second == first  # same ids, same shape
    assert await originate_count(link, 1) == 1
    assert len(await sim_peer.members(ROOM)) == 1  # one callee in the room, not two
    row = daemon.journal.get_idempotency("order-1")
    assert row["invites"] == first["invites"] and row["complete"]
    # without a key, the same body is a new invite (nothing changed for plain requests)
    status, third, _ = await post(daemon, BODY, None)
    assert status == 201 and third["invites"][0]["invite_id"] != first["invites"][0]["invite_id"]
    assert await originate_count(link, 2) == 2


async def test_same_key_with_another_body_is_409_and_sends_nothing(
    daemon: Daemon, link: GatedLink
) -> None:
    _, first, _ = await post(daemon, BODY, "k409")
    for other in ({**BODY, "extensions": ["1001"]}, {**BODY, "timeout": 11},
                  {**BODY, "room": "test2"}):
        with pytest.raises(ApiError) as caught:
            await post(daemon, other, "k409")
        assert (caught.value.status, caught.value.kind) == (409, "idempotency_conflict")
        assert caught.value.error["field"] == HEADER
        assert "different request" in str(caught.value)
        assert caught.value.error["invites"] == [first["invites"][0]["invite_id"]]
    assert await originate_count(link, 1) == 1


async def test_bad_input_stores_no_key_and_a_bad_key_is_400(
    daemon: Daemon, link: GatedLink
) -> None:
    with pytest.raises(ApiError) as caught:
        await post(daemon, {**BODY, "extensions": ["10 00"]}, "k400")
    assert (caught.value.status, caught.value.error["field"]) == (400, "extension")
    assert daemon.journal.get_idempotency("k400") is None
    status, _, _ = await post(daemon, {**BODY, "extensions": ["1001"]}, "k400")  # not a 409
    assert status == 201
    for bad in ("a b", "x" * 129, "a/b", "${x}"):
        with pytest.raises(ApiError) as caught:
            await post(daemon, BODY, bad)
        assert (caught.value.status, caught.value.error["field"]) == (400, HEADER)
        assert HEADER in str(caught.value)
    with pytest.raises(ApiError) as caught:  # the header twice
        await ControlClient(daemon.config.api.socket).exchange(
            "POST", "/invites", BODY, [(HEADER, "a"), (HEADER, "b")]
        )
    assert (caught.value.status, caught.value.error["field"]) == (400, HEADER)
    assert await originate_count(link, 1) == 1  # only the 1001 above


async def hold_link_down(daemon: Daemon, link: GatedLink) -> None:
    link.gate.clear()
    link.cut()
    for _ in range(200):
        if not daemon.session.connected:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the daemon never noticed the cut")


async def test_two_requests_with_one_key_at_once_place_one_call(
    daemon: Daemon, link: GatedLink
) -> None:
    """Decided: the second waits for the first (a per-key lock), then gets its invites as a
    replay. With the link held down, the first waits inside the engine for the connection --
    long enough for the second to arrive and queue behind it."""
    await hold_link_down(daemon, link)
    requests = [asyncio.create_task(post(daemon, BODY, "both")) for _ in range(2)]
    store = daemon.api.idempotency
    for _ in range(300):
        if store.holders("both") == 2:
            break
        await asyncio.sleep(0.01)
    assert store.holders("both") == 2  # both requests are in, one of them waiting
    assert not daemon.session.connected
    link.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*requests), 10)
    assert sorted(status for status, _, _ in results) == [200, 201]
    assert results[0][1] == results[1][1]
    assert await originate_count(link, 1) == 1
    assert store.holders("both") == 0


async def test_a_503_stores_nothing_and_the_retry_places_the_call(
    sim_peer: SimPeer, link: GatedLink, tmp_path: Path
) -> None:
    """Decided: not connected means nothing was placed, so the key stays unused and the retry
    (same key) places the call."""
    running, task = await start_daemon(sim_peer, link, tmp_path, **{"esl.reconnect_wait": 0.3})
    try:
        await hold_link_down(running, link)
        with pytest.raises(ApiError) as caught:
            await post(running, BODY, "k503")
        assert (caught.value.status, caught.value.kind) == (503, "not_connected")
        assert caught.value.error["created"] == []
        assert running.journal.get_idempotency("k503") is None
        link.gate.set()
        for _ in range(500):
            if running.session.connected:
                break
            await asyncio.sleep(0.01)
        status, answer, _ = await post(running, BODY, "k503")
        assert status == 201
        assert await outcome_of(running, answer["invites"][0]["invite_id"]) == "joined"
        assert await originate_count(link, 1) == 1
    finally:
        running.stopping.set()
        await asyncio.wait_for(task, 10)


async def test_an_expired_key_is_a_new_request(daemon: Daemon, link: GatedLink) -> None:
    store = daemon.api.idempotency
    now = [time.time()]
    store.clock = lambda: now[0]
    _, first, _ = await post(daemon, BODY, "kexp")
    now[0] += store.retention - 1
    status, again, _ = await post(daemon, BODY, "kexp")
    assert (status, again) == (200, first)
    now[0] += 2  # the window counts from the first use, not the replay
    status, later, _ = await post(daemon, BODY, "kexp")
    assert status == 201
    assert later["invites"][0]["invite_id"] != first["invites"][0]["invite_id"]
    assert await originate_count(link, 2) == 2
    assert daemon.journal.get_idempotency("kexp")["invites"] == later["invites"]


async def test_cli_retry_follows_the_same_invite_to_the_same_exit_code(
    daemon: Daemon, link: GatedLink, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["invite", "1002", "--room", ROOM, "--timeout", "10", "--idempotency-key", "cli-1",
            "--json", "--socket", daemon.config.api.socket]
    first_status, first_out = await run_cli(*argv)
    assert first_status == cli.OUTCOME_EXIT["busy"]
    assert "already used" not in capsys.readouterr().err
    second_status, second_out = await run_cli(*argv)
    assert second_status == first_status
    assert "already used for this request" in capsys.readouterr().err
    first = [json.loads(line) for line in first_out.splitlines()]
    second = [json.loads(line) for line in second_out.splitlines()]
    assert {u["uuid"] for u in first} == {u["uuid"] for u in second} and len(first) > 1
    assert [u["state"] for u in second] == [u["state"] for u in first]
    assert await originate_count(link, 1) == 1
    no_wait = [*argv[:-3], "--no-wait", "--socket", daemon.config.api.socket]
    status, out = await run_cli(*[a for a in no_wait if a != "--json"])
    assert (status, out.strip()) == (0, first[0]["uuid"])
    # the key with another request: a 409, for the CLI bad input (2, as the README says)
    status, out = await run_cli(*argv, "--timeout", "11")
    assert (status, out) == (cli.EXIT_BAD_INPUT, "")
    assert "used for a different request" in capsys.readouterr().err
    assert await originate_count(link, 1) == 1


async def test_cli_refuses_a_bad_key_with_2_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    absent = str(tmp_path / "absent.sock")  # a daemon would be 3 (unreachable)
    for bad in ("a b", "x" * 129, "k\n", "a{b}"):
        status, _ = await run_cli("invite", "1000", "--room", ROOM, "--idempotency-key", bad,
                                  "--socket", absent)
        assert status == cli.EXIT_BAD_INPUT
        assert "--idempotency-key" in capsys.readouterr().err
    status, _ = await run_cli("invite", "1000", "--room", ROOM, "--idempotency-key", "ok",
                              "--direct")
    assert status == cli.EXIT_BAD_INPUT
    assert "not with --direct" in capsys.readouterr().err
    status, _ = await run_cli("invite", "1000", "--room", ROOM, "--idempotency-key", "ok",
                              "--socket", absent)
    assert status == cli.EXIT_DAEMON_UNREACHABLE


def test_retention_is_a_setting_with_its_source(tmp_path: Path) -> None:
    config = load_config(None, env={})
    assert config.api.idempotency_retention == 86400.0
    assert re.search(r"idempotency_retention = 86400.0 +# default", render_config(config))
    toml = tmp_path / "c.toml"
    toml.write_text("[api]\nidempotency_retention = 3600\n")
    config = load_config(str(toml), env={})
    assert config.api.idempotency_retention == 3600.0
    assert f"# file:{toml}" in render_config(config)
    config = load_config(str(toml), env={"CONFGUARD_API_IDEMPOTENCY_RETENTION": "120"})
    assert config.api.idempotency_retention == 120.0
    assert "env:CONFGUARD_API_IDEMPOTENCY_RETENTION" in render_config(config)
    status, out = cli_config("--idempotency-retention", "60")
    assert status == 0 and "flag:--idempotency-retention" in out
    from confguard.config import ConfigError

    for bad in ("0", "soon", str(31 * 86400)):
        with pytest.raises(ConfigError) as caught:
            load_config(None, env={"CONFGUARD_API_IDEMPOTENCY_RETENTION": bad})
        assert "api.idempotency_retention" in str(caught.value)
    toml.write_text('[api]\nidempotency_retention = "24h"\n')
    with pytest.raises(ConfigError):
        load_config(str(toml), env={})


def cli_config(*flags: str) -> tuple[int, str]:
    """`confguard serve`'s flags, rendered the way `confguard config` shows them."""
    import io

    args = cli.build_parser().parse_args(["serve", *flags])
    out = io.StringIO()
    print(render_config(cli._load_config(args)), file=out)
    return 0, out.getvalue()


async def test_the_key_survives_a_sigkilled_daemon_process(
    sim_peer: SimPeer, link: GatedLink, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"CONFGUARD_ESL_HOST": "127.0.0.1", "CONFGUARD_ESL_PORT": str(link.port),
           "CONFGUARD_ESL_PASSWORD_FILE": str(sim_peer.password_file)}
    serve = ServeProcess(env, tmp_path)
    argv = ["invite", "1000", "--room", ROOM, "--timeout", "10", "--idempotency-key",
            "restart-1", "--socket", serve.socket]
    await serve.start()
    try:
        first_status, first_out = await run_cli(*argv)
        assert first_status == 0 and f"joined {ROOM}" in first_out
        _, uuid_out = await run_cli(*argv, "--no-wait")
        call_uuid = uuid_out.strip()
        serve.kill()
        capsys.readouterr()
        await serve.start()  # a new process: nothing in memory, the journal only
        second_status, second_out = await run_cli(*argv)
        assert second_status == first_status == 0
        assert f"joined {ROOM}" in second_out  # the finished invite, from the journal
        assert "already used for this request" in capsys.readouterr().err
        status, again = await run_cli(*argv, "--no-wait")
        assert (status, again.strip()) == (0, call_uuid)
        client = ControlClient(serve.socket)
        _, replayed, _ = await client.exchange("POST", "/invites", BODY, [(HEADER, "restart-1")])
        invite_id = replayed["invites"][0]["invite_id"]
        ended = await client.request("GET", f"/invites/{invite_id}")
        assert (ended["uuid"], ended["outcome"], ended["from_journal"]) == (call_uuid, "joined",
                                                                            True)
        with pytest.raises(ApiError) as cancel:
            await client.request("DELETE", f"/invites/{invite_id}")
        assert (cancel.value.status, cancel.value.kind) == (409, "already_ended")
        with pytest.raises(ApiError) as caught:  # still a conflict after the restart
            await ControlClient(serve.socket).exchange(
                "POST", "/invites", {**BODY, "extensions": ["1001"]}, [(HEADER, "restart-1")]
            )
        assert caught.value.status == 409
        assert await originate_count(link, 1) == 1  # across both daemon processes
    finally:
        serve.stop()


# ---------------------------------------------------------------- the real FreeSWITCH


class ChannelCount:
    """A watcher's own ESL connection to the switch: every CHANNEL_CREATE it reports."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.created: list[dict[str, str]] = []
        self._session: EslSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ChannelCount:
        self._session = EslSession(self.peer.settings())
        await self._session.connect()
        await self._session.subscribe(["CHANNEL_CREATE"])
        # the session keeps permanent filters (HEARTBEAT, BACKGROUND_JOB): let ours through too
        await self._session.add_filter("Event-Name", "CHANNEL_CREATE")
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        assert self._session is not None
        async for event in self._session.events():
            if event.name == "CHANNEL_CREATE":
                self.created.append(dict(event.headers))

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._session is not None:
            await self._session.close()

    def outbound_to(self, ext: str) -> list[str]:
        """The uuids of the channels originated to user/<ext> (the a-legs of the calls)."""
        return [h.get("Unique-ID", "") for h in self.created
                if h.get("Call-Direction") == "outbound"
                and h.get("Channel-Name", "").startswith(f"loopback/{ext}-a")]


@pytest.mark.realfs
async def test_real_switch_a_retried_request_places_one_call(
    real_switch: Any, tmp_path: Path
) -> None:
    peer = RealPeer(real_switch)
    await peer.clean()
    relay = EslLink(peer)
    await relay.start()
    running, task = await start_daemon(peer, relay, tmp_path)
    transcript: list[str] = []
    try:
        async with ChannelCount(peer) as channels:
            body = {"extensions": ["1000"], "room": ROOM, "timeout": 15}
            for attempt in (1, 2):
                status, answer, headers = await post(running, body, "real-retry-1")
                transcript.append(f"POST /invites Idempotency-Key: real-retry-1 (attempt "
                                  f"{attempt}) -> {status} "
                                  f"{REPLAYED_HEADER}: {headers.get(REPLAYED_HEADER.lower())} "
                                  f"{json.dumps(answer)}")
                if attempt == 1:  # retried at once, while the call is still being placed
                    first = (status, answer)
            outcome = await outcome_of(running, answer["invites"][0]["invite_id"])
            transcript.append(f"outcome of {answer['invites'][0]['invite_id']}: {outcome}")
            assert outcome == "joined"
            assert (first[0], status) == (201, 200)
            assert answer == first[1]
            call_uuid = answer["invites"][0]["uuid"]
            await asyncio.sleep(1.0)  # a second call, had one been placed, would be up by now
            members = await peer.members(ROOM)
            a_legs = channels.outbound_to("1000")
            transcript.append(f"switch: CHANNEL_CREATE events {len(channels.created)}, "
                              f"outbound a-legs to 1000 {a_legs}")
            transcript.append(f"switch: conference {ROOM} list -> members {members}")
            transcript.append(f"switch: show channels row_count {await peer.channel_count()}")
            transcript.append(f"daemon sent originates: {len(originates(relay))}")
            assert a_legs == [call_uuid]
            assert members == [call_uuid]
            assert await originate_count(relay, 1) == 1
            # the CLI, twice with one key: the same invite followed, the same exit code
            argv = ["invite", "1005", "--room", ROOM, "--timeout", "15", "--idempotency-key",
                    "real-cli-1", "--socket", running.config.api.socket]
            runs = []
            for attempt in (1, 2):
                code, out = await run_cli(*argv)
                runs.append((code, out))
                transcript.append(f"$ confguard {' '.join(argv[:-2])}  (run {attempt}) -> "
                                  f"exit {code}\n{out.rstrip()}")
            await asyncio.sleep(1.0)
            cli_legs = channels.outbound_to("1005")
            transcript.append(f"switch: outbound a-legs to 1005 {cli_legs}; "
                              f"conference {ROOM} list -> {await peer.members(ROOM)}; "
                              f"daemon sent originates: {len(originates(relay))}")
        assert [code for code, _ in runs] == [0, 0]
        assert all(f"joined {ROOM}" in out for _, out in runs)
        [placing] = {line.split("uuid ", 1)[1].rstrip(")") for _, out in runs
                     for line in out.splitlines() if "placing the call" in line}
        assert cli_legs == [placing]
        assert await originate_count(relay, 2) == 2
    finally:
        print("\n".join(transcript))  # the closing note's evidence (pytest -s)
        running.stopping.set()
        await asyncio.wait_for(task, 10)
        await relay.stop()
        await peer.clean()


def test_the_request_hash_covers_every_issue10_field() -> None:
    """A retry that differs in a webhook URL, a route, the time limit or any member flag is
    another request (409), the same one is the same hash; the journal's spec keeps them all
    (a restarted daemon adopts the invite with each)."""
    from dataclasses import replace
    from types import SimpleNamespace

    from confguard.engine import spec_from_journal, spec_to_journal
    from confguard.invite import InviteSpec
    from confguard.routes import DialRoute

    lab = DialRoute("lab", "loopback/{ext}/confguard_callee/XML", ring_timeout=20)
    spec = InviteSpec(extension="1000", room=ROOM, timeout=30, notify=("http://127.0.0.1:9/h",),
                      max_duration=3, muted=True, moderator=True, route=lab)
    assert request_hash([spec]) == request_hash([replace(spec)])
    others = [replace(spec, notify=()), replace(spec, notify=("http://127.0.0.1:9/other",)),
              replace(spec, route=None), replace(spec, route=replace(lab, name="lab2")),
              replace(spec, max_duration=None), replace(spec, max_duration=4),
              *(replace(spec, **{flag: not getattr(spec, flag)})
                for flag in ("muted", "deaf", "moderator", "endconf"))]
    digests = {request_hash([other]) for other in others}
    assert len(digests) == len(others) and request_hash([spec]) not in digests
    saved = json.loads(json.dumps(spec_to_journal(spec)))
    row = SimpleNamespace(detail={"spec": saved}, ext="1000", room=ROOM, timeout=30)
    assert spec_from_journal(row) == spec
