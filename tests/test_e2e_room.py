"""In the room, end to end on both peers (the simulator and, marked `realfs`, a real FreeSWITCH):
the member's time limit (`--max-duration`), its flags (`--muted --deaf --moderator --endconf`),
and what history records of its stay -- through the CLI, the daemon and ESL, with the same
assertions on both (see test_e2e.py for the set-up; times are written in real seconds)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import test_e2e
from peers import EslLink, Peer, start_daemon
from test_e2e import ROOM, invite, run_cli, socket_of

from confguard.daemon import Daemon

# test_e2e's daemon on the relay to the peer (the relay, `link`, is conftest's).
daemon = test_e2e.daemon


async def member_line(peer: Peer, call_uuid: str) -> list[str]:
    """The call's row in `conference <room> list` (id;name;uuid;cid name;cid number;flags;...)."""
    reply = await peer.api(f"conference {ROOM} list")
    rows = [line.split(";") for line in reply.splitlines() if call_uuid in line]
    assert len(rows) == 1, reply
    return rows[0]


async def member_json(peer: Peer, call_uuid: str) -> dict:  # type: ignore[type-arg]
    [conference] = json.loads(await peer.api(f"conference {ROOM} json_list"))
    [member] = [m for m in conference["members"] if m["uuid"] == call_uuid]
    return member  # type: ignore[no-any-return]


async def left_row(daemon: Daemon, invite_id: str, seconds: float):  # type: ignore[no-untyped-def]
    """The journal row once its member's leaving is recorded."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        row = daemon.journal.get(invite_id)
        if row is not None and row.left_at is not None:
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"{invite_id}: no left_at after {seconds} s")


async def one_task(peer: Peer, call_uuid: str) -> list[dict[str, str]]:
    """The call's tasks once `show tasks` (a mirror that lags, FACTS.md) lists one or none."""
    deadline = time.monotonic() + 3.0
    tasks = await peer.tasks_of(call_uuid)
    while len(tasks) > 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        tasks = await peer.tasks_of(call_uuid)
    return tasks


