"""A shared/exclusive gate for asyncio: many holders at once, or one exclusive holder.

The metadata step of every launch holds it shared (launches still wire in parallel); the
`restart-metadata` remediation holds it exclusive (agent/host/metadata.py). Exclusive is preferred:
once it waits, new shared holders wait behind it, so a stream of launches cannot starve it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["Gate"]


class Gate:
    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._shared = 0
        self._exclusive = False  # held or being waited for

    @property
    def shared_holders(self) -> int:
        return self._shared

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._exclusive)
            self._shared += 1
        try:
            yield
        finally:
            async with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._exclusive)
            self._exclusive = True
            try:
                await self._cond.wait_for(lambda: self._shared == 0)
            except BaseException:  # cancelled while waiting: let the others in again
                self._exclusive = False
                self._cond.notify_all()
                raise
        try:
            yield
        finally:
            async with self._cond:
                self._exclusive = False
                self._cond.notify_all()
