"""The one ESL session confguard uses: a thin, reliable layer over ``genesis.Inbound``.

Owns: connecting and authenticating with timeouts and typed errors, ``api``/``bgapi`` with our own
``Job-UUID`` and a timeout on every command, events delivered in wire order to one consumer
(plain and JSON), remembered subscriptions and filters (with a permanent ``Event-Name HEARTBEAT``
filter), liveness (dead genesis reader, silent socket, disconnect/EOF), reconnect with backoff and
jitter, and routing genesis's stdlib logging into structlog with the ``auth`` password redacted.

How it sits on genesis: genesis is the transport -- its ``Inbound`` connection, ``start``/``stop``,
and its command exchange (replies matched to commands by order, tombstones for cancelled writes).
Its per-frame and per-command machinery is not used: each connection overrides genesis's reader
task (``handler``) with our own chunked reader and frame splitter (``FrameSplitter``: the frame
limits and protocol errors), which hands replies to genesis's exchange and events straight to the
session, in wire order, in that task; ``send`` writes the command and waits on the exchange
without genesis's spans, metrics and subscription ledger. We write ``auth``
ourselves, so genesis never sees or logs the password. Liveness: the reader ending for
any reason (EOF, invalid UTF-8, a protocol error), a disconnect-notice, or no frame at
all for 2 x ``heartbeat_interval`` (HEARTBEAT is always subscribed and filtered in) marks the
connection lost. A permanent ``Event-Name BACKGROUND_JOB`` filter is kept too, so ``bgapi``
results pass whatever per-call filters exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote

import structlog
from genesis import Inbound
from genesis.exceptions import CommandStage, ConnectionLost, GenesisError, UnconnectedError
from genesis.exceptions import ConnectionError as GenesisConnectionError
from genesis.protocol.parser import ESLEvent

log = structlog.get_logger("confguard.esl")

GENESIS_LOGGER_NAME = "genesis.observability.logger"
"""The one stdlib logger every genesis module logs through (genesis/observability/logger.py)."""

MAX_JOB_UUID_LENGTH = 36
"""FreeSWITCH cuts a client ``Job-UUID`` header to 36 characters."""

EVENT_FORMATS = ("plain", "json")
PERMANENT_EVENTS = ("HEARTBEAT", "BACKGROUND_JOB")
"""Always subscribed: HEARTBEAT feeds liveness, BACKGROUND_JOB resolves ``bgapi`` waiters."""
PERMANENT_FILTERS: tuple[tuple[str, str], ...] = (
    ("Event-Name", "HEARTBEAT"),
    ("Event-Name", "BACKGROUND_JOB"),
    ("Event-Name", "ADD_SCHEDULE"),
    ("Event-Name", "DEL_SCHEDULE"),
)
"""Kept on every connection so deleting the last per-call filter never floods (FACTS.md). They
also pass what a call's own ``Unique-ID`` filter would not: its bgapi's BACKGROUND_JOB and its
timers' ADD_SCHEDULE / DEL_SCHEDULE, routed by Job-UUID and Task-Group (one filter per call)."""

_ENVELOPE_TYPES = ("text/event-plain", "text/event-json")
_KNOWN_TYPES = frozenset({
    *_ENVELOPE_TYPES, "text/event-xml", "auth/request", "command/reply", "api/response",
    "text/disconnect-notice", "text/rude-rejection", "log/data",
})
"""Every Content-Type FreeSWITCH's mod_event_socket sends."""
_TOKEN = re.compile(r"\S+")  # use fullmatch: "$" would accept a trailing newline


# --------------------------------------------------------------------------------------- errors
class EslError(Exception):
    """Base of every session error. Messages name host:port, never the password."""


class EslConnectError(EslError):
    """TCP connect refused or the address is unreachable."""


class EslAuthError(EslError):
    """FreeSWITCH answered ``-ERR invalid`` to our ``auth``."""


class EslRejectedError(EslError):
    """FreeSWITCH sent ``text/rude-rejection`` (ACL) instead of ``auth/request``."""


class EslTimeoutError(EslError):
    """TCP connect, the ``auth/request`` wait, a command or a background job took too long."""


class EslConnectionLost(EslError):
    """The connection dropped (or was found dead) while we were waiting, or is not up."""


class EslNotConnected(EslConnectionLost):
    """The command was not written: the session was not connected (reconnecting, or closed)."""


class EslCommandError(EslError):
    """A ``command/reply`` with ``-ERR ...`` for a non-api command."""


# -------------------------------------------------------------------------------------- values
@dataclass(frozen=True)
class EslEvent:
    """One parsed event; values URL-decoded; a repeated header keeps its first value."""

    name: str
    headers: Mapping[str, str]
    body: str | None = None

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.headers.get(key, default)

    @property
    def uuid(self) -> str | None:
        return self.headers.get("Unique-ID")

    @property
    def job_uuid(self) -> str | None:
        return self.headers.get("Job-UUID")

    @property
    def subclass(self) -> str | None:
        return self.headers.get("Event-Subclass")


