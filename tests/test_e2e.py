"""End to end, on both peers: the `confguard` CLI -> the daemon -> ESL -> FreeSWITCH.

Every scenario runs twice from one parametrised test, with the same assertions: against the
simulator (`sim`, time scale 0.1) and against a real FreeSWITCH (`real`, marked `realfs`; see
conftest.py for which one and how it is configured). Times are written in peer seconds through
`peer.secs(real_seconds)`, so a scenario waits as long, in real time, on both.

The daemon runs in the test's event loop (or, where it must be killed, as a `confguard serve`
process) and reaches the peer through an `EslLink` relay that can cut the connection and keeps
what crossed it. Each CLI call runs `confguard.cli.main` in a thread with its own loop, as the
console script would. The checks ask the peer itself: the outcome and exit code; exactly one
outcome; no task of the call left (`show tasks`); joined ⇔ the call is listed by
`conference <room> list`; and, when the daemon is gone, the call still ends by its own timer.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from peers import EslLink, Peer, start_daemon

from confguard import cli
from confguard.daemon import Daemon

ROOM = "test1"


@pytest.fixture
def esl_env(peer: Peer, link: EslLink, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """What a `confguard` process (or the CLI in --direct / check mode) needs to reach the peer."""
    env = {
        "CONFGUARD_ESL_HOST": "127.0.0.1",
        "CONFGUARD_ESL_PORT": str(link.port),
        "CONFGUARD_ESL_PASSWORD_FILE": str(peer.password_file),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
async def daemon(peer: Peer, link: EslLink, tmp_path: Path) -> AsyncIterator[Daemon]:
    running, task = await start_daemon(peer, link, tmp_path)
    try:
        yield running
    finally:
        running.stopping.set()
        await asyncio.wait_for(task, 10)


async def wait_state(daemon: Daemon, call_uuid: str, state: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if daemon.engine.get(call_uuid).machine.state == state:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{call_uuid} never reached {state}")


async def final_of(daemon: Daemon, call_uuid: str, seconds: float) -> dict:  # type: ignore[type-arg]
    run = daemon.engine.get(call_uuid)
    return await asyncio.wait_for(asyncio.shield(run.final_update()), seconds)


async def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = await asyncio.to_thread(cli.main, list(argv), out)
    return code, out.getvalue()


def socket_of(daemon: Daemon) -> str:
    return str(daemon.config.api.socket)


async def invite(daemon: Daemon, *argv: str) -> tuple[int, list[dict]]:  # type: ignore[type-arg]
    """`confguard invite ... --json`: exit code and every progress update."""
    status, out = await run_cli("invite", *argv, "--json", "--socket", socket_of(daemon))
    return status, [json.loads(line) for line in out.splitlines()]


async def no_wait(daemon: Daemon, *argv: str) -> str:
    status, out = await run_cli("invite", *argv, "--no-wait", "--socket", socket_of(daemon))
    assert status == 0, out
    return out.strip()


async def until_idle(daemon: Daemon) -> None:
    """Wait (up to 2.5 s) until the engine forgot every invite: after an outcome its worker
    still sends the call's last filter deletions."""
    for _ in range(50):
        if not daemon.engine.active():
            return
        await asyncio.sleep(0.05)


async def assert_settled(peer: Peer, daemon: Daemon | None, call_uuid: str, outcome: str) -> None:
    """Nothing of the call left in the daemon or the switch; joined ⇔ a member of the room."""
    if daemon is not None:
        await until_idle(daemon)
        assert daemon.engine.active() == []
    assert await peer.no_task_left(call_uuid), await peer.tasks_of(call_uuid)
    members = await peer.members(ROOM)
    assert (call_uuid in members) == (outcome == "joined"), (outcome, members)
    if outcome != "joined":
        assert not await peer.exists(call_uuid)


# ext, extra flags (peer seconds), outcome, exit code. The default callees answer at 1 s and
# press at 3 s at the latest; with --timeout 10 the timer (4..5.5 s for +5, FACTS.md) is far off,
# except for the silent 1001, whose timer is the outcome.
OUTCOMES = [
    ("1000", [], "joined", 0),
    ("1005", [], "joined", 0),  # presses 2 first (ignored), then 1
    ("1001", ["--timeout", "4"], "timeout", 10),
    ("1007", ["--decline-key", "9"], "declined", 11),
    ("1006", [], "hung_up", 12),
    ("1002", [], "busy", 13),
    ("1004", ["--ring-timeout", "2"], "no_answer", 14),
    ("1003", [], "rejected", 15),
    ("4242", [], "unreachable", 16),
]


