"""The invite journal: one SQLite row per invite, the daemon's memory across restarts.

FreeSWITCH owns the truth about calls; this journal owns what confguard knew about them. A row is
written when an invite starts and updated on every state change and at the end, so a restarted
daemon can find the invites it left unfinished (`active()`) and re-adopt them or mark them lost, and
`confguard history` can show finished ones (`history()`).

The database runs in WAL mode, so readers (the CLI) never block the writer (the daemon). Each
call is one short transaction on the caller's thread; nothing here touches asyncio. With
`batch_updates()` (the daemon) state changes are queued and written together, one transaction
per ~50 ms, by a callback the caller schedules; a new row and an outcome are never queued: they
commit at once, with whatever state changes were queued before them (so a crash loses at most
the last ~50 ms of intermediate states, never an invite's row or its outcome), and every read,
`prune()` and `close()` writes the queue first. Rows of
finished invites older than the retention are removed by `prune()`; unfinished rows are never
pruned. A second table keeps the idempotency keys of `POST /invites` (`put_idempotency`,
`get_idempotency`, `prune_idempotency`; their meaning is confguard.idempotency's). The schema
carries a version (`PRAGMA user_version`) and is created if missing; later steps (`_MIGRATIONS`)
add the tables of other modules, which use them through `write_rows` and `read_rows` (the
webhook outbox of `confguard.webhook_delivery`).
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any

# Schema steps after version 1, in order: the journal at version N runs _MIGRATIONS[N-1:] on open.
# A feature that needs a table or a column appends one entry; never edit a released entry.
_MIGRATIONS: tuple[str, ...] = (
    # 2: idempotency keys of `POST /invites` (confguard.idempotency): the request's hash and the
    # invites it placed, so a retried request is answered from here, across restarts too.
    """
    CREATE TABLE IF NOT EXISTS idempotency_keys (
        key          TEXT PRIMARY KEY,
        request_hash TEXT NOT NULL,
        invites      TEXT NOT NULL,
        complete     INTEGER NOT NULL DEFAULT 0,
        created_at   REAL NOT NULL
    );
    CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency_keys (created_at)
    """,
    # 3: status webhooks (confguard.webhook_delivery): the durable outbox, one row per event and
    # URL until it is delivered or given up; and each invite's next webhook sequence number.
    """
    CREATE TABLE IF NOT EXISTS webhook_outbox (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        invite_id       TEXT NOT NULL,
        seq             INTEGER NOT NULL,
        url             TEXT NOT NULL,
        event_id        TEXT NOT NULL,
        body            TEXT NOT NULL,
        created_at      REAL NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error      TEXT
    );
    CREATE INDEX IF NOT EXISTS webhook_outbox_lane ON webhook_outbox (url, invite_id, id);
    CREATE TABLE IF NOT EXISTS webhook_invites (
        invite_id TEXT PRIMARY KEY,
        next_seq  INTEGER NOT NULL,
        timings   TEXT NOT NULL DEFAULT '{}'
    );
    """,
    # 4: the room (confguard.room): when and why a joined member left (room.py's Reason), its cause.
    "ALTER TABLE invites ADD COLUMN left_at REAL; "
    "ALTER TABLE invites ADD COLUMN left_reason TEXT; "
    "ALTER TABLE invites ADD COLUMN left_cause TEXT",
)
SCHEMA_VERSION = 1 + len(_MIGRATIONS)
_log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS invites (
    invite_id   TEXT PRIMARY KEY,
    call_uuid   TEXT NOT NULL,
    job_uuid    TEXT NOT NULL,
    ext         TEXT NOT NULL,
    room        TEXT NOT NULL,
    timeout     REAL NOT NULL,
    deadline    REAL NOT NULL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    state       TEXT NOT NULL,
    outcome     TEXT,
    cause       TEXT,
    answered_at REAL,
    key_at      REAL,
    joined_at   REAL,
    ended_at    REAL,
    detail      TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS invites_active ON invites (ended_at) WHERE ended_at IS NULL;
CREATE INDEX IF NOT EXISTS invites_created ON invites (created_at);
CREATE INDEX IF NOT EXISTS invites_ext ON invites (ext, created_at);
CREATE INDEX IF NOT EXISTS invites_call ON invites (call_uuid);
"""

# Entering one of these states stamps the matching column (first time only).
_STATE_TIMESTAMPS = {
    "waiting_key": "answered_at",
    "cancelling": "key_at",
    "joined": "joined_at",
}

