"""Logging set-up: structlog over one stdlib handler, configured once at start-up.

This module owns how log lines look and where they go: JSON lines (journald, files, pipes) or
console lines (a terminal), ISO-8601 UTC timestamps, the stable keys operators grep and `jq` for
(``event``, ``uuid``, ``ext``, ``room``, ``state``, ``outcome``, ``cause``, ``elapsed_ms``), the
level (changeable at run time: SIGHUP), the optional log file (reopened on SIGHUP for logrotate)
and the redaction of secrets in every line, ours and foreign.

Standard-library records (genesis, asyncio, ...) reach the same handler through the root logger
and are rendered by structlog's ProcessorFormatter. confguard's own lines (structlog) take a
shorter road to the same handler: rendered by the same processors, written to the handler's
stream under its lock, filtered by the same logger and handler levels -- no stdlib LogRecord and
no second pass through a formatter for every state change. Detaching genesis's own Rich handler is
`confguard.esl.route_genesis_logging()`; call it after `configure_logging()`.

Callers only do ``log = get_logger(__name__); log.info("invite.state", uuid=..., state=...)``.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Mapping
from typing import IO, Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "STABLE_KEYS",
    "configure_logging",
    "get_logger",
    "redact",
    "reopen",
    "set_level",
]

STABLE_KEYS = ("event", "uuid", "ext", "room", "state", "outcome", "cause", "elapsed_ms")
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
REDACTED = "<redacted>"
SECRET_KEYS = frozenset({"password", "passwd", "secret", "esl_password", "token"})
# ESL's `auth <password>` and `userauth <user>@<domain>:<password>`: FreeSWITCH takes the whole
# rest of the line as the password, so everything up to the line end goes.
_AUTH_RE = re.compile(r"(?i)\b(auth|userauth)([ \t]+)[^\r\n]*")
_MARK = "_confguard_handler"


def _redact_text(text: str) -> str:
    if "auth" not in text.lower():
        return text
    return _AUTH_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)


def _redact_value(value: object, depth: int = 0) -> object:
    if isinstance(value, str):
        return _redact_text(value)
    if depth > 4:
        return value
    if isinstance(value, Mapping):
        return {
            k: REDACTED if str(k).lower() in SECRET_KEYS else _redact_value(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v, depth + 1) for v in value)
    return value


_PLAIN = frozenset({str, int, float, bool, type(None)})


def redact(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: secrets out of every value; keys named like a password blanked."""
    if not SECRET_KEYS.intersection(map(str.lower, event_dict)) and all(
        type(value) in _PLAIN for value in event_dict.values()
    ) and "auth" not in "\0".join(
        value for value in event_dict.values() if type(value) is str
    ).lower():
        return event_dict  # the usual line: no secret key, no auth text, nothing nested
    for key, value in list(event_dict.items()):
        if key.lower() in SECRET_KEYS:
            event_dict[key] = REDACTED
        elif isinstance(value, str | Mapping | list | tuple):
            event_dict[key] = _redact_value(value)
    return event_dict


