"""A burst of submissions shares one registry lookup per tag (scheduler/registry.py, `reuse`); the
tag check always asks afresh; a shared answer is not older than `reuse_for`."""

from __future__ import annotations

import asyncio
import threading

import pytest

from scheduler.registry import Lookup, Registry


class Counting(Registry):
    """The real `lookup`/`_ask` path; only the blocking HTTP call is replaced, and it waits for `gate`."""

    def __init__(self, reuse_for: float) -> None:
        super().__init__(timeout=5, reuse_for=reuse_for)
        self.asked: list[str] = []
        self.gate = threading.Event()
        self._lock = threading.Lock()

    def lookup_blocking(self, ref: str) -> Lookup:
        with self._lock:
            self.asked.append(ref)
            n = len(self.asked)
        self.gate.wait(5)
        return Lookup(f"sha256:{n:064x}")


async def test_concurrent_submissions_of_one_tag_share_one_lookup() -> None:
    r = Counting(reuse_for=60)
    pending = [asyncio.create_task(r.lookup(f"reg.example/app{i % 3}:1", reuse=True)) for i in range(30)]
    await asyncio.sleep(0)
    r.gate.set()
    answers = await asyncio.gather(*pending)
    assert sorted(r.asked) == ["reg.example/app0:1", "reg.example/app1:1", "reg.example/app2:1"]
    by_ref: dict[str, set[str | None]] = {}
    for i, a in enumerate(answers):
        by_ref.setdefault(f"app{i % 3}", set()).add(a.digest)
    assert all(len(d) == 1 for d in by_ref.values())  # every job of a tag pinned the same digest
    again = await r.lookup("reg.example/app0:1", reuse=True)  # answered: still shared
    assert again == answers[0] and len(r.asked) == 3


@pytest.mark.parametrize(("reuse", "reuse_for", "asks"), [
    (False, 60.0, 2),  # the tag check: always afresh
    (True, 0.0, 2),  # reuse off in the config
    (True, 60.0, 1),
])
async def test_who_asks_afresh(reuse: bool, reuse_for: float, asks: int) -> None:
    r = Counting(reuse_for=reuse_for)
    r.gate.set()
    await r.lookup("reg.example/a:1", reuse=reuse)
    await r.lookup("reg.example/a:1", reuse=reuse)
    assert len(r.asked) == asks


async def test_a_shared_answer_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("scheduler.registry.time.monotonic", lambda: now[0])
    r = Counting(reuse_for=10)
    r.gate.set()
    first = await r.lookup("reg.example/a:1", reuse=True)
    now[0] += 9.9
    assert await r.lookup("reg.example/a:1", reuse=True) == first
    now[0] += 0.2  # 10.1 s after the first ask: the tag may have moved since
    second = await r.lookup("reg.example/a:1", reuse=True)
    assert second != first and len(r.asked) == 2
    assert list(r._recent) == ["reg.example/a:1"]  # expired entries are dropped, not kept forever


async def test_one_https_context_for_every_lookup() -> None:
    r = Registry(timeout=1)
    assert r._ssl() is r._ssl()
