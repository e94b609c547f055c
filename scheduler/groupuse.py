"""What each host's tasks hold, per capacity group, kept current for the reservation guards
(`preempting`: the hold-back in every placement pass, preemption once a second), so that neither
walks every task of the cell (seconds at 7,000 hosts, bench/preempt.py).

`host_use` sums one host's tasks; the full scan calls it for every host, `GroupUseIndex` keeps its
result per host and recomputes it only for the hosts `TaskIndex` marked dirty (a task placed,
killed, finished, forgotten, or an agent's report on it). Both ways run the same function over the
same task set, so their results are equal, not just close (tests/unit/test_groupuse.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from scheduler.capacity import Groups
from scheduler.index import TaskIndex
from scheduler.preempt import Running
from scheduler.records import JobRecord, TaskRecord
from titus_common.states import TaskState

__all__ = ["GroupUseIndex", "HostUse", "JobInfo", "host_use"]


@dataclass(frozen=True, slots=True)
class JobInfo:
    """What a job's every task draws: its capacity group (and whether that is critical), resources."""

    group: str
    critical: bool
    cpu: float
    memory_mib: float
    disk_mib: float


@dataclass(frozen=True, slots=True)
class HostUse:
    """One host's tasks holding resources."""

    held_cpu: float  # every one of them, kills in flight too (what the host has not free)
    held_memory_mib: float
    live_cpu: float  # without kills in flight (that capacity is on its way back)
    live_memory_mib: float
    live_disk_mib: float
    groups: dict[str, tuple[float, float]]  # group → (cpu, memory) of its tasks, kills in flight left out
    candidates: tuple[Running, ...]  # its tasks without a kill in flight, in victim preference order
    jobs: frozenset[str]  # the jobs of `candidates`
    in_flight: dict[str, int]  # job → its tasks here with a kill in flight


EMPTY = HostUse(0.0, 0.0, 0.0, 0.0, 0.0, {}, (), frozenset(), {})


def host_use(node_id: str, tasks: Iterable[TaskRecord], info: Callable[[str], JobInfo]) -> HostUse:
    held = [0.0, 0.0]
    live = [0.0, 0.0, 0.0]
    groups: dict[str, tuple[float, float]] = {}
    candidates: list[tuple[bool, float, str, Running]] = []
    in_flight: dict[str, int] = {}
    for t in tasks:
        if t.state is TaskState.FINISHED:
            continue
        j = info(t.job_id)
        held[0] += j.cpu
        held[1] += j.memory_mib
        if t.kill_requested:
            in_flight[t.job_id] = in_flight.get(t.job_id, 0) + 1
            continue
        live[0] += j.cpu
        live[1] += j.memory_mib
        live[2] += j.disk_mib
        g = groups.get(j.group, (0.0, 0.0))
        groups[j.group] = (g[0] + j.cpu, g[1] + j.memory_mib)
        started = t.timestamps.get(TaskState.STARTED.value, t.timestamps.get(TaskState.LAUNCHED.value, 0.0))
        r = Running(t.id, t.job_id, j.group, node_id, j.cpu, j.memory_mib, j.disk_mib, started)
        candidates.append((j.critical, -started, t.id, r))  # flex first, then the youngest; the id for a stable order
    candidates.sort()  # (task ids are unique: never compares two `Running`)
    return HostUse(held[0], held[1], live[0], live[1], live[2], groups, tuple(c[3] for c in candidates),
                   frozenset(c[3].job_id for c in candidates), in_flight)


def job_info(job: JobRecord, capacity: Groups) -> JobInfo:
    g = capacity.group_of(job.spec)
    r = job.spec.container.resources
    return JobInfo(g.name, g.tier == "critical", float(r.cpu), float(r.memory_mib), float(r.disk_mib))


class GroupUseIndex:
    """`host_use` of every host, recomputed for the hosts whose tasks changed since the last read."""

    def __init__(self, tasks: TaskIndex, jobs: dict[str, JobRecord], capacity: Groups) -> None:
        self._tasks, self._jobs, self._capacity = tasks, jobs, capacity
        self._hosts: dict[str, HostUse] = {}
        self._info: dict[str, JobInfo] = {}  # a job's spec never changes: computed once

    def info(self, job_id: str) -> JobInfo:
        j = self._info.get(job_id)
        if j is None:
            j = self._info[job_id] = job_info(self._jobs[job_id], self._capacity)
        return j

    def refresh(self) -> int:
        """Recompute the hosts marked dirty; returns how many."""
        dirty = self._tasks.take_dirty()
        for node_id in dirty:
            self._hosts[node_id] = host_use(node_id, self._tasks.node_tasks(node_id), self.info)
        for job_id in self._tasks.take_forgotten_jobs():
            self._info.pop(job_id, None)
        return len(dirty)

    def host(self, node_id: str) -> HostUse:
        """The host's use as of the last `refresh`."""
        return self._hosts.get(node_id, EMPTY)

    def full_scan(self, node_id: str) -> HostUse:
        """The same, computed from the host's tasks now (the reference the index must equal)."""
        return host_use(node_id, self._tasks.node_tasks(node_id), self.info)
