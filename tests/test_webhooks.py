"""Status webhooks: configuration, signatures, and delivery from the journal's outbox to a real
HTTP receiver on 127.0.0.1 (tests/webhook_receiver.py) -- in order, at least once, across a
receiver that is down, one that answers 500, a redirect, and a daemon killed and restarted.

The delivery scenarios run against the simulator; `test_delivered_in_order_with_content` runs
against the real FreeSWITCH too (`realfs`).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from peers import EslLink, Peer, daemon_overrides
from structlog.testing import capture_logs
from test_e2e import ROOM, ServeProcess, run_cli
from webhook_receiver import Receiver, check_lanes, outcome_delivered

from confguard import config as config_module
from confguard.config import ConfigError, load_config, render_config
from confguard.daemon import Daemon, check_webhooks
from confguard.webhooks import (
    BadUrl,
    SignatureError,
    check_url,
    signature,
    verify_signature,
)

REPO = Path(__file__).resolve().parent.parent
SECRET = "whsec-test-0123456789abcdef-not-in-logs"


@pytest.fixture(autouse=True)
def no_system_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "webhook-secret"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------- URLs and configuration


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/x", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("javascript:alert(1)", "scheme"),
        ("example.com/hook", "scheme"),
        ("https://user:pw@example.com/hook", "user:password"),
        ("https://:pw@example.com/hook", "user:password"),
        ("https://example.com/a b", "space"),
        ("https://example.com/\nInjected: 1", "control"),
        ("https://example.com/\x00", "control"),
        ("https://exämple.com/", "non-ASCII"),
        ("https://example.com/x#frag", "fragment"),
        ("https:///nohost", "no host"),
        ("https://exa_mple.com/", "host name"),
        ("https://example.com:99999/", "not a URL"),
        ("https://example.com:0/", "port 0"),
        ("https://example.com/{x}", "not allowed in a URL"),
        ("http://[::1/", "not a URL"),
        ("", "empty"),
        ("https://" + "a" * 2050, "longer"),
    ],
)
def test_bad_urls_are_refused_with_the_reason(url: str, why: str) -> None:
    with pytest.raises(BadUrl, match=why):
        check_url(url)


def test_good_urls_are_normalised() -> None:
    assert check_url("HTTPS://Hooks.Example.COM:8443/a/b?x=1") == \
        "https://hooks.example.com:8443/a/b?x=1"
    assert check_url("http://127.0.0.1") == "http://127.0.0.1/"
    assert check_url("http://[::1]:8080/h") == "http://[::1]:8080/h"


def test_config_urls_secret_from_a_file_and_render(tmp_path: Path, secret_file: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[webhooks]\nurls = ["https://pbx.example/hook", "http://127.0.0.1:9000/h"]\n'
        f'secret_file = "{secret_file}"\nretry_max = 60.0\n'
    )
    config = load_config(str(path), env={}, euid=1000)
    hooks = config.webhooks
    assert hooks.urls == ("https://pbx.example/hook", "http://127.0.0.1:9000/h")
    assert hooks.secret is not None and hooks.secret.reveal() == SECRET
    assert (hooks.retry_initial, hooks.retry_max, hooks.give_up_after) == (1.0, 60.0, 86400.0)
    assert config.sources["webhooks.secret"] == f"secret_file:{secret_file}"
    text = render_config(config)
    assert SECRET not in text and SECRET not in repr(config)
    lines = {line.split("=")[0].strip(): line for line in text.split("[webhooks]")[1].splitlines()
             if "=" in line}
    assert '"<redacted>"' in lines["secret"] and "# secret_file:" in lines["secret"]
    assert '["https://pbx.example/hook", "http://127.0.0.1:9000/h"]' in lines["urls"]
    assert f"# file:{path}" in lines["urls"] and "# default" in lines["give_up_after"]
    check_webhooks(config)  # urls and a secret: the daemon may start


def test_config_urls_from_the_environment_and_bad_ones(secret_file: Path) -> None:
    env = {"CONFGUARD_WEBHOOKS_URLS": "https://a.example/h, https://b.example/h",
           "CONFGUARD_WEBHOOKS_SECRET_FILE": str(secret_file)}
    assert load_config(env=env, euid=1000).webhooks.urls == (
        "https://a.example/h", "https://b.example/h")
    with pytest.raises(ConfigError, match=r"webhooks\.urls.*scheme 'ftp'"):
        load_config(env={**env, "CONFGUARD_WEBHOOKS_URLS": "ftp://a.example/h"}, euid=1000)
    with pytest.raises(ConfigError, match=r"webhooks\.urls.*user:password"):
        load_config(env={**env, "CONFGUARD_WEBHOOKS_URLS": f"https://x:{SECRET}@a.example/"},
                    euid=1000)
    with pytest.raises(ConfigError, match=r"webhooks\.retry_initial"):
        load_config(env={**env, "CONFGUARD_WEBHOOKS_RETRY_INITIAL": "10",
                         "CONFGUARD_WEBHOOKS_RETRY_MAX": "5"}, euid=1000)


def test_secret_from_the_systemd_credential(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "confguard-webhook").write_text(SECRET + "\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds), "CONFGUARD_WEBHOOKS_URLS": "https://a.example/"}
    config = load_config(env=env, euid=1000)
    assert config.webhooks.secret is not None and config.webhooks.secret.reveal() == SECRET
    assert config.sources["webhooks.secret"] == f"credential:{creds / 'confguard-webhook'}"
    # Another name, given explicitly
    (creds / "hooks").write_text("another-secret-of-enough-length\n")
    named = load_config(env={**env, "CONFGUARD_WEBHOOKS_SECRET_CREDENTIAL": "hooks"}, euid=1000)
    assert named.webhooks.secret is not None
    assert named.webhooks.secret.reveal() == "another-secret-of-enough-length"
    # Under systemd a credential named explicitly must exist; the default one may be absent,
    # and the CLI (no $CREDENTIALS_DIRECTORY) loads the same file without any
    with pytest.raises(ConfigError, match=r"webhooks\.secret_credential.*no credential 'nope'"):
        load_config(env={**env, "CONFGUARD_WEBHOOKS_SECRET_CREDENTIAL": "nope"}, euid=1000)
    outside = {"CONFGUARD_WEBHOOKS_URLS": "https://a.example/",
               "CONFGUARD_WEBHOOKS_SECRET_CREDENTIAL": "nope"}
    assert load_config(env=outside, euid=1000).webhooks.secret is None
    with pytest.raises(ConfigError, match=r"webhooks\.secret_credential"):
        load_config(env={**env, "CONFGUARD_WEBHOOKS_SECRET_CREDENTIAL": "../esl-password"},
                    euid=1000)
    bare = load_config(env={"CONFGUARD_WEBHOOKS_URLS": "https://a.example/"}, euid=1000)
    assert bare.webhooks.secret is None  # the CLI loads this too: not an error here
    with pytest.raises(ConfigError, match="need a secret"):
        check_webhooks(bare)  # ... but the daemon refuses to start


def test_the_secret_is_never_a_value_and_never_shown(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[webhooks]\nsecret = "{SECRET}"\n')
    with pytest.raises(ConfigError, match="secret is not accepted here") as refused:
        load_config(str(path), env={}, euid=1000)
    assert SECRET not in str(refused.value)
    with pytest.raises(ConfigError, match="secret is not accepted"):
        load_config(env={"CONFGUARD_WEBHOOKS_SECRET": SECRET}, euid=1000)
    short = tmp_path / "short"
    short.write_text("tiny-secret\n")
    with pytest.raises(ConfigError, match="too short") as bad:
        load_config(env={"CONFGUARD_WEBHOOKS_SECRET_FILE": str(short)}, euid=1000)
    assert "tiny-secret" not in str(bad.value)


def test_signature_verifies_and_refuses_tampering() -> None:
    body = b'{"invite_id":"abc","seq":0}'
    header = signature(SECRET, 1_700_000_000, body)
    assert header.startswith("t=1700000000,v1=")
    assert verify_signature(SECRET, header, body, now=1_700_000_010) == 1_700_000_000
    with pytest.raises(SignatureError, match="no v1 signature matches"):
        verify_signature(SECRET, header, body + b" ", now=1_700_000_010)
    with pytest.raises(SignatureError, match="no v1 signature matches"):
        verify_signature("another-secret-entirely", header, body, now=1_700_000_010)
    with pytest.raises(SignatureError, match="tolerance"):
        verify_signature(SECRET, header, body, now=1_700_000_000 + 301)
    forged_time = header.replace("t=1700000000", "t=1700000100")
    with pytest.raises(SignatureError, match="no v1 signature matches"):
        verify_signature(SECRET, forged_time, body, now=1_700_000_100)
    for broken in (None, "", "v1=abc", "t=x,v1=" + "0" * 64, "garbage"):
        with pytest.raises(SignatureError):
            verify_signature(SECRET, broken, body, now=1_700_000_000)
    rotated = f"{header},v1={'0' * 64}"  # several v1: any one matching is enough
    assert verify_signature(SECRET, rotated, body, now=1_700_000_000) == 1_700_000_000


def test_cli_refuses_a_bad_notify_url_before_anything_is_sent(tmp_path: Path) -> None:
    socket = str(tmp_path / "nobody.sock")  # no daemon: a good URL would exit 3, not 2
    for url in ("ftp://example.com/h", "https://u:p@example.com/h", "https://example.com/a b"):
        code = _cli("invite", "1000", "--room", ROOM, "--notify", url, "--socket", socket)
        assert code == 2, url
    assert _cli("invite", "1000", "--room", ROOM, "--notify", "http://127.0.0.1:9/h",
                "--socket", socket) == 3
    assert _cli("invite", "1000", "--room", ROOM, "--notify", "http://127.0.0.1:9/h",
                "--direct", "--esl-port", "9") == 2  # webhooks need the daemon's outbox


def test_the_cli_never_imports_aiohttp(tmp_path: Path) -> None:
    code = (
        "import sys, io\n"
        "from confguard import cli\n"
        f"rc = cli.main(['invite', '1000', '--room', 'r', '--notify', 'http://127.0.0.1:9/h',"
        f" '--socket', {str(tmp_path / 'none.sock')!r}], io.StringIO())\n"
        "print(rc, sorted(m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'yarl')"
        " or m == 'confguard.webhook_delivery'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert result.stdout.strip() == "3 []", result.stdout + result.stderr


def _cli(*argv: str) -> int:
    import io

    from confguard import cli

    return cli.main(list(argv), io.StringIO())


# ------------------------------------------------------------------------ delivery: helpers


@pytest.fixture
async def link_to(sim_peer: Peer) -> AsyncIterator[EslLink]:
    relay = EslLink(sim_peer)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver(SECRET) as running:
        yield running


class HookedDaemon:
    """A daemon in the test's loop with webhooks to the receiver (its journal kept)."""

    def __init__(self, peer: Peer, link: EslLink, tmp_path: Path, secret_file: Path,
                 urls: list[str], **webhooks: Any) -> None:
        self.overrides = {
            **daemon_overrides(peer, link, tmp_path),
            "webhooks.urls": urls,
            "webhooks.secret_file": str(secret_file),
            "webhooks.retry_initial": 0.1,
            "webhooks.retry_max": 0.4,
            **{f"webhooks.{k}": v for k, v in webhooks.items()},
        }
        self.daemon: Daemon | None = None
        self.task: asyncio.Task[int] | None = None

    async def __aenter__(self) -> Daemon:
        config = load_config(None, env={}, overrides=self.overrides)
        self.daemon = Daemon(config, handle_signals=False)
        self.task = asyncio.create_task(self.daemon.run())
        await asyncio.wait_for(self.daemon.linked.wait(), 15)
        return self.daemon

    async def __aexit__(self, *exc: object) -> None:
        assert self.daemon is not None and self.task is not None
        self.daemon.stopping.set()
        await asyncio.wait_for(self.task, 10)