_COLUMNS = (
    "invite_id, call_uuid, job_uuid, ext, room, timeout, deadline, created_at, updated_at, "
    "state, outcome, cause, answered_at, key_at, joined_at, ended_at, detail"
)
# Reads take every column: those of later schema steps (`_record` reads the ones it knows).
_READ_COLUMNS = "*"


class JournalError(Exception):
    """The journal database cannot be used (unreadable, newer schema, duplicate invite id)."""


@dataclass
class InviteRecord:
    """One invite as the journal knows it. Times are wall-clock epoch seconds."""

    invite_id: str
    call_uuid: str
    job_uuid: str
    ext: str
    room: str
    timeout: float
    deadline: float  # wall time at which FreeSWITCH's hangup timer is due
    created_at: float
    state: str = "placing"
    updated_at: float | None = None  # defaults to created_at on open_invite
    outcome: str | None = None
    cause: str | None = None
    answered_at: float | None = None
    key_at: float | None = None
    joined_at: float | None = None
    ended_at: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    left_at: float | None = None  # a joined member left the room (or was found gone) then
    left_reason: str | None = None  # room.Reason: max_duration, kicked, hung_up, unseen
    left_cause: str | None = None

    @property
    def finished(self) -> bool:
        return self.ended_at is not None

    @property
    def ring_seconds(self) -> float | None:
        """From the invite's start to the answer."""
        return _span(self.created_at, self.answered_at)

    @property
    def wait_key_seconds(self) -> float | None:
        """From the answer to the key press."""
        return _span(self.answered_at, self.key_at)

    @property
    def join_seconds(self) -> float | None:
        """From the key press to the member joining the conference."""
        return _span(self.key_at, self.joined_at)

    @property
    def total_seconds(self) -> float | None:
        """From the invite's start to its end."""
        return _span(self.created_at, self.ended_at)

    def durations(self) -> dict[str, float | None]:
        return {
            "ring_s": self.ring_seconds,
            "wait_key_s": self.wait_key_seconds,
            "join_s": self.join_seconds,
            "total_s": self.total_seconds,
        }

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for `status --json` / `history --json`)."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["durations"] = self.durations()
        return data


