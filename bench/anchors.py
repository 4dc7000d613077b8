"""The anchors: what receiving the daemon's own event stream costs at the least.

The recording relay (bench/relay.py) kept the bytes the switch sent the daemon during a step.
`serve` replays them over a loopback socket, paced as recorded (same chunks, same gaps), after
an `auth/request` / `+OK accepted` greeting of its own. Two receivers, each its own uvloop process
that reports its CPU seconds (`time.process_time()`, all threads) from the greeting to the last
frame:
- `genesis`: `genesis.Inbound` with one no-op handler on `*` (genesis's own parser, consumer and
  handler dispatch: the library the daemon is built on, doing nothing with the events);
- `minimal`: an asyncio `Protocol` that splits frames (headers, Content-Length, body) and turns
  each event's plain headers into a dict of URL-decoded values: about the least any Python ESL
  client can do with the same bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import uvloop

from bench.relay import read_chunks

GREETING = b"Content-Type: auth/request\n\n"
ACCEPTED = b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n"


def replay_chunks(path: Path) -> list[tuple[float, bytes]]:
    """The recorded chunks after the switch's own greeting and auth reply (ours replace them)."""
    chunks = read_chunks(path)
    stream = b"".join(data for _, data in chunks)
    if not stream.startswith(GREETING):
        raise ValueError(f"{path}: the recording does not start with auth/request")
    cut = stream.index(b"\n\n", len(GREETING)) + 2  # the end of the auth reply
    out = []
    for at, data in chunks:
        if cut >= len(data):
            cut -= len(data)
            continue
        out.append((at, data[cut:]))
        cut = 0
    base = out[0][0] if out else 0.0
    return [(at - base, data) for at, data in out]


def stream_counts(chunks: list[tuple[float, bytes]]) -> tuple[int, int]:
    """(frames, events) in the replayed bytes."""
    parser = MinimalParser()
    parser.feed(b"".join(data for _, data in chunks))
    return parser.frames, parser.events


async def serve(port: int, chunks: list[tuple[float, bytes]], ready: asyncio.Event) -> None:
    done = asyncio.Event()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(GREETING)
        await reader.readuntil(b"\n\n")  # auth <password>
        writer.write(ACCEPTED)
        await writer.drain()
        await asyncio.sleep(0.2)  # the receiver starts its clock at the greeting's reply
        begin = time.perf_counter()
        for at, data in chunks:
            delay = begin + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(data)
        await writer.drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader.read(), 30)  # until the receiver closes
        writer.close()
        done.set()

    server = await asyncio.start_server(accept, "127.0.0.1", port)
    ready.set()
    async with server:
        await done.wait()


class MinimalParser:
    """Frames out of a byte stream; each event's plain headers into a dict."""

    def __init__(self) -> None:
        self.buffer = b""
        self.frames = 0
        self.events = 0

    def feed(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        pos = 0
        while True:
            end = buffer.find(b"\n\n", pos)
            if end < 0:
                break
            headers = {}
            for line in buffer[pos:end].decode().split("\n"):
                name, _, value = line.partition(": ")
                headers[name] = value
            length = int(headers.get("Content-Length", 0))
            if len(buffer) < end + 2 + length:
                break
            body = buffer[end + 2:end + 2 + length]
            pos = end + 2 + length
            self.frames += 1
            if headers.get("Content-Type") == "text/event-plain":
                head, _, _ = body.partition(b"\n\n")
                event = {}
                for line in head.decode().split("\n"):
                    name, _, value = line.partition(": ")
                    event[name] = unquote(value)
                if event.get("Event-Name"):
                    self.events += 1
        self.buffer = buffer[pos:]


async def receive_minimal(port: int, frames: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    parser = MinimalParser()

    class Receiver(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            if parser.frames == 0 and data.startswith(GREETING):
                self.transport.write(b"auth ClueCon\n\n")  # type: ignore[attr-defined]
                data = data[len(GREETING):]
            parser.feed(data)
            if parser.frames >= frames + 1 and not finished.done():  # + the auth reply
                finished.set_result(None)

    transport, _ = await loop.create_connection(Receiver, "127.0.0.1", port)
    cpu = time.process_time()
    await asyncio.wait_for(finished, 60)
    cpu = time.process_time() - cpu
    transport.close()
    return {"cpu_s": cpu, "frames": parser.frames - 1, "events": parser.events}


async def receive_genesis(port: int, events: int) -> dict[str, float]:
    from genesis import Inbound

    logging.getLogger("genesis").setLevel(logging.WARNING)
    seen = 0
    finished = asyncio.get_running_loop().create_future()

    async def noop(event: object) -> None:
        nonlocal seen
        seen += 1
        if seen >= events and not finished.done():
            finished.set_result(None)

    client = Inbound("127.0.0.1", port, "ClueCon")
    client.on("*", noop)
    await client.start()
    cpu = time.process_time()
    await asyncio.wait_for(finished, 60)
    cpu = time.process_time() - cpu
    await client.stop()
    return {"cpu_s": cpu, "events": seen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["serve", "genesis", "minimal"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=Path, help="serve: the relay's .bin recording")
    parser.add_argument("--frames", type=int, default=0, help="minimal: frames to expect")
    parser.add_argument("--events", type=int, default=0, help="genesis: events to expect")
    args = parser.parse_args()
    if args.mode == "serve":
        chunks = replay_chunks(args.chunks)
        uvloop.run(serve(args.port, chunks, asyncio.Event()))
        return
    if args.mode == "minimal":
        result = uvloop.run(receive_minimal(args.port, args.frames))
    else:
        result = uvloop.run(receive_genesis(args.port, args.events))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