async def invite_json(daemon: Daemon, *argv: str) -> tuple[int, list[dict[str, Any]]]:
    socket = str(daemon.config.api.socket)
    status, out = await run_cli("invite", *argv, "--json", "--socket", socket)
    return status, [json.loads(line) for line in out.splitlines()]


async def drained(daemon: Daemon) -> None:
    """Until the outbox is empty: a receiver records a request before the daemon reads its
    answer and deletes the row."""
    for _ in range(250):
        if daemon.webhooks.queue_stats()[0] == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"outbox not drained: {daemon.webhooks.queue_stats()}")


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics:\n{text}")


# ------------------------------------------------------------------- delivery: the scenarios


async def test_delivered_in_order_with_content(  # type: ignore[no-untyped-def]
    peer, tmp_path, secret_file, receiver
) -> None:
    """An invite that joins: every update, in order, to the configured URL and to the invite's
    own --notify URL, each signed, with the fields a receiver needs. (sim and real switch)"""
    link = EslLink(peer)
    await link.start()
    try:
        async with HookedDaemon(peer, link, tmp_path, secret_file, [receiver.url()]) as daemon:
            status, updates = await invite_json(
                daemon, "1000", "--room", ROOM, "--timeout", "10",
                "--notify", receiver.url("/mine"),
            )
            assert status == 0 and updates[-1]["outcome"] == "joined", updates
            invite_id = updates[0]["invite_id"]
            for path in ("/hook", "/mine"):
                await receiver.wait_until(
                    lambda p=path: outcome_delivered(receiver, invite_id, p), 10)
            await drained(daemon)
            metrics = daemon.metrics.render().decode()
    finally:
        await link.stop()
    lanes = check_lanes(receiver.hits)
    assert set(lanes) == {("/hook", invite_id), ("/mine", invite_id)}
    for path in ("/hook", "/mine"):
        got = receiver.delivered(path)
        # one event per update the CLI saw, same order, same states
        assert [(b["seq"], b["state"], b.get("outcome")) for b in got] == [
            (u["seq"], u["state"], u.get("outcome")) for u in updates]
        assert all(h.attempt == 1 for h in receiver.hits)  # no retry was needed
    first, last = receiver.delivered()[0], receiver.delivered()[-1]
    assert first["type"] == "invite.state" and first["state"] == "placing"
    assert last["type"] == "invite.outcome" and last["outcome"] == "joined"
    assert last["state"] == "ended" and last["previous"] == updates[-1]["previous"]
    for body in receiver.delivered():
        assert body["uuid"] == updates[0]["uuid"] and body["ext"] == "1000"
        assert body["room"] == ROOM and body["event_id"] == f"{invite_id}-{body['seq']}"
    timings = last["timings"]
    assert timings["started_at"] <= timings["answered_at"] <= timings["key_at"]
    assert timings["key_at"] <= timings["joined_at"] <= timings["ended_at"]
    assert timings["elapsed_ms"] == updates[-1]["elapsed_ms"]
    assert {h.event_id for h in receiver.hits} == {b["event_id"] for b in receiver.delivered()}
    assert metric(metrics, "confguard_webhooks_delivered_total") == 2 * len(updates)
    assert metric(metrics, "confguard_webhooks_queue_depth") == 0


