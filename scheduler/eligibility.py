"""Which hosts may take a job: Ready hosts (not Disconnected or Lost), with what is left of their
capacity, and among them those whose reported security posture meets the job's security attributes
under the security policy (docs/security.md). Capacity fit itself is the placer's (`placement.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from scheduler.placement import NodeView
from scheduler.records import JobRecord, NodeRecord, NodeStatus, TaskRecord
from security.attributes import parse_security_attributes
from security.posture import reported_posture_problem
from security.profiles import SecurityPolicy

__all__ = ["able_nodes", "node_views", "posture_problem", "waiting_reason"]


def node_views(
    nodes: Iterable[NodeRecord],
    tasks_on: Callable[[str], Iterable[TaskRecord]],
    jobs: Mapping[str, JobRecord],
) -> list[NodeView]:
    """Ready hosts in id order, each with the resources its assigned tasks hold already taken."""
    views = {
        n.id: NodeView(n.id, n.capacity.cpus, n.capacity.memory_mib, n.capacity.disk_mib, n.labels, n.posture)
        for n in sorted(nodes, key=lambda n: n.id)
        if n.status is NodeStatus.READY
    }
    for view in views.values():
        for t in tasks_on(view.id):
            view.take(jobs[t.job_id].spec.container.resources)
    return list(views.values())


def posture_problem(job: JobRecord, node: NodeView, policy: SecurityPolicy) -> str | None:
    """Why this host's posture cannot run this job, or None if it can."""
    request, problems = parse_security_attributes(job.spec.container.security_attributes)
    if problems:  # refused at submit; a job stored before a policy change stays put, visibly
        return "; ".join(m for _, m in problems)
    profile_needs_apparmor = (
        request.variant in policy.catalog.names and policy.catalog.get(request.variant).header.requires_apparmor
    )
    return reported_posture_problem(
        node.posture,
        request,
        variant_requires_apparmor=profile_needs_apparmor,
        apparmor_unavailable=policy.apparmor_unavailable,
    )


def able_nodes(job: JobRecord, nodes: list[NodeView], policy: SecurityPolicy) -> list[NodeView]:
    return [n for n in nodes if posture_problem(job, n, policy) is None]


def waiting_reason(job: JobRecord, able: list[NodeView], nodes: list[NodeView], policy: SecurityPolicy) -> str:
    """The message of a task that could not be placed: the posture, when no Ready host has it
    (capacity comes and goes, a posture rarely does); empty otherwise."""
    return "" if able or not nodes else f"waiting: {posture_problem(job, nodes[0], policy)} (every Ready host)"
