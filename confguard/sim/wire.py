"""ESL wire format of the simulator: server frames out, client commands in, transcripts loaded.

This module owns bytes only; it knows nothing about sockets, channels or subscriptions.

* Encoding every message FreeSWITCH's mod_event_socket sends, with the header order of each type
  exactly as recorded: `auth/request` (two lines), `command/reply` (no body, optional extra
  headers after `Reply-Text`), `api/response` and `text/disconnect-notice` (Content-Type first),
  events (Content-Length first) in the plain, json and xml formats, `text/rude-rejection`.
* URL-encoding of plain/xml event values as FreeSWITCH's `switch_url_encode` does: the bytes
  `\\r \\n space # % & + : ; < = > ? @ [ \\ ] ^ ` { | } "`, control bytes and non-ASCII bytes become
  `%XX`; a `%` already followed by two upper-case hex digits is kept as it is (no double encoding).
* An incremental parser of client commands (command line, `Name: value` lines, blank line,
  optional `Content-Length` body; `\\r\\n` tolerated) and of server frames (for tests and tools).
* `load_transcript()`: the recorded `.txt` / `.jsonl` transcripts as `Record`s.

Strings that must carry bytes which are not UTF-8 (the invalid-UTF-8 fault) use Python's
`surrogateescape` convention: every encoder here writes them back as the original bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

EventFormat = Literal["plain", "json", "xml"]
EVENT_FORMATS: tuple[EventFormat, ...] = ("plain", "json", "xml")

MAX_BODY_BYTES = 16 * 1024 * 1024  # FreeSWITCH drops a client announcing a bigger body
MAX_HEADER_BYTES = 64 * 1024  # a command block without a blank line this long is garbage

GOODBYE_TEXT = "Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
SHUTDOWN_TEXT = "The system is being shut down.\n"
RUDE_REJECTION_TEXT = "Access Denied, go away.\n"

_URL_UNSAFE = frozenset(b'\r\n #%&+:;<=>?@[\\]^`{|}"')
_UPPER_HEX = frozenset(b"0123456789ABCDEF")
_HEX_DIGITS = "0123456789ABCDEF"
ARRAY_PREFIX = "ARRAY::"  # how a multi-valued header reads in plain form
ARRAY_SEPARATOR = "|:"


class WireError(Exception):
    """The peer sent bytes that do not form a valid ESL message (its fault, not ours)."""


def to_bytes(text: str) -> bytes:
    """UTF-8 bytes of `text`; lone surrogates from `surrogateescape` become their raw bytes."""
    return text.encode("utf-8", "surrogateescape")


# --------------------------------------------------------------------------- URL encoding


def url_encode(value: str) -> str:
    """Encode one header value the way FreeSWITCH serialises plain and xml events."""
    if value.isascii():
        if "%" not in value:
            return value.translate(_URL_TABLE)  # one C pass for the usual value
        return _ASCII_UNSAFE_RE.sub(_percent_escape, value)
    return url_encode_bytes(value)


def url_encode_bytes(value: str) -> str:
    """`url_encode` byte by byte (the reference the ASCII fast paths are tested against)."""
    raw = to_bytes(value)
    out: list[str] = []
    last = len(raw) - 1
    for index, byte in enumerate(raw):
        if (
            byte == 0x25  # '%'
            and last - index > 1
            and raw[index + 1] in _UPPER_HEX
            and raw[index + 2] in _UPPER_HEX
        ):
            out.append("%")  # already encoded: FreeSWITCH does not encode it again
        elif byte < 0x20 or byte > 0x7E or byte in _URL_UNSAFE:
            out.append("%" + _HEX_DIGITS[byte >> 4] + _HEX_DIGITS[byte & 0x0F])
        else:
            out.append(chr(byte))
    return "".join(out)


_URL_TABLE = {
    code: f"%{code:02X}"
    for code in range(0x80)
    if code < 0x20 or code > 0x7E or code in _URL_UNSAFE
}
# In ASCII text: a `%` not already followed by two upper-case hex digits, or any unsafe byte.
_ASCII_UNSAFE_RE = re.compile(
    "%(?![0-9A-F]{2})|["
    + "".join(re.escape(chr(code)) for code in _URL_TABLE if code != 0x25)
    + "]"
)


def _percent_escape(match: re.Match[str]) -> str:
    return f"%{ord(match.group()):02X}"


# --------------------------------------------------------------------------- server frames


def encode_auth_request() -> bytes:
    """The greeting: `Content-Type: auth/request` and a blank line."""
    return b"Content-Type: auth/request\n\n"


def encode_command_reply(reply_text: str, extra_headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """A `command/reply`: Content-Type, Reply-Text, any extra headers (bgapi's Job-UUID), blank."""
    text = "Content-Type: command/reply\nReply-Text: " + reply_text
    for name, value in extra_headers:
        text += f"\n{name}: {value}"
    return to_bytes(text + "\n\n")


def _content_first(content_type: str, body: bytes) -> bytes:
    head = f"Content-Type: {content_type}\nContent-Length: {len(body)}\n\n"
    return head.encode("ascii") + body


def encode_api_response(body: str) -> bytes:
    """An `api/response`: Content-Type then Content-Length, blank line, the body."""
    return _content_first("api/response", to_bytes(body))


def encode_disconnect_notice(text: str = GOODBYE_TEXT) -> bytes:
    """A `text/disconnect-notice` (Content-Type first), sent before the server closes."""
    return _content_first("text/disconnect-notice", to_bytes(text))


def encode_rude_rejection(text: str = RUDE_REJECTION_TEXT) -> bytes:
    """The ACL refusal FreeSWITCH sends instead of `auth/request` before closing."""
    return _content_first("text/rude-rejection", to_bytes(text))


def encode_event(
    headers: Sequence[tuple[str, str]], body: str | None, event_format: EventFormat
) -> bytes:
    """One whole event frame: `Content-Length`, `Content-Type: text/event-<format>`, payload."""
    if event_format == "plain":
        payload = serialize_plain(headers, body)
    elif event_format == "json":
        payload = serialize_json(headers, body)
    elif event_format == "xml":
        payload = serialize_xml(headers, body)
    else:  # pragma: no cover - guarded by the type
        raise ValueError(f"unknown event format {event_format!r}")
    return _event_frame(payload, event_format)


def _event_frame(payload: bytes, event_format: EventFormat) -> bytes:
    head = f"Content-Length: {len(payload)}\nContent-Type: text/event-{event_format}\n\n"
    return head.encode("ascii") + payload


def encode_json_event(json_object: bytes, body: str | None) -> bytes:
    """A `text/event-json` frame from an event's headers already encoded as a json object
    without its closing brace (`{"name":"value",...`, what `serialize_json` writes for them):
    the body's Content-Length and `_body`, if any, and the brace are added as it adds them."""
    if body is None:
        return b"Content-Length: %d\nContent-Type: text/event-json\n\n%s}" % (
            len(json_object) + 1, json_object
        )
    return _event_frame(json_object + _json_body_tail(body), "json")


def json_headers(json_object: bytes) -> list[tuple[str, str]]:
    """The header pairs of an event's json object as `serialize_json` writes them (closing brace
    or not; repeated names kept in order; an array back to its `ARRAY::a|:b` form): the inverse
    of the encoding, for reading the headers of an event kept as its json only."""
    text = json_object.decode("utf-8", "surrogateescape")
    if not text.endswith("}"):
        text += "}"
    pairs: list[tuple[str, str | list[str]]] = json.loads(text, object_pairs_hook=list)
    return [
        (name, value if isinstance(value, str) else ARRAY_PREFIX + ARRAY_SEPARATOR.join(value))
        for name, value in pairs
    ]


def serialize_plain(headers: Sequence[tuple[str, str]], body: str | None) -> bytes:
    """`Name: url-encoded value` lines; a body follows its own Content-Length and a blank line."""
    names, values = _unzip(headers)
    parts = list(map(_PLAIN_LINE.format, names, map(url_encode, values)))
    body_bytes = to_bytes(body) if body else b""
    if body_bytes:
        parts.append(f"Content-Length: {len(body_bytes)}\n\n")
        return to_bytes("".join(parts)) + body_bytes
    parts.append("\n")
    return to_bytes("".join(parts))


def serialize_json(headers: Sequence[tuple[str, str]], body: str | None) -> bytes:
    """One flat compact object of strings in header order (repeats kept); body under `_body`.

    Nearly every event's names and values need no escaping (no `"`, `\\` or control
    character) and hold no array: then the object is the names and values joined between
    their quotes, a few C calls for the whole event, repeated names or not. Whether that holds
    is read off the joined bytes themselves (every byte JSON writes as it is deleted, only the
    4 quotes a header brings may remain); otherwise the escaping encoders below."""
    if headers:
        data = to_bytes('{"' + '","'.join(map('":"'.join, headers)) + '"')
        if (
            data.translate(None, _JSON_AS_IS) == b'"' * (4 * len(headers))
            and _ARRAY_PREFIX_BYTES not in data
        ):
            return data + _json_body_tail(body)
        text = _json_values_escaped(headers)
        if text is not None:
            return to_bytes(text) + _json_body_tail(body)
    return serialize_json_escaped(headers, body)


def _json_body_tail(body: str | None) -> bytes:
    """The end of an event's json object: `}`, or the body's Content-Length and `_body`."""
    if body is None:
        return b"}"
    body_bytes = to_bytes(body)
    return to_bytes(f',"Content-Length":"{len(body_bytes)}","_body":{_json_string(body)}}}')


def _json_values_escaped(headers: Sequence[tuple[str, str]]) -> str | None:
    """`{"name":"value",...` (no closing brace) when some values need escaping but no name
    does and no value could be an array: each value escaped by the C encoder, names and values
    zipped and joined in C. None otherwise (the escaping encoders do it)."""
    names, values = zip(*headers, strict=True)
    if to_bytes("".join(names)).translate(None, _JSON_AS_IS) or ARRAY_PREFIX in "".join(values):
        return None
    return '{"' + ',"'.join(map('":'.join, zip(names, map(_json_string, values), strict=True)))


# Bytes a JSON string holds as they are (ensure_ascii=False): all but `"`, `\` and controls.
_JSON_AS_IS = bytes(code for code in range(0x20, 0x100) if code not in b'"\\')
_ARRAY_PREFIX_BYTES = ARRAY_PREFIX.encode()
# Every byte to itself but those JSON escapes in a string (`"`, `\\`, controls), to NUL: the
# UTF-8 bytes of values translated by it hold a NUL exactly where a value needs escaping.
JSON_ESCAPES_TO_NUL = bytes(code if code in _JSON_AS_IS else 0 for code in range(0x100))


def serialize_json_escaped(headers: Sequence[tuple[str, str]], body: str | None) -> bytes:
    """`serialize_json` through the escaping encoders: one dict in one C call when no name
    repeats, else pair by pair (also the reference the fast path is tested against)."""
    pairs = list(headers)
    if body is not None:
        pairs.append(("Content-Length", str(len(to_bytes(body)))))
        pairs.append(("_body", body))
    flat: dict[str, object] = dict(pairs)
    if len(flat) != len(pairs):
        return serialize_json_pairs(pairs)
    # No repeated name (nearly every event): the object is the dict, encoded in one C call with
    # the same string escaping; array headers become lists.
    if ARRAY_PREFIX in "".join(value for _, value in pairs):  # anywhere: a superset, then exactly
        for name, value in pairs:
            if value.startswith(ARRAY_PREFIX):
                flat[name] = value[len(ARRAY_PREFIX) :].split(ARRAY_SEPARATOR)
    return to_bytes(_JSON_OBJECT.encode(flat))


def serialize_json_pairs(pairs: Sequence[tuple[str, str]]) -> bytes:
    """`serialize_json` pair by pair: what it does when a name repeats (and its reference)."""
    names, values = _unzip(pairs)
    kept = _JSON_NAMES
    keys = [kept.get(name) or _json_key(name) for name in names]
    encoded = list(map(_json_string, values))
    if any(map(_is_array, values)):
        encoded = [json_value(value) for value in values]
    return to_bytes("{" + ",".join(map(str.__add__, keys, encoded)) + "}")


def _unzip(pairs: Sequence[tuple[str, str]]) -> tuple[Sequence[str], Sequence[str]]:
    """([names], [values]) of the header pairs, in one C pass."""
    if not pairs:
        return (), ()
    names, values = zip(*pairs, strict=True)
    return names, values


_PLAIN_LINE = "{}: {}\n"


def _is_array(value: str) -> bool:
    return value.startswith(ARRAY_PREFIX)


def _json_key(name: str) -> str:
    key = _json_string(name) + ":"
    if len(_JSON_NAMES) < _JSON_NAMES_KEPT:
        _JSON_NAMES[name] = key
    return key


# `json.dumps(text, ensure_ascii=False)` for a str, without building an encoder per call.
_json_string = json.encoder.encode_basestring
json_string = _json_string  # for the event builder's pre-encoded names and constant values
# A whole flat object: `{"name":"value",...}`, the same escaping, one C call.
_JSON_OBJECT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)
_JSON_NAMES: dict[str, str] = {}  # header name -> its encoded `"name":`
_JSON_NAMES_KEPT = 4096  # names come from the switch and the clients' variables: keep a bound


