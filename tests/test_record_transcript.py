"""The real-switch recorder's file format (confguard/realswitch/record.py), without a switch:
what it writes loads back through `wire.load_transcript` the same from .txt and .jsonl, and a
password other than ClueCon never reaches the files."""

from __future__ import annotations

import json
from pathlib import Path

from confguard.realswitch import record
from confguard.sim import wire
from confguard.sim.switch import prompt_length_ms


def test_written_transcript_loads_the_same_from_txt_and_jsonl(tmp_path: Path) -> None:
    recorder = record.Recorder(8021, password="s3cret-Pw")
    recorder.add("NOTE", record.SETUP_NOTE.encode())
    recorder.note("TCP connected to 127.0.0.1:8021 (local port 1)", "conn")
    recorder.add("S->C", wire.encode_auth_request(), "auth/request")
    recorder.add("C->S", recorder.redact(b"auth s3cret-Pw\n\n"))
    recorder.add("S->C", wire.encode_api_response("caf\u00e9 \udcff\n"), "api/response")
    recorder.write(tmp_path / "99-x", "99 a test\nsecond line")

    txt = (tmp_path / "99-x.txt").read_bytes()
    assert txt.startswith(b"# 99 a test\n# second line\n# Recorded by ")
    assert b"\n\n#### 0001 +" in txt
    jsonl = (tmp_path / "99-x.jsonl").read_text()
    assert "s3cret" not in jsonl and b"s3cret" not in txt
    first = json.loads(jsonl.splitlines()[0])
    assert list(first) == ["seq", "rel", "utc", "dir", "len", "ctype", "data"]
    assert "e-" not in jsonl.splitlines()[0].split('"utc"')[0]  # rel never in exponent form

    from_txt = wire.load_transcript(tmp_path / "99-x.txt")
    from_jsonl = wire.load_transcript(tmp_path / "99-x.jsonl")
    assert from_txt == from_jsonl
    assert [r.dir for r in from_txt] == ["NOTE", "NOTE", "S->C", "C->S", "S->C"]
    assert from_txt[3].data == b"auth ClueCon\n\n"
    assert from_txt[4].data.endswith(b"caf\xc3\xa9 \xff\n")


def test_prompt_lengths_as_recorded() -> None:
    assert prompt_length_ms("tone_stream://%(200,100,440)") == 300
    assert prompt_length_ms("tone_stream://%(250,250,440);loops=2") == 1000
    assert prompt_length_ms("tone_stream://%(100,50,350,440);%(100,50,480)") == 300
    assert prompt_length_ms("silence_stream://500") == 500
    assert prompt_length_ms("/confguard/no/such/prompt.wav") is None
    assert prompt_length_ms("ivr/ivr-welcome.wav") is None
