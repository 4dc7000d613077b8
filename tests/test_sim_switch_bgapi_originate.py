"""A bgapi originate runs on callbacks (`switch._Originating`), not in a task running `api
originate`'s coroutine as it did: every branch must publish the same events, in the same order,
at the same (virtual) times, and BACKGROUND_JOB with the same reply at the same moment.

Each case runs twice on a virtual-time loop (bench/sim_switch_virtual.py's): once through
`Switch.background_job`, once through the task it used to spawn (`old_background_job`, the
former code). The two streams -- every event in the plain wire format with its virtual time,
uuids numbered in order of appearance -- must be equal."""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import confguard.sim.clock as clock_module
from bench import sim_switch_virtual as virtual
from confguard.sim import wire
from confguard.sim.clock import SimClock
from confguard.sim.config import SimConfig
from confguard.sim.events import SimEvent
from confguard.sim.switch import Switch

A = "aaaaaaaa-0000-4000-8000-000000000000"
B = "bbbbbbbb-0000-4000-8000-000000000000"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def old_background_job(switch: Switch, job_uuid: str, command: str) -> None:
    """Switch.background_job as it was: the command in a task, then BACKGROUND_JOB."""
    name, _, arg = command.strip().partition(" ")

    async def run() -> None:
        body = await switch.api(command)
        switch.publish(switch.events.background_job(job_uuid, name, arg.strip(), body))

    switch._spawn(run())


def originate(call_uuid: str, variables: str = "", user: str = "1001", app: str = "") -> str:
    app = app or virtual.WAITING_APP
    return f"originate {{origination_uuid={call_uuid}{variables}}}user/{user} {app}"


Start = Callable[[Switch, str, str], None]  # Switch.background_job, or the old one
Script = Callable[[Switch, Start], Coroutine[Any, Any, None]]


def stream(script: Script, start: Start, time_scale: float = 1.0) -> list[str]:
    """What `script(switch, start)` publishes, one text per event with its virtual time."""
    seen: list[str] = []
    numbers: dict[str, str] = {}

    def publish(event: SimEvent) -> None:
        plain = wire.serialize_plain(event.headers, event.body).decode("utf-8", "replace")
        text = _UUID.sub(lambda m: numbers.setdefault(m.group(), f"<U{len(numbers)}>"), plain)
        seen.append(f"{virtual.VirtualTime.now:.6f}\n{text}")

    async def main() -> None:
        switch = Switch(
            SimConfig(port=0, seed=1, heartbeat_interval=20), SimClock(time_scale), publish
        )
        await switch.start()
        await script(switch, start)
        await switch.stop()

    saved, virtual.VirtualTime.now = clock_module.time, virtual.VIRTUAL_START
    clock_module.time = virtual._TimeModule  # type: ignore[assignment]
    loop = virtual.VirtualLoop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
        clock_module.time = saved  # type: ignore[assignment]
    return seen


def one_call(command: str, *, then: tuple[float, str] | None = None, wait: float = 8.0) -> Script:
    """A script: `command` as a bgapi, `then` = (after, api command) meanwhile."""

    async def script(switch: Switch, start: Start) -> None:
        start(switch, "job-1", command)
        if then is not None:
            await switch.clock.sleep(then[0])
            await switch.api(then[1])
        await switch.clock.sleep(wait)

    return script


