"""A task record's own transitions, and when a job is complete.

Functions on in-memory records, with no store and no indexes: `core.Scheduler` calls them and
commits what they changed. A task is created Accepted; an agent's report moves it forward only
(every timestamp the agent saw is kept); an ended task is replaced by a new task of the same index
carrying its counters (`retries.decide` says whether and when).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from scheduler.records import JobRecord, JobState, TaskRecord
from scheduler.retries import Counters, Replace
from titus_common.protocol import TaskUpdate
from titus_common.states import FinishReason, TaskState, can_transition

__all__ = ["counters", "finish", "job_complete", "merge_report", "new_id", "new_task", "ran_seconds", "replacement"]


def new_id() -> str:
    return str(uuid.uuid4())


def new_task(job: JobRecord, index: int, now: float) -> TaskRecord:
    job.tasks_created += 1
    task = TaskRecord(id=new_id(), job_id=job.id, index=index)
    task.enter(TaskState.ACCEPTED, now)
    return task


def counters(task: TaskRecord) -> Counters:
    return Counters(
        retries_used=task.retries_used,
        system_retries=task.system_retries,
        consecutive_crashes=task.consecutive_crashes,
        consecutive_failures=task.consecutive_failures,
    )


def ran_seconds(task: TaskRecord) -> float | None:
    """Started → Finished of an ended task; None if it never started."""
    started = task.timestamps.get(TaskState.STARTED.value)
    return None if started is None else task.timestamps[TaskState.FINISHED.value] - started


def replacement(job: JobRecord, ended: TaskRecord, decision: Replace, now: float) -> TaskRecord:
    new = new_task(job, ended.index, now)
    new.retries_used = decision.counters.retries_used
    new.system_retries = decision.counters.system_retries
    new.consecutive_crashes = decision.counters.consecutive_crashes
    new.consecutive_failures = decision.counters.consecutive_failures
    new.not_before = now + decision.delay
    ended.replaced_by = new.id
    return new


def merge_report(task: TaskRecord, update: TaskUpdate) -> bool:
    """Take an agent's timestamps (all but Finished, which `finish` records). Returns whether the
    state moved forward."""
    moved = False
    for state in sorted(update.timestamps, key=lambda s: s.rank):
        if state is TaskState.FINISHED:
            continue
        # Keep every timestamp the agent saw (a Started that raced a kill still happened),
        # but the state itself only moves forward.
        task.timestamps.setdefault(state.value, update.timestamps[state])
        if can_transition(task.state, state):
            task.state = state
            moved = True
    if update.container_id:
        task.container_id = update.container_id
    return moved


def finish(task: TaskRecord, reason: FinishReason, message: str, at: float, exit_code: int | None = None) -> None:
    task.enter(TaskState.FINISHED, at)
    task.reason = reason
    task.message = message
    task.exit_code = exit_code


def job_complete(job: JobRecord, tasks: Iterable[TaskRecord]) -> bool:
    """Nothing left running, and killed or (batch) every index settled. A service job ends only by
    a kill."""
    if job.state is JobState.FINISHED or any(not t.state.terminal for t in tasks):
        return False
    return job.state is JobState.KILL_INITIATED or (
        job.spec.batch is not None and len(job.index_results) >= job.spec.batch.size
    )
