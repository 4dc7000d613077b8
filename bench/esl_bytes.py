"""The load driver's ESL byte handling: frames split and event fields found without parsing.

`bench/sim_load.py` must cost far less CPU per invite than the simulator it loads (it places
1,000 invites/s on a 2-core machine), so it never builds a header dict or decodes an event:

* `split_frames(data)` cuts the whole frames out of the received bytes: the head up to the blank
  line, then `Content-Length` bytes of body when the head announces one (found with
  `bytes.find`, only inside the head). What is left is the start of the next frame. An event's
  head as the switch writes it (`Content-Length: N`, then `Content-Type: text/event-json` and
  the blank line) is read in place, without searching.
* `json_value(body, key)` finds one field of a json event (`text/event-json`, a flat object of
  strings) by searching for its `"Name":"` key and reading up to the next quote. In such an
  object that key can only match a real name: a quote inside a value is always written `\\"`,
  so `Name"` followed by `:"` cannot occur inside one. Fit for the fields the driver routes on
  (Event-Name, Unique-ID, Job-UUID, Action, Hangup-Cause), whose values hold no quote or
  backslash; not a general JSON reader.
"""

from __future__ import annotations

_BLANK = b"\n\n"
_CONTENT_LENGTH = b"Content-Length: "
_CONTENT_TYPE = b"Content-Type: "
_EVENT_JSON = b"text/event-json"
_EVENT_JSON_TYPE = _CONTENT_TYPE + _EVENT_JSON + _BLANK  # the line after an event's length

# One frame: its Content-Type, its head (the header lines, without the blank line), its body.
Frame = tuple[bytes, bytes, bytes]


def json_key(name: str) -> bytes:
    """The search key of field `name` for `json_value`: `"name":"`."""
    return b'"' + name.encode() + b'":"'


def json_value(body: bytes, key: bytes) -> bytes | None:
    """The value of the field whose `json_key` is `key` in the json event `body` (its first
    occurrence), or None when the event has no such field."""
    start = body.find(key)
    if start < 0:
        return None
    start += len(key)
    return body[start : body.find(b'"', start)]


def head_value(head: bytes, name: bytes) -> bytes | None:
    """The value of header line `name: value` in a frame's head, or None. `name` is given with
    its `: ` (e.g. `b"Reply-Text: "`); it must start a line."""
    at = head.find(name)
    while at > 0 and head[at - 1] != 0x0A:  # not at a line start: look further
        at = head.find(name, at + 1)
    if at < 0:
        return None
    at += len(name)
    end = head.find(b"\n", at)
    return head[at:] if end < 0 else head[at:end]


def split_frames(data: bytes) -> tuple[list[Frame], int]:
    """The whole frames at the start of `data`, and how many bytes they take (the rest is an
    unfinished frame: keep it and put the next bytes after it)."""
    frames: list[Frame] = []
    pos = 0
    size = len(data)
    find = data.find
    while True:
        if data.startswith(_CONTENT_LENGTH, pos):  # an event's head, as the switch writes it
            line_end = find(b"\n", pos)
            if line_end >= 0 and data.startswith(_EVENT_JSON_TYPE, line_end + 1):
                body_start = line_end + 1 + len(_EVENT_JSON_TYPE)
                end = body_start + int(data[pos + len(_CONTENT_LENGTH) : line_end])
                if end > size:
                    return frames, pos
                frames.append((_EVENT_JSON, data[pos : body_start - 2], data[body_start:end]))
                pos = end
                continue
        blank = find(_BLANK, pos)
        if blank < 0:
            return frames, pos
        head = data[pos:blank]
        length_at = find(_CONTENT_LENGTH, pos, blank)
        while length_at > pos and data[length_at - 1] != 0x0A:  # inside another header line
            length_at = find(_CONTENT_LENGTH, length_at + 1, blank)
        body_start = blank + 2
        if length_at < 0:
            end = body_start
            body = b""
        else:
            value_at = length_at + len(_CONTENT_LENGTH)
            line_end = find(b"\n", value_at, blank + 1)
            end = body_start + int(data[value_at:line_end])
            if end > size:
                return frames, pos
            body = data[body_start:end]
        frames.append((head_value(head, _CONTENT_TYPE) or b"", head, body))
        pos = end
