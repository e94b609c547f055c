"""The launch pipeline, declared once: which steps a task's launch runs, in which order.

Order (LAUNCH_ORDER; README and docs are checked against it by tests/unit/test_launch_order.py):
- image first: a slow pull holds nothing else;
- security before cpuset, so a job this host refuses never takes CPUs;
- network after security (a job this host refuses never takes an IP);
- imds after network (its routes use the task's address), so credentials are being fetched while
  the CPUs are placed and the container is created;
- identity after security (a job this host refuses never gets an identity) and before the container
  (its directory is a bind); docs/identity.md;
- container last: once it returns, the user's process runs.
Steps whose host resource is switched off (--no-network, --no-imds, --no-identity or a plain-HTTP
scheduler, --no-cpuset) are left out.
"""

from __future__ import annotations

from agent.host.cpuset_apply import CpusetApplier
from agent.host.metadata import HostMetadata
from agent.host.network import TaskNetworking
from agent.host.security import HostSecurity
from agent.host.workload import TaskIdentities
from agent.metrics import AgentMetrics
from agent.pipeline import Pipeline
from agent.steps.base import LaunchStep
from agent.steps.container import ContainerStep
from agent.steps.cpuset import CpusetStep
from agent.steps.identity import IdentityStep
from agent.steps.image import ImageStep
from agent.steps.imds import ImdsStep
from agent.steps.network import NetworkStep
from agent.steps.security import SecurityStep

__all__ = ["LAUNCH_ORDER", "launch_pipeline"]

LAUNCH_ORDER = ("image", "security", "network", "imds", "identity", "cpuset", "container")


def launch_pipeline(
    metrics: AgentMetrics,
    security: HostSecurity,
    *,
    always_pull: bool = False,
    cpus: CpusetApplier | None = None,
    network: TaskNetworking | None = None,
    metadata: HostMetadata | None = None,
    identity: TaskIdentities | None = None,
) -> Pipeline:
    steps: dict[str, LaunchStep | None] = {
        "image": ImageStep(always_pull=always_pull),
        "security": SecurityStep(security),
        "network": NetworkStep(network) if network is not None else None,
        "imds": ImdsStep(metadata) if metadata is not None and network is not None else None,
        "identity": IdentityStep(identity) if identity is not None else None,
        "cpuset": CpusetStep(cpus) if cpus is not None else None,
        "container": ContainerStep(),
    }
    assert tuple(steps) == LAUNCH_ORDER
    return Pipeline([s for s in steps.values() if s is not None], metrics)