async def test_receiver_down_then_up_loses_nothing(  # type: ignore[no-untyped-def]
    sim_peer, link_to, tmp_path, secret_file, receiver
) -> None:
    await receiver.stop()  # its port refuses connections from now on
    async with HookedDaemon(sim_peer, link_to, tmp_path, secret_file, [receiver.url()]) as daemon:
        results = await asyncio.gather(*(
            invite_json(daemon, ext, "--room", ROOM, "--timeout", "10")
            for ext in ("1000", "1005", "1003")
        ))
        assert [updates[-1]["outcome"] for _, updates in results] == [
            "joined", "joined", "rejected"]
        total = sum(len(updates) for _, updates in results)
        await asyncio.sleep(1.5)  # several retries against the closed port
        down = daemon.metrics.render().decode()
        await receiver.start()  # up again, same port
        for _, updates in results:
            await receiver.wait_until(
                lambda u=updates: outcome_delivered(receiver, u[0]["invite_id"]), 10)
        await drained(daemon)
        up = daemon.metrics.render().decode()
    assert metric(down, "confguard_webhooks_queue_depth") == total
    assert metric(down, "confguard_webhooks_oldest_undelivered_age_seconds") >= 1.0
    assert metric(down, 'confguard_webhooks_failed_total{kind="attempt"}') >= 3
    assert metric(down, "confguard_webhooks_delivered_total") == 0
    lanes = check_lanes(receiver.hits)
    for _, updates in results:
        assert lanes[("/hook", updates[0]["invite_id"])] == [u["seq"] for u in updates]
    assert metric(up, "confguard_webhooks_delivered_total") == total
    assert metric(up, "confguard_webhooks_queue_depth") == 0
    assert metric(up, "confguard_webhooks_oldest_undelivered_age_seconds") == 0
    assert metric(up, 'confguard_webhooks_failed_total{kind="given_up"}') == 0


