"""Tests for confguard.journal: the SQLite invite journal and `--since` parsing."""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime
from pathlib import Path

import pytest

from confguard.journal import (
    SCHEMA_VERSION,
    InviteRecord,
    Journal,
    JournalError,
    parse_since,
)

T0 = 1_800_000_000.0


def make_record(n: int, *, ext: str = "1000", room: str = "test1", created: float = T0,
                timeout: float = 30.0) -> InviteRecord:
    return InviteRecord(
        invite_id=f"inv-{n}",
        call_uuid=f"00000000-0000-0000-0000-{n:012d}",
        job_uuid=f"11111111-0000-0000-0000-{n:012d}",
        ext=ext,
        room=room,
        timeout=timeout,
        deadline=created + timeout,
        created_at=created,
        detail={"key": "1"},
    )


@pytest.fixture
def journal(tmp_path: Path):
    j = Journal(tmp_path / "state" / "sub" / "journal.sqlite3")
    yield j
    j.close()


def test_creates_parent_directory_schema_version_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "journal.db"
    Journal(path).close()
    assert path.is_file()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "invites" in tables
    finally:
        conn.close()


def test_round_trip_through_every_state(journal: Journal) -> None:
    rec = make_record(1)
    journal.open_invite(rec)
    got = journal.get("inv-1")
    assert got is not None
    assert (got.call_uuid, got.job_uuid, got.ext, got.room) == (
        rec.call_uuid, rec.job_uuid, "1000", "test1")
    assert got.deadline == T0 + 30 and got.created_at == T0 and got.updated_at == T0
    assert got.state == "placing" and got.outcome is None and not got.finished
    assert got.detail == {"key": "1"}

    assert journal.update_state("inv-1", "ringing", T0 + 0.5)
    assert journal.update_state("inv-1", "waiting_key", T0 + 1.0)
    assert journal.update_state("inv-1", "cancelling", T0 + 3.0)
    assert journal.update_state("inv-1", "joining", T0 + 3.1)
    assert journal.update_state("inv-1", "joined", T0 + 3.4)
    # a second entry into a stamped state keeps the first stamp
    assert journal.update_state("inv-1", "waiting_key", T0 + 9.0)
    assert journal.finish_invite("inv-1", "joined", None, T0 + 60.0, {"member_id": "7"})

    got = journal.get("inv-1")
    assert got is not None
    assert got.state == "ended" and got.outcome == "joined" and got.cause is None
    assert got.answered_at == T0 + 1.0
    assert got.key_at == T0 + 3.0
    assert got.joined_at == T0 + 3.4
    assert got.ended_at == T0 + 60.0
    assert got.detail == {"key": "1", "member_id": "7"}
    assert got.durations() == {"ring_s": 1.0, "wait_key_s": 2.0, "join_s": 0.4, "total_s": 60.0}
    assert got.as_dict()["durations"]["total_s"] == 60.0


def test_state_accepts_str_enums(journal: Journal) -> None:
    from enum import Enum

    class S(str, Enum):  # noqa: UP042 - a plain (str, Enum), as callers may pass
        WAITING_KEY = "waiting_key"

    journal.open_invite(make_record(1))
    journal.update_state("inv-1", S.WAITING_KEY, T0 + 2)
    got = journal.get("inv-1")
    assert got is not None and got.answered_at == T0 + 2


def test_finish_counts_once_and_ignores_unknown(journal: Journal) -> None:
    journal.open_invite(make_record(1))
    assert journal.finish_invite("inv-1", "timeout", "ALLOTTED_TIMEOUT", T0 + 30.5)
    assert not journal.finish_invite("inv-1", "joined", None, T0 + 31)
    assert not journal.update_state("inv-1", "joined", T0 + 31)
    assert not journal.finish_invite("nope", "failed", None, T0)
    assert not journal.update_state("nope", "ringing", T0)
    got = journal.get("inv-1")
    assert got is not None
    assert (got.outcome, got.cause, got.state, got.joined_at) == (
        "timeout", "ALLOTTED_TIMEOUT", "ended", None)


def test_duplicate_invite_id_is_an_error(journal: Journal) -> None:
    journal.open_invite(make_record(1))
    with pytest.raises(JournalError, match="inv-1"):
        journal.open_invite(make_record(1))


