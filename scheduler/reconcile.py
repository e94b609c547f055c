"""Reconciliation's policy, as one pure function: `decide(cell, first_seen, config, now) -> Plan`.

Desired state is the scheduler's tasks; actual state is what each agent reports (`running` task
ids, `unknown_containers`). Per node, `decide` finds every mismatch and proposes actions:

| mismatch           | what it is                                                 | proposed action (after)     |
|--------------------|------------------------------------------------------------|-----------------------------|
| `missing`          | StartInitiated/Started here, the Ready agent has not held it for `missing_after` | declareLost (missing_lost_after) |
| `disconnected`     | on a host silent for longer than `lost_after`              | declareLost (at once)       |
| `unknownTask`      | the agent holds a task id the scheduler does not know      | killOrphanTask (orphan_kill_after; 0: never) |
| `unknownContainer` | a container neither the agent nor the scheduler knows      | killOrphanContainer (likewise) |
| `stuck`            | Launched / StartInitiated / KillInitiated past its timeout | retryStuck / killStuck / resendKill |

`Plan.freeze` says whether the mismatch is a mass mismatch: more than `reconcile_freeze_abs`, or
more than a couple (2) and more than `reconcile_freeze_fraction` of the running tasks. A mass
mismatch is evidence that the scheduler's state is wrong, not the cell's: nothing is killed then
(`reconciler.Reconciler` holds every disruptive action and pages an operator). Actions on a task
whose host has not reported since the scheduler started are never proposed — no report is no proof;
nor are orphans counted from the stale last report of a host that is not Ready.

A task its agent does not report is only a `missing` mismatch once it has gone unreported for
`missing_after` (its key's first sighting, in `Plan.watch` until then): a task that just entered
StartInitiated/Started — a replacement placed a moment ago — is not in the agent's last report yet,
and must neither count towards a freeze nor be declared lost.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from scheduler.config import SchedulerConfig
from titus_common.states import TaskState

__all__ = ["Action", "ActionKind", "CellView", "NodeObs", "Plan", "TaskObs", "decide"]

A_COUPLE = 2


class ActionKind(str, enum.Enum):
    DECLARE_LOST = "declareLost"  # finish as lost; replaced like any lost task
    RETRY_STUCK = "retryStuck"  # Launched too long and not on its host: finish as crashed, replaced
    KILL_STUCK = "killStuck"  # StartInitiated too long: kill it, then replace it as crashed
    RESEND_KILL = "resendKill"  # KillInitiated too long: send the kill again, escalate
    KILL_ORPHAN_TASK = "killOrphanTask"  # the agent runs a task the scheduler does not know: kill it
    KILL_ORPHAN_CONTAINER = "killOrphanContainer"  # a container nobody knows: the agent kills it

    @property
    def disruptive(self) -> bool:
        """Kills or declares lost: goes through the kill path (budget, freeze)."""
        return self is not ActionKind.RESEND_KILL

    @property
    def orphan(self) -> bool:
        return self in (ActionKind.KILL_ORPHAN_TASK, ActionKind.KILL_ORPHAN_CONTAINER)


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    task_id: str  # the task id (or, for killOrphanContainer, the container id)
    job_id: str | None  # None for an orphan: no job of the scheduler's
    node_id: str | None
    reason: str

    @property
    def id(self) -> str:
        return f"{self.kind.value}:{self.task_id}"

    def to_api(self) -> dict[str, str | None]:
        return {"id": self.id, "kind": self.kind.value, "taskId": self.task_id, "jobId": self.job_id,
                "nodeId": self.node_id, "reason": self.reason}


@dataclass(frozen=True)
class TaskObs:
    id: str
    job_id: str
    state: TaskState
    since: float  # when it entered `state`


@dataclass(frozen=True)
class NodeObs:
    id: str
    ready: bool
    silent_for: float
    reported: frozenset[str] | None  # task ids its agent holds; None: no report since start
    unknown_containers: tuple[str, ...] = ()
    tasks: tuple[TaskObs, ...] = ()  # the scheduler's active tasks placed here


@dataclass(frozen=True)
class CellView:
    nodes: tuple[NodeObs, ...]
    known_task_ids: frozenset[str]  # every non-terminal task the scheduler knows, placed anywhere
    running: int  # active tasks the scheduler knows


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    # Mismatch key ("kind:id") → node, for the Reconciler's first-seen ages and the API.
    mismatches: dict[str, str] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    # Candidates not yet counted (a `missing` younger than `missing_after`): key → node, kept for their age.
    watch: dict[str, str] = field(default_factory=dict)
    freeze: str | None = None  # why this is a mass mismatch, or None

    @property
    def total(self) -> int:
        return sum(self.counts.values())


_STUCK = {
    TaskState.LAUNCHED: ("stuck_launched_after", ActionKind.RETRY_STUCK),
    TaskState.START_INITIATED: ("stuck_start_initiated_after", ActionKind.KILL_STUCK),
    TaskState.KILL_INITIATED: ("stuck_kill_initiated_after", ActionKind.RESEND_KILL),
}


def _note(plan: Plan, kind: str, ident: str, node_id: str) -> str:
    key = f"{kind}:{ident}"
    plan.mismatches[key] = node_id
    plan.counts[kind] += 1
    return key


def _orphan(plan: Plan, kind: ActionKind, ident: str, node: NodeObs, age: float, config: SchedulerConfig) -> None:
    """Propose killing an orphan once it has been reported for `orphan_kill_after` (0: never)."""
    after = config.orphan_kill_after
    if after > 0 and age >= after:
        what = "task" if kind is ActionKind.KILL_ORPHAN_TASK else "container"
        plan.actions.append(Action(kind, ident, None, node.id,
                                   f"orphan {what} on {node.id}, unknown to the scheduler for {age:.0f}s"))


def decide(cell: CellView, first_seen: Mapping[str, float], config: SchedulerConfig, now: float) -> Plan:
    plan = Plan()

    def age(key: str) -> float:
        return now - first_seen.get(key, now)

    for node in cell.nodes:
        silent_lost = not node.ready and node.silent_for > config.lost_after
        for t in node.tasks:
            if silent_lost:
                _note(plan, "disconnected", t.id, node.id)
                plan.actions.append(Action(ActionKind.DECLARE_LOST, t.id, t.job_id, node.id,
                                           f"host {node.id} silent for {node.silent_for:.0f}s"))
                continue
            if node.reported is None or not node.ready:
                continue  # no evidence either way yet
            stuck = _STUCK.get(t.state)
            if stuck is not None and now - t.since > getattr(config, stuck[0]):
                kind = stuck[1]
                if kind is ActionKind.RETRY_STUCK and t.id in node.reported:
                    pass  # its agent has it: a slow report, not a stuck task
                else:
                    _note(plan, "stuck", t.id, node.id)
                    plan.actions.append(Action(kind, t.id, t.job_id, node.id,
                                               f"stuckInState: {t.state.value} for {now - t.since:.0f}s"))
                    continue
            if t.state in (TaskState.START_INITIATED, TaskState.STARTED) and t.id not in node.reported:
                key = f"missing:{t.id}"
                if age(key) < config.missing_after:
                    plan.watch[key] = node.id  # maybe only newer than the agent's last report
                    continue
                _note(plan, "missing", t.id, node.id)
                if age(key) >= config.missing_lost_after:
                    plan.actions.append(Action(ActionKind.DECLARE_LOST, t.id, t.job_id, node.id,
                                               f"agent on {node.id} has not reported it for {age(key):.0f}s"))
        if not node.ready:
            continue  # a silent host's last report is stale: no evidence of orphans now
        for task_id in sorted(node.reported or ()):
            if task_id not in cell.known_task_ids:
                key = _note(plan, "unknownTask", task_id, node.id)
                _orphan(plan, ActionKind.KILL_ORPHAN_TASK, task_id, node, age(key), config)
        for container in node.unknown_containers:
            key = _note(plan, "unknownContainer", container, node.id)
            _orphan(plan, ActionKind.KILL_ORPHAN_CONTAINER, container, node, age(key), config)
    total = plan.total
    if total > config.reconcile_freeze_abs:
        plan.freeze = f"mismatch of {total} exceeds {config.reconcile_freeze_abs}"
    elif total > A_COUPLE and total > config.reconcile_freeze_fraction * cell.running:
        plan.freeze = (f"mismatch of {total} exceeds {config.reconcile_freeze_fraction:.0%} "
                       f"of {cell.running} running tasks")
    if plan.freeze is not None:
        plan.freeze += " (" + ", ".join(f"{k} {n}" for k, n in sorted(plan.counts.items())) + ")"
    return plan
