"""Finished jobs leave memory: what a finished job held (its record, its task records, their index
entries, delivery bookkeeping) is released `finished_job_retention` seconds after it finished. The
records stay in the store; reads of an evicted job or task are answered from there (`Evicted`), so
the API still finds them. The in-memory maps stay the working copy of live work only.

Kept on purpose: the idempotency-key → job id entry of an evicted job (a few dozen bytes), so a
repeated submission still returns the job instead of hitting the store's unique key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from scheduler import retries
from scheduler.records import JobRecord, JobState, TaskRecord
from scheduler.startfailure import start_failure_of
from titus_common.memory import give_back

if TYPE_CHECKING:
    from scheduler.core import Scheduler

__all__ = ["JobSummary", "Retention"]

log = logging.getLogger("titus.scheduler.retention")

CHECK_EVERY = 30.0  # seconds between passes of the control loop's retention check


@dataclass(frozen=True)
class JobSummary:
    """What GET /v1/jobs/{id} says of a job's tasks (`taskCounts`, `crashLooping`, `startFailure`)."""

    counts: dict[str, int]
    crash_looping: bool
    start_failure: str | None


class Retention:
    def __init__(self, age: float) -> None:
        self.age = age
        self.evicted_jobs = 0
        self.evicted_tasks = 0
        self._next_pass = 0.0
        self._store_reads = 0  # reads of evicted jobs' tasks since the last give-back

    def due(self, now: float) -> bool:
        return now >= self._next_pass

    def evict(self, s: Scheduler, now: float) -> int:
        """Drop every Finished job whose retention has passed (and its tasks) from memory. Returns the
        number of jobs evicted. Only `core.Scheduler` calls it, on the event loop."""
        self._next_pass = now + min(CHECK_EVERY, max(self.age, 1.0))
        old = [
            j for j in s.jobs.values()
            if j.state is JobState.FINISHED and (j.finished_at or 0.0) + self.age <= now
        ]
        tasks = 0
        for job in old:
            del s.jobs[job.id]
            for t in s._index.forget_job(job.id):
                s._deliveries.forget(t.id)
                tasks += 1
        if old:
            self.evicted_jobs += len(old)
            self.evicted_tasks += tasks
            s._index.compact()  # noqa: SLF001 — the index is the scheduler's, released on its behalf
            s.jobs.update(_compacted(s.jobs))
            s._deliveries.compact()  # noqa: SLF001 — as the index
            s.placing.pending.compact()  # the job's tasks' pending reasons were forgotten one by one
            s.placing.parked = set(s.placing.parked)  # and the set of parked tasks sized for them
            # Thousands of records freed at once: give their memory back to the host now.
            give_back()
            log.info("evicted %d finished jobs (%d tasks) from memory; they stay in the store", len(old), tasks)
        elif self._store_reads:
            give_back()  # what reading an evicted job's tasks from the store allocated is garbage now
        self._store_reads = 0
        return len(old)

    # ---- reads of what was evicted -------------------------------------------------------------

    @staticmethod
    def job(s: Scheduler, job_id: str) -> JobRecord | None:
        return s.store.load_job(job_id)

    @staticmethod
    def task(s: Scheduler, task_id: str) -> TaskRecord | None:
        return s.store.load_task(task_id)

    @staticmethod
    def summary(s: Scheduler, job_id: str) -> JobSummary:
        """The task counts, crash-loop flag and start failure of an evicted job, from SQL aggregates
        and single columns: building its (say) 10,000 task records for one GET /v1/jobs/{id} left the
        scheduler's RSS a fifth above its baseline (fragmented heap, issue #18)."""
        store = s.store
        looping = any(retries.is_crash_looping(n, s.config) for n in store.job_live_crashes(job_id))
        failure = None if store.job_task_started(job_id) else start_failure_of(store.job_finished_outcomes(job_id))
        return JobSummary(store.job_task_counts(job_id), looping, failure)

    def job_tasks(self, s: Scheduler, job_id: str) -> list[TaskRecord]:
        tasks = s.store.load_job_tasks(job_id)
        if tasks:
            self._store_reads += 1
        return tasks


def _compacted(table: dict[str, JobRecord]) -> dict[str, JobRecord]:
    """Empties `table` (releasing its hash table) and returns its items, for the caller to put back."""
    keep = dict(table)
    table.clear()
    return keep
