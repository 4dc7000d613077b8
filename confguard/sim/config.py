"""Configuration of the FreeSWITCH simulator (`SimConfig`), shared by the server and the switch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class SimConfig:
    """Everything a `Simulator` needs: where to listen, who may connect, how fast time runs."""

    host: str = "127.0.0.1"
    port: int = 8021  # 0 = pick a free port (tests)
    password: str = "ClueCon"
    time_scale: float = 1.0  # 0.1: every simulated second lasts 0.1 real seconds
    heartbeat_interval: float = 20.0  # simulated seconds
    allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")  # others get text/rude-rejection
    users: dict[str, Any] | None = None  # user -> CalleeSpec (callees.py); None = default directory
    # The modules loaded (`module_exists`, `show endpoint`, which endpoints an originate can
    # dial); None: those of the real build in shared/freeswitch/dist (switch.MODULES), which has
    # no mod_sofia. With "mod_sofia" added, `gateways` are its gateways: name -> up (True) or
    # down (False), for `sofia status gateway` and `sofia/gateway/<name>/...` originates.
    modules: tuple[str, ...] | None = None
    gateways: dict[str, bool] | None = None
    domain: str = "sim.local"
    hostname: str = "confguard-sim"
    ipv4: str = "127.0.0.1"  # FreeSWITCH-IPv4 / -IPv6 of every event (the host's addresses)
    ipv6: str = "::1"
    auth_timeout: float = 25.0  # real seconds without auth before the socket is closed
    # Determinism (tests, conformance replay): a seed for every random choice the switch makes,
    # a fixed simulated wall clock start, and the ranges of the scheduler's small delays.
    seed: int | None = None  # None: unseeded
    start_epoch: float | None = None  # simulated epoch seconds at start; None: the real clock
    mirror_lag: tuple[float, float] = (0.05, 0.2)  # sim s: `show tasks` row appears/goes late
    schedule_event_delay: tuple[float, float] = (0.001, 0.015)  # sim s: ADD_SCHEDULE after add
    # The actions of the join extension (7001 in context `default`), as a call routed there runs
    # them: confguard.realswitch's conf.py, which `xml_locate` prints (xmlconf.py; transcript 19
    # shows answer's CHANNEL_EXECUTE before the conference's). The original recordings' set-up
    # had no answer: `conference test1`, `hangup` (transcript 00's dialplan, 04's events).
    join_actions: tuple[tuple[str, str], ...] = (
        ("answer", ""),
        ("conference", "test1@default"),
        ("hangup", ""),
    )
    # More extensions of context `default`, tried after 7001: (destination_number regex, its
    # actions; `$1`... stand for the regex's groups). `xmlconf.dialplan_extensions` reads them
    # from a dialplan file, e.g. deploy/freeswitch/confguard_events.xml (`confguard sim
    # --dialplan FILE`; the tests load that one: the invites-from-FreeSWITCH example, as
    # realswitch conf.py's events_example does for the real switch).
    extensions: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
