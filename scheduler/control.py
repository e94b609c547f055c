"""The scheduler's control loop and its periodic passes: host liveness and remediation, then
reconciliation, then placement.

`ControlLoop` is owned by the `Scheduler` (the one writer) and runs on its event loop, reaching the
records through a back-reference. Every kill or declared-lost it decides goes through the
reconciler's kill path (freeze, budget; docs/reconcile.md). May import scheduler modules, never the
agent.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from scheduler import remediation, liveness
from scheduler.reconcile import ActionKind
from scheduler.reconciler import cell_view
from scheduler.records import JobRecord, NodeRecord, TaskRecord
from titus_common.states import FinishReason

if TYPE_CHECKING:
    from scheduler.core import Scheduler

log = logging.getLogger("titus.scheduler")


class ControlLoop:
    def __init__(self, sched: Scheduler) -> None:
        self._s = sched

    def check_nodes(self) -> None:
        """Disconnected after missed heartbeats, Lost after a long grace (`liveness`). The tasks of a
        host silent past `lost_after` are declared lost by `reconcile`, under its freeze and budget —
        a network partition must not turn into a mass kill."""
        s = self._s
        now = s.clock()
        changed_nodes: list[NodeRecord] = []
        for verdict in s._liveness.check(s.nodes.values(), s.node_tasks, now):
            # Its tasks are declared lost by reconciliation, through the one kill path (freeze, budget).
            if verdict.status_changed:
                changed_nodes.append(verdict.node)
        plan = remediation.plan(s.nodes.values(), s.config, now)
        s.remediation_frozen = plan.frozen
        s.metrics.note_remediation_plan(plan)
        changed_nodes.extend(n for n in plan.changed if n not in changed_nodes)
        for node_id in plan.ordered:
            s._deliveries.wake(node_id)
        quality = s.quality.evaluate(s.nodes.values(), now)
        for node_id in (*quality.quarantined, *quality.lifted):
            liveness.refresh_taints(s.nodes[node_id])
            if s.nodes[node_id] not in changed_nodes:
                changed_nodes.append(s.nodes[node_id])
        if quality.changed:
            s.metrics.quality_quarantines.inc(len(quality.quarantined))
            s._unpark()
        if changed_nodes:
            s.store.commit(nodes=changed_nodes)
        s.draining.run_pass()
        s.preempting.run_pass()  # room for critical groups' reservations (scheduler/preempting.py)

    def reconcile(self) -> int:
        """One reconciliation pass; applies what the kill path admits. Returns how many were applied."""
        s = self._s
        now = s.clock()
        admitted = s.reconciler.run_pass(cell_view(s, s.reconciler.reports, now), s._live, now)
        changed: list[TaskRecord] = []
        jobs: dict[str, JobRecord] = {}
        for a in admitted:
            if a.kind.orphan:  # sent to its agent with the next sync (work_for)
                s.reconciler.queue_orphan_kill(a)
                if a.node_id:
                    s._deliveries.wake(a.node_id)
                continue
            t = s.tasks.get(a.task_id)
            if t is None or t.state.terminal:
                continue
            if a.kind is ActionKind.DECLARE_LOST:
                changed += [t, *s._end(t, FinishReason.LOST, a.reason, now, jobs)]
            elif a.kind is ActionKind.RETRY_STUCK:
                changed += [t, *s._end(t, FinishReason.CRASHED, a.reason, now, jobs)]
            elif a.kind is ActionKind.KILL_STUCK:
                t.finish_as, t.message = FinishReason.CRASHED, a.reason
                s._request_kill(t)
                changed.append(t)
            else:  # RESEND_KILL: due for delivery again at once
                s._deliveries.forget(t.id)
                if t.node_id:
                    s._deliveries.wake(t.node_id)
        if changed:
            s.store.commit(tasks=changed, jobs=jobs.values())
            s._remember([t for t in changed if t.id not in s.tasks])
        return len(admitted)

    async def run(self, stop: asyncio.Event) -> None:
        """The control loop: place when something changed or a delayed task falls due; check hosts."""
        s = self._s
        next_node_check = next_reconcile = -1e18
        # The loop's own timers are monotonic: a wall-clock step back must not stall them.
        tick = s._steps.monotonic if s._steps is not None else s.clock
        while not stop.is_set():
            s._schedule_wanted.clear()
            now, t = s.clock(), tick()
            timeout = 1.0
            try:
                if t >= next_node_check:
                    s.check_nodes()
                    s.retirer.kick()  # hosts remediation drained, once empty; in the background
                    next_node_check = t + 1.0
                if s.retention.due(now):
                    s.retention.evict(s, now)
                if t >= next_reconcile:
                    s.reconcile()
                    next_reconcile = t + s.config.reconcile_interval
                s.schedule_pass()
                due = s.next_due()
                timeout = 1.0 if due is None else max(0.01, min(1.0, due - s.clock()))
            except Exception:  # a bug in one pass must not end the control loop while the API looks healthy
                log.exception("control loop pass failed; retrying in 1s")
                s.metrics.loop_errors.inc()
            try:
                await asyncio.wait_for(s._schedule_wanted.wait(), timeout=timeout)
            except TimeoutError:
                pass