async def test_a_500_is_retried_with_the_same_seq(  # type: ignore[no-untyped-def]
    sim_peer, link_to, tmp_path, secret_file, receiver
) -> None:
    answers = iter([500, 500, 503])
    receiver.policy = lambda hit: next(answers, 200)
    async with HookedDaemon(sim_peer, link_to, tmp_path, secret_file, [receiver.url()]) as daemon:
        with capture_logs() as logs:
            status, updates = await invite_json(daemon, "1000", "--room", ROOM, "--timeout", "10")
            await receiver.wait_until(
                lambda: outcome_delivered(receiver, updates[0]["invite_id"]), 10)
        await drained(daemon)
        metrics = daemon.metrics.render().decode()
    assert status == 0
    lanes = check_lanes(receiver.hits)  # duplicates only with the same seq and body
    assert lanes[("/hook", updates[0]["invite_id"])] == [u["seq"] for u in updates]
    assert [h.status for h in receiver.hits[:4]] == [500, 500, 503, 200]
    assert [h.attempt for h in receiver.hits[:4]] == [1, 2, 3, 4]
    assert {h.body["seq"] for h in receiver.hits[:4]} == {0}  # the head waited, nothing passed it
    assert len(receiver.hits) == len(updates) + 3
    failed = [e for e in logs if e["event"] == "webhook.attempt_failed"]
    assert [e["error"] for e in failed] == ["HTTP 500", "HTTP 500", "HTTP 503"]
    assert metric(metrics, 'confguard_webhooks_failed_total{kind="attempt"}') == 3
    assert metric(metrics, "confguard_webhooks_delivered_total") == len(updates)


