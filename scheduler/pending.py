"""Queue age: why each Accepted task is still pending, and how old the queue is (docs/reconcile.md).

`why_pending` is a pure function of the task's job, the Ready hosts and those whose posture fits:
the first reason that explains a failed placement, most fundamental first. `PendingBook` holds the
latest reason per pending task (set by `Scheduler.schedule_pass`, dropped when the task is placed or
ends) for the API field `pendingReason` and the per-reason count metric.

May import: `scheduler.placement`, `scheduler.records`, `titus_common` and the standard library.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable

from scheduler.placement import NodeView
from scheduler.records import TaskRecord
from titus_common.jobspec import Resources
from titus_common.states import TaskState

__all__ = ["AGE_BUCKETS", "PendingBook", "PendingReason", "age_buckets", "why_pending"]

# Pending tasks older than these many seconds (the talk's > 1, 5, 10, 15 minutes).
AGE_BUCKETS = (60.0, 300.0, 600.0, 900.0)


class PendingReason(str, enum.Enum):
    NOT_YET_CONSIDERED = "notYetConsidered"  # accepted since the last placement pass
    RETRY_BACKOFF = "retryBackoff"  # a replacement waiting out its retry delay or crash back-off
    NO_READY_HOST = "noReadyHost"  # no host is Ready (all Disconnected/Lost, or none registered)
    POSTURE = "posture"  # Ready hosts exist, none has the security posture the job needs
    INSUFFICIENT_CPU = "insufficientCpu"  # no host with the posture has the cpus free
    INSUFFICIENT_MEMORY = "insufficientMemory"
    INSUFFICIENT_DISK = "insufficientDisk"
    NO_SINGLE_HOST_FITS = "noSingleHostFits"  # each resource is free somewhere, never all on one host
    # What is free is held back for critical capacity groups' idle reservations (scheduler/preempt.py).
    RESERVATION_HELD = "reservationHeldBack"


def why_pending(demand: Resources, ready: list[NodeView], able: list[NodeView]) -> PendingReason:
    """Why no host took the task: `ready` are the Ready hosts (after earlier placements of this pass),
    `able` those among them whose posture can run the job."""
    if not ready:
        return PendingReason.NO_READY_HOST
    if not able:
        return PendingReason.POSTURE
    if all(demand.cpu > n.free_cpus + 1e-9 for n in able):
        return PendingReason.INSUFFICIENT_CPU
    if all(demand.memory_mib > n.free_memory_mib for n in able):
        return PendingReason.INSUFFICIENT_MEMORY
    if all(demand.disk_mib > n.free_disk_mib for n in able):
        return PendingReason.INSUFFICIENT_DISK
    return PendingReason.NO_SINGLE_HOST_FITS


def age_buckets(tasks: Iterable[TaskRecord], now: float) -> dict[float, int]:
    """Pending (Accepted) tasks older than each bucket, cumulative: a task of 6 min counts in >1 and >5."""
    out = dict.fromkeys(AGE_BUCKETS, 0)
    for t in tasks:
        if t.state is not TaskState.ACCEPTED:
            continue
        age = now - t.timestamps.get(TaskState.ACCEPTED.value, now)
        for b in AGE_BUCKETS:
            if age > b:
                out[b] += 1
    return out


class PendingBook:
    """The latest reason of each task a placement pass could not place."""

    def __init__(self) -> None:
        self._reasons: dict[str, PendingReason] = {}

    def note(self, task_id: str, reason: PendingReason) -> None:
        self._reasons[task_id] = reason

    def forget(self, task_id: str) -> None:
        self._reasons.pop(task_id, None)

    def compact(self) -> None:
        """A new table sized to what is left (a dict never shrinks by deleting): after an eviction."""
        self._reasons = dict(self._reasons)

    def reason(self, task: TaskRecord, now: float) -> PendingReason | None:
        """None for a task that is not pending."""
        if task.state is not TaskState.ACCEPTED:
            return None
        if task.not_before > now:
            return PendingReason.RETRY_BACKOFF
        return self._reasons.get(task.id, PendingReason.NOT_YET_CONSIDERED)

    def counts(self, tasks: Iterable[TaskRecord], now: float) -> Counter[PendingReason]:
        return Counter(r for r in (self.reason(t, now) for t in tasks) if r is not None)
