"""One scheduling pass through the engine: the scheduler's records → `HostTable` and `Request`s →
decisions. Pure apart from the engine's own table; `core.Scheduler.schedule_pass` commits."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from scheduler import eligibility
from scheduler.engine import B, Decision, Engine, HostInput, HostTable, Request, reason_text
from scheduler.hostfacts import HostFactsTable, sg_key
from scheduler.placement import NodeView
from scheduler.records import JobRecord, NodeRecord, NodeStatus, TaskRecord
from security.profiles import SecurityPolicy
from titus_common.jobspec import IMAGE_REFERENCE
from titus_common.provenance import digest_reference

__all__ = ["build_table", "plan", "waiting_message"]


def build_table(
    nodes: Iterable[NodeRecord],
    tasks_on: Callable[[str], Iterable[TaskRecord]],
    jobs: Mapping[str, JobRecord],
    facts: HostFactsTable,
    seed: int,
    unhealthy: Callable[[NodeRecord], bool] | None = None,
    max_tasks_per_host: int = 120,
) -> tuple[HostTable, list[NodeRecord]]:
    """Ready hosts as the engine's table. Taints are per-job masks (`plan`), not `bad`; a host with
    a degraded check gets the fitness penalty."""
    ready = sorted((n for n in nodes if n.status is NodeStatus.READY), key=lambda n: n.id)
    hosts: list[HostInput] = []
    for n in ready:
        f = facts.get(n.id)
        h = HostInput(
            n.id, n.capacity.cpus, n.capacity.memory_mib, n.capacity.disk_mib,
            n.capacity.cpus, n.capacity.memory_mib, n.capacity.disk_mib,
            labels=n.labels, images=f.images, free_ips=f.free_ips, warm=dict(f.warm),
            bad=bool(unhealthy and unhealthy(n)), degraded=eligibility.is_degraded(n),
        )
        for t in tasks_on(n.id):
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
        hosts.append(h)
    return HostTable(hosts, seed, max_tasks_per_host), ready


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