async def test_a_redirect_is_never_followed(  # type: ignore[no-untyped-def]
    sim_peer, link_to, tmp_path, secret_file, receiver
) -> None:
    redirects = iter([307, 302])
    receiver.policy = lambda hit: (
        (code, {"Location": receiver.url("/elsewhere")})
        if (code := next(redirects, None)) is not None else 200
    )
    async with HookedDaemon(sim_peer, link_to, tmp_path, secret_file, [receiver.url()]) as daemon:
        with capture_logs() as logs:
            status, updates = await invite_json(daemon, "1000", "--room", ROOM, "--timeout", "10")
            await receiver.wait_until(
                lambda: outcome_delivered(receiver, updates[0]["invite_id"]), 10)
    assert status == 0
    assert [h.path for h in receiver.hits if h.path != "/hook"] == []  # never went elsewhere
    assert [h.status for h in receiver.hits[:3]] == [307, 302, 200]
    check_lanes(receiver.hits)
    failed = [e["error"] for e in logs if e["event"] == "webhook.attempt_failed"]
    assert len(failed) == 2 and all("redirect" in e and "not followed" in e for e in failed)


async def test_given_up_after_the_limit_and_the_lane_goes_on(  # type: ignore[no-untyped-def]
    sim_peer, link_to, tmp_path, secret_file, receiver
) -> None:
    """give_up_after 1 s and a receiver that fails for 3 s: the first events are dropped (logged,
    counted), the later ones still come, in order."""
    began = time.monotonic()
    receiver.policy = lambda hit: 500 if time.monotonic() - began < 3.0 else 200
    async with HookedDaemon(sim_peer, link_to, tmp_path, secret_file, [receiver.url()],
                            give_up_after=1.0) as daemon:
        with capture_logs() as logs:
            status, updates = await invite_json(daemon, "1001", "--room", ROOM,
                                                "--timeout", "60", "--no-wait")
            assert status == 0
            run = daemon.engine.get(updates[0]["invite_id"])
            for _ in range(100):
                if str(run.machine.state) == "waiting_key":
                    break
                await asyncio.sleep(0.05)
            await receiver.wait_until(lambda: time.monotonic() - began > 3.2, 5)
            daemon.engine.cancel(run.invite_id)  # an event after the outage: delivered
            await receiver.wait_until(
                lambda: outcome_delivered(receiver, run.invite_id), 10)
        await drained(daemon)
        metrics = daemon.metrics.render().decode()
    given_up = [e for e in logs if e["event"] == "webhook.given_up"]
    assert given_up and all(e["age_s"] >= 1.0 for e in given_up)
    dropped = {e["seq"] for e in given_up}
    delivered = [b["seq"] for b in receiver.delivered()]
    assert delivered == sorted(delivered) and not dropped & set(delivered)
    assert sorted(dropped | set(delivered)) == list(range(max(delivered) + 1))  # no other gap
    assert receiver.delivered()[-1]["outcome"] == "cancelled"
    assert metric(metrics, 'confguard_webhooks_failed_total{kind="given_up"}') == len(dropped)


