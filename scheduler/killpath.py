"""The one kill path: every kill or declared-lost that the control plane decides on its own
(reconciliation, stuck-state timeouts, silent hosts) asks `KillPath.take` first.

Two brakes, both in memory (a restart starts with full buckets, but also with the start-up grace of
`reconcile.Reconciler`, during which nothing is asked here at all):
- a global token bucket per cell: `kill_rate_per_second` tokens a second, at most `kill_burst`;
- a per-job disruption budget: at most `max(1, job_disruption_fraction × live tasks)` of one job's
  tasks per `job_disruption_window` seconds.
A refusal is not an error: the action is proposed again at the next pass.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from scheduler.config import SchedulerConfig

__all__ = ["JobBudget", "KillPath", "TokenBucket"]


@dataclass
class TokenBucket:
    rate: float  # tokens per second
    burst: int
    tokens: float
    at: float

    @classmethod
    def full(cls, rate: float, burst: int, now: float) -> TokenBucket:
        return cls(rate, burst, float(burst), now)

    def refill(self, now: float) -> None:
        if now > self.at:
            self.tokens = min(float(self.burst), self.tokens + (now - self.at) * self.rate)
        self.at = max(self.at, now)  # a clock stepping back never mints tokens

    def available(self, now: float) -> bool:
        self.refill(now)
        return self.tokens >= 1

    def take(self, now: float) -> bool:
        if not self.available(now):
            return False
        self.tokens -= 1
        return True


class JobBudget:
    """Disruptions of one job within a sliding window."""

    def __init__(self, fraction: float, window: float) -> None:
        self.fraction = fraction
        self.window = window
        self._at: dict[str, deque[float]] = {}

    def allowance(self, live_tasks: int) -> int:
        return max(1, math.floor(self.fraction * live_tasks))

    def used(self, job_id: str, now: float) -> int:
        q = self._at.get(job_id)
        if q is None:
            return 0
        while q and q[0] <= now - self.window:
            q.popleft()
        return len(q)

    def available(self, job_id: str, live_tasks: int, now: float) -> bool:
        return self.used(job_id, now) < self.allowance(live_tasks)

    def spend(self, job_id: str, now: float) -> None:
        self._at.setdefault(job_id, deque()).append(now)

    def shift(self, step: float) -> None:
        self._at = {j: deque(t + step for t in q) for j, q in self._at.items()}


class KillPath:
    def __init__(self, config: SchedulerConfig, now: float) -> None:
        self.bucket = TokenBucket.full(config.kill_rate_per_second, config.kill_burst, now)
        self.jobs = JobBudget(config.job_disruption_fraction, config.job_disruption_window)

    def shift(self, step: float) -> None:
        """The wall clock stepped: keep the budgets as they were (a step forward mints no tokens)."""
        self.bucket.at += step
        self.jobs.shift(step)

    def room(self, kills: Mapping[str, int], live: Callable[[str], int], now: float) -> str | None:
        """Would `take` admit all these kills (job → how many) now? None if so, else why not.
        Nothing is spent: a set of kills that only helps whole (a preemption) asks first."""
        for job_id, n in sorted(kills.items()):
            allowance = self.jobs.allowance(live(job_id))
            if self.jobs.used(job_id, now) + n > allowance:
                return f"job disruption budget of {job_id} spent ({allowance} per {self.jobs.window:.0f}s)"
        if self.bucket.available(now) and self.bucket.tokens >= sum(kills.values()):
            return None
        return f"kill rate limit (token bucket has {int(self.bucket.tokens)} of {sum(kills.values())} kills)"

    def take(self, job_id: str | None, live_tasks: int, now: float) -> str | None:
        """Spend one disruption; None if allowed, else why not (nothing is spent then)."""
        if job_id is not None and not self.jobs.available(job_id, live_tasks, now):
            return f"job disruption budget spent ({self.jobs.allowance(live_tasks)} per {self.jobs.window:.0f}s)"
        if not self.bucket.take(now):
            return "kill rate limit (token bucket empty)"
        if job_id is not None:
            self.jobs.spend(job_id, now)
        return None
