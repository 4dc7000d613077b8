"""Every confguard setting, loaded and validated once.

This module owns the settings: their defaults, the TOML file, the ``CONFGUARD_<SECTION>_<KEY>``
environment variables and the command-line overrides (in that order, later wins), the validation
of every value, where each value came from (``Config.sources``) and the ESL password (a `Secret`
that never shows its value in a repr, a log line or ``confguard config``).

The password is read from a file only: ``esl.password_file`` (TOML, env or flag), else the systemd
credential ``$CREDENTIALS_DIRECTORY/esl-password``, else FreeSWITCH's own default ``ClueCon``. It
is never accepted as a value in the TOML file, the environment or on the command line.

It knows nothing about ESL, invites or sockets: the other modules receive these dataclasses.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from confguard.esl import EslSettings

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_ESL_PASSWORD",
    "ApiConfig",
    "Config",
    "ConfigError",
    "EslConfig",
    "InviteConfig",
    "JournalConfig",
    "LogConfig",
    "MetricsConfig",
    "Secret",
    "WebhooksConfig",
    "default_journal_path",
    "default_socket_path",
    "load_config",
    "render_config",
]

DEFAULT_CONFIG_PATH = "/etc/confguard/confguard.toml"
DEFAULT_ESL_PASSWORD = "ClueCon"  # FreeSWITCH's shipped event_socket.conf.xml
CREDENTIAL_NAME = "esl-password"  # LoadCredential=esl-password:... in the unit
WEBHOOK_CREDENTIAL_NAME = "confguard-webhook"  # LoadCredential=confguard-webhook:...
ENV_PREFIX = "CONFGUARD_"
REDACTED = "<redacted>"


class ConfigError(ValueError):
    """A setting is unknown or has a bad value; the message names where, which key and what is
    allowed."""

    def __init__(self, origin: str, key: str, problem: str, allowed: str | None = None):
        self.origin = origin
        self.key = key
        self.problem = problem
        self.allowed = allowed
        text = f"{origin}: {key}: {problem}"
        if allowed:
            text += f" (allowed: {allowed})"
        super().__init__(text)


class Secret:
    """A string that never shows itself in repr/str/format; read it with `reveal()`."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    def __str__(self) -> str:
        return REDACTED

    def __format__(self, spec: str) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Secret:
        return self

    def __reduce__(self) -> Any:  # pickling would be a way to leak it; refuse
        raise TypeError("Secret cannot be pickled")


