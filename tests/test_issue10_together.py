"""Issue 10's five points together, end to end on both peers (the simulator and, marked `realfs`,
the real FreeSWITCH), with `confguard serve` as its own process behind a recording relay.

1. One CLI invite with everything at once: `--via` a loopback route, `--max-duration`,
   `--muted --moderator`, `--notify` a receiver on 127.0.0.1 (the secret from a file; the
   receiver also gets `[webhooks] urls`), `--idempotency-key K`. The callee presses 1: joined;
   the flags and the route in `status` and the journal; the time limit hangs the member up
   (`history --json`: left reason `max_duration`); each receiver lane has every state in order,
   signed, then the outcome, then the `invite.left` event with the next seq.
2. The same command with the same key: the same invite followed to the same exit code and the
   same lines (none after the outcome), no second originate on the relay.
3. The same key with `--deaf` added: the CLI's exit code for a 409, nothing placed.
4. A `CUSTOM confguard::invite` (sendevent from a watcher's connection) into an allowed room,
   with a time limit and a member flag: it joins, one `confguard::outcome` comes back (and no
   second one when the member leaves), and the configured webhook URL gets its states, its
   outcome and its `invite.left`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from custom_events import RawEsl, next_custom, watcher
from peers import EslLink, Peer
from test_e2e import ROOM, ServeProcess, run_cli
from webhook_receiver import Receiver, check_lanes

from confguard import cli
from confguard.fs_events import INVITE_SUBCLASS, OUTCOME_SUBCLASS

SECRET = "whsec-together-5c1e0a9d77f3b2e4"
KEY = "together-1"

CONFIG = """\
[routes.lab]
dial = "loopback/{{ext}}/confguard_callee/XML"

[webhooks]
urls = ["{all_url}"]
secret_file = "{secret_file}"
retry_initial = 0.1
retry_max = 0.4

[events]
invites = true
allowed_rooms = ["{room}"]
"""


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver(SECRET) as running:
        yield running


@pytest.fixture
async def serve(peer: Peer, link: EslLink, receiver: Receiver, tmp_path: Path
                ) -> AsyncIterator[tuple[ServeProcess, Path]]:
    """`confguard serve` (its own process) on the relay, with routes, webhooks and events."""
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    config = tmp_path / "confguard.toml"
    config.write_text(CONFIG.format(all_url=receiver.url("/all"), secret_file=secret_file,
                                    room=ROOM))
    process = ServeProcess({
        "CONFGUARD_ESL_HOST": "127.0.0.1",
        "CONFGUARD_ESL_PORT": str(link.port),
        "CONFGUARD_ESL_PASSWORD_FILE": str(peer.password_file),
        "CONFGUARD_INVITE_PROMPT": "tone_stream://%(200,100,440)",
    }, tmp_path)
    process.env["CONFGUARD_CONFIG"] = str(config)
    await process.start()
    try:
        yield process, config
    finally:
        process.stop()


def originates(link: EslLink) -> list[str]:
    return [c for c in link.commands() if c.startswith("bgapi originate")]


async def cli_json(*argv: str) -> tuple[int, list[dict[str, Any]]]:
    code, out = await run_cli(*argv, "--json")
    return code, [json.loads(line) for line in out.splitlines()]


async def history_of(journal: str, config: Path, invite_id: str, done: Any,
                     seconds: float) -> dict[str, Any]:
    """The invite's `history --json` item once `done(item)` holds."""
    deadline = time.monotonic() + seconds
    item: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        code, out = await run_cli("history", "--json", "--journal", journal,
                                  "--config", str(config))
        if code == 0:
            item = next((json.loads(line) for line in out.splitlines()
                         if json.loads(line)["invite_id"] == invite_id), None)
            if item is not None and done(item):
                return item
        await asyncio.sleep(0.1)
    raise AssertionError(f"{invite_id}: history never got there: {item}")


def lane(receiver: Receiver, path: str, invite_id: str) -> list[dict[str, Any]]:
    return [b for b in receiver.delivered(path) if b.get("invite_id") == invite_id]


def left_delivered(receiver: Receiver, path: str, invite_id: str) -> bool:
    return any(b["type"] == "invite.left" for b in lane(receiver, path, invite_id))


def evidence(peer: Peer, title: str, lines: list[str]) -> None:
    """What the run showed, appended to the file $CONFGUARD_EVIDENCE names (for a report)."""
    path = os.environ.get("CONFGUARD_EVIDENCE")
    if path:
        with open(path, "a") as out:
            out.write(f"# [{peer.name}] {title}\n" + "".join(f"{line}\n" for line in lines))


