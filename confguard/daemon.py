"""`confguard serve`: the daemon's life — start-up, main loop, signals, graceful shutdown.

Start-up order: logging, journal, metrics, the control socket (then systemd READY=1), then the ESL
session, retried with backoff until FreeSWITCH answers (invites are refused with 503 meanwhile).
SIGTERM/SIGINT: stop taking invites and exit within 5 s; live calls keep the hangup timers armed
inside FreeSWITCH, so they stay bounded without us, and the journal keeps them for the next start.
SIGHUP: reload the log level, the invite defaults, the idempotency retention and the dial
routes, reopen the log file.
With a webhook secret, status webhooks (`confguard.webhook_delivery`) start before the control
socket (every invite's first update is an event) and resume what the outbox in the journal holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import signal
import time
from collections.abc import Mapping
from typing import Any

import structlog

from confguard import __version__

log = structlog.get_logger("confguard.daemon")

SHUTDOWN_BUDGET_S = 5.0
EXIT_START_FAILED = 1  # the control socket could not be set up (systemd: Restart=on-failure)
STATUS_REFRESH_S = 1.0  # how often STATUS= is recomputed (sent only when it changed)
JOURNAL_BATCH_S = 0.05  # state changes queued this long at most before their one transaction


class GcPauses:
    """The garbage collector's pauses while the daemon runs (``gc.callbacks``): count, total and
    longest per generation, logged with ``daemon.stopped`` (the bench reads them)."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.total = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        self._began = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        pause = time.perf_counter() - self._began
        generation = info.get("generation", 2)
        self.count[generation] += 1
        self.total[generation] += pause
        self.longest[generation] = max(self.longest[generation], pause)

    def start(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def stop(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._callback)

    def summary(self) -> dict[str, Any]:
        return {
            "gc_collections": list(self.count),
            "gc_pause_total_ms": [round(t * 1000, 2) for t in self.total],
            "gc_pause_max_ms": [round(t * 1000, 2) for t in self.longest],
        }


class Daemon:
    """One running confguard service."""

    def __init__(
        self,
        config: Any,
        *,
        config_path: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        handle_signals: bool = True,
    ) -> None:
        self.config = config
        self.handle_signals = handle_signals
        self.config_path = config_path
        self.overrides = dict(overrides or {})
        self.started = time.time()
        self.stopping = asyncio.Event()
        self.listening = asyncio.Event()  # the control socket accepts requests
        self.linked = asyncio.Event()  # the first ESL connection is up and subscribed
        self.engine: Any = None
        self.fs_events: Any = None  # [events]: invites from inside FreeSWITCH (fs_events.py)
        self.session: Any = None
        self.api: Any = None
        self.journal: Any = None
        self.metrics: Any = None
        self.notifier: Any = None
        self.idempotency: Any = None
        self.webhooks: Any = None  # confguard.webhook_delivery.WebhookDelivery, when configured
        self._tasks: list[asyncio.Task[Any]] = []
        self._last_status: str | None = None
        self._inherited: list[Any] = []  # journal rows an earlier run left active
        self._inherited_members: list[Any] = []  # joined rows whose member was not seen leaving
        self.gc_pauses = GcPauses()

    # --- life --------------------------------------------------------------------------------

    async def run(self) -> int:
        self.gc_pauses.start()
        try:
            return await self._run()
        finally:
            self.gc_pauses.stop()

    async def _run(self) -> int:
        from confguard.api import ControlServer
        from confguard.config import esl_settings
        from confguard.engine import SUBSCRIBED_EVENTS, Engine
        from confguard.esl import EslSession
        from confguard.idempotency import IdempotencyStore
        from confguard.journal import Journal
        from confguard.metrics import Metrics
        from confguard.notify import Notifier

        config = self.config
        check_webhooks(config)
        self.notifier = Notifier.from_env()
        if self.handle_signals:  # early: a SIGTERM during start-up still ends in a clean exit
            self._install_signals()
        self.journal = Journal(config.journal.path)
        self.journal.prune(config.journal.retention_days)
        self.idempotency = IdempotencyStore(self.journal, config.api.idempotency_retention)
        self.idempotency.prune()
        # What an earlier run left active, read before the control socket takes any invite of
        # this run: only these are adopted once FreeSWITCH is reachable.
        try:
            self._inherited = self.journal.active()
        except Exception:
            log.exception("journal.error", op="active")
            self._inherited = []
        try:
            self._inherited_members = self.journal.in_room()
        except Exception:
            log.exception("journal.error", op="in_room")
            self._inherited_members = []
        # State changes are written in batches (outcomes and new rows at once: journal.py).
        self.journal.batch_updates(asyncio.get_running_loop().call_later, JOURNAL_BATCH_S)
        self.metrics = Metrics(event_names=SUBSCRIBED_EVENTS)
        if config.metrics.listen:
            host, port = config.metrics.host_port
            await self.metrics.start_server(host, port)
            log.info("metrics.listening", listen=config.metrics.listen)
        self.engine = Engine(
            journal=self.journal, metrics=self.metrics, reconnect_wait=config.esl.reconnect_wait
        )
        self.session = EslSession(
            esl_settings(config),
            on_reconnect=self.engine.esl_reconnected,
            on_state=self._esl_state,
        )
        self.engine.attach(self.session)
        if config.webhooks.secret is not None:  # before any invite: its first update is an event
            from confguard.webhook_delivery import WebhookDelivery

            self.webhooks = WebhookDelivery(self.journal, config.webhooks, metrics=self.metrics)
            self.engine.add_observer(self.webhooks.observe)
            await self.webhooks.start()
        from confguard.fs_events import FsEvents

        self.fs_events = FsEvents(
            self.engine, self.session, config.events,
            lambda: self.api.defaults if self.api is not None else config.invite,
            reconnect_wait=config.esl.reconnect_wait,
            routes=lambda: self.api.routes if self.api is not None else config.routes,
        )
        self.api = ControlServer(
            self.engine,
            config.api.socket,
            mode=config.api.mode,
            defaults=config.invite,
            routes=config.routes,
            status=self.status,
            idempotency=self.idempotency,
            journal=self.journal,
            check_spec=None if self.webhooks is not None else refuse_notify,
        )
        try:
            await self.api.start()
        except OSError as exc:  # another confguard on the socket, a directory we may not use
            log.error("api.start_failed", socket=config.api.socket, error=str(exc))
            if self.webhooks is not None:
                await self.webhooks.stop()
            await self.metrics.stop()
            self.journal.close()
            return EXIT_START_FAILED
        self.notifier.ready()
        self.listening.set()
        self._status_line()
        log.info("daemon.started", version=__version__, pid=os.getpid(),
                 esl=f"{config.esl.host}:{config.esl.port}", socket=config.api.socket)
        self._tasks.append(asyncio.create_task(self._connect_loop(), name="confguard-connect"))
        interval = self.notifier.watchdog_interval()
        if interval:
            self._tasks.append(asyncio.create_task(self._watchdog(interval), name="watchdog"))
        self._tasks.append(asyncio.create_task(self._status_refresh(), name="confguard-status"))
        await self.stopping.wait()
        await self._shutdown()
        return 0

    async def _connect_loop(self) -> None:
        """First connection to FreeSWITCH, retried with backoff; the session reconnects after."""
        from confguard.esl import EslAuthError, EslError

        delay = 0.5
        target = f"{self.config.esl.host}:{self.config.esl.port}"
        while not self.stopping.is_set():
            try:
                await self.session.connect()
            except EslError as exc:
                hint = (
                    "check the password file ([esl] password_file)"
                    if isinstance(exc, EslAuthError)
                    else "is FreeSWITCH running with mod_event_socket?"
                )
                log.warning("esl.connect_failed", target=target, error=str(exc),
                            retry_in_s=round(delay, 1), hint=hint)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                delay = min(self.config.esl.reconnect_max, delay * 2) * random.uniform(0.8, 1.2)
                continue
            await self.engine.start()
            await self.fs_events.start()
            self.linked.set()
            log.info("esl.subscribed", target=target)
            self._status_line()
            await self._recover_journal()
            # Start-up is over (modules imported, configuration and session built): what exists
            # now lives as long as the process, so the collector stops walking it.
            gc.collect()
            gc.freeze()
            log.info("daemon.gc_frozen", objects=gc.get_freeze_count())
            return

    async def _recover_journal(self) -> None:
        """Invites an earlier run left active: adopt each one, and FreeSWITCH tells what became
        of its call (`Engine.adopt`): gone -> lost; in the room -> joined; still waiting for the
        key -> watched again, bounded by a FreeSWITCH timer, as if the daemon had never stopped."""
        rows, self._inherited = self._inherited, []
        for row in rows:
            try:
                await self.engine.adopt(row)
            except Exception as exc:
                log.warning("journal.adopt_failed", uuid=row.call_uuid, invite=row.invite_id,
                            error=str(exc))
                self.journal.finish_invite(row.invite_id, "lost", "NOT_ADOPTED", time.time(),
                                           {"error": str(exc)})
        # Joined members an earlier run saw in the room and not leave: still there? (room.py)
        members, self._inherited_members = self._inherited_members, []
        for row in members:
            try:
                await self.engine.adopt_member(row)
            except Exception as exc:
                log.warning("journal.adopt_member_failed", uuid=row.call_uuid,
                            invite=row.invite_id, error=str(exc))
                self.journal.leave_invite(row.invite_id, "unseen", None, time.time())

    async def _watchdog(self, interval: float) -> None:
        """WATCHDOG=1 from the event loop itself: a stuck loop stops the pings and gets
        restarted."""
        while not self.stopping.is_set():
            self.notifier.watchdog()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), interval / 2)

    async def _status_refresh(self) -> None:
        """Keep STATUS= current as invites come and go (ESL changes update it at once)."""
        while not self.stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), STATUS_REFRESH_S)
            if not self.stopping.is_set():
                self._status_line()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def reload(self) -> None:
        """SIGHUP: log level, invite defaults, log file reopened. ESL/socket changes need a
        restart."""
        from confguard.config import FLAG_NAMES, ConfigError, load_config
        from confguard.logs import reopen, set_level

        self.notifier.reloading()
        reopen()  # first, so the lines below already go to the new file (logrotate)
        try:
            fresh = load_config(self.config_path, os.environ, self.overrides, flag_names=FLAG_NAMES)
        except ConfigError as exc:
            log.error("config.reload_failed", error=str(exc), kept="the running configuration")
        else:
            set_level(fresh.log.level)
            if self.api is not None:
                self.api.defaults = fresh.invite
                self.api.idempotency.retention = fresh.api.idempotency_retention
                self.api.routes = dict(fresh.routes)
            self.config = fresh
            log.info("config.reloaded", log_level=fresh.log.level)
        self.notifier.ready()

    async def _shutdown(self) -> None:
        self.notifier.stopping()
        live = self.engine.active_count() if self.engine else 0
        log.info("daemon.stopping", live_invites=live,
                 note="live calls keep their FreeSWITCH hangup timers")

        async def close_all() -> None:
            await self.api.stop()
            for task in self._tasks:
                task.cancel()
            await self.fs_events.stop()
            await self.engine.stop()
            if self.webhooks is not None:  # undelivered events stay in the outbox
                await self.webhooks.stop()
            await self.session.close()
            await self.metrics.stop()

        try:
            await asyncio.wait_for(close_all(), SHUTDOWN_BUDGET_S - 1.0)
        except TimeoutError:
            log.warning("daemon.stop_timeout", budget_s=SHUTDOWN_BUDGET_S)
        self.journal.close()
        log.info("daemon.stopped", **self.gc_pauses.summary())

    # --- what the outside sees ---------------------------------------------------------------

    def _esl_state(self, state: str) -> None:
        self.engine.esl_state_changed(state)
        self._status_line()

    def _status_line(self) -> None:
        if self.notifier is None or self.session is None:
            return
        target = f"{self.config.esl.host}:{self.config.esl.port}"
        link = "connected to" if self.session.connected else "waiting for"
        count = self.engine.active_count()  # every second: not a row per invite
        text = f"{link} {target}, {count} invites active"
        if text == self._last_status:
            return
        self._last_status = text
        log.debug("daemon.status", status=text)
        self.notifier.status(text)

    def status(self) -> dict[str, Any]:
        since = getattr(self.session, "connected_since", None)
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 1),
            "accepting": self.engine.accepting,
            "esl": {
                "target": f"{self.config.esl.host}:{self.config.esl.port}",
                "connected": bool(self.session.connected),
                "connected_since": (
                    time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)) if since else None
                ),
                "reconnects": getattr(self.session, "reconnects", 0),
            },
        }


