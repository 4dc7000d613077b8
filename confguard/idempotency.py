"""Idempotent invites: what an `Idempotency-Key` on `POST /invites` means, and where keys live.

It owns the key's whitelist (`check_key`, also used by the CLI before it connects), the canonical
hash of a request (`request_hash`: the invites the request would place, so field order, a field
given with its default value or left out, and the order of the extensions do not matter), and the
store of keys (`IdempotencyStore`: the journal's `idempotency_keys` table, plus a copy in memory;
memory only without a journal). The control API (confguard.api) decides with it; the engine never
hears of keys.

The rules, within the retention window (counted from the key's first use):
- A key maps each extension of its request to at most one invite. The key's row is written as
  each invite is created, before that invite's originate can be written (`Engine.invite` returns
  before the invite's worker first runs), so a daemon killed at any moment after still knows it.
- Same key, same request, every invite placed: the stored invites again, 200 with
  `Idempotent-Replayed: true`; nothing is sent to FreeSWITCH.
- Same key, same request, some extensions never placed (503 half-way, or the daemon died between
  two invites of one request): the retry places only those, 201, and lists all.
- Nothing placed (400 bad input, 503 before the first invite): no row; the key stays unused, so a
  retry once FreeSWITCH is back places the call.
- Same key, a different request: 409 `idempotency_conflict`, nothing sent.
- Two requests with one key at once: the second waits for the first (a per-key lock), then is
  answered as a retry of it (the same ids, or 409).
A key older than the window is as if never used; expired rows are pruned at start-up and whenever
a new key is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from confguard.invite import BadInput

if TYPE_CHECKING:
    from confguard.invite import InviteSpec

log = structlog.get_logger("confguard.idempotency")

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_RULE = "1-128 of A-Z a-z 0-9 _ - . :"
_KEY_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
DEFAULT_RETENTION_S = 86400.0


def check_key(value: object, field: str = HEADER) -> str:
    """The key as given, or BadInput naming `field` (the header, or the CLI flag)."""
    if not isinstance(value, str) or not _KEY_RE.fullmatch(value):
        raise BadInput(field, str(value)[:80], KEY_RULE)
    return value


def request_hash(specs: Sequence[InviteSpec]) -> str:
    """SHA-256 of the invites a request places, in a canonical form (sorted keys, sorted by
    extension): what the request means, not how it was spelled."""
    from confguard.engine import spec_to_journal

    canonical = sorted((spec_to_journal(spec) for spec in specs), key=lambda s: s["extension"])
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class IdempotencyStore:
    """The keys of `POST /invites`: durable in `journal` (a confguard.journal.Journal) when given,
    always mirrored in memory; `retention` seconds from a key's first use."""

    def __init__(
        self, journal: Any = None, retention: float = DEFAULT_RETENTION_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.journal = journal
        self.retention = float(retention)
        self.clock = clock
        self._memory: dict[str, dict[str, Any]] = {}
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """One request per key at a time; a second one waits here for the first."""
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def holders(self, key: str) -> int:
        """How many requests with `key` are inside `hold` now (the one running and those
        waiting)."""
        return self._locks.get(key, (None, 0))[1]

    def lookup(self, key: str) -> dict[str, Any] | None:
        """The key's row (request_hash, invites, complete, created_at) if used within the window.
        Raises JournalError when the journal cannot be read (the caller must not guess)."""
        row = self._memory.get(key)
        if row is None and self.journal is not None:
            row = self.journal.get_idempotency(key)
        if row is None or row["created_at"] < self.clock() - self.retention:
            return None
        return row

    def record(
        self, key: str, digest: str, invites: list[dict[str, Any]], *, complete: bool,
        created_at: float,
    ) -> None:
        """Store the key with the invites placed so far (never raises: the calls are placed)."""
        fresh = key not in self._memory
        self._memory[key] = {
            "key": key, "request_hash": digest, "invites": list(invites),
            "complete": complete, "created_at": created_at,
        }
        if self.journal is not None:
            try:
                self.journal.put_idempotency(
                    key, digest, list(invites), complete=complete, created_at=created_at
                )
            except Exception:
                # This daemon still answers from memory; after a restart the key would be lost.
                log.exception("journal.error", op="put_idempotency")
        if fresh:
            self.prune()

    def prune(self) -> int:
        """Forget the keys first used before the window; returns how many the journal dropped."""
        cutoff = self.clock() - self.retention
        for key in [k for k, row in self._memory.items() if row["created_at"] < cutoff]:
            del self._memory[key]
        if self.journal is None:
            return 0
        try:
            return int(self.journal.prune_idempotency(cutoff))
        except Exception:
            log.exception("journal.error", op="prune_idempotency")
            return 0
