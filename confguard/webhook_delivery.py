"""Status webhooks, delivered: the durable outbox in the journal and the sender that empties it.

Only the daemon imports this module (it loads aiohttp); what a webhook is (URLs, body,
signature) lives in `confguard.webhooks`.

- Writing: `WebhookDelivery.observe` is an engine observer (`Engine.add_observer`), so it runs
  for every state change and outcome right after the journal has it, and for a joined
  member's departure (`state: left`, after the outcome, with the next sequence number). It
  writes one outbox row per target URL (`[webhooks] urls` plus the invite's own `notify`
  URLs), and the invite's next sequence number, in one transaction that is committed before
  it returns (with the journal's queued state changes before it). A daemon that stops or dies
  after that loses nothing.
- Order: the rows of one invite to one URL form a lane, sent one at a time in the order they
  were written; a later row of a lane is never sent before the one before it was delivered or
  given up. Lanes are independent (another invite or another URL never waits for this one).
- Retries: anything but a 2xx answer is a failed attempt, including a 3xx (redirects are never
  followed), a timeout and a refused connection. The lane's head is tried again after
  `retry_initial` seconds, doubling up to `retry_max` (with up to 25 % less, at random, so that
  lanes spread out). An event still undelivered `give_up_after` seconds after it happened is
  dropped after its last attempt: logged (`webhook.given_up`) and counted, and its lane goes on.
- Delivered and given-up rows are deleted. A restarted daemon loads the rows left in the outbox
  and carries on, lanes in the same order; the sequence numbers of an invite it adopts continue
  where the last run stopped. A request that was in flight when the daemon stopped is sent
  again: the receiver may see an event twice, always with the same `seq` and event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from confguard import __version__
from confguard.webhooks import (
    ATTEMPT_HEADER,
    EVENT_ID_HEADER,
    LEFT_STATE,
    SIGNATURE_HEADER,
    TIMING_OF_STATE,
    encode_body,
    event_body,
    event_id,
    redact_url,
    request_of,
    signature,
)

log = structlog.get_logger("confguard.webhooks")

MAX_IN_FLIGHT = 16  # POSTs at once, over every lane and URL
MAX_RESPONSE_BYTES = 64 * 1024  # of a receiver's answer, read (and ignored) to reuse the connection

_INSERT_ROW = (
    "INSERT INTO webhook_outbox (invite_id, seq, url, event_id, body, created_at, "
    "next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_SAVE_SEQ = (
    "INSERT INTO webhook_invites (invite_id, next_seq, timings) VALUES (?, ?, ?) "
    "ON CONFLICT(invite_id) DO UPDATE SET next_seq = excluded.next_seq, timings = excluded.timings"
)

Lane = tuple[str, str]  # (url, invite id)


@dataclass(slots=True)
class OutboxRow:
    """One undelivered event for one URL, as held in memory (its body stays in the journal)."""

    id: int
    url: str
    invite_id: str
    seq: int
    event_id: str
    created_at: float
    attempts: int
    next_attempt_at: float


@dataclass(slots=True)
class _InviteMark:
    next_seq: int
    timings: dict[str, float]


class WebhookDelivery:
    """The outbox and its sender for one daemon. `observe` may be called before `start` (and
    after `stop`): the rows wait in the journal."""

    def __init__(
        self,
        journal: Any,
        config: Any,
        *,
        metrics: Any = None,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if config.secret is None:
            raise ValueError("webhooks need a secret ([webhooks] secret_file or credential)")
        self._journal = journal
        self._config = config
        self._secret = config.secret
        self._metrics = metrics
        self._clock = clock
        self._jitter = jitter
        self._lanes: dict[Lane, deque[OutboxRow]] = {}
        self._due: list[tuple[float, int, Lane]] = []  # a heap: one entry per idle lane
        self._order = itertools.count()
        self._busy: set[Lane] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._marks: dict[str, _InviteMark] = {}
        self._count = 0
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    # --- writing (the engine observer) ----------------------------------------------------------

    def targets(self, spec: Any) -> tuple[str, ...]:
        """Where the events of an invite go: the configured URLs, then its own."""
        own = tuple(getattr(spec, "notify", ()) or ())
        return tuple(dict.fromkeys((*self._config.urls, *own)))

    def observe(self, run: Any, update: dict[str, Any]) -> None:
        """Engine observer: the outbox rows of one update, committed before returning."""
        urls = self.targets(run.spec)
        if not urls:
            return
        invite = str(update["invite_id"])
        mark = self._marks.get(invite) or self._load_mark(run, update)
        if mark is None:
            log.warning("webhook.left_not_sent", invite=invite,
                        reason="the invite's sequence is not known (its outcome was sent by a "
                        "confguard without left events): a seq could repeat an event id")
            return
        seq = mark.next_seq
        timings = dict(mark.timings)
        left = update.get("state") == LEFT_STATE
        stamp = TIMING_OF_STATE.get(str(update.get("state")))
        if update.get("outcome") == "joined" and not left:
            stamp = "joined_at"
        if stamp is not None and stamp not in timings:
            timings[stamp] = float(update.get("ts") or self._clock())
        if update.get("outcome") and not left:
            timings["ended_at"] = float(update.get("ts") or self._clock())
        body = encode_body(event_body(update, seq=seq, started_at=run.started_wall,
                                      timings=timings,
                                      request=request_of(run.spec, getattr(run, "origin", {}))))
        now = self._clock()
        ident = event_id(invite, seq)
        statements: list[tuple[str, Any]] = [
            (_INSERT_ROW, (invite, seq, url, ident, body, now, now)) for url in urls
        ]
        # The outcome is an invite's last update, except `joined`: its member's `left` update
        # follows (confguard.members), and continues the sequence.
        final = left or (bool(update.get("outcome")) and update.get("outcome") != "joined")
        if final:  # its sequence is done
            statements.append(("DELETE FROM webhook_invites WHERE invite_id = ?", (invite,)))
        else:
            statements.append((_SAVE_SEQ, (invite, seq + 1, json.dumps(timings))))
        try:
            ids = self._journal.write_rows(statements)
        except Exception as exc:
            log.error("webhook.outbox_error", invite=invite, seq=seq, error=str(exc),
                      lost="this event, for every URL")
            return
        if final:
            self._marks.pop(invite, None)
        else:
            mark.next_seq, mark.timings = seq + 1, timings
            self._marks[invite] = mark
        for url, row_id in zip(urls, ids, strict=False):
            self._add(OutboxRow(int(row_id or 0), url, invite, seq, ident, now, 0, now))
        self._wake.set()

    def _load_mark(self, run: Any, update: dict[str, Any]) -> _InviteMark | None:
        """The sequence of an invite first seen by this process: 0 for a new one; where the last
        run stopped for one it adopted (its timings from the outbox, else from the journal);
        None for a member's `left` whose sequence was not kept."""
        fresh = (
            update.get("seq") == 0
            and update.get("state") == update.get("previous") == "placing"
            and not getattr(run.machine, "adopted", False)
        )
        if fresh:
            return _InviteMark(0, {})
        rows = self._journal.read_rows(
            "SELECT next_seq, timings FROM webhook_invites WHERE invite_id = ?",
            (str(update["invite_id"]),),
        )
        if rows:
            return _InviteMark(int(rows[0]["next_seq"]), dict(json.loads(rows[0]["timings"])))
        if update.get("state") == LEFT_STATE:
            return None
        timings: dict[str, float] = {}
        record = self._journal.get(str(update["invite_id"]))
        for name in ("answered_at", "key_at", "joined_at"):
            value = getattr(record, name, None) if record is not None else None
            if value is not None:
                timings[name] = float(value)
        return _InviteMark(0, timings)

    def _add(self, row: OutboxRow) -> None:
        key = (row.url, row.invite_id)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = deque()
        lane.append(row)
        self._count += 1
        if len(lane) == 1 and key not in self._busy:
            self._schedule(key, row.next_attempt_at)

    def _schedule(self, key: Lane, when: float) -> None:
        heapq.heappush(self._due, (when, next(self._order), key))

    # --- the sender ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load what an earlier run left in the outbox and start sending."""
        self._load()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._config.request_timeout),
            connector=aiohttp.TCPConnector(limit=MAX_IN_FLIGHT),
            headers={"User-Agent": f"confguard/{__version__}"},
            cookie_jar=aiohttp.DummyCookieJar(),  # a receiver's cookies are never sent back
            trust_env=False,  # no proxy from the environment
        )
        if self._metrics is not None:
            self._metrics.watch_webhook_queue(self.queue_stats)
        self._runner = asyncio.create_task(self._run(), name="confguard-webhooks")

    async def stop(self) -> None:
        """Stop sending; what is undelivered stays in the outbox (in flight: sent again)."""
        tasks = [t for t in (self._runner, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._runner = None
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()
            self._session = None

    def queue_stats(self) -> tuple[int, float]:
        """(undelivered rows, age in seconds of the oldest one; 0 when none)."""
        if not self._lanes:
            return 0, 0.0
        oldest = min(lane[0].created_at for lane in self._lanes.values() if lane)
        return self._count, max(0.0, self._clock() - oldest)

    def _load(self) -> None:
        # Sequence rows of invites that ended (or are gone) are not needed any more; the ones
        # of invites still active are, for the invites this run adopts, and so are those of
        # joined members not seen leaving (their `invite.left` event comes later).
        self._journal.write_rows([(
            "DELETE FROM webhook_invites WHERE invite_id NOT IN "
            "(SELECT invite_id FROM invites WHERE ended_at IS NULL "
            "OR (outcome = 'joined' AND left_at IS NULL))", (),
        )])
        rows = self._journal.read_rows(
            "SELECT id, url, invite_id, seq, event_id, created_at, attempts, next_attempt_at "
            "FROM webhook_outbox ORDER BY id"
        )
        held = {row.id: row for lane in self._lanes.values() for row in lane}  # observed early
        self._lanes, self._due, self._count = {}, [], 0
        for row in sorted([*(OutboxRow(*tuple(r)) for r in rows if r["id"] not in held),
                           *held.values()], key=lambda r: r.id):
            self._add(row)
        if rows:
            log.info("webhook.outbox_loaded", rows=len(rows), lanes=len(self._lanes))

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = self._clock()
            while self._due and self._due[0][0] <= now and len(self._tasks) < MAX_IN_FLIGHT:
                _, _, key = heapq.heappop(self._due)
                lane = self._lanes.get(key)
                if not lane or key in self._busy:
                    continue
                self._busy.add(key)
                task = asyncio.create_task(self._deliver(key, lane[0]))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            wait: float | None = None
            if self._due and len(self._tasks) < MAX_IN_FLIGHT:
                wait = max(0.0, self._due[0][0] - now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _deliver(self, key: Lane, row: OutboxRow) -> None:
        lane = self._lanes[key]
        try:
            await self._attempt(row, lane)
        except Exception:
            log.exception("webhook.error", invite=row.invite_id, seq=row.seq)
            if lane and lane[0] is row:
                row.next_attempt_at = self._clock() + self._config.retry_max
        finally:
            self._busy.discard(key)
            if lane:
                self._schedule(key, lane[0].next_attempt_at)
            elif self._lanes.get(key) is lane:
                del self._lanes[key]
            self._wake.set()

    async def _attempt(self, row: OutboxRow, lane: deque[OutboxRow]) -> None:
        found = self._journal.read_rows("SELECT body FROM webhook_outbox WHERE id = ?", (row.id,))
        if not found:  # not in the outbox any more: nothing to send
            self._done(lane)
            return
        attempt = row.attempts + 1
        ok, result = await self._post(row, found[0]["body"].encode(), attempt)
        now = self._clock()
        url = redact_url(row.url)
        if ok:
            self._journal.write_rows([("DELETE FROM webhook_outbox WHERE id = ?", (row.id,))])
            self._done(lane)
            self._metric("webhook_delivered")
            log.debug("webhook.delivered", invite=row.invite_id, seq=row.seq, url=url,
                      attempt=attempt, result=result)
            return
        self._metric("webhook_failed", "attempt")
        age = now - row.created_at
        if age >= self._config.give_up_after:
            self._journal.write_rows([("DELETE FROM webhook_outbox WHERE id = ?", (row.id,))])
            self._done(lane)
            self._metric("webhook_failed", "given_up")
            log.error("webhook.given_up", invite=row.invite_id, seq=row.seq,
                      event_id=row.event_id, url=url, attempts=attempt, age_s=round(age, 1),
                      error=result, give_up_after_s=self._config.give_up_after)
            return
        delay = self.backoff(attempt)
        row.attempts = attempt
        row.next_attempt_at = min(now + delay, row.created_at + self._config.give_up_after)
        self._journal.write_rows([(
            "UPDATE webhook_outbox SET attempts = ?, next_attempt_at = ?, last_error = ? "
            "WHERE id = ?", (attempt, row.next_attempt_at, result[:200], row.id),
        )])
        log.warning("webhook.attempt_failed", invite=row.invite_id, seq=row.seq, url=url,
                    attempt=attempt, error=result,
                    retry_in_s=round(row.next_attempt_at - now, 2))

    def _done(self, lane: deque[OutboxRow]) -> None:
        lane.popleft()
        self._count -= 1

    def backoff(self, attempts: int) -> float:
        """Seconds before the next try after `attempts` failed ones."""
        base = min(self._config.retry_max,
                   self._config.retry_initial * 2.0 ** min(attempts - 1, 40))
        return base * (1.0 - 0.25 * self._jitter())

    async def _post(self, row: OutboxRow, body: bytes, attempt: int) -> tuple[bool, str]:
        """One POST: (delivered, what happened)."""
        assert self._session is not None
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature(self._secret, int(self._clock()), body),
            EVENT_ID_HEADER: row.event_id,
            ATTEMPT_HEADER: str(attempt),
        }
        try:
            async with self._session.post(
                row.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    await response.content.read(MAX_RESPONSE_BYTES)
                status = response.status
                if 200 <= status < 300:
                    return True, f"HTTP {status}"
                if 300 <= status < 400:
                    where = redact_url(response.headers.get("Location", "")[:200])
                    return False, f"HTTP {status}: a redirect (to {where!r}), not followed"
                return False, f"HTTP {status}"
        except TimeoutError:
            return False, f"no answer within {self._config.request_timeout:g} s"
        except aiohttp.ClientConnectorError as exc:
            return False, f"cannot connect: {exc.os_error.strerror or exc.os_error}"
        except (aiohttp.ClientError, OSError) as exc:
            return False, f"{type(exc).__name__}: {str(exc).replace(row.url, redact_url(row.url))}"

    def _metric(self, name: str, *args: Any) -> None:
        if self._metrics is not None:
            with contextlib.suppress(Exception):
                getattr(self._metrics, name)(*args)
