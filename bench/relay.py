"""The recording ESL relay of the benchmark: 127.0.0.1:<port> -> 127.0.0.1:<upstream>.

Its own process (uvloop), so that its parsing costs neither the daemon nor the peer. It counts
what crosses it -- commands by verb (client to switch), frames by kind and events by name (switch
to client) -- and keeps the switch's bytes as they arrived (time, chunk), so that the anchors
(bench/anchors.py) can replay the very stream the daemon received. On SIGTERM it writes
`<record>.json` (the counts) and `<record>.bin` (chunks: little-endian f64 seconds since the
connection opened, u32 length, bytes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import struct
import time
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import uvloop

from confguard.sim import wire

CHUNK = struct.Struct("<dI")


class Recording:
    def __init__(self) -> None:
        self.opened = time.monotonic()
        self.commands: Counter[str] = Counter()
        self.frames: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.chunks: list[tuple[float, bytes]] = []
        self.bytes_down = 0
        self._commands = wire.CommandParser()
        self._frames = wire.FrameParser()

    def client_data(self, data: bytes) -> None:
        for command in self._commands.feed(data):
            self.commands[command.line.split(" ", 1)[0]] += 1

    def server_data(self, data: bytes) -> None:
        self.chunks.append((time.monotonic() - self.opened, data))
        self.bytes_down += len(data)
        for frame in self._frames.feed(data):
            kind = frame.content_type
            self.frames[kind] += 1
            if kind == "text/event-plain":
                headers, _ = wire.parse_plain_event(frame.body)
                values = dict(headers)
                name = values.get("Event-Name", "?")
                if name == "CUSTOM":
                    name = unquote(values.get("Event-Subclass", "CUSTOM"))
                self.events[name] += 1
            elif kind == "text/event-json":
                values = json.loads(frame.body)
                name = values.get("Event-Name", "?")
                self.events[values.get("Event-Subclass", name) if name == "CUSTOM" else name] += 1

    def summary(self) -> dict[str, object]:
        return {
            "commands": dict(self.commands),
            "commands_total": sum(self.commands.values()),
            "frames": dict(self.frames),
            "events": dict(self.events),
            "events_total": sum(self.events.values()),
            "bytes_down": self.bytes_down,
            "chunks": len(self.chunks),
        }


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record) -> None:  # type: ignore[no-untyped-def]
    try:
        while data := await reader.read(65536):
            record(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError, wire.WireError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.transport.abort()


async def serve(port: int, upstream: int, record: Path) -> None:
    recordings: list[Recording] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:
            writer.transport.abort()
            return
        rec = Recording()
        recordings.append(rec)
        await asyncio.gather(pump(reader, up_writer, rec.client_data),
                             pump(up_reader, writer, rec.server_data))

    server = await asyncio.start_server(accept, "127.0.0.1", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()
    record.with_suffix(".json").write_text(json.dumps([r.summary() for r in recordings]))
    # The daemon's connection: the one that carried the most (readiness probes carry nothing).
    main = max(recordings, key=lambda r: r.bytes_down, default=None)
    with record.with_suffix(".bin").open("wb") as out:
        for at, data in main.chunks if main else []:
            out.write(CHUNK.pack(at, len(data)))
            out.write(data)


def read_chunks(path: Path) -> list[tuple[float, bytes]]:
    """The chunks a relay wrote to `path` (.bin)."""
    raw = path.read_bytes()
    out, offset = [], 0
    while offset < len(raw):
        at, size = CHUNK.unpack_from(raw, offset)
        offset += CHUNK.size
        out.append((at, raw[offset:offset + size]))
        offset += size
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", type=int, required=True)
    parser.add_argument("--record", type=Path, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.upstream, args.record))


if __name__ == "__main__":
    main()
