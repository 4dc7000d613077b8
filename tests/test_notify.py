"""sd_notify: datagrams to $NOTIFY_SOCKET (path and abstract), watchdog settings, no-op mode."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from confguard.notify import Notifier


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A stand-in for systemd: a bound AF_UNIX datagram socket in a temporary directory."""
    path = str(tmp_path / "notify.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.settimeout(2.0)
    try:
        yield path, receiver
    finally:
        receiver.close()


def receive(receiver: socket.socket) -> list[str]:
    return receiver.recv(4096).decode().split("\n")


def test_ready_status_watchdog_stopping(manager: tuple[str, socket.socket]) -> None:
    path, receiver = manager
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready(status="connected to 127.0.0.1:8021, 0 invites active")
    assert receive(receiver) == ["READY=1", "STATUS=connected to 127.0.0.1:8021, 0 invites active"]
    assert notifier.status("reconnecting to 127.0.0.1:8021\n(attempt 3)")
    assert receive(receiver) == ["STATUS=reconnecting to 127.0.0.1:8021 (attempt 3)"]
    assert notifier.watchdog()
    assert receive(receiver) == ["WATCHDOG=1"]
    assert notifier.stopping()
    assert receive(receiver) == ["STOPPING=1"]
    notifier.close()


def test_reloading_carries_monotonic_usec(manager: tuple[str, socket.socket]) -> None:
    path, receiver = manager
    notifier = Notifier(path)
    assert notifier.reloading()
    first, second = receive(receiver)
    assert first == "RELOADING=1"
    name, _, value = second.partition("=")
    assert name == "MONOTONIC_USEC" and int(value) > 0


def test_abstract_namespace_address() -> None:
    name = f"confguard-test-{os.getpid()}-{id(object())}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + name)
    receiver.settimeout(2.0)
    try:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert receive(receiver) == ["READY=1"]
    finally:
        receiver.close()


def test_no_socket_means_no_op() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert notifier.watchdog_interval() is None


def test_unsupported_address_is_ignored() -> None:
    assert not Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled
    assert not Notifier.from_env({"NOTIFY_SOCKET": "relative/path"}).enabled


def test_vanished_manager_never_raises(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "gone.sock"))
    assert notifier.watchdog() is False
    assert isinstance(notifier.last_error, OSError)


def test_watchdog_interval_from_usec() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"}
    notifier = Notifier.from_env(env)
    assert notifier.watchdog_interval() == 30.0
    assert notifier.watchdog_ping_interval() == 15.0


def test_watchdog_pid_must_be_ours() -> None:
    ours = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_env(ours).watchdog_interval() == 4.0
    other = dict(ours, WATCHDOG_PID=str(os.getpid() + 1))
    assert Notifier.from_env(other).watchdog_interval() is None


@pytest.mark.parametrize("value", ["", "0", "-5", "abc"])
def test_bad_watchdog_usec_means_no_watchdog(value: str) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": value})
    assert notifier.watchdog_interval() is None
