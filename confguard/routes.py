"""Dial routes: where an invite's call goes, as a checked template (`[routes.<name>]`).

This module owns the dial templates of the configuration (``[routes.mobile] dial =
"sofia/gateway/carrier/{number}"``): the rules a template must pass when the configuration
loads, the rule each placeholder's value must pass before it is filled in, the filling itself
(``DialRoute.fill``: one dial string, never anything else), and what ``confguard check`` can ask
the switch about a route (``route_probes``).

A route without a name, or the built-in ``user`` route, dials ``user/{ext}``: the originate
confguard always sent (``build_originate`` keeps that string byte for byte).

Placeholders (a template has exactly one, once):

* ``{ext}``    -- an extension: 1-64 of ``0-9 A-Z a-z _ . + -`` (the invite's extension rule);
* ``{number}`` -- a phone number, E.164-ish: an optional ``+`` then 1-20 digits.

The literal parts of a template may hold only ``A-Z a-z 0-9 / _ . - @ : +``; it starts with an
endpoint type (``sofia/``, ``loopback/``, ``user/``, ...) and may not hold FreeSWITCH's
enterprise separator ``:_:``. Nothing that is ESL or dial-string syntax can pass: no space,
quote, comma, ``|``, ``^``, ``[ ]``, ``< >``, ``${``, ``;``, ``=``, newline, nor a brace other
than a known placeholder's. Per route, ``caller_id_number`` and ``ring_timeout`` may set that
route's defaults (a request's own values win).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from confguard.invite import BadInput

__all__ = [
    "DEFAULT_ROUTE",
    "PLACEHOLDERS",
    "DialRoute",
    "RouteProbe",
    "parse_routes",
    "route_probes",
]

DEFAULT_ROUTE_NAME = "user"
ROUTE_KEYS = ("dial", "caller_id_number", "ring_timeout")
MAX_TEMPLATE = 256
MAX_ROUTES = 64


@dataclass(frozen=True)
class Placeholder:
    rule: re.Pattern[str]
    what: str


PLACEHOLDERS: Mapping[str, Placeholder] = {
    "ext": Placeholder(
        re.compile(r"[0-9A-Za-z_.+-]{1,64}"), "an extension: 1-64 of 0-9 A-Z a-z _ . + -"
    ),
    "number": Placeholder(
        re.compile(r"\+?[0-9]{1,20}"), "a number: an optional + then 1-20 digits"
    ),
}

ROUTE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_LITERAL_RE = re.compile(r"[A-Za-z0-9/_.@:+-]*")
_ENDPOINT_RE = re.compile(r"([a-z][a-z0-9_.]{0,31})/")
_TOKEN_RE = re.compile(r"\{([^{}]*)\}")
_GATEWAY_RE = re.compile(r"sofia/gateway/([A-Za-z0-9_.-]{1,64})/")
_CALLER_NUMBER_RE = re.compile(r"\+?[0-9*#]{1,31}")
_LITERALS = "A-Z a-z 0-9 / _ . - @ : +"


def _bad(name: str, key: str, value: object, reason: str) -> BadInput:
    return BadInput(f"routes.{name}.{key}", value, reason)


def check_template(name: str, dial: object) -> str:
    """The placeholder a template fills, after checking every rule of the module docstring.
    Raises BadInput (field ``routes.<name>.dial``) with the reason."""
    if not isinstance(dial, str):
        raise _bad(name, "dial", dial, "must be a string")
    if not dial or len(dial) > MAX_TEMPLATE:
        raise _bad(name, "dial", dial, f"must be 1-{MAX_TEMPLATE} characters")
    if "${" in dial or "$${" in dial:
        raise _bad(name, "dial", dial, "'${' (FreeSWITCH variable expansion) is not allowed")
    used: list[str] = []
    literal: list[str] = []
    at = 0
    for token in _TOKEN_RE.finditer(dial):
        literal.append(dial[at : token.start()])
        placeholder = token.group(1)
        if placeholder not in PLACEHOLDERS:
            known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
            raise _bad(name, "dial", dial,
                       f"unknown placeholder {token.group()!r} (known: {known})")
        used.append(placeholder)
        at = token.end()
    literal.append(dial[at:])
    for part in literal:
        if not _LITERAL_RE.fullmatch(part):
            bad = next(c for c in part if not _LITERAL_RE.fullmatch(c))
            raise _bad(name, "dial", dial,
                       f"character {bad!r} is not allowed outside a placeholder "
                       f"(allowed: {_LITERALS})")
    if len(used) != 1:
        raise _bad(name, "dial", dial,
                   "must hold exactly one placeholder, once: {ext} or {number}")
    skeleton = "\0".join(literal)  # placeholders kept as a mark no literal can hold
    if any(":_:" in part for part in literal):
        raise _bad(name, "dial", dial, "':_:' (FreeSWITCH's enterprise separator) is not allowed")
    if not _ENDPOINT_RE.match(skeleton):
        raise _bad(name, "dial", dial,
                   "must start with an endpoint type and a slash, e.g. sofia/ loopback/ user/")
    return used[0]


@dataclass(frozen=True)
class DialRoute:
    """One route: its name, its checked dial template, and its per-route defaults."""

    name: str
    dial: str
    caller_id_number: str | None = None
    ring_timeout: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not ROUTE_NAME_RE.fullmatch(self.name):
            raise BadInput("routes", self.name,
                           "a route name is 1-32 of a-z 0-9 _ - starting with a letter or digit")
        object.__setattr__(self, "_placeholder", check_template(self.name, self.dial))
        if self.caller_id_number is not None and (
            not isinstance(self.caller_id_number, str)
            or not _CALLER_NUMBER_RE.fullmatch(self.caller_id_number)
        ):
            raise _bad(self.name, "caller_id_number", self.caller_id_number,
                       "must be an optional + then 1-31 of 0-9 * #")
        if self.ring_timeout is not None and (
            isinstance(self.ring_timeout, bool)
            or not isinstance(self.ring_timeout, int)
            or not 1 <= self.ring_timeout <= 3600
        ):
            raise _bad(self.name, "ring_timeout", self.ring_timeout,
                       "must be a whole number of seconds from 1 to 3600")

    @property
    def placeholder(self) -> str:
        """The placeholder the target fills: ``ext`` or ``number``."""
        return str(self.__dict__["_placeholder"])

    @property
    def endpoint(self) -> str:
        """The endpoint type the template dials (``sofia``, ``loopback``, ``user``, ...)."""
        return self.dial.split("/", 1)[0]

    @property
    def gateway(self) -> str | None:
        """The sofia gateway of a ``sofia/gateway/<name>/...`` template, else None."""
        match = _GATEWAY_RE.match(self.dial)
        return match.group(1) if match else None

    def check_target(self, target: object, field: str = "extension") -> str:
        """The target as the placeholder's rule takes it. Raises BadInput naming ``field``."""
        rule = PLACEHOLDERS[self.placeholder]
        if not isinstance(target, str) or not rule.rule.fullmatch(target):
            raise BadInput(field, target,
                           f"route {self.name!r} ({self.dial}) takes {{{self.placeholder}}}: "
                           f"must be {rule.what}")
        return target

    def fill(self, target: str) -> str:
        """The dial string for one validated target."""
        value = self.check_target(target)
        dial = self.dial.replace("{" + self.placeholder + "}", value)
        if ":_:" in dial:  # e.g. a literal ':' on both sides of an {ext} of '_'
            raise BadInput("extension", target,
                           f"route {self.name!r} ({self.dial}) would dial FreeSWITCH's "
                           "enterprise separator ':_:'")
        return dial

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dial": self.dial, "caller_id_number": self.caller_id_number,
                "ring_timeout": self.ring_timeout}


