"""A webhook receiver on 127.0.0.1 for the tests and the demo: records every request, checks its
signature with `confguard.webhooks.verify_signature`, answers what its `policy` says.

It can be stopped (the port then refuses connections: a receiver that is down) and started again
on the same port. `check_lanes` states the delivery guarantees over what it received.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from confguard.webhooks import (
    ATTEMPT_HEADER,
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    SignatureError,
    verify_signature,
)


@dataclass
class Hit:
    """One request as the receiver saw it."""

    at: float
    method: str
    path: str
    raw: bytes
    event_id: str | None
    attempt: int | None
    signed: bool
    signature_error: str | None = None
    status: int = 0
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def line(self) -> str:
        """One log line: time, path, invite, seq, state/outcome, attempt, answer."""
        millis = int(self.at * 1000) % 1000
        stamp = time.strftime("%H:%M:%S", time.gmtime(self.at)) + f".{millis:03d}Z"
        what = self.body.get("outcome") or self.body.get("state")
        kind = "outcome" if self.body.get("outcome") else "state"
        if self.body.get("type") == "invite.left":  # a joined member's departure, after it
            what = f"{self.body.get('left_reason')} ({self.body.get('left_cause')})"
            kind = "left"
        return (f"{stamp}  {self.path:<6} invite={self.body.get('invite_id')} "
                f"seq={self.body.get('seq')} {kind}={what} attempt={self.attempt} "
                f"-> {self.status}{'' if self.signed else ' (BAD SIGNATURE)'}")


Policy = Callable[[Hit], "int | tuple[int, dict[str, str]]"]


class Receiver:
    def __init__(self, secret: str, port: int = 0, on_hit: Callable[[Hit], None] | None = None):
        self.secret = secret
        self.port = port
        self.hits: list[Hit] = []
        self.policy: Policy = lambda hit: 200
        self.on_hit = on_hit
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Event()

    def url(self, path: str = "/hook") -> str:
        assert self.port, "start the receiver once to choose its port"
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def up(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = int(runner.addresses[0][1])
        self._runner = runner

    async def __aenter__(self) -> Receiver:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Down: nothing listens on the port any more (connections are refused)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        attempt = request.headers.get(ATTEMPT_HEADER)
        hit = Hit(at=time.time(), method=request.method, path=request.path, raw=raw,
                  event_id=request.headers.get(EVENT_ID_HEADER),
                  attempt=int(attempt) if attempt and attempt.isdigit() else None, signed=False)
        try:
            verify_signature(self.secret, request.headers.get(SIGNATURE_HEADER), raw)
            hit.signed = True
        except SignatureError as exc:
            hit.signature_error = str(exc)
        try:
            hit.body = json.loads(raw)
        except ValueError:
            hit.body = {}
        answer = self.policy(hit) if hit.signed else 401
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        hit.status = status
        self.hits.append(hit)
        if self.on_hit is not None:
            self.on_hit(hit)
        self._changed.set()
        return web.Response(status=status, headers=headers, text="ok\n")

    def delivered(self, path: str = "/hook") -> list[dict[str, Any]]:
        """Bodies answered with a 2xx on `path`, in arrival order."""
        return [h.body for h in self.hits if h.path == path and h.ok]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                lines = "\n".join(h.line() for h in self.hits)
                raise AssertionError(f"the receiver did not get what was expected:\n{lines}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.2))


def outcome_delivered(receiver: Receiver, invite_id: str, path: str = "/hook") -> bool:
    return any(b.get("invite_id") == invite_id and b.get("outcome")
               for b in receiver.delivered(path))


def check_lanes(hits: list[Hit]) -> dict[tuple[str, str], list[int]]:
    """The delivery guarantees over every request received, per (path, invite): signed; seq
    never goes down in arrival order; a repeated seq carries the same event id and the very same
    body; the delivered seqs are 0..n-1 with no gap and end with the outcome (a joined invite:
    the outcome, then possibly its member's `invite.left`). Returns the delivered seqs of each
    lane."""
    lanes: dict[tuple[str, str], list[Hit]] = {}
    for hit in hits:
        assert hit.signed, hit.signature_error
        lanes.setdefault((hit.path, str(hit.body["invite_id"])), []).append(hit)
    result: dict[tuple[str, str], list[int]] = {}
    for key, lane in lanes.items():
        first: dict[int, Hit] = {}
        last = -1
        for hit in lane:
            seq = int(hit.body["seq"])
            assert seq >= last, f"{key}: seq {seq} arrived after {last}"
            if seq in first:
                assert hit.raw == first[seq].raw, f"{key}: seq {seq} repeated with another body"
                assert hit.event_id == first[seq].event_id
            else:
                first[seq] = hit
            assert hit.event_id == f"{key[1]}-{seq}"
            last = seq
        delivered = sorted({int(h.body["seq"]) for h in lane if h.ok})
        assert delivered == list(range(len(delivered))), f"{key}: gap in {delivered}"
        assert set(first) == set(delivered), f"{key}: an event was never delivered"
        ends = [h for h in lane if h.ok and h.body.get("type") == "invite.outcome"]
        gone = sorted({int(h.body["seq"]) for h in lane if h.ok
                       and h.body.get("type") == "invite.left"})
        assert ends, f"{key}: no outcome"
        assert gone in ([], [delivered[-1]]), f"{key}: left not once and last"
        last = delivered[-1] - len(gone)
        assert int(ends[0].body["seq"]) == last, f"{key}: outcome not last"
        assert not gone or ends[0].body["outcome"] == "joined", f"{key}: left without a join"
        result[key] = delivered
    return result