def check_webhooks(config: Any) -> None:
    """`[webhooks] urls` without a secret is a configuration error of the daemon (the CLI loads
    the same file without the service's credentials, so it is not one at load time)."""
    from confguard.config import ConfigError, _origin

    hooks = config.webhooks
    if hooks.urls and hooks.secret is None:
        raise ConfigError(
            _origin(config.sources.get("webhooks.urls", "default")),
            "webhooks.urls", "webhooks need a secret to sign with, and none was found",
            f"webhooks.secret_file, or the systemd credential {hooks.secret_credential!r} "
            f"(LoadCredential={hooks.secret_credential}:/etc/confguard/webhook-secret)",
        )


def refuse_notify(spec: Any) -> None:
    """The control API's check when the daemon has no webhook secret: no `notify`."""
    from confguard.invite import BadInput

    if spec.notify:
        raise BadInput("notify", spec.notify[0], "this daemon has no webhook secret to sign with "
                       "([webhooks] secret_file or its systemd credential); nothing was sent")


async def serve(
    config: Any, *, config_path: str | None = None, overrides: Mapping[str, Any] | None = None
) -> int:
    from confguard.esl import route_genesis_logging
    from confguard.logs import configure_logging

    configure_logging(format=config.log.format, level=config.log.level, file=config.log.file)
    route_genesis_logging()
    return await Daemon(config, config_path=config_path, overrides=overrides).run()