def test_active_versus_finished(journal: Journal) -> None:
    for n in range(4):
        journal.open_invite(make_record(n, created=T0 + n))
    journal.finish_invite("inv-1", "busy", "USER_BUSY", T0 + 5)
    journal.finish_invite("inv-3", "no_answer", "NO_ANSWER", T0 + 6)
    assert [r.invite_id for r in journal.active()] == ["inv-0", "inv-2"]
    assert [r.invite_id for r in journal.history()] == ["inv-3", "inv-1"]


def test_history_filters_and_limit(journal: Journal) -> None:
    specs = [("1000", "test1"), ("1001", "test1"), ("1000", "other"), ("1000", "test1")]
    for n, (ext, room) in enumerate(specs):
        journal.open_invite(make_record(n, ext=ext, room=room, created=T0 + 100 * n))
        journal.finish_invite(f"inv-{n}", "joined", None, T0 + 100 * n + 10)
    ids = lambda rows: [r.invite_id for r in rows]  # noqa: E731
    assert ids(journal.history()) == ["inv-3", "inv-2", "inv-1", "inv-0"]
    assert ids(journal.history(ext="1000")) == ["inv-3", "inv-2", "inv-0"]
    assert ids(journal.history(room="test1")) == ["inv-3", "inv-1", "inv-0"]
    assert ids(journal.history(ext="1000", room="test1")) == ["inv-3", "inv-0"]
    assert ids(journal.history(since=T0 + 100)) == ["inv-3", "inv-2", "inv-1"]
    assert ids(journal.history(since=T0 + 100, ext="1001")) == ["inv-1"]
    assert ids(journal.history(limit=2)) == ["inv-3", "inv-2"]
    assert journal.history(ext="9999") == []
    with pytest.raises(ValueError):
        journal.history(limit=0)


def test_filter_values_are_parameters_not_sql(journal: Journal) -> None:
    journal.open_invite(make_record(1))
    journal.finish_invite("inv-1", "joined", None, T0 + 1)
    assert journal.history(ext="1000' OR '1'='1") == []


def test_prune_removes_only_old_finished_invites(journal: Journal) -> None:
    day = 86400.0
    journal.open_invite(make_record(1, created=T0))            # finished 10 days ago
    journal.finish_invite("inv-1", "joined", None, T0 + 10)
    journal.open_invite(make_record(2, created=T0 + 8 * day))  # finished 2 days ago
    journal.finish_invite("inv-2", "timeout", None, T0 + 8 * day + 30)
    journal.open_invite(make_record(3, created=T0))            # never finished, very old
    now = T0 + 10 * day
    assert journal.prune(7, now=now) == 1
    assert journal.get("inv-1") is None
    assert journal.get("inv-2") is not None
    assert [r.invite_id for r in journal.active()] == ["inv-3"]
    assert journal.prune(7, now=now) == 0
    assert journal.prune(0, now=now) == 1
    assert [r.invite_id for r in journal.active()] == ["inv-3"]
    with pytest.raises(ValueError):
        journal.prune(-1)


def test_reopen_after_close_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    first = Journal(path)
    first.open_invite(make_record(1))
    first.update_state("inv-1", "waiting_key", T0 + 1)
    first.open_invite(make_record(2))
    first.finish_invite("inv-2", "rejected", "CALL_REJECTED", T0 + 2)
    first.close()
    first.close()  # idempotent
    assert first.closed
    with pytest.raises(JournalError, match="closed"):
        first.active()

    second = Journal(path)
    try:
        active = second.active()
        assert [r.invite_id for r in active] == ["inv-1"]
        assert active[0].state == "waiting_key" and active[0].answered_at == T0 + 1
        assert [(r.invite_id, r.cause) for r in second.history()] == [("inv-2", "CALL_REJECTED")]
    finally:
        second.close()


