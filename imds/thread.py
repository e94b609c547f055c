"""Run a MetadataService on its own event loop in a daemon thread, so that the agent's loop (docker
calls, scheduler sync, ...) never adds latency to metadata answers. The async methods may be awaited
from any other event loop; the synchronous ones from any thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from imds.identity import TaskIdentity
from imds.service import MetadataService

T = TypeVar("T")


class ServiceThread:
    def __init__(self, service: MetadataService, name: str = "titus-imds") -> None:
        self.service = service
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("ServiceThread not started")
        return self._loop

    def start(self) -> ServiceThread:
        if self._thread is not None:
            raise RuntimeError("ServiceThread already started")
        self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
        self._thread.start()
        self._ready.wait()
        return self

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(self.submit(coro))

    async def add_task(
        self,
        identity: TaskIdentity,
        imds_sockets: Sequence[socket.socket],
        ecs_sockets: Sequence[socket.socket] = (),
    ) -> None:
        await self._call(self.service.add_task(identity, imds_sockets, ecs_sockets))

    async def remove_task(self, task_id: str) -> None:
        await self._call(self.service.remove_task(task_id))

    async def snapshot_async(self) -> dict[str, Any]:
        return await self._call(self._snapshot())

    def snapshot(self, timeout: float = 5.0) -> dict[str, Any]:
        """From a thread that is not the service's (blocks for a few microseconds of service work)."""
        return self.submit(self._snapshot()).result(timeout)

    async def _snapshot(self) -> dict[str, Any]:
        return self.service.snapshot()

    def stop(self, timeout: float = 10.0) -> None:
        """Close the service (all tasks, their sockets, the refresher) and end the thread. Idempotent;
        call it from a thread that is not the service's."""
        if self._thread is None or self._loop is None:
            return
        loop, thread = self._loop, self._thread
        if thread.is_alive() and not loop.is_closed():
            try:
                self.submit(self.service.close()).result(timeout)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(timeout)
        self._thread = None

    def __enter__(self) -> ServiceThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
