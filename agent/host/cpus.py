"""The host's CPUs: one placement state for every task on this host.

- `HostCpus` decides. It owns the topology (discovered from sysfs at start) and one
  `cpuset.CpuAllocator`; it never talks to the engine. A task's grant is checkpointed in its own
  record (`resources["cpuset"]`), which is the checkpoint of truth: after a restart the allocator is
  rebuilt from those records, exactly, or the agent refuses to start.
- `CpusetApplier` (agent/host/cpuset_apply.py) applies: it writes the resulting cpusets to the
  containers and reads them back to correct drift.

Classes (docs/cpuset.md): a static task holds `cpu` whole CPUs exclusively; a burst task holds
floor(cpu) CPUs exclusively (possibly none) and runs on those plus the burst pool, i.e. every
usable CPU nobody holds, so it shrinks when static work arrives and grows when it leaves.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from agent.checkpoint import CheckpointCorrupt, TaskCheckpoint
from agent.config import AgentConfig
from agent.metrics import AgentMetrics
from cpuset import (
    CpuAllocator,
    CpuBusy,
    CpusetError,
    InsufficientCpus,
    RequestTooLarge,
    Topology,
    WorkloadClass,
    format_cpulist,
    load_topology,
    parse_cpulist,
)

log = logging.getLogger("titus.agent.cpus")

CpuClass = Literal["static", "burst"]
RESOURCE_KEY = "cpuset"  # the cpuset step's entry in TaskCheckpoint.resources
AUTO_RESERVE_MIN_CPUS = 4  # below this, reserving a core would take half the host or more


class CpuStateError(CheckpointCorrupt):
    """The task records' CPU grants cannot be re-assigned on this host (two tasks claim one CPU, a
    CPU is now reserved or offline), or the topology cannot be read. A subclass of CheckpointCorrupt
    so the agent refuses to start with the message instead of guessing."""


class PlacementFailed(Exception):
    """No layout for this request on this host right now."""


@dataclass(frozen=True)
class CpuGrant:
    task_id: str
    cls: CpuClass
    request: float  # the job's cpu request
    exclusive: tuple[int, ...]  # held by this task alone ((), for a fractional burst task)

    def to_record(self) -> dict[str, Any]:
        return {"class": self.cls, "request": self.request, "cpus": format_cpulist(self.exclusive)}


def exclusive_count(cls: CpuClass, request: float) -> int:
    # The job spec refuses a fractional static request; ceil keeps an old or hand-made one safe.
    return math.ceil(request) if cls == "static" else math.floor(request)


def auto_reserved(topology: Topology) -> frozenset[int]:
    """Default reservation: every thread of the first core, on hosts with 4 CPUs or more."""
    if len(topology.online) < AUTO_RESERVE_MIN_CPUS:
        return frozenset()
    return frozenset(topology.siblings(min(topology.online)))


def discover(config: AgentConfig) -> Topology:
    """The host's topology with the configured (or automatic) reservation; CpuStateError if unreadable."""
    try:
        if config.reserved_cpus is not None:
            return load_topology(config.sysfs_root, reserved=config.reserved_cpus)
        topology = load_topology(config.sysfs_root)
        return topology.with_reserved(auto_reserved(topology))
    except CpusetError as e:
        raise CpuStateError(f"cannot read the CPU topology under {config.sysfs_root}: {e}") from None


class _Busy(CpuBusy):
    """CpuBusy with the CPUs that were asked for (to name the other holder)."""

    def __init__(self, cpus: tuple[int, ...], alloc: CpuAllocator, message: str) -> None:
        super().__init__(message)
        held = alloc.held_cpus()
        self.cpus = tuple(c for c in cpus if c in held)


def discover_host(config: AgentConfig, metrics: AgentMetrics) -> HostCpus:
    """The host's placement state; CpuStateError if the topology cannot be read or the placement
    core is not built."""
    topology = discover(config)
    try:
        return HostCpus(topology, metrics)
    except CpusetError as e:
        raise CpuStateError(f"cpuset placement unavailable: {e} (or run the agent with --no-cpuset)") from None


