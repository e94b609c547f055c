"""Steps of the wall clock, told apart from time passing.

The scheduler's records carry wall-clock times (heartbeats, state entries), and its ages are
differences of them. A step of the wall clock (an NTP correction, an operator's `date -s`, a VM
resumed) is not time passing: forwards by an hour, every host would look silent for an hour and
every Launched task stuck. `ClockStep.read` compares how far the wall clock moved since the last
reading with how far the monotonic clock did; a difference beyond `tolerance` seconds is a step,
returned so the caller can move its ages by it (core.Scheduler: hosts' last heartbeats,
reconciliation's ages, deliveries) instead of acting on them.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["ClockStep"]


class ClockStep:
    def __init__(self, wall: Callable[[], float], monotonic: Callable[[], float], tolerance: float) -> None:
        self.wall = wall
        self.monotonic = monotonic
        self.tolerance = tolerance
        self._last = (wall(), monotonic())

    def read(self) -> tuple[float, float | None]:
        """The wall time now, and the step since the last reading (None if the clock did not step)."""
        wall, mono = self.wall(), self.monotonic()
        last_wall, last_mono = self._last
        self._last = (wall, mono)
        step = (wall - last_wall) - (mono - last_mono)
        return wall, (step if abs(step) > self.tolerance else None)
