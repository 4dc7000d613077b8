"""confguard.esl's own frame path (FrameSplitter + event_from_frame) against genesis's parser:
the same EslEvent for every event frame FreeSWITCH sent in the transcripts, whole or fed in
pieces, and for arbitrary header text (the fast path and the exact path must agree with genesis)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from genesis.protocol.parser import parse_headers
from hypothesis import given, settings
from hypothesis import strategies as st
from test_esl_unit import _frames_of, _genesis_parse

from confguard import esl
from confguard.esl import (
    MAX_BODY_BYTES,
    EslEvent,
    FrameSplitter,
    _event_headers,
    event_from_frame,
    parse_event,
)


def _ours(frame: bytes, piece: int | None = None) -> EslEvent | None:
    splitter = FrameSplitter()
    step = piece or len(frame)
    frames = []
    for at in range(0, len(frame), step):
        frames += splitter.feed(frame[at:at + step])
    assert splitter.error is None and not splitter.pending
    assert len(frames) == 1
    return event_from_frame(*frames[0])


def _as_tuple(event: EslEvent | None) -> tuple[str, dict[str, str], str | None] | None:
    return None if event is None else (event.name, dict(event.headers.items()), event.body)


@pytest.mark.parametrize("transcript", ["02-events-plain.txt", "03-events-json.txt",
                                        "18-waiting-app-play-and-get-digits.txt"])
def test_same_events_as_genesis(transcripts_dir: Path, transcript: str) -> None:
    path = next(transcripts_dir.glob(transcript.replace(".txt", "*.txt")))
    frames = (_frames_of(path, "text/event-plain") + _frames_of(path, "text/event-json"))
    assert frames
    for frame in frames:
        expected = _as_tuple(parse_event(*_genesis_parse(frame)))
        assert _as_tuple(_ours(frame)) == expected
        assert _as_tuple(_ours(frame, piece=7)) == expected


def _genesis_first(text: str) -> dict[str, str]:
    parsed = parse_headers(text)
    return {k: v[0] if isinstance(v, list) else v for k, v in parsed.items()}


_LINE = st.one_of(
    st.tuples(st.sampled_from(["Event-Name", "Unique-ID", "A", "Unique%2DID", " Sp", "x y"]),
              st.text(alphabet="ab%20:3A \t\r\x0b\u2028é", max_size=8))
    .map(lambda kv: f"{kv[0]}: {kv[1]}"),
    st.text(alphabet="ab: %\t", max_size=6),  # continuation lines, odd bits
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(_LINE, min_size=1, max_size=8))
def test_header_text_as_genesis_reads_it(lines: list[str]) -> None:
    """Where genesis's value is a plain string (no repeated header, no continuation of one):
    the same names and values, decoded, whichever path our parser takes."""
    text = "\n".join(lines)
    ours = dict(_event_headers(text).items())
    theirs = parse_headers(text)
    names = [line.partition(": ")[0].strip() for line in lines if ": " in line]
    if len(set(names)) != len(names):
        return  # genesis turns a repeat into a list and a continuation overwrites it: no rule
    assert ours == _genesis_first(text)
    assert set(ours) == set(theirs)


def test_frames_split_and_limits() -> None:
    splitter = FrameSplitter()
    reply = b"Content-Type: command/reply\nReply-Text: +OK%20x\n\n"
    api = b"Content-Type: api/response\nContent-Length: 3\n\n+OK"
    out = []
    for byte in range(len(reply + api)):
        out += splitter.feed((reply + api)[byte:byte + 1])
    assert out == [({"Content-Type": "command/reply", "Reply-Text": "+OK x"}, None),
                   ({"Content-Type": "api/response", "Content-Length": "3"}, "+OK")]
    # a breach after a good frame: the good frame comes out, then the error
    bad = FrameSplitter()
    got = bad.feed(reply + b"Content-Type: api/response\nContent-Length: %d\n\n"
                   % (MAX_BODY_BYTES + 1))
    assert got == [({"Content-Type": "command/reply", "Reply-Text": "+OK x"}, None)]
    assert bad.error is not None and "Content-Length" in bad.error
    assert bad.feed(reply) == []  # nothing more is read


def test_the_odd_character_checks_are_the_regexes_they_stand_for() -> None:
    """The fast path's checks (one bytes.translate each) take the exact path for the same ASCII
    characters as `[\\r\\x0b\\x0c\\x1c-\\x1e]` (what str.splitlines breaks at besides \\n) and
    `[\\s%]` (whitespace or % in a name), alone and inside a text."""
    breaks, names = re.compile(r"[\r\x0b\x0c\x1c-\x1e]"), re.compile(r"[\s%]")
    for code in range(128):
        char = chr(code)
        for text in (char, f"Event-Name: A{char}B\nUnique-ID: x"):
            assert esl._has_odd_break(text) == bool(breaks.search(text)), repr(char)
            assert esl._has_odd_key(text) == bool(names.search(text)), repr(char)
    assert not esl._has_odd_break("") and not esl._has_odd_key("Event-NameUnique-ID")
