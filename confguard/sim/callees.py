"""Simulated callees: what the phone behind each directory user does when the switch calls it.

Owns `CalleeSpec`, the default directory and the per-call overrides. The switch asks
`resolve_callee(users, extension, variables)` once per originate and then plays the spec out
(answer after some seconds or never, busy, reject, unregistered; key presses at times after
answer; hang up some seconds after answer). Times are simulated seconds.

Default directory (CONTRACTS.md):

| user | behaviour |
|---|---|
| 1000 | answers after 1 s, presses `1` 2 s after answer, stays |
| 1001 | answers after 1 s, silent |
| 1002 | busy (USER_BUSY) |
| 1003 | rejects (CALL_REJECTED) |
| 1004 | never answers (rings until `originate_timeout` -> NO_ANSWER) |
| 1005 | answers after 1 s, presses `2` at 1 s then `1` at 2 s |
| 1006 | answers after 1 s, hangs up 2 s after answer (NORMAL_CLEARING) |
| 1007 | answers after 1 s, presses `9` (a decline key) at 1 s |
| 1008..1019 | like 1000 (for parallel tests) |
| other | SUBSCRIBER_ABSENT |

Per-call overrides, channel variables in the originate `{}`:
- `sim_answer_after=<s>`, `sim_mode=answer|noanswer|busy|reject|unregistered`,
  `sim_dtmf=<digits>@<s>[;<digits>@<s>...]` (seconds after answer), `sim_hangup_after=<s>`.
- The variables of the recorded transcripts (their loopback test callee), so the transcripts
  replay: `callee_mode=press<digits>|silent|noanswer|hangup|busy|reject` (any other value: no
  dialplan match, UNALLOCATED_NUMBER), `callee_delay_ms` (default 2000: from answer to the key
  press, or to the hangup), `callee_ring_ms` (default 0: ringing before answer). When
  `callee_mode` is given it replaces the directory entry's behaviour; `sim_*` apply on top.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import cached_property
from types import MappingProxyType


class CalleeMode(StrEnum):
    """What the callee does with the call."""

    ANSWER = "answer"  # answers after `answer_after`
    NOANSWER = "noanswer"  # rings until the originate times out
    BUSY = "busy"  # USER_BUSY
    REJECT = "reject"  # CALL_REJECTED
    UNREGISTERED = "unregistered"  # USER_NOT_REGISTERED
    UNALLOCATED = "unallocated"  # no dialplan match: UNALLOCATED_NUMBER


# The hangup cause an originate fails with, for each mode that never answers by itself.
FAILURE_CAUSES: dict[CalleeMode, str] = {
    CalleeMode.BUSY: "USER_BUSY",
    CalleeMode.REJECT: "CALL_REJECTED",
    CalleeMode.UNREGISTERED: "USER_NOT_REGISTERED",
    CalleeMode.UNALLOCATED: "UNALLOCATED_NUMBER",
}

DTMF_DIGITS = frozenset("0123456789*#ABCD")
DIGIT_GAP = 0.1  # simulated seconds between the digits of one multi-digit press


class CalleeError(ValueError):
    """A per-call override could not be understood."""


@dataclass(frozen=True)
class CalleeSpec:
    """One callee's behaviour."""

    mode: CalleeMode = CalleeMode.ANSWER
    answer_after: float = 1.0  # seconds of ringing before answer (mode ANSWER)
    dtmf: tuple[tuple[str, float], ...] = ()  # (digits, seconds after answer)
    hangup_after: float | None = None  # seconds after answer; None = stays
    hangup_cause: str = "NORMAL_CLEARING"

    def key_presses(self) -> list[tuple[str, float]]:
        """Single digits with their times after answer, in order."""
        return list(self._presses)

    @cached_property
    def _presses(self) -> tuple[tuple[str, float], ...]:
        return tuple(self._make_presses())

    def _make_presses(self) -> list[tuple[str, float]]:
        presses: list[tuple[str, float]] = []
        for digits, at in self.dtmf:
            for index, digit in enumerate(digits):
                presses.append((digit, at + index * DIGIT_GAP))
        presses.sort(key=lambda press: press[1])
        return presses


def _press_one_after(seconds: float) -> CalleeSpec:
    return CalleeSpec(answer_after=1.0, dtmf=(("1", seconds),))


def default_directory() -> dict[str, CalleeSpec]:
    """The directory a simulator uses when its config names no users."""
    users: dict[str, CalleeSpec] = {
        "1000": _press_one_after(2.0),
        "1001": CalleeSpec(answer_after=1.0),
        "1002": CalleeSpec(mode=CalleeMode.BUSY),
        "1003": CalleeSpec(mode=CalleeMode.REJECT),
        "1004": CalleeSpec(mode=CalleeMode.NOANSWER),
        "1005": CalleeSpec(answer_after=1.0, dtmf=(("2", 1.0), ("1", 2.0))),
        "1006": CalleeSpec(answer_after=1.0, hangup_after=2.0),
        "1007": CalleeSpec(answer_after=1.0, dtmf=(("9", 1.0),)),
    }
    for number in range(1008, 1020):
        users[str(number)] = _press_one_after(2.0)
    return users


