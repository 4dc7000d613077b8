"""The engine: runs many invite machines on one ESL session.

It owns the I/O around `confguard.invite` — and nothing the machine decides:
- routing: an event goes to the invite whose call uuid equals its `Unique-ID` or `Task-Group`, or
  whose job uuid equals its `Job-UUID`; everything else is dropped;
- execution: each invite has one worker that sends its commands in the order the machine produced
  them (filters before the originate, `sched_del` before `uuid_transfer`) and feeds every api reply
  back into the machine;
- the clock: every invite's `WakeAt` goes on one loop timer (`Alarms`) that calls its `tick`;
- the connection: a lost connection and the resync after a reconnect are passed to every machine;
- the outside world: one log line per state change, the journal, metrics, and the update streams
  that the control API and `--direct` follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
import uuid as uuidlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import structlog

from confguard.esl import EslCommandError, EslConnectionLost, EslError, EslNotConnected
from confguard.invite import (
    LOST_REPLY,
    MEMBER_FLAGS,
    AddFilter,
    DelFilter,
    Finished,
    Invite,
    InviteSpec,
    Outcome,
    ProtocolViolation,
    SendApi,
    SendBgapi,
    State,
    StateChanged,
    UsageError,
    WakeAt,
)
from confguard.members import Member, Members

log = structlog.get_logger("confguard.engine")

# What confguard subscribes to. CUSTOM subclasses go last (FACTS.md: every token after CUSTOM is
# a subclass).
SUBSCRIBED_EVENTS: tuple[str, ...] = (
    "CHANNEL_CREATE",
    "CHANNEL_PROGRESS",
    "CHANNEL_PROGRESS_MEDIA",
    "CHANNEL_ANSWER",
    "CHANNEL_HANGUP",
    "CHANNEL_HANGUP_COMPLETE",
    "DTMF",
    "BACKGROUND_JOB",
    "ADD_SCHEDULE",
    "DEL_SCHEDULE",
    "HEARTBEAT",
    "CUSTOM",
    "conference::maintenance",
)

ORIGINATE_RETRY_S = 0.05  # an originate that found no connection is tried again this soon

FINISHED_KEPT = 500  # finished invites kept in memory for `GET /invites/<id>`


class EngineError(Exception):
    """An invite request the engine cannot take now (not the user's input: that is BadInput)."""


class NotConnected(EngineError):
    """The ESL session is down; nothing was sent."""


class UnknownInvite(EngineError):
    """No invite with that id or uuid."""


class Session(Protocol):
    """What the engine needs of `confguard.esl.EslSession`. Its errors are confguard.esl's:
    `EslNotConnected` (nothing written), `EslConnectionLost` / `EslTimeoutError` (the answer was
    lost: written or not, unknown), `EslCommandError` (FreeSWITCH refused the command)."""

    connected: bool

    async def wait_connected(self, timeout: float) -> bool: ...
    async def subscribe(self, events: Sequence[str]) -> None: ...
    async def add_filter(self, header: str, value: str) -> None: ...
    async def del_filter(self, header: str, value: str) -> None: ...
    async def api(self, command: str) -> str: ...
    async def bgapi_start(self, command: str, job_uuid: str) -> None: ...
    def events(self) -> AsyncIterator[Any]: ...


@dataclass
class AdoptedMember:
    """What the observers get for the `state: left` update of a member a restarted daemon
    adopted in the room (`Engine.adopt_member`): no machine, no history, the journal's spec."""

    invite_id: str
    call_uuid: str
    spec: InviteSpec
    started_wall: float
    origin: dict[str, str] = field(default_factory=dict)
    machine: Any = None
    history: list[dict[str, Any]] = field(default_factory=list)


class UpdateHistory:
    """An invite's updates in order (`Engine.follow`, `GET /invites/<id>`), kept small: each
    update is one tuple, the tuple of its keys first (one per shape, shared by every invite),
    then its values; read back as new dicts. A waiting invite keeps three updates: as dicts they
    were ~1.4 KB of the ~5.6 KB it held."""

    __slots__ = ("_entries",)
    _shapes: ClassVar[dict[tuple[str, ...], tuple[str, ...]]] = {}
    MAX_SHAPES: ClassVar[int] = 1024  # the code makes a few dozen shapes; past this, not shared

    def __init__(self) -> None:
        self._entries: list[tuple[Any, ...]] = []

    def append(self, update: Mapping[str, Any]) -> None:
        keys = tuple(update)
        shared = self._shapes.get(keys)
        if shared is None:
            shared = keys
            if len(self._shapes) < self.MAX_SHAPES:
                self._shapes[keys] = keys
        self._entries.append((shared, *update.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for entry in self._entries:
            yield dict(zip(entry[0], entry[1:], strict=True))


class Alarms:
    """Every invite's wake-ups (`WakeAt`) on one loop timer: a heap of `[when, order, run]`
    entries and one timer handle for the earliest. Thousands of invites wait at once, each with
    a wake-up past its deadline; a loop timer each cost ~660 bytes under uvloop, an entry ~100.
    A cancelled entry drops its run at once and leaves the heap when it comes up, or when the
    cancelled are more than half of it."""

    __slots__ = ("_armed_at", "_cancelled", "_fire", "_handle", "_heap", "_order")

    def __init__(self, fire: Callable[[InviteRun, float], None]) -> None:
        self._fire = fire
        self._heap: list[list[Any]] = []
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = 0.0
        self._order = itertools.count()
        self._cancelled = 0

    def __len__(self) -> int:
        """Entries not cancelled and not yet run."""
        return len(self._heap) - self._cancelled

    def add(self, when: float, run: InviteRun) -> list[Any]:
        """Call `fire(run, when)` at loop time `when`; returns the entry, for `cancel`."""
        entry = [when, next(self._order), run]
        heapq.heappush(self._heap, entry)
        if self._handle is None or when < self._armed_at:
            self._arm(when)
        return entry

    def cancel(self, entry: list[Any]) -> None:
        if entry[2] is None:
            return  # ran or cancelled already
        entry[2] = None
        if entry[1] < 0:
            return  # taken off the heap to run in this pass: it will not
        self._cancelled += 1
        if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
            self._heap = [e for e in self._heap if e[2] is not None]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = when
        self._handle = asyncio.get_running_loop().call_at(when, self._run)

    def _run(self) -> None:
        """Fire every entry that is due: at or before the time this handle was set for (the
        loop may run it up to its clock resolution early), or the loop's time. Wake-ups added
        while they run wait for the next pass, as a loop timer would."""
        self._handle = None
        heap = self._heap
        due_by = max(self._armed_at, asyncio.get_running_loop().time())
        due = []
        while heap and heap[0][0] <= due_by:
            entry = heapq.heappop(heap)
            if entry[2] is None:
                self._cancelled -= 1
                continue
            entry[1] = -1  # off the heap (see `cancel`)
            due.append(entry)
        while heap and heap[0][2] is None:  # cancelled entries on top are not worth a wake-up
            heapq.heappop(heap)
            self._cancelled -= 1
        if heap:
            self._arm(heap[0][0])
        for entry in due:
            when, _, run = entry
            if run is None:
                continue  # cancelled by one that ran before it
            entry[2] = None
            try:
                self._fire(run, when)
            except Exception:  # one invite's bug must not stop the others' wake-ups
                log.exception("engine.alarm_failed", uuid=run.call_uuid)


@dataclass(slots=True)  # thousands at once (every waiting callee): no per-instance dict
class InviteRun:
    """One invite inside the engine: its machine, its pending commands and its followers."""

    machine: Invite
    spec: InviteSpec
    invite_id: str
    started: float  # loop time
    started_wall: float
    # Wire commands not yet sent, in order. A worker task sends them and ends when none is
    # left, so an invite that waits for its callee holds no task, no queue and no list.
    pending: list[Any] | None = None  # a few at most: no deque
    history: UpdateHistory = field(default_factory=UpdateHistory)
    # The inboxes of `follow`: a tuple, replaced when one comes or goes (rare), so publishing
    # needs no copy and an invite nobody follows holds no list.
    listeners: tuple[asyncio.Queue[dict[str, Any]], ...] = ()
    timers: list[list[Any]] = field(default_factory=list)  # its entries in the engine's Alarms
    worker: asyncio.Task[None] | None = None
    ended: bool = False  # the machine ended: forgotten once its last command is sent
    forgotten: bool = False  # unregistered: nothing more is sent for it
    outcome: Outcome | None = None
    cause: str | None = None
    key_at: float | None = None
    # time.perf_counter() when the key's news reached the engine: the latency fields of the
    # joining/joined log lines (loop.time() under uvloop is cached, ms-coarse).
    key_mark: float | None = None
    final: asyncio.Future[dict[str, Any]] | None = None  # made by final_update(), when asked
    # The originate reached the switch (its bgapi was answered, or the channel was found), or
    # there is none to send (adopted). Until then a resync has nothing to ask about.
    originate_out: bool = False
    # Where the invite came from when not the API (fs_events: source, request_id): journaled
    # with the spec and restored on adoption.
    origin: dict[str, str] = field(default_factory=dict)

    @property
    def call_uuid(self) -> str:
        return self.machine.call_uuid

    def final_update(self) -> asyncio.Future[dict[str, Any]]:
        """A future of the invite's outcome update; made when first asked for (most invites are
        never waited on this way), resolved at once when the outcome is known already."""
        if self.final is None:
            self.final = asyncio.get_running_loop().create_future()
            # Once the outcome update is in the history; before that (the outcome is set a
            # moment before it is published) the engine resolves the future when it publishes.
            done = next((u for u in self.history if u.get("outcome")), None)
            if done is not None:
                self.final.set_result(done)
        return self.final

    @property
    def job_uuid(self) -> str:
        return self.machine.job_uuid

    def summary(self, now: float) -> dict[str, Any]:
        """A row for `confguard status` / `GET /invites`."""
        return {
            "invite_id": self.invite_id,
            "uuid": self.call_uuid,
            "ext": self.spec.extension,
            "room": self.spec.room,
            "via": self.spec.route.name if self.spec.route is not None else None,
            "state": str(self.machine.state),
            "outcome": str(self.outcome) if self.outcome else None,
            "cause": self.cause,
            "seconds_left": round(max(0.0, self.machine.deadline - now), 1),
            "elapsed_ms": int((now - self.started) * 1000),
            "started_at": self.started_wall,
            "flags": list(self.spec.member_flags),
            "max_duration": self.spec.max_duration,
        }


class Engine:
    """Runs invites on one ESL session. Create, `attach(session)`, `await start()`."""

    def __init__(
        self,
        *,
        journal: Any = None,
        metrics: Any = None,
        wall: Callable[[], float] = time.time,
        reconnect_wait: float = 5.0,
    ) -> None:
        self._session: Session | None = None
        self._reconnect_wait = reconnect_wait
        self._journal = journal
        self._metrics = metrics
        self._wall = wall
        self._by_uuid: dict[str, InviteRun] = {}
        self._by_job: dict[str, InviteRun] = {}
        self._by_id: dict[str, InviteRun] = {}
        self._finished: OrderedDict[str, InviteRun] = OrderedDict()
        self._pump: asyncio.Task[None] | None = None
        self._accepting = True
        self._idle = asyncio.Event()
        self._idle.set()
        self._observers: list[Callable[[InviteRun, dict[str, Any]], None]] = []
        # Joined members, watched until they leave the room (confguard/members.py).
        self.members = Members(session=lambda: self.session, journal=journal, wall=wall,
                               publish=self._publish_left)
        self._taps: dict[str, Callable[[Any], None]] = {}
        self._alarms = Alarms(self._tick)

    # --- wiring -------------------------------------------------------------------------------

    def attach(self, session: Session) -> None:
        self._session = session

    def add_observer(self, observer: Callable[[InviteRun, dict[str, Any]], None]) -> None:
        """Call `observer(run, update)` for every state change and outcome, after the journal
        and the log line (webhooks, outcome events). An observer that raises is logged, never
        propagated: it must not stop live calls."""
        self._observers.append(observer)

    def add_event_tap(self, subclass: str, handler: Callable[[Any], None]) -> None:
        """Hand every event of this CUSTOM subclass to `handler(event)` instead of the invites
        (confguard/fs_events.py: `confguard::invite`). A handler that raises is logged."""
        self._taps[subclass] = handler

    @property
    def session(self) -> Session:
        if self._session is None:
            raise RuntimeError("engine has no ESL session attached")
        return self._session

    async def start(self) -> None:
        """Subscribe to the events the machines need and start routing them."""
        await self.session.subscribe(SUBSCRIBED_EVENTS)
        if self._pump is None:
            self._pump = asyncio.create_task(self._route_events(), name="confguard-event-pump")

    async def stop(self, *, cancel_invites: bool = False, timeout: float = 4.0) -> None:
        """Stop taking invites. Live invites keep their FreeSWITCH timers (they stay bounded);
        with `cancel_invites` they are hung up first (used by `--direct` on Ctrl-C)."""
        self._accepting = False
        if cancel_invites:
            for run in list(self._by_id.values()):
                with contextlib.suppress(Exception):
                    self.cancel(run.invite_id)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout)
        for run in list(self._by_id.values()):
            self._stop_run(run)
        await self.members.stop()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pump
            self._pump = None

    # --- the control surface -----------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        return self._accepting

    def active_count(self) -> int:
        """How many invites are live (what `len(active())` says, without building the rows)."""
        return len(self._by_id)

    def active(self) -> list[dict[str, Any]]:
        now = asyncio.get_running_loop().time()
        return [run.summary(now) for run in self._by_id.values()]

    def get(self, key: str) -> InviteRun:
        """An invite by id or call uuid, live or recently finished."""
        run = self._by_id.get(key) or self._by_uuid.get(key) or self._finished.get(key)
        if run is None:
            for done in self._finished.values():
                if done.call_uuid == key:
                    return done
            raise UnknownInvite(f"no invite {key!r}")
        return run

    async def invite(
        self, spec: InviteSpec, *, origin: Mapping[str, str] | None = None
    ) -> InviteRun:
        """Place one invite. Raises NotConnected (nothing sent) when ESL is down."""
        if not self._accepting:
            raise EngineError("confguard is shutting down; not taking new invites")
        if not self.session.connected and not await self.session.wait_connected(
            self._reconnect_wait
        ):
            raise NotConnected(
                f"not connected to FreeSWITCH (waited {self._reconnect_wait:g} s); nothing was sent"
            )
        if not self._accepting:
            raise EngineError("confguard is shutting down; not taking new invites")
        loop = asyncio.get_running_loop()
        invite_id = uuidlib.uuid4().hex[:12]
        machine = Invite(
            spec,
            call_uuid=str(uuidlib.uuid4()),
            job_uuid=str(uuidlib.uuid4()),
            invite_id=invite_id,
            now=loop.time(),
            wall=self._wall(),
        )
        run = InviteRun(
            machine=machine,
            spec=spec,
            invite_id=invite_id,
            started=loop.time(),
            started_wall=self._wall(),
            origin=dict(origin or {}),
        )
        self._register(run)
        self._journal_call("open_invite", run)
        self._metric("invite_started")
        self._apply(run, machine.start())
        return run

    async def adopt(self, record: Any) -> InviteRun:
        """Take over an invite an earlier run of the daemon left active in the journal.

        Its spec comes from the journal row; its clock is set back by the row's age so that the
        deadline stays the one FreeSWITCH's timer was armed with. The machine then asks the switch
        what became of the call (`Invite.adopt`)."""
        loop = asyncio.get_running_loop()
        age = max(0.0, self._wall() - record.created_at)
        spec = spec_from_journal(record)
        machine = Invite(
            spec,
            call_uuid=record.call_uuid,
            job_uuid=record.job_uuid,
            invite_id=record.invite_id,
            now=loop.time() - age,
            wall=record.created_at,
        )
        run = InviteRun(
            machine=machine,
            spec=spec,
            invite_id=record.invite_id,
            started=loop.time() - age,
            started_wall=record.created_at,
            originate_out=True,
            origin=_journaled_origin(record.detail),
        )
        self._register(run)
        log.info("invite.adopted", uuid=run.call_uuid, ext=spec.extension, room=spec.room,
                 state=record.state, age_s=round(age, 1), invite=run.invite_id)
        try:
            last_state = State(record.state)
        except ValueError:
            last_state = State.PLACING  # unknown: assume the least
        self._apply(run, machine.adopt(loop.time(), last_state))
        return run

    def cancel(self, key: str) -> None:
        """Operator cancel: the machine hangs the call up (outcome cancelled)."""
        run = self.get(key)
        if run.outcome is not None:
            raise EngineError(f"invite {run.invite_id} already ended ({run.outcome})")
        try:
            commands = run.machine.cancel(asyncio.get_running_loop().time())
        except UsageError as exc:
            raise EngineError(f"invite {run.invite_id} cannot be cancelled: {exc}") from None
        self._apply(run, commands)

    async def follow(self, key: str) -> AsyncIterator[dict[str, Any]]:
        """Every update of one invite from its start, then live ones, until its outcome."""
        run = self.get(key)
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        run.listeners = (*run.listeners, inbox)
        try:
            # The inbox is registered first, so every update published from here on is in it;
            # the ones before are in this snapshot. Updates that arrive while the snapshot is
            # being replayed are in the inbox, after the snapshot's last sequence number.
            snapshot = list(run.history)
            for update in snapshot:
                yield update
                if update.get("outcome"):  # a joined member's `left` update comes after it
                    return
            while True:
                update = await inbox.get()
                if update["seq"] < len(snapshot):
                    continue  # already replayed from the snapshot
                yield update
                if update.get("outcome"):
                    return
        finally:
            run.listeners = tuple(other for other in run.listeners if other is not inbox)

    # --- the connection ------------------------------------------------------------------------

    def esl_state_changed(self, state: str) -> None:
        """Hook for EslSession(on_state=...)."""
        self._metric("esl_state", state == "connected")
        if state != "connected":
            now = asyncio.get_running_loop().time()
            for run in list(self._by_id.values()):
                self._apply(run, run.machine.connection_lost(now))
            self.members.connection_lost()

    async def esl_reconnected(self) -> None:
        """Hook for EslSession(on_reconnect=...): events may have been missed; ask each machine."""
        self._metric("esl_reconnected")
        now = asyncio.get_running_loop().time()
        for run in list(self._by_id.values()):
            if run.originate_out:  # an originate still queued is sent now, then followed
                self._apply(run, run.machine.resync(now))
        self.members.resync()

    # --- internals -----------------------------------------------------------------------------

    def _register(self, run: InviteRun) -> None:
        self._by_id[run.invite_id] = run
        self._by_uuid[run.call_uuid] = run
        self._by_job[run.job_uuid] = run
        self._idle.clear()

    def _unregister(self, run: InviteRun) -> None:
        self._by_id.pop(run.invite_id, None)
        self._by_uuid.pop(run.call_uuid, None)
        self._by_job.pop(run.job_uuid, None)
        for entry in run.timers:
            self._alarms.cancel(entry)
        run.timers.clear()
        self._finished[run.invite_id] = run
        while len(self._finished) > FINISHED_KEPT:
            self._finished.popitem(last=False)
        if not self._by_id:
            self._idle.set()

    def _stop_run(self, run: InviteRun) -> None:
        """Forget a live invite without touching its call (daemon shutdown)."""
        if run.worker is not None:
            run.worker.cancel()  # it forgets the invite
        else:
            self._forget(run)
        for entry in run.timers:
            self._alarms.cancel(entry)
        run.timers.clear()

    async def _route_events(self) -> None:
        async for event in self.session.events():
            name = event.name
            self._metric("event_received", event.subclass or name)
            headers: Mapping[str, str] = event.headers
            # The taps first: a `confguard::invite` fired by the `event` app carries the
            # channel's Unique-ID, and that channel may be a member confguard watches.
            if self._taps and event.subclass in self._taps:
                try:
                    self._taps[event.subclass](event)
                except Exception:
                    log.exception("engine.tap_error", subclass=event.subclass)
                continue
            member = self.members.get(headers.get("Unique-ID", ""))
            if member is not None and (
                member.invite_run is None or member.invite_run.machine.state is State.ENDED
            ):
                self.members.route(headers)
                continue
            run = (
                self._by_uuid.get(headers.get("Unique-ID", ""))
                or self._by_uuid.get(headers.get("Task-Group", ""))
                or self._by_job.get(headers.get("Job-UUID", ""))
            )
            if run is None:
                continue
            now = asyncio.get_running_loop().time()
            self._feed(run, "event", run.machine.event, headers, event.body, now)

    def _feed(self, run: InviteRun, what: str, step: Callable[..., Any], *args: Any) -> None:
        """One input into one machine. A machine that refuses an input (the switch said something
        impossible, or we misrouted) is logged and left as it was; other invites go on."""
        try:
            commands = step(*args)
        except (ProtocolViolation, UsageError) as exc:
            log.error("invite.input_refused", uuid=run.call_uuid, input=what,
                      fault="switch" if isinstance(exc, ProtocolViolation) else "confguard",
                      error=str(exc))
            return
        try:
            self._apply(run, commands)
        except Exception:  # a bug here must not stop the event pump for every other call
            log.exception("engine.apply_failed", uuid=run.call_uuid, input=what)

    def _apply(self, run: InviteRun, commands: Sequence[Any]) -> None:
        """Take a machine's output: publish notices now, queue wire commands for the worker."""
        loop = asyncio.get_running_loop()
        changes = [c for c in commands if isinstance(c, StateChanged)]
        finished = next((c for c in commands if isinstance(c, Finished)), None)
        for command in commands:
            if isinstance(command, StateChanged):
                if command.state is State.ENDED and finished is not None:
                    continue  # one line for the end, carrying the outcome (below)
                self._publish_state(run, command, loop.time())
            elif isinstance(command, WakeAt):
                # The entries that have run are no use (nothing cancels them): not kept.
                run.timers = [entry for entry in run.timers if entry[2] is not None]
                run.timers.append(self._alarms.add(command.when, run))
            elif isinstance(command, (SendApi, SendBgapi, AddFilter, DelFilter)):
                self._send(run, command)
        if finished is not None:
            ended = next((c for c in changes if c.state is State.ENDED), None)
            self._publish_finished(run, finished, ended, loop.time())
            if run.machine.watch_handover:
                self.members.after_join(run)  # its time in the room, until it leaves
        if run.machine.state is State.ENDED and not run.ended:
            run.ended = True
            if run.worker is None:  # nothing left to send: forgotten after this loop turn
                loop.call_soon(self._forget, run)

    def _send(self, run: InviteRun, command: Any) -> None:
        """Queue a wire command; a worker sends this invite's commands one after another."""
        if run.forgotten:
            return
        if run.pending is None:
            run.pending = [command]
        else:
            run.pending.append(command)
        if run.worker is None:
            run.worker = asyncio.create_task(
                self._work(run), name=f"confguard-invite-{run.invite_id}"
            )

    def _forget(self, run: InviteRun) -> None:
        if not run.forgotten and run.worker is None:
            run.forgotten = True
            self._unregister(run)

    def _tick(self, run: InviteRun, due: float) -> None:
        if run.outcome is not None and run.machine.state is State.ENDED:
            return
        # The loop may run a timer up to its clock resolution early (and uvloop's time() is
        # the iteration's, ms-coarse): the machine must see at least the time it asked for, or
        # a bound it checks with `now >= when` would never be reached (and never asked again).
        now = max(asyncio.get_running_loop().time(), due)
        self._feed(run, "tick", run.machine.tick, now)

    async def _work(self, run: InviteRun) -> None:
        """Send this invite's pending commands in order, feeding api replies back to its
        machine; end when none is left (the next command starts a new worker). An invite whose
        machine has ended is forgotten once its last command is sent; a worker cancelled
        (shutdown) or failing forgets its invite at once."""
        sent_all = False
        try:
            while run.pending:
                await self._execute(run, run.pending.pop(0))
            sent_all = True
        finally:
            run.worker = None
            if not run.pending:
                run.pending = None
            if run.ended or not sent_all:
                self._forget(run)

    async def _execute(self, run: InviteRun, command: Any) -> None:
        session = self.session
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            if isinstance(command, AddFilter):
                await session.add_filter(command.header, command.value)
            elif isinstance(command, DelFilter):
                await session.del_filter(command.header, command.value)
            elif isinstance(command, SendBgapi):
                await self._originate(run, command)
            elif isinstance(command, SendApi):
                try:
                    reply = await session.api(command.command)
                except EslCommandError as exc:
                    reply = f"-ERR {exc}"  # refused by FreeSWITCH: its answer
                except EslError as exc:
                    # Written or not, its answer is lost: the machine settles it by asking the
                    # switch, and never takes this for the switch's word.
                    reply = f"{LOST_REPLY} {type(exc).__name__}: {exc}"
                verb = command.command.split(" ", 1)[0]
                self._metric("command_done", verb, loop.time() - started)
                self._feed(run, "reply", run.machine.reply, command.tag, reply, loop.time())
        except EslError as exc:
            log.warning(
                "esl.command_failed",
                uuid=run.call_uuid,
                command=type(command).__name__,
                error=str(exc),
            )

    async def _originate(self, run: InviteRun, command: SendBgapi) -> None:
        """Write the originate once. Not connected: wait for the link (up to reconnect_wait),
        then send it; never sent by then: the invite ends failed, NOT_SENT. Lost while being
        written: never sent twice -- followed as placed (see below)."""
        session = self.session
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self._reconnect_wait
        tried = False
        while True:
            if (tried and loop.time() >= give_up_at) or (
                not session.connected
                and not await session.wait_connected(give_up_at - loop.time())
            ):
                log.warning("invite.originate_not_sent", uuid=run.call_uuid,
                            invite=run.invite_id, waited_s=self._reconnect_wait)
                self._job_result(run, command, "-ERR confguard: NOT_SENT (no link to FreeSWITCH)")
                return
            tried = True
            try:
                await session.bgapi_start(command.command, command.job_uuid)
            except EslNotConnected:
                # Not written: wait for the link again, then send. The session may still say
                # connected for a moment after its connection died (its supervisor has not run
                # yet): yield to it, or this loop would spin without ever letting it run.
                await asyncio.sleep(ORIGINATE_RETRY_S)
                continue
            except EslCommandError as exc:
                # FreeSWITCH refused the bgapi itself: no job will ever report back.
                run.originate_out = True
                self._job_result(run, command, f"-ERR {exc}")
                return
            except EslConnectionLost:
                # Written or not: unknown. FreeSWITCH may still run it (its bgapi queue), so
                # the call is followed as if it went out: the reconnect's resync asks, and the
                # BACKGROUND_JOB, the channel's events or the safety net at the deadline end it.
                run.originate_out = True
                return
            except EslError as exc:  # a timeout with the link up: the switch has it, or not
                log.warning("invite.originate_unanswered", uuid=run.call_uuid, error=str(exc))
                run.originate_out = True
                self._feed(run, "resync", run.machine.resync, loop.time())
                return
            run.originate_out = True
            return

    def _job_result(self, run: InviteRun, command: SendBgapi, body: str) -> None:
        self._feed(
            run,
            "bgapi result",
            run.machine.event,
            {"Event-Name": "BACKGROUND_JOB", "Job-UUID": command.job_uuid},
            body + "\n",
            asyncio.get_running_loop().time(),
        )

    def _base_update(self, run: InviteRun, now: float) -> dict[str, Any]:
        return {
            "seq": len(run.history),
            "invite_id": run.invite_id,
            "uuid": run.call_uuid,
            "ext": run.spec.extension,
            "room": run.spec.room,
            "elapsed_ms": int((now - run.started) * 1000),
            "ts": self._wall(),
        }

    def _publish(self, run: InviteRun, update: dict[str, Any]) -> None:
        run.history.append(update)
        for inbox in run.listeners:
            inbox.put_nowait(update)
        for observer in self._observers:
            try:
                observer(run, update)
            except Exception:
                log.exception("engine.observer_error", uuid=run.call_uuid)

    def _publish_state(self, run: InviteRun, change: StateChanged, now: float) -> None:
        update = self._base_update(run, now)
        update.update(
            state=change.state.value,  # the enum's own text, not a copy per update
            previous=change.previous.value,
            seconds_left=round(max(0.0, run.machine.deadline - now), 1),
        )
        detail = {
            _RENAMED.get(k, k): v
            for k, v in change.detail.items()
            if k not in update and k not in _REDUNDANT
        }
        update.update(detail)
        fields = _log_fields(update)
        if change.state is State.CANCELLING:
            run.key_at = now
            run.key_mark = time.perf_counter()
        elif change.state is State.JOINING:
            # FreeSWITCH cancelled the call's timers itself (its DEL_SCHEDULE, or the member).
            fields.update(_since_key(run, time.perf_counter(), "key_to_timers_gone_ms"))
        # The journal first: a daemon killed between the two leaves a state the next one adopts
        # from, never a logged state the journal does not know.
        self._journal_call("update_state", run, str(change.state))
        log.info("invite.state", **fields)
        first = change.state is change.previous  # start() announces `placing` from `placing`
        self._metric("state_changed", None if first else str(change.previous), str(change.state))
        self._publish(run, update)

    def _publish_finished(
        self, run: InviteRun, done: Finished, ended: StateChanged | None, now: float
    ) -> None:
        run.outcome = done.outcome
        run.cause = done.cause
        update = self._base_update(run, now)
        update.update(
            state=State.ENDED.value,
            previous=(ended.previous if ended else run.machine.state).value,
            outcome=done.outcome.value,
            cause=done.cause,
        )
        for source in (ended.detail if ended else {}, done.detail):
            update.update(
                {
                    _RENAMED.get(k, k): v
                    for k, v in source.items()
                    if k not in update and k not in _REDUNDANT
                }
            )
        fields = _log_fields(update)
        if done.outcome is Outcome.JOINED:
            fields.update(_since_key(run, time.perf_counter(), "key_to_joined_ms"))
        # The journal first: an outcome logged by a daemon killed before its journal row was
        # finished would be decided a second time (adopted) by the next one.
        self._journal_call("finish_invite", run, str(done.outcome), done.cause, {
            k: v for k, v in update.items() if k not in _JOURNAL_HAS
        })
        log.info("invite.state", **fields)
        self._metric("invite_finished", str(done.outcome))
        self._metric("state_changed", update["previous"], str(State.ENDED))
        if done.outcome is Outcome.JOINED and run.key_at is not None:
            self._metric("key_to_joined", now - run.key_at)
        if done.outcome is Outcome.TIMEOUT:
            self._metric("timer_lateness", now - run.machine.deadline)
        self._publish(run, update)
        if run.final is not None and not run.final.done():
            run.final.set_result(update)

    def _publish_left(self, member: Member, update: dict[str, Any]) -> None:
        """A joined member left the room: the engine's observers hear it (`state: left`)."""
        self._metric("member_left", update.get("left_reason"))
        run: Any = member.invite_run
        if run is None:  # adopted in the room after a restart: what the journal kept of it
            run = AdoptedMember(member.invite_id, member.call_uuid, member.spec,
                                member.started_wall or member.joined_wall or update["ts"])
        else:
            update = {"seq": len(run.history), **update}
            run.history.append(update)
        for observer in self._observers:
            try:
                observer(run, update)
            except Exception:
                log.exception("engine.observer_error", uuid=run.call_uuid)

    async def adopt_member(self, record: Any) -> Member:
        """Watch again a member an earlier run of the daemon left in the room (the journal's
        joined row without `left_at`): FreeSWITCH tells whether it is still there."""
        return self.members.adopt(record, spec_from_journal(record))

    def _metric(self, name: str, *args: Any) -> None:
        if self._metrics is None:
            return
        try:
            getattr(self._metrics, name)(*args)
        except Exception:
            log.exception("metrics.error", metric=name)

    def _journal_call(self, what: str, run: InviteRun, *args: Any) -> None:
        if self._journal is None:
            return
        try:
            if what == "open_invite":
                self._journal.open_invite(journal_record(run))
            elif what == "update_state":
                self._journal.update_state(run.invite_id, args[0], self._wall())
            elif what == "finish_invite":
                outcome, cause, detail = args
                self._journal.finish_invite(run.invite_id, outcome, cause, self._wall(), detail)
        except Exception:
            # The journal is history, not control: a full disk must not stop live calls.
            log.exception("journal.error", op=what, uuid=run.call_uuid)


def journal_record(run: InviteRun) -> Any:
    """The journal row for a new invite."""
    from confguard.journal import InviteRecord

    return InviteRecord(
        invite_id=run.invite_id,
        call_uuid=run.call_uuid,
        job_uuid=run.job_uuid,
        ext=run.spec.extension,
        room=run.spec.room,
        timeout=run.spec.timeout,
        created_at=run.started_wall,
        deadline=run.started_wall + run.spec.timeout,
        state=str(run.machine.state),
        detail={"spec": spec_to_journal(run.spec),
                **({"origin": dict(run.origin)} if run.origin else {})},
    )


def spec_to_journal(spec: InviteSpec) -> dict[str, Any]:
    """The invite's spec as JSON-able values, so that a restarted daemon can adopt it."""
    return {
        "extension": spec.extension,
        "room": spec.room,
        "timeout": spec.timeout,
        "ring_timeout": spec.ring_timeout,
        "key": spec.key,
        "decline_key": spec.decline_key,
        "prompt": spec.prompt,
        "caller_id_name": spec.caller_id_name,
        "caller_id_number": spec.caller_id_number,
        "hangup_cause": spec.hangup_cause,
        "reprompt_interval": spec.reprompt_interval,
        "variables": dict(spec.variables),
        "notify": list(spec.notify),
        "max_duration": spec.max_duration,
        **{name: getattr(spec, name) for name in MEMBER_FLAGS},
        "join": {
            "kind": spec.join.kind,
            "room": spec.join.room,
            "extension": spec.join.extension,
            "context": spec.join.context,
        },
        **({"route": spec.route.as_dict()} if spec.route is not None else {}),
    }


def spec_from_journal(record: Any) -> InviteSpec:
    """The spec a journal row was started with (validated again: BadInput if it was tampered
    with). Rows written without a spec fall back to extension, room and timeout."""
    from confguard.invite import JoinTarget
    from confguard.routes import DialRoute

    saved = dict((record.detail or {}).get("spec") or {})
    join = saved.pop("join", None) or {}
    route = saved.pop("route", None)
    if not saved:
        return InviteSpec(extension=record.ext, room=record.room, timeout=int(record.timeout))
    # The route as it was when the call was placed (not as the config says now): the same dial.
    via = DialRoute(**route) if route else None
    return InviteSpec(join=JoinTarget(**join), route=via, **saved)


def _journaled_origin(detail: Any) -> dict[str, str]:
    """The `origin` a journal row's detail keeps (nothing when absent or not an object)."""
    origin = detail.get("origin") if isinstance(detail, dict) else None
    if not isinstance(origin, dict):
        return {}
    return {str(k): str(v) for k, v in origin.items()}


_LOG_SKIP = {"seq", "ts", "invite_id"}
# Columns the journal row has already: not repeated in its detail.
_JOURNAL_HAS = {"seq", "ts", "invite_id", "uuid", "ext", "room", "state", "outcome", "cause"}
_RENAMED = {"event": "esl_event", "level": "detail_level", "timestamp": "detail_timestamp"}
_REDUNDANT = {"elapsed_s", "extension"}  # the machine's detail repeats what every update carries


def _since_key(run: InviteRun, mark: float | None, name: str) -> dict[str, float]:
    """`{name: ms from the key to mark}` for a log line, when both moments are known."""
    if run.key_mark is None or mark is None:
        return {}
    return {name: round((mark - run.key_mark) * 1000, 3)}


def _log_fields(update: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of an update that go into its log line; keys the log line owns itself
    (`event`, `level`, `timestamp`) are renamed."""
    fields = {
        _RENAMED.get(k, k): v for k, v in update.items() if k not in _LOG_SKIP and v is not None
    }
    fields["invite"] = update["invite_id"]
    return fields
