"""confguard.realswitch without running a switch: the configuration it writes, and how it
finds a FreeSWITCH (the environment, the shared tarball checked against SHA256SUMS, or a
one-line explanation). The switch itself is exercised by every `realfs` test."""

from __future__ import annotations

import hashlib
import io
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from confguard.realswitch import (
    ENV_INSTALL,
    FreeSwitchFailed,
    FreeSwitchNotFound,
    RealSwitch,
    find_freeswitch,
    unpack_dist,
)
from confguard.realswitch.conf import SwitchConf, callee_defaults, dial_string, write_conf
from confguard.sim.callees import CalleeMode, CalleeSpec, default_directory, resolve_callee


def test_configuration_listens_on_loopback_with_the_given_port_and_password(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = write_conf(SwitchConf(port=18123, password="s3cret-pw"), tmp_path)
    assert path.stat().st_mode & 0o077 == 0  # it holds the password
    root = ET.parse(path).getroot()
    esl = {p.get("name"): p.get("value") for p in
           root.find(".//configuration[@name='event_socket.conf']").iter("param")}
    assert esl["listen-ip"] == "127.0.0.1"
    assert esl["listen-port"] == "18123"
    assert esl["password"] == "s3cret-pw"
    assert esl["apply-inbound-acl"] == "loopback.auto"
    assert (tmp_path / "scripts" / "callee.lua").is_file()
    sessions = {p.get("name"): p.get("value") for p in
                root.find(".//configuration[@name='switch.conf']").iter("param")}
    assert int(sessions["sessions-per-second"]) > 30  # the stock 30/s throttles the tests


def test_directory_users_carry_the_simulators_behaviours(tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = ET.parse(write_conf(SwitchConf(port=1, password="x"), tmp_path)).getroot()
    users = {u.get("id"): u.find(".//param[@name='dial-string']").get("value")
             for u in root.iter("user")}
    assert set(users) == set(default_directory())
    assert "4242" not in users  # not in the directory: SUBSCRIBER_ABSENT on both peers
    assert users["1000"] == ("{loopback_bowout=false,sim_default_mode=answer,"
                             "sim_default_answer_after=1,sim_default_dtmf=1@2}"
                             "loopback/1000/confguard_callee/XML")
    # The defaults, read back the way callee.lua reads them, are the simulator's own spec.
    for ext, spec in default_directory().items():
        defaults = callee_defaults(spec)
        as_overrides = {k.replace("sim_default_", "sim_"): v for k, v in defaults.items()}
        assert resolve_callee(None, ext, as_overrides) == spec, ext


def test_an_unregistered_user_fails_without_a_channel() -> None:
    assert dial_string("1099", CalleeSpec(mode=CalleeMode.UNREGISTERED)) == (
        "error/user_not_registered"
    )


def test_environment_names_the_install(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    install = tmp_path / "fs"
    (install / "bin").mkdir(parents=True)
    (install / "mod").mkdir()
    (install / "bin" / "freeswitch").write_text("")
    monkeypatch.setenv(ENV_INSTALL, str(install))
    assert find_freeswitch(tmp_path / "repo") == install
    monkeypatch.setenv(ENV_INSTALL, str(tmp_path / "nothing"))
    with pytest.raises(FreeSwitchNotFound, match=ENV_INSTALL):
        find_freeswitch(tmp_path / "repo")


def test_no_freeswitch_says_how_to_provide_one(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv(ENV_INSTALL, raising=False)
    with pytest.raises(FreeSwitchNotFound) as missing:
        find_freeswitch(tmp_path / "lonely-clone")
    message = str(missing.value)
    assert "\n" not in message
    assert ENV_INSTALL in message and "shared/freeswitch/dist" in message


def _dist(tmp_path: Path, digest: str | None = None) -> Path:
    dist = tmp_path / "dist"
    dist.mkdir()
    tarball = dist / "freeswitch-test.tar.xz"
    with tarfile.open(tarball, "w:xz") as archive:
        for name in ("freeswitch/bin/freeswitch", "freeswitch/mod/mod_x.so"):
            info = tarfile.TarInfo(name)
            info.size = 2
            archive.addfile(info, io.BytesIO(b"hi"))
    actual = hashlib.sha256(tarball.read_bytes()).hexdigest()
    (dist / "SHA256SUMS").write_text(f"{digest or actual}  {tarball.name}\n")
    return dist


def test_the_shared_tarball_is_checked_and_unpacked_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    dist = _dist(tmp_path)
    install = unpack_dist(dist, cache=tmp_path / "cache")
    assert (install / "bin" / "freeswitch").read_bytes() == b"hi"
    (dist / "freeswitch-test.tar.xz").unlink()  # cached: the tarball is not read again
    assert unpack_dist(dist, cache=tmp_path / "cache") == install


def test_a_tarball_that_does_not_match_its_checksum_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    dist = _dist(tmp_path, digest="0" * 64)
    with pytest.raises(FreeSwitchFailed, match="does not match SHA256SUMS"):
        unpack_dist(dist, cache=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # refused before anything was unpacked


def test_the_password_stays_out_of_repr(tmp_path) -> None:  # type: ignore[no-untyped-def]
    switch = RealSwitch(tmp_path, tmp_path / "run", password="hidden-pw-123")
    assert "hidden-pw-123" not in repr(switch)