# --- sections ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EslConfig:
    host: str = "127.0.0.1"
    port: int = 8021
    password: Secret = field(default_factory=lambda: Secret(DEFAULT_ESL_PASSWORD), compare=False)
    password_file: str | None = None
    connect_timeout: float = 5.0
    auth_timeout: float = 5.0
    command_timeout: float = 10.0
    heartbeat_interval: float = 20.0
    reconnect_initial: float = 0.5
    reconnect_max: float = 30.0
    # While reconnecting, a new invite (and an originate not yet written) waits this long for
    # the link before it is refused (503) / ends failed, never sent.
    reconnect_wait: float = 5.0

    def settings_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `confguard.esl.EslSettings` (password revealed)."""
        return {
            "host": self.host,
            "port": self.port,
            "password": self.password.reveal(),
            "connect_timeout": self.connect_timeout,
            "auth_timeout": self.auth_timeout,
            "command_timeout": self.command_timeout,
            "heartbeat_interval": self.heartbeat_interval,
            "reconnect_initial": self.reconnect_initial,
            "reconnect_max": self.reconnect_max,
        }


@dataclass(frozen=True)
class InviteConfig:
    timeout: int = 30
    ring_timeout: int | None = None
    key: str = "1"
    decline_key: str | None = None
    # mod_tone_stream is in every FreeSWITCH build: two short 440 Hz beeps; no file to install.
    prompt: str | None = "tone_stream://%(250,250,440);loops=2"
    reprompt_interval: float = 5.0
    hangup_cause: str = "ALLOTTED_TIMEOUT"
    join_mode: str = "inline"
    join_extension: str = "7001"
    join_context: str = "default"
    caller_id_name: str | None = None
    caller_id_number: str | None = None
    # In the room (README "In the room"): the member's time limit, and its mod_conference flags.
    max_duration: int | None = None
    muted: bool = False
    deaf: bool = False
    moderator: bool = False
    endconf: bool = False
    via: str | None = None  # the [routes.<name>] an invite without --via takes; None: user/{ext}


@dataclass(frozen=True)
class ApiConfig:
    socket: str = ""  # filled by load_config from the environment (see default_socket_path)
    mode: int = 0o660
    # Seconds an Idempotency-Key of POST /invites is remembered from its first use (idempotency.py)
    idempotency_retention: float = 86400.0


@dataclass(frozen=True)
class LogConfig:
    format: str = "auto"
    level: str = "info"
    file: str | None = None


@dataclass(frozen=True)
class MetricsConfig:
    listen: str | None = None  # "127.0.0.1:9464"; None = no exporter

    @property
    def host_port(self) -> tuple[str, int] | None:
        return None if self.listen is None else _split_host_port(self.listen)


@dataclass(frozen=True)
class JournalConfig:
    path: str = ""  # filled by load_config from the environment (see default_journal_path)
    retention_days: int = 30


@dataclass(frozen=True)
class WebhooksConfig:
    """Status webhooks (confguard.webhook_delivery). The secret comes from `secret_file`, else
    the systemd credential `secret_credential`; it is never a value in the file, env or flags."""

    urls: tuple[str, ...] = ()
    secret: Secret | None = field(default=None, compare=False)
    secret_file: str | None = None
    secret_credential: str = WEBHOOK_CREDENTIAL_NAME
    request_timeout: float = 10.0  # seconds for one POST, connect to response
    retry_initial: float = 1.0  # first retry after this long, doubling up to retry_max
    retry_max: float = 300.0
    give_up_after: float = 86400.0  # an event still undelivered this long after it happened


@dataclass(frozen=True)
class EventsConfig:
    """Invites from inside FreeSWITCH (confguard/fs_events.py)."""

    invites: bool = False  # take `CUSTOM confguard::invite` events
    allowed_rooms: tuple[str, ...] = ()  # the rooms such an event may invite into (required)
    outcomes: bool = False  # `confguard::outcome` for every invite, not only the events'


@dataclass(frozen=True)
class Config:
    esl: EslConfig = field(default_factory=EslConfig)
    invite: InviteConfig = field(default_factory=InviteConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    journal: JournalConfig = field(default_factory=JournalConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    # [routes.<name>] dial templates (confguard.routes.DialRoute), from the file only.
    routes: Mapping[str, Any] = field(default_factory=dict)
    events: EventsConfig = field(default_factory=EventsConfig)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    path: str | None = None  # the TOML file read, if any


SECTIONS: dict[str, type] = {
    "esl": EslConfig,
    "invite": InviteConfig,
    "api": ApiConfig,
    "log": LogConfig,
    "metrics": MetricsConfig,
    "journal": JournalConfig,
    "webhooks": WebhooksConfig,
    "events": EventsConfig,
}


# --- path defaults ----------------------------------------------------------------------------


def _first_dir(value: str | None) -> str | None:
    """systemd puts several directories colon-separated when a unit asks for several."""
    if not value:
        return None
    return value.split(":")[0] or None


# The service's RuntimeDirectory= and StateDirectory= (deploy/confguard.service). When they exist,
# the CLI of any user (an operator in group confguard) talks to that service, not a private one.
SERVICE_RUNTIME_DIR = Path("/run/confguard")
SERVICE_STATE_DIR = Path("/var/lib/confguard")


def default_socket_path(env: Mapping[str, str], euid: int) -> str:
    runtime = _first_dir(env.get("RUNTIME_DIRECTORY"))
    if runtime:
        return str(Path(runtime) / "confguard.sock")
    if euid == 0 or SERVICE_RUNTIME_DIR.is_dir():
        return str(SERVICE_RUNTIME_DIR / "confguard.sock")
    xdg = env.get("XDG_RUNTIME_DIR")
    if xdg:
        return str(Path(xdg) / "confguard" / "confguard.sock")
    return f"/tmp/confguard-{euid}/confguard.sock"


def default_journal_path(env: Mapping[str, str], euid: int) -> str:
    state = _first_dir(env.get("STATE_DIRECTORY"))
    if state:
        return str(Path(state) / "journal.sqlite3")
    if euid == 0 or SERVICE_STATE_DIR.is_dir():
        return str(SERVICE_STATE_DIR / "journal.sqlite3")
    xdg = env.get("XDG_STATE_HOME")
    if xdg:
        return str(Path(xdg) / "confguard" / "journal.sqlite3")
    home = env.get("HOME") or str(Path.home())
    return str(Path(home) / ".local" / "state" / "confguard" / "journal.sqlite3")


# --- value parsers ----------------------------------------------------------------------------
# Each parser takes the raw value (a TOML value, or a string from env / flags) and returns the
# typed value or raises _Bad(problem, allowed).


class _Bad(Exception):
    def __init__(self, problem: str, allowed: str):
        super().__init__(problem)
        self.problem = problem
        self.allowed = allowed


_Parser = Callable[[object], object]

DTMF_KEYS = "0123456789*#ABCD"
LOG_FORMATS = ("auto", "console", "json")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
JOIN_MODES = ("inline", "dialplan")
_EXTENSION_RE = re.compile(r"[0-9A-Za-z_+*#.\-]{1,64}")
_CONTEXT_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_ROOM_RE = re.compile(r"[0-9A-Za-z_-]{1,64}(?:@[0-9A-Za-z_-]{1,64})?")  # invite.py's rule
_CALLER_NUMBER_RE = re.compile(r"\+?[0-9A-Za-z*#]{1,32}")
_ROUTE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_HOSTNAME_RE = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
                          r"(\.[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*\.?")


def _string(raw: object, allowed: str) -> str:
    if not isinstance(raw, str):
        raise _Bad(f"expected a string, got {type(raw).__name__} {raw!r}", allowed)
    return raw


def _is_empty_text(raw: object) -> bool:
    return isinstance(raw, str) and raw.strip().lower() in ("", "none", "off")


def _optional(parser: _Parser) -> _Parser:
    """None (TOML can't say it; env/flags: an empty string, "none" or "off") means unset."""

    def parse(raw: object) -> object:
        if raw is None or _is_empty_text(raw):
            return None
        return parser(raw)

    return parse


def _number(kind: type, low: float, high: float, unit: str = "") -> _Parser:
    allowed = f"{'an integer' if kind is int else 'a number'} from {low:g} to {high:g}{unit}"

    def parse(raw: object) -> object:
        value: float | int
        if isinstance(raw, bool):
            raise _Bad(f"expected a number, got {raw!r}", allowed)
        if isinstance(raw, str):
            text = raw.strip()
            try:
                value = int(text) if kind is int else float(text)
            except ValueError:
                raise _Bad(f"not {'an integer' if kind is int else 'a number'}: {raw!r}",
                           allowed) from None
        elif isinstance(raw, int) or (isinstance(raw, float) and kind is float):
            value = raw
        else:
            raise _Bad(f"expected {'an integer' if kind is int else 'a number'}, got {raw!r}",
                       allowed)
        if isinstance(value, float) and not math.isfinite(value):
            raise _Bad(f"not a finite number: {raw!r}", allowed)
        if not low <= value <= high:
            raise _Bad(f"{value!r} is out of range", allowed)
        return kind(value)

    return parse


def _boolean(raw: object) -> bool:
    """true/false (TOML), or from the environment and flags: true/false, yes/no, on/off, 1/0."""
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        text = raw.strip().lower()
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0"):
            return False
    raise _Bad(f"not a boolean: {raw!r}", "true or false")


def _choice(choices: tuple[str, ...]) -> _Parser:
    allowed = " | ".join(choices)

    def parse(raw: object) -> object:
        text = _string(raw, allowed).strip().lower()
        if text not in choices:
            raise _Bad(f"{raw!r} is not one of them", allowed)
        return text

    return parse


def _rooms(raw: object) -> object:
    """A list of rooms (TOML array; env/flags: comma-separated), each one the invite's room rule."""
    allowed = 'a list of rooms, e.g. ["test1", "sales@default"] (env: test1,sales@default)'
    if isinstance(raw, str):
        items: list[object] = [part.strip() for part in raw.split(",") if part.strip()]
    elif isinstance(raw, list | tuple):
        items = list(raw)
    else:
        raise _Bad(f"expected a list of rooms, got {type(raw).__name__} {raw!r}", allowed)
    rooms: list[str] = []
    for item in items:
        if not isinstance(item, str) or not _ROOM_RE.fullmatch(item):
            raise _Bad(f"{item!r} is not a room name",
                       "room[@profile], each 1-64 of 0-9 A-Z a-z _ -")
        if item not in rooms:
            rooms.append(item)
    return tuple(rooms)


def _host(raw: object) -> object:
    allowed = "an IPv4/IPv6 address or a host name"
    text = _string(raw, allowed).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not _HOSTNAME_RE.fullmatch(text):
        raise _Bad(f"{raw!r} is not an address or a host name", allowed)
    return text


def _split_host_port(text: str) -> tuple[str, int]:
    allowed = "host:port, e.g. 127.0.0.1:9464 or [::1]:9464"
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise _Bad(f"{text!r} is not host:port", allowed)
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise _Bad(f"{text!r}: put an IPv6 address in brackets", allowed)
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise _Bad(f"port {port} is out of range", allowed)
    parsed_host = _host(host)
    assert isinstance(parsed_host, str)
    return parsed_host, port


def _listen(raw: object) -> object:
    text = _string(raw, "host:port, e.g. 127.0.0.1:9464").strip()
    host, port = _split_host_port(text)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _dtmf_key(raw: object) -> object:
    allowed = f"one DTMF key of {DTMF_KEYS}"
    text = _string(raw, allowed).strip().upper()
    if len(text) != 1 or text not in DTMF_KEYS:
        raise _Bad(f"{raw!r} is not a single DTMF key", allowed)
    return text


def _pattern(regex: re.Pattern[str], allowed: str) -> _Parser:
    def parse(raw: object) -> object:
        text = _string(raw, allowed).strip()
        if not regex.fullmatch(text):
            raise _Bad(f"{raw!r} has characters or a length that is not allowed", allowed)
        return text

    return parse


def _hangup_cause(raw: object) -> object:
    from confguard.invite import BadInput, check_timer_cause

    allowed = "a FreeSWITCH hangup cause name that no other outcome uses, e.g. ALLOTTED_TIMEOUT"
    text = _string(raw, allowed).strip().upper()
    try:
        return check_timer_cause(text)
    except BadInput as exc:
        raise _Bad(f"{raw!r}: {exc.reason}", allowed) from None


def _prompt(raw: object) -> object:
    allowed = ("a sound file path or tone_stream:// string FreeSWITCH can play, no spaces, "
               "quotes, braces or ${")
    text = _string(raw, allowed).strip()
    if not text or len(text) > 512:
        raise _Bad("empty or longer than 512 characters", allowed)
    if any(c.isspace() or ord(c) < 32 for c in text) or "${" in text or any(
        c in text for c in "'\"{}`"
    ):
        raise _Bad(f"{raw!r} contains characters that would change a FreeSWITCH command", allowed)
    return text


def _caller_id_name(raw: object) -> object:
    allowed = "up to 64 printable characters without quotes, braces, commas or ${"
    text = _string(raw, allowed).strip()
    if not text or len(text) > 64 or not text.isprintable() or "${" in text or any(
        c in text for c in "'\"{}[],^`"
    ):
        raise _Bad(f"{raw!r} is not allowed", allowed)
    return text


def _path(raw: object) -> object:
    allowed = "an absolute file path"
    text = _string(raw, allowed).strip()
    if not text.startswith("/") or "\0" in text:
        raise _Bad(f"{raw!r} is not an absolute path", allowed)
    return text


def _socket_path(raw: object) -> object:
    text = _path(raw)
    assert isinstance(text, str)
    if len(text.encode()) > 107:  # sun_path is 108 bytes with the terminating NUL
        raise _Bad("longer than 107 bytes", "an absolute path of at most 107 bytes")
    return text


def _mode(raw: object) -> object:
    allowed = "an octal permission mode such as 0o660 or \"0660\", at most 0o777"
    if isinstance(raw, bool):
        raise _Bad(f"{raw!r} is not a mode", allowed)
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str):
        text = raw.strip().lower().removeprefix("0o")
        try:
            value = int(text, 8)
        except ValueError:
            raise _Bad(f"{raw!r} is not an octal mode", allowed) from None
    else:
        raise _Bad(f"{raw!r} is not a mode", allowed)
    if not 0 <= value <= 0o777:
        raise _Bad(f"{oct(value)} is out of range", allowed)
    if not value & 0o600 == 0o600:
        raise _Bad(f"{oct(value)} does not let the daemon's own user read and write", allowed)
    return value


