"""CUSTOM events on the wire, for tests/test_fs_events.py: a raw ESL client and the scenario whose
events the real switch recorded (tests/transcripts/20-custom-events.json) and the simulator must
reproduce.

The scenario, on two connections to one switch (a watcher subscribed to `CUSTOM
confguard::invite` with the filters the daemon keeps, a sender):
1. `sendevent CUSTOM` with `Event-Subclass: confguard::invite`, ext, room, request_id;
2. the same with a client `Event-Name` header (FreeSWITCH keeps it and adds its own after);
3. the dialplan's `event` application, run by an originated call's inline dialplan.
Each step's reply and the watcher's event (header names and values, in order) are kept.

Run `python -m tests.custom_events` to record it again from the real switch.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote

REPO = Path(__file__).resolve().parent.parent
RECORDING = REPO / "tests" / "transcripts" / "20-custom-events.json"

INVITE_HEADERS = [("Event-Subclass", "confguard::invite"), ("ext", "1001"), ("room", "test1"),
                  ("request_id", "rec-1")]
APP_DATA = "Event-Subclass=confguard::invite,Event-Name=CUSTOM,ext=1001,room=test1,request_id=rec-3"


class RawEsl:
    """One ESL connection read frame by frame (no decoding beyond the plain event's headers)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.events: asyncio.Queue[list[tuple[str, str]]] = asyncio.Queue()
        self.replies: asyncio.Queue[tuple[dict[str, str], str]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, port: int, password: str) -> RawEsl:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        esl = cls(reader, writer)
        head, _ = await esl._frame()
        assert head.get("Content-Type") == "auth/request", head
        esl._task = asyncio.create_task(esl._read())
        reply = await esl.command(f"auth {password}")
        assert reply.startswith("+OK"), reply
        return esl

    async def _frame(self) -> tuple[dict[str, str], str]:
        raw = await self.reader.readuntil(b"\n\n")
        head = dict(line.split(": ", 1) for line in raw.decode().strip().split("\n"))
        body = b""
        if "Content-Length" in head:
            body = await self.reader.readexactly(int(head["Content-Length"]))
        return head, body.decode()

    async def _read(self) -> None:
        while True:
            try:
                head, body = await self._frame()
            except (asyncio.IncompleteReadError, ConnectionError):
                return  # the switch closed the connection (it stopped)
            if head.get("Content-Type") == "text/event-plain":
                lines = body.split("\n\n", 1)[0].split("\n")
                await self.events.put(
                    [(n, unquote(v)) for n, _, v in (line.partition(": ") for line in lines)]
                )
            else:
                await self.replies.put((head, body))

    async def command(self, text: str) -> str:
        """Send one command block; the Reply-Text (command/reply) or the body (api/response)."""
        self.writer.write(text.encode() + b"\n\n")
        await self.writer.drain()
        head, body = await asyncio.wait_for(self.replies.get(), 10)
        return head.get("Reply-Text", body)

    async def sendevent(self, name: str, headers: list[tuple[str, str]]) -> str:
        lines = [f"sendevent {name}", *(f"{k}: {v}" for k, v in headers)]
        return await self.command("\n".join(lines))

    async def next_event(self, timeout: float = 10.0) -> list[tuple[str, str]]:
        return await asyncio.wait_for(self.events.get(), timeout)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.writer.close()


async def watcher(port: int, password: str, *subclasses: str) -> RawEsl:
    """A connection that sees what the daemon's connection sees of these subclasses: subscribed
    to them, with the daemon's permanent filters plus one per subclass."""
    esl = await RawEsl.open(port, password)
    assert (await esl.command(f"event plain HEARTBEAT CUSTOM {' '.join(subclasses)}")).startswith(
        "+OK"
    )
    for header, value in [("Event-Name", "HEARTBEAT"), ("Event-Name", "BACKGROUND_JOB"),
                          *(("Event-Subclass", s) for s in subclasses)]:
        assert (await esl.command(f"filter {header} {value}")).startswith("+OK")
    return esl


async def next_custom(esl: RawEsl, timeout: float = 10.0) -> list[tuple[str, str]]:
    """The next event on `esl` that is not a HEARTBEAT."""
    while True:
        event = await esl.next_event(timeout)
        if dict(event).get("Event-Name") != "HEARTBEAT":
            return event


async def scenario(port: int, password: str) -> list[dict[str, Any]]:
    """Run the scenario (module docstring) against the switch on 127.0.0.1:`port`."""
    watch = await watcher(port, password, "confguard::invite")
    sender = await RawEsl.open(port, password)
    records: list[dict[str, Any]] = []
    try:
        reply = await sender.sendevent("CUSTOM", INVITE_HEADERS)
        records.append({"step": "sendevent", "reply": reply, "event": await next_custom(watch)})
        reply = await sender.sendevent(
            "CUSTOM", [INVITE_HEADERS[0], ("Event-Name", "FOO"), ("request_id", "rec-2")]
        )
        records.append({"step": "sendevent-event-name", "reply": reply,
                        "event": await next_custom(watch)})
        reply = await sender.command(
            f"api originate user/1001 'm:^:event:{APP_DATA}^hangup' inline"
        )
        records.append({"step": "event-app", "reply": reply, "event": await next_custom(watch)})
    finally:
        await sender.close()
        await watch.close()
    return records


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    """What must match between the switches: the reply's form, the event's header names in
    order up to the channel's block (which the simulator models elsewhere, test_conformance),
    and the values that are not per-run (uuids, dates, sequence, host)."""
    per_run = {"Core-UUID", "FreeSWITCH-Hostname", "FreeSWITCH-Switchname", "FreeSWITCH-IPv4",
               "FreeSWITCH-IPv6", "Event-Date-Local", "Event-Date-GMT", "Event-Date-Timestamp",
               "Event-Sequence", "Event-UUID"}
    names: list[str] = []
    values: list[tuple[str, str]] = []
    for name, value in record["event"]:
        if name == "Channel-State":
            break
        names.append(name)
        if name not in per_run:
            values.append((name, value))
    return {"step": record["step"], "reply": record["reply"].split(" ", 1)[0],
            "names": names, "values": values,
            "has_channel_block": any(n == "Unique-ID" for n, _ in record["event"])}


async def _record() -> None:
    from confguard.realswitch import RealSwitch, find_freeswitch

    run_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/confguard-record-20")
    switch = RealSwitch(find_freeswitch(REPO), run_dir)
    await asyncio.to_thread(switch.start)
    try:
        records = await scenario(switch.port, switch.password)
    finally:
        await asyncio.to_thread(switch.stop)
    RECORDING.write_text(json.dumps(
        {"note": "recorded by `python -m tests.custom_events` from confguard.realswitch "
                 "(FreeSWITCH 1.11.3-dev cc93a683ca)", "records": records}, indent=1) + "\n")
    print(f"wrote {RECORDING}")


if __name__ == "__main__":
    asyncio.run(_record())
