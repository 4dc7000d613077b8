"""Tests of the simulated callees: default directory, transcript callee modes, sim_* overrides."""

from __future__ import annotations

import pytest

from confguard.sim.callees import (
    CalleeError,
    CalleeMode,
    CalleeSpec,
    default_directory,
    parse_dtmf_plan,
    resolve_callee,
)


def test_default_directory_matches_contract() -> None:
    users = default_directory()
    assert users["1000"].mode is CalleeMode.ANSWER
    assert users["1000"].answer_after == 1.0
    assert users["1000"].key_presses() == [("1", 2.0)]
    assert users["1001"].key_presses() == [] and users["1001"].hangup_after is None
    assert users["1002"].mode is CalleeMode.BUSY
    assert users["1003"].mode is CalleeMode.REJECT
    assert users["1004"].mode is CalleeMode.NOANSWER
    assert users["1005"].key_presses() == [("2", 1.0), ("1", 2.0)]
    assert users["1006"].hangup_after == 2.0
    assert users["1007"].key_presses() == [("9", 1.0)]
    assert all(users[str(n)] == users["1000"] for n in range(1008, 1020))
    assert "1020" not in users


def test_unknown_user_is_absent() -> None:
    assert resolve_callee(None, "9999", {}) is None
    assert resolve_callee({"42": CalleeSpec()}, "1000", {}) is None


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("busy", CalleeMode.BUSY),
        ("reject", CalleeMode.REJECT),
        ("noanswer", CalleeMode.NOANSWER),
        ("bogus", CalleeMode.UNALLOCATED),
        ("silent", CalleeMode.ANSWER),
    ],
)
def test_transcript_callee_modes(mode: str, expected: CalleeMode) -> None:
    spec = resolve_callee(None, "1000", {"callee_mode": mode})
    assert spec is not None and spec.mode is expected


def test_transcript_press_uses_delay_and_ring() -> None:
    spec = resolve_callee(None, "1001", {"callee_mode": "press1"})
    assert spec is not None
    assert spec.answer_after == 0.0  # callee_ring_ms defaults to 0, as recorded
    assert spec.key_presses() == [("1", 2.0)]  # callee_delay_ms defaults to 2000
    spec = resolve_callee(
        None, "1000", {"callee_mode": "press12", "callee_delay_ms": "500", "callee_ring_ms": "300"}
    )
    assert spec is not None and spec.answer_after == 0.3
    assert [d for d, _ in spec.key_presses()] == ["1", "2"]
    assert spec.key_presses()[0][1] == 0.5
    hangup = resolve_callee(None, "1000", {"callee_mode": "hangup", "callee_delay_ms": "1500"})
    assert hangup is not None and hangup.hangup_after == 1.5


def test_sim_overrides_apply_on_top() -> None:
    spec = resolve_callee(
        None,
        "1001",
        {"sim_answer_after": "0.5", "sim_dtmf": "3@1;45@2.5", "sim_hangup_after": "4"},
    )
    assert spec is not None
    assert spec.answer_after == 0.5
    assert spec.hangup_after == 4.0
    assert [d for d, _ in spec.key_presses()] == ["3", "4", "5"]
    unreg = resolve_callee(None, "1000", {"sim_mode": "unregistered"})
    assert unreg is not None and unreg.mode is CalleeMode.UNREGISTERED


@pytest.mark.parametrize("bad", ["1", "x@1", "1@-2", "1@soon"])
def test_bad_dtmf_plan_is_refused(bad: str) -> None:
    with pytest.raises(CalleeError):
        parse_dtmf_plan(bad)


def test_bad_sim_mode_is_refused() -> None:
    with pytest.raises(CalleeError):
        resolve_callee(None, "1000", {"sim_mode": "explode"})


def test_resolved_specs_are_kept_per_entry_and_overrides() -> None:
    """`resolve_callee` keeps the spec it made for a directory entry and a set of overrides:
    the same overrides give the very same (frozen) spec, any other override value or another
    entry (a directory whose entry was replaced) gives the spec made afresh, and an override
    that cannot be understood raises every time."""
    from confguard.sim.callees import _resolve

    overrides = {"sim_answer_after": "0.5", "sim_dtmf": "1@0.5", "other": "x"}
    first = resolve_callee(None, "1001", overrides)
    assert first is resolve_callee(None, "1001", dict(overrides, other="y"))  # not an override
    assert first == _resolve(default_directory()["1001"], overrides)
    assert first is not None and first.answer_after == 0.5 and first.key_presses() == [("1", 0.5)]
    later = resolve_callee(None, "1001", dict(overrides, sim_dtmf="2@1"))
    assert later is not None and later.key_presses() == [("2", 1.0)]
    assert resolve_callee(None, "1001", dict(overrides, callee_mode="busy")) != first
    users = {"42": CalleeSpec(answer_after=2.0)}
    assert resolve_callee(users, "42", overrides) == replace_after(users["42"], 0.5)
    users["42"] = CalleeSpec(answer_after=3.0, hangup_after=1.0)
    replaced = resolve_callee(users, "42", overrides)
    assert replaced is not None and replaced.hangup_after == 1.0
    for _ in range(2):
        with pytest.raises(CalleeError):
            resolve_callee(None, "1001", dict(overrides, sim_dtmf="x"))


def replace_after(spec: CalleeSpec, seconds: float) -> CalleeSpec:
    from dataclasses import replace

    return replace(spec, answer_after=seconds, dtmf=(("1", 0.5),))


def test_key_presses_are_a_new_list_each_time() -> None:
    spec = CalleeSpec(dtmf=(("12", 1.0), ("3", 0.5)))
    presses = spec.key_presses()
    assert presses == [("3", 0.5), ("1", 1.0), ("2", 1.1)]
    presses.clear()
    assert spec.key_presses() == [("3", 0.5), ("1", 1.0), ("2", 1.1)]
