"""Tests for confguard.metrics: values in the exposition and the loopback HTTP endpoint."""

from __future__ import annotations

import asyncio
from enum import Enum

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from confguard.metrics import Metrics, check_listen_host


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the rendered exposition, keyed by name and sorted labels."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, tuple(sorted(labels.items())))]


def test_initial_series_are_present_and_zero() -> None:
    m = Metrics()
    assert value(m, "confguard_invites_started_total") == 0
    assert value(m, "confguard_invites_finished_total", outcome="timeout") == 0
    assert value(m, "confguard_active_invites", state="waiting_key") == 0
    assert value(m, "confguard_esl_connected") == 0
    assert value(m, "confguard_events_received_total", event="other") == 0


def test_invite_lifecycle_counts() -> None:
    m = Metrics()
    m.invite_started()
    m.invite_started()
    m.state_changed(None, "placing")
    m.state_changed(None, "placing")
    m.state_changed("placing", "ringing")
    assert value(m, "confguard_active_invites", state="placing") == 1
    assert value(m, "confguard_active_invites", state="ringing") == 1
    m.state_changed("ringing", "waiting_key")
    m.state_changed("waiting_key", "ended")
    m.invite_finished("timeout")
    m.state_changed("placing", "ended")
    m.invite_finished("busy")
    m.invite_finished("busy")
    assert value(m, "confguard_invites_started_total") == 2
    assert value(m, "confguard_invites_finished_total", outcome="busy") == 2
    assert value(m, "confguard_invites_finished_total", outcome="timeout") == 1
    assert value(m, "confguard_invites_finished_total", outcome="joined") == 0
    for state in ("placing", "ringing", "waiting_key"):
        assert value(m, "confguard_active_invites", state=state) == 0
    assert ("confguard_active_invites", (("state", "ended"),)) not in samples(m)
    assert m.active_count() == 0


def test_state_counts_never_go_negative_and_accept_enums() -> None:
    class State(str, Enum):  # noqa: UP042 - a plain (str, Enum), as callers may pass
        RINGING = "ringing"
        JOINED = "joined"

    m = Metrics()
    m.state_changed(State.RINGING, State.JOINED)  # ringing was 0: stays 0
    assert value(m, "confguard_active_invites", state="ringing") == 0
    assert value(m, "confguard_active_invites", state="joined") == 1
    assert m.active_count() == 1


def test_esl_state_and_reconnects() -> None:
    m = Metrics()
    m.esl_state(True)
    assert value(m, "confguard_esl_connected") == 1
    m.esl_state(False)
    m.esl_reconnected()
    assert value(m, "confguard_esl_connected") == 0
    m.esl_state(True)
    m.esl_reconnected()
    assert value(m, "confguard_esl_connected") == 1
    assert value(m, "confguard_esl_reconnects_total") == 2


def test_event_labels_are_bounded() -> None:
    m = Metrics()
    m.event_received("CHANNEL_ANSWER")
    m.event_received("CHANNEL_ANSWER")
    m.event_received("conference::maintenance")
    for name in ("PRESENCE_IN", "whatever", "x" * 500):
        m.event_received(name)
    assert value(m, "confguard_events_received_total", event="CHANNEL_ANSWER") == 2
    assert value(m, "confguard_events_received_total", event="conference::maintenance") == 1
    assert value(m, "confguard_events_received_total", event="other") == 3
    labels = {dict(k[1]).get("event") for k in samples(m) if k[0].startswith("confguard_events")}
    assert "PRESENCE_IN" not in labels and "whatever" not in labels


def test_histograms() -> None:
    m = Metrics()
    m.key_to_joined(0.4)
    m.key_to_joined(2.5)
    assert value(m, "confguard_key_to_joined_seconds_count") == 2
    assert value(m, "confguard_key_to_joined_seconds_sum") == pytest.approx(2.9)
    assert value(m, "confguard_key_to_joined_seconds_bucket", le="0.5") == 1
    assert value(m, "confguard_key_to_joined_seconds_bucket", le="3.0") == 2

    # FreeSWITCH fires N-1 .. N+0.5 s after arming: -0.49 s and +0.01 s relative to the deadline
    m.timer_lateness(-0.49)
    m.timer_lateness(0.01)
    m.timer_lateness(-3.0)  # impossible per FreeSWITCH; recorded as 0 (shifted scale)
    name = "confguard_timer_fire_delay_seconds"
    assert value(m, f"{name}_count") == 3
    assert value(m, f"{name}_sum") == pytest.approx(0.51 + 1.01)
    assert value(m, f"{name}_bucket", le="0.25") == 1
    assert value(m, f"{name}_bucket", le="0.75") == 2
    assert value(m, f"{name}_bucket", le="1.25") == 3

    m.command_done("sched_del", 0.003)
    m.command_done("sched_del 7", 0.02)
    m.command_done("frobnicate", 0.5)
    assert value(m, "confguard_command_seconds_count", verb="sched_del") == 2
    assert value(m, "confguard_command_seconds_count", verb="other") == 1
    assert ("confguard_command_seconds_count", (("verb", "frobnicate"),)) not in samples(m)


def test_own_registry_not_the_global_one() -> None:
    a, b = Metrics(), Metrics()  # two instances: no "Duplicated timeseries" error
    a.invite_started()
    assert value(b, "confguard_invites_started_total") == 0
    global_text = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    assert "confguard_" not in global_text


async def http_get(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


async def test_http_endpoint_serves_metrics_on_loopback() -> None:
    m = Metrics()
    m.invite_started()
    m.invite_finished("joined")
    port = await m.start_server("127.0.0.1", 0)
    try:
        assert port and port == m.port
        status, headers, body = await http_get(
            port, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert status == 200
        assert headers["content-type"].startswith("text/plain")
        assert int(headers["content-length"]) == len(body)
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        joined = [s for s in families["confguard_invites_finished"].samples
                  if s.labels.get("outcome") == "joined" and s.name.endswith("_total")]
        assert joined[0].value == 1

        m.invite_started()  # served live, not a snapshot
        _, _, body = await http_get(port, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n")
        assert b"confguard_invites_started_total 2.0" in body

        status, _, body = await http_get(port, b"GET / HTTP/1.1\r\n\r\n")
        assert status == 404
        status, headers, _ = await http_get(port, b"POST /metrics HTTP/1.1\r\n\r\n")
        assert status == 405 and headers["allow"] == "GET, HEAD"
        status, _, _ = await http_get(port, b"garbage\r\n\r\n")
        assert status == 400
        status, headers, body = await http_get(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert status == 200 and body == b"" and int(headers["content-length"]) > 0
        with pytest.raises(RuntimeError):
            await m.start_server("127.0.0.1", 0)
    finally:
        await m.stop()
    assert m.port is None
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    await m.stop()  # idempotent


@pytest.mark.parametrize("host", ["", None, 8021, "0.0.0.0 ", "127.0.0.1:9464", "a b", "-x",
                                  "host/metrics", "x" * 300])
async def test_start_server_refuses_bad_hosts(host: object) -> None:
    m = Metrics()
    with pytest.raises(ValueError, match="IP address or host name"):
        await m.start_server(host, 0)  # type: ignore[arg-type]
    assert m.port is None


@pytest.mark.parametrize("port", [-1, 65536, "9464", True])
async def test_start_server_refuses_bad_ports(port: object) -> None:
    with pytest.raises(ValueError, match="port"):
        await Metrics().start_server("127.0.0.1", port)  # type: ignore[arg-type]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "metrics.example.org"])
def test_check_listen_host_accepts(host: str) -> None:
    assert check_listen_host(host) == host