async def test_everything_at_once_replayed_conflicting_and_from_an_event(
    peer: Peer, link: EslLink, receiver: Receiver, serve: tuple[ServeProcess, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    process, config = serve
    sock, journal = process.socket, process.env["CONFGUARD_JOURNAL_PATH"]
    limit = peer.secs(3)  # 3 s in the room on both peers (the real switch: --max-duration 3)
    argv = [
        "invite", "1000", "--room", ROOM, "--timeout", str(peer.secs(12)),
        "--via", "lab", "--max-duration", str(limit), "--muted", "--moderator",
        "--notify", receiver.url("/mine"), "--idempotency-key", KEY,
        "--var", f"sim_dtmf=1@{peer.secs(1.5)}",
        "--config", str(config), "--socket", sock,
    ]

    # --- 1. the combined invite; status while it waits for the key -------------------------
    first = asyncio.create_task(cli_json(*argv))
    row: dict[str, Any] | None = None
    for _ in range(200):
        _, out = await run_cli("status", "--json", "--socket", sock, "--config", str(config))
        rows = json.loads(out)["invites"]
        if rows and rows[0]["state"] == "waiting_key":
            row = rows[0]
            break
        await asyncio.sleep(0.05)
    assert row is not None, "the invite never showed waiting_key in status"
    assert (row["via"], row["flags"], row["max_duration"]) == ("lab", ["muted", "moderator"],
                                                               limit), row
    _, text = await run_cli("status", "--socket", sock, "--config", str(config))
    assert f"lab        muted,moderator max {limit}s" in text, text
    code, updates = await first
    assert (code, updates[-1]["outcome"]) == (0, "joined"), updates
    call_uuid, invite_id = updates[0]["uuid"], updates[0]["invite_id"]
    placed = [c for c in originates(link) if f"origination_uuid={call_uuid}," in c]
    assert len(placed) == 1, originates(link)
    assert "}loopback/1000/confguard_callee/XML 'm:~:" in placed[0]
    assert f"~sched_hangup:+{limit} ALLOTTED_TIMEOUT~conference:{ROOM}+flags{{mute|moderator}}'" \
        in placed[0], placed[0]
    assert call_uuid in await peer.members(ROOM)
    _, out = await run_cli("status", "--json", "--socket", sock, "--config", str(config))
    members = {m["uuid"]: m for m in json.loads(out)["members"]}
    assert members[call_uuid]["flags"] == ["muted", "moderator"], members

    # the time limit: FreeSWITCH hangs the member up, the journal says why
    item = await history_of(journal, config, invite_id, lambda i: i.get("left_at"),
                            peer.real(limit) + 10)
    assert (item["outcome"], item["left_reason"], item["left_cause"]) == (
        "joined", "max_duration", "ALLOTTED_TIMEOUT"), item
    assert item["left_at"] - item["joined_at"] >= peer.real(limit - 1), item
    spec = item["detail"]["spec"]
    assert (spec["muted"], spec["moderator"], spec["deaf"], spec["endconf"]) == (
        True, True, False, False)
    assert (spec["max_duration"], spec["route"]["name"], spec["notify"], item["via"]) == (
        limit, "lab", [receiver.url("/mine")], "lab"), item
    _, text = await run_cli("history", "--journal", journal, "--config", str(config))
    assert "max_duration (ALLOTTED_TIMEOUT) [muted,moderator]" in text and " lab " in text, text
    evidence(peer, "confguard history", text.splitlines()[:2])

    # every state, signed, in order, on both lanes; the outcome, then the left event
    for path in ("/mine", "/all"):
        await receiver.wait_until(functools.partial(left_delivered, receiver, path, invite_id),
                                  15)
    ours = [h for h in receiver.hits if h.body.get("invite_id") == invite_id]
    assert ours and all(h.signed for h in ours)  # verify_signature, at the receiver
    lanes = check_lanes(ours)
    expected = [(u["seq"], u["state"], u.get("outcome")) for u in updates]
    for path in ("/mine", "/all"):
        got = lane(receiver, path, invite_id)
        assert [(b["seq"], b["state"], b["outcome"]) for b in got[:-1]] == expected, got
        assert [b["type"] for b in got] == ["invite.state"] * (len(got) - 2) + [
            "invite.outcome", "invite.left"]
        last = got[-1]
        assert (last["seq"], last["left_reason"], last["left_cause"], last["uuid"]) == (
            len(updates), "max_duration", "ALLOTTED_TIMEOUT", call_uuid), last
        timings = last["timings"]
        assert timings["joined_at"] <= timings["ended_at"] <= timings["left_at"], timings
        # what the invite was asked with rides on every event of it
        assert all(b["request"] == {"source": "api", "request_id": None, "via": "lab",
                                    "flags": ["muted", "moderator"], "max_duration": limit}
                   for b in got), got
        assert lanes[(path, invite_id)] == list(range(len(updates) + 1))
    evidence(peer, f"receiver, invite {invite_id} (--via lab --max-duration {limit} --muted "
             "--moderator --notify .../mine --idempotency-key; [webhooks] urls .../all)",
             [h.line() for h in ours])

    # --- 2. the same command again: a replay ---------------------------------------------
    before = len(originates(link))
    capsys.readouterr()
    code2, replay = await cli_json(*argv)
    err = capsys.readouterr().err
    assert code2 == code and replay == updates, replay  # nothing after the outcome either
    assert "already used for this request" in err and "no new call placed" in err, err
    assert len(originates(link)) == before

    # --- 3. the same key, another request (--deaf): 409, nothing placed ------------------
    code3, out3 = await run_cli(*argv, "--deaf")
    err = capsys.readouterr().err
    assert code3 == cli.EXIT_BAD_INPUT and out3 == "", (code3, out3)
    assert "used for a different request" in err and "nothing was sent" in err, err
    assert len(originates(link)) == before
    evidence(peer, "replay and conflict", [
        f"run 1: exit {code}, invite {invite_id}, {len(updates)} updates",
        f"run 2 (same key): exit {code2}, invite {replay[0]['invite_id']}, "
        f"{len(replay)} updates, originates {len(originates(link))}",
        f"run 3 (same key, --deaf): exit {code3}; {err.strip()}",
    ])

    # --- 4. an invite event into the allowed room, with webhooks on ----------------------
    watch = await watcher(peer.port, peer.password, OUTCOME_SUBCLASS)
    sender = await RawEsl.open(peer.port, peer.password)
    event_limit = peer.secs(2)
    try:
        reply = await sender.sendevent("CUSTOM", [
            ("Event-Subclass", INVITE_SUBCLASS), ("ext", "1000"), ("room", ROOM),
            ("timeout", str(peer.secs(12))), ("max_duration", str(event_limit)),
            ("muted", "true"), ("request_id", "together-ev-1")])
        assert reply.startswith("+OK "), reply
        outcome = dict(await next_custom(watch, peer.real(30) + 10))
        assert outcome["Event-Subclass"] == OUTCOME_SUBCLASS
        assert (outcome["ext"], outcome["room"], outcome["outcome"], outcome["request_id"],
                outcome["source"]) == ("1000", ROOM, "joined", "together-ev-1", "event"), outcome
        event_invite = outcome["invite_id"]
        await receiver.wait_until(lambda: left_delivered(receiver, "/all", event_invite),
                                  peer.real(event_limit) + 15)
        got = lane(receiver, "/all", event_invite)
        assert [b["state"] for b in got] == ["placing", "ringing", "waiting_key", "cancelling",
                                             "joining", "joined", "ended", "left"], got
        assert [b["seq"] for b in got] == list(range(len(got)))
        assert (got[-2]["outcome"], got[-1]["left_reason"]) == ("joined", "max_duration"), got
        assert got[0]["uuid"] == outcome["uuid"]
        assert {(b["request"]["source"], b["request"]["request_id"]) for b in got} == {
            ("event", "together-ev-1")}, got  # the receiver can tie them to the sender's id
        assert not lane(receiver, "/mine", event_invite)  # --notify was the CLI invite's own
        # the member's leaving is no second outcome: nothing more on the switch
        await asyncio.sleep(1.0)
        later = []
        while not watch.events.empty():
            event = dict(watch.events.get_nowait())
            if event.get("Event-Subclass") == OUTCOME_SUBCLASS:
                later.append(event)
        assert later == [], later
        item = await history_of(journal, config, event_invite, lambda i: i.get("left_at"), 5)
        assert (item["detail"]["spec"]["muted"], item["detail"]["spec"]["max_duration"],
                item["left_reason"]) == (True, event_limit, "max_duration"), item
        evidence(peer, "the confguard::outcome event", [
            "; ".join(f"{k}: {outcome[k]}" for k in ("Event-Subclass", "invite_id", "uuid", "ext",
                                                     "room", "outcome", "request_id", "source"))])
        event_hits = [h for h in receiver.hits if h.body.get("invite_id") == event_invite]
        check_lanes(event_hits)
        evidence(peer, f"receiver, event invite {event_invite} (sendevent confguard::invite; "
                 f"outcome event: {outcome['outcome']}, request_id {outcome['request_id']})",
                 [h.line() for h in event_hits])
    finally:
        await sender.close()
        await watch.close()
    assert len(originates(link)) == before + 1
    assert (await peer.members(ROOM)) == []
