"""HealthMonitor: timeouts, errors, hung threads, `since` bookkeeping on a fake clock."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import pytest

from health import HealthMonitor, Observation, degraded, failed, ok, worst
from health.blocking import Worker
from titus_common.errors import ConfigError
from titus_common.protocol import HealthStatus


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Scripted:
    """Returns the scripted observations in turn."""

    name: str
    results: list[Observation]
    period: float = 10.0
    timeout: float = 5.0
    calls: int = 0

    async def run(self) -> Observation:
        self.calls += 1
        return self.results[min(self.calls, len(self.results)) - 1]


@dataclass
class Forever:
    name: str = "forever"
    period: float = 10.0
    timeout: float = 0.05
    entered: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> Observation:
        self.entered.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


@dataclass
class Raises:
    name: str = "raises"
    period: float = 10.0
    timeout: float = 5.0

    async def run(self) -> Observation:
        raise RuntimeError("boom")


async def test_since_is_kept_while_status_and_reason_hold() -> None:
    clock = FakeClock()
    check = Scripted("c", [ok("Fine"), ok("Fine"), failed("Broken", "x"), failed("Broken", "y"), ok("Fine")])
    mon = HealthMonitor([check], clock=clock)
    expected_since = [1000.0, 1000.0, 1020.0, 1020.0, 1040.0]
    for i, since in enumerate(expected_since):
        clock.now = 1000.0 + 10 * i
        cond = await mon.run_check(check)
        assert cond.since == since, i
        assert cond.observed_at == clock.now
    assert mon.status() is HealthStatus.OK


async def test_a_check_that_never_returns_is_a_timeout_failure() -> None:
    mon = HealthMonitor([Forever()])
    cond = await mon.run_check(mon.checks[0])
    assert (cond.status, cond.reason) == (HealthStatus.FAILED, "CheckTimeout")


async def test_a_check_that_raises_is_a_failure_naming_the_error() -> None:
    mon = HealthMonitor([Raises()])
    cond = await mon.run_check(mon.checks[0])
    assert (cond.status, cond.reason) == (HealthStatus.FAILED, "CheckError")
    assert "RuntimeError: boom" in cond.message


async def test_a_hung_thread_is_not_multiplied() -> None:
    release = threading.Event()
    worker = Worker("stuck")

    @dataclass
    class Stuck:
        name: str = "stuck"
        period: float = 10.0
        timeout: float = 0.05

        async def run(self) -> Observation:
            await worker.call(release.wait)
            return ok("Fine")

    mon = HealthMonitor([Stuck()])
    first = await mon.run_check(mon.checks[0])
    second = await mon.run_check(mon.checks[0])
    assert first.reason == "CheckTimeout"
    assert second.reason == "CheckStillRunning"
    release.set()
    worker.close()


async def test_malformed_result_is_a_failure() -> None:
    check = Scripted("c", [Observation(HealthStatus.OK, "not camel case")])
    cond = await HealthMonitor([check]).run_check(check)
    assert (cond.status, cond.reason) == (HealthStatus.FAILED, "CheckError")


async def test_long_messages_are_clipped() -> None:
    check = Scripted("c", [degraded("Slow", "x" * 1000)])
    cond = await HealthMonitor([check]).run_check(check)
    assert len(cond.message) == 256


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([], HealthStatus.OK),
        ([HealthStatus.OK, HealthStatus.DEGRADED], HealthStatus.DEGRADED),
        ([HealthStatus.DEGRADED, HealthStatus.FAILED, HealthStatus.OK], HealthStatus.FAILED),
    ],
)
async def test_worst(statuses: list[HealthStatus], expected: HealthStatus) -> None:
    checks = [Scripted(f"c{i}", [Observation(s, "R")]) for i, s in enumerate(statuses)]
    mon = HealthMonitor(checks)
    for c in checks:
        await mon.run_check(c)
    assert worst(mon.conditions()) is expected and mon.status() is expected


def test_duplicate_names_and_bad_periods_are_refused() -> None:
    with pytest.raises(ConfigError, match="duplicate"):
        HealthMonitor([Scripted("a", []), Scripted("a", [])])
    with pytest.raises(ConfigError, match="positive"):
        HealthMonitor([Scripted("a", [], period=0)])


async def test_loop_runs_each_check_on_its_period_and_stops() -> None:
    slept: list[float] = []
    ran = asyncio.Event()

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) >= 3:
            ran.set()
            await asyncio.Event().wait()

    check = Scripted("c", [ok("Fine")], period=7.0)
    results: list[str] = []
    mon = HealthMonitor([check], sleep=fake_sleep, on_result=lambda c, _prev: results.append(c.reason))
    mon.start()
    await ran.wait()
    await mon.stop()
    assert slept == [7.0, 7.0, 7.0] and check.calls == 3 and results == ["Fine"] * 3