async def test_notify_needs_a_secret_and_a_good_url(  # type: ignore[no-untyped-def]
    sim_peer, link_to, tmp_path
) -> None:
    from confguard.api import ApiError, ControlClient

    config = load_config(None, env={}, overrides=daemon_overrides(sim_peer, link_to, tmp_path))
    daemon = Daemon(config, handle_signals=False)
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.linked.wait(), 15)
        client = ControlClient(str(config.api.socket))
        for notify, reason in (("http://127.0.0.1:9/h", "no webhook secret"),
                               ("gopher://x/", "scheme"), (["http://a/", 5], "a URL or a list")):
            with pytest.raises(ApiError) as refused:
                await client.request("POST", "/invites", {
                    "extensions": ["1000"], "room": ROOM, "notify": notify})
            assert refused.value.status == 400 and refused.value.error["field"] == "notify"
            assert reason in refused.value.error["reason"]
        assert await sim_peer.channel_count() == 0  # nothing reached the switch
    finally:
        daemon.stopping.set()
        await asyncio.wait_for(task, 10)


async def test_killed_daemon_resumes_from_the_outbox(  # type: ignore[no-untyped-def]
    sim_peer, link_to, tmp_path, secret_file, receiver
) -> None:
    """`confguard serve` as a process, the receiver down: one invite ends, another is still
    waiting for its key; SIGKILL; the receiver comes back; a new daemon delivers every event of
    both, in order, and the adopted invite's sequence goes on from where it was."""
    await receiver.stop()
    env = {
        "CONFGUARD_ESL_HOST": "127.0.0.1",
        "CONFGUARD_ESL_PORT": str(link_to.port),
        "CONFGUARD_ESL_PASSWORD_FILE": str(sim_peer.password_file),
        "CONFGUARD_WEBHOOKS_URLS": receiver.url(),
        "CONFGUARD_WEBHOOKS_SECRET_FILE": str(secret_file),
        "CONFGUARD_WEBHOOKS_RETRY_INITIAL": "0.1",
        "CONFGUARD_WEBHOOKS_RETRY_MAX": "0.3",
    }
    serve = ServeProcess(env, tmp_path)
    await serve.start()
    try:
        code, out = await run_cli("invite", "1000", "--room", ROOM, "--timeout", "10", "--json",
                                  "--socket", serve.socket)
        assert code == 0, out
        joined = [json.loads(line) for line in out.splitlines()]
        code, out = await run_cli("invite", "1001", "--room", ROOM, "--timeout", "300",
                                  "--no-wait", "--json", "--socket", serve.socket)
        assert code == 0, out
        waiting = json.loads(out)
        for _ in range(200):
            _, report = await run_cli("status", "--json", "--socket", serve.socket)
            if [r["state"] for r in json.loads(report)["invites"]] == ["waiting_key"]:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # a few failed attempts
        serve.kill()
        await receiver.start()
        await asyncio.sleep(0.5)
        assert receiver.hits == []  # nobody delivers while no daemon runs
        await serve.start()
        await receiver.wait_until(lambda: outcome_delivered(receiver, joined[0]["invite_id"]), 10)
        await receiver.wait_until(
            lambda: any(b["invite_id"] == waiting["invite_id"] and b["state"] == "waiting_key"
                        for b in receiver.delivered()), 10)
        for _ in range(200):  # adopted by the new daemon
            _, report = await run_cli("status", "--json", "--socket", serve.socket)
            if [r["invite_id"] for r in json.loads(report)["invites"]] == [waiting["invite_id"]]:
                break
            await asyncio.sleep(0.05)
        code, _ = await run_cli("cancel", waiting["invite_id"], "--socket", serve.socket)
        assert code == 0
        await receiver.wait_until(lambda: outcome_delivered(receiver, waiting["invite_id"]), 10)
    finally:
        serve.stop()
    lanes = check_lanes(receiver.hits)
    assert lanes[("/hook", joined[0]["invite_id"])] == [u["seq"] for u in joined]
    adopted = [b for b in receiver.delivered() if b["invite_id"] == waiting["invite_id"]]
    states = [b["state"] for b in adopted]
    assert states[:3] == ["placing", "ringing", "waiting_key"], states
    assert adopted[-1]["outcome"] == "cancelled"
    # The second daemon's events (the adoption, the cancel) follow the first one's: seq goes on
    # (check_lanes: 0..n-1, no gap, one body per seq) although its engine began again at 0.
    assert adopted[-1]["seq"] >= 3 and adopted[-1]["seq"] == len(adopted) - 1
    log = serve.log.read_text()
    assert "webhook.outbox_loaded" in log and SECRET not in log


