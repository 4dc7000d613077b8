"""Fault injection for tests: what a real FreeSWITCH or network can do to a client.

`Faults` acts on a running simulator from inside the test process: drop every connection, stall
every reply and event, write a frame whose Content-Length is not a number, write an event whose
bytes are not UTF-8, restart the switch (calls and timers lost, clients cut, new Core-UUID) or
run the `fsctl shutdown` sequence of transcript 12 (SHUTDOWN, hangups with SYSTEM_SHUTDOWN, then
"The system is being shut down." to every client and close).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from confguard.sim import wire

if TYPE_CHECKING:
    from confguard.sim.server import EslServer

MALFORMED_FRAME = b"Content-Length: twelve\nContent-Type: text/event-plain\n\n"
INVALID_UTF8_BODY = b"caf\xe9 \xff\xfe not utf-8\n"  # Latin-1 and stray bytes
SHUTDOWN_NOTICE_DELAY = 0.5  # simulated seconds between the last hangup and the notices


class RestartableSwitch(Protocol):
    """What the faults need from the switch."""

    def restart(self) -> None: ...

    async def shutdown(self) -> None: ...


class Faults:
    """In-process fault injection on one simulator (see the module docstring)."""

    def __init__(
        self, server: EslServer, switch: RestartableSwitch | None, time_scale: float = 1.0
    ) -> None:
        self._server = server
        self._switch = switch
        self._time_scale = time_scale
        self._shutdown_started = False
        self.shut_down = asyncio.Event()  # set once the shutdown sequence is complete

    def drop_connections(self) -> None:
        """Close every client socket at once, without any notice."""
        self._server.drop_connections()

    def stall(self, seconds: float) -> None:
        """Hold every reply and event on every connection for `seconds` real seconds."""
        self._server.stall(seconds)

    def send_malformed(self) -> None:
        """Write, to every authenticated client, a frame whose Content-Length is not a number."""
        self._server.inject(MALFORMED_FRAME)

    def send_invalid_utf8(self) -> None:
        """Write, to every authenticated client, an event whose body is not valid UTF-8."""
        body = INVALID_UTF8_BODY.decode("utf-8", "surrogateescape")
        headers = [
            ("Event-Name", "CUSTOM"),
            ("Event-Subclass", "confguard::sim_invalid_utf8"),
            ("Event-Sequence", "0"),
        ]
        for connection in list(self._server.connections):
            if connection.authed:
                event_format = connection.subscription.event_format
                connection.inject(wire.encode_event(headers, body, event_format))

    def restart(self) -> None:
        """FreeSWITCH restarted: calls and tasks gone without events, every client cut."""
        if self._switch is not None:
            self._switch.restart()
        self._server.drop_connections()

    async def shutdown(self) -> None:
        """`fsctl shutdown`: the switch's SHUTDOWN and hangups, then notices and close."""
        if self._shutdown_started:
            await self.shut_down.wait()
            return
        self._shutdown_started = True
        try:
            if self._switch is not None:
                await self._switch.shutdown()
            await asyncio.sleep(SHUTDOWN_NOTICE_DELAY * self._time_scale)
            await self._server.stop_listening()
            self._server.goodbye_all(wire.SHUTDOWN_TEXT)
        finally:
            self.shut_down.set()
