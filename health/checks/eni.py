"""ENI links and routing tables (`eni`): each ENI the pool holds, as the datapath needs it.

The agent reads, read-only through netns (`TaskNetworks.eni_states`, netns/inspect.py), for every
ENI whose link it owns: the link present and up with its MTU, in the ENI's table (100 + device
index) the router's on-link route and `default via <router> dev <link>`, and the `from <ip> lookup
<table>` rule of every task wired on it; and pool ENIs whose link was never found. Judged here:
- a link absent or down, a table's route missing, a task's rule missing → failed `EniDatapathBroken`
  (tasks on that ENI lose their traffic or leave by the wrong interface); remediation
  `reassert-network` re-applies links and tables;
- only an MTU other than the configured one → degraded `EniMtuMismatch` (large packets dropped);
- no ENI with a link (the local provider) → ok `NoEniLinks`.
The agent re-asserts links and tables on netlink events and every reconcile, and once more before
reporting drift (agent/host/health_sources.py `eni_links`): a failed result means the re-assertion
does not hold (the link is gone, something keeps undoing it, or a task's rule is missing: those are
not re-added).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from health.model import Observation, degraded, failed, ok
from titus_common.protocol import EvidenceValue

__all__ = ["EniCheck", "EniLink"]


@dataclass(frozen=True)
class EniLink:
    eni_id: str
    ifname: str
    problems: tuple[str, ...] = ()  # empty: all in place
    mtu_only: bool = False  # the only problem is the MTU
    rules_checked: int = 0


class EniCheck:
    name = "eni"

    def __init__(self, links: Callable[[], Awaitable[Sequence[EniLink]]], *, period: float = 30.0,
                 timeout: float = 10.0) -> None:
        self.links = links  # runs its netlink reads on a thread (asyncio.to_thread)
        self.period = period
        self.timeout = timeout

    async def run(self) -> Observation:
        links = list(await self.links())
        bad = [e for e in links if e.problems and not e.mtu_only]
        mtu = [e for e in links if e.problems and e.mtu_only]
        evidence: dict[str, EvidenceValue] = {
            "enis": len(links), "broken": len(bad), "mtuMismatch": len(mtu),
            "rulesChecked": sum(e.rules_checked for e in links),
        }
        for e in (bad + mtu)[:8]:
            evidence[f"eni.{e.eni_id}"] = f"{e.ifname}: {'; '.join(e.problems)}"[:200]
        if bad:
            first = bad[0]
            return failed("EniDatapathBroken", f"{len(bad)} ENI(s) broken; {first.eni_id} ({first.ifname}): "
                                               f"{'; '.join(first.problems)}", **evidence)
        if mtu:
            return degraded("EniMtuMismatch", f"{mtu[0].eni_id}: {'; '.join(mtu[0].problems)}", **evidence)
        if not links:
            return ok("NoEniLinks", **evidence)
        return ok("EniOk", **evidence)
