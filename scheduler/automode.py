"""The automatic spread ⇄ pack switch on a burst, with hysteresis (docs/scheduling.md).

The seed's failover: normally spread; when a region fails over, thousands of tasks arrive at once
and packing onto hosts that already cache the image and hold warm ENIs is what makes the burst fast.
Two triggers, either one packs:
- **arrival rate**: tasks submitted per second, averaged over the last `window_s` seconds, at or
  above `pack_rate` switches to pack at once (the window is the smoothing). A fast engine places a
  fitting burst before any backlog forms, so this is the signal that sees a failover coming.
- **backlog**: a queue of Accepted tasks (placeable or not) at or above `pack_at` for `hold_s`.
Back to spread only when both are calm, for `hold_s` in a row: the queue at or below `spread_at`
and (with the rate trigger on) the rate at or below `spread_rate`. The gaps between the pack and
spread thresholds and the hold keep a signal that hovers around one threshold from flapping the
mode; a dip resets the hold. Pure: `decide` is fed the queue depth, the current mode and the time,
`arrived` the submissions; the caller applies the switch. An operator's explicit switch pins the
mode (automation pauses) until they hand it back with `scheduling-mode auto`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from scheduler.fitness import Mode

__all__ = ["AutoMode"]


@dataclass
class AutoMode:
    pack_at: int  # queue depth at or above which the cell packs (0: the backlog trigger off)
    spread_at: int  # queue depth at or below which it spreads again
    hold_s: float  # how long the condition must hold before the switch
    pinned: bool = False  # an operator chose the mode: do not override it
    pack_rate: float = 0.0  # tasks submitted per second at or above which it packs at once (0: off)
    spread_rate: float = 0.0  # the rate at or below which it may spread again
    window_s: float = 10.0  # the arrival rate is averaged over this many seconds
    why: str = ""  # what made the last switch (the audit log's actor)
    _want: Mode | None = None
    _since: float = 0.0
    _arrivals: deque[tuple[float, int]] = field(default_factory=deque)
    _in_window: int = 0

    @property
    def configured(self) -> bool:
        return self.pack_at > 0 or self.pack_rate > 0

    @property
    def enabled(self) -> bool:
        return self.configured and not self.pinned

    def arrived(self, tasks: int, now: float) -> None:
        """`tasks` were submitted at `now` (monotonic seconds)."""
        if self.pack_rate <= 0 or tasks <= 0:
            return
        self._arrivals.append((now, tasks))
        self._in_window += tasks
        self._trim(now)

    def rate(self, now: float) -> float:
        """Tasks submitted per second over the last `window_s` seconds."""
        self._trim(now)
        return self._in_window / self.window_s if self.window_s > 0 else 0.0

    def _trim(self, now: float) -> None:
        while self._arrivals and self._arrivals[0][0] <= now - self.window_s:
            self._in_window -= self._arrivals.popleft()[1]

    def decide(self, depth: int, current: Mode, now: float) -> Mode | None:
        """The mode to switch to now, or None (stay)."""
        if not self.enabled:
            self._want = None
            return None
        rate = self.rate(now) if self.pack_rate > 0 else 0.0
        rate_high = self.pack_rate > 0 and rate >= self.pack_rate
        if rate_high and current is not Mode.PACK:
            self._want = None
            self.why = f"arrival rate {rate:g}/s over {self.window_s:g}s"
            return Mode.PACK
        deep = self.pack_at > 0 and depth >= self.pack_at
        calm = depth <= self.spread_at and (self.pack_rate <= 0 or rate <= self.spread_rate)
        want = Mode.PACK if deep or rate_high else Mode.SPREAD if calm else None
        if want is None or want is current:
            self._want = None
            return None
        if want is not self._want:
            self._want, self._since = want, now
        if now - self._since >= self.hold_s:
            self._want = None
            self.why = f"queue depth {depth}" + (f", arrival rate {rate:g}/s" if self.pack_rate > 0 else "")
            return want
        return None

    def reset(self) -> None:
        """Forget a hold in progress (the pin changed): the next condition starts its hold anew."""
        self._want = None

    def describe(self, now: float | None = None) -> dict[str, object]:
        doc: dict[str, object] = {
            "enabled": self.configured, "pinned": self.pinned, "packAtQueueDepth": self.pack_at,
            "spreadAtQueueDepth": self.spread_at, "holdSeconds": self.hold_s,
            "packAtArrivalRate": self.pack_rate, "spreadAtArrivalRate": self.spread_rate,
            "arrivalWindowSeconds": self.window_s,
        }
        if now is not None and self.pack_rate > 0:
            doc["arrivalRate"] = round(self.rate(now), 3)
        return doc