def test_concurrent_reader_while_writing(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    writer = Journal(path)
    reader = Journal(path, readonly=True)
    errors: list[BaseException] = []
    seen_counts: list[int] = []
    stop = threading.Event()

    def read_loop() -> None:
        try:
            while not stop.is_set():
                seen_counts.append(len(reader.history(limit=1000)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=read_loop)
    thread.start()
    try:
        # the writer holds an open read transaction on another connection: WAL lets both proceed
        held = sqlite3.connect(path)
        held.execute("BEGIN")
        held.execute("SELECT count(*) FROM invites").fetchone()
        for n in range(200):
            writer.open_invite(make_record(n, created=T0 + n))
            writer.update_state(f"inv-{n}", "ringing", T0 + n + 0.1)
            writer.finish_invite(f"inv-{n}", "joined", None, T0 + n + 0.5)
        held.rollback()
        held.close()
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not errors
    assert seen_counts == sorted(seen_counts)  # a reader never sees rows disappear
    assert len(reader.history(limit=1000)) == 200
    with pytest.raises(JournalError, match="read-only"):
        reader.open_invite(make_record(999))
    reader.close()
    writer.close()


def test_readonly_needs_an_existing_journal(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="does not exist"):
        Journal(tmp_path / "missing.db", readonly=True)
    plain = tmp_path / "plain.db"
    sqlite3.connect(plain).close()
    with pytest.raises(JournalError, match="not a confguard journal"):
        Journal(plain, readonly=True)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(JournalError, match="newer"):
        Journal(path)


def test_not_a_database_is_a_journal_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(JournalError, match=str(path.name)):
        Journal(path)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("1h", 3600), ("2d", 172800), ("1w", 604800),
     ("1.5h", 5400), (" 10 min ", 600), ("5H", 18000)],
)
def test_parse_since_relative(text: str, seconds: float) -> None:
    assert parse_since(text, now=T0) == T0 - seconds


def test_parse_since_absolute() -> None:
    assert parse_since("2026-11-28T08:00:00+00:00") == datetime.fromisoformat(
        "2026-11-28T08:00:00+00:00").timestamp()
    assert parse_since("2026-11-28T09:00:00+01:00") == parse_since("2026-11-28T08:00:00Z")
    local_midnight = datetime(2026, 11, 28).timestamp()
    assert parse_since("2026-11-28") == local_midnight


@pytest.mark.parametrize("text", ["", "yesterday", "1y", "-1h", "h", "2026-13-01", "1h30m"])
def test_parse_since_rejects_with_clear_message(text: str) -> None:
    with pytest.raises(ValueError, match="--since") as info:
        parse_since(text)
    assert "90s" in str(info.value) and "ISO" in str(info.value)


# ------------------------------------------------------------------------------ batching