@pytest.mark.parametrize(("ext", "flags", "outcome", "code"), OUTCOMES)
async def test_every_outcome_through_the_cli(peer, daemon, ext, flags, outcome, code) -> None:  # type: ignore[no-untyped-def]
    status, updates = await invite(daemon, ext, "--room", ROOM, "--timeout", "10", *flags)
    assert updates, "no progress printed"
    assert updates[0]["state"] == "placing"
    assert updates[-1]["outcome"] == outcome, updates
    assert status == code
    assert [u for u in updates if u.get("outcome")] == [updates[-1]]  # exactly one outcome
    await assert_settled(peer, daemon, updates[0]["uuid"], outcome)


async def test_joined_callee_is_in_the_conference(peer, daemon) -> None:  # type: ignore[no-untyped-def]
    status, out = await run_cli(
        "invite", "1000", "--room", ROOM, "--timeout", "10", "--socket", socket_of(daemon)
    )
    assert status == 0, out
    assert f"joined {ROOM}" in out
    states = [line.split("  ", 1)[1] for line in out.splitlines()]
    assert states[0].startswith("placing the call")
    assert any(s.startswith("answered, waiting for the key") for s in states)
    assert len(await peer.members(ROOM)) == 1


async def test_dialplan_join(peer, daemon) -> None:  # type: ignore[no-untyped-def]
    """--join '7001 default': the dialplan extension puts the call into test1."""
    status, updates = await invite(
        daemon, "1000", "--room", ROOM, "--timeout", "10", "--join", "7001 default"
    )
    assert status == 0, updates
    assert updates[-1]["outcome"] == "joined"
    await assert_settled(peer, daemon, updates[0]["uuid"], "joined")


async def test_join_target_missing_is_failed(peer, daemon) -> None:  # type: ignore[no-untyped-def]
    status, updates = await invite(
        daemon, "1000", "--room", ROOM, "--timeout", "10", "--join", "9999 default"
    )
    assert updates[-1]["outcome"] == "failed", updates[-1]
    assert status == cli.OUTCOME_EXIT["failed"]
    await assert_settled(peer, daemon, updates[0]["uuid"], "failed")


async def test_prompt_is_played_by_freeswitch_until_the_key(peer, daemon, link) -> None:  # type: ignore[no-untyped-def]
    """The originate hands the whole wait to FreeSWITCH (build_waiting_app): the prompt loop,
    the key, the timers' cancel and the join. The daemon sends nothing for the call but its
    filters and the originate -- no uuid_broadcast, no sched_hangup/sched_del, no uuid_transfer
    -- and the key pressed 1.5 s after the answer, inside the loop, joins the callee."""
    prompt = "tone_stream://%(100,100,350)"
    status, updates = await invite(
        daemon, "1000", "--room", ROOM, "--timeout", "10", "--prompt", prompt
    )
    assert status == 0
    call_uuid = updates[0]["uuid"]
    originates = [cmd for cmd in link.commands() if f"origination_uuid={call_uuid}," in cmd]
    assert len(originates) == 1, link.commands()
    assert originates[0].endswith(
        f"}}user/1000 'm:~:sched_hangup:+10 ALLOTTED_TIMEOUT~play_and_get_digits:1 1 11 5000 # "
        f"{prompt} silence_stream://250 confguard_key ^[1]$ 5000 park inline"
        f"~sched_cancel~conference:{ROOM}' inline"
    )
    sent_for_call = [
        cmd.split(" ", 2)[1] for cmd in link.commands()
        if cmd.startswith("api ") and call_uuid in cmd
    ]
    assert not set(sent_for_call) & {"uuid_broadcast", "sched_hangup", "sched_del",
                                      "uuid_transfer"}, sent_for_call
    await assert_settled(peer, daemon, call_uuid, "joined")


