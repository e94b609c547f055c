"""One scheduling pass through the engine: the scheduler's records → `HostTable` and `Request`s →
decisions. Pure apart from the engine's own table; `core.Scheduler.schedule_pass` commits."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from scheduler import eligibility
from scheduler.engine import B, Decision, Engine, HostInput, HostTable, Request, reason_text
from scheduler.hostfacts import HostFacts, HostFactsTable, sg_key
from scheduler.placement import NodeView
from scheduler.records import JobRecord, NodeRecord, NodeStatus, TaskRecord
from security.profiles import SecurityPolicy
from titus_common.jobspec import IMAGE_REFERENCE
from titus_common.provenance import digest_reference

__all__ = ["HostInputCache", "build_table", "host_input", "plan", "waiting_message"]


def build_table(
    nodes: Iterable[NodeRecord],
    tasks_on: Callable[[str], Iterable[TaskRecord]],
    jobs: Mapping[str, JobRecord],
    facts: HostFactsTable,
    seed: int,
    unhealthy: Callable[[NodeRecord], bool] | None = None,
    max_tasks_per_host: int = 120,
    cache: HostInputCache | None = None,
) -> tuple[HostTable, list[NodeRecord]]:
    """Ready hosts as the engine's table. Taints are per-job masks (`plan`), not `bad`; a host with
    a degraded check gets the fitness penalty. `cache`: hosts whose inputs did not change since the
    last pass keep their `HostInput` (never with `unhealthy`, which the cache does not see)."""
    ready = sorted((n for n in nodes if n.status is NodeStatus.READY), key=lambda n: n.id)
    if cache is not None and unhealthy is None:
        hosts = cache.inputs(ready, tasks_on, jobs, facts)
    else:
        hosts = [host_input(n, tasks_on(n.id), jobs, facts.get(n.id), bool(unhealthy and unhealthy(n)))
                 for n in ready]
    return HostTable(hosts, seed, max_tasks_per_host), ready


def host_input(n: NodeRecord, tasks: Iterable[TaskRecord], jobs: Mapping[str, JobRecord], f: HostFacts,
               bad: bool = False) -> HostInput:
    """One Ready host as the engine sees it: capacity less what its tasks hold, and its facts."""
    h = HostInput(
        n.id, n.capacity.cpus, n.capacity.memory_mib, n.capacity.disk_mib,
        n.capacity.cpus, n.capacity.memory_mib, n.capacity.disk_mib,
        labels=n.labels, images=f.images, free_ips=f.free_ips, warm=dict(f.warm),
        bad=bad, degraded=eligibility.is_degraded(n),
    )
    for t in tasks:
        r = jobs[t.job_id].spec.container.resources
        h.free_cpus -= r.cpu
        h.free_memory_mib -= r.memory_mib
        h.free_disk_mib -= r.disk_mib
        h.tasks += 1
        h.job_tasks[t.job_id] = h.job_tasks.get(t.job_id, 0) + 1
    if f.ip_capacity is not None:  # every task placed here holds (or will hold) one address
        h.free_ips = f.ip_capacity - h.tasks
    if h.free_ips is not None:
        h.free_ips = max(0, h.free_ips)
    return h


class HostInputCache:
    """Each host's `HostInput` from pass to pass, rebuilt only when what it is made of changed: the
    host's capacity, labels, degraded checks, facts, or the set of tasks on it (a job's resources never
    change). At 7,000 hosts rebuilding every host was most of a burst's pass; a burst changes few
    hosts per pass. The engine never changes a `HostInput` (`take` changes the table's arrays)."""

    def __init__(self, task_ids: Callable[[str], frozenset[str]]) -> None:
        self._task_ids = task_ids
        self._hosts: dict[str, tuple[tuple[object, ...], HostInput]] = {}

    def inputs(self, ready: list[NodeRecord], tasks_on: Callable[[str], Iterable[TaskRecord]],
               jobs: Mapping[str, JobRecord], facts: HostFactsTable) -> list[HostInput]:
        out: list[HostInput] = []
        kept: dict[str, tuple[tuple[object, ...], HostInput]] = {}
        for n in ready:
            f = facts.get(n.id)
            c = n.capacity
            key = (c.cpus, c.memory_mib, c.disk_mib, n.labels, eligibility.is_degraded(n),
                   f.images, f.free_ips, f.ip_capacity, dict(f.warm), self._task_ids(n.id))
            hit = self._hosts.get(n.id)
            h = hit[1] if hit is not None and hit[0] == key else host_input(n, tasks_on(n.id), jobs, f)
            kept[n.id] = (key, h)
            out.append(h)
        self._hosts = kept  # hosts no longer Ready are dropped
        return out


class HostGroups:
    """The Ready hosts grouped once per pass by what the per-job masks depend on: the reported
    posture and the set of taint names. A job's masks are then one check per distinct posture and
    per distinct taint set, not one per host (at 7,000 hosts and a burst's hundreds of jobs, the
    per-host version was most of a pass)."""

    def __init__(self, table: HostTable, ready: list[NodeRecord]) -> None:
        self.n = len(table)
        postures: dict[str, list[int]] = {}
        tainted: dict[frozenset[str], list[int]] = {}
        self.posture: dict[str, dict[str, Any] | None] = {}
        for node in ready:
            i = table.index[node.id]
            key = "null" if node.posture is None else json.dumps(node.posture, sort_keys=True)
            if key not in postures:
                postures[key] = []
                self.posture[key] = node.posture
            postures[key].append(i)
            names = node.taints
            if names:
                tainted.setdefault(frozenset(names), []).append(i)
        self.by_posture = {k: np.array(v, dtype=np.int64) for k, v in postures.items()}
        self.by_taints = {k: np.array(v, dtype=np.int64) for k, v in tainted.items()}


def _posture_masks(groups: HostGroups, job: JobRecord, policy: SecurityPolicy) -> list[tuple[str, B]]:
    """Security posture as a hard filter: one check per distinct reported posture, not per host."""
    out: dict[str, B] = {}
    for key, idx in groups.by_posture.items():
        view = NodeView("", 0, 0, 0, {}, groups.posture[key])
        problem = eligibility.posture_problem(job, view, policy)
        if problem is not None:
            m = out.setdefault(problem, np.ones(groups.n, dtype=np.bool_))
            m[idx] = False
    return list(out.items())


def _taint_masks(groups: HostGroups, job: JobRecord) -> list[tuple[str, B]]:
    """Taints as a hard filter, with the job's tolerations: one mask per distinct set of taints the
    job does not tolerate (reason `taint health.engine, …`)."""
    out: dict[str, B] = {}
    for names, idx in groups.by_taints.items():
        left = eligibility.untolerated(job, dict.fromkeys(names, ""))
        if left:
            m = out.setdefault(f"taint {', '.join(left)}", np.ones(groups.n, dtype=np.bool_))
            m[idx] = False
    return list(out.items())


def job_masks(table: HostTable, ready: list[NodeRecord], job: JobRecord, policy: SecurityPolicy) -> list[tuple[str, B]]:
    """The job's hard filters beyond the engine's own: taints it does not tolerate, and posture."""
    groups = HostGroups(table, ready)
    return [*_taint_masks(groups, job), *_posture_masks(groups, job, policy)]


def _tagged(image: str) -> str:
    """The reference as the engine lists it: a bare name means `:latest`."""
    m = IMAGE_REFERENCE.match(image)
    if m is None or m.group("tag") or m.group("digest"):
        return image
    return f"{image}:latest"


def request_for(task: TaskRecord, job: JobRecord) -> Request:
    c = job.spec.container
    # A pinned job runs name@digest (docs/provenance.md): a host has it cached only with that digest.
    image = digest_reference(c.image, job.image_digest) if job.image_digest else _tagged(c.image)
    return Request(
        task.id, job.id, c.resources.cpu, c.resources.memory_mib, c.resources.disk_mib,
        image=image, sg_key=sg_key(c.security_groups), constraints=job.spec.constraints,
        job_tasks=job.spec.task_count,
    )


OnPass = Callable[[HostTable, list[Request], dict[str, list[tuple[str, B]]], list[Decision]], None]


def plan(
    engine: Engine, table: HostTable, ready: list[NodeRecord], pending: list[TaskRecord],
    jobs: Mapping[str, JobRecord], policy: SecurityPolicy, on_pass: OnPass | None = None,
) -> list[Decision]:
    """Place `pending` in order; `on_pass` (the decision trace) sees the inputs and the choices."""
    groups = HostGroups(table, ready)
    masks = {j: [*_taint_masks(groups, jobs[j]), *_posture_masks(groups, jobs[j], policy)]
             for j in {t.job_id for t in pending}}
    requests = [request_for(t, jobs[t.job_id]) for t in pending]
    decisions = engine.place_all(table, requests, masks)
    if on_pass is not None:  # table.inputs are as the pass started: `take` changes the arrays only
        on_pass(table, requests, masks, decisions)
    return decisions


def waiting_message(d: Decision, hosts: int) -> str:
    if hosts == 0:
        return "waiting: no Ready hosts"
    if len(d.reasons) == 1 and d.reasons[0][1] == hosts:
        return f"waiting: {d.reasons[0][0]} (every Ready host)"
    return f"waiting: {reason_text(d.reasons)}"