def json_value(value: str) -> str:
    """A string, or for FreeSWITCH's array headers (`ARRAY::a|:b`) a JSON array of strings."""
    if value.startswith(ARRAY_PREFIX):
        items = value[len(ARRAY_PREFIX) :].split(ARRAY_SEPARATOR)
        return "[" + ",".join(_json_string(item) for item in items) + "]"
    return _json_string(value)


def _xml_text(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#xD;")
    )


def serialize_xml(headers: Sequence[tuple[str, str]], body: str | None) -> bytes:
    """`<event><headers>` with url-encoded values, then `Content-Length` and `<body>` if any."""
    out = ["<event>\n  <headers>\n"]
    for name, value in headers:
        out.append(f"    <{name}>{_xml_text(url_encode(value))}</{name}>\n")
    out.append("  </headers>\n")
    if body:
        out.append(f"  <Content-Length>{len(to_bytes(body))}</Content-Length>\n")
        text = _xml_text(body)
        closing_indent = "  " if text.endswith("\n") else ""
        out.append(f"  <body>{text}{closing_indent}</body>\n")
    out.append("</event>\n")
    return to_bytes("".join(out))


# --------------------------------------------------------------------------- client commands


class ClientCommand(NamedTuple):
    """One command block from a client: the command line, its header lines, an optional body.
    (A named tuple: made for every command, and a frozen dataclass costs three times as much.)"""

    line: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None


