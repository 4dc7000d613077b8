"""`confguard check` for the dial routes: can the switch place a call the way a route dials?

Owns the route lines of the check report. Per configured ``[routes.<name>]``
(confguard.routes), what the switch can tell:

- the endpoint type the template dials (``sofia``, ``loopback``, ``user``, ...): is its module
  loaded? For the endpoint types whose module is known (``_ENDPOINT_MODULE``: ``user`` is
  mod_dptools, ``loopback`` mod_loopback, ``sofia`` mod_sofia, ...) ``module_exists <module>``
  (``true``/``false``, the switch's own table). Another type is looked up in
  ``show endpoint as json`` (``{"row_count":6,"rows":[{"type":"endpoint","name":"loopback",
  "ikey":"mod_loopback"},...]}`` on the lab build), which is a copy in the core database,
  written by the SQL thread from the MODULE_LOAD events: it can lag just after a start, so it
  is not asked when module_exists can answer. An originate to an endpoint that is not loaded
  fails at once with ``-ERR CHAN_NOT_IMPLEMENTED`` and no channel (seen on the lab switch), so
  a missing one is ✗.
- a ``sofia/gateway/<name>/...`` template: ``module_exists mod_sofia``, then
  ``sofia status gateway <name>``, whose ``Status`` row says ``UP`` or ``DOWN`` (mod_sofia.c's
  cmd_status; ``Invalid Gateway!`` when no profile has it). Without mod_sofia the gateway is
  "cannot tell" (the lab build has none: ``module_exists mod_sofia`` is ``false`` and
  ``sofia ...`` answers ``-ERR sofia Command not found!``).
- anything else (``user/`` -- whether that user exists is decided per call by the directory;
  ``loopback/<n>/<context>`` -- the dialplan decides per call; a sofia profile URI) has no more
  to check than its endpoint.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from confguard.check import ApiCall, CheckResult
from confguard.routes import DialRoute, route_probes

_NOT_FOUND_RE = re.compile(r"^-ERR \S* ?Command not found!?", re.IGNORECASE)
_GATEWAY_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_ROW_RE = re.compile(r"^(Status|State)\s*\t(\S+)", re.MULTILINE)
# Endpoint interface -> the module that registers it (mod_dptools.c, mod_loopback.c, ...).
_ENDPOINT_MODULE = {
    "user": "mod_dptools", "error": "mod_dptools", "group": "mod_dptools",
    "pickup": "mod_dptools", "loopback": "mod_loopback", "null": "mod_loopback",
    "sofia": "mod_sofia", "verto.rtc": "mod_verto", "skinny": "mod_skinny",
    "freetdm": "mod_freetdm", "rtmp": "mod_rtmp", "portaudio": "mod_portaudio",
}


async def _ask(api: ApiCall, command: str) -> tuple[str | None, str | None]:
    try:
        return (await api(command)), None
    except Exception as exc:  # a lost link, a timeout: that line says so, the others still run
        return None, f"{command!r} failed: {type(exc).__name__}: {exc}"


def _short(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "(empty)"
    return line[:120]


async def _loaded_endpoints(api: ApiCall) -> tuple[dict[str, str] | None, str]:
    """endpoint name -> module, or None and why not."""
    reply, error = await _ask(api, "show endpoint as json")
    if reply is None:
        return None, error or ""
    try:
        document = json.loads(reply)
        rows = document.get("rows", []) if int(document.get("row_count", 0)) else []
        return {str(row["name"]): str(row.get("ikey", "")) for row in rows}, ""
    except (ValueError, TypeError, KeyError, AttributeError):
        return None, f"`show endpoint as json` answered {_short(reply)!r}"


async def _endpoint_module(api: ApiCall, endpoint: str,
                           listed: dict[str, str] | None) -> tuple[bool | None, str]:
    """Whether the endpoint is loaded (None: cannot tell), and what said so."""
    module = _ENDPOINT_MODULE.get(endpoint)
    if module is not None:
        reply, error = await _ask(api, f"module_exists {module}")
        if reply is None:
            return None, error or ""
        if reply.strip() in ("true", "false"):
            return reply.strip() == "true", f"{module} (module_exists: {reply.strip()})"
        return None, f"module_exists {module} answered {_short(reply)!r}"
    if listed is None:
        return None, "not listed: `show endpoint as json` could not be read"
    if endpoint in listed:
        return True, f"{listed[endpoint]} (show endpoint)"
    return False, "not in `show endpoint`"


async def route_results(api: ApiCall, routes: Mapping[str, DialRoute]) -> list[CheckResult]:
    """The check lines of every route, in name order (none when no route is configured)."""
    probes = route_probes(routes)
    if not probes:
        return []
    listed: dict[str, str] | None = None
    if any(probe.endpoint not in _ENDPOINT_MODULE for probe in probes):
        listed, _ = await _loaded_endpoints(api)
    results: list[CheckResult] = []
    for probe in probes:
        route = probe.route
        name = f"route {route.name} ({route.dial})"
        module = _ENDPOINT_MODULE.get(probe.endpoint, "the module that provides it")
        loaded, said = await _endpoint_module(api, probe.endpoint, listed)
        if loaded is None:
            results.append(CheckResult(name, None, f"cannot tell whether endpoint "
                                       f"{probe.endpoint!r} is loaded: {said}"))
        elif loaded:
            detail = f"endpoint {probe.endpoint} loaded: {said}"
            if probe.gateway is None:
                detail += "; " + _nothing_more(probe.endpoint)
            results.append(CheckResult(name, True, detail))
        else:
            results.append(CheckResult(
                name, False,
                f"endpoint {probe.endpoint!r} is not loaded ({said}): every call on this route "
                "would fail at once with CHAN_NOT_IMPLEMENTED",
                f"load {module} (`load {module}` in fs_cli and autoload_configs/"
                "modules.conf.xml), or fix the route's dial template"))
        if probe.gateway is not None:
            results.append(await _check_gateway(api, route, probe.gateway, loaded))
    return results


def _nothing_more(endpoint: str) -> str:
    if endpoint == "user":
        return "whether the user exists is up to the directory, per call"
    if endpoint == "loopback":
        return "where it goes is up to the dialplan, per call"
    return "nothing more the switch can tell before a call"


async def _check_gateway(api: ApiCall, route: DialRoute, gateway: str,
                         sofia_loaded: bool | None) -> CheckResult:
    """`sofia status gateway <name>`, asked only when `module_exists mod_sofia` said true."""
    name = f"route {route.name} gateway {gateway}"
    if not _GATEWAY_NAME_RE.fullmatch(gateway):  # DialRoute's rule; never sent otherwise
        return CheckResult(name, False, f"not a gateway name: {gateway!r}")
    if not sofia_loaded:
        why = "mod_sofia is not loaded" if sofia_loaded is False else "mod_sofia's state is unknown"
        return CheckResult(name, None, f"cannot tell: {why}",
                           "load mod_sofia with a profile that defines this gateway")
    reply, error = await _ask(api, f"sofia status gateway {gateway}")
    if reply is None:
        return CheckResult(name, None, f"cannot tell: {error}")
    if reply.strip() == "Invalid Gateway!":
        return CheckResult(name, False, "unknown gateway: no sofia profile defines it "
                           "(sofia status gateway: Invalid Gateway!)",
                           f"define <gateway name=\"{gateway}\"> in a sofia profile and "
                           "`sofia profile <profile> rescan`, or fix the route's dial template")
    if _NOT_FOUND_RE.match(reply.strip()):
        return CheckResult(name, None, f"cannot tell: {_short(reply)}")
    rows = dict(_ROW_RE.findall(reply))
    status, state = rows.get("Status"), rows.get("State", "?")
    if status == "UP":
        return CheckResult(name, True, f"up (Status UP, State {state})")
    if status == "DOWN":
        return CheckResult(name, False, f"down (Status DOWN, State {state}): calls on this "
                           "route fail with GATEWAY_DOWN",
                           "check the gateway's registration/ping (`sofia status gateway "
                           f"{gateway}` in fs_cli) and the carrier")
    return CheckResult(name, None, f"cannot tell: unexpected reply {_short(reply)!r}")