async def test_several_extensions_at_once(peer, daemon) -> None:  # type: ignore[no-untyped-def]
    status, updates = await invite(
        daemon, "1008", "1001", "1009", "--room", ROOM, "--timeout", "6"
    )
    finals = {u["ext"]: (u["outcome"], u["uuid"]) for u in updates if u.get("outcome")}
    assert {ext: o for ext, (o, _) in finals.items()} == {
        "1008": "joined", "1001": "timeout", "1009": "joined"
    }
    assert status == 10  # the first extension that did not join decides
    for outcome, call_uuid in finals.values():
        await assert_settled(peer, daemon, call_uuid, outcome)


async def test_no_wait_prints_the_uuid_and_cancel_ends_it(peer, daemon) -> None:  # type: ignore[no-untyped-def]
    call_uuid = await no_wait(daemon, "1001", "--room", ROOM, "--timeout", "30")
    assert len(call_uuid) == 36
    await wait_state(daemon, call_uuid, "waiting_key")
    status, _ = await run_cli("cancel", call_uuid, "--socket", socket_of(daemon))
    assert status == 0
    final = await final_of(daemon, call_uuid, 5)
    assert final["outcome"] == "cancelled"
    await assert_settled(peer, daemon, call_uuid, "cancelled")


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["invite", "1000\n", "--room", "test1"], "extension"),
        (["invite", "1000", "--room", "test1}"], "room"),
        (["invite", "1000", "--room", "test1", "--timeout", "0"], "timeout"),
        (["invite", "1000", "--room", "test1", "--key", "x"], "key"),
        (["invite", "1000", "--room", "test1", "--prompt", "a b"], "prompt"),
        (["invite", "1000", "--room", "test1", "--var", "api_on_answer=x"], "variables"),
        (["invite", "1000", "--room", "test1", "--caller-id-name", "a,b"], "caller_id_name"),
    ],
)
async def test_bad_input_exits_2_and_sends_nothing(peer, daemon, link, argv, field, capsys) -> None:  # type: ignore[no-untyped-def]
    sent_before = list(link.commands())
    status, out = await run_cli(*argv, "--socket", socket_of(daemon))
    assert status == cli.EXIT_BAD_INPUT
    assert out == ""  # no progress: nothing was placed
    assert field in capsys.readouterr().err
    assert daemon.engine.active() == []
    assert link.commands() == sent_before  # not one byte more went to the switch
    assert await peer.channel_count() == 0