async def test_one_receiver_down_does_not_hold_back_another(  # type: ignore[no-untyped-def]
    sim_peer, link_to, tmp_path, secret_file, receiver
) -> None:
    other = Receiver(SECRET)
    await other.start()
    await other.stop()  # down from the start
    async with HookedDaemon(sim_peer, link_to, tmp_path, secret_file,
                            [receiver.url(), other.url()]) as daemon:
        status, updates = await invite_json(daemon, "1000", "--room", ROOM, "--timeout", "10")
        invite_id = updates[0]["invite_id"]
        await receiver.wait_until(lambda: outcome_delivered(receiver, invite_id), 10)
        for _ in range(100):  # the last 200 of /hook deletes its row a moment after the hit
            if daemon.webhooks.queue_stats()[0] == len(updates):
                break
            await asyncio.sleep(0.02)
        assert daemon.webhooks.queue_stats()[0] == len(updates)  # every one, for the other URL
        await other.start()
        try:
            await other.wait_until(lambda: outcome_delivered(other, invite_id), 10)
        finally:
            await other.stop()
    assert status == 0
    assert check_lanes(receiver.hits) == check_lanes(other.hits) == {
        ("/hook", invite_id): [u["seq"] for u in updates]}
    assert [h.raw for h in receiver.hits] == [h.raw for h in other.hits]  # the same events


def test_an_old_journal_gains_the_outbox(tmp_path: Path) -> None:
    import sqlite3

    from confguard import journal as journal_module
    from confguard.journal import SCHEMA_VERSION, Journal

    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(journal_module._SCHEMA)
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    with Journal(path) as journal:
        tables = {r[0] for r in journal.read_rows("SELECT name FROM sqlite_master")}
        assert {"webhook_outbox", "webhook_invites", "invites"} <= tables
        assert journal.read_rows("PRAGMA user_version")[0][0] == SCHEMA_VERSION >= 2
        ids = journal.write_rows([(
            "INSERT INTO webhook_outbox (invite_id, seq, url, event_id, body, created_at, "
            "next_attempt_at) VALUES ('x', 0, 'http://127.0.0.1/', 'x-0', '{}', 1, 1)", ())])
        assert ids == [1]


def test_an_invites_notify_urls_survive_the_journal() -> None:
    """A restarted daemon adopts an invite with its own --notify URLs (the journal's spec), and
    a tampered one is refused like any bad input."""
    from types import SimpleNamespace

    from confguard.engine import spec_from_journal, spec_to_journal
    from confguard.invite import BadInput, InviteSpec

    spec = InviteSpec(extension="1000", room=ROOM, timeout=30,
                      notify=("https://a.example/h", "http://127.0.0.1:9/x"))
    saved = json.loads(json.dumps(spec_to_journal(spec)))
    row = SimpleNamespace(detail={"spec": saved}, ext="1000", room=ROOM, timeout=30)
    assert spec_from_journal(row).notify == spec.notify
    saved["notify"] = ["https://a.example/h\r\nX: 1"]
    with pytest.raises(BadInput, match="notify"):
        spec_from_journal(row)
    assert InviteSpec(extension="1000", room=ROOM, timeout=30).notify == ()


