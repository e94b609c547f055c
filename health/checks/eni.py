"""ENI links and routing tables (`eni`): each ENI the pool holds, as the datapath needs it.

The agent reads, read-only through netns (`TaskNetworks.eni_states`, netns/inspect.py), for every
ENI whose link it owns: the link present and up with its MTU, in the ENI's table (100 + device
index) the router's on-link route and `default via <router> dev <link>`; and pool ENIs whose link
was never found. And every wired task's own rules (netns/taskrules.py: `to <ip>`, on an ENI
`from <ip>` and the hairpin `iif <tn link>`). Judged here:
- a link absent or down, a table's route missing → failed `EniDatapathBroken` (tasks on that ENI
  lose their traffic or leave by the wrong interface); remediation `reassert-network` re-applies
  links and tables;
- a task's rule missing now, or re-added by the agent in the last 60 s → degraded
  `TaskRuleMissing` naming the task and the rule (evidence `taskRule.<task>`; something outside the
  agent deletes its rules: the task lost its traffic for that while);
- only an MTU other than the configured one → degraded `EniMtuMismatch` (large packets dropped);
- no ENI with a link (the local provider) → ok `NoEniLinks`.
The agent re-asserts links, tables and the tasks' rules on netlink events (aws), every reconcile
and `reassert-network`, and once more before reporting drift (agent/host/health_sources.py): a
failed result, or a rule reported "still missing", means the re-assertion does not hold.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from health.model import Observation, degraded, failed, ok
from titus_common.protocol import EvidenceValue

__all__ = ["EniCheck", "EniLink", "TaskRuleFinding"]


@dataclass(frozen=True)
class EniLink:
    eni_id: str
    ifname: str
    problems: tuple[str, ...] = ()  # empty: all in place
    mtu_only: bool = False  # the only problem is the MTU
    rules_checked: int = 0


@dataclass(frozen=True)
class TaskRuleFinding:
    task_id: str
    rule: str  # e.g. "from 10.0.0.5 lookup 101 priority 1536"
    readded: bool  # True: it was missing and is back; False: still missing


async def _no_task_rules() -> Sequence[TaskRuleFinding]:
    return ()


class EniCheck:
    name = "eni"

    def __init__(self, links: Callable[[], Awaitable[Sequence[EniLink]]], *, period: float = 30.0,
                 timeout: float = 10.0,
                 task_rules: Callable[[], Awaitable[Sequence[TaskRuleFinding]]] = _no_task_rules) -> None:
        self.links = links  # runs its netlink reads on a thread (asyncio.to_thread)
        self.task_rules = task_rules
        self.period = period
        self.timeout = timeout

    async def run(self) -> Observation:
        links = list(await self.links())
        rules = list(await self.task_rules())
        bad = [e for e in links if e.problems and not e.mtu_only]
        mtu = [e for e in links if e.problems and e.mtu_only]
        evidence: dict[str, EvidenceValue] = {
            "enis": len(links), "broken": len(bad), "mtuMismatch": len(mtu),
            "rulesChecked": sum(e.rules_checked for e in links),
        }
        if rules:
            evidence["taskRulesMissing"] = sum(1 for r in rules if not r.readded)
            evidence["taskRulesReadded"] = sum(1 for r in rules if r.readded)
            for r in rules[:8]:
                key = f"taskRule.{r.task_id}"
                said = f"{r.rule} ({'re-added' if r.readded else 'still missing'})"
                evidence[key] = f"{evidence[key]}; {said}"[:200] if key in evidence else said
        for e in (bad + mtu)[:8]:
            evidence[f"eni.{e.eni_id}"] = f"{e.ifname}: {'; '.join(e.problems)}"[:200]
        if bad:
            first = bad[0]
            return failed("EniDatapathBroken", f"{len(bad)} ENI(s) broken; {first.eni_id} ({first.ifname}): "
                                               f"{'; '.join(first.problems)}", **evidence)
        if rules:
            r0 = rules[0]
            return degraded("TaskRuleMissing", f"{len(rules)} task rule(s) deleted from outside; task {r0.task_id}: "
                                               f"{r0.rule} {'was missing (re-added)' if r0.readded else 'missing'}"[:256],
                            **evidence)
        if mtu:
            return degraded("EniMtuMismatch", f"{mtu[0].eni_id}: {'; '.join(mtu[0].problems)}", **evidence)
        if not links:
            return ok("NoEniLinks", **evidence)
        return ok("EniOk", **evidence)