_DEFAULT_DIRECTORY: Mapping[str, CalleeSpec] = MappingProxyType(default_directory())
"""Read by every originate when the config names no users (the specs are frozen)."""


def parse_dtmf_plan(text: str) -> tuple[tuple[str, float], ...]:
    """`1@2;2@3.5` -> (("1", 2.0), ("2", 3.5)); raises CalleeError."""
    plan: list[tuple[str, float]] = []
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        digits, sep, at = part.partition("@")
        if not sep or not digits or any(d not in DTMF_DIGITS for d in digits):
            raise CalleeError(f"bad sim_dtmf entry {part!r}: want <digits>@<seconds>")
        plan.append((digits, _seconds(at, "sim_dtmf")))
    return tuple(plan)


def _seconds(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CalleeError(f"{name}: {text!r} is not a number of seconds") from None
    if value < 0 or value != value:
        raise CalleeError(f"{name}: {text!r} must be >= 0")
    return value


def _millis(variables: Mapping[str, str], name: str, default: int) -> float:
    raw = variables.get(name)
    if raw is None or raw == "":
        return default / 1000.0
    try:
        return max(0, int(raw)) / 1000.0
    except ValueError:
        return default / 1000.0


def transcript_callee(mode: str, variables: Mapping[str, str]) -> CalleeSpec:
    """The recorded transcripts' test callee for `callee_mode=<mode>`."""
    ring = _millis(variables, "callee_ring_ms", 0)
    delay = _millis(variables, "callee_delay_ms", 2000)
    if mode.startswith("press") and len(mode) > 5 and all(d in DTMF_DIGITS for d in mode[5:]):
        return CalleeSpec(answer_after=ring, dtmf=((mode[5:], delay),))
    if mode == "silent":
        return CalleeSpec(answer_after=ring)
    if mode == "noanswer":
        return CalleeSpec(mode=CalleeMode.NOANSWER)
    if mode == "hangup":
        return CalleeSpec(answer_after=ring, hangup_after=delay)
    if mode == "busy":
        return CalleeSpec(mode=CalleeMode.BUSY)
    if mode == "reject":
        return CalleeSpec(mode=CalleeMode.REJECT)
    return CalleeSpec(mode=CalleeMode.UNALLOCATED)


# The per-call variables that change a callee's behaviour (all that `_resolve` reads).
_OVERRIDES = (
    "callee_mode",
    "callee_ring_ms",
    "callee_delay_ms",
    "sim_mode",
    "sim_answer_after",
    "sim_dtmf",
    "sim_hangup_after",
)
_RESOLVED_KEPT = 1024
# (id of the directory entry, the override values) -> (that entry, the spec): calls with the same
# overrides share one frozen spec (the entry is kept so that its id stays its own).
_RESOLVED: dict[tuple[int, tuple[str | None, ...]], tuple[CalleeSpec, CalleeSpec]] = {}


def resolve_callee(
    users: Mapping[str, CalleeSpec] | None,
    extension: str,
    variables: Mapping[str, str],
) -> CalleeSpec | None:
    """The behaviour for one call to `extension`; None when the user does not exist. Specs are
    frozen: the one for a directory entry and the same overrides is made once (a bounded table;
    an override that cannot be understood raises every time)."""
    directory = _DEFAULT_DIRECTORY if users is None else users
    base = directory.get(extension)
    if base is None:
        return None
    key = (id(base), tuple(map(variables.get, _OVERRIDES)))
    known = _RESOLVED.get(key)
    if known is not None and known[0] is base:
        return known[1]
    spec = _resolve(base, variables)
    if len(_RESOLVED) >= _RESOLVED_KEPT:
        _RESOLVED.clear()
    _RESOLVED[key] = (base, spec)
    return spec


def _resolve(base: CalleeSpec, variables: Mapping[str, str]) -> CalleeSpec:
    spec = base
    callee_mode = variables.get("callee_mode")
    if callee_mode:
        spec = transcript_callee(callee_mode, variables)
    if "sim_mode" in variables:
        try:
            mode = CalleeMode(variables["sim_mode"])
        except ValueError:
            raise CalleeError(f"sim_mode: unknown mode {variables['sim_mode']!r}") from None
        spec = replace(spec, mode=mode)
    if "sim_answer_after" in variables:
        spec = replace(
            spec, answer_after=_seconds(variables["sim_answer_after"], "sim_answer_after")
        )
    if "sim_dtmf" in variables:
        spec = replace(spec, dtmf=parse_dtmf_plan(variables["sim_dtmf"]))
    if "sim_hangup_after" in variables:
        spec = replace(
            spec, hangup_after=_seconds(variables["sim_hangup_after"], "sim_hangup_after")
        )
    return spec
