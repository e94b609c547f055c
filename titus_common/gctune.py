"""Garbage-collector thresholds for a process that keeps many objects alive while it serves many
requests (the scheduler at thousands of hosts; the fleet simulator that plays them).

With CPython's defaults (700, 10, 10) a young collection runs every 700 net allocations; each
long-poll's request objects live for seconds, so they are promoted to the oldest generation while
still in use, and that generation's full collections (every object in the process: 0.5 s each at
7,000 hosts) ran about once a second: 32 s of the scheduler's ~60 s of CPU in the failover burst
(docs/fleet-burst.md). Memory is still freed by reference counting as before; only cycles wait
longer to be found (at most `YOUNG` allocations more)."""

from __future__ import annotations

import gc

__all__ = ["SERVER_THRESHOLDS", "tune_for_server"]

YOUNG = 50_000
SERVER_THRESHOLDS = (YOUNG, 20, 10)


def tune_for_server() -> tuple[int, int, int]:
    """Apply `SERVER_THRESHOLDS`; returns the thresholds it replaced (to restore them)."""
    old = gc.get_threshold()
    gc.set_threshold(*SERVER_THRESHOLDS)
    return old
