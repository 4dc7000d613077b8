"""End to end: the `confguard` CLI -> the daemon's control socket -> engine -> ESL -> simulator.

The daemon runs in the test's event loop; each CLI call runs `confguard.cli.main` in a thread with
its own loop, exactly as the console script would. The simulator runs at time scale 0.1 (one
simulated second = 0.1 s), so a 10 s invite window takes one real second. After every invite the
test asks the simulator directly that nothing of the call is left: no task in its group.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from confguard import cli
from confguard.config import load_config
from confguard.daemon import Daemon
from confguard.sim import SimConfig


@pytest.fixture
def sim_config() -> SimConfig:
    return SimConfig(host="127.0.0.1", port=0, time_scale=0.1, heartbeat_interval=20.0)


@pytest.fixture
async def daemon(sim, tmp_path: Path) -> AsyncIterator[Daemon]:  # type: ignore[no-untyped-def]
    running, task = await start_daemon(sim, tmp_path)
    try:
        yield running
    finally:
        running.stopping.set()
        await asyncio.wait_for(task, 10)


async def start_daemon(sim, tmp_path: Path) -> tuple[Daemon, asyncio.Task[int]]:  # type: ignore[no-untyped-def]
    """A daemon on the simulator, its socket and journal in `tmp_path` (kept across restarts)."""
    config = load_config(
        None,
        env={},
        overrides={
            "esl.host": "127.0.0.1",
            "esl.port": sim.port,
            "api.socket": str(tmp_path / "confguard.sock"),
            "journal.path": str(tmp_path / "journal.sqlite3"),
            "invite.prompt": "tone_stream://%(200,100,440)",
        },
    )
    running = Daemon(config, handle_signals=False)
    task = asyncio.create_task(running.run())
    await asyncio.wait_for(running.linked.wait(), 10)
    return running, task


async def wait_state(daemon: Daemon, call_uuid: str, state: str) -> None:
    for _ in range(200):
        if daemon.engine.get(call_uuid).machine.state == state:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{call_uuid} never reached {state}")


async def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = await asyncio.to_thread(cli.main, list(argv), out)
    return code, out.getvalue()


def socket_of(daemon: Daemon) -> str:
    return str(daemon.config.api.socket)


async def tasks_of(sim, call_uuid: str) -> list[dict]:  # type: ignore[no-untyped-def]
    reply = await sim.switch.api("show tasks as json")
    rows = json.loads(reply).get("rows", [])
    return [row for row in rows if row.get("task_group") == call_uuid]


async def assert_nothing_left(sim, daemon: Daemon, call_uuid: str) -> None:  # type: ignore[no-untyped-def]
    for _ in range(50):  # the engine's worker sends the last filter deletions, then forgets
        if not daemon.engine.active():
            break
        await asyncio.sleep(0.05)
    assert daemon.engine.active() == []
    await asyncio.sleep(0.3)  # show tasks reads a mirror that lags up to 0.2 s (FACTS.md)
    assert await tasks_of(sim, call_uuid) == []


SCENARIOS = [
    # ext, extra flags, outcome, exit code
    ("1000", [], "joined", 0),
    ("1005", [], "joined", 0),  # presses 2 first (ignored), then 1
    ("1001", [], "timeout", 10),
    ("1007", ["--decline-key", "9"], "declined", 11),
    ("1006", [], "hung_up", 12),
    ("1002", [], "busy", 13),
    ("1004", ["--ring-timeout", "3"], "no_answer", 14),
    ("1003", [], "rejected", 15),
    ("4242", [], "unreachable", 16),
]


@pytest.mark.parametrize(("ext", "flags", "outcome", "code"), SCENARIOS)
async def test_every_outcome_through_the_cli(sim, daemon, ext, flags, outcome, code) -> None:  # type: ignore[no-untyped-def]
    status, out = await run_cli(
        "invite", ext, "--room", "test1", "--timeout", "10", "--json",
        "--socket", socket_of(daemon), *flags,
    )
    updates = [json.loads(line) for line in out.splitlines()]
    assert updates, "no progress printed"
    assert updates[0]["state"] == "placing"
    assert updates[-1]["outcome"] == outcome, updates
    assert status == code
    assert [u for u in updates if u.get("outcome")] == [updates[-1]]  # exactly one outcome
    await assert_nothing_left(sim, daemon, updates[0]["uuid"])


async def test_joined_callee_is_in_the_conference(sim, daemon) -> None:  # type: ignore[no-untyped-def]
    status, out = await run_cli(
        "invite", "1000", "--room", "test1", "--timeout", "10", "--socket", socket_of(daemon)
    )
    assert status == 0, out
    assert "joined test1" in out
    members = await sim.switch.api("conference test1 list")
    assert ";" in members  # one member line: the invited call
    states = [line.split("  ", 1)[1] for line in out.splitlines()]
    assert states[0].startswith("placing the call")
    assert any(s.startswith("answered, waiting for the key") for s in states)


async def test_several_extensions_in_parallel(sim, daemon) -> None:  # type: ignore[no-untyped-def]
    status, out = await run_cli(
        "invite", "1008", "1001", "1009", "--room", "test1", "--timeout", "8", "--json",
        "--socket", socket_of(daemon),
    )
    finals = {
        u["ext"]: u["outcome"] for u in map(json.loads, out.splitlines()) if u.get("outcome")
    }
    assert finals == {"1008": "joined", "1001": "timeout", "1009": "joined"}
    assert status == 10  # the first extension that did not join decides


async def test_no_wait_prints_the_uuid_and_cancel_ends_it(sim, daemon) -> None:  # type: ignore[no-untyped-def]
    status, out = await run_cli(
        "invite", "1001", "--room", "test1", "--timeout", "30", "--no-wait",
        "--socket", socket_of(daemon),
    )
    assert status == 0
    call_uuid = out.strip()
    assert len(call_uuid) == 36
    await wait_state(daemon, call_uuid, "waiting_key")
    status, _ = await run_cli("cancel", call_uuid, "--socket", socket_of(daemon))
    assert status == 0
    run = daemon.engine.get(call_uuid)
    assert run.final is not None
    final = await asyncio.wait_for(asyncio.shield(run.final), 5)
    assert final["outcome"] == "cancelled"
    assert (await sim.switch.api(f"uuid_exists {call_uuid}")) == "false"
    await assert_nothing_left(sim, daemon, call_uuid)


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
async def test_bad_input_exits_2_and_sends_nothing(sim, daemon, argv, field, capsys) -> None:  # type: ignore[no-untyped-def]
    before = await sim.switch.api("show channels as json")
    status, out = await run_cli(*argv, "--socket", socket_of(daemon))
    assert status == cli.EXIT_BAD_INPUT
    assert out == ""  # no progress: nothing was placed
    assert field in capsys.readouterr().err
    assert daemon.engine.active() == []
    assert await sim.switch.api("show channels as json") == before


async def test_daemon_unreachable_says_how_to_start_it(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    status, _ = await run_cli(
        "invite", "1000", "--room", "test1", "--socket", str(tmp_path / "absent.sock")
    )
    assert status == cli.EXIT_DAEMON_UNREACHABLE
    err = capsys.readouterr().err
    assert "confguard serve" in err and "--direct" in err


async def test_direct_mode_without_a_daemon(sim) -> None:  # type: ignore[no-untyped-def]
    status, out = await run_cli(
        "invite", "1000", "--room", "test1", "--timeout", "10", "--direct",
        "--esl-host", "127.0.0.1", "--esl-port", str(sim.port),
    )
    assert status == 0, out
    assert "joined test1" in out


async def test_status_lists_active_invites(sim, daemon) -> None:  # type: ignore[no-untyped-def]
    status, out = await run_cli(
        "invite", "1001", "--room", "test1", "--timeout", "30", "--no-wait",
        "--socket", socket_of(daemon),
    )
    call_uuid = out.strip()
    status, out = await run_cli("status", "--json", "--socket", socket_of(daemon))
    assert status == 0
    report = json.loads(out)
    assert report["esl"]["connected"] is True
    assert [row["uuid"] for row in report["invites"]] == [call_uuid]
    status, out = await run_cli("status", "--socket", socket_of(daemon))
    assert call_uuid in out and "1001" in out and "connected" in out
    daemon.engine.cancel(call_uuid)


async def test_switch_restart_mid_call_ends_lost(sim, daemon) -> None:  # type: ignore[no-untyped-def]
    status, out = await run_cli(
        "invite", "1001", "--room", "test1", "--timeout", "30", "--no-wait",
        "--socket", socket_of(daemon),
    )
    assert status == 0
    call_uuid = out.strip()
    run = daemon.engine.get(call_uuid)
    await wait_state(daemon, call_uuid, "waiting_key")
    sim.faults.restart()
    assert run.final is not None
    final = await asyncio.wait_for(asyncio.shield(run.final), 15)
    assert final["outcome"] == "lost"


async def test_restarted_daemon_adopts_a_waiting_call_and_joins_it(sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    first, first_task = await start_daemon(sim, tmp_path)
    # The callee answers after 1 s and presses 1 only 20 simulated seconds later (2 s real).
    status, out = await run_cli(
        "invite", "1001", "--room", "test1", "--timeout", "60", "--no-wait",
        "--var", "sim_dtmf=1@20", "--socket", socket_of(first),
    )
    assert status == 0
    call_uuid = out.strip()
    await wait_state(first, call_uuid, "waiting_key")
    first.stopping.set()  # SIGTERM: the call stays up, bounded by its FreeSWITCH timer
    assert await asyncio.wait_for(first_task, 10) == 0
    assert await tasks_of(sim, call_uuid), "the FreeSWITCH timer must outlive the daemon"

    second, second_task = await start_daemon(sim, tmp_path)
    try:
        run = second.engine.get(call_uuid)  # adopted from the journal
        assert run.final is not None
        final = await asyncio.wait_for(asyncio.shield(run.final), 10)
        assert final["outcome"] == "joined"
        assert call_uuid in await sim.switch.api("conference test1 list")
        await asyncio.sleep(0.3)
        assert await tasks_of(sim, call_uuid) == []  # both timers (ours and the adopted) deleted
        rows = second.journal.history(ext="1001")
        assert [(r.call_uuid, r.outcome) for r in rows] == [(call_uuid, "joined")]
    finally:
        second.stopping.set()
        await asyncio.wait_for(second_task, 10)


async def test_restarted_daemon_finds_a_vanished_call_lost(sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    first, first_task = await start_daemon(sim, tmp_path)
    status, out = await run_cli(
        "invite", "1001", "--room", "test1", "--timeout", "60", "--no-wait",
        "--socket", socket_of(first),
    )
    assert status == 0
    call_uuid = out.strip()
    await wait_state(first, call_uuid, "waiting_key")
    first.stopping.set()
    await asyncio.wait_for(first_task, 10)
    assert (await sim.switch.api(f"uuid_kill {call_uuid}")).startswith("+OK")

    second, second_task = await start_daemon(sim, tmp_path)
    try:
        run = second.engine.get(call_uuid)
        assert run.final is not None
        final = await asyncio.wait_for(asyncio.shield(run.final), 10)
        assert final["outcome"] == "lost"
        assert second.journal.active() == []
    finally:
        second.stopping.set()
        await asyncio.wait_for(second_task, 10)


async def test_join_target_missing_is_failed(sim, daemon) -> None:  # type: ignore[no-untyped-def]
    status, out = await run_cli(
        "invite", "1000", "--room", "test1", "--timeout", "10", "--json",
        "--join", "9999 default", "--socket", socket_of(daemon),
    )
    updates = [json.loads(line) for line in out.splitlines()]
    assert updates[-1]["outcome"] == "failed", updates[-1]
    assert status == cli.OUTCOME_EXIT["failed"]
    await assert_nothing_left(sim, daemon, updates[0]["uuid"])


async def test_cli_says_so_when_the_daemon_stops_before_the_outcome(sim, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    running, task = await start_daemon(sim, tmp_path)
    cli_run = asyncio.create_task(run_cli(
        "invite", "1001", "--room", "test1", "--timeout", "60", "--socket", socket_of(running)
    ))
    for _ in range(200):
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