async def gone(peer: Peer, call_uuid: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not await peer.exists(call_uuid):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_the_time_limit_hangs_the_member_up_inside_freeswitch_and_history_says_why(
    peer: Peer, daemon: Daemon
) -> None:
    limit = peer.secs(3)
    status, updates = await invite(
        daemon, "1000", "--room", ROOM, "--timeout", str(peer.secs(10)),
        "--max-duration", str(limit), "--muted", "--moderator",
    )
    assert (status, updates[-1]["outcome"]) == (0, "joined"), updates
    call_uuid, invite_id = updates[0]["uuid"], updates[0]["invite_id"]
    # In the room with its flags, and exactly one hangup task: the time limit's.
    fields = await member_line(peer, call_uuid)
    assert "speak" not in fields[5].split("|") and "moderator" in fields[5].split("|")
    assert "hear" in fields[5].split("|")
    flags = (await member_json(peer, call_uuid))["flags"]
    assert (flags["can_speak"], flags["can_hear"], flags["is_moderator"]) == (False, True, True)
    assert flags["end_conference"] is False
    tasks = await one_task(peer, call_uuid)
    assert [t["task_desc"] for t in tasks] == ["switch_ivr_schedule_hangup"], tasks
    # `status` lists the member with its flags and limit.
    code, out = await run_cli("status", "--json", "--socket", socket_of(daemon))
    assert code == 0
    [row] = [m for m in json.loads(out)["members"] if m["uuid"] == call_uuid]
    assert row["flags"] == ["muted", "moderator"] and row["max_duration"] == limit
    # FreeSWITCH's own timer ends the stay; confguard only records it.
    assert await gone(peer, call_uuid, peer.real(limit) + 5), "the time limit never fired"
    record = await left_row(daemon, invite_id, 5)
    assert (record.outcome, record.left_reason, record.left_cause) == (
        "joined", "max_duration", "ALLOTTED_TIMEOUT"
    )
    assert record.joined_at is not None
    # FreeSWITCH's scheduler has whole-second runtimes: it fires within a second of the limit.
    assert peer.real(limit - 1) <= record.left_at - record.joined_at
    assert record.detail["spec"]["muted"] is True and record.detail["spec"]["moderator"] is True
    code, out = await run_cli("history", "--journal", str(daemon.config.journal.path))
    assert code == 0 and "max_duration (ALLOTTED_TIMEOUT) [muted,moderator]" in out, out
    code, out = await run_cli("status", "--json", "--socket", socket_of(daemon))
    assert call_uuid not in [m["uuid"] for m in json.loads(out)["members"]]


async def test_an_endconf_member_leaving_ends_the_conference_for_the_others(
    peer: Peer, daemon: Daemon
) -> None:
    timeout = str(peer.secs(10))
    status, first = await invite(daemon, "1000", "--room", ROOM, "--timeout", timeout, "--deaf")
    assert (status, first[-1]["outcome"]) == (0, "joined"), first
    status, second = await invite(
        daemon, "1000", "--room", ROOM, "--timeout", timeout, "--endconf",
        "--max-duration", str(peer.secs(2)),
    )
    assert (status, second[-1]["outcome"]) == (0, "joined"), second
    plain, ender = first[0]["uuid"], second[0]["uuid"]
    assert (await member_json(peer, plain))["flags"]["can_hear"] is False
    assert (await member_json(peer, ender))["flags"]["end_conference"] is True
    assert "hear" not in (await member_line(peer, plain))[5].split("|")
    # The endconf member's limit ends it, and with it the conference: the other is hung up.
    assert await gone(peer, ender, peer.real(peer.secs(2)) + 5)
    assert await gone(peer, plain, 5), "the conference did not end with its endconf member"
    ended = await left_row(daemon, second[0]["invite_id"], 5)
    other = await left_row(daemon, first[0]["invite_id"], 5)
    assert ended.left_reason == "max_duration"
    assert (other.outcome, other.left_reason, other.left_cause) == (
        "joined", "hung_up", "NORMAL_CLEARING"
    )


async def test_a_kicked_member_is_recorded_as_kicked(peer: Peer, daemon: Daemon) -> None:
    status, updates = await invite(daemon, "1000", "--room", ROOM, "--timeout", str(peer.secs(10)))
    assert (status, updates[-1]["outcome"]) == (0, "joined"), updates
    call_uuid, invite_id = updates[0]["uuid"], updates[0]["invite_id"]
    member_id = (await member_line(peer, call_uuid))[0]
    assert (await peer.api(f"conference {ROOM} kick {member_id}")).startswith("+OK")
    record = await left_row(daemon, invite_id, 5)
    assert (record.left_reason, record.left_cause) == ("kicked", "NORMAL_CLEARING")


async def test_a_restarted_daemon_still_records_why_a_member_left(
    peer: Peer, link: EslLink, tmp_path: Path
) -> None:
    first, first_task = await start_daemon(peer, link, tmp_path)
    limit = peer.secs(4)
    status, updates = await invite(
        first, "1000", "--room", ROOM, "--timeout", str(peer.secs(10)),
        "--max-duration", str(limit),
    )
    assert (status, updates[-1]["outcome"]) == (0, "joined"), updates
    in_room, invite_id = updates[0]["uuid"], updates[0]["invite_id"]
    # A second member, to be gone by the time the next daemon looks.
    status, other = await invite(first, "1000", "--room", ROOM, "--timeout", str(peer.secs(10)))
    assert (status, other[-1]["outcome"]) == (0, "joined"), other
    first.stopping.set()
    assert await asyncio.wait_for(first_task, 10) == 0
    assert (await peer.api(f"uuid_kill {other[0]['uuid']}")).startswith("+OK")
    assert await gone(peer, other[0]["uuid"], 5)

    second, second_task = await start_daemon(peer, link, tmp_path)
    try:
        # Still in the room: watched again, and its time limit recorded when it fires.
        record = await left_row(second, invite_id, peer.real(limit) + 5)
        assert (record.left_reason, record.left_cause) == ("max_duration", "ALLOTTED_TIMEOUT")
        assert not await peer.exists(in_room)
        # Gone while no daemon watched: FreeSWITCH keeps nothing of it -- `unseen`.
        lost = await left_row(second, other[0]["invite_id"], 5)
        assert (lost.outcome, lost.left_reason, lost.left_cause) == ("joined", "unseen", None)
        assert second.journal.in_room() == []
    finally:
        second.stopping.set()
        await asyncio.wait_for(second_task, 10)


async def test_bad_room_flags_are_refused_before_anything_reaches_freeswitch(
    peer: Peer, daemon: Daemon, link: EslLink
) -> None:
    before = len(link.commands())
    code, out = await run_cli("invite", "1000", "--room", ROOM, "--max-duration", "0",
                              "--socket", socket_of(daemon))
    assert code == 2, out
    code, out = await run_cli("invite", "1000", "--room", ROOM, "--max-duration", "86401",
                              "--socket", socket_of(daemon))
    assert code == 2, out
    assert not [c for c in link.commands()[before:] if "originate" in c]
