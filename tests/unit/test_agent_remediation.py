"""The agent's remediation executor: each order id runs once, failures and unknown actions are
results not exceptions, the checks re-run afterwards."""

from __future__ import annotations

import asyncio

from agent.remediation import Remediator
from titus_common.protocol import RemediationOrder


def order(i: str, action: str) -> RemediationOrder:
    return RemediationOrder(id=i, action=action, check="disk", reason="DiskPressure")


async def test_orders_run_once_and_report() -> None:
    calls: list[str] = []
    rechecks = asyncio.Event()

    async def prune() -> str:
        calls.append("prune")
        return "freed"

    async def broken() -> str:
        raise OSError("no")

    async def after() -> None:
        if len(calls) >= 1:
            rechecks.set()

    r = Remediator({"prune": prune, "broken": broken}, after=after)
    for o in (order("a", "prune"), order("a", "prune"), order("b", "broken"), order("c", "reboot")):
        r.submit(o)
    while len(r.results()) < 3:
        await asyncio.sleep(0)
    await rechecks.wait()
    by_id = {x.id: x for x in r.results()}
    assert calls == ["prune"]
    assert by_id["a"].ok and by_id["a"].message == "freed"
    assert not by_id["b"].ok and "OSError: no" in by_id["b"].message
    assert by_id["a"].supported and by_id["b"].supported
    assert not by_id["c"].ok and not by_id["c"].supported and "no action 'reboot'" in by_id["c"].message
    await r.stop()


async def test_an_action_that_hangs_times_out() -> None:
    async def hang() -> str:
        await asyncio.Event().wait()
        return ""

    r = Remediator({"hang": hang}, timeout=0.05)
    r.submit(order("x", "hang"))
    while not r.results():
        await asyncio.sleep(0.01)
    assert not r.results()[0].ok and "did not finish" in r.results()[0].message