@dataclass(frozen=True)
class EslSettings:
    """Where and how to connect. ``repr`` never shows the password."""

    host: str = "127.0.0.1"
    port: int = 8021
    password: str = field(default="ClueCon", repr=False)
    connect_timeout: float = 5.0
    auth_timeout: float = 5.0
    command_timeout: float = 10.0
    heartbeat_interval: float = 20.0
    reconnect_initial: float = 0.5
    reconnect_max: float = 30.0
    # additions to CONTRACTS.md
    job_timeout: float = 300.0  # bgapi(): wait for BACKGROUND_JOB
    event_format: str = "plain"  # "plain" or "json"

    def __post_init__(self) -> None:
        if not self.host or any(ch.isspace() for ch in self.host):
            raise ValueError("host must be a non-empty name without spaces")
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} out of range 1..65535")
        for name in (
            "connect_timeout",
            "auth_timeout",
            "command_timeout",
            "heartbeat_interval",
            "reconnect_initial",
            "reconnect_max",
            "job_timeout",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.reconnect_max < self.reconnect_initial:
            raise ValueError("reconnect_max must be >= reconnect_initial")
        if self.event_format not in EVENT_FORMATS:
            raise ValueError(f"event_format must be one of {EVENT_FORMATS}")
        if "\n" in self.password or "\r" in self.password or not self.password:
            raise ValueError("password must be non-empty and on one line")

    @property
    def host_port(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# ------------------------------------------------------------------------------------ logging
REDACTED = "<redacted>"
# FreeSWITCH takes the whole rest of an `auth` / `userauth` line as the password: all of it goes.
_AUTH_LINE = re.compile(r"(?i)\b(auth|userauth)([ \t]+)[^\r\n]*")
_secrets: set[str] = set()


def register_secret(secret: str) -> None:
    """Make the genesis log filter redact ``secret`` wherever it appears."""
    if secret:
        _secrets.add(secret)


def redact(text: str) -> str:
    """Replace the rest of an ``auth`` line and every registered secret with ``<redacted>``."""
    text = _AUTH_LINE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record's message so no ``auth`` password (or registered secret) survives."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg = cleaned
            record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            text = str(record.exc_info[1])
            if redact(text) != text:
                record.exc_info = None
                record.exc_text = None
                record.msg = f"{record.msg} (exception withheld: it contained a secret)"
        return True


class StructlogForwardHandler(logging.Handler):
    """Sends each (already redacted) stdlib record to a structlog logger."""

    def __init__(self, logger_name: str = "genesis") -> None:
        super().__init__()
        self._logger = structlog.get_logger(logger_name)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event_dict: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                event_dict["exc_info"] = record.exc_info
            self._logger.log(record.levelno, record.getMessage(), **event_dict)
        except Exception:
            self.handleError(record)


def route_genesis_logging(level: int | None = None) -> logging.Logger:
    """Route genesis's stdlib logger into structlog, redacted; silence its own handlers.

    Removes genesis's RichHandler(s), stops propagation (so nothing prints twice), adds the
    redaction filter on the logger itself and one handler that forwards to structlog
    (logger name ``genesis``). ``level`` sets genesis's level (None leaves it as is).
    Idempotent. Returns the genesis logger.
    """
    genesis_logger = logging.getLogger(GENESIS_LOGGER_NAME)
    for handler in list(genesis_logger.handlers):
        genesis_logger.removeHandler(handler)
    for old in [f for f in genesis_logger.filters if isinstance(f, RedactingFilter)]:
        genesis_logger.removeFilter(old)
    genesis_logger.addFilter(RedactingFilter())
    handler = StructlogForwardHandler()
    handler.addFilter(RedactingFilter())
    genesis_logger.addHandler(handler)
    genesis_logger.propagate = False
    if level is not None:
        genesis_logger.setLevel(level)
    return genesis_logger


# ---------------------------------------------------------------------------------- parsing
def _first(value: object) -> str:
    if isinstance(value, list):
        return str(value[0]) if value else ""
    return value if isinstance(value, str) else str(value)


def parse_event(raw: Mapping[str, object], body: str | None) -> EslEvent | None:
    """Turn a genesis frame (``text/event-plain`` or ``text/event-json``) into an EslEvent.

    Returns None for any other content type.
    """
    content_type = _first(raw.get("Content-Type", ""))
    if content_type == "text/event-json":
        if body is None:
            raise ValueError("text/event-json frame without a body")
        obj = json.loads(body)
        if not isinstance(obj, dict):
            raise ValueError("text/event-json body is not a JSON object")
        event_body = obj.get("_body")
        headers = {str(k): _first(v) for k, v in obj.items() if k != "_body"}
        return EslEvent(
            name=headers.get("Event-Name", ""),
            headers=MappingProxyType(headers),
            body=None if event_body is None else _first(event_body),
        )
    if content_type == "text/event-plain":
        headers = {str(k): _first(v) for k, v in raw.items()}
        # drop the envelope; genesis merged the event's own headers over it
        if headers.get("Content-Type") == "text/event-plain":
            del headers["Content-Type"]
        if body is None:
            headers.pop("Content-Length", None)
        return EslEvent(
            name=headers.get("Event-Name", ""),
            headers=MappingProxyType(headers),
            body=body,
        )
    return None


def _check_line(what: str, text: str) -> None:
    if not text or not text.strip():
        raise ValueError(f"{what} is empty")
    if "\n" in text or "\r" in text:
        raise ValueError(f"{what} contains a line break")


def _check_token(what: str, text: str) -> None:
    if not isinstance(text, str) or not _TOKEN.fullmatch(text):
        raise ValueError(f"{what} must be one non-empty word without spaces: {text!r}")


SENDEVENT_HEADER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
SENDEVENT_VALUE = re.compile(r"[^\x00-\x1f\x7f]{1,1024}")  # no control character, no line break
SENDEVENT_RESERVED = frozenset({"content-length", "unique-id", "command", "event-uuid"})
"""Header names a ``sendevent`` must not carry: ``Content-Length`` makes FreeSWITCH read a body,
``Unique-ID`` hands the event to that call's queue instead of firing it (mod_event_socket.c),
``Command`` and ``Event-UUID`` are FreeSWITCH's own."""


def check_sendevent_header(name: str, value: str) -> None:
    """ValueError unless ``name: value`` stays one header line of a ``sendevent``."""
    if not isinstance(name, str) or not SENDEVENT_HEADER_NAME.fullmatch(name):
        raise ValueError(f"sendevent header name {name!r}: 1-64 of A-Z a-z 0-9 _ -")
    if name.lower() in SENDEVENT_RESERVED:
        raise ValueError(f"sendevent header {name!r} is reserved")
    if (not isinstance(value, str) or not SENDEVENT_VALUE.fullmatch(value)
            or value[0] == " " or value[-1] == " "):
        raise ValueError(
            f"sendevent header {name}: 1-1024 characters, no control character or line break, "
            "no leading or trailing space"
        )


# ------------------------------------------------------------------------ frames and limits
MAX_HEADER_BLOCK_BYTES = 1 << 20
"""Longest frame header block accepted. FreeSWITCH's envelopes are a few hundred bytes (event
headers travel in the body); genesis itself would keep appending lines until a blank one."""
MAX_BODY_BYTES = 16 << 20
"""Largest ``Content-Length`` accepted (a ``show channels as json`` of a busy switch is a few MB).
genesis itself would buffer whatever length the peer announces."""
HEADER_LINE_LIMIT = 64 * 1024
"""Longest header line accepted (the StreamReader limit genesis's reader had)."""
READ_CHUNK = 256 * 1024
"""Bytes asked of the socket per read: one read takes every frame that has arrived."""

# str.splitlines() (genesis's line split) also breaks at these ASCII characters; a text with any
# of them, or with non-ASCII characters, takes the exact (slow) path. So does a name holding
# whitespace (str.isspace()'s ASCII characters) or `%`. Both are checked on the ASCII bytes with
# one `bytes.translate` each (every other byte deleted), not a regex walking the text.
_ODD_BREAK_BYTES = b"\r\x0b\x0c\x1c\x1d\x1e"
_ODD_KEY_BYTES = b"\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f %"
_ALL_BUT_ODD_BREAKS = bytes(c for c in range(256) if c not in _ODD_BREAK_BYTES)
_ALL_BUT_ODD_KEYS = bytes(c for c in range(256) if c not in _ODD_KEY_BYTES)


def _has_odd_break(ascii_text: str) -> bool:
    """Whether an ASCII text holds a line break other than `\\n` (see above)."""
    return bool(ascii_text.encode("ascii").translate(None, _ALL_BUT_ODD_BREAKS))


def _has_odd_key(ascii_names: str) -> bool:
    """Whether ASCII header names hold whitespace or `%` (see above)."""
    return bool(ascii_names.encode("ascii").translate(None, _ALL_BUT_ODD_KEYS))


class _FrameRejected(Exception):
    """A frame broke a limit, announced a length that is not a byte count, or is not UTF-8."""


def _parse_header_text(text: str) -> tuple[dict[str, str], set[str]]:
    """Header lines exactly as genesis reads them (``str.splitlines``; a line without ``": "``
    continues the previous value; names and values stripped and URL-decoded), except that a
    repeated name keeps its first value instead of becoming a list. Also the names that were
    repeated. Decodes only what contains ``%``."""
    headers: dict[str, str] = {}
    repeated: set[str] = set()
    last_name = ""
    value = ""
    for line in text.strip().splitlines():
        if ": " in line:
            name, value = line.split(": ", 1)
            last_name = name
            header_line = True
        else:
            value += "\n" + line
            name = last_name
            header_line = False
        name = name.strip()
        if "%" in name:
            name = unquote(name)
        value = value.strip()
        if "%" in value:
            value = unquote(value)
        if header_line and name in headers:
            repeated.add(name)
        else:
            headers[name] = value
    return headers, repeated


class _RawHeaders(Mapping[str, str]):
    """An event's headers as they came (first value of each name), each value stripped and
    URL-decoded when it is read: an event routed nowhere never pays for decoding."""

    __slots__ = ("_raw",)

    def __init__(self, raw: dict[str, str]) -> None:
        self._raw = raw

    def __getitem__(self, key: str) -> str:
        value = self._raw[key].strip()
        return unquote(value) if "%" in value else value

    def get(self, key: str, default: Any = None) -> Any:
        value = self._raw.get(key)
        if value is None:
            return default
        value = value.strip()
        return unquote(value) if "%" in value else value

    def __contains__(self, key: object) -> bool:
        return key in self._raw

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __repr__(self) -> str:
        return f"_RawHeaders({dict(self.items())!r})"


def _event_headers(text: str) -> Mapping[str, str]:
    """An event's header lines. Fast path (what FreeSWITCH sends: ASCII, ``\\n`` line ends,
    names without spaces or ``%``, one ``": "`` per line at least): split in C, values decoded
    on read; anything else: `_parse_header_text`, the same result the slow way."""
    text = text.strip()
    if text.isascii() and not _has_odd_break(text):
        try:
            raw = dict(reversed([line.split(": ", 1) for line in text.split("\n")]))
        except ValueError:  # a line without ": " (a continuation): the exact path
            raw = None
        if raw is not None and not _has_odd_key("".join(raw)):
            return _RawHeaders(raw)
    return MappingProxyType(_parse_header_text(text)[0])


def event_from_frame(envelope: Mapping[str, str], content: str | None) -> EslEvent | None:
    """An EslEvent from a ``text/event-plain`` / ``text/event-json`` frame: its envelope headers
    and its body text. The same event ``parse_event`` makes of genesis's frame (the event's
    headers merged over the envelope's, the envelope's Content-Type dropped, Content-Length
    dropped when there is no body). None for other content types."""
    content_type = envelope.get("Content-Type", "")
    if content_type == "text/event-json":
        return parse_event(envelope, content)
    if content_type != "text/event-plain":
        return None
    body: str | None = None
    if content is None:
        headers: Mapping[str, str] = {}
    elif "\n\n" in content:
        head, body = content.split("\n\n", 1)
        headers = _event_headers(head)
        body = body or None
    else:
        headers = _event_headers(content)
    extra = {k: v for k, v in envelope.items() if k not in headers}
    if extra.get("Content-Type") == "text/event-plain":
        del extra["Content-Type"]
    if body is None:
        extra.pop("Content-Length", None)
    if extra or headers.get("Content-Type") == "text/event-plain" or (
            body is None and "Content-Length" in headers):
        merged = dict(headers.items())
        merged.update(extra)
        if merged.get("Content-Type") == "text/event-plain":
            del merged["Content-Type"]
        if body is None:
            merged.pop("Content-Length", None)
        headers = MappingProxyType(merged)
    return EslEvent(name=headers.get("Event-Name", "") or "", headers=headers, body=body)


class FrameSplitter:
    """Sans-I/O: bytes in (as the socket gives them), whole frames out as (envelope headers,
    body text or None), with the checks genesis does not make: a header block is at most
    ``MAX_HEADER_BLOCK_BYTES`` and its lines at most ``HEADER_LINE_LIMIT``; ``Content-Length``
    is plain ASCII digits, at most ``MAX_BODY_BYTES``, and given once; headers and bodies are
    UTF-8. A breach sets `error` (the connection cannot be trusted past it).
    A block ends, as in genesis, at the first ``\\n\\n`` or ``\\r\\n\\r\\n``."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._scan = 0  # where to look for the block's end next
        self._envelope: dict[str, str] | None = None  # headers of a frame waiting for its body
        self._need = 0
        self.error: str | None = None

    @property
    def pending(self) -> bool:
        """Bytes of an unfinished frame are held."""
        return bool(self._buf) or self._envelope is not None

    def feed(self, data: bytes) -> list[tuple[dict[str, str], str | None]]:
        """The frames `data` completes, in order. After a breach: the frames before it, and
        `error` says what it was (nothing more is read: the stream cannot be trusted past it)."""
        if self.error is not None:
            return []
        buf = self._buf
        buf += data
        out: list[tuple[dict[str, str], str | None]] = []
        pos = 0
        try:
            while True:
                if self._envelope is not None:
                    if len(buf) - pos < self._need:
                        break
                    body = bytes(buf[pos:pos + self._need]).decode("utf-8")
                    pos += self._need
                    out.append((self._envelope, body))
                    self._envelope = None
                    continue
                scan = max(pos, self._scan)
                lf = buf.find(b"\n\n", scan)
                crlf = buf.find(b"\r\n\r\n", scan)
                if lf < 0 and crlf < 0:
                    self._check_partial(buf, pos)
                    self._scan = max(pos, len(buf) - 3)
                    break
                end = min(e for e in (lf + 2 if lf >= 0 else -1, crlf + 4 if crlf >= 0 else -1)
                          if e > 0)
                if end - pos > MAX_HEADER_BLOCK_BYTES:
                    raise _FrameRejected(f"a header block over {MAX_HEADER_BLOCK_BYTES} bytes")
                block = bytes(buf[pos:end])
                pos = self._scan = end
                if len(block) > HEADER_LINE_LIMIT and max(map(len, block.split(b"\n"))) > \
                        HEADER_LINE_LIMIT:
                    raise _FrameRejected(
                        f"reader stopped at a header line over {HEADER_LINE_LIMIT} bytes")
                envelope, repeated = _parse_header_text(block.decode("utf-8"))
                length = self._content_length(envelope, repeated)
                if length:
                    self._envelope, self._need = envelope, length
                else:
                    out.append((envelope, None))
        except UnicodeDecodeError as exc:
            self.error = f"a frame is not UTF-8 (UnicodeDecodeError: {exc})"
        except _FrameRejected as exc:
            self.error = str(exc)
        finally:
            del buf[:pos]
            self._scan = max(0, self._scan - pos)
        return out

    @staticmethod
    def _check_partial(buf: bytearray, pos: int) -> None:
        if len(buf) - pos > MAX_HEADER_BLOCK_BYTES:
            raise _FrameRejected(f"a header block over {MAX_HEADER_BLOCK_BYTES} bytes")
        if len(buf) - pos > HEADER_LINE_LIMIT and \
                len(buf) - (buf.rfind(b"\n", pos) + 1) > HEADER_LINE_LIMIT:
            raise _FrameRejected(f"reader stopped at a header line over {HEADER_LINE_LIMIT} bytes")

    @staticmethod
    def _content_length(envelope: dict[str, str], repeated: set[str]) -> int:
        if "Content-Length" in repeated:
            raise _FrameRejected("reader stopped at two Content-Length headers")
        text = envelope.get("Content-Length")
        if text is None:
            return 0
        length = text.split("\n")[0]
        if not (length.isascii() and length.isdigit()):
            raise _FrameRejected(f"Content-Length {length[:40]!r} is not a byte count")
        if int(length) > MAX_BODY_BYTES:
            raise _FrameRejected(f"Content-Length {length[:40]} over {MAX_BODY_BYTES}")
        return int(length)


# ------------------------------------------------------------------------------ connection
class _Connection(Inbound):
    """One TCP connection (a new genesis ``Inbound`` each time) with our frame processor.

    Our processor runs first for every frame, inside genesis's consumer task, in wire order.
    The password is never handed to genesis: we write ``auth`` ourselves and read its reply here.
    """

    def __init__(
        self,
        settings: EslSettings,
        on_event: Callable[[_Connection, EslEvent], None],
    ) -> None:
        super().__init__(settings.host, settings.port, "(withheld)", int(settings.connect_timeout))
        self.settings = settings
        self._on_event = on_event
        self.auth_request_seen = False
        self.rejected = False
        self.disconnect_notice: str | None = None
        self.lost = asyncio.Event()
        self.lost_reason: str | None = None
        self.last_rx = time.monotonic()
        self._auth_reply: asyncio.Future[str] | None = None
        self._outgoing: list[bytes] = []  # commands of this loop turn, sent together
        self._flush_handle: asyncio.Handle | None = None
        # Frames never go through genesis's queue and processors (its per-frame telemetry, header
        # parsing and handler routing cost more than the whole daemon should): `handler` reads
        # and dispatches them itself; genesis's consumer only sees the end-of-stream marker.
        self.event_processors: list[Any] = []

    # -- genesis hooks
    async def _connect(self) -> None:
        where = self.settings.host_port
        try:
            reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.settings.host, self.settings.port, limit=HEADER_LINE_LIMIT
                ),
                self.settings.connect_timeout,
            )
            self.reader = reader
        except TimeoutError:
            raise EslTimeoutError(
                f"ESL {where}: TCP connect timed out after {self.settings.connect_timeout:g} s"
            ) from None
        except ConnectionRefusedError:
            raise EslConnectError(f"ESL {where}: connection refused") from None
        except OSError as exc:
            raise EslConnectError(
                f"ESL {where}: cannot connect ({exc.strerror or type(exc).__name__})"
            ) from None

    async def authenticate(self) -> None:
        where = self.settings.host_port
        self.watch_reader()
        try:
            await asyncio.wait_for(self.authentication_event.wait(), self.settings.auth_timeout)
        except TimeoutError:
            raise EslTimeoutError(
                f"ESL {where}: no auth/request within {self.settings.auth_timeout:g} s"
            ) from None
        if self.rejected:
            raise EslRejectedError(f"ESL {where}: connection rejected by the server ACL")
        if not self.auth_request_seen:
            raise EslConnectionLost(f"ESL {where}: connection closed before auth/request")
        loop = asyncio.get_running_loop()
        self._auth_reply = loop.create_future()
        writer = self.writer
        if writer is None:
            raise EslConnectionLost(f"ESL {where}: connection closed before auth")
        try:
            writer.write(f"auth {self.settings.password}\n\n".encode())
            await writer.drain()
        except (OSError, RuntimeError):
            raise EslConnectionLost(f"ESL {where}: connection lost while authenticating") from None
        lost_wait: asyncio.Future[Any] = asyncio.ensure_future(self.lost.wait())
        reply_wait: asyncio.Future[Any] = self._auth_reply
        try:
            done, _ = await asyncio.wait(
                {reply_wait, lost_wait},
                timeout=self.settings.command_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            lost_wait.cancel()
        if self._auth_reply.done():
            reply = self._auth_reply.result()
        elif done:
            raise EslConnectionLost(f"ESL {where}: connection lost while authenticating")
        else:
            raise EslTimeoutError(
                f"ESL {where}: no reply to auth within {self.settings.command_timeout:g} s"
            )
        if reply.startswith("-ERR"):
            raise EslAuthError(f"ESL {where}: authentication failed (wrong password)")
        if not reply.startswith("+OK"):
            raise EslAuthError(f"ESL {where}: unexpected reply to auth: {redact(reply)!r}")

    # -- the reader (genesis's producer task; replaces its line-by-line reader)
    async def handler(self) -> None:
        """Read the socket in chunks, split frames (`FrameSplitter`, with its limits) and handle
        each in wire order, in this task: replies go to genesis's command exchange (which matches
        them to commands by order), events straight to the session. Ends on EOF, a read error or
        a protocol error; genesis's consumer is then told (and stops the connection)."""
        reader = self.reader
        if reader is None:
            return
        splitter = FrameSplitter()
        try:
            while self.is_connected and not self.lost.is_set():  # type: ignore[has-type]
                try:
                    data = await reader.read(READ_CHUNK)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self._pending_loss_reason = "eof"
                    break
                if not data:
                    self._pending_loss_reason = "truncated" if splitter.pending else "eof"
                    break
                self.last_rx = time.monotonic()
                for envelope, body in splitter.feed(data):
                    self._process_frame(envelope, body)
                    if self.lost.is_set():
                        break  # nothing after a frame that broke the connection is trusted
                if splitter.error is not None:
                    self.mark_lost(f"protocol error: {splitter.error}")
                    self._pending_loss_reason = "protocol_error"
                    break
        finally:
            self.is_connected = False
            if self._pending_loss_reason is None:
                self._pending_loss_reason = "stopped"
            await self._signal_reader_done()

    def _process_frame(self, envelope: dict[str, str], body: str | None) -> None:
        """One frame, in wire order."""
        content_type = envelope.get("Content-Type", "")
        if content_type in _ENVELOPE_TYPES:
            try:
                event = event_from_frame(envelope, body)
            except (ValueError, TypeError) as exc:
                log.warning("esl.unparsable_event", where=self.settings.host_port, error=str(exc))
                return
            if event is not None:
                self._on_event(self, event)
            return
        if content_type == "auth/request":
            self.auth_request_seen = True
            self.authentication_event.set()
            return
        auth_reply = self._auth_reply
        if content_type == "command/reply" and auth_reply is not None and not auth_reply.done():
            auth_reply.set_result(envelope.get("Reply-Text", ""))
            return
        if not content_type:
            # FreeSWITCH types every frame: this is stray bytes or a body read as headers, and
            # the replies after it would be matched to the wrong commands
            self.mark_lost("protocol error: a frame without Content-Type")
            return
        if content_type in ("command/reply", "api/response"):
            if self.exchange.depth == 0:
                self.mark_lost(f"protocol error: {content_type} to no command")
                return
            reply = ESLEvent(envelope)
            reply.body = body or None
            self.exchange.deliver(reply)
            return
        if content_type == "text/rude-rejection":
            self.rejected = True
            self.mark_lost("rude-rejection")
            self.authentication_event.set()
            return
        if content_type == "text/disconnect-notice":
            self.disconnect_notice = (body or "").strip()
            self.mark_lost("disconnect-notice")
            self.authentication_event.set()
            return
        if content_type == "text/event-xml":
            log.warning("esl.xml_event_ignored", where=self.settings.host_port)
        elif content_type not in _KNOWN_TYPES:
            # a body read as headers, most likely: its reply is gone and every later reply
            # would go to the command after its own
            self.mark_lost(f"protocol error: unknown Content-Type {content_type[:60]!r}")

    # -- commands (genesis's send without its per-command span, metrics and subscription ledger,
    # whose filter bookkeeping scans every filter on every filter command; the session keeps its
    # own). The exchange is genesis's: one FIFO, a tombstone for a cancelled write, and the
    # connection stopped when a write may have happened but its reply cannot come.
    async def send(self, cmd: str) -> ESLEvent:
        writer = self.writer
        if not self.is_connected or writer is None:
            if self._lost:
                raise ConnectionLost(CommandStage.NOT_SENT)
            raise UnconnectedError()
        if writer.is_closing():
            raise GenesisConnectionError()
        wire = f"{cmd}\n\n".encode()

        async def transmit(evidence: Any) -> None:
            evidence.wrote = True  # may be on the wire from here on (as genesis counts it)
            self._queue_write(writer, wire)
            await writer.drain()

        try:
            result = await self.exchange.exchange(transmit)
        except ConnectionLost as exc:
            if self.lost.is_set():
                raise  # marked lost (mark_lost failed the waiters): the supervisor stops it
            if exc.stage is CommandStage.UNCONFIRMED and not self._stopped:
                if not self._lost:
                    self.note_peer_loss("write_error")
                await self.stop()
            raise
        if self.exchange.take_write_failure() is not None and not self._stopped:
            if not self._lost:
                self.note_peer_loss("write_error")
            with contextlib.suppress(Exception):
                await self.stop()
        return result

    def _queue_write(self, writer: asyncio.StreamWriter, wire: bytes) -> None:
        """Commands written in one loop turn leave in one send (one syscall, not one each), in
        the order the exchange took them (its lock orders both the slots and this queue)."""
        self._outgoing.append(wire)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush_writes, writer)

    def _flush_writes(self, writer: asyncio.StreamWriter) -> None:
        self._flush_handle = None
        data, self._outgoing = b"".join(self._outgoing), []
        if not data:
            return
        try:
            writer.write(data)
        except (OSError, RuntimeError) as exc:
            self.mark_lost(f"write failed ({type(exc).__name__})")

    async def stop(self) -> None:
        handle, self._flush_handle = self._flush_handle, None
        if handle is not None and self.writer is not None:
            handle.cancel()
            with contextlib.suppress(Exception):
                self._flush_writes(self.writer)  # what was queued goes before the close
        await super().stop()

    def mark_lost(self, reason: str) -> None:
        if self.lost_reason is None:
            self.lost_reason = reason
        self.lost.set()
        # every command waiting for a reply fails now (ConnectionLost), none is taken after
        self.exchange.fail_pending()

    def watch_reader(self) -> None:
        """Mark the connection lost when genesis's reader task ends, for whatever reason."""
        producer = self.producer
        if producer is None:
            self.mark_lost("no reader")
            return

        def _done(task: asyncio.Task[Any]) -> None:
            reason = "reader ended"
            if not task.cancelled() and task.exception() is not None:
                reason = f"reader died: {type(task.exception()).__name__}"
            self.mark_lost(reason)

        producer.add_done_callback(_done)


