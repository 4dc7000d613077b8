"""Status webhooks without I/O: which URLs are accepted, an event's JSON body, its signature,
and how a receiver verifies it.

Standard library only: the CLI and the control API validate `--notify` / `"notify"` URLs here
without loading an HTTP client. Delivery (the durable outbox in the journal, retries, aiohttp)
is `confguard.webhook_delivery`, which only the daemon imports.

Signature: ``Confguard-Signature: t=<unix seconds>,v1=<hex>`` where ``<hex>`` is
HMAC-SHA256(secret, ``<t>`` + ``"."`` + body bytes). The timestamp is taken at each attempt, so a
receiver can refuse stale requests (`verify_signature`'s ``tolerance``) whatever the retries.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

SIGNATURE_HEADER = "Confguard-Signature"
EVENT_ID_HEADER = "Confguard-Event-Id"
ATTEMPT_HEADER = "Confguard-Attempt"
SIGNATURE_TOLERANCE_S = 300.0  # what `verify_signature` accepts by default (clock skew + queue)
MAX_URL_LENGTH = 2048
MAX_NOTIFY_URLS = 5  # per invite
SECRET_MIN_LENGTH = 16

_HOSTNAME_RE = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
_NOT_IN_URLS = '"<>\\^`{|}'  # printable ASCII that RFC 3986 does not allow unencoded
_SIGNATURE_RE = re.compile(r"[0-9a-f]{64}")


class BadUrl(ValueError):
    """A webhook URL that confguard will not POST to; the message says why."""


class SignatureError(ValueError):
    """A request whose Confguard-Signature does not verify; the message says why."""


def check_url(url: object) -> str:
    """The URL, normalised (scheme and host lower case), if it is one confguard posts to:
    http or https, a host name or IP literal, an optional port, no user:password part, no
    fragment, printable ASCII without spaces, at most 2048 characters. Raises BadUrl."""
    if not isinstance(url, str):
        raise BadUrl(f"expected a URL string, got {type(url).__name__}")
    if not url or len(url) > MAX_URL_LENGTH:
        raise BadUrl(f"empty or longer than {MAX_URL_LENGTH} characters")
    if any(not 33 <= ord(c) <= 126 for c in url):
        raise BadUrl("contains a space, a control character or a non-ASCII character "
                     "(percent-encode it; IDN hosts as punycode)")
    if any(c in _NOT_IN_URLS for c in url):
        raise BadUrl(f"contains one of {_NOT_IN_URLS} (not allowed in a URL; percent-encode it)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadUrl(f"not a URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise BadUrl(f"scheme {parts.scheme or '(none)'!r} is not allowed: only http and https")
    if "@" in parts.netloc:
        raise BadUrl("a user:password@ part is not allowed (it would be logged with the URL); "
                     "receivers verify the Confguard-Signature header instead")
    host = parts.hostname or ""
    if not host:
        raise BadUrl("no host")
    if parts.netloc.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise BadUrl(f"{host!r} is not an IPv6 address") from None
    elif not _HOSTNAME_RE.fullmatch(host):
        raise BadUrl(f"{host!r} is not a host name or an IP address")
    if port == 0:
        raise BadUrl("port 0")
    if parts.fragment or url.endswith("#"):
        raise BadUrl("a #fragment is not allowed (it is never sent)")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    path = parts.path or "/"
    return f"{scheme}://{netloc}{path}" + (f"?{parts.query}" if parts.query else "")


def redact_url(url: str) -> str:
    """The URL as logged: scheme, host, port and path; a query string (it may carry a token)
    shown as ``?...``."""
    base, sep, _ = url.partition("?")
    return base + ("?..." if sep else "")


def secret_bytes(secret: Any) -> bytes:
    """The HMAC key of a `confguard.config.Secret`, a str or bytes."""
    if isinstance(secret, bytes):
        return secret
    if isinstance(secret, str):
        return secret.encode()
    return str(secret.reveal()).encode()


def signature(secret: Any, timestamp: int, body: bytes) -> str:
    """The ``Confguard-Signature`` header value for `body` sent at `timestamp`."""
    digest = hmac.new(
        secret_bytes(secret), str(int(timestamp)).encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    return f"t={int(timestamp)},v1={digest}"


def verify_signature(
    secret: Any,
    header: str | None,
    body: bytes,
    *,
    now: float | None = None,
    tolerance: float = SIGNATURE_TOLERANCE_S,
) -> int:
    """What a receiver does with a request: check ``Confguard-Signature`` against the raw body.

    Returns the signed timestamp. Raises SignatureError when the header is missing or malformed,
    no ``v1`` matches (compared in constant time), or the timestamp is more than `tolerance`
    seconds away from `now` (a replayed request). Several ``v1=`` entries are accepted (any one
    matching is enough), so a sender may sign with an old and a new secret while rotating."""
    if not header:
        raise SignatureError(f"no {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep:
            raise SignatureError(f"malformed {SIGNATURE_HEADER} item {item.strip()[:20]!r}")
        if name == "t":
            if not (value.isascii() and value.isdigit()) or timestamp is not None:
                raise SignatureError("bad or repeated timestamp t=")
            timestamp = int(value)
        elif name == "v1" and _SIGNATURE_RE.fullmatch(value):
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError(f"{SIGNATURE_HEADER} needs t=<unix> and v1=<64 hex>")
    moment = time.time() if now is None else now
    if abs(moment - timestamp) > tolerance:
        raise SignatureError(f"timestamp {timestamp} is {moment - timestamp:+.0f} s from now "
                             f"(tolerance {tolerance:g} s)")
    expected = signature(secret, timestamp, body).partition("v1=")[2]
    if not any(hmac.compare_digest(expected, value) for value in candidates):
        raise SignatureError("no v1 signature matches")
    return timestamp


# --- the event body ----------------------------------------------------------------------------

# Entering a state stamps a timing (the first time), as the journal's columns do.
TIMING_OF_STATE = {"waiting_key": "answered_at", "cancelling": "key_at", "joined": "joined_at"}


# The update a joined member's departure makes (confguard.members): after the outcome.
LEFT_STATE = "left"


def event_id(invite_id: str, seq: int) -> str:
    """The stable id of an event: the same on every attempt and for every URL."""
    return f"{invite_id}-{seq}"


def request_of(spec: Any, origin: Mapping[str, str]) -> dict[str, Any]:
    """What the invite was asked with, for the receiver to tie events to its own request: where
    it came from (`api`, or `event` with the sender's `request_id`), the dial route (`user`: the
    directory user), the member flags and the time limit in the room."""
    route = getattr(spec, "route", None)
    return {
        "source": origin.get("source") or "api",
        "request_id": origin.get("request_id"),
        "via": route.name if route is not None else "user",
        "flags": list(getattr(spec, "member_flags", ())),
        "max_duration": getattr(spec, "max_duration", None),
    }


def event_body(
    update: Mapping[str, Any],
    *,
    seq: int,
    started_at: float,
    timings: Mapping[str, float],
    request: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON object POSTed for one engine update (a state change, the outcome, or a joined
    member's departure: `state: left`, type `invite.left`, with `left_reason`, `left_cause`,
    `in_room_s` and `timings.left_at`).

    `seq` is the invite's webhook sequence number (0, 1, 2, ... and continued by a restarted
    daemon); `timings` the wall times already known (answered_at, key_at, joined_at, and
    ended_at once the outcome was sent); `request` what the invite was asked with (request_of)."""
    outcome = update.get("outcome")
    left = update.get("state") == LEFT_STATE
    when = float(update.get("ts") or time.time())
    stamps: dict[str, Any] = {
        "started_at": started_at,
        "elapsed_ms": update.get("elapsed_ms"),
        "answered_at": timings.get("answered_at"),
        "key_at": timings.get("key_at"),
        "joined_at": timings.get("joined_at"),
        "ended_at": timings.get("ended_at", when if outcome else None),
    }
    extra: dict[str, Any] = {}
    if left:
        stamps["left_at"] = update.get("left_at", when)
        extra = {name: update.get(name) for name in ("left_reason", "left_cause", "in_room_s")}
    kind = "invite.left" if left else "invite.outcome" if outcome else "invite.state"
    return {
        **extra,
        "event_id": event_id(str(update["invite_id"]), seq),
        "type": kind,
        "invite_id": update["invite_id"],
        "seq": seq,
        "uuid": update.get("uuid"),
        "ext": update.get("ext"),
        "room": update.get("room"),
        "state": update.get("state"),
        "previous": update.get("previous"),
        "outcome": outcome,
        "cause": update.get("cause"),
        "seconds_left": update.get("seconds_left"),
        "ts": when,
        "timings": stamps,
        "request": dict(request or {}),
    }


def encode_body(body: Mapping[str, Any]) -> str:
    """The exact text that is stored in the outbox, signed and sent (compact, keys sorted)."""
    return json.dumps(body, separators=(",", ":"), sort_keys=True, default=str)