async def test_daemon_unreachable_says_how_to_start_it(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    status, _ = await run_cli(
        "invite", "1000", "--room", "test1", "--socket", str(tmp_path / "absent.sock")
    )
    assert status == cli.EXIT_DAEMON_UNREACHABLE
    err = capsys.readouterr().err
    assert "confguard serve" in err and "--direct" in err


async def test_direct_mode_without_a_daemon(peer, link, esl_env) -> None:  # type: ignore[no-untyped-def]
    status, out = await run_cli(
        "invite", "1000", "--room", ROOM, "--timeout", "10", "--direct", "--json"
    )
    updates = [json.loads(line) for line in out.splitlines()]
    assert status == 0, out
    assert updates[-1]["outcome"] == "joined"
    await assert_settled(peer, None, updates[0]["uuid"], "joined")


async def test_check_reports_what_the_switch_offers(peer, link, esl_env) -> None:  # type: ignore[no-untyped-def]
    status, out = await run_cli("check")
    assert status == 0, out
    assert "✓ password accepted" in out
    assert "✓ mod_conference loaded" in out
    assert "✓ conference profile default: defined in conference.conf" in out  # xml_locate
    assert " 0 failed, 0 cannot tell" in out


async def test_status_lists_active_invites(peer, daemon) -> None:  # type: ignore[no-untyped-def]
    call_uuid = await no_wait(daemon, "1001", "--room", ROOM, "--timeout", "30")
    status, out = await run_cli("status", "--json", "--socket", socket_of(daemon))
    assert status == 0
    report = json.loads(out)
    assert report["esl"]["connected"] is True
    assert [row["uuid"] for row in report["invites"]] == [call_uuid]
    status, out = await run_cli("status", "--socket", socket_of(daemon))
    assert call_uuid in out and "1001" in out and "connected" in out
    daemon.engine.cancel(call_uuid)
    assert (await final_of(daemon, call_uuid, 5))["outcome"] == "cancelled"


async def test_esl_link_cut_while_waiting_still_joins(peer, daemon, link) -> None:  # type: ignore[no-untyped-def]
    # The callee presses 1 three real seconds after answering; the link is cut before that.
    call_uuid = await no_wait(
        daemon, "1001", "--room", ROOM, "--timeout", str(peer.secs(10)),
        "--var", f"sim_dtmf=1@{peer.secs(3)}",
    )
    await wait_state(daemon, call_uuid, "waiting_key")
    link.cut()
    final = await final_of(daemon, call_uuid, 15)
    assert final["outcome"] == "joined", final
    assert link.connection_count >= 2  # the daemon came back through the relay
    await assert_settled(peer, daemon, call_uuid, "joined")


async def test_switch_vanishing_mid_call_ends_lost(peer, daemon) -> None:  # type: ignore[no-untyped-def]
    """The switch process dies (no events at all) and comes back empty: `lost`."""
    call_uuid = await no_wait(daemon, "1001", "--room", ROOM, "--timeout", "30")
    await wait_state(daemon, call_uuid, "waiting_key")
    await peer.vanish()
    final = await final_of(daemon, call_uuid, 20)
    assert final["outcome"] == "lost"
    await assert_settled(peer, daemon, call_uuid, "lost")


async def test_switch_shutdown_and_start_again(peer, daemon) -> None:  # type: ignore[no-untyped-def]
    """`fsctl shutdown` hangs the waiting call up (SYSTEM_SHUTDOWN); once the switch is back,
    the same daemon places and joins the next invite."""
    call_uuid = await no_wait(daemon, "1001", "--room", ROOM, "--timeout", "30")
    await wait_state(daemon, call_uuid, "waiting_key")
    await peer.shutdown_and_start()
    final = await final_of(daemon, call_uuid, 20)
    assert (final["outcome"], final.get("cause")) == ("failed", "SYSTEM_SHUTDOWN"), final
    await assert_settled(peer, daemon, call_uuid, "failed")
    for _ in range(200):
        if daemon.engine.session.connected:
            break
        await asyncio.sleep(0.05)
    status, updates = await invite(daemon, "1000", "--room", ROOM, "--timeout", "10")
    assert (status, updates[-1]["outcome"]) == (0, "joined"), updates
    await assert_settled(peer, daemon, updates[0]["uuid"], "joined")


async def test_restarted_daemon_adopts_a_waiting_call_and_joins_it(peer, link, tmp_path) -> None:  # type: ignore[no-untyped-def]
    first, first_task = await start_daemon(peer, link, tmp_path)
    # The callee answers after 1 s and presses 1 four real seconds later.
    call_uuid = await no_wait(
        first, "1001", "--room", ROOM, "--timeout", str(peer.secs(15)),
        "--var", f"sim_dtmf=1@{peer.secs(4)}",
    )
    await wait_state(first, call_uuid, "waiting_key")
    first.stopping.set()  # SIGTERM: the call stays up, bounded by its FreeSWITCH timer
    assert await asyncio.wait_for(first_task, 10) == 0
    assert await peer.tasks_of(call_uuid), "the FreeSWITCH timer must outlive the daemon"

    second, second_task = await start_daemon(peer, link, tmp_path)
    try:
        final = await final_of(second, call_uuid, 15)  # adopted from the journal
        assert final["outcome"] == "joined"
        await assert_settled(peer, second, call_uuid, "joined")  # every timer of the call gone
        rows = second.journal.history(ext="1001")
        assert [(r.call_uuid, r.outcome) for r in rows] == [(call_uuid, "joined")]
    finally:
        second.stopping.set()
        await asyncio.wait_for(second_task, 10)


async def test_restarted_daemon_finds_a_vanished_call_lost(peer, link, tmp_path) -> None:  # type: ignore[no-untyped-def]
    first, first_task = await start_daemon(peer, link, tmp_path)
    call_uuid = await no_wait(first, "1001", "--room", ROOM, "--timeout", "60")
    await wait_state(first, call_uuid, "waiting_key")
    first.stopping.set()
    await asyncio.wait_for(first_task, 10)
    assert (await peer.api(f"uuid_kill {call_uuid}")).startswith("+OK")

    second, second_task = await start_daemon(peer, link, tmp_path)
    try:
        final = await final_of(second, call_uuid, 10)
        assert final["outcome"] == "lost"
        assert second.journal.active() == []
        await assert_settled(peer, second, call_uuid, "lost")
    finally:
        second.stopping.set()
        await asyncio.wait_for(second_task, 10)


async def test_cli_says_so_when_the_daemon_stops_before_the_outcome(  # type: ignore[no-untyped-def]
    peer, link, tmp_path, capsys
) -> None:
    running, task = await start_daemon(peer, link, tmp_path)
    cli_run = asyncio.create_task(run_cli(
        "invite", "1001", "--room", ROOM, "--timeout", "60", "--socket", socket_of(running)
    ))
    for _ in range(300):
        if running.engine.active() and running.engine.active()[0]["state"] == "waiting_key":
            break
        await asyncio.sleep(0.02)
    running.stopping.set()
    await asyncio.wait_for(task, 10)
    status, out = await asyncio.wait_for(cli_run, 10)
    assert status == cli.EXIT_DAEMON_UNREACHABLE
    assert "answered, waiting for the key" in out
    err = capsys.readouterr().err
    assert "stopped reporting before the outcome" in err and "confguard history" in err
    await peer.clean()


# ----------------------------------------------------------------- the daemon as a process


class ServeProcess:
    """`confguard serve` as its own process (so that it can be SIGKILLed)."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = {
            **os.environ, **env,
            "CONFGUARD_CONFIG": str(workdir / "none.toml"),
            "CONFGUARD_API_SOCKET": str(workdir / "serve.sock"),
            "CONFGUARD_JOURNAL_PATH": str(workdir / "serve-journal.sqlite3"),
            "CONFGUARD_ESL_RECONNECT_INITIAL": "0.2",
            "CONFGUARD_LOG_FORMAT": "json",
        }
        (workdir / "none.toml").write_text("# everything from the environment\n")
        self.log = workdir / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> str:
        return self.env["CONFGUARD_API_SOCKET"]

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "confguard.cli", "serve"], env=self.env,
                stdout=log, stderr=subprocess.STDOUT,
            )
        for _ in range(300):
            status, out = await run_cli("status", "--json", "--socket", self.socket)
            if status == 0 and json.loads(out)["esl"]["connected"]:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("confguard serve did not come up:\n" + self.log.read_text())

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def test_sigkilled_daemon_leaves_the_call_bounded_by_its_timer(  # type: ignore[no-untyped-def]
    peer, esl_env, tmp_path
) -> None:
    serve = ServeProcess(esl_env, tmp_path)
    await serve.start()
    try:
        timeout = peer.secs(4)
        status, out = await run_cli(
            "invite", "1001", "--room", ROOM, "--timeout", str(timeout), "--no-wait",
            "--socket", serve.socket,
        )
        assert status == 0, out
        call_uuid = out.strip()
        placed = time.monotonic()
        async with peer.watch(call_uuid) as watcher:
            for _ in range(300):
                _, report = await run_cli("status", "--json", "--socket", serve.socket)
                if [r["state"] for r in json.loads(report)["invites"]] == ["waiting_key"]:
                    break
                await asyncio.sleep(0.05)
            serve.kill()  # nobody is left to watch the call: FreeSWITCH's timer ends it
            cause = await watcher.hangup(within=peer.real(timeout) + 3)
        assert cause == "ALLOTTED_TIMEOUT"
        assert watcher.at is not None
        # The timer's own moment (N-1 .. N+0.5 s after it was armed, FACTS.md), well after the kill.
        assert watcher.at - placed >= peer.real(timeout - 2)
        await serve.start()  # the restarted daemon finds the call gone: one outcome, `lost`
        for _ in range(200):
            status, out = await run_cli("history", "--json", "--journal",
                                        serve.env["CONFGUARD_JOURNAL_PATH"])
            rows = [json.loads(line) for line in out.splitlines()]
            if rows and rows[0].get("outcome"):
                break
            await asyncio.sleep(0.05)
        assert [(r["call_uuid"], r["outcome"]) for r in rows] == [(call_uuid, "lost")], rows
        assert await peer.no_task_left(call_uuid)
    finally:
        serve.stop()
