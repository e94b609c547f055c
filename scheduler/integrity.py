"""The start-up integrity check of a loaded store: its records must agree with one another before
the scheduler acts on them. A store that fails is refused (`StoreCorrupt`, exit code 3), naming
every problem found (up to ten) — a missing task row must never look like a task to replace.

Checks: each job's `tasksCreated` equals the task rows it has (a deleted or extra row); each task's
`replacedBy` names an existing task of the same job and index; at most one live task per job
index (a drain's move in flight — a live task whose `replacedBy` is live — counts once); every active task's host is a known node; a finished job has no live task.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from scheduler.records import JobState
from scheduler.store import Snapshot, StoreCorrupt

__all__ = ["check", "problems"]

MAX_LISTED = 10


def problems(snap: Snapshot) -> list[str]:
    found: list[str] = []
    per_job = Counter(t.job_id for t in snap.tasks)
    tasks = {t.id: t for t in snap.tasks}
    nodes = {n.id for n in snap.nodes}
    for j in snap.jobs:
        if per_job.get(j.id, 0) != j.tasks_created:
            found.append(f"job {j.id} created {j.tasks_created} tasks but the store holds {per_job.get(j.id, 0)}")
    live: Counter[tuple[str, int]] = Counter()
    jobs = {j.id: j for j in snap.jobs}
    for t in snap.tasks:
        if t.replaced_by is not None:
            r = tasks.get(t.replaced_by)
            if r is None:
                found.append(f"task {t.id} was replaced by {t.replaced_by}, which is missing")
            elif r.job_id != t.job_id or r.index != t.index:
                found.append(f"task {t.id} was replaced by {r.id} of another job or index")
        if not t.state.terminal:
            r = tasks.get(t.replaced_by) if t.replaced_by is not None else None
            if r is None or r.state.terminal:  # a drain's move in flight counts once (scheduler/drain.py)
                live[(t.job_id, t.index)] += 1
            if t.state.active and t.node_id is not None and t.node_id not in nodes:
                found.append(f"task {t.id} is {t.state.value} on host {t.node_id}, which is not in the store")
            job = jobs.get(t.job_id)
            if job is not None and job.state is JobState.FINISHED:
                found.append(f"task {t.id} is {t.state.value} but its job {t.job_id} is Finished")
    for (job_id, index), n in sorted(live.items()):
        if n > 1:
            found.append(f"job {job_id} index {index} has {n} live tasks (a task in two places)")
    return found


def check(snap: Snapshot, path: Path | str) -> None:
    found = problems(snap)
    if found:
        more = f" (and {len(found) - MAX_LISTED} more)" if len(found) > MAX_LISTED else ""
        raise StoreCorrupt(
            f"{path}: integrity check failed: {'; '.join(found[:MAX_LISTED])}{more}. Refusing to start: "
            "the store's records contradict one another; restore a backup (docs/reconcile.md)"
        )