def _split_header_lines(lines: Iterable[str]) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            continue  # FreeSWITCH ignores a line without a colon
        headers.append((name.strip(), value.lstrip(" ")))
    return headers


_BLOCK_END = re.compile(rb"\r?\n\r?\n")  # a blank line, `\r\n` tolerated
_STRAY = b"\r\n"  # bytes between blocks that carry nothing


class CommandParser:
    """Incremental parser of client commands; feed it bytes, get whole `ClientCommand`s back.

    A segment usually holds whole commands: they are cut out of it where they lie (one `find`
    of the blank line each, no copy of the rest); only an unfinished block or body is kept,
    and the next segment is added to it."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._pending: tuple[str, tuple[tuple[str, str], ...], int] | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a whole command."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[ClientCommand]:
        """Add received bytes; return every command completed by them, in order."""
        buffer = self._buffer
        if buffer:
            buffer += data
            if self._pending is not None and len(buffer) < self._pending[2]:
                return []  # a body still arriving: nothing to look at yet
            data = bytes(buffer)
            buffer.clear()
        commands: list[ClientCommand] = []
        pending = self._pending
        position, end = 0, len(data)
        carriage_returns = b"\r" in data
        while True:
            if pending is None:
                while position < end and data[position] in _STRAY:
                    position += 1  # stray blank lines between blocks
                if carriage_returns:
                    match = _BLOCK_END.search(data, position)
                    if match is None:
                        break
                    block_end, body_start = match.start(), match.end()
                else:
                    block_end = data.find(b"\n\n", position)
                    if block_end < 0:
                        break
                    body_start = block_end + 2
                text = data[position:block_end].decode("utf-8", "surrogateescape")
                position = body_start
                command = _command_block(text.replace("\r\n", "\n") if carriage_returns else text)
                if isinstance(command, ClientCommand):
                    commands.append(command)
                    continue
                pending = command
            line, headers, length = pending
            if end - position < length:
                break
            commands.append(ClientCommand(line, headers, data[position : position + length]))
            position += length
            pending = None
        self._pending = pending
        if position < end:
            if pending is None and end - position > MAX_HEADER_BYTES:
                raise WireError("command block without an end")
            buffer += memoryview(data)[position:]
        return commands


def _command_block(
    text: str,
) -> ClientCommand | tuple[str, tuple[tuple[str, str], ...], int]:
    """A command block's command (no body), or its line, headers and the body length to read."""
    line, newline, rest = text.partition("\n")
    line = line.rstrip("\r")
    if not newline:
        return ClientCommand(line)
    headers = tuple(_split_header_lines(x.rstrip("\r") for x in rest.split("\n")))
    length_text = None
    for name, value in headers:
        if name.lower() == "content-length":
            length_text = value
            break
    if length_text is None:
        return ClientCommand(line, headers)
    try:
        length = int(length_text.strip())
    except ValueError as exc:
        raise WireError(f"Content-Length is not a number: {length_text!r}") from exc
    if length < 0 or length > MAX_BODY_BYTES:
        raise WireError(f"Content-Length out of range: {length}")
    return line, headers, length