CASES = {
    "answered, the waiting app": originate(A, ",sim_answer_after=0.5,sim_dtmf=1@0.5"),
    "answered at once": originate(A, ",sim_answer_after=0", app="&park()"),
    "busy": originate(A, user="1002"),
    "rejected": originate(A, user="1003"),
    "unallocated": originate(A, ",callee_mode=nonsense"),
    "unregistered": originate(A, ",sim_mode=unregistered"),
    "unregistered loopback": (
        f"originate {{origination_uuid={A},sim_mode=unregistered}}"
        "loopback/1001/confguard_callee &park()"
    ),
    "no route": f"originate {{origination_uuid={A}}}loopback/1001/elsewhere &park()",
    "absent": originate(A, user="4242"),
    "usage": "originate",
    "no answer": originate(A, ",originate_timeout=2", user="1004"),
    "hung up right after the answer": originate(A, ",sim_hangup_after=0.01", app="&park()"),
    "api_on_originate twice": originate(
        A, f",api_on_originate='sched_hangup +30 {A}',api_on_originate_2='echo hi'"
    ),
    "api_on_originate hangs it up": originate(A, f",api_on_originate='sched_hangup +0 {A}'"),
    "api_on_originate unknown": originate(A, ",api_on_originate='nonsense here'"),
    "api_on_originate an originate": originate(
        A, f",api_on_originate='originate {{origination_uuid={B}}}user/1001 &park()'"
    ),
    "api_on_originate a failing originate": originate(
        A, f",api_on_originate='originate {{origination_uuid={B}}}user/1002 &park()'"
    ),
    "api_on_originate an originate of itself": originate(
        A, f",api_on_originate='originate {{origination_uuid={A}}}user/1001 &park()'"
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bgapi_originate_publishes_what_the_task_did(case: str) -> None:
    script = one_call(CASES[case])
    new = stream(script, Switch.background_job)
    assert any("BACKGROUND_JOB" in text for text in new)
    assert new == stream(script, old_background_job)


KILLS = {
    "killed while ringing": (0.3, f"uuid_kill {A}"),
    "killed before the create": (0.0, f"uuid_kill {A}"),
    "killed while the answer settles": (1.005, f"uuid_kill {A}"),
    "killed after the originate": (1.5, f"uuid_kill {A}"),
    "transferred while ringing": (0.5, f"uuid_transfer {A} 7001 XML default"),
    "shut down while ringing": (0.3, "fsctl shutdown"),
}


@pytest.mark.parametrize("case", sorted(KILLS))
def test_a_bgapi_originate_meddled_with_publishes_what_the_task_did(case: str) -> None:
    script = one_call(originate(A, app="&park()"), then=KILLS[case])
    new = stream(script, Switch.background_job)
    assert new == stream(script, old_background_job)


@pytest.mark.parametrize("time_scale", [1.0, 0.1])
def test_many_bgapi_originates_interleave_as_the_tasks_did(time_scale: float) -> None:
    async def script(switch: Switch, start: Start) -> None:
        for number in range(40):
            user = ("1001", "1002", "1004", "1006", "1000")[number % 5]
            command = originate(
                virtual.call_uuid("b", number), ",originate_timeout=2,sim_dtmf=1@0.02", user=user
            )
            start(switch, f"job-{number}", command)
            await switch.clock.sleep(0.02 if number % 3 else 0.0)
        await switch.clock.sleep(6.0)

    new = stream(script, Switch.background_job, time_scale)
    assert sum("BACKGROUND_JOB" in text for text in new) == 40
    assert new == stream(script, old_background_job, time_scale)


@pytest.mark.parametrize("at", [0.0, 0.01, 0.5, 1.01])
@pytest.mark.parametrize("how", ["restart", "stop"])
def test_a_restart_or_stop_drops_a_bgapi_originate_as_it_did_the_task(at: float, how: str) -> None:
    async def script(switch: Switch, start: Start) -> None:
        start(switch, "job-1", originate(A, app="&park()"))
        start(switch, "job-2", originate(B, ",api_on_originate='originate {}user/1001 &park()'"))
        await switch.clock.sleep(at)
        if how == "restart":
            switch.restart()
        else:
            await switch.stop()
        await switch.clock.sleep(3.0)

    new = stream(script, Switch.background_job)
    assert not any("BACKGROUND_JOB" in text for text in new)
    assert new == stream(script, old_background_job)


def test_a_call_gone_before_its_create_answers_as_the_task_did() -> None:
    async def script(switch: Switch, start: Start) -> None:
        await switch.api("fsctl shutdown")  # it hangs every call up 0.18 s on, at once
        await switch.clock.sleep(0.17)
        start(switch, "job-1", originate(A, app="&park()"))
        await switch.clock.sleep(1.0)

    new = stream(script, Switch.background_job)
    assert new == stream(script, old_background_job)