def _add_logger_name(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """The stdlib record's logger name (genesis, asyncio ...) under "logger"."""
    record = event_dict.get("_record")
    if record is not None and "logger" not in event_dict:
        event_dict["logger"] = record.name
    return event_dict


_LEADING_KEYS = ("timestamp", "level", "event", "logger", *STABLE_KEYS[1:])


def _order_keys(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Same key order on every line: timestamp, level, event, logger, the stable keys, the rest."""
    ordered = {key: event_dict.pop(key) for key in _LEADING_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


def _json_default(value: object) -> str:
    return str(value)


class _ReopenableFileHandler(logging.FileHandler):
    """A FileHandler whose file can be reopened after logrotate moved it away."""

    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream is not None:
                self.stream.flush()
                self.stream.close()
            self.stream = self._open()
        finally:
            self.release()


_lock = threading.Lock()
_handler: logging.Handler | None = None


class _LineWriter:
    """structlog's logger for confguard's own lines: the rendered line goes straight to the
    configured handler's stream (the handler's lock, terminator and flush), as the stdlib handler
    would write it. Levels are the stdlib ones: the logger of that name, then the handler."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or "root"
        self._stdlib = logging.getLogger(name)

    def isEnabledFor(self, level: int) -> bool:  # the stdlib names
        handler = _handler
        return handler is not None and level >= handler.level and self._stdlib.isEnabledFor(level)

    def getEffectiveLevel(self) -> int:
        return self._stdlib.getEffectiveLevel()

    @property
    def disabled(self) -> bool:
        return self._stdlib.disabled

    def _write(self, line: str) -> None:
        handler = _handler
        if not isinstance(handler, logging.StreamHandler):
            return
        handler.acquire()
        try:
            stream = handler.stream
            if stream is not None:
                stream.write(line + handler.terminator)
                stream.flush()
        except (OSError, ValueError):
            pass  # a full disk or a closed stream must not stop live calls (stdlib prints it)
        finally:
            handler.release()

    debug = info = warning = warn = error = critical = exception = fatal = msg = _write


_METHOD_LEVELS = {
    "debug": logging.DEBUG, "info": logging.INFO, "msg": logging.INFO,
    "warning": logging.WARNING, "warn": logging.WARNING,
    "error": logging.ERROR, "exception": logging.ERROR,
    "critical": logging.CRITICAL, "fatal": logging.CRITICAL,
}


def _filter_by_level(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    """Drop a line below the level of its logger or of the handler (before any other work)."""
    if logger.isEnabledFor(_METHOD_LEVELS.get(method_name, logging.INFO)):
        return event_dict
    raise structlog.DropEvent


def _line_writer_factory(name: str | None = None, *args: Any) -> _LineWriter:
    return _LineWriter(name)


def _level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    try:
        return LEVELS[level.strip().lower()]
    except KeyError:
        raise ValueError(f"log level {level!r}: allowed {' | '.join(LEVELS)}") from None


def _renderer(format: str, stream: IO[str] | None) -> Processor:
    if format == "auto":
        is_tty = stream is not None and hasattr(stream, "isatty") and stream.isatty()
        format = "console" if is_tty else "json"
    if format == "console":
        colors = stream is not None and hasattr(stream, "isatty") and stream.isatty()
        return structlog.dev.ConsoleRenderer(colors=colors)
    if format == "json":
        return structlog.processors.JSONRenderer(default=_json_default)
    raise ValueError(f"log format {format!r}: allowed auto | console | json")


def configure_logging(
    format: str = "auto",
    level: str | int = "info",
    stream: TextIO | None = None,
    file: str | None = None,
) -> None:
    """Set up structlog and the stdlib root logger (again: replaces the previous set-up).

    `file` wins over `stream`; with neither, lines go to stderr (journald under systemd).
    "auto" means console lines when the destination is a terminal, JSON lines otherwise.
    """
    global _handler
    level_number = _level_number(level)
    handler: logging.Handler
    if file is not None:
        handler = _ReopenableFileHandler(file, mode="a", encoding="utf-8")
        destination: IO[str] | None = None  # a file is never a terminal
    else:
        destination = stream if stream is not None else sys.stderr
        handler = logging.StreamHandler(destination)
    renderer = _renderer(format, destination)

    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    # Run on records from structlog and from the stdlib alike, before the renderer.
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        timestamper,
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _add_logger_name, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact,
            _order_keys,
            renderer,
        ],
    )
    handler.setFormatter(formatter)
    handler.setLevel(level_number)
    setattr(handler, _MARK, True)

    with _lock:
        root = logging.getLogger()
        for old in list(root.handlers):
            if getattr(old, _MARK, False):
                root.removeHandler(old)
                old.close()
        root.addHandler(handler)
        root.setLevel(level_number)
        _handler = handler

    structlog.configure(
        processors=[
            _filter_by_level,
            *shared,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            # what the ProcessorFormatter does to the stdlib's records, here for our own lines
            structlog.processors.format_exc_info,
            redact,
            _order_keys,
            renderer,
        ],
        logger_factory=_line_writer_factory,
        wrapper_class=structlog.stdlib.BoundLogger,
        context_class=dict,
        # False so that a later configure_logging() (tests, SIGHUP) reaches existing loggers.
        cache_logger_on_first_use=False,
    )


def set_level(level: str | int) -> None:
    """Change the level at run time (SIGHUP reload)."""
    number = _level_number(level)
    with _lock:
        logging.getLogger().setLevel(number)
        if _handler is not None:
            _handler.setLevel(number)


def reopen() -> None:
    """Reopen the log file after logrotate moved it (SIGHUP); nothing to do for a stream."""
    with _lock:
        handler = _handler
    if isinstance(handler, _ReopenableFileHandler):
        handler.reopen()


def get_logger(name: str | None = None, **initial: Any) -> Any:
    """A structlog logger; `initial` key/values are bound to every line it writes."""
    logger = structlog.get_logger(name)
    return logger.bind(**initial) if initial else logger

