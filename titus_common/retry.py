"""The one back-off every retry loop of titus uses: a doubling delay, capped, reset on success.

A small helper rather than a library: the loops are long-lived daemons' loops (retry forever,
log each wait, reset after a success), which a decorator-style retry library does not fit.

May import: the standard library only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["Backoff", "retry_forever"]

T = TypeVar("T")


class Backoff:
    """`next_delay()` gives the wait before the next attempt and doubles the one after (up to
    `maximum`); `reset()` after a success starts again from `initial`."""

    def __init__(self, initial: float = 0.2, maximum: float = 10.0, factor: float = 2.0) -> None:
        if not 0 <= initial <= maximum or factor < 1:
            raise ValueError(f"back-off needs 0 <= initial <= maximum and factor >= 1, got {initial}, {maximum}, {factor}")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self._next = initial

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self.maximum, delay * self.factor)
        return delay

    def reset(self) -> None:
        self._next = self.initial

    async def sleep(self) -> float:
        """Wait the next delay; returns how long it waited."""
        delay = self.next_delay()
        await asyncio.sleep(delay)
        return delay


async def retry_forever(
    attempt: Callable[[], Awaitable[T]],
    retry_on: tuple[type[BaseException], ...],
    backoff: Backoff,
    on_retry: Callable[[BaseException, float], None],
) -> T:
    """Call `attempt` until it returns; on an error of `retry_on`, report it with the coming delay
    (`on_retry(error, delay)`) and wait. Other errors propagate."""
    while True:
        try:
            return await attempt()
        except retry_on as e:
            delay = backoff.next_delay()
            on_retry(e, delay)
            await asyncio.sleep(delay)
