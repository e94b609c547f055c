"""The last launches' step durations, kept in memory for `/v1/steps` (min / median / max per step;
the Prometheus histogram `titus_agent_step_seconds` only gives sums and buckets). Bounded: the last
RECENT durations per step and phase, a few KiB in all."""

from __future__ import annotations

import statistics
from collections import deque

RECENT = 512


class StepTimings:
    def __init__(self, recent: int = RECENT) -> None:
        self._recent = recent
        self._seconds: dict[tuple[str, str], deque[float]] = {}

    def record(self, step: str, phase: str, seconds: float) -> None:
        key = (step, phase)
        if key not in self._seconds:
            self._seconds[key] = deque(maxlen=self._recent)
        self._seconds[key].append(seconds)

    def summary(self) -> list[dict[str, float | str | int]]:
        """Per step and phase over the recent launches: count, min, median, mean and max in ms."""
        rows: list[dict[str, float | str | int]] = []
        for (step, phase), values in self._seconds.items():
            ms = [v * 1000 for v in values]
            rows.append({"step": step, "phase": phase, "count": len(ms), "minMs": round(min(ms), 2),
                         "medianMs": round(statistics.median(ms), 2), "meanMs": round(statistics.fmean(ms), 2),
                         "maxMs": round(max(ms), 2)})
        return rows
