"""Tests of the load driver's byte handling (bench/esl_bytes.py) and its client (bench/sim_load.py)
against what the simulator really sends: frames from `confguard.sim.wire`'s encoders, recorded
events re-encoded by `wire.encode_event`, and the stream of a live in-process simulator."""

from __future__ import annotations

import asyncio
import json
import random
import re

import pytest
from conftest import TRANSCRIPTS

from bench import sim_load
from bench.esl_bytes import head_value, json_key, json_value, split_frames
from confguard.sim import Simulator, wire
from confguard.sim.config import SimConfig

ROUTED_FIELDS = ("Event-Name", "Unique-ID", "Job-UUID", "Action", "Hangup-Cause")


def recorded_json_events() -> list[tuple[list[tuple[str, str]], str | None]]:
    """Every json event of the recorded transcripts as (headers, body), decoded."""
    events = []
    for record in wire.load_transcript(TRANSCRIPTS / "03-events-json.jsonl"):
        if record.dir != "S->C" or record.ctype != "text/event-json":
            continue
        (frame,) = wire.FrameParser().feed(record.data)
        pairs = json.loads(frame.body, object_pairs_hook=list)
        body = dict(pairs).get("_body")
        headers = [
            (name, wire.ARRAY_PREFIX + wire.ARRAY_SEPARATOR.join(value))
            if isinstance(value, list)
            else (name, value)
            for name, value in pairs
            if name not in ("_body", "Content-Length")
        ]
        events.append((headers, body))
    return events


def server_stream() -> tuple[bytes, list[wire.ServerFrame]]:
    """A stream of every kind of frame the simulator sends a client, and its frames."""
    parts = [wire.encode_auth_request(), wire.encode_command_reply("+OK accepted")]
    for headers, body in recorded_json_events():
        parts.append(wire.encode_event(headers, body, "json"))
        parts.append(wire.encode_command_reply("+OK Job-UUID: 1f0e", [("Job-UUID", "1f0e")]))
        parts.append(wire.encode_api_response("+OK\n"))
    parts.append(wire.encode_api_response(""))
    parts.append(wire.encode_disconnect_notice())
    data = b"".join(parts)
    return data, wire.FrameParser().feed(data)


def test_the_recorded_events_are_there() -> None:
    names = {dict(headers)["Event-Name"] for headers, _ in recorded_json_events()}
    assert {"CHANNEL_ANSWER", "CHANNEL_HANGUP_COMPLETE", "DTMF", "BACKGROUND_JOB"} <= names


def test_split_frames_whole_stream_matches_the_reference_parser() -> None:
    data, reference = server_stream()
    frames, used = split_frames(data)
    assert used == len(data)
    assert [(ct.decode(), body) for ct, _, body in frames] == [
        (frame.content_type, frame.body) for frame in reference
    ]
    assert [head + b"\n\n" + body for _, head, body in frames] == [f.raw for f in reference]


@pytest.mark.parametrize("seed", range(5))
def test_split_frames_fed_in_random_pieces(seed: int) -> None:
    data, reference = server_stream()
    rng = random.Random(seed)
    frames, rest = [], b""
    position = 0
    while position < len(data):
        piece = data[position : position + rng.choice((1, 2, 7, 100, 3000, 70000))]
        position += len(piece)
        buffer = rest + piece
        got, used = split_frames(buffer)
        frames += got
        rest = buffer[used:]
    assert rest == b""
    assert [body for _, _, body in frames] == [frame.body for frame in reference]


def test_an_unfinished_frame_is_left_whole() -> None:
    event = wire.encode_event([("Event-Name", "HEARTBEAT")], None, "json")
    for cut in range(len(event)):
        frames, used = split_frames(event[:cut])
        assert (frames, used) == ([], 0)
    assert split_frames(event + event[:5])[1] == len(event)


def test_a_content_length_inside_another_header_is_not_the_frame_length() -> None:
    reply = wire.encode_command_reply("-ERR no Content-Length: 99 here")
    frames, used = split_frames(reply + wire.encode_api_response("+OK\n"))
    assert used == len(reply) + len(wire.encode_api_response("+OK\n"))
    assert [(ct, body) for ct, _, body in frames] == [
        (b"command/reply", b""),
        (b"api/response", b"+OK\n"),
    ]
    assert head_value(frames[0][1], b"Reply-Text: ") == b"-ERR no Content-Length: 99 here"


def test_head_value_only_at_a_line_start() -> None:
    head = b"Content-Type: command/reply\nReply-Text: +OK X-Reply-Text: no"
    assert head_value(head, b"Reply-Text: ") == b"+OK X-Reply-Text: no"
    assert head_value(b"X-Reply-Text: a\nReply-Text: b", b"Reply-Text: ") == b"b"
    assert head_value(head, b"Job-UUID: ") is None


