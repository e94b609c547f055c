import asyncio
import threading
import time

import pytest

from titus_common.threads import ElasticThreadPool


def wait_until(cond, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.01)


def test_a_burst_grows_the_pool_and_idle_threads_leave_down_to_the_floor() -> None:
    pool = ElasticThreadPool(max_workers=16, thread_name_prefix="t", idle_seconds=0.2, min_workers=2)
    release = threading.Event()
    futures = [pool.submit(release.wait, 10) for _ in range(16)]
    wait_until(lambda: pool.thread_count == 16)  # each blocked item got a thread of its own
    release.set()
    assert all(f.result(10) for f in futures)
    wait_until(lambda: pool.thread_count == 2)
    assert pool.retired == 14
    assert pool.submit(lambda: 7).result(5) == 7  # still serves afterwards
    pool.shutdown(wait=True)


def test_idle_threads_are_reused_not_multiplied() -> None:
    pool = ElasticThreadPool(max_workers=16, idle_seconds=5.0)
    for _ in range(200):
        pool.submit(time.sleep, 0).result(5)
    assert pool.thread_count == 1
    pool.shutdown(wait=True)


def test_no_item_is_stranded_while_threads_retire() -> None:
    """Items submitted at the moment idle threads time out all run (the retire/submit race)."""
    pool = ElasticThreadPool(max_workers=8, idle_seconds=0.01, min_workers=1)
    done = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal done
        with lock:
            done += 1

    for round_ in range(100):
        for f in [pool.submit(work) for _ in range(1 + round_ % 8)]:
            f.result(5)
        time.sleep(0.005 * (round_ % 4))
    assert done == sum(1 + r % 8 for r in range(100))
    pool.shutdown(wait=True)


def test_asyncio_takes_it_as_its_default_executor() -> None:
    async def main() -> str:
        asyncio.get_running_loop().set_default_executor(ElasticThreadPool(4, "blocking", idle_seconds=1))
        return await asyncio.to_thread(threading.current_thread().getName) if False else \
            await asyncio.to_thread(lambda: threading.current_thread().name)

    assert asyncio.run(main()).startswith("blocking_")


def test_shutdown_stops_every_thread() -> None:
    pool = ElasticThreadPool(max_workers=4, idle_seconds=30)
    release = threading.Event()
    for _ in range(4):
        pool.submit(release.wait, 10)
    release.set()
    pool.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)


@pytest.mark.parametrize("bad", [{"idle_seconds": 0}, {"min_workers": 0}, {"min_workers": 5}])
def test_bad_settings_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ElasticThreadPool(max_workers=4, **bad)  # type: ignore[arg-type]


def test_a_full_pool_leaves_no_stale_idle_count() -> None:
    """Items queued while the pool was full and busy do not count as idle threads afterwards: once
    the pool shrank, a new burst still gets a thread per item, not a queue behind the floor."""
    pool = ElasticThreadPool(max_workers=3, idle_seconds=0.1, min_workers=1)
    release = threading.Event()
    first = [pool.submit(release.wait, 10) for _ in range(9)]  # 3 run, 6 queue behind a full pool
    release.set()
    assert all(f.result(10) for f in first)
    wait_until(lambda: pool.thread_count == 1)
    together = threading.Barrier(3, timeout=5)
    assert all(f.result(10) is not None for f in [pool.submit(together.wait) for _ in range(3)])
    pool.shutdown(wait=True)
