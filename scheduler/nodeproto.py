"""The node protocol: what an agent's sync tells the scheduler and what it gets back.

`NodeProtocol` is owned by the `Scheduler` (the one writer) and runs on its event loop: a heartbeat
updates the host's record and facts, `work_for` assembles the launches, kills, orphan kills, stats
and exec orders due for the host, `sync` long-polls for them, and `apply_updates` merges the agent's
task reports. It reaches the scheduler's records through a back-reference and commits through its
store; may import scheduler modules, never the agent (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from scheduler import lifecycle, liveness, provenance, remediation
from scheduler.delivery import assignment
from scheduler.records import JobRecord, NodeRecord, TaskRecord
from titus_common.protocol import NodeReport, SyncResponse, TaskUpdate
from titus_common.states import FinishReason, TaskState

if TYPE_CHECKING:
    from scheduler.core import Scheduler

log = logging.getLogger("titus.scheduler")
# What a heartbeat changes every time; a record differing only in these is not written again
# before STORED_BEAT_EVERY seconds (NodeProtocol.heartbeat).
_BEAT_ONLY = {"last_heartbeat"}
STORED_BEAT_EVERY = 60.0


class NodeProtocol:
    def __init__(self, sched: Scheduler) -> None:
        self._s = sched
        self._want_images: dict[str, bool] = {}  # hosts asked to send their cached-image list
        self._stored_beat: dict[str, float] = {}  # node id → when its record was last written by a heartbeat

    def heartbeat(self, report: NodeReport) -> NodeRecord:
        s = self._s
        now = s.clock()
        old = s.nodes.get(report.id)
        before = None if old is None else (old.status, old.capacity, dict(old.labels), old.posture, dict(old.taints))
        stored = None if old is None else old.model_dump(exclude=_BEAT_ONLY)  # what the store holds of it
        node = liveness.heartbeat(old, report, now)
        facts_changed, self._want_images[report.id] = s.facts.update(report)
        if facts_changed or before != (node.status, node.capacity, node.labels, node.posture, node.taints):
            s._unpark()
        running = set(report.running)
        node.missing_tasks = liveness.missing_tasks(s.node_tasks(node.id), running)
        if remediation.apply_results(node, report.remediation_results, now):
            s.metrics.remediations.labels(outcome=node.remediation_history[-1].outcome).inc()
        s.nodes[node.id] = node
        s.reconciler.observe_report(node.id, running, report.unknown_containers)
        # A kill already sent for a task the agent does not hold: nothing is left to kill.
        gone = [
            t for t in s.node_tasks(node.id)
            if t.state is TaskState.KILL_INITIATED and s._deliveries.was_sent(t.id) and t.id not in running
        ]
        new_tasks: list[TaskRecord] = []
        jobs: dict[str, JobRecord] = {}
        for t in gone:
            reason = t.finish_as or FinishReason.KILLED
            new_tasks.extend(s._end(t, reason, t.message or "killed (the host no longer held it)", now, jobs))
        # A heartbeat that changes nothing but its time is not written (1,400 store commits a second
        # at 7,000 hosts): a restart gives every host a fresh heartbeat anyway. The record is still
        # written every `STORED_BEAT_EVERY` seconds, so the store's copy never goes far stale.
        if (gone or new_tasks or stored != node.model_dump(exclude=_BEAT_ONLY)
                or now - self._stored_beat.get(node.id, -1e18) >= STORED_BEAT_EVERY):
            s.store.commit(nodes=[node], tasks=[*gone, *new_tasks], jobs=jobs.values())
            self._stored_beat[node.id] = now
        s._remember(new_tasks)
        return node

    def work_for(self, node_id: str) -> SyncResponse:
        """Launches and kills due for a node, not sent in the last `redeliver_after` seconds."""
        s = self._s
        now = s.clock()
        resp = SyncResponse(
            heartbeat_interval_seconds=s.config.heartbeat_interval,
            send_cached_images=self._want_images.get(node_id, False),
        )
        node = s.nodes.get(node_id)
        order = remediation.order_for(node) if node is not None else None
        if order is not None:
            resp.remediate.append(order)
        resp.stats = s.stats.take(node_id)
        for t in s.node_tasks(node_id):
            if not s._deliveries.due(t.id, now):
                continue
            if t.state is TaskState.LAUNCHED and not t.kill_requested:
                resp.launch.append(assignment(t, s.jobs[t.job_id]))
                s._deliveries.sent(t.id, now)
            elif t.state is TaskState.KILL_INITIATED:
                resp.kill.append(t.id)
                s._deliveries.sent(t.id, now)
        for ident, container in s.reconciler.orphan_kills.get(node_id, {}).items():  # admitted orphan kills
            if s._deliveries.due(f"orphan:{ident}", now):
                (resp.kill_containers if container else resp.kill).append(ident)
                s._deliveries.sent(f"orphan:{ident}", now)
        resp.exec_orders = s.execs.orders_for(node_id)
        return resp

    async def sync(self, report: NodeReport, wait_seconds: float) -> SyncResponse:
        """Heartbeat, then wait (long-poll) until there is work for the node or the wait is over."""
        s = self._s
        self.heartbeat(report)
        event = s._deliveries.event(report.id)
        deadline = s.clock() + wait_seconds
        while True:
            event.clear()
            resp = self.work_for(report.id)
            remaining = deadline - s.clock()
            if resp.launch or resp.kill or resp.kill_containers or resp.stats or resp.exec_orders or remaining <= 0:
                return resp
            # Not `wait_for` (a task, a timer and a cancellation per long-poll: ~8 % of the scheduler's
            # CPU at 7,000 hosts): the deadline sets the node's event, and the loop above re-checks.
            timer = asyncio.get_running_loop().call_later(remaining, event.set)
            try:
                await event.wait()
            finally:
                timer.cancel()

    def apply_updates(self, node_id: str, updates: Iterable[TaskUpdate]) -> list[str]:
        """Apply an agent's task reports. Returns the ids durably taken (applied or stale)."""
        s = self._s
        touched: dict[str, TaskRecord] = {}
        jobs: dict[str, JobRecord] = {}
        accepted: list[str] = []
        new_tasks: list[TaskRecord] = []
        for u in updates:
            task = s.tasks.get(u.task_id)
            if task is None:
                log.warning("update for unknown task %s from %s ignored", u.task_id, node_id)
                s.metrics.rejected_updates.labels("unknown_task").inc()
                accepted.append(u.task_id)
                continue
            if task.node_id != node_id:
                log.warning(
                    "update for task %s from %s, but it is placed on %s: ignored",
                    u.task_id, node_id, task.node_id, extra={"task_id": task.id, "job_id": task.job_id},
                )
                s.metrics.rejected_updates.labels("other_node").inc()
                accepted.append(u.task_id)
                continue
            accepted.append(u.task_id)
            if task.state.terminal:  # a repeated report, or the task was already declared lost or killed
                if u.state is TaskState.FINISHED and u.log_tail is not None and task.log_tail is None:
                    task.log_tail = u.log_tail  # ended here first (a kill the host no longer held): keep its output
                    touched[task.id] = task
                continue
            newly_started = TaskState.STARTED.value not in task.timestamps and TaskState.STARTED in u.timestamps
            if lifecycle.merge_report(task, u):
                s._deliveries.forget(task.id)
            s._index.touched(task)  # its state or start time, which its host's use reads (groupuse.py)
            if provenance.pin_from_report(s.jobs[task.job_id], task, u.image_digest):
                jobs[task.job_id] = s.jobs[task.job_id]
            if newly_started:
                s.metrics.observe_started(task)
            if u.state is TaskState.FINISHED:
                task.log_tail = u.log_tail  # stored before the agent is told `accepted` (agent/logtail.py)
                at = u.timestamps.get(TaskState.FINISHED, s.clock())
                reason, message = u.reason or FinishReason.CRASHED, u.message or "agent reported no reason"
                if task.finish_as is not None:  # killed by a stuck-state timeout: ends as crashed
                    reason, message = task.finish_as, task.message or message
                new_tasks.extend(s._end(task, reason, message, at, jobs, exit_code=u.exit_code))
            touched[task.id] = task
        if touched:
            s.store.commit(jobs=jobs.values(), tasks=[*touched.values(), *new_tasks])
            s._remember(new_tasks)
        return accepted
