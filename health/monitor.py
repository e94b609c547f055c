"""Runs each check on its own period under its timeout and keeps the latest result per check."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

from health.blocking import StillRunning
from health.model import Check, Observation, failed
from titus_common.errors import ConfigError
from titus_common.protocol import HealthCondition, HealthStatus

__all__ = ["HealthMonitor", "ResultHook", "worst"]

log = logging.getLogger("titus.health")

# Called with the new result and the previous one (None on the first run).
ResultHook = Callable[[HealthCondition, HealthCondition | None], None]


def worst(conditions: Iterable[HealthCondition]) -> HealthStatus:
    return max((c.status for c in conditions), key=lambda s: s.rank, default=HealthStatus.OK)


def _clip(text: str, limit: int = 256) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class HealthMonitor:
    def __init__(
        self,
        checks: Sequence[Check],
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_result: ResultHook | None = None,
    ) -> None:
        names = [c.name for c in checks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"health checks: duplicate names {', '.join(dupes)}")
        for c in checks:
            if not (c.period > 0 and c.timeout > 0):
                raise ConfigError(f"health check {c.name}: period and timeout must be positive")
        self.checks = list(checks)
        self.clock = clock
        self.monotonic = monotonic
        self._sleep = sleep
        self.on_result = on_result
        self._results: dict[str, HealthCondition] = {}
        self._inflight: dict[str, asyncio.Task[Observation]] = {}
        self._loops: list[asyncio.Task[None]] = []

    # ---- one run -----------------------------------------------------------------------------

    async def run_check(self, check: Check) -> HealthCondition:
        """Run `check` once under its timeout and record the result. Never raises (except when
        the caller itself is cancelled)."""
        started = self.monotonic()
        previous_run = self._inflight.get(check.name)
        if previous_run is not None and not previous_run.done():
            obs = failed("CheckStillRunning", f"the previous run has not returned (timeout {check.timeout:g}s)")
        else:
            run = asyncio.ensure_future(check.run())
            self._inflight[check.name] = run
            try:
                obs = await asyncio.wait_for(asyncio.shield(run), timeout=check.timeout)
            except TimeoutError:
                run.cancel()
                obs = failed("CheckTimeout", f"no result within {check.timeout:g}s")
            except StillRunning as e:
                obs = failed("CheckStillRunning", str(e))
            except asyncio.CancelledError:
                run.cancel()
                raise
            except Exception as e:
                obs = failed("CheckError", f"{type(e).__name__}: {e}")
        return self.record(check.name, obs, max(0.0, self.monotonic() - started))

    def record(self, name: str, obs: Observation, duration_s: float = 0.0) -> HealthCondition:
        now = self.clock()
        prev = self._results.get(name)
        same = prev is not None and prev.status is obs.status and prev.reason == obs.reason
        try:
            cond = HealthCondition(
                check=name, status=obs.status, reason=obs.reason, message=_clip(obs.message),
                since=prev.since if same and prev is not None else now, observed_at=now,
                duration_ms=round(duration_s * 1000, 3), evidence=dict(list(obs.evidence.items())[:32]),
            )
        except ValueError as e:  # a check that returns a malformed result is a failing check
            cond = HealthCondition(
                check=name, status=HealthStatus.FAILED, reason="CheckError",
                message=_clip(f"malformed result: {e}"), since=now, observed_at=now,
            )
        self._results[name] = cond
        if prev is None or prev.status is not cond.status or prev.reason != cond.reason:
            level = logging.INFO if cond.status is HealthStatus.OK else logging.WARNING
            log.log(level, "health %s: %s %s %s", name, cond.status.value, cond.reason, cond.message,
                    extra={"check": name})
        if self.on_result is not None:
            self.on_result(cond, prev)
        return cond

    async def run_now(self, name: str) -> HealthCondition | None:
        """Run one check now, unless it is running already (then None)."""
        check = next((c for c in self.checks if c.name == name), None)
        running = self._inflight.get(name)
        if check is None or (running is not None and not running.done()):
            return None
        return await self.run_check(check)

    async def recheck(self) -> None:
        """Run every check now that is not already running (after a remediation action)."""
        idle = [c for c in self.checks if (t := self._inflight.get(c.name)) is None or t.done()]
        await asyncio.gather(*(self.run_check(c) for c in idle))

    # ---- the schedule ------------------------------------------------------------------------

    async def _loop(self, check: Check) -> None:
        while True:
            await self.run_check(check)
            await self._sleep(check.period)

    def start(self) -> None:
        if not self._loops:
            self._loops = [asyncio.create_task(self._loop(c), name=f"health-{c.name}") for c in self.checks]

    async def stop(self) -> None:
        for t in [*self._loops, *self._inflight.values()]:
            t.cancel()
        for t in [*self._loops, *self._inflight.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._loops = []
        self._inflight = {}

    # ---- results -----------------------------------------------------------------------------

    def conditions(self) -> list[HealthCondition]:
        return [self._results[n] for n in sorted(self._results)]

    def result(self, name: str) -> HealthCondition | None:
        return self._results.get(name)

    def status(self) -> HealthStatus:
        return worst(self._results.values())
