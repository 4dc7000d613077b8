"""Tests of the simulator server's fan-out of stand-in events (confguard.sim.server.publish)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from confguard.sim import Simulator
from confguard.sim.config import SimConfig
from confguard.sim.events import SimEvent
from tests.test_sim_server import Client, StubSwitch


@pytest.fixture
async def stub_sim() -> AsyncIterator[Simulator]:
    config = SimConfig(host="127.0.0.1", port=0, time_scale=0.01, auth_timeout=25.0)
    simulator = Simulator(config, switch_factory=StubSwitch)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


def stand_in(name: str) -> SimEvent:
    return SimEvent(name, [("Event-Name", name)], unsent=True)


async def test_a_stand_in_is_never_written_and_one_a_client_takes_is_logged(
    stub_sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A stand-in (`unsent`: `EslServer.wants` said no client takes it) reaches no client; if a
    client does take its type after all, the server says so in its log and still writes
    nothing."""
    client = await Client.connect(stub_sim.port)
    host, port = client.writer.get_extra_info("sockname")[:2]  # the server's peer
    await client.command("event plain CHANNEL_ANSWER")
    with caplog.at_level(logging.ERROR, logger="confguard.sim.server"):
        stub_sim.server.publish(stand_in("CHANNEL_EXECUTE"))
        assert not caplog.records
        stub_sim.server.publish(stand_in("CHANNEL_ANSWER"))
        assert [record.getMessage() for record in caplog.records] == [
            f"event CHANNEL_ANSWER was not built but {host}:{port} takes it"
        ]
    stub_sim.server.publish(SimEvent("CHANNEL_ANSWER", [("Event-Name", "CHANNEL_ANSWER")]))
    assert await client.event_names(1) == ["CHANNEL_ANSWER"]
    assert await client.nothing_pending()
    await client.close()