def encode_command(
    line: str, headers: Sequence[tuple[str, str]] = (), body: bytes | None = None
) -> bytes:
    """A client command block (what a client sends); used by tests and tools."""
    lines = [line, *(f"{name}: {value}" for name, value in headers)]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return to_bytes("\n".join(lines) + "\n\n") + (body or b"")


# --------------------------------------------------------------------------- server frames in


@dataclass(frozen=True)
class ServerFrame:
    """One message as a client receives it: the outer headers (ordered) and the body bytes."""

    headers: tuple[tuple[str, str], ...]
    body: bytes
    raw: bytes = field(repr=False, default=b"")

    @property
    def content_type(self) -> str:
        """The `Content-Type` header, or "" when absent."""
        for name, value in self.headers:
            if name.lower() == "content-type":
                return value
        return ""

    def header(self, name: str) -> str | None:
        """The first value of an outer header (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None


class FrameParser:
    """Incremental parser of server-to-client frames (headers, blank line, Content-Length body)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[ServerFrame]:
        """Add received bytes; return every whole frame now available, in order."""
        self._buffer += data
        frames: list[ServerFrame] = []
        while True:
            index = self._buffer.find(b"\n\n")
            if index < 0:
                return frames
            head = bytes(self._buffer[:index]).decode("utf-8", "surrogateescape")
            headers = tuple(_split_header_lines(head.split("\n")))
            length_text = next(
                (value for name, value in headers if name.lower() == "content-length"), None
            )
            length = 0
            if length_text is not None:
                try:
                    length = int(length_text)
                except ValueError as exc:
                    raise WireError(f"Content-Length is not a number: {length_text!r}") from exc
            end = index + 2 + length
            if len(self._buffer) < end:
                return frames
            raw = bytes(self._buffer[:end])
            del self._buffer[:end]
            frames.append(ServerFrame(headers, raw[index + 2 :], raw))


