"""systemd's notify protocol (sd_notify) in a few lines, no dependency.

This module owns the messages confguard sends to the service manager: READY=1 once the control
socket listens, STATUS=<one line> as the ESL state changes, WATCHDOG=1 from the event loop,
RELOADING=1 / STOPPING=1 around SIGHUP and SIGTERM. Each is one datagram of ``KEY=value`` lines to
the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` names the abstract namespace).
Without ``$NOTIFY_SOCKET`` (not under systemd, or ``Type=simple``) every call does nothing.
Sending never raises: a lost notification must not take the daemon down.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier"]


class Notifier:
    """Sends sd_notify datagrams to one socket address (None: a no-op notifier)."""

    def __init__(
        self,
        address: str | None,
        *,
        watchdog_usec: int | None = None,
        watchdog_pid: int | None = None,
    ):
        self.address = _socket_address(address)
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid
        self._socket: socket.socket | None = None
        self.last_error: OSError | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        environ = os.environ if env is None else env
        return cls(
            environ.get("NOTIFY_SOCKET"),
            watchdog_usec=_positive_int(environ.get("WATCHDOG_USEC")),
            watchdog_pid=_positive_int(environ.get("WATCHDOG_PID")),
        )

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; True when the datagram left."""
        if self.address is None:
            return False
        payload = "\n".join(assignments).encode("utf-8", "replace")
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                self._socket.setblocking(False)
            self._socket.sendto(payload, self.address)
        except OSError as error:  # the manager went away, queue full, ...: never fatal
            self.last_error = error
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        lines = ["READY=1"]
        if status is not None:
            lines.append(_status_line(status))
        return self.send(*lines)

    def status(self, text: str) -> bool:
        return self.send(_status_line(text))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        lines = ["STOPPING=1"]
        if status is not None:
            lines.append(_status_line(status))
        return self.send(*lines)

    def reloading(self) -> bool:
        """RELOADING=1 with the MONOTONIC_USEC that Type=notify-reload (systemd >= 253) asks
        for; send `ready()` again when the reload is done."""
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={now_usec}")

    def watchdog_interval(self) -> float | None:
        """The watchdog timeout in seconds (WatchdogSec=) if it applies to this process, else
        None. Send `watchdog()` at least every half of it (see `watchdog_ping_interval`)."""
        if self.address is None or self._watchdog_usec is None:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 1_000_000

    def watchdog_ping_interval(self) -> float | None:
        interval = self.watchdog_interval()
        return None if interval is None else interval / 2

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _socket_address(address: str | None) -> str | None:
    """A filesystem path, or ``@name`` for the abstract namespace; anything else is ignored."""
    if not address:
        return None
    if address.startswith("@"):
        return "\0" + address[1:]
    if address.startswith("/"):
        return address
    return None  # e.g. "vsock:..." (VMs): not supported, behave as if unset


def _status_line(text: str) -> str:
    """STATUS= is one line; newlines would start new assignments."""
    return "STATUS=" + " ".join(text.split())


def _positive_int(value: str | None) -> int | None:
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        return None
    return number if number > 0 else None
