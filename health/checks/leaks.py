"""Leaks: what the agent's garbage collection keeps finding, and containers nobody owns.

GC removes leaked links, policy rules, namespaces, ENIs, sandboxes and metadata links of tasks the
agent does not hold, empty cgroups of containers the engine no longer lists, and finds checkpoints
with no runner (agent/host/orphans.py) (`titus_agent_network_leaks_removed_total{kind}`, kinds
summed against the thresholds, each in the evidence as `removed.<kind>` and `kinds`); one found now and then is
GC doing its job, a steady stream is something leaking (a crash loop in teardown, a kernel that
refuses deletes). The check keeps the counter's samples for `window_s` (1 h) and looks at the
increase: ≥ `degraded_per_window` (20) degraded `LeakingResources`, ≥ `failed_per_window` (200)
failed (remediation: `network-gc`). Containers that neither the agent nor the scheduler knows
(reported, never killed by default) ≥ `unknown_degraded` (5): degraded `UnknownContainers`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping

from health.model import Observation, degraded, failed, ok
from titus_common.protocol import EvidenceValue

__all__ = ["LeaksCheck"]


class LeaksCheck:
    name = "leaks"

    def __init__(
        self,
        removed: Callable[[], Mapping[str, float]],
        unknown_containers: Callable[[], int],
        *,
        period: float = 60.0,
        timeout: float = 5.0,
        window_s: float = 3600.0,
        degraded_per_window: int = 20,
        failed_per_window: int = 200,
        unknown_degraded: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.removed = removed  # cumulative leaks removed by kind
        self.unknown_containers = unknown_containers
        self.period = period
        self.timeout = timeout
        self.window_s = window_s
        self.degraded_per_window = degraded_per_window
        self.failed_per_window = failed_per_window
        self.unknown_degraded = unknown_degraded
        self.clock = clock
        self._samples: deque[tuple[float, dict[str, float]]] = deque()

    def _increase(self, now: float, current: dict[str, float]) -> dict[str, float]:
        self._samples.append((now, current))
        while len(self._samples) > 1 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()
        oldest = self._samples[0][1]
        return {k: v - oldest.get(k, 0.0) for k, v in current.items() if v - oldest.get(k, 0.0) > 0}

    async def run(self) -> Observation:
        now = self.clock()
        grew = self._increase(now, dict(self.removed()))
        total = int(sum(grew.values()))
        unknown = self.unknown_containers()
        evidence: dict[str, EvidenceValue] = {f"removed.{k}": int(v) for k, v in sorted(grew.items())}
        evidence |= {"kinds": ",".join(sorted(grew)), "removedInWindow": total, "windowS": self.window_s, "unknownContainers": unknown}
        what = ", ".join(f"{int(v)} {k}" for k, v in sorted(grew.items()))
        if total >= self.failed_per_window:
            return failed("LeakingResources", f"GC removed {total} leaked resources in the window ({what})", **evidence)
        if total >= self.degraded_per_window:
            return degraded("LeakingResources", f"GC removed {total} leaked resources in the window ({what})",
                            **evidence)
        if unknown >= self.unknown_degraded:
            return degraded("UnknownContainers", f"{unknown} containers neither the agent nor the scheduler knows",
                            **evidence)
        return ok("NoLeaks", **evidence)