def _webhook_urls(raw: object) -> object:
    """A TOML array of URLs, or (env) one string of URLs separated by commas or spaces."""
    from confguard.webhooks import BadUrl, check_url

    allowed = 'http:// or https:// URLs, e.g. ["https://pbx.example/confguard-hook"]'
    if isinstance(raw, str):
        items: list[object] = [part for part in re.split(r"[,\s]+", raw.strip()) if part]
    elif isinstance(raw, list):
        items = list(raw)
    else:
        raise _Bad(f"expected a list of URLs, got {type(raw).__name__}", allowed)
    urls: list[str] = []
    for item in items:
        try:
            url = check_url(item)
        except BadUrl as exc:
            raise _Bad(f"{str(item)[:80]!r}: {exc}", allowed) from None
        if url not in urls:
            urls.append(url)
    return tuple(urls)


_CREDENTIAL_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}")


@dataclass(frozen=True)
class _Setting:
    parse: _Parser
    secret: bool = False  # never accepted as a value, only through password_file
    numeric: bool = False  # in TOML it must be a number, not a quoted string
    boolean: bool = False  # in TOML it must be true or false, not a quoted string


SETTINGS: dict[str, dict[str, _Setting]] = {
    "esl": {
        "host": _Setting(_host),
        "port": _Setting(_number(int, 1, 65535), numeric=True),
        "password": _Setting(lambda raw: raw, secret=True),
        "password_file": _Setting(_optional(_path)),
        "connect_timeout": _Setting(_number(float, 0.1, 300, " seconds"), numeric=True),
        "auth_timeout": _Setting(_number(float, 0.1, 300, " seconds"), numeric=True),
        "command_timeout": _Setting(_number(float, 0.1, 600, " seconds"), numeric=True),
        "heartbeat_interval": _Setting(_number(float, 1, 3600, " seconds"), numeric=True),
        "reconnect_initial": _Setting(_number(float, 0.01, 60, " seconds"), numeric=True),
        "reconnect_max": _Setting(_number(float, 0.1, 3600, " seconds"), numeric=True),
        "reconnect_wait": _Setting(_number(float, 0, 300, " seconds"), numeric=True),
    },
    "invite": {
        "timeout": _Setting(_number(int, 1, 86400, " seconds"), numeric=True),
        "ring_timeout": _Setting(_optional(_number(int, 1, 3600, " seconds")), numeric=True),
        "key": _Setting(_dtmf_key),
        "decline_key": _Setting(_optional(_dtmf_key)),
        "prompt": _Setting(_optional(_prompt)),
        "reprompt_interval": _Setting(_number(float, 0.5, 600, " seconds"), numeric=True),
        "hangup_cause": _Setting(_hangup_cause),
        "join_mode": _Setting(_choice(JOIN_MODES)),
        "join_extension": _Setting(_pattern(_EXTENSION_RE, "1-64 of 0-9 A-Z a-z _ + * # . -")),
        "join_context": _Setting(_pattern(_CONTEXT_RE, "1-64 of A-Z a-z 0-9 _ . -")),
        "caller_id_name": _Setting(_optional(_caller_id_name)),
        "caller_id_number": _Setting(
            _optional(_pattern(_CALLER_NUMBER_RE, "an optional + then 1-32 of 0-9 A-Z a-z * #"))
        ),
        "max_duration": _Setting(_optional(_number(int, 1, 86400, " seconds")), numeric=True),
        "muted": _Setting(_boolean, boolean=True),
        "deaf": _Setting(_boolean, boolean=True),
        "moderator": _Setting(_boolean, boolean=True),
        "endconf": _Setting(_boolean, boolean=True),
        "via": _Setting(_optional(_pattern(_ROUTE_NAME_RE, "a [routes.<name>] name, or user"))),
    },
    "api": {
        "socket": _Setting(_socket_path),
        "mode": _Setting(_mode),
        "idempotency_retention": _Setting(_number(float, 1, 30 * 86400, " seconds"), numeric=True),
    },
    "log": {
        "format": _Setting(_choice(LOG_FORMATS)),
        "level": _Setting(_choice(LOG_LEVELS)),
        "file": _Setting(_optional(_path)),
    },
    "metrics": {"listen": _Setting(_optional(_listen))},
    "events": {
        "invites": _Setting(_boolean),
        "allowed_rooms": _Setting(_rooms),
        "outcomes": _Setting(_boolean),
    },
    "journal": {
        "path": _Setting(_path),
        "retention_days": _Setting(_number(int, 1, 36500, " days"), numeric=True),
    },
    "webhooks": {
        "urls": _Setting(_webhook_urls),
        "secret": _Setting(lambda raw: raw, secret=True),
        "secret_file": _Setting(_optional(_path)),
        "secret_credential": _Setting(
            _pattern(_CREDENTIAL_RE, "a credential name: 1-64 of A-Z a-z 0-9 _ . -")
        ),
        "request_timeout": _Setting(_number(float, 0.5, 120, " seconds"), numeric=True),
        "retry_initial": _Setting(_number(float, 0.05, 3600, " seconds"), numeric=True),
        "retry_max": _Setting(_number(float, 0.1, 86400, " seconds"), numeric=True),
        "give_up_after": _Setting(_number(float, 1, 30 * 86400, " seconds"), numeric=True),
    },
}

