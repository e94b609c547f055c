"""Which hosts may take a job: Ready hosts (not Disconnected or Lost), with what is left of their
capacity, and among them those with no taint the job does not tolerate (a failed health check, a
cordon; docs/health.md) and whose reported security posture meets the job's security attributes
under the security policy (docs/security.md). Hosts with a degraded check come last in the order
placement sees. Capacity fit itself is the placer's (`placement.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from scheduler.placement import NodeView
from scheduler.records import JobRecord, NodeRecord, NodeStatus, TaskRecord
from security.attributes import parse_security_attributes
from security.posture import reported_posture_problem
from security.profiles import SecurityPolicy
from titus_common.protocol import HealthStatus

__all__ = [
    "CORDONED", "QUALITY", "TOLERATE_ATTRIBUTE", "able_nodes", "is_degraded", "node_taints", "node_views",
    "posture_problem", "tolerates", "untolerated", "waiting_reason",
]

CORDONED = "cordoned"
QUALITY = "quality"  # the quality tracker's quarantine (scheduler/quality.py)
# A job attribute: comma-separated health taints the job may run despite ("health.registry").
TOLERATE_ATTRIBUTE = "titus.health.tolerate"


def node_taints(node: NodeRecord) -> dict[str, str]:
    """Why the host takes no new work: a cordon, and each failed health check."""
    taints: dict[str, str] = {}
    if node.cordoned:
        taints[CORDONED] = node.cordon_reason or "cordoned by an operator"
    for c in node.health or []:
        if c.status is HealthStatus.FAILED:
            taints[f"health.{c.check}"] = f"{c.reason}: {c.message}" if c.message else c.reason
    if node.quarantined_until is not None:
        taints[QUALITY] = f"QualityQuarantine: {node.quarantine_reason}"
    return taints


def is_degraded(node: NodeRecord) -> bool:
    return any(c.status is HealthStatus.DEGRADED for c in node.health or [])


def node_views(
    nodes: Iterable[NodeRecord],
    tasks_on: Callable[[str], Iterable[TaskRecord]],
    jobs: Mapping[str, JobRecord],
) -> list[NodeView]:
    """Ready hosts, healthy before degraded, then in id order, each with the resources its assigned
    tasks hold already taken and its taints."""
    views = {
        n.id: NodeView(n.id, n.capacity.cpus, n.capacity.memory_mib, n.capacity.disk_mib, n.labels, n.posture,
                       dict(n.taints), is_degraded(n))
        for n in sorted(nodes, key=lambda n: (is_degraded(n), n.id))
        if n.status is NodeStatus.READY
    }
    for view in views.values():
        for t in tasks_on(view.id):
            view.take(jobs[t.job_id].spec.container.resources)
    return list(views.values())


def untolerated(job: JobRecord, taints: Mapping[str, str]) -> list[str]:
    """The host's taints the job does not tolerate, sorted (a cordon is never tolerated)."""
    if not taints:
        return []
    tolerated = {t.strip() for t in job.spec.attributes.get(TOLERATE_ATTRIBUTE, "").split(",") if t.strip()}
    return sorted(k for k in taints if k == CORDONED or k not in tolerated)


def tolerates(job: JobRecord, node: NodeView) -> bool:
    return not untolerated(job, node.taints)


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
    return [n for n in nodes if tolerates(job, n) and posture_problem(job, n, policy) is None]


def waiting_reason(job: JobRecord, able: list[NodeView], nodes: list[NodeView], policy: SecurityPolicy) -> str:
    """The message of a task that could not be placed: the taints, when every Ready host has one
    the job does not tolerate; the posture, when no untainted Ready host has it (capacity comes
    and goes, a posture rarely does); empty otherwise."""
    if able or not nodes:
        return ""
    untainted = [n for n in nodes if tolerates(job, n)]
    if not untainted:
        shown = "; ".join(f"{n.id}: " + ", ".join(f"{k} ({v})" for k, v in sorted(n.taints.items())) for n in nodes[:3])
        more = f" and {len(nodes) - 3} more" if len(nodes) > 3 else ""
        return f"waiting: no Ready host takes new work: {shown}{more}"[:1000]
    return f"waiting: {posture_problem(job, untainted[0], policy)} (every Ready host)"
