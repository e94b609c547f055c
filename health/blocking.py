"""Blocking work for a check (statvfs, /proc reads, an SDK call) on the check's own thread.

A thread cannot be cancelled: when a check's call hangs, the monitor times the check out, and the
next run finds the thread still busy and fails at once (`CheckStillRunning`) instead of starting
another thread. One stuck thread per check at most, never a pool filling up.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["StillRunning", "Worker"]

T = TypeVar("T")


class StillRunning(Exception):
    """The previous call of this check has not returned yet."""


class Worker:
    def __init__(self, name: str) -> None:
        self.name = name
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"health-{name}")
        self._busy: Future[Any] | None = None

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._busy is not None and not self._busy.done():
            raise StillRunning(f"the previous run of {self.name} has not returned")
        future = self._pool.submit(functools.partial(fn, *args))
        self._busy = future
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
