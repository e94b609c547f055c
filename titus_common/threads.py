"""A thread pool that gives back the threads a burst made.

`concurrent.futures.ThreadPoolExecutor` makes threads on demand and keeps every one until shutdown:
after one burst of 100 launches the agent held ~80 idle threads for good, each with the stack pages
it touched (~110 kB of RSS apiece, measured from /proc/PID/smaps: 9.3 MB for 86 threads). This pool
is the same executor (it is a ThreadPoolExecutor, so asyncio's `set_default_executor` takes it) whose
threads above `min_workers` exit after `idle_seconds` without work; glibc then returns the unused
part of the exited thread's stack to the kernel.

It reuses the standard executor's queue, thread set and shutdown (CPython 3.11's internals:
`_work_queue`, `_idle_semaphore`, `_threads`, `_shutdown_lock`, `_shutdown`), checked by tests/unit/test_threads.py.
"""

from __future__ import annotations

import queue
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import thread as _cf_thread
from collections.abc import MutableMapping
from typing import Any, cast


def _threads(pool: ThreadPoolExecutor) -> set[threading.Thread]:
    return cast(set[threading.Thread], pool._threads)  # a set at runtime (typeshed: AbstractSet)


def _queues() -> MutableMapping[Any, Any]:
    return cast(MutableMapping[Any, Any], _cf_thread._threads_queues)  # a WeakKeyDictionary


def _worker(executor_ref: Any, work_queue: Any, idle_seconds: float) -> None:
    # The stdlib's worker, with a timed wait: a thread idle for `idle_seconds` may leave.
    while True:
        try:
            item = work_queue.get(timeout=idle_seconds)
        except queue.Empty:
            executor = executor_ref()
            if executor is None or executor._retire(threading.current_thread()):
                return
            del executor
            continue
        if item is not None:
            item.run()
            del item
            executor = executor_ref()
            if executor is not None:
                executor._now_idle()
            del executor
            continue
        executor = executor_ref()
        if _cf_thread._shutdown or executor is None or executor._shutdown:  # the stdlib's exit rule
            if executor is not None:
                executor._shutdown = True
            work_queue.put(None)
            return
        del executor


class ElasticThreadPool(ThreadPoolExecutor):
    def __init__(self, max_workers: int, thread_name_prefix: str = "", idle_seconds: float = 10.0,
                 min_workers: int = 2) -> None:
        if not 0 < idle_seconds:
            raise ValueError("idle_seconds must be positive")
        if not 1 <= min_workers <= max_workers:
            raise ValueError("need 1 <= min_workers <= max_workers")
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self.idle_seconds = idle_seconds
        self.min_workers = min_workers
        self._serial = 0
        self._debt = 0  # items queued with the pool full and busy, under _shutdown_lock
        self.retired = 0  # threads that exited idle (for tests and figures)

    def _now_idle(self) -> None:
        # The stdlib releases one idle count per item run. An item queued while every thread was
        # busy and the pool full (below) is run by a thread that then counts as idle although it
        # took that item: it pays that debt instead, so the count never exceeds the idle threads
        # (a stale count would let a submit rely on a thread that has left).
        with self._shutdown_lock:
            if self._debt:
                self._debt -= 1
                return
        self._idle_semaphore.release()

    def _adjust_thread_count(self) -> None:  # called by submit() under _shutdown_lock, item queued
        # An idle thread will take the item (the stdlib rule); with no thread left, always make one.
        if self._threads and self._idle_semaphore.acquire(timeout=0):
            return

        def wake(_: object, q: Any = self._work_queue) -> None:
            q.put(None)

        if len(self._threads) >= self._max_workers:
            self._debt += 1
            return
        self._serial += 1
        t = threading.Thread(name=f"{self._thread_name_prefix or 'pool'}_{self._serial}", target=_worker,
                             args=(weakref.ref(self, wake), self._work_queue, self.idle_seconds), daemon=True)
        t.start()
        _threads(self).add(t)
        _queues()[t] = self._work_queue

    def _retire(self, t: threading.Thread) -> bool:
        """An idle thread whose wait timed out asks to exit: yes when the pool is above its floor,
        nothing is queued, and an idle count is free to take (under the lock submit takes: a
        submit that counted on an idle thread has taken that count, so this one stays)."""
        with self._shutdown_lock:
            if len(self._threads) <= self.min_workers or self._shutdown or self._work_queue.qsize():
                return False
            if not self._idle_semaphore.acquire(timeout=0):
                return False
            _threads(self).discard(t)
            _queues().pop(t, None)
            self.retired += 1
            return True

    @property
    def thread_count(self) -> int:
        return len(self._threads)