# ---------------------------------------------------------------------------------- session
_CLOSED = object()


class EslSession:
    """One ESL session that survives reconnects. See CONTRACTS.md "ESL session"."""

    def __init__(
        self,
        settings: EslSettings,
        *,
        on_reconnect: Callable[[], Awaitable[None]] | None = None,
        on_state: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        register_secret(settings.password)
        self._on_reconnect = on_reconnect
        self._on_state = on_state
        self._conn: _Connection | None = None
        self._events: asyncio.Queue[object] = asyncio.Queue()
        self._events_taken = False
        self._jobs: dict[str, asyncio.Future[str]] = {}
        self._event_names: dict[str, None] = dict.fromkeys(PERMANENT_EVENTS)
        self._subclasses: dict[str, None] = {}
        self._filters: dict[tuple[str, str], int] = {}
        self._sub_lock = asyncio.Lock()
        self._supervisor: asyncio.Task[None] | None = None
        self._resync: asyncio.Task[None] | None = None
        self._closed = False
        self.connected = False
        self._up = asyncio.Event()  # set while connected: wait_connected()
        self.connected_since: float | None = None
        self.reconnects = 0
        self.last_disconnect_reason: str | None = None

    def __repr__(self) -> str:
        return f"EslSession({self.host_port}, connected={self.connected})"

    @property
    def host_port(self) -> str:
        return self.settings.host_port

    # ----------------------------------------------------------------------- lifecycle
    async def connect(self) -> None:
        """First connect: raises EslConnectError/EslAuthError/EslRejectedError/EslTimeoutError."""
        if self._closed:
            raise EslConnectionLost(f"ESL {self.host_port}: session is closed")
        if self._conn is not None or self._supervisor is not None:
            raise RuntimeError("connect() called twice")
        conn = await self._open(reconnect=False)
        self._supervisor = asyncio.create_task(self._supervise(conn), name="esl-supervisor")

    async def close(self) -> None:
        """Stop everything: no reconnect afterwards, waiters failed, events() ends."""
        if self._closed:
            return
        self._closed = True
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None and supervisor is not asyncio.current_task():
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await supervisor
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._stop_conn(conn)
        self._set_disconnected("closed")
        self._fail_jobs(EslConnectionLost(f"ESL {self.host_port}: session closed"))
        self._events.put_nowait(_CLOSED)
        self._state("closed")

    async def wait_connected(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the session to be connected; whether it is."""
        if self.connected:
            return True
        if self._closed or timeout <= 0:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up.wait(), timeout)
        return self.connected

    async def __aenter__(self) -> EslSession:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------------ commands
    async def api(self, command: str) -> str:
        """``api <command>``; returns the api/response body (may be ``-ERR ...``)."""
        _check_line("command", command)
        reply = await self._send(f"api {command}")
        if _first(reply.get("Content-Type", "")) == "command/reply":
            # not an api/response at all (e.g. "-ERR command not found" before auth)
            text = _first(reply.get("Reply-Text", ""))
            raise EslCommandError(f"ESL {self.host_port}: api refused: {text}")
        return reply.body or ""

    async def bgapi(
        self, command: str, job_uuid: str | None = None, timeout: float | None = None
    ) -> str:
        """``bgapi`` with our Job-UUID; waits for the matching BACKGROUND_JOB, returns its body."""
        job = job_uuid or str(uuid.uuid4())
        self._check_job(command, job)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[str] = loop.create_future()
        self._jobs[job] = waiter  # registered BEFORE the command is written
        try:
            await self._bgapi_send(command, job)
            wait_for = self.settings.job_timeout if timeout is None else timeout
            try:
                return await asyncio.wait_for(asyncio.shield(waiter), wait_for)
            except TimeoutError:
                raise EslTimeoutError(
                    f"ESL {self.host_port}: no BACKGROUND_JOB for {job} within {wait_for:g} s"
                ) from None
        finally:
            if self._jobs.get(job) is waiter:
                del self._jobs[job]
            if not waiter.done():
                waiter.cancel()

    async def bgapi_start(self, command: str, job_uuid: str) -> None:
        """``bgapi`` with our Job-UUID; returns once ``+OK Job-UUID`` came back.

        The BACKGROUND_JOB arrives later through ``events()``.
        """
        self._check_job(command, job_uuid)
        await self._bgapi_send(command, job_uuid)

    async def sendevent(self, event_name: str, headers: Sequence[tuple[str, str]]) -> str:
        """``sendevent <name>`` with ``headers`` (e.g. an ``Event-Subclass`` for CUSTOM); returns
        the Event-UUID FreeSWITCH answered (``+OK <uuid>``).

        FreeSWITCH takes each header line as it stands (no URL decoding), so every name and
        value is checked first (`check_sendevent_header`): a line break, a control character, a
        ``Content-Length`` (it would announce a body) or a ``Unique-ID`` (it would hand the event
        to that call instead of firing it) raises ValueError and nothing is written."""
        if not isinstance(event_name, str) or not re.fullmatch(r"[A-Za-z_]{1,64}", event_name):
            raise ValueError(f"sendevent event name {event_name!r}: 1-64 of A-Z a-z _")
        lines = [f"sendevent {event_name}"]
        for name, value in headers:
            check_sendevent_header(name, value)
            lines.append(f"{name}: {value}")
        reply = await self._send("\n".join(lines))
        text = _first(reply.get("Reply-Text", ""))
        if not text.startswith("+OK"):
            raise EslCommandError(f"ESL {self.host_port}: sendevent refused: {text}")
        return text[3:].strip()

    async def subscribe(self, events: Sequence[str]) -> None:
        """``event <format> ...`` (CUSTOM subclasses last); additive and remembered.

        Names with ``::`` are CUSTOM subclasses (a ``CUSTOM`` token is optional and ignored).
        HEARTBEAT and BACKGROUND_JOB are always included. Raises EslCommandError on ``-ERR``;
        while reconnecting it is only remembered (sent with the new connection).
        """
        if isinstance(events, str):
            raise TypeError("subscribe() takes a sequence of names, not one string")
        names: list[str] = []
        subclasses: list[str] = []
        for token in events:
            _check_token("event name", token)
            if token == "CUSTOM":
                continue  # a marker only: FreeSWITCH delivers CUSTOM events by subclass
            (subclasses if "::" in token else names).append(token)
        async with self._sub_lock:
            self._event_names.update(dict.fromkeys(names))
            self._subclasses.update(dict.fromkeys(subclasses))
            conn = self._live_or_pending()
            if conn is not None:
                await self._command(conn, self._subscription_command())

    async def add_filter(self, header: str, value: str) -> None:
        """``filter <header> <value>``; remembered (reference-counted) and re-added on reconnect."""
        _check_token("filter header", header)
        _check_token("filter value", value)
        key = (header, value)
        if key in PERMANENT_FILTERS:
            return
        async with self._sub_lock:
            count = self._filters.get(key, 0)
            self._filters[key] = count + 1
            if count:
                return
            conn = self._live_or_pending()
            if conn is None:
                return  # applied when the connection is back
            try:
                await self._command(conn, f"filter {header} {value}")
            except EslCommandError:
                self._filters.pop(key, None)
                raise

    async def del_filter(self, header: str, value: str) -> None:
        """``filter delete <header> <value>`` once the last add of that filter is undone."""
        _check_token("filter header", header)
        _check_token("filter value", value)
        key = (header, value)
        if key in PERMANENT_FILTERS:
            return
        async with self._sub_lock:
            count = self._filters.get(key, 0)
            if count == 0:
                return
            if count > 1:
                self._filters[key] = count - 1
                return
            del self._filters[key]
            conn = self._live_or_pending()
            if conn is not None:
                await self._command(conn, f"filter delete {header} {value}")

    @property
    def filters(self) -> list[tuple[str, str]]:
        """Filters in force (permanent ones first)."""
        return [*PERMANENT_FILTERS, *self._filters]

    @property
    def subscribed(self) -> list[str]:
        return [*self._event_names, *self._subclasses]

    def events(self) -> AsyncIterator[EslEvent]:
        """The single consumer's iterator: every event in wire order, across reconnects."""
        if self._events_taken:
            raise RuntimeError("events() has exactly one consumer")
        self._events_taken = True
        return self._iterate_events()

    async def _iterate_events(self) -> AsyncIterator[EslEvent]:
        while True:
            item = await self._events.get()
            if item is _CLOSED:
                return
            assert isinstance(item, EslEvent)
            yield item

    # ------------------------------------------------------------------------ internals
    def _state(self, state: str) -> None:
        if self._on_state is not None:
            try:
                self._on_state(state)
            except Exception:
                log.exception("esl.on_state_failed", state=state)

    def _set_disconnected(self, reason: str) -> None:
        was = self.connected
        self.connected = False
        self._up.clear()
        self.connected_since = None
        if was:
            self.last_disconnect_reason = reason

    def _live_or_pending(self) -> _Connection | None:
        """The live connection; None while (re)connecting or before connect(); raises if closed."""
        if self._closed:
            raise EslNotConnected(f"ESL {self.host_port}: session is closed")
        return self._conn

    def _require_conn(self) -> _Connection:
        conn = self._live_or_pending()
        if conn is None or conn.lost.is_set():
            state = "reconnecting" if self._supervisor is not None else "connect() not done"
            raise EslNotConnected(f"ESL {self.host_port}: not connected ({state})")
        return conn

    def _check_job(self, command: str, job_uuid: str) -> None:
        _check_line("command", command)
        _check_token("job_uuid", job_uuid)
        if len(job_uuid) > MAX_JOB_UUID_LENGTH:
            raise ValueError(f"job_uuid longer than {MAX_JOB_UUID_LENGTH} characters")
        if job_uuid in self._jobs:
            raise ValueError(f"job_uuid {job_uuid} is already waited for")

    async def _bgapi_send(self, command: str, job_uuid: str) -> None:
        reply = await self._send(f"bgapi {command}\nJob-UUID: {job_uuid}")
        text = _first(reply.get("Reply-Text", ""))
        if not text.startswith("+OK"):
            raise EslCommandError(f"ESL {self.host_port}: bgapi refused: {text}")
        echoed = _first(reply.get("Job-UUID", job_uuid))
        if echoed != job_uuid:
            raise EslCommandError(
                f"ESL {self.host_port}: bgapi answered Job-UUID {echoed}, expected {job_uuid}"
            )

    async def _send(self, wire: str) -> ESLEvent:
        try:
            conn = self._require_conn()
        except EslNotConnected:
            await asyncio.sleep(0)  # see _exchange: a failure never returns without a loop turn
            raise
        return await self._exchange(conn, wire)

    async def _command(self, conn: _Connection, wire: str) -> ESLEvent:
        """A non-api command: ``-ERR`` in Reply-Text raises EslCommandError."""
        reply = await self._exchange(conn, wire)
        text = _first(reply.get("Reply-Text", ""))
        if text.startswith("-ERR"):
            verb = wire.split(" ", 1)[0]
            raise EslCommandError(f"ESL {self.host_port}: {verb} failed: {text}")
        return reply

    async def _exchange(self, conn: _Connection, wire: str) -> ESLEvent:
        """Write one command on ``conn``; its reply, or a typed error. Always bounded in time.

        No task per command: the send runs in the caller's task under a timeout, and a lost
        connection fails it at once (``mark_lost`` fails the exchange's waiters). A failure
        always costs the caller a loop turn: a caller that retries at once (a machine asking
        again on a lost reply) must not spin before the supervisor has seen the loss."""
        try:
            return await self._exchange_once(conn, wire)
        except EslError:
            await asyncio.sleep(0)
            raise

    async def _exchange_once(self, conn: _Connection, wire: str) -> ESLEvent:
        where = self.host_port
        timeout = self.settings.command_timeout
        try:
            async with asyncio.timeout(timeout):
                return await conn.send(wire)
        except TimeoutError:
            verb = wire.split(" ", 1)[0]
            if conn.lost.is_set():
                raise EslConnectionLost(
                    f"ESL {where}: connection lost during {verb} ({conn.lost_reason})"
                ) from None
            # Its reply may still come, and genesis matches replies to commands by order only:
            # every later reply would go to the wrong command, for good. Drop the connection
            # instead (the session reconnects, and the engine asks the switch what it missed).
            conn.mark_lost(f"no reply to {verb} within {timeout:g} s")
            raise EslTimeoutError(f"ESL {where}: no reply to {verb} within {timeout:g} s") from None
        except (GenesisError, OSError, RuntimeError) as exc:
            verb = wire.split(" ", 1)[0]
            why = conn.lost_reason if conn.lost.is_set() else type(exc).__name__
            raise EslConnectionLost(
                f"ESL {where}: connection lost during {verb} ({why})"
            ) from None

    def _subscription_command(self) -> str:
        words = [*self._event_names]
        if self._subclasses:
            words.append("CUSTOM")
            words.extend(self._subclasses)
        return f"event {self.settings.event_format} {' '.join(words)}"

    async def _open(self, *, reconnect: bool) -> _Connection:
        """A new connection: TCP, auth, subscription, permanent and remembered filters."""
        conn = _Connection(self.settings, self._deliver)
        try:
            await conn.start()
        except EslError:
            await self._stop_conn(conn)
            raise
        except GenesisError as exc:
            await self._stop_conn(conn)
            raise EslConnectionLost(
                f"ESL {self.host_port}: connection failed ({type(exc).__name__})"
            ) from None
        except BaseException:
            await self._stop_conn(conn)
            raise
        try:
            async with self._sub_lock:
                await self._command(conn, self._subscription_command())
                for header, value in [*PERMANENT_FILTERS, *self._filters]:
                    await self._command(conn, f"filter {header} {value}")
                conn.last_rx = time.monotonic()
                self._conn = conn
        except BaseException:
            await self._stop_conn(conn)
            raise
        self.connected = True
        self._up.set()
        self.connected_since = time.time()
        if reconnect:
            self.reconnects += 1
        log.info("esl.connected", where=self.host_port, reconnects=self.reconnects)
        self._state("connected")
        return conn

    async def _stop_conn(self, conn: _Connection) -> None:
        conn.mark_lost(conn.lost_reason or "stopped")
        if conn.producer is None and conn.writer is not None:
            conn.writer.close()  # never started: genesis stop() would not run
        with contextlib.suppress(Exception):
            await conn.stop()

    def _deliver(self, conn: _Connection, event: EslEvent) -> None:
        if conn is not self._conn and self._conn is not None:
            return  # a late frame of an old connection
        if event.name == "BACKGROUND_JOB" and event.job_uuid:
            waiter = self._jobs.pop(event.job_uuid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(event.body or "")
        if not self._closed:
            self._events.put_nowait(event)

    def _fail_jobs(self, error: EslError) -> None:
        jobs, self._jobs = self._jobs, {}
        for waiter in jobs.values():
            if not waiter.done():
                waiter.set_exception(error)
                waiter.exception()  # mark retrieved: a cancelled caller must not warn

    async def _watch(self, conn: _Connection) -> str:
        """Return why ``conn`` is no longer usable."""
        limit = 2 * self.settings.heartbeat_interval
        tick = min(1.0, max(0.05, self.settings.heartbeat_interval / 4))
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(conn.lost.wait(), tick)
            if conn.lost.is_set():
                return conn.lost_reason or "lost"
            silent = time.monotonic() - conn.last_rx
            if silent > limit:
                conn.mark_lost(f"no traffic for {silent:.1f} s (heartbeat lost)")
                return conn.lost_reason or "heartbeat lost"

    async def _supervise(self, conn: _Connection) -> None:
        """Watch the live connection; on loss fail waiters, reconnect with backoff, resync."""
        try:
            while not self._closed:
                reason = await self._watch(conn)
                if self._closed:
                    return
                log.warning("esl.connection_lost", where=self.host_port, reason=reason)
                self._conn = None
                self._set_disconnected(reason)
                self._state("disconnected")
                self._fail_jobs(EslConnectionLost(f"ESL {self.host_port}: connection lost"))
                await self._stop_conn(conn)
                conn = await self._reconnect()
                if self._on_reconnect is not None:
                    # its own task: a slow resync must not stop us watching the new connection
                    previous = self._resync
                    if previous is not None and not previous.done():
                        previous.cancel()  # superseded by this newer resync
                    self._resync = asyncio.create_task(self._call_on_reconnect(), name="esl-resync")
        except Exception:
            # a bug, not a network fault: say so loudly; the session is down for good
            log.exception("esl.supervisor_failed", where=self.host_port)
            self._conn = None
            self._set_disconnected("supervisor failed")
            self._fail_jobs(EslConnectionLost(f"ESL {self.host_port}: session failed"))
            self._state("disconnected")
        finally:
            resync, self._resync = self._resync, None
            if resync is not None and not resync.done() and self._closed:
                resync.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await resync

    async def _call_on_reconnect(self) -> None:
        assert self._on_reconnect is not None
        try:
            await self._on_reconnect()
        except Exception:
            log.exception("esl.on_reconnect_failed", where=self.host_port)

    async def _reconnect(self) -> _Connection:
        delay = self.settings.reconnect_initial
        attempt = 0
        while True:
            attempt += 1
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            try:
                return await self._open(reconnect=True)
            except EslError as exc:
                log.warning(
                    "esl_reconnect_failed",
                    where=self.host_port,
                    attempt=attempt,
                    error=str(exc),
                    error_type=type(exc).__name__,
                )
            delay = min(self.settings.reconnect_max, delay * 2)