DEFAULT_ROUTE = DialRoute(DEFAULT_ROUTE_NAME, "user/{ext}")
"""The route of an invite that names none: what confguard always dialled."""


def parse_routes(document: Mapping[str, Any]) -> dict[str, DialRoute]:
    """The routes of a TOML ``[routes]`` table (``[routes.<name>]`` sub-tables). Raises
    BadInput whose field is the dotted key (``routes.mobile.dial``) and reason."""
    routes: dict[str, DialRoute] = {}
    if len(document) > MAX_ROUTES:
        raise BadInput("routes", str(len(document)), f"at most {MAX_ROUTES} routes")
    for name, table in document.items():
        if not ROUTE_NAME_RE.fullmatch(name):
            raise BadInput(f"routes.{name}", name,
                           "a route name is 1-32 of a-z 0-9 _ - starting with a letter or digit")
        if name == DEFAULT_ROUTE_NAME:
            raise BadInput(f"routes.{name}", name,
                           "the name 'user' is the built-in user/{ext} route; choose another "
                           "(and set [invite] via to make it the default)")
        if not isinstance(table, dict):
            raise BadInput(f"routes.{name}", str(table)[:80],
                           f"expected a [routes.{name}] table with dial = \"...\"")
        unknown = sorted(set(table) - set(ROUTE_KEYS))
        if unknown:
            raise BadInput(f"routes.{name}.{unknown[0]}", str(table[unknown[0]])[:80],
                           f"unknown key (allowed: {', '.join(ROUTE_KEYS)})")
        if "dial" not in table:
            raise BadInput(f"routes.{name}.dial", "", "required: the dial template")
        routes[name] = DialRoute(name, table["dial"], table.get("caller_id_number"),
                                 table.get("ring_timeout"))
    return routes


def lookup(routes: Mapping[str, DialRoute], name: object, field: str = "via") -> DialRoute:
    """The route called ``name`` (``user`` is always there). Raises BadInput naming ``field``."""
    if name == DEFAULT_ROUTE_NAME:
        return DEFAULT_ROUTE
    if not isinstance(name, str) or name not in routes:
        known = ", ".join([DEFAULT_ROUTE_NAME, *sorted(routes)])
        raise BadInput(field, str(name)[:80], f"no such route (configured: {known})")
    return routes[name]


# --- what `confguard check` can ask about a route ----------------------------------------------


@dataclass(frozen=True)
class RouteProbe:
    """What the switch can tell about one route: the endpoint type to look for in
    ``show endpoint``, and the sofia gateway (if any) to ask ``sofia status gateway`` about."""

    route: DialRoute
    endpoint: str
    gateway: str | None


def route_probes(routes: Mapping[str, DialRoute]) -> list[RouteProbe]:
    """One probe per configured route, in name order."""
    return [RouteProbe(route, route.endpoint, route.gateway)
            for _, route in sorted(routes.items())]
