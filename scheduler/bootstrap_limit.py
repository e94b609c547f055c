"""`POST /v1/bootstrap` is the one mutating call anyone may make without credentials: each one costs
a CSR signature check, a token lookup and maybe a certificate signature. Two token buckets bound it
(docs/trust.md): one per source address (a single host guessing tokens) and one for the whole cell
(many hosts, or a host with many addresses). A call either bucket refuses gets 429 with
`Retry-After`; it takes a token from neither, so a flooding source cannot drain the global bucket
beyond its own share."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from scheduler.killpath import TokenBucket

__all__ = ["BootstrapLimiter", "BootstrapLimits"]

MAX_SOURCES = 10_000  # source buckets remembered; past it, full ones are dropped first, then the oldest


@dataclass(frozen=True)
class BootstrapLimits:
    rate: float = 20.0  # bootstraps a second for the cell
    burst: int = 200  # a cell's worth of hosts starting at once
    source_rate: float = 1.0  # bootstraps a second from one address
    source_burst: int = 10


class BootstrapLimiter:
    def __init__(self, limits: BootstrapLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self.cell = TokenBucket.full(limits.rate, limits.burst, clock())
        self._sources: dict[str, TokenBucket] = {}

    def admit(self, source: str) -> tuple[str, float] | None:
        """None when the call may go ahead (a token taken from both buckets), else (which bucket
        refused: "source" | "cell", seconds until it holds a token again)."""
        now = self._clock()
        bucket = self._sources.get(source)
        if bucket is None:
            bucket = self._new_source(source, now)
        for name, b in (("source", bucket), ("cell", self.cell)):
            if not b.available(now):
                return name, max(0.0, (1 - b.tokens) / b.rate)
        bucket.take(now)
        self.cell.take(now)
        return None

    def _new_source(self, source: str, now: float) -> TokenBucket:
        if len(self._sources) >= MAX_SOURCES:
            for key in [k for k, b in self._sources.items() if _full(b, now)]:
                del self._sources[key]  # a full bucket is the same as a forgotten one
            while len(self._sources) >= MAX_SOURCES:
                del self._sources[next(iter(self._sources))]
        bucket = TokenBucket.full(self.limits.source_rate, self.limits.source_burst, now)
        self._sources[source] = bucket
        return bucket

    def __len__(self) -> int:
        return len(self._sources)


def _full(bucket: TokenBucket, now: float) -> bool:
    bucket.refill(now)
    return bucket.tokens >= bucket.burst


def retry_after(seconds: float) -> str:
    """The header's value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
