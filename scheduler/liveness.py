"""Host liveness: when a silent host becomes Disconnected, when its tasks are declared lost, and the
brake on how many tasks may be declared lost per minute.

A host missing heartbeats for `disconnect_after` is Disconnected: no new work, its tasks still count
as running. Only after `lost_after` are its tasks declared lost (and replaced by `core.Scheduler`), at
most `max_lost_per_minute` — a network partition must not turn into a mass kill. The host becomes
Lost once every one of its tasks has been declared lost. Any heartbeat makes a host Ready again.

`Liveness.check` decides and changes only node statuses; finishing the tasks is the caller's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from scheduler import eligibility
from scheduler.config import SchedulerConfig
from scheduler.records import NodeRecord, NodeStatus, TaskRecord
from titus_common.protocol import NodeReport
from titus_common.states import TaskState

__all__ = ["LostBudget", "Liveness", "NodeVerdict", "heartbeat", "missing_tasks", "refresh_taints", "set_cordon"]

log = logging.getLogger("titus.scheduler")


def heartbeat(node: NodeRecord | None, report: NodeReport, now: float) -> NodeRecord:
    """The host's record after a heartbeat (a new record for a host never seen): Ready, with what
    the agent reports (capacity, labels, posture, containers nobody knows)."""
    cap = report.capacity
    if node is None:
        node = NodeRecord.model_validate(
            {"id": report.id, "capacity": cap.model_dump(by_alias=True), "registeredAt": now, "lastHeartbeat": now}
        )
        log.info("node registered: %s (%.0f cpus)", report.id, cap.cpus, extra={"node_id": report.id})
    elif node.status is not NodeStatus.READY:
        log.info("node back: %s (was %s)", report.id, node.status.value, extra={"node_id": report.id})
    node.capacity = node.capacity.model_validate(cap.model_dump(by_alias=True))
    node.labels = dict(report.labels)
    node.agent_version = report.agent_version
    node.last_heartbeat = now
    node.status = NodeStatus.READY
    node.unknown_containers = list(report.unknown_containers)
    if report.posture is not None:
        node.posture = dict(report.posture)
    node.health = [c.model_copy() for c in report.health] if report.health is not None else None
    refresh_taints(node)
    return node


def set_cordon(node: NodeRecord, cordoned: bool, reason: str, now: float) -> None:
    if cordoned and not node.cordoned:
        node.cordoned_at = now
    node.cordoned = cordoned
    node.cordon_reason = (reason or "cordoned by an operator") if cordoned else ""
    if not cordoned:
        node.cordoned_at = None
    log.info("node %s %s%s", node.id, "cordoned" if cordoned else "uncordoned",
             f": {node.cordon_reason}" if cordoned else "", extra={"node_id": node.id})
    refresh_taints(node)


def refresh_taints(node: NodeRecord) -> None:
    """Recompute why the host takes no new work; log when that changes."""
    taints = eligibility.node_taints(node)
    if taints != node.taints:
        if taints:
            log.warning("node %s takes no new work: %s", node.id,
                        "; ".join(f"{k}: {v}" for k, v in sorted(taints.items())), extra={"node_id": node.id})
        else:
            log.info("node %s takes new work again", node.id, extra={"node_id": node.id})
        node.taints = taints


def missing_tasks(assigned: Iterable[TaskRecord], running: set[str]) -> list[str]:
    """Tasks we think are running there that the agent does not hold: recorded for an operator,
    never acted on — a mismatch is not proof that the tasks are gone."""
    return sorted(
        t.id for t in assigned if t.state in (TaskState.START_INITIATED, TaskState.STARTED) and t.id not in running
    )


class LostBudget:
    """A token bucket: `per_minute` tokens at most, refilled continuously."""

    def __init__(self, per_minute: int, now: float) -> None:
        self.per_minute = per_minute
        self.tokens = float(per_minute)
        self.at = now

    def refill(self, now: float) -> None:
        self.tokens = min(float(self.per_minute), self.tokens + (now - self.at) * self.per_minute / 60.0)
        self.at = now

    def take(self) -> bool:
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass
class NodeVerdict:
    """What one check found about one host."""

    node: NodeRecord
    status_changed: bool = False  # Ready → Disconnected, or → Lost
    lose: list[TaskRecord] = field(default_factory=list)  # tasks to declare lost now


class Liveness:
    def __init__(self, config: SchedulerConfig, now: float) -> None:
        self.config = config
        self.budget = LostBudget(config.max_lost_per_minute, now)

    def check(
        self, nodes: Iterable[NodeRecord], tasks_on: Callable[[str], Sequence[TaskRecord]], now: float
    ) -> Iterator[NodeVerdict]:
        """Move silent hosts to Disconnected / Lost; yield, per host that changed, the tasks to
        declare lost (within the rate limit). A generator: the caller finishes one host's tasks
        before the next host is looked at."""
        self.budget.refill(now)
        for node in nodes:
            verdict = NodeVerdict(node)
            silent = now - node.last_heartbeat
            if node.status is NodeStatus.READY and silent > self.config.disconnect_after:
                node.status = NodeStatus.DISCONNECTED
                verdict.status_changed = True
                log.warning("node disconnected: %s (silent %.0fs)", node.id, silent, extra={"node_id": node.id})
            if node.status is not NodeStatus.READY and silent > self.config.lost_after:
                for t in tasks_on(node.id):
                    if not self.budget.take():
                        log.error("lost-task rate limit reached: holding back; node %s", node.id)
                        break
                    verdict.lose.append(t)
                else:
                    if node.status is not NodeStatus.LOST:
                        node.status = NodeStatus.LOST
                        verdict.status_changed = True
            if verdict.status_changed or verdict.lose:
                yield verdict