def test_a_joined_members_leaving_is_the_next_event_after_the_outcome(
    tmp_path: Path, secret_file: Path
) -> None:
    """The room's `state: left` update (confguard.members) comes after a joined invite's
    outcome: it continues the invite's sequence (never seq 0 again, whose event id a receiver
    has already seen), as `invite.left` with the reason, cause and moment; the outcome of an
    invite that did not join ends its sequence."""
    from types import SimpleNamespace

    from confguard.invite import InviteSpec
    from confguard.journal import Journal
    from confguard.webhook_delivery import WebhookDelivery

    config = load_config(None, env={}, overrides={
        "webhooks.urls": ["http://127.0.0.1:9/hook"], "webhooks.secret_file": str(secret_file)})
    with Journal(tmp_path / "j.sqlite3") as journal:
        delivery = WebhookDelivery(journal, config.webhooks)

        def updates(invite_id: str, outcome: str) -> list[dict[str, Any]]:
            states = ["placing", "ringing", "waiting_key", "cancelling", "joining", "joined"]
            made = [{"seq": n, "invite_id": invite_id, "state": state,
                     "previous": states[n - 1] if n else "placing", "ts": 100.0 + n}
                    for n, state in enumerate(states)]
            made.append({"seq": len(made), "invite_id": invite_id, "state": "ended",
                         "previous": "joined", "outcome": outcome, "ts": 110.0})
            return made

        run = SimpleNamespace(spec=InviteSpec(extension="1000", room=ROOM, timeout=30),
                              started_wall=99.0, machine=SimpleNamespace(adopted=False))
        for update in updates("aaaaaaaaaaaa", "joined"):
            delivery.observe(run, update)
        delivery.observe(run, {"seq": 7, "invite_id": "aaaaaaaaaaaa", "state": "left",
                               "previous": "ended", "outcome": "joined",
                               "left_reason": "max_duration", "left_cause": "ALLOTTED_TIMEOUT",
                               "left_at": 113.0, "in_room_s": 3.0, "ts": 113.0})
        for update in updates("bbbbbbbbbbbb", "cancelled"):
            delivery.observe(run, update)
        # a left whose sequence nobody kept (the outcome sent by a confguard without left
        # events): not sent, rather than as seq 0 again
        with capture_logs() as logs:
            delivery.observe(run, {"invite_id": "cccccccccccc", "state": "left",
                                   "outcome": "joined", "left_reason": "hung_up", "ts": 120.0})
        assert [e["event"] for e in logs] == ["webhook.left_not_sent"]
        rows = journal.read_rows("SELECT invite_id, seq, event_id, body FROM webhook_outbox "
                                 "ORDER BY id")
        left_over = journal.read_rows("SELECT invite_id FROM webhook_invites")
    bodies = [json.loads(r["body"]) for r in rows if r["invite_id"] == "aaaaaaaaaaaa"]
    assert [b["seq"] for b in bodies] == list(range(8))
    assert len({r["event_id"] for r in rows}) == len(rows)  # no event id twice
    assert [b["type"] for b in bodies[-2:]] == ["invite.outcome", "invite.left"]
    left = bodies[-1]
    assert (left["state"], left["outcome"], left["left_reason"], left["left_cause"],
            left["in_room_s"]) == ("left", "joined", "max_duration", "ALLOTTED_TIMEOUT", 3.0)
    assert left["timings"]["ended_at"] == 110.0 and left["timings"]["left_at"] == 113.0
    assert left["timings"]["joined_at"] == bodies[-2]["timings"]["joined_at"] == 105.0
    assert "left_reason" not in bodies[-2] and "left_at" not in bodies[-2]["timings"]
    assert list(left_over) == []  # both sequences are done: nothing kept


async def test_a_member_adopted_after_a_restart_still_sends_its_left_event(  # type: ignore[no-untyped-def]
    sim_peer, link_to, tmp_path, secret_file, receiver
) -> None:
    """A joined member's time limit fires while a second daemon runs (the first one stopped
    with the member in the room): that daemon adopts it from the journal and its `invite.left`
    event continues the invite's sequence after the outcome the first one sent."""
    hooked = HookedDaemon(sim_peer, link_to, tmp_path, secret_file, [receiver.url()])
    async with hooked as daemon:
        status, updates = await invite_json(
            daemon, "1000", "--room", ROOM, "--timeout", "10",
            "--max-duration", str(sim_peer.secs(3)))
        assert (status, updates[-1]["outcome"]) == (0, "joined"), updates
        invite_id = updates[0]["invite_id"]
        await receiver.wait_until(lambda: outcome_delivered(receiver, invite_id), 10)
    async with HookedDaemon(sim_peer, link_to, tmp_path, secret_file, [receiver.url()]) as again:
        await receiver.wait_until(lambda: any(
            b.get("type") == "invite.left" for b in receiver.delivered()), 15)
        row = again.journal.get(invite_id)
    lanes = check_lanes(receiver.hits)
    assert lanes[("/hook", invite_id)] == list(range(len(updates) + 1))
    left = receiver.delivered()[-1]
    assert (left["seq"], left["left_reason"], left["state"]) == (
        len(updates), "max_duration", "left"), left
    assert left["timings"]["joined_at"] == receiver.delivered()[-2]["timings"]["joined_at"]
    assert left["timings"]["started_at"] == receiver.delivered()[0]["timings"]["started_at"]
    assert row is not None and row.left_reason == "max_duration"
