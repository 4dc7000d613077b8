"""confguard.sim: a FreeSWITCH Event Socket simulator for the demo, the tests and the benchmarks.

`Simulator` wires the parts: `SimClock` (scaled time), `Switch` (channels, originate, the api
commands, the scheduler, conferences, callees), `EslServer` (the Event Socket protocol on TCP)
and `Faults` (in-process fault injection). It listens on loopback only.

The simulated users (1000 presses 1, 1001 stays silent, 1002 is busy, ...) and the channel
variables that override them per call (`sim_dtmf=1@3`, ...) are documented in
`confguard.sim.callees`; `SimConfig.users` replaces the directory.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from confguard.sim.config import SimConfig
from confguard.sim.faults import Faults
from confguard.sim.server import EslServer

if TYPE_CHECKING:
    from confguard.sim.clock import SimClock
    from confguard.sim.events import SimEvent
    from confguard.sim.switch import Switch

SwitchFactory = Callable[[SimConfig, "SimClock", Callable[["SimEvent"], None]], Any]

__all__ = ["Faults", "SimConfig", "Simulator"]


class Simulator:
    """A simulated FreeSWITCH on `config.host:config.port` (port 0: a free port, see `port`)."""

    def __init__(
        self, config: SimConfig | None = None, *, switch_factory: SwitchFactory | None = None
    ) -> None:
        from confguard.sim.clock import SimClock

        self.config = config if config is not None else SimConfig()
        self.clock = SimClock(self.config.time_scale, start_epoch=self.config.start_epoch)
        self.server = EslServer(self.config, on_shutdown_request=self._shutdown_requested)
        if switch_factory is None:
            from confguard.sim.switch import Switch

            switch_factory = Switch
        self.switch: Switch = switch_factory(self.config, self.clock, self.server.publish)
        self.switch.event_wanted = self.server.wants  # no client takes it: not built
        self.server.switch = self.switch
        self.faults = Faults(self.server, self.switch, self.config.time_scale)
        self._started = False

    @property
    def port(self) -> int:
        """The bound port (the real one once started, also when `config.port` was 0)."""
        return self.server.port

    @property
    def host(self) -> str:
        """The listening address."""
        return self.config.host

    async def start(self) -> None:
        """Start the switch, then listen."""
        await self.switch.start()
        try:
            await self.server.start()
        except BaseException:
            await self.switch.stop()
            raise
        self._started = True

    async def stop(self) -> None:
        """Stop listening, drop every client, stop the switch. Safe to call twice."""
        if not self._started:
            return
        self._started = False
        await self.server.stop()
        await self.switch.stop()

    async def wait_shut_down(self) -> None:
        """Return once an `fsctl shutdown` (or `faults.shutdown()`) has completed."""
        await self.faults.shut_down.wait()

    async def _shutdown_requested(self) -> None:
        await self.faults.shutdown()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()
