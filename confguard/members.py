"""The I/O around `confguard.room.MemberWatch`: joined members watched until they leave.

The engine hands every invite that ended `joined` over (`after_join`), with the call's
`Unique-ID` filter still in place; a restarted daemon hands over the journal's joined rows whose
member was not seen leaving (`adopt`). For each member this owns one worker that sends the watch's
commands in order and feeds replies back, its wake-ups, the routing of its channel's events, the
link news, and what a departure leaves behind: the journal's `left_at` / `left_reason` /
`left_cause`, one `invite.left` log line, and one update (`state: "left"`) to the engine's
observers. Members in the room are listed by `rows()` (`confguard status`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from confguard.esl import EslCommandError, EslError
from confguard.invite import LOST_REPLY, AddFilter, DelFilter, InviteSpec, SendApi, WakeAt
from confguard.room import Left, MemberWatch, WatchState

log = structlog.get_logger("confguard.members")

_DONE = object()


@dataclass
class Member:
    """One joined call in the room, as the engine follows it."""

    invite_id: str
    call_uuid: str
    spec: InviteSpec
    watch: MemberWatch
    joined_wall: float | None
    invite_run: Any = None  # the engine's InviteRun (None when adopted after a restart)
    started_wall: float | None = None  # when the invite began (adopted: the journal's row)
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    worker: asyncio.Task[None] | None = None

    def row(self, wall: float) -> dict[str, Any]:
        """A row for `confguard status`: who is in which room, with which flags and bound."""
        bound = self.spec.max_duration
        in_room_s = None if self.joined_wall is None else round(wall - self.joined_wall, 1)
        return {
            "invite_id": self.invite_id,
            "uuid": self.call_uuid,
            "ext": self.spec.extension,
            "room": self.spec.room,
            "watch": str(self.watch.state),
            "flags": list(self.spec.member_flags),
            "max_duration": bound,
            "in_room_s": in_room_s,
            "seconds_left": None if bound is None or in_room_s is None
            else round(max(0.0, bound - in_room_s), 1),
        }


class Members:
    """Every member being watched, by call uuid. Owned by the engine."""

    def __init__(
        self,
        *,
        session: Callable[[], Any],
        journal: Any,
        wall: Callable[[], float],
        publish: Callable[[Member, dict[str, Any]], None],
    ) -> None:
        self._session = session
        self._journal = journal
        self._wall = wall
        self._publish = publish
        self._by_uuid: dict[str, Member] = {}

    # -- entry points ---------------------------------------------------------------------

    def after_join(self, run: Any) -> Member:
        """An invite just joined: watch its member (the Unique-ID filter is already there)."""
        spec: InviteSpec = run.spec
        now = asyncio.get_running_loop().time()
        watch = MemberWatch.after_join(
            call_uuid=run.call_uuid, max_duration=spec.max_duration,
            timer_cause=spec.hangup_cause, now=now,
        )
        member = Member(run.invite_id, run.call_uuid, spec, watch, self._wall(), invite_run=run)
        return self._start(member)

    def adopt(self, record: Any, spec: InviteSpec) -> Member:
        """A joined journal row whose member was not seen leaving: is it still there?"""
        now = asyncio.get_running_loop().time()
        watch = MemberWatch.adopted(
            call_uuid=record.call_uuid, max_duration=spec.max_duration,
            timer_cause=spec.hangup_cause, now=now,
        )
        member = Member(record.invite_id, record.call_uuid, spec, watch, record.joined_at,
                        started_wall=record.created_at)
        log.info("member.adopted", uuid=record.call_uuid, ext=spec.extension, room=spec.room,
                 invite=record.invite_id)
        return self._start(member)

    def route(self, headers: Mapping[str, str]) -> bool:
        """Feed an event of a watched channel to its watch; False if it is not one."""
        member = self._by_uuid.get(headers.get("Unique-ID", ""))
        if member is None:
            return False
        now = asyncio.get_running_loop().time()
        self._feed(member, member.watch.event, headers, now)
        return True

    def get(self, call_uuid: str) -> Member | None:
        return self._by_uuid.get(call_uuid)

    def rows(self) -> list[dict[str, Any]]:
        wall = self._wall()
        return [m.row(wall) for m in self._by_uuid.values()]

    def connection_lost(self) -> None:
        now = asyncio.get_running_loop().time()
        for member in list(self._by_uuid.values()):
            self._feed(member, member.watch.connection_lost, now)

    def resync(self) -> None:
        now = asyncio.get_running_loop().time()
        for member in list(self._by_uuid.values()):
            self._feed(member, member.watch.resync, now)

    async def stop(self) -> None:
        """Forget every member without touching its call (daemon shutdown): the journal keeps
        them as in the room, and the next daemon adopts them."""
        for member in list(self._by_uuid.values()):
            for handle in member.timers:
                handle.cancel()
            if member.worker is not None:
                member.worker.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await member.worker
        self._by_uuid.clear()

    # -- internals ------------------------------------------------------------------------

    def _start(self, member: Member) -> Member:
        self._by_uuid[member.call_uuid] = member
        member.worker = asyncio.create_task(self._work(member),
                                            name=f"confguard-member-{member.invite_id}")
        self._apply(member, member.watch.start())
        return member

    def _feed(self, member: Member, step: Callable[..., list[Any]], *args: Any) -> None:
        try:
            commands = step(*args)
        except Exception as exc:  # a refused input leaves the watch as it was
            log.error("member.input_refused", uuid=member.call_uuid, error=str(exc))
            return
        self._apply(member, commands)

    def _apply(self, member: Member, commands: list[Any]) -> None:
        loop = asyncio.get_running_loop()
        for command in commands:
            if isinstance(command, WakeAt):
                member.timers.append(loop.call_at(command.when, self._tick, member, command.when))
            elif isinstance(command, Left):
                self._left(member, command)
            elif isinstance(command, (SendApi, AddFilter, DelFilter)):
                member.queue.put_nowait(command)
        if member.watch.state is WatchState.LEFT:
            member.queue.put_nowait(_DONE)

    def _tick(self, member: Member, due: float) -> None:
        now = max(asyncio.get_running_loop().time(), due)
        self._feed(member, member.watch.tick, now)

    def _left(self, member: Member, left: Left) -> None:
        wall = self._wall()
        reason, cause = str(left.reason), left.cause
        if self._journal is not None:
            try:
                self._journal.leave_invite(member.invite_id, reason, cause, wall)
            except Exception:
                log.exception("journal.error", op="leave_invite", uuid=member.call_uuid)
        in_room_s = None if member.joined_wall is None else round(wall - member.joined_wall, 3)
        log.info("invite.left", uuid=member.call_uuid, ext=member.spec.extension,
                 room=member.spec.room, reason=reason, cause=cause, in_room_s=in_room_s,
                 invite=member.invite_id)
        self._publish(member, {
            "invite_id": member.invite_id, "uuid": member.call_uuid,
            "ext": member.spec.extension, "room": member.spec.room, "state": "left",
            "previous": "ended", "outcome": "joined", "left_reason": reason, "left_cause": cause,
            "left_at": wall, "in_room_s": in_room_s, "ts": wall,
        })

    async def _work(self, member: Member) -> None:
        try:
            while True:
                command = await member.queue.get()
                if command is _DONE:
                    if member.queue.empty():
                        break
                    continue
                await self._execute(member, command)
        finally:
            for handle in member.timers:
                handle.cancel()
            if self._by_uuid.get(member.call_uuid) is member:
                del self._by_uuid[member.call_uuid]

    async def _execute(self, member: Member, command: Any) -> None:
        session = self._session()
        try:
            if isinstance(command, AddFilter):
                await session.add_filter(command.header, command.value)
            elif isinstance(command, DelFilter):
                await session.del_filter(command.header, command.value)
            elif isinstance(command, SendApi):
                try:
                    reply = await session.api(command.command)
                except EslCommandError as exc:
                    reply = f"-ERR {exc}"
                except EslError as exc:
                    reply = f"{LOST_REPLY} {type(exc).__name__}: {exc}"
                now = asyncio.get_running_loop().time()
                self._feed(member, member.watch.reply, command.tag, reply, now)
        except EslError as exc:
            log.warning("esl.command_failed", uuid=member.call_uuid,
                        command=type(command).__name__, error=str(exc))
