"""The control API on its own: request validation and the HTTP error paths, over a real socket."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from confguard.api import (
    ApiError,
    ControlClient,
    ControlServer,
    DaemonUnreachable,
    specs_from_request,
)
from confguard.config import InviteConfig
from confguard.engine import Engine
from confguard.invite import BadInput, JoinTarget


class DownSession:
    """An ESL session that is not connected: the engine must refuse and send nothing."""

    connected = False

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def api(self, command: str) -> str:
        self.sent.append(command)
        return "+OK"

    async def bgapi_start(self, command: str, job_uuid: str) -> None:
        self.sent.append(command)

    async def wait_connected(self, timeout: float) -> bool:
        await asyncio.sleep(timeout)  # the link never comes back
        return False


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[ControlServer, DownSession]]:
    engine = Engine(reconnect_wait=0.2)
    session = DownSession()
    engine.attach(session)  # type: ignore[arg-type]
    control = ControlServer(engine, str(tmp_path / "run" / "confguard.sock"))
    await control.start()
    try:
        yield control, session
    finally:
        await control.stop()


def test_request_defaults_and_overrides() -> None:
    defaults = InviteConfig(timeout=45, key="5", join_mode="dialplan")
    [spec] = specs_from_request({"extensions": ["1000"], "room": "test1"}, defaults)
    assert (spec.timeout, spec.key) == (45, "5")
    assert spec.join == JoinTarget.dialplan("7001", "default")
    [spec] = specs_from_request(
        {"extensions": ["1000"], "room": "test1", "timeout": 10, "join": "inline"}, defaults
    )
    assert spec.timeout == 10 and spec.join == JoinTarget.inline("test1")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"extensions": [], "room": "test1"}, "extensions"),
        ({"extensions": ["1000", "1000"], "room": "test1"}, "extensions"),
        ({"extensions": [str(n) for n in range(101)], "room": "test1"}, "extensions"),
        ({"extensions": ["1000"]}, "room"),
        ({"extensions": ["1000"], "room": "test1", "timeout": "30"}, "timeout"),
        ({"extensions": ["1000"], "room": "test1", "timeout": True}, "timeout"),
        ({"extensions": ["1000"], "room": "test1", "colour": "red"}, "colour"),
        ({"extensions": ["1000"], "room": "test1", "join": "7001"}, "join"),
        ({"extensions": ["1000"], "room": "test1", "variables": {"a": 1}}, "variables"),
        ({"extensions": ["10 00"], "room": "test1"}, "extension"),
    ],
)
def test_request_validation_names_the_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(BadInput) as caught:
        specs_from_request(body, InviteConfig())
    assert caught.value.field == field


async def test_socket_mode_is_0660(server: tuple[ControlServer, DownSession]) -> None:
    control, _ = server
    assert stat.S_IMODE(os.stat(control.path).st_mode) == 0o660


async def test_invite_refused_with_503_when_freeswitch_is_down(
    server: tuple[ControlServer, DownSession],
) -> None:
    control, session = server
    client = ControlClient(control.path)
    with pytest.raises(ApiError) as caught:
        await client.request("POST", "/invites", {"extensions": ["1000"], "room": "test1"})
    assert (caught.value.status, caught.value.kind) == (503, "not_connected")
    assert session.sent == []


async def test_bad_input_is_400_with_the_field(server: tuple[ControlServer, DownSession]) -> None:
    control, session = server
    client = ControlClient(control.path)
    with pytest.raises(ApiError) as caught:
        await client.request("POST", "/invites", {"extensions": ["1000\n"], "room": "test1"})
    assert (caught.value.status, caught.value.error["field"]) == (400, "extension")
    assert session.sent == []


async def test_http_errors(server: tuple[ControlServer, DownSession]) -> None:
    control, _ = server
    client = ControlClient(control.path)
    for method, target, status in [
        ("GET", "/nowhere", 404),
        ("GET", "/invites/0123456789ab", 404),
        ("PUT", "/invites", 405),
    ]:
        with pytest.raises(ApiError) as caught:
            await client.request(method, target)
        assert caught.value.status == status
    assert await client.request("GET", "/invites") == {"invites": []}
    reader, writer = await asyncio.open_unix_connection(control.path)
    body = b"{not json"
    writer.write(
        b"POST /invites HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )
    await writer.drain()
    response = await reader.read()
    writer.close()
    assert response.startswith(b"HTTP/1.1 400 ")
    assert b"bad_json" in response


async def test_a_second_server_on_the_same_socket_is_refused(
    server: tuple[ControlServer, DownSession],
) -> None:
    control, _ = server
    other = ControlServer(control.engine, control.path)
    with pytest.raises(OSError, match="already listening"):
        await other.start()


async def test_stale_socket_file_is_replaced_and_absent_daemon_reported(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    client = ControlClient(str(path))
    with pytest.raises(DaemonUnreachable):
        await client.request("GET", "/status")
    import socket

    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on, as a crashed daemon leaves it
    engine = Engine()
    engine.attach(DownSession())  # type: ignore[arg-type]
    control = ControlServer(engine, str(path))
    await control.start()
    try:
        status = await ControlClient(str(path)).request("GET", "/status")
        assert status == {"invites": [], "members": []}
    finally:
        await control.stop()
    assert not path.exists()