def _span(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return round(end - start, 3)


class Journal:
    """The invite journal in one SQLite file.

    `Journal(path)` opens (creating the parent directory and the schema if missing) for writing;
    `Journal(path, readonly=True)` opens an existing journal for reading only (the CLI).
    Safe to share between threads: every call holds an internal lock.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False, busy_timeout: float = 2.0):
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.Lock()
        self._pending: list[tuple[str, str, float]] = []  # queued state changes, in order
        self._schedule: Callable[[float, Callable[[], None]], object] | None = None
        self._batch_interval = 0.05
        self._flush_armed = False
        self.batches = 0  # transactions that wrote queued state changes (for tests and bench)
        try:
            if readonly:
                if not self.path.exists():
                    raise JournalError(f"journal {self.path} does not exist")
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                conn = sqlite3.connect(
                    uri, uri=True, timeout=busy_timeout, check_same_thread=False,
                    isolation_level=None,
                )
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(
                    str(self.path), timeout=busy_timeout, check_same_thread=False,
                    isolation_level=None,
                )
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open journal {self.path}: {exc}") from exc
        conn.row_factory = sqlite3.Row
        self._conn: sqlite3.Connection | None = conn
        try:
            self._prepare(conn)
        except BaseException:
            conn.close()
            self._conn = None
            raise

    def _prepare(self, conn: sqlite3.Connection) -> None:
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise JournalError(
                    f"journal {self.path} has schema version {version}, newer than this "
                    f"confguard understands ({SCHEMA_VERSION}); upgrade confguard or move the file"
                )
            if self.readonly:
                if version == 0:
                    raise JournalError(f"{self.path} is not a confguard journal (no schema)")
                return
            conn.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a power cut may lose the last transactions, never corrupts the file.
            conn.execute("PRAGMA synchronous=NORMAL")
            if version < SCHEMA_VERSION:
                steps = [_SCHEMA] if version == 0 else []
                steps += _MIGRATIONS[max(0, version - 1):]
                with _transaction(conn):
                    for step in steps:
                        for statement in step.split(";"):
                            if statement.strip():
                                conn.execute(statement)
                    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"cannot use journal {self.path}: {exc}") from exc

    # -- writing -----------------------------------------------------------------------------

    def open_invite(self, record: InviteRecord) -> None:
        """Write the row of a starting invite. A second row with the same id is an error."""
        updated = record.updated_at if record.updated_at is not None else record.created_at
        values = (
            record.invite_id, record.call_uuid, record.job_uuid, record.ext, record.room,
            float(record.timeout), float(record.deadline), float(record.created_at),
            float(updated), _text(record.state), _opt_str(record.outcome), record.cause,
            record.answered_at, record.key_at, record.joined_at, record.ended_at,
            json.dumps(record.detail, default=str, sort_keys=True),
        )
        try:
            self._write(
                f"INSERT INTO invites ({_COLUMNS}) VALUES ({', '.join('?' * 17)})", values,
                with_pending=True,
            )
        except sqlite3.IntegrityError as exc:
            raise JournalError(f"invite {record.invite_id} is already in the journal") from exc

    def update_state(self, invite_id: str, state: str, wall: float) -> bool:
        """Record a state change; stamps answered_at / key_at / joined_at the first time.

        Returns False when no unfinished invite has that id (nothing written). Batching
        (`batch_updates`): queued, True, written by the next `flush()`."""
        state = _text(state)
        if self._schedule is not None:
            if self.readonly:
                raise JournalError(f"journal {self.path} is open read-only")
            self._pending.append((invite_id, state, float(wall)))
            if not self._flush_armed:
                self._flush_armed = True
                self._schedule(self._batch_interval, self._scheduled_flush)
            return True
        sql, params = _update_statement(invite_id, state, float(wall))
        return self._write(sql, params) > 0

    def batch_updates(
        self, schedule: Callable[[float, Callable[[], None]], object], interval: float = 0.05
    ) -> None:
        """Queue state changes from now on; `schedule(delay, fn)` (e.g. ``loop.call_later``) is
        asked to call the flush `interval` seconds after the first queued change."""
        if interval < 0:
            raise ValueError(f"interval must be >= 0, got {interval}")
        self._schedule = schedule
        self._batch_interval = interval

    def flush(self) -> int:
        """Write the queued state changes in one transaction; returns how many there were."""
        with self._lock:
            self._flush_armed = False
            if not self._pending:
                return 0
            conn = self._connection()
            count = len(self._pending)
            try:
                with _transaction(conn):
                    self._write_pending(conn)
            except sqlite3.Error as exc:
                raise JournalError(f"journal {self.path}: {exc}") from exc
        return count

    def _scheduled_flush(self) -> None:
        try:
            self.flush()
        except JournalError:
            # history, not control (as the engine treats every journal error); the queue is
            # kept and written with the next row, outcome or flush
            _log.exception("journal.error", extra={"op": "flush"})

    def _write_pending(self, conn: sqlite3.Connection) -> None:
        """Inside a transaction: the queued state changes, in order (cleared once committed)."""
        if not self._pending:
            return
        for invite_id, state, wall in self._pending:
            conn.execute(*_update_statement(invite_id, state, wall))
        self.batches += 1
        self._pending = []

    def finish_invite(
        self,
        invite_id: str,
        outcome: str,
        cause: str | None,
        wall: float,
        detail: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record the final outcome (state becomes `ended`); `detail` is merged into the row's.

        Only the first finish counts: returns False if the invite is unknown or already finished.
        An outcome of `joined` stamps joined_at if the state change did not."""
        with self._lock:
            conn = self._connection()
            try:
                with _transaction(conn):
                    self._write_pending(conn)  # the state changes before it, in the same commit
                    row = conn.execute(
                        "SELECT detail FROM invites WHERE invite_id = ? AND ended_at IS NULL",
                        (invite_id,),
                    ).fetchone()
                    if row is None:
                        return False
                    merged = _load_detail(row["detail"])
                    merged.update(detail or {})
                    joined = (
                        ", joined_at = COALESCE(joined_at, :wall)"
                        if _text(outcome) == "joined"
                        else ""
                    )
                    conn.execute(
                        "UPDATE invites SET state = 'ended', outcome = :outcome, cause = :cause, "
                        f"ended_at = :wall, updated_at = :wall, detail = :detail{joined} "
                        "WHERE invite_id = :id",
                        {
                            "outcome": _text(outcome), "cause": cause, "wall": float(wall),
                            "detail": json.dumps(merged, default=str, sort_keys=True),
                            "id": invite_id,
                        },
                    )
            except sqlite3.Error as exc:
                raise JournalError(f"journal {self.path}: {exc}") from exc
        return True

    def leave_invite(
        self, invite_id: str, reason: str, cause: str | None, wall: float
    ) -> bool:
        """Record that a joined member left the room: when, why and the hangup cause. Only
        the first counts; False if the invite is unknown, not joined, or already left."""
        return self._write(
            "UPDATE invites SET left_at = ?, left_reason = ?, left_cause = ?, updated_at = ? "
            "WHERE invite_id = ? AND outcome = 'joined' AND left_at IS NULL",
            (float(wall), _text(reason), cause, float(wall), invite_id),
            with_pending=True,
        ) == 1

    def in_room(self) -> list[InviteRecord]:
        """Joined invites whose member has not been seen leaving: what a restarted daemon
        watches again (the channel may still be in the room), oldest first."""
        return self._read(
            f"SELECT {_READ_COLUMNS} FROM invites WHERE outcome = 'joined' AND left_at IS NULL "
            "ORDER BY created_at, rowid"
        )

    def prune(self, retention_days: float, *, now: float | None = None) -> int:
        """Delete finished invites that ended more than `retention_days` ago; returns how many.

        Unfinished invites are kept whatever their age (a restarted daemon must see them)."""
        if retention_days < 0:
            raise ValueError(f"retention_days must be >= 0, got {retention_days}")
        cutoff = (time.time() if now is None else now) - retention_days * 86400.0
        return self._write(
            "DELETE FROM invites WHERE ended_at IS NOT NULL AND ended_at < ?", (cutoff,),
            with_pending=True,
        )

    # -- idempotency keys (confguard.idempotency owns what they mean) -----------------------

    def put_idempotency(
        self, key: str, request_hash: str, invites: list[dict[str, Any]], *, complete: bool,
        created_at: float,
    ) -> None:
        """Write (or overwrite) one key's row: the request's hash and the invites placed so far."""
        self._write(
            "INSERT INTO idempotency_keys (key, request_hash, invites, complete, created_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
            "request_hash = excluded.request_hash, invites = excluded.invites, "
            "complete = excluded.complete, created_at = excluded.created_at",
            (key, request_hash, json.dumps(invites, sort_keys=True), int(complete),
             float(created_at)),
        )

    def get_idempotency(self, key: str) -> dict[str, Any] | None:
        """One key's row as a dict (request_hash, invites, complete, created_at), or None."""
        with self._lock:
            conn = self._connection()
            try:
                row = conn.execute(
                    "SELECT key, request_hash, invites, complete, created_at "
                    "FROM idempotency_keys WHERE key = ?", (key,),
                ).fetchone()
            except sqlite3.Error as exc:
                raise JournalError(f"journal {self.path}: {exc}") from exc
        if row is None:
            return None
        return {
            "key": row["key"], "request_hash": row["request_hash"],
            "invites": json.loads(row["invites"]), "complete": bool(row["complete"]),
            "created_at": row["created_at"],
        }

    def prune_idempotency(self, cutoff: float) -> int:
        """Delete the keys first used before `cutoff` (wall epoch seconds); returns how many."""
        return self._write("DELETE FROM idempotency_keys WHERE created_at < ?", (float(cutoff),))

    # -- reading -----------------------------------------------------------------------------

    def get(self, invite_id: str) -> InviteRecord | None:
        rows = self._read(f"SELECT {_READ_COLUMNS} FROM invites WHERE invite_id = ?", (invite_id,))
        return rows[0] if rows else None

    def active(self) -> list[InviteRecord]:
        """Invites started and not finished, oldest first: what a restarted daemon must
        re-adopt (the call still exists in FreeSWITCH) or finish as `lost`."""
        return self._read(
            f"SELECT {_READ_COLUMNS} FROM invites WHERE ended_at IS NULL ORDER BY created_at, rowid"
        )

    def history(
        self,
        ext: str | None = None,
        room: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[InviteRecord]:
        """Finished invites, newest first, filtered by extension, room and start time
        (`since`, wall epoch seconds, e.g. from `parse_since`)."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        where = ["ended_at IS NOT NULL"]
        params: list[Any] = []
        if ext is not None:
            where.append("ext = ?")
            params.append(ext)
        if room is not None:
            where.append("room = ?")
            params.append(room)
        if since is not None:
            where.append("created_at >= ?")
            params.append(float(since))
        params.append(int(limit))
        return self._read(
            f"SELECT {_READ_COLUMNS} FROM invites WHERE {' AND '.join(where)} "
            "ORDER BY created_at DESC, rowid DESC LIMIT ?",
            params,
        )

    # -- tables of other modules (the webhook outbox) ----------------------------------------

    def write_rows(self, statements: Sequence[tuple[str, Any]]) -> list[int | None]:
        """Run write statements on a feature's own tables in one transaction, after the queued
        state changes (so a row about a state is never committed before the state itself).
        Returns each statement's `lastrowid`."""
        if self.readonly:
            raise JournalError(f"journal {self.path} is open read-only")
        with self._lock:
            conn = self._connection()
            try:
                with _transaction(conn):
                    self._write_pending(conn)
                    return [conn.execute(sql, params).lastrowid for sql, params in statements]
            except sqlite3.Error as exc:
                raise JournalError(f"journal {self.path}: {exc}") from exc

    def read_rows(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        """Rows of a feature's own tables (the queued invite state changes are not written
        first: those tables do not depend on them)."""
        with self._lock:
            conn = self._connection()
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise JournalError(f"journal {self.path}: {exc}") from exc

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Write the queue, checkpoint the WAL into the main file and close. Idempotent."""
        if self._pending and self._conn is not None:
            self.flush()
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if not self.readonly:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass  # another reader holds the WAL; the data is committed either way
        finally:
            conn.close()

    @property
    def closed(self) -> bool:
        return self._conn is None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise JournalError(f"journal {self.path} is closed")
        return self._conn

    def _write(self, sql: str, params: Any = (), *, with_pending: bool = False) -> int:
        if self.readonly:
            raise JournalError(f"journal {self.path} is open read-only")
        with self._lock:
            conn = self._connection()
            try:
                with _transaction(conn):
                    if with_pending:
                        self._write_pending(conn)
                    return conn.execute(sql, params).rowcount
            except sqlite3.IntegrityError:
                raise
            except sqlite3.Error as exc:
                raise JournalError(f"journal {self.path}: {exc}") from exc

    def _read(self, sql: str, params: Any = ()) -> list[InviteRecord]:
        if self._pending:
            self.flush()
        with self._lock:
            conn = self._connection()
            try:
                rows = conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise JournalError(f"journal {self.path}: {exc}") from exc
        return [_record(row) for row in rows]


def _update_statement(invite_id: str, state: str, wall: float) -> tuple[str, dict[str, Any]]:
    column = _STATE_TIMESTAMPS.get(state)
    stamp = f", {column} = COALESCE({column}, :wall)" if column else ""
    return (
        f"UPDATE invites SET state = :state, updated_at = :wall{stamp} "
        "WHERE invite_id = :id AND ended_at IS NULL",
        {"state": state, "wall": wall, "id": invite_id},
    )


class _transaction:
    """BEGIN IMMEDIATE … COMMIT (ROLLBACK on error) on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")


def _text(value: object) -> str:
    """A state or outcome as stored: the value of an enum member (even a plain `str, Enum`)."""
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)


def _opt_str(value: object) -> str | None:
    return None if value is None else _text(value)


def _load_detail(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"unparsed": text}
    return value if isinstance(value, dict) else {"value": value}


def _record(row: sqlite3.Row) -> InviteRecord:
    return InviteRecord(
        invite_id=row["invite_id"], call_uuid=row["call_uuid"], job_uuid=row["job_uuid"],
        ext=row["ext"], room=row["room"], timeout=row["timeout"], deadline=row["deadline"],
        created_at=row["created_at"], updated_at=row["updated_at"], state=row["state"],
        outcome=row["outcome"], cause=row["cause"], answered_at=row["answered_at"],
        key_at=row["key_at"], joined_at=row["joined_at"], ended_at=row["ended_at"],
        detail=_load_detail(row["detail"]),
        **{name: row[name] for name in ("left_at", "left_reason", "left_cause")
           if name in row.keys()},  # noqa: SIM118 (sqlite3.Row has no __contains__ by name)
    )


_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, *, now: float | None = None) -> float:
    """Turn a `--since` value into wall epoch seconds.

    Relative: `90s`, `30m`, `1h`, `2d`, `1w` (that long before now). Absolute: an ISO 8601
    date or date-time (`2026-11-28`, `2026-11-28T08:00`, `2026-11-28 08:00:00+01:00`); without a
    zone it is local time. Anything else raises ValueError saying what is accepted."""
    value = text.strip()
    match = _RELATIVE.match(value)
    if match:
        amount = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
        return (time.time() if now is None else now) - amount
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"cannot read --since {text!r}: use a duration such as 90s, 30m, 1h, 2d, 1w "
            "or an ISO date/time such as 2026-11-28 or 2026-11-28T08:00"
        ) from None
    return moment.timestamp()