class HostCpus:
    """Placement decisions for the whole host. Every method is synchronous and runs on the event
    loop, so the allocator (not thread-safe) sees one call at a time."""

    def __init__(self, topology: Topology, metrics: AgentMetrics) -> None:
        self.topology = topology
        self.metrics = metrics
        self.alloc = CpuAllocator(topology)
        self.grants: dict[str, CpuGrant] = {}
        self._records: dict[str, tuple[TaskCheckpoint, Callable[[], None]]] = {}
        self.changed = asyncio.Event()  # the desired cpusets changed: the applier should run
        metrics.bind_cpus(self.usage, self.smt_shared_cores)

    # ---- rebuild after a restart ----------------------------------------------------------------

    def rebuild(self, records: Iterable[TaskCheckpoint], save: Callable[[TaskCheckpoint], None]) -> int:
        """Re-assign exactly what the task records say their tasks hold. Raises CpuStateError, naming
        the task, when a record cannot be honoured."""
        count = 0
        for record in records:
            entry = record.resources.get(RESOURCE_KEY)
            if record.state.terminal or not entry or entry.get("released") or "class" not in entry:
                continue
            try:
                grant = grant_from_record(record.task_id, entry)
                if len(grant.exclusive) != exclusive_count(grant.cls, grant.request):
                    raise ValueError(
                        f"{len(grant.exclusive)} CPUs recorded for a {grant.cls} request of {grant.request:g}"
                    )
                self._assign(grant)
            except _Busy as e:
                holder = next((g.task_id for g in self.grants.values() if set(g.exclusive) & set(e.cpus)), "?")
                raise CpuStateError(
                    f"task {record.task_id}'s checkpoint claims CPUs {format_cpulist(e.cpus)} that task {holder} "
                    "also holds; the agent will not start with a CPU given twice. Inspect both checkpoints."
                ) from None
            except (CpusetError, ValueError, TypeError) as e:
                raise CpuStateError(
                    f"task {record.task_id}'s checkpointed cpuset {entry!r} does not fit this host "
                    f"({self.topology.describe()}): {e}. Was --reserved-cpus changed or a CPU taken offline "
                    "while the task ran? Restore the setting, or stop the task's container and move its "
                    "checkpoint aside."
                ) from None
            self._records[record.task_id] = (record, functools.partial(save, record))
            count += 1
        if count:
            self.changed.set()
        return count

    def _assign(self, grant: CpuGrant) -> None:
        if grant.exclusive:
            try:
                self.alloc.assign(grant.task_id, grant.exclusive, WorkloadClass(grant.cls))
            except CpuBusy as e:
                raise _Busy(grant.exclusive, self.alloc, str(e)) from None
        self.grants[grant.task_id] = grant

    # ---- decisions --------------------------------------------------------------------------------

    def grant_of(self, task_id: str) -> CpuGrant | None:
        return self.grants.get(task_id)

    def place(
        self, record: TaskCheckpoint, save: Callable[[], None], cls: CpuClass, request: float
    ) -> CpuGrant:
        """A new grant for the task (PlacementFailed if no layout exists now). The caller records it."""
        task_id = record.task_id
        if task_id in self.grants:
            return self.grants[task_id]
        need = exclusive_count(cls, request)
        cpus: tuple[int, ...] = ()
        if need > 0:
            started = time.perf_counter()
            try:
                cpus = self.alloc.allocate(task_id, need, WorkloadClass(cls)).cpus
            except (RequestTooLarge, InsufficientCpus) as e:
                self.metrics.cpuset_placement_failures.inc()
                free = len(self.alloc.free_cpus())
                raise PlacementFailed(
                    f"no CPU layout for {need} exclusive CPU(s) ({cls}, cpu={request:g}): {free} of "
                    f"{len(self.topology.usable)} usable CPUs are free, {len(self.topology.reserved)} reserved "
                    f"({e}). The scheduler counted CPUs this host could not give; the task will be retried"
                ) from None
            finally:
                self.metrics.cpuset_placement_seconds.observe(time.perf_counter() - started)
            self._note_placement(task_id, cls, cpus)
        grant = CpuGrant(task_id, cls, request, cpus)
        self.grants[task_id] = grant
        self._records[task_id] = (record, save)
        self.changed.set()
        return grant

    def adopt(self, record: TaskCheckpoint, save: Callable[[], None], entry: Mapping[str, Any]) -> CpuGrant:
        """Take back a grant recorded by an earlier setup of the same task (PlacementFailed if its
        CPUs went to someone else meanwhile)."""
        grant = grant_from_record(record.task_id, entry)
        try:
            self._assign(grant)
        except CpusetError as e:
            raise PlacementFailed(f"recorded cpuset {grant.exclusive} cannot be taken back: {e}") from None
        self._records[record.task_id] = (record, save)
        self.changed.set()
        return grant

    def release(self, task_id: str) -> None:
        """Idempotent."""
        grant = self.grants.pop(task_id, None)
        self._records.pop(task_id, None)
        if grant is not None and task_id in self.alloc:
            self.alloc.release(task_id)
        if grant is not None:
            self.changed.set()

    def rebalance(self, max_moves: int) -> int:
        """Move at most `max_moves` exclusive CPUs when that improves the layout (the allocator only
        accepts strict improvements); persist the moved grants. Returns CPUs moved."""
        plan = self.alloc.rebalance(max_moves)
        self.metrics.cpuset_rebalance_moves.observe(plan.cpus_moved)
        for task_id in plan.workloads:
            old = self.grants[task_id]
            grant = CpuGrant(task_id, old.cls, old.request, self.alloc.get(task_id).cpus)
            self.grants[task_id] = grant
            self._persist(grant)
            log.info(
                "rebalance: moved from %s to %s", format_cpulist(old.exclusive), format_cpulist(grant.exclusive),
                extra={"task_id": task_id},
            )
        if plan.moves:
            self.changed.set()
        return plan.cpus_moved

    def _persist(self, grant: CpuGrant) -> None:
        entry = self._records.get(grant.task_id)
        if entry is not None:
            record, save = entry
            record.resources.setdefault(RESOURCE_KEY, {}).update(grant.to_record())
            save()

    def _note_placement(self, task_id: str, cls: CpuClass, cpus: tuple[int, ...]) -> None:
        m, topo = self.metrics, self.topology
        m.cpuset_placements.labels(cls=cls).inc()
        for level, attr in (("socket", "socket"), ("numa", "node"), ("l3", "l3")):
            if len({getattr(topo.cpus[c], attr) for c in cpus}) > 1:
                m.cpuset_cross_placements.labels(level=level).inc()
        owners = self.alloc.owners()
        if any(owners.get(s) not in (None, task_id) for c in cpus for s in topo.siblings(c)):
            m.cpuset_smt_shared_placements.inc()

    # ---- what each container should have ----------------------------------------------------------

    def burst_pool(self) -> tuple[int, ...]:
        """Idle usable CPUs: what every burst task runs on besides its own minimum."""
        return self.alloc.burst_pool()

    def desired(self) -> dict[str, str]:
        """Task → the cpulist its container should run on. Never empty (a task cannot run on no CPU,
        and an empty cpuset means "no restriction" to the engine): a burst task without a minimum,
        when static tasks hold every usable CPU, runs on the reserved CPUs, or with no reservation
        on every online CPU."""
        pool = set(self.burst_pool())
        fallback = set(self.topology.reserved or self.topology.online)
        out = {}
        for task_id, g in self.grants.items():
            cpus = set(g.exclusive) if g.cls == "static" else set(g.exclusive) | pool
            out[task_id] = format_cpulist(cpus or fallback)
        return out

    def cpuset_of(self, task_id: str) -> str:
        return self.desired()[task_id]

    # ---- views ------------------------------------------------------------------------------------

    def usage(self) -> dict[str, int]:
        static = sum(len(g.exclusive) for g in self.grants.values() if g.cls == "static")
        burst = sum(len(g.exclusive) for g in self.grants.values() if g.cls == "burst")
        return {
            "reserved": len(self.topology.reserved),
            "static": static,
            "burst": burst,
            "idle": len(self.topology.usable) - static - burst,
        }

    def smt_shared_cores(self) -> int:
        owners = self.alloc.owners()
        shared = 0
        for threads in self.topology.cores().values():
            holders = {owners.get(c) for c in threads} - {None}
            shared += len(holders) > 1
        return shared

    def snapshot(self, applied: Mapping[str, str]) -> dict[str, Any]:
        """The map of the host for `GET /v1/cpus` / `titusctl node cpus`."""
        topo = self.topology
        owners = self.alloc.owners()
        pool = self.burst_pool()
        desired = self.desired()
        bursting = sorted(t for t, g in self.grants.items() if g.cls == "burst")
        cpus = []
        for cpu in sorted(topo.cpus):
            info = topo.cpus[cpu]
            holder = owners.get(cpu)
            cpus.append({
                "cpu": cpu, "socket": info.socket, "node": info.node, "l3": info.l3, "core": info.core,
                "reserved": cpu in topo.reserved,
                "taskId": holder,
                "class": self.grants[holder].cls if holder in self.grants else None,
                "burstTasks": bursting if cpu in pool else [],
            })
        return {
            "topology": {
                "description": topo.describe(),
                "source": topo.source,
                "sockets": len(topo.sockets()),
                "numaNodes": len(topo.nodes()),
                "l3Groups": len(topo.l3_groups()),
                "cores": len(topo.cores()),
                "threadsPerCore": topo.threads_per_core,
                "notes": list(topo.notes),
            },
            "reserved": format_cpulist(topo.reserved),
            "burstPool": format_cpulist(pool),
            "smtSharedCores": self.smt_shared_cores(),
            "cost": self.alloc.cost(),
            "cpus": cpus,
            "tasks": [
                {
                    "taskId": g.task_id, "class": g.cls, "request": g.request,
                    "exclusive": format_cpulist(g.exclusive), "cpuset": desired[g.task_id],
                    "applied": applied.get(g.task_id),
                }
                for g in sorted(self.grants.values(), key=lambda g: g.task_id)
            ],
        }


def grant_from_record(task_id: str, entry: Mapping[str, Any]) -> CpuGrant:
    cls = entry.get("class")
    if cls not in ("static", "burst"):
        raise ValueError(f"unknown class {cls!r}")
    request = entry.get("request")
    if not isinstance(request, (int, float)) or isinstance(request, bool) or request <= 0:
        raise ValueError(f"bad request {request!r}")
    cpus = tuple(parse_cpulist(str(entry.get("cpus", "")), what=f"task {task_id} cpuset"))
    return CpuGrant(task_id, cls, float(request), cpus)


