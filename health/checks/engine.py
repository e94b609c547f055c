"""The container engine: answers a ping, runs a scratch container (create, start, wait, remove)
within a time budget — the "Docker is hung" case, where ping still answers — and its event stream
is connected."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from health.model import Observation, degraded, failed, ok

__all__ = ["EngineCheck", "EngineProbe"]


class EngineProbe(Protocol):
    async def ping(self) -> bool: ...

    async def scratch_cycle(self) -> None:
        """Create, start, wait for and remove a throw-away container; raise on any failure."""

    def event_stream_connected(self) -> bool | None:
        """Whether the agent's engine event stream is connected (None: nothing to tell)."""


class EngineCheck:
    name = "engine"

    def __init__(
        self,
        probe: EngineProbe,
        *,
        period: float = 30.0,
        timeout: float = 25.0,
        scratch_budget: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.probe = probe
        self.period = period
        self.timeout = timeout
        self.scratch_budget = scratch_budget
        self.monotonic = monotonic

    async def run(self) -> Observation:
        if not await self.probe.ping():
            return failed("EngineDown", "the engine does not answer a ping")
        started = self.monotonic()
        try:
            await self.probe.scratch_cycle()
        except Exception as e:
            return failed("ScratchContainerFailed", f"scratch container: {e}")
        took = round(self.monotonic() - started, 3)
        if took > self.scratch_budget:
            return degraded(
                "EngineSlow", f"scratch container took {took:g}s (budget {self.scratch_budget:g}s)",
                scratchSeconds=took, budgetSeconds=self.scratch_budget,
            )
        if self.probe.event_stream_connected() is False:
            return degraded("EventStreamDown", "the engine event stream is not connected", scratchSeconds=took)
        return ok("EngineHealthy", scratchSeconds=took)
