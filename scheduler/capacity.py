"""Capacity groups: who may ask for how much, and in which order pending work is placed.

A capacity group (Titus's term) is an owner's or an application's share of the cell:
- `limit_cpu` / `limit_memory_mib`: admission refuses a job whose tasks would take the group's live
  jobs over the limit (a clear 409 naming the group and the figures; nothing is stored);
- `tier`: every due task of a `critical` group is placed before any `flex` task;
- `reserved_cpu` / `reserved_memory_mib`: the group's guaranteed share, the weight of dominant
  resource fairness (DRF) within a tier: the group whose usage is the smallest fraction of its
  share (on its dominant resource) gets the next placement. A group without a reservation is
  weighed against the whole cell. The group keeps the turn for a run of tasks within `drf_tolerance`
  of the next group's share, so placement keeps its incremental runs (docs/capacity-runs.md).
A job names its group with `capacityGroup`; otherwise the first group listing its app, then its
owner, else `default` (flex, no limit). Pure: `usage`, `admit` and `order` are given the records.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from scheduler.errors import BadRequest, Conflict
from scheduler.records import JobRecord, JobState, TaskRecord
from titus_common.jobspec import JobSpec

__all__ = ["CapacityGroup", "Groups", "OverLimit", "UnknownGroup", "Usage"]

DEFAULT = "default"


class OverLimit(Conflict):
    """Admission: the job would take its capacity group over its limit (the API answers 409)."""


class UnknownGroup(BadRequest):
    """The job names a capacity group the cell does not have (the API answers 400)."""


class CapacityGroup(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    tier: Literal["critical", "flex"] = "flex"
    apps: list[Annotated[str, Field(max_length=128)]] = Field(default_factory=list, max_length=1000)
    owners: list[Annotated[str, Field(max_length=256)]] = Field(default_factory=list, max_length=1000)
    limit_cpu: Annotated[float | None, Field(gt=0)] = None
    limit_memory_mib: Annotated[int | None, Field(gt=0)] = None
    reserved_cpu: Annotated[float, Field(ge=0)] = 0.0
    reserved_memory_mib: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _reserved_within_limit(self) -> CapacityGroup:
        if self.limit_cpu is not None and self.reserved_cpu > self.limit_cpu:
            raise ValueError(f"capacity group {self.name}: reserved_cpu exceeds limit_cpu")
        if self.limit_memory_mib is not None and self.reserved_memory_mib > self.limit_memory_mib:
            raise ValueError(f"capacity group {self.name}: reserved_memory_mib exceeds limit_memory_mib")
        return self


class Usage:
    """CPU and memory a group's live jobs ask for (every task of a job not yet finished)."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.memory_mib: dict[str, float] = {}

    def add(self, group: str, cpu: float, memory_mib: float) -> None:
        self.cpu[group] = self.cpu.get(group, 0.0) + cpu
        self.memory_mib[group] = self.memory_mib.get(group, 0.0) + memory_mib