# Where each secret may come from instead (the message of a refused secret value).
_SECRET_SOURCES = {
    "esl.password": "esl.password_file, or the systemd credential 'esl-password' "
                    "(LoadCredential=esl-password:/etc/confguard/esl-password)",
    "webhooks.secret": "webhooks.secret_file, or the systemd credential named by "
                       "webhooks.secret_credential (LoadCredential=confguard-webhook:"
                       "/etc/confguard/webhook-secret)",
}


def flag_name(dotted: str) -> str:
    """The command-line flag of a dotted key: "esl.host" -> "--esl-host"."""
    return "--" + dotted.replace(".", "-").replace("_", "-")


def env_name(dotted: str) -> str:
    """The environment variable of a dotted key: "esl.host" -> "CONFGUARD_ESL_HOST"."""
    return ENV_PREFIX + dotted.replace(".", "_").upper()


# --- loading ----------------------------------------------------------------------------------


def _allowed_keys(section: str) -> str:
    return ", ".join(k for k, s in SETTINGS[section].items() if not s.secret)


def _apply(
    values: dict[str, dict[str, object]],
    sources: dict[str, str],
    section: str,
    key: str,
    raw: object,
    origin: str,
    source: str,
) -> None:
    """Validate one raw value and record it with its source."""
    dotted = f"{section}.{key}"
    if section not in SETTINGS:
        raise ConfigError(origin, dotted, "unknown section", ", ".join(SETTINGS))
    setting = SETTINGS[section].get(key)
    if setting is None:
        raise ConfigError(origin, dotted, "unknown key", _allowed_keys(section))
    if setting.secret:
        raise ConfigError(
            origin,
            dotted,
            f"the {'password' if section == 'esl' else 'secret'} is not accepted here (it would "
            "be visible in files, the process environment or the process list)",
            _SECRET_SOURCES[dotted],
        )
    if setting.boolean and source.startswith("file:") and not isinstance(raw, bool):
        raise ConfigError(origin, dotted, f"expected true or false, got {raw!r}",
                          "a TOML boolean without quotes")
    if setting.numeric and source.startswith("file:") and isinstance(raw, str):
        raise ConfigError(origin, dotted, f"expected a number, got the string {raw!r}",
                          "a TOML number without quotes")
    try:
        values[section][key] = setting.parse(raw)
    except _Bad as bad:
        raise ConfigError(origin, dotted, bad.problem, bad.allowed) from None
    sources[dotted] = source


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(path, "(file)", "no such file",
                          "an existing TOML file, see deploy/confguard.toml") from None
    except OSError as error:
        raise ConfigError(path, "(file)", f"cannot read: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(path, "(file)", f"not valid TOML: {error}") from None


def _read_password(path: str, origin: str) -> Secret:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(origin, "esl.password_file", f"cannot read {path}: {error.strerror}",
                          "a file readable by the confguard user holding the ESL password"
                          ) from None
    try:
        text = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(origin, "esl.password_file", f"{path} is not UTF-8") from None
    if not text or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ConfigError(
            origin,
            "esl.password_file",
            f"{path} is empty or holds a control character or more than one line",
            "one line: the password of event_socket.conf.xml",
        )
    return Secret(text)


def load_config(
    path: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
    *,
    euid: int | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> Config:
    """Defaults < TOML file < CONFGUARD_* environment < overrides (dotted keys from flags).

    ``path`` None: ``$CONFGUARD_CONFIG`` if set, else /etc/confguard/confguard.toml if it exists,
    else no file. An explicitly named file must exist. Raises ConfigError.
    ``flag_names`` maps a dotted key to the flag that set it when that flag is not the derived
    one (e.g. {"api.socket": "--socket"}), for sources and error messages.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    uid = os.geteuid() if euid is None else euid
    values: dict[str, dict[str, object]] = {name: {} for name in SETTINGS}
    sources: dict[str, str] = {}

    # 1. the file
    file_path: str | None = path
    if file_path is None:
        named = environ.get(f"{ENV_PREFIX}CONFIG")
        if named:
            file_path = named
        elif os.path.exists(DEFAULT_CONFIG_PATH):
            file_path = DEFAULT_CONFIG_PATH
    routes: dict[str, Any] = {}
    if file_path is not None:
        document = _read_toml(file_path)
        if "routes" in document:
            routes = _load_routes(document.pop("routes"), file_path, sources)
        for section, table in document.items():
            if section not in SETTINGS:
                raise ConfigError(file_path, section, "unknown section",
                                  ", ".join([*SETTINGS, "routes.<name>"]))
            if not isinstance(table, dict):
                raise ConfigError(file_path, section, "expected a [section] table",
                                  f"[{section}] with keys {_allowed_keys(section)}")
            for key, raw in table.items():
                _apply(values, sources, section, key, raw, file_path, f"file:{file_path}")

    # 2. the environment
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX):].lower()
        section, sep, key = rest.partition("_")
        if not sep or section not in SETTINGS:
            continue  # CONFGUARD_CONFIG, CONFGUARD_TRANSCRIPTS, ... are not settings
        origin = f"environment variable {name}"
        _apply(values, sources, section, key, environ[name], origin, f"env:{name}")

    # 3. command-line overrides
    for dotted, raw in (overrides or {}).items():
        section, sep, key = dotted.partition(".")
        flag = (flag_names or {}).get(dotted) or flag_name(dotted)
        if not sep:
            raise ConfigError(f"flag {flag}", dotted, "not a section.key name")
        _apply(values, sources, section, key, raw, f"flag {flag}", f"flag:{flag}")

    # 4. environment-derived defaults, then the password
    if "socket" not in values["api"]:
        values["api"]["socket"] = default_socket_path(environ, uid)
    if "path" not in values["journal"]:
        values["journal"]["path"] = default_journal_path(environ, uid)

    password_file = values["esl"].get("password_file")
    if isinstance(password_file, str):
        origin = _origin(sources["esl.password_file"])
        values["esl"]["password"] = _read_password(password_file, origin)
        sources["esl.password"] = f"password_file:{password_file}"
    else:
        credentials = _first_dir(environ.get("CREDENTIALS_DIRECTORY"))
        credential = Path(credentials, CREDENTIAL_NAME) if credentials else None
        if credential is not None and credential.exists():
            values["esl"]["password"] = _read_password(
                str(credential), f"systemd credential {credential}"
            )
            sources["esl.password"] = f"credential:{credential}"
    _load_webhook_secret(values["webhooks"], sources, environ)

    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        sections[name] = cls(**values[name])
        for item in fields(cls):
            sources.setdefault(f"{name}.{item.name}", "default")

    config = Config(**sections, routes=routes, sources=dict(sources), path=file_path)
    _check_together(config)
    _check_invite_defaults(config)
    return config


def _read_webhook_secret(path: str, origin: str, key: str) -> Secret:
    """One line of at least 16 printable characters; the message never shows the content."""
    from confguard.webhooks import SECRET_MIN_LENGTH

    allowed = f"one line of at least {SECRET_MIN_LENGTH} printable characters, e.g. from " \
              "`openssl rand -hex 32`"
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(origin, key, f"cannot read {path}: {error.strerror}", allowed) from None
    try:
        text = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(origin, key, f"{path} is not UTF-8", allowed) from None
    if len(text) < SECRET_MIN_LENGTH or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ConfigError(origin, key, f"{path} is too short, or holds a control character or "
                          "more than one line", allowed)
    return Secret(text)


def _load_webhook_secret(
    values: dict[str, object], sources: dict[str, str], environ: Mapping[str, str]
) -> None:
    """webhooks.secret from secret_file, else from $CREDENTIALS_DIRECTORY/<secret_credential>.
    Absent: no secret (the CLI runs without the service's credentials; `serve` refuses urls
    without a secret) -- except a credential named explicitly while systemd passed others."""
    secret_file = values.get("secret_file")
    if isinstance(secret_file, str):
        origin = _origin(sources["webhooks.secret_file"])
        values["secret"] = _read_webhook_secret(secret_file, origin, "webhooks.secret_file")
        sources["webhooks.secret"] = f"secret_file:{secret_file}"
        return
    name = str(values.get("secret_credential") or WEBHOOK_CREDENTIAL_NAME)
    named = "webhooks.secret_credential" in sources
    credentials = _first_dir(environ.get("CREDENTIALS_DIRECTORY"))
    credential = Path(credentials, name) if credentials else None
    if credential is not None and credential.exists():
        values["secret"] = _read_webhook_secret(
            str(credential), f"systemd credential {credential}", "webhooks.secret_credential"
        )
        sources["webhooks.secret"] = f"credential:{credential}"
    elif named and credential is not None:
        raise ConfigError(_origin(sources["webhooks.secret_credential"]),
                          "webhooks.secret_credential", f"no credential {name!r} in {credentials}",
                          f"LoadCredential={name}:/etc/confguard/webhook-secret in the unit")


def _load_routes(table: object, origin: str, sources: dict[str, str]) -> dict[str, Any]:
    """`[routes.<name>]` tables as checked DialRoutes: a template that could become ESL or
    dial-string syntax is refused here, naming the route and why (confguard.routes)."""
    from confguard.invite import BadInput
    from confguard.routes import parse_routes

    if not isinstance(table, dict):
        raise ConfigError(origin, "routes", "expected [routes.<name>] tables",
                          '[routes.mobile] dial = "sofia/gateway/carrier/{number}"')
    try:
        routes = parse_routes(table)
    except BadInput as exc:
        raise ConfigError(origin, exc.field, exc.reason) from None
    for name, route in routes.items():
        for key in ("dial", "caller_id_number", "ring_timeout"):
            if getattr(route, key) is not None:
                sources[f"routes.{name}.{key}"] = f"file:{origin}"
    return routes


def _check_invite_defaults(config: Config) -> None:
    """The `[invite]` defaults must pass the invite machine's own validation (one rule for
    what may reach FreeSWITCH), so a bad default fails here, not on every invite."""
    from confguard.invite import BadInput, InviteSpec, JoinTarget

    invite = config.invite
    if invite.via is not None and invite.via != "user" and invite.via not in config.routes:
        known = ", ".join(["user", *sorted(config.routes)])
        raise ConfigError(_origin(config.sources.get("invite.via", "default")), "invite.via",
                          f"no route {invite.via!r}", f"a configured route: {known}")
    join = (
        JoinTarget.dialplan(invite.join_extension, invite.join_context)
        if invite.join_mode == "dialplan"
        else JoinTarget.inline()
    )
    try:
        InviteSpec(
            extension="1000", room="confguard", timeout=invite.timeout, key=invite.key,
            decline_key=invite.decline_key, prompt=invite.prompt,
            caller_id_name=invite.caller_id_name, caller_id_number=invite.caller_id_number,
            hangup_cause=invite.hangup_cause, join=join,
            reprompt_interval=invite.reprompt_interval, max_duration=invite.max_duration,
            muted=invite.muted, deaf=invite.deaf, moderator=invite.moderator,
            endconf=invite.endconf,
        )
    except BadInput as exc:
        key = "invite." + exc.field.replace("join.", "join_")
        where = _origin(config.sources.get(key, "default"))
        raise ConfigError(where, key, exc.reason) from None


def _origin(source: str) -> str:
    """A `sources` value as an error-message origin."""
    kind, _, rest = source.partition(":")
    if kind == "file":
        return rest
    if kind == "env":
        return f"environment variable {rest}"
    if kind == "flag":
        return f"flag {rest}"
    return source


def _check_together(config: Config) -> None:
    """Rules between keys, reported against the later of the two sources."""
    invite = config.invite
    if invite.decline_key is not None and invite.decline_key == invite.key:
        where = _origin(config.sources["invite.decline_key"])
        raise ConfigError(where, "invite.decline_key", f"same as invite.key ({invite.key!r})",
                          "a different DTMF key, or none")
    hooks = config.webhooks
    if hooks.retry_initial > hooks.retry_max:
        raise ConfigError(_origin(config.sources["webhooks.retry_initial"]),
                          "webhooks.retry_initial", f"{hooks.retry_initial} is above "
                          f"webhooks.retry_max {hooks.retry_max}", "at most webhooks.retry_max")
    events = config.events
    if events.invites and not events.allowed_rooms:
        where = _origin(config.sources["events.invites"])
        raise ConfigError(where, "events.allowed_rooms",
                          "required when events.invites is true (which rooms may an event "
                          "from FreeSWITCH invite into?)", 'a non-empty list, e.g. ["test1"]')
    esl = config.esl
    if esl.reconnect_initial > esl.reconnect_max:
        raise ConfigError(_origin(config.sources["esl.reconnect_initial"]), "esl.reconnect_initial",
                          f"{esl.reconnect_initial} is above esl.reconnect_max "
                          f"{esl.reconnect_max}", "at most esl.reconnect_max")


def with_overrides(config: Config, section: str, **changes: object) -> Config:
    """A copy of `config` with one section's fields replaced (no validation; for tests)."""
    current = getattr(config, section)
    return replace(config, **{section: replace(current, **changes)})


# --- rendering --------------------------------------------------------------------------------


def _render_value(section: str, key: str, value: object) -> str | None:
    if isinstance(value, Secret):
        return f'"{REDACTED}"'
    if value is None:
        return None
    if section == "api" and key == "mode" and isinstance(value, int):
        return f"0o{value:03o}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(str(_render_value(section, key, item)) for item in value) + "]"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def render_config(config: Config) -> str:
    """The effective configuration as TOML-like text, each value's source as a trailing comment,
    the password shown as "<redacted>"; unset optional values are commented out."""
    lines = ["# confguard effective configuration; '# <source>' says where each value came from"]
    if config.path:
        lines.append(f"# file: {config.path}")
    for name, cls in SECTIONS.items():
        section = getattr(config, name)
        lines.append("")
        lines.append(f"[{name}]")
        rows: list[tuple[str, str]] = []
        for item in fields(cls):
            rendered = _render_value(name, item.name, getattr(section, item.name))
            text = (f"{item.name} = {rendered}" if rendered is not None
                    else f"# {item.name} = (not set)")
            rows.append((text, config.sources.get(f"{name}.{item.name}", "default")))
        width = max(len(text) for text, _ in rows)
        lines.extend(f"{text.ljust(width)}  # {source}" for text, source in rows)
    for route_name, route in sorted(config.routes.items()):
        lines.append("")
        lines.append(f"[routes.{route_name}]")
        rows = []
        for key in ("dial", "caller_id_number", "ring_timeout"):
            rendered = _render_value("routes", key, getattr(route, key))
            text = f"{key} = {rendered}" if rendered is not None else f"# {key} = (not set)"
            rows.append((text, config.sources.get(f"routes.{route_name}.{key}", "default")))
        width = max(len(text) for text, _ in rows)
        lines.extend(f"{text.ljust(width)}  # {source}" for text, source in rows)
    return "\n".join(lines) + "\n"


# The dotted configuration key of each command-line flag, and the flag as the user types it
# (cli.py maps its flags through this; the daemon's SIGHUP reload names them the same way).
FLAG_KEYS = {
    "esl_host": ("esl.host", "--esl-host"),
    "esl_port": ("esl.port", "--esl-port"),
    "socket": ("api.socket", "--socket"),
    "log_format": ("log.format", "--log-format"),
    "log_level": ("log.level", "--log-level"),
    "log_file": ("log.file", "--log-file"),
    "metrics_listen": ("metrics.listen", "--metrics-listen"),
    "journal": ("journal.path", "--journal"),
    "idempotency_retention": ("api.idempotency_retention", "--idempotency-retention"),
}
FLAG_NAMES = dict(FLAG_KEYS.values())


def esl_settings(config: Config) -> EslSettings:
    """The ESL session's settings from the configuration (the password stays inside them).
    (confguard.esl, and genesis with it, is imported here only: `confguard --help` stays quick.)"""
    from confguard.esl import EslSettings

    return EslSettings(**config.esl.settings_kwargs())
