"""Placement: which host gets a task. One interface, so the algorithm can be replaced
(spread/pack scoring comes with the scheduling issue) without touching the scheduler loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from typing import Protocol

from titus_common.jobspec import Resources


@dataclass
class NodeView:
    """A host as placement sees it: what is left after the tasks already assigned there."""

    id: str
    free_cpus: float
    free_memory_mib: int
    free_disk_mib: int
    labels: dict[str, str]
    posture: dict[str, Any] | None = None  # the host's security posture as its agent reported it
    taints: dict[str, str] = field(default_factory=dict)  # why it takes no new work (eligibility.py)
    degraded: bool = False  # a degraded health check: placed last

    def fits(self, r: Resources) -> bool:
        # A small epsilon: 0.1 + 0.2 cpus must fit in 0.3 free.
        return (
            r.cpu <= self.free_cpus + 1e-9
            and r.memory_mib <= self.free_memory_mib
            and r.disk_mib <= self.free_disk_mib
        )

    def take(self, r: Resources) -> None:
        self.free_cpus -= r.cpu
        self.free_memory_mib -= r.memory_mib
        self.free_disk_mib -= r.disk_mib


class Placer(Protocol):
    def place(self, demand: Resources, nodes: list[NodeView]) -> NodeView | None:
        """Choose a node among `nodes` (all eligible: heartbeating, healthy, with the security posture
        the job requires), or None if none fits.
        Must be a pure function of its arguments: the caller commits the choice."""
        ...


class FirstFit:
    """The first eligible host, in a stable order, with room for the task."""

    def place(self, demand: Resources, nodes: list[NodeView]) -> NodeView | None:
        for node in nodes:
            if node.fits(demand):
                return node
        return None