def test_batched_state_changes_are_one_transaction_after_the_interval(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    writer = Journal(path)
    scheduled: list[tuple[float, object]] = []
    writer.batch_updates(lambda delay, fn: scheduled.append((delay, fn)), interval=0.05)
    try:
        for n in (1, 2):
            writer.open_invite(make_record(n))
        for state, wall in (("ringing", T0 + 1), ("waiting_key", T0 + 2), ("cancelling", T0 + 3)):
            for n in (1, 2):
                assert writer.update_state(f"inv-{n}", state, wall) is True
        assert [delay for delay, _ in scheduled] == [0.05]  # one flush asked for, not six
        reader = Journal(path, readonly=True)
        try:
            assert {r.state for r in reader.active()} == {"placing"}  # nothing written yet
            batches = writer.batches
            fn = scheduled[0][1]
            assert callable(fn)
            fn()  # the scheduled flush
            assert writer.batches == batches + 1
            rows = {r.invite_id: r for r in reader.active()}
            assert {r.state for r in rows.values()} == {"cancelling"}
            assert rows["inv-1"].answered_at == T0 + 2 and rows["inv-1"].key_at == T0 + 3
        finally:
            reader.close()
        # the next change asks for a new flush; a read in this process writes the queue first
        writer.update_state("inv-1", "joining", T0 + 4)
        assert len(scheduled) == 2
        got = writer.get("inv-1")
        assert got is not None and got.state == "joining"
    finally:
        writer.close()


_CRASHING_WRITER = """
import os, sys
sys.path.insert(0, {tests!r})
from test_journal import make_record, T0
from confguard.journal import Journal
j = Journal({path!r})
j.batch_updates(lambda delay, fn: None)  # the flush never comes: the process dies first
for n in (1, 2):
    j.open_invite(make_record(n))
    j.update_state(f"inv-{{n}}", "ringing", T0 + 1)
    j.update_state(f"inv-{{n}}", "waiting_key", T0 + 2)
j.finish_invite("inv-1", "timeout", "ALLOTTED_TIMEOUT", T0 + 30)
j.update_state("inv-2", "cancelling", T0 + 3)
os._exit(0)  # no flush, no close: a crash
"""


def test_an_outcome_survives_a_crash_with_state_changes_queued(tmp_path: Path) -> None:
    """The writer dies without flushing: the finished invite's outcome (and the state changes
    queued before it) are in the file; the other invite keeps its row, in a state at most the
    last queued changes behind."""
    import subprocess
    import sys

    path = tmp_path / "journal.sqlite3"
    script = _CRASHING_WRITER.format(tests=str(Path(__file__).parent), path=str(path))
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    with Journal(path, readonly=True) as reader:
        done = reader.get("inv-1")
        assert done is not None and done.outcome == "timeout" and done.ended_at == T0 + 30
        assert done.answered_at == T0 + 2  # its queued waiting_key went in with the outcome
        live = reader.get("inv-2")
        assert live is not None and live.ended_at is None
        assert live.state == "waiting_key"  # queued before the outcome: written with it
        assert live.key_at is None  # the change queued after the last commit is lost


def test_an_older_journal_is_migrated_step_by_step_and_keeps_its_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from confguard import journal as journal_module

    path = tmp_path / "old.db"
    monkeypatch.setattr(journal_module, "_MIGRATIONS", ())
    monkeypatch.setattr(journal_module, "SCHEMA_VERSION", 1)
    with Journal(path) as first:  # a version-1 journal, as an earlier confguard wrote it
        first.open_invite(make_record(1))
    steps = (
        "CREATE TABLE step_a (x INTEGER)",
        "ALTER TABLE step_a ADD COLUMN y TEXT; CREATE TABLE step_b (z INTEGER)",
    )
    monkeypatch.setattr(journal_module, "_MIGRATIONS", steps)
    monkeypatch.setattr(journal_module, "SCHEMA_VERSION", 3)
    with Journal(path) as second:
        assert [r.invite_id for r in second.active()] == ["inv-1"]
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
        assert [c[1] for c in conn.execute("PRAGMA table_info(step_a)")] == ["x", "y"]
        assert conn.execute("SELECT count(*) FROM step_b").fetchone()[0] == 0
    finally:
        conn.close()
    with Journal(path):  # at the current version nothing runs again (a rerun would fail)
        pass
    fresh = tmp_path / "fresh.db"
    with Journal(fresh):  # a new journal gets the base schema and every step
        pass
    conn = sqlite3.connect(fresh)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
        assert conn.execute("SELECT count(*) FROM step_b").fetchone()[0] == 0
    finally:
        conn.close()


def test_a_joined_member_leaving_is_recorded_once_and_in_room_lists_the_others(
    journal: Journal,
) -> None:
    for n in (1, 2, 3):
        journal.open_invite(make_record(n, created=T0 + n))
    journal.finish_invite("inv-1", "joined", None, T0 + 10)
    journal.finish_invite("inv-2", "joined", None, T0 + 11)
    journal.finish_invite("inv-3", "timeout", "ALLOTTED_TIMEOUT", T0 + 12)
    assert [r.invite_id for r in journal.in_room()] == ["inv-1", "inv-2"]
    assert journal.leave_invite("inv-1", "max_duration", "ALLOTTED_TIMEOUT", T0 + 40)
    assert not journal.leave_invite("inv-1", "hung_up", "NORMAL_CLEARING", T0 + 41)  # first only
    assert not journal.leave_invite("inv-3", "hung_up", None, T0 + 42)  # never in the room
    row = journal.get("inv-1")
    assert row is not None
    assert (row.left_at, row.left_reason, row.left_cause) == (
        T0 + 40, "max_duration", "ALLOTTED_TIMEOUT"
    )
    assert row.as_dict()["left_reason"] == "max_duration"
    assert [r.invite_id for r in journal.in_room()] == ["inv-2"]
    other = journal.get("inv-3")
    assert other is not None and other.left_at is None and other.left_reason is None
