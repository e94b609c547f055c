"""Drain: move a cordoned host's tasks off it under disruption budgets. A pure plan over the
scheduler's records; `draining.Drainer` applies it (kills through the one kill path, `killpath`).

- **service task: replaced first, then killed.** The drain starts a replacement (a new task of
  the same index, placed like any other; the host is cordoned, so it lands elsewhere) and kills the
  task on the draining host only once that replacement is Started on another host. Why this order:
  a service never runs below its desired count because of a drain (kill-then-replace would take a
  task out of a load balancer for a whole launch); the cost is one extra task per move in flight,
  and a move waits as long as no other host can take the replacement (visible in the status).
- **batch task: allowed to finish** until the drain's `batch_deadline`; one still running then is
  **evicted**: killed and replaced elsewhere at once, costing the job none of its retries.
- **per-job disruption budget**: at most `budget` of one job's tasks moving at once across every
  draining host (a replacement in flight, or a kill in flight); the job attribute
  `titus.disruption.budget` (an integer ≥ 1), else the kill path's allowance
  `max(1, floor(job_disruption_fraction × live tasks))`. Every kill also takes the kill path's
  global token and its per-job window (`killpath.KillPath.take`).
- a host is **drained** when no task holds resources on it any more; it stays cordoned.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from scheduler.records import JobRecord, JobState, NodeRecord, TaskRecord
from titus_common.states import TaskState

__all__ = [
    "DISRUPTION_ATTRIBUTE", "DrainPlan", "Step", "StepKind", "covering", "job_budget", "parse_budget", "plan",
]

DISRUPTION_ATTRIBUTE = "titus.disruption.budget"
MAX_BUDGET = 10_000


class StepKind(str, enum.Enum):
    SURGE = "surge"  # start a replacement of this service task elsewhere
    KILL = "kill"  # its replacement is Started elsewhere: kill this one
    EVICT = "evict"  # a batch task past the deadline: kill it, replace it elsewhere


@dataclass(frozen=True)
class Step:
    kind: StepKind
    task_id: str
    job_id: str
    node_id: str
    reason: str


@dataclass
class DrainPlan:
    steps: list[Step] = field(default_factory=list)
    phases: dict[str, str] = field(default_factory=dict)  # task id → what it waits for
    done: list[str] = field(default_factory=list)  # draining hosts with nothing left on them


def parse_budget(attributes: Mapping[str, str]) -> int | None:
    """The job's `titus.disruption.budget`, None when unset; ValueError with the reason if invalid."""
    raw = attributes.get(DISRUPTION_ATTRIBUTE)
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"{DISRUPTION_ATTRIBUTE}: expected an integer, got {raw!r}") from None
    if not 1 <= value <= MAX_BUDGET:
        raise ValueError(f"{DISRUPTION_ATTRIBUTE}: must be between 1 and {MAX_BUDGET}, got {value}")
    return value


def job_budget(job: JobRecord, live_tasks: int, fraction: float) -> int:
    """How many of the job's tasks a drain may move at once."""
    try:
        explicit = parse_budget(job.spec.attributes)
    except ValueError:
        explicit = None  # refused at submit; a job stored before that check gets the default
    return explicit if explicit is not None else max(1, math.floor(fraction * live_tasks))


def covering(task: TaskRecord, job_tasks: Iterable[TaskRecord]) -> list[TaskRecord]:
    """The job's other live tasks of the same index (a drain's replacement and its own replacements)."""
    return [t for t in job_tasks if t.index == task.index and t.id != task.id and not t.state.terminal]


def plan(
    draining: Iterable[NodeRecord],
    tasks_on: Callable[[str], list[TaskRecord]],
    job_tasks: Callable[[str], list[TaskRecord]],
    jobs: Mapping[str, JobRecord],
    fraction: float,
    now: float,
) -> DrainPlan:
    out = DrainPlan()
    nodes = sorted((n for n in draining if n.drain is not None and n.drain.finished_at is None), key=lambda n: n.id)
    on: dict[str, list[TaskRecord]] = {
        n.id: sorted((t for t in tasks_on(n.id) if not t.state.terminal), key=lambda t: (t.job_id, t.index, t.id))
        for n in nodes
    }
    live: Counter[str] = Counter()
    moving: Counter[str] = Counter()
    by_index: dict[str, dict[int, list[TaskRecord]]] = {}  # job → index → live tasks (one scan per job)

    def covers_of(t: TaskRecord) -> list[TaskRecord]:
        index = by_index.get(t.job_id)
        if index is None:
            index = by_index[t.job_id] = {}
            for x in job_tasks(t.job_id):
                if not x.state.terminal:
                    index.setdefault(x.index, []).append(x)
            live[t.job_id] = sum(len(v) for v in index.values())
        return [x for x in index.get(t.index, ()) if x.id != t.id]

    for tasks in on.values():
        for t in tasks:
            covers = covers_of(t)
            if t.kill_requested or (t.replaced_by is not None and covers):
                moving[t.job_id] += 1
    for n in nodes:
        assert n.drain is not None
        if not on[n.id]:
            out.done.append(n.id)
            continue
        for t in on[n.id]:
            job = jobs[t.job_id]
            budget = job_budget(job, live[t.job_id], fraction)
            over_budget = f"waiting: disruption budget of job {job.id} ({moving[t.job_id]} of {budget} moving)"
            if t.kill_requested:
                out.phases[t.id] = "killing"
            elif job.state is not JobState.ACCEPTED:
                out.phases[t.id] = "its job is being killed"
            elif job.spec.batch is None:
                covers = covers_of(t)
                started = [c for c in covers if c.state is TaskState.STARTED and c.node_id != n.id]
                if started:
                    out.steps.append(Step(StepKind.KILL, t.id, t.job_id, n.id,
                                          f"drained: replaced by {started[0].id} Started on {started[0].node_id}"))
                    out.phases[t.id] = f"replacement {started[0].id} Started on {started[0].node_id}: killing"
                elif covers:
                    c = covers[0]
                    where = f" on {c.node_id}" if c.node_id else ""
                    out.phases[t.id] = f"waiting for its replacement {c.id} ({c.state.value}{where})"
                elif moving[t.job_id] < budget:
                    moving[t.job_id] += 1
                    out.steps.append(Step(StepKind.SURGE, t.id, t.job_id, n.id, f"host {n.id} draining"))
                    out.phases[t.id] = "replacement requested"
                else:
                    out.phases[t.id] = over_budget
            elif now < n.drain.batch_deadline:
                out.phases[t.id] = f"batch: may finish until the deadline ({n.drain.batch_deadline - now:.0f}s left)"
            elif moving[t.job_id] < budget:
                moving[t.job_id] += 1
                out.steps.append(Step(StepKind.EVICT, t.id, t.job_id, n.id,
                                      f"evicted: host {n.id} drained (batch deadline passed)"))
                out.phases[t.id] = "evicting (batch deadline passed)"
            else:
                out.phases[t.id] = over_budget
    return out
