"""The shared/exclusive gate between launches' metadata steps and `restart-metadata`
(agent/host/gate.py): shared holders overlap, exclusive waits for them and keeps new ones out,
and an exclusive waiter cancelled (the remediation's time limit) lets them in again."""

from __future__ import annotations

import asyncio

from agent.host.gate import Gate


async def test_shared_holders_overlap() -> None:
    gate = Gate()
    inside = asyncio.Event()
    both = asyncio.Barrier(2)

    async def hold() -> None:
        async with gate.shared():
            await both.wait()  # only returns when the other is inside too
            inside.set()

    await asyncio.wait_for(asyncio.gather(hold(), hold()), 5)
    assert inside.is_set() and gate.shared_holders == 0


async def test_exclusive_waits_for_shared_and_holds_new_shared_behind_it() -> None:
    gate = Gate()
    order: list[str] = []
    release_first = asyncio.Event()
    first_in = asyncio.Event()

    async def first() -> None:
        async with gate.shared():
            first_in.set()
            await release_first.wait()
            order.append("first done")

    async def restart() -> None:
        async with gate.exclusive():
            order.append("exclusive")

    async def late() -> None:
        async with gate.shared():
            order.append("late")

    t1 = asyncio.create_task(first())
    await first_in.wait()
    t2 = asyncio.create_task(restart())
    while not gate._exclusive:  # the exclusive waiter has announced itself
        await asyncio.sleep(0)
    t3 = asyncio.create_task(late())
    for _ in range(10):
        await asyncio.sleep(0)
    assert order == []  # the exclusive waits for `first`; `late` waits behind the exclusive
    release_first.set()
    await asyncio.wait_for(asyncio.gather(t1, t2, t3), 5)
    assert order == ["first done", "exclusive", "late"]


async def test_a_cancelled_exclusive_waiter_lets_shared_holders_in() -> None:
    gate = Gate()
    release = asyncio.Event()
    held = asyncio.Event()

    async def hold() -> None:
        async with gate.shared():
            held.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await held.wait()
    with_timeout = asyncio.create_task(asyncio.wait_for(gate.exclusive().__aenter__(), 0.05))
    try:
        await with_timeout
    except TimeoutError:
        pass
    else:
        raise AssertionError("the exclusive entered while a shared holder was inside")
    async with asyncio.timeout(5):
        async with gate.shared():  # not kept out by the cancelled waiter
            pass
    release.set()
    await holder
    async with asyncio.timeout(5):
        async with gate.exclusive():
            assert gate.shared_holders == 0
