"""Run a MetadataService on its own event loop in a daemon thread, so that the agent's loop (docker
calls, scheduler sync, ...) never adds latency to metadata answers. The async methods may be awaited
from any other event loop; the synchronous ones from any thread.

The thread remembers the identity of every task it serves, so that after `restart_unless_answering`
(a fresh loop for a service that stopped answering) the same tasks can be served again on new
sockets (`serve_again`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from imds.identity import TaskIdentity
from imds.service import MetadataService

T = TypeVar("T")
log = logging.getLogger("titus.imds")


class ServiceThread:
    def __init__(self, service: MetadataService, name: str = "titus-imds") -> None:
        self.service = service
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._served: dict[str, TaskIdentity] = {}

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
            # What is left after `stop` (an abandoned loop's refresher and fetches): cancelled, not leaked.
            left = asyncio.all_tasks(loop)
            for t in left:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
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
        self._served[identity.task_id] = identity

    async def remove_task(self, task_id: str) -> None:
        self._served.pop(task_id, None)
        await self._call(self.service.remove_task(task_id))

    async def serve_again(
        self, task_id: str, imds_sockets: Sequence[socket.socket], ecs_sockets: Sequence[socket.socket] = ()
    ) -> None:
        """Serve a task served before, with the identity it had, on new sockets (its old ones closed,
        its credentials fetched again). Its identity is kept also when this raises: a later call retries."""
        identity = self._served.get(task_id)
        if identity is None:
            for sock in (*imds_sockets, *ecs_sockets):
                sock.close()
            raise KeyError(f"task {task_id} was never served")
        await self._call(self.service.remove_task(task_id))
        await self._call(self.service.add_task(identity, imds_sockets, ecs_sockets))

    def served(self, task_id: str) -> TaskIdentity | None:
        """The identity the task was last served with (kept across a restart), None if not served."""
        return self._served.get(task_id)

    def answers(self, timeout: float = 3.0) -> bool:
        """The service's loop runs and answers within `timeout` (from a thread that is not its own)."""
        try:
            self.snapshot(timeout)
        except Exception:  # RuntimeError (not started or loop closed), TimeoutError (stuck), …
            return False
        return True

    def restart_unless_answering(self, timeout: float = 3.0) -> bool:
        """When the service's loop does not answer within `timeout` (stuck, or its thread died): a
        fresh thread and loop for the service, serving no task (serve them again with `serve_again`;
        `served` still names them); True then. The stuck loop is abandoned with its daemon thread,
        told only to stop should it ever run again (nothing else is queued on it: a late `close`
        there would remove the new loop's tasks); its tasks' sockets close with it."""
        if self.answers(timeout):
            return False
        if self._loop is not None and not self._loop.is_closed():
            log.warning("metadata service loop does not answer within %gs: abandoning it", timeout)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread, self._loop, self._ready = None, None, threading.Event()
        self.service.forget()
        self.start()
        return True

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