def parse_plain_event(payload: bytes) -> tuple[list[tuple[str, str]], bytes | None]:
    """Split a plain event payload into its (still url-encoded) headers and its body, if any."""
    index = payload.find(b"\n\n")
    head = payload if index < 0 else payload[:index]
    rest = b"" if index < 0 else payload[index + 2 :]
    headers = _split_header_lines(head.decode("utf-8", "surrogateescape").split("\n"))
    if headers and headers[-1][0] == "Content-Length":
        return headers[:-1], rest
    return headers, None


# --------------------------------------------------------------------------- transcripts


@dataclass(frozen=True)
class Record:
    """One transcript record: `dir` is "C->S", "S->C" or "NOTE"; `conn` the connection name."""

    seq: int
    rel: float
    dir: str
    conn: str
    ctype: str
    data: bytes


_DIR_RE = re.compile(r"^(C->S|S->C|NOTE)(?:\[([^\]]*)\])?$")
_TXT_HEADER_RE = re.compile(
    rb"^#### (\d+) \+([0-9.]+)s (\S+) (\S+) \((\d+) bytes\) \[([^\]]*)\]\n", re.MULTILINE
)
_NOTE_CONN_RE = re.compile(rb"^\[([^\]]+)\] ")


def _split_dir(raw_dir: str, data: bytes) -> tuple[str, str]:
    match = _DIR_RE.match(raw_dir)
    if match is None:
        raise ValueError(f"unknown record direction {raw_dir!r}")
    direction, conn = match.group(1), match.group(2) or ""
    if direction == "NOTE":
        note = _NOTE_CONN_RE.match(data)
        conn = note.group(1).decode() if note else ""
        if conn == "conn":  # the single-connection transcripts call their one connection "conn"
            conn = ""
    return direction, conn


def load_transcript(path: str | Path) -> list[Record]:
    """Read a recorded transcript (`.jsonl` or `.txt`) into records, in file order."""
    source = Path(path)
    records: list[Record] = []
    if source.suffix == ".jsonl":
        for line in source.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            data = to_bytes(item["data"])
            direction, conn = _split_dir(item["dir"], data)
            records.append(
                Record(int(item["seq"]), float(item["rel"]), direction, conn, item["ctype"], data)
            )
        return records
    raw = source.read_bytes()
    position = 0
    while True:
        match = _TXT_HEADER_RE.search(raw, position)
        if match is None:
            return records
        length = int(match.group(5))
        start = match.end()
        data = raw[start : start + length]
        if len(data) != length or raw[start + length : start + length + 1] != b"\n":
            raise ValueError(f"{source}: record {match.group(1).decode()} is truncated")
        direction, conn = _split_dir(match.group(4).decode(), data)
        records.append(
            Record(
                int(match.group(1)),
                float(match.group(2)),
                direction,
                conn,
                match.group(6).decode(),
                data,
            )
        )
        position = start + length + 1
