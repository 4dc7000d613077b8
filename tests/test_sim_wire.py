"""Tests of confguard.sim.wire: every recorded server frame re-encodes byte for byte."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote

import pytest
from conftest import TRANSCRIPTS

from confguard.sim import wire

TRANSCRIPT_NAMES = sorted(path.stem for path in TRANSCRIPTS.glob("*.jsonl"))


def _decoded_event(frame: wire.ServerFrame) -> tuple[list[tuple[str, str]], str | None]:
    """Headers (decoded values) and body of a recorded event, whatever its format."""
    content_type = frame.content_type
    if content_type == "text/event-plain":
        headers, body = wire.parse_plain_event(frame.body)
        decoded = [(name, unquote(value, errors="surrogateescape")) for name, value in headers]
        return decoded, None if body is None else body.decode()
    if content_type == "text/event-json":
        pairs = json.loads(frame.body, object_pairs_hook=list)
        decoded = [
            (name, wire.ARRAY_PREFIX + wire.ARRAY_SEPARATOR.join(value))
            if isinstance(value, list)
            else (name, value)
            for name, value in pairs
        ]
        body = dict(decoded).get("_body")
        decoded = [pair for pair in decoded if pair[0] not in ("_body", "Content-Length")]
        return decoded, body
    text = frame.body.decode()
    headers = re.findall(r"^    <([^>]+)>(.*?)</\1>$", text, re.M)
    match = re.search(r"<body>(.*)</body>", text, re.S)
    body = match.group(1).rstrip(" ") if match else None
    return [(name, unquote(value)) for name, value in headers], body


def _reencode(frame: wire.ServerFrame) -> bytes:
    content_type = frame.content_type
    if content_type.startswith("text/event-"):
        headers, body = _decoded_event(frame)
        event_format = content_type.removeprefix("text/event-")
        assert event_format in wire.EVENT_FORMATS
        return wire.encode_event(headers, body, event_format)  # type: ignore[arg-type]
    if content_type == "api/response":
        return wire.encode_api_response(frame.body.decode())
    if content_type == "text/disconnect-notice":
        return wire.encode_disconnect_notice(frame.body.decode())
    if content_type == "auth/request":
        return wire.encode_auth_request()
    assert content_type == "command/reply", content_type
    headers = list(frame.headers)
    assert headers[0] == ("Content-Type", "command/reply")
    assert headers[1][0] == "Reply-Text"
    return wire.encode_command_reply(headers[1][1], headers[2:])


@pytest.mark.parametrize("name", TRANSCRIPT_NAMES)
def test_every_recorded_server_frame_reencodes_identically(
    transcripts_dir: Path, name: str
) -> None:
    records = wire.load_transcript(transcripts_dir / f"{name}.jsonl")
    server_records = [record for record in records if record.dir == "S->C"]
    assert server_records
    for record in server_records:
        frames = wire.FrameParser().feed(record.data)
        assert len(frames) == 1 and frames[0].raw == record.data
        assert frames[0].content_type == record.ctype
        assert _reencode(frames[0]) == record.data, f"{name} record {record.seq}"


@pytest.mark.parametrize("name", TRANSCRIPT_NAMES)
def test_txt_and_jsonl_transcripts_load_the_same_records(transcripts_dir: Path, name: str) -> None:
    from_jsonl = wire.load_transcript(transcripts_dir / f"{name}.jsonl")
    from_txt = wire.load_transcript(transcripts_dir / f"{name}.txt")
    assert from_jsonl == from_txt
    assert [record.seq for record in from_jsonl] == list(range(1, len(from_jsonl) + 1))


def test_transcript_connection_names(transcripts_dir: Path) -> None:
    records = wire.load_transcript(transcripts_dir / "12-shutdown-while-connected.jsonl")
    assert {record.conn for record in records if record.dir != "NOTE"} == {
        "watcher",
        "bare",
        "admin",
    }
    single = wire.load_transcript(transcripts_dir / "01-auth.jsonl")
    assert {record.conn for record in single} == {""}
    assert single[1].data == b"Content-Type: auth/request\n\n"


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("fd00::2", "fd00%3A%3A2"),
        ("2026-11-28 08:17:55", "2026-11-28%2008%3A17%3A55"),
        ("Sat, 28 Nov 2026 08:17:55 GMT", "Sat,%2028%20Nov%202026%2008%3A17%3A55%20GMT"),
        ("{a=b}user/1000 &park()", "%7Ba%3Db%7Duser/1000%20%26park()"),
        ("1000@fsref.local", "1000%40fsref.local"),
        ('a|b"c<d>', "a%7Cb%22c%3Cd%3E"),
        ("#+;?[\\]^`\r\n", "%23%2B%3B%3F%5B%5C%5D%5E%60%0D%0A"),
        ("keep-._,/()~!*'$", "keep-._,/()~!*'$"),
        ("\x01\x7f", "%01%7F"),
        ("café", "caf%C3%A9"),
        ("100%41 done", "100%41%20done"),  # an existing %XX is not encoded again
        ("100%zz", "100%25zz"),
        ("50%", "50%25"),
        ("%4", "%254"),
        ("%4a", "%254a"),  # only upper-case hex counts as already encoded
    ],
)
def test_url_encode_like_freeswitch(value: str, encoded: str) -> None:
    assert wire.url_encode(value) == encoded


def test_command_parser_byte_by_byte_with_headers_and_body() -> None:
    data = (
        b"auth ClueCon\n\n"
        b"bgapi originate user/1000 &park()\nJob-UUID: abc\n\n"
        b"sendevent CUSTOM\r\nContent-Length: 5\r\n\r\nhello"
        b"\n\nexit\n\n"
    )
    parser = wire.CommandParser()
    commands: list[wire.ClientCommand] = []
    for index in range(len(data)):
        commands.extend(parser.feed(data[index : index + 1]))
    assert [command.line for command in commands] == [
        "auth ClueCon",
        "bgapi originate user/1000 &park()",
        "sendevent CUSTOM",
        "exit",
    ]
    assert commands[1].header("job-uuid") == "abc"
    assert commands[2].body == b"hello"
    assert commands[0].body is None and commands[0].headers == ()
    assert parser.buffered == 0


def test_command_parser_waits_for_a_whole_block() -> None:
    parser = wire.CommandParser()
    assert parser.feed(b"api status\n") == []
    assert parser.feed(b"\n") == [wire.ClientCommand("api status")]


def test_command_parser_rejects_bad_content_length() -> None:
    with pytest.raises(wire.WireError):
        wire.CommandParser().feed(b"sendevent X\nContent-Length: lots\n\n")
    with pytest.raises(wire.WireError):
        wire.CommandParser().feed(
            b"sendevent X\nContent-Length: %d\n\n" % (wire.MAX_BODY_BYTES + 1)
        )


def test_encode_command_round_trips_through_the_parser() -> None:
    raw = wire.encode_command("sendmsg", [("call-command", "hangup")], b"xyz")
    (command,) = wire.CommandParser().feed(raw)
    assert command.line == "sendmsg"
    assert command.header("Call-Command") == "hangup"
    assert command.body == b"xyz"


def test_frame_parser_handles_split_and_joined_frames() -> None:
    first = wire.encode_api_response("+OK\n")
    second = wire.encode_command_reply("+OK accepted")
    third = wire.encode_event([("Event-Name", "HEARTBEAT")], None, "plain")
    stream = first + second + third
    parser = wire.FrameParser()
    frames = parser.feed(stream[:7]) + parser.feed(stream[7:60]) + parser.feed(stream[60:])
    assert [frame.content_type for frame in frames] == [
        "api/response",
        "command/reply",
        "text/event-plain",
    ]
    assert frames[0].body == b"+OK\n"
    assert frames[2].body == b"Event-Name: HEARTBEAT\n\n"


def test_frame_parser_rejects_a_non_numeric_content_length() -> None:
    with pytest.raises(wire.WireError):
        wire.FrameParser().feed(b"Content-Length: twelve\nContent-Type: text/event-plain\n\n")


def test_event_formats_with_body_and_special_characters() -> None:
    headers = [("Event-Name", "BACKGROUND_JOB"), ("Job-Command-Arg", 'a "b" <c> & d')]
    body = "-ERR <x> & y"
    plain = wire.encode_event(headers, body, "plain")
    assert plain.endswith(
        b"Job-Command-Arg: a%20%22b%22%20%3Cc%3E%20%26%20d\nContent-Length: 12\n\n-ERR <x> & y"
    )
    as_json = wire.encode_event(headers, body, "json")
    payload = as_json.split(b"\n\n", 1)[1]
    assert json.loads(payload) == {
        "Event-Name": "BACKGROUND_JOB",
        "Job-Command-Arg": 'a "b" <c> & d',
        "Content-Length": "12",
        "_body": body,
    }
    as_xml = wire.encode_event(headers, body, "xml")
    assert b"<body>-ERR &lt;x&gt; &amp; y</body>\n</event>\n" in as_xml
    assert as_xml.startswith(b"Content-Length: %d\n" % len(as_xml.split(b"\n\n", 1)[1]))


def test_non_utf8_bytes_survive_encoding() -> None:
    body = b"caf\xe9\xff".decode("utf-8", "surrogateescape")
    frame = wire.encode_event([("Event-Name", "CUSTOM")], body, "plain")
    assert frame.endswith(b"Content-Length: 5\n\ncaf\xe9\xff")
    assert wire.url_encode(body) == "caf%E9%FF"


def test_fixed_server_messages() -> None:
    assert wire.encode_command_reply("+OK accepted") == (
        b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n"
    )
    assert wire.encode_command_reply("+OK Job-UUID: j", [("Job-UUID", "j"), ("X", "caf\xe9")]) == (
        b"Content-Type: command/reply\nReply-Text: +OK Job-UUID: j\nJob-UUID: j\nX: caf\xc3\xa9\n\n"
    )
    assert wire.encode_rude_rejection() == (
        b"Content-Type: text/rude-rejection\nContent-Length: 24\n\nAccess Denied, go away.\n"
    )
    assert wire.encode_disconnect_notice(wire.SHUTDOWN_TEXT) == (
        b"Content-Type: text/disconnect-notice\nContent-Length: 31\n\n"
        b"The system is being shut down.\n"
    )


def test_url_encode_fast_paths_match_the_byte_loop() -> None:
    """ASCII values take `str.translate` (no `%`) or a regex (with `%`); both must give what the
    byte-by-byte reference gives, for every printable and control character, the `%XX` rule
    (upper-case hex kept, anything else encoded) and non-ASCII / surrogate-escaped text."""
    import random

    alphabet = [chr(code) for code in range(0x80)]
    alphabet += ["%41", "%4", "%4g", "%AF", "%af", "é", "\udcff"]
    ops = random.Random(5)
    samples = ["", "%", "%%", "%41", "a%4", "2026-12-01 23:24:06", "Sat, 28 Nov 2026 08:17:55 GMT"]
    for _ in range(3000):
        samples.append("".join(ops.choice(alphabet) for _ in range(ops.randrange(12))))
    for value in samples:
        assert wire.url_encode(value) == wire.url_encode_bytes(value), repr(value)
    assert wire.url_encode("a b%41%4g") == "a%20b%41%254g"


def test_json_events_match_json_dumps() -> None:
    """The json serialiser (encoded names kept, one C call per string) writes exactly what
    `json.dumps(..., ensure_ascii=False)` writes for each name and value, repeats and order kept."""
    import json as json_module

    headers = [
        ("Event-Name", "CUSTOM"),
        ("Hangup-Cause", "X"),
        ("Hangup-Cause", "Y"),
        ("variable_x", 'quote " back \\ tab \t é \u2028'),
        ("Arr", 'ARRAY::a|:b"'),
    ]
    expected = ",".join(
        [json_module.dumps(n, ensure_ascii=False) + ":" + json_module.dumps(v, ensure_ascii=False)
         for n, v in headers[:4]]
        + ['"Arr":["a","b\\""]', '"Content-Length":"2"', '"_body":"ok"']
    )  # fmt: skip
    for _ in range(2):  # the second time from the kept names
        assert wire.serialize_json(headers, "ok") == ("{" + expected + "}").encode()


def test_json_fast_encodings_match_the_pair_by_pair_one() -> None:
    """Events are encoded by joining names and values when nothing needs escaping, else by
    escaping the values alone when the names need nothing, else as one dict in one C call
    when no name repeats: byte for byte what the pair-by-pair encoder writes, repeated names,
    array headers and awkward characters included."""
    import random

    ops = random.Random(11)
    pieces = ["a", "é", '"', "\\", "\t", "\n", "\u2028", "\udcff", "ARRAY::", "|:", "/", "%20", " ",
              "\x00", "\x1f", "\x7f", "u0001", "\\u0002", "ARRAY:", "b", "c", "Z"]  # fmt: skip
    for _ in range(4000):
        headers = []
        plain = ops.random() < 0.5  # mostly characters that need no escaping (or a few)
        usual = pieces[-4:] if ops.random() < 0.5 else [*pieces[-4:], '"', "\\", "\n", "é"]
        for index in range(ops.randrange(0, 12)):
            choices = usual if plain and ops.random() < 0.95 else pieces
            value = "".join(ops.choice(choices) for _ in range(ops.randrange(0, 6)))
            if ops.random() < (0.01 if plain else 0.2):
                value = "ARRAY::" + value
            name = f"H{index}{ops.choice(choices[:3])}"
            if headers and ops.random() < 0.2:
                name = ops.choice(headers)[0]  # a repeated name
            headers.append((name, value))
        body = ops.choice([None, "", "+OK done\n"])
        pairs = list(headers)
        if body is not None:
            pairs += [("Content-Length", str(len(wire.to_bytes(body)))), ("_body", body)]
        assert wire.serialize_json(headers, body) == wire.serialize_json_pairs(pairs), headers