def test_json_value_agrees_with_json_loads_on_every_recorded_event() -> None:
    checked = 0
    for headers, body in recorded_json_events():
        payload = wire.serialize_json(headers, body)
        first: dict[str, str] = {}
        for name, value in headers:
            first.setdefault(name, value)  # json_value reads a repeated name's first value
        for name, value in first.items():
            if any(c in value for c in '"\\') or value.startswith(wire.ARRAY_PREFIX):
                continue  # json_value reads values without escapes only
            assert json_value(payload, json_key(name)) == value.encode(), name
            checked += 1
        for name in ROUTED_FIELDS:
            expected = first.get(name)
            assert json_value(payload, json_key(name)) == (expected and expected.encode())
    assert checked > 500


def test_json_value_is_not_fooled_by_a_key_inside_a_value() -> None:
    headers = [
        ("Event-Name", "CUSTOM"),
        ("variable_trap", '"Unique-ID":"fake","Action":"add-member"'),
        ("variable_trap2", 'x\\"Unique-ID\\":\\"fake2'),
        ("Other-Leg-Unique-ID", "other"),
        ("Unique-ID", "real"),
        ("Action", "del-member"),
    ]
    payload = wire.serialize_json(headers, None)
    assert json.loads(payload)["variable_trap"] == headers[1][1]  # the trap is in the bytes
    assert json_value(payload, json_key("Unique-ID")) == b"real"
    assert json_value(payload, json_key("Action")) == b"del-member"
    assert json_value(payload, json_key("Job-UUID")) is None


# ------------------------------------------------------------- the client on a live simulator
class RecordingClient(sim_load.EslClient):
    """The bench client, keeping what it received and what it wrote."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[bytes] = []
        self.written: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        self.received.append(data)
        super().data_received(data)

    def _flush(self) -> None:
        self.written.append(b"".join(self._outgoing))
        super()._flush()


UUID = r"[0-9a-f-]{36}"


async def test_rate_invites_on_a_live_simulator_take_the_daemons_path() -> None:
    config = SimConfig(host="127.0.0.1", port=0, password=sim_load.PASSWORD, time_scale=0.1)
    async with Simulator(config) as simulator:
        client = await RecordingClient.connect(simulator.port)
        assert isinstance(client, RecordingClient)
        bench = sim_load.Bench(client)
        bench.rate_mode = True
        await bench.subscribe()
        spec = sim_load.InviteSpec(extension="1000", room="test1", timeout=30)
        app = sim_load.build_waiting_app(spec)
        calls = [bench.place(app, ",sim_answer_after=0.5,sim_dtmf=1@0.5") for _ in range(3)]
        for _ in range(200):
            if not bench.calls:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)  # the filter deletes' replies
        client.close()
    assert not bench.calls
    assert [call.failed for call in calls] == ["", "", ""]
    assert all(c.started <= c.answered <= c.key <= c.joined <= c.ended for c in calls)
    assert client.errors == 0 and not client._waiters

    # what was asked of the simulator: the daemon's subscription and filters, then per call
    # its filter, the originate, the kill once it joined and the filter delete
    commands = [c for c in b"".join(client.written).decode().split("\n\n") if c]
    assert commands[:6] == [
        f"auth {sim_load.PASSWORD}",
        "event json " + " ".join(sim_load.SUBSCRIBED_EVENTS),
        *(f"filter {h} {v}" for h, v in sim_load.PERMANENT_FILTERS),
    ]
    shapes = sorted(re.sub(UUID, "U", c.split(" {")[0]) for c in commands[6:])
    per_call = ["filter Unique-ID U", "bgapi originate", "api uuid_kill U"]
    per_call.append("filter delete Unique-ID U")
    assert shapes == sorted(3 * per_call)
    originate = next(c for c in commands if c.startswith("bgapi originate"))
    assert f"api_on_originate='sched_hangup +3600 {calls[0].uuid} ALLOTTED_TIMEOUT'" in originate
    assert originate.endswith(f" {app}\nJob-UUID: {calls[0].job}")

    # what the simulator sent, split by the client as the reference parser does
    stream = b"".join(client.received)
    reference = wire.FrameParser().feed(stream)
    frames, used = split_frames(stream)
    assert used == len(stream)
    assert [body for _, _, body in frames] == [frame.body for frame in reference]
    events = [json.loads(f.body) for f in reference if f.content_type == "text/event-json"]
    assert client.events_seen == len(events)
    for frame in reference:
        if frame.content_type == "text/event-json":
            decoded = json.loads(frame.body)
            for name in ROUTED_FIELDS:
                got = json_value(frame.body, json_key(name))
                assert got == (decoded[name].encode() if name in decoded else None)
    joins = [e for e in events if e.get("Action") == "add-member"]
    assert sorted(e["Unique-ID"] for e in joins) == sorted(call.uuid for call in calls)
