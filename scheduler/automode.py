"""The automatic spread ⇄ pack switch on a burst, with hysteresis (docs/scheduling.md).

The seed's failover: normally spread; when a region fails over, thousands of tasks arrive at once
and packing onto hosts that already cache the image and hold warm ENIs is what makes the burst fast.
A queue of Accepted tasks (placeable or not) at or above `pack_at` for `hold_s` switches to pack; at or below
`spread_at` for `hold_s` switches back. The gap between the two thresholds and the hold time keep a
queue that hovers around one threshold from flapping the mode. Pure: `decide` is fed the queue
depth, the current mode and the time; the caller applies the switch. An operator's explicit switch
pins the mode (automation pauses) until they hand it back with `scheduling-mode auto`.
"""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.fitness import Mode

__all__ = ["AutoMode"]


@dataclass
class AutoMode:
    pack_at: int  # queue depth at or above which the cell packs (0: automation off)
    spread_at: int  # queue depth at or below which it spreads again
    hold_s: float  # how long the condition must hold before the switch
    pinned: bool = False  # an operator chose the mode: do not override it
    _want: Mode | None = None
    _since: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.pack_at > 0 and not self.pinned

    def decide(self, depth: int, current: Mode, now: float) -> Mode | None:
        """The mode to switch to now, or None (stay)."""
        if not self.enabled:
            self._want = None
            return None
        want = Mode.PACK if depth >= self.pack_at else Mode.SPREAD if depth <= self.spread_at else None
        if want is None or want is current:
            self._want = None
            return None
        if want is not self._want:
            self._want, self._since = want, now
        if now - self._since >= self.hold_s:
            self._want = None
            return want
        return None

    def reset(self) -> None:
        """Forget a hold in progress (the pin changed): the next condition starts its hold anew."""
        self._want = None

    def describe(self) -> dict[str, object]:
        return {"enabled": self.pack_at > 0, "pinned": self.pinned, "packAtQueueDepth": self.pack_at,
                "spreadAtQueueDepth": self.spread_at, "holdSeconds": self.hold_s}