class Groups:
    def __init__(self, groups: Sequence[CapacityGroup] = ()) -> None:
        self.by_name: dict[str, CapacityGroup] = {g.name: g for g in groups}
        if len(self.by_name) != len(groups):
            raise ValueError("capacity group names must be unique")
        self.by_name.setdefault(DEFAULT, CapacityGroup(name=DEFAULT))
        self._by_app: dict[str, str] = {}
        self._by_owner: dict[str, str] = {}
        for g in groups:
            for app in g.apps:
                self._by_app.setdefault(app, g.name)
            for owner in g.owners:
                self._by_owner.setdefault(owner, g.name)

    def group_of(self, spec: JobSpec, strict: bool = False) -> CapacityGroup:
        """The job's group. `strict` (admission): an unknown `capacityGroup` is refused. Otherwise
        (a stored job whose group was removed from the config since) it draws from `default`."""
        if spec.capacity_group is not None:
            group = self.by_name.get(spec.capacity_group)
            if group is None:
                if not strict:
                    return self.by_name[DEFAULT]
                raise UnknownGroup(f"capacityGroup: no capacity group {spec.capacity_group!r}; "
                                   f"known: {', '.join(sorted(self.by_name))}")
            return group
        name = self._by_app.get(spec.app_name) or self._by_owner.get(spec.owner) or DEFAULT
        return self.by_name[name]

    def usage(self, jobs: Iterable[JobRecord]) -> Usage:
        u = Usage()
        for job in jobs:
            if job.state is JobState.FINISHED:
                continue
            r = job.spec.container.resources
            n = job.spec.task_count
            u.add(self.group_of(job.spec).name, r.cpu * n, r.memory_mib * n)
        return u

    def admit(self, spec: JobSpec, jobs: Iterable[JobRecord]) -> CapacityGroup:
        """The job's group, or OverLimit naming what it would exceed."""
        group = self.group_of(spec, strict=True)
        if group.limit_cpu is None and group.limit_memory_mib is None:
            return group
        u = self.usage(j for j in jobs if self.group_of(j.spec).name == group.name)
        r, n = spec.container.resources, spec.task_count
        cpu = u.cpu.get(group.name, 0.0) + r.cpu * n
        mem = u.memory_mib.get(group.name, 0.0) + r.memory_mib * n
        if group.limit_cpu is not None and cpu > group.limit_cpu + 1e-9:
            raise OverLimit(f"capacity group {group.name!r} would use {cpu:g} of its {group.limit_cpu:g} cpu "
                            f"({n} tasks x {r.cpu:g} cpu on top of {u.cpu.get(group.name, 0.0):g} in use)")
        if group.limit_memory_mib is not None and mem > group.limit_memory_mib:
            raise OverLimit(f"capacity group {group.name!r} would use {mem:g} of its {group.limit_memory_mib} MiB "
                            f"of memory ({n} tasks x {r.memory_mib} MiB on top of "
                            f"{u.memory_mib.get(group.name, 0.0):g} in use)")
        return group

    def order(
        self,
        pending: Sequence[TaskRecord],
        jobs: Mapping[str, JobRecord],
        placed: Mapping[str, tuple[float, float]],
        cell: tuple[float, float],
        tolerance: float = 0.0,
    ) -> list[TaskRecord]:
        """Critical before flex; within a tier progressive filling by dominant share: the group with
        the smallest (usage / share) on its dominant resource gets the next task, its usage grows by
        that task's demand. `pending` is oldest first and keeps that order within a group. `placed`:
        per group, (cpu, memory) its placed tasks hold now; `cell`: the Ready hosts' totals.

        The chosen group keeps the turn while its dominant share stays below the next group's plus
        `tolerance` (a fraction of its share: 0.01 is one percentage point), so its tasks come as one
        run, which the engine places incrementally (`Engine._place_run`), instead of alternating task
        by task with equally-served groups. With `tolerance=0` the order is exactly task-at-a-time
        DRF; otherwise every task is given to a group whose dominant share, before it, is at most
        `tolerance` above that of every other group still waiting in its tier (docs/capacity-runs.md)."""
        queues: dict[str, list[TaskRecord]] = {}
        for t in pending:
            queues.setdefault(self.group_of(jobs[t.job_id].spec).name, []).append(t)
        if len(queues) <= 1:
            return list(pending)
        out: list[TaskRecord] = []
        for tier in ("critical", "flex"):
            heap: list[tuple[float, str]] = []
            used: dict[str, list[float]] = {}
            for name in queues:
                if self.by_name[name].tier == tier:
                    used[name] = list(placed.get(name, (0.0, 0.0)))
                    heapq.heappush(heap, (self._share(name, used[name], cell), name))
            pos = dict.fromkeys(used, 0)
            while heap:
                _, name = heapq.heappop(heap)
                queue, u = queues[name], used[name]
                while True:  # the group's run: task-at-a-time would pick it again while it is the smallest
                    t = queue[pos[name]]
                    pos[name] += 1
                    out.append(t)
                    r = jobs[t.job_id].spec.container.resources
                    u[0] += r.cpu
                    u[1] += r.memory_mib
                    if pos[name] == len(queue):
                        break
                    share = self._share(name, u, cell)
                    if heap and not (share - tolerance, name) < heap[0]:
                        heapq.heappush(heap, (share, name))
                        break
        return out

    def _share(self, name: str, used: list[float], cell: tuple[float, float]) -> float:
        g = self.by_name[name]
        cpu_share = g.reserved_cpu or cell[0] or 1.0
        mem_share = g.reserved_memory_mib or cell[1] or 1.0
        return max(used[0] / cpu_share, used[1] / mem_share)
