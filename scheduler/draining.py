"""Applies drains (`drain.plan`) for the `Scheduler`, on its event loop, once a second: starts
replacements, asks the one kill path (`killpath.KillPath`, owned by the reconciler) before every
kill and holds every kill while reconciliation is frozen, writes each decision to the audit log,
and commits one transaction per pass. `titusctl node drain` starts a drain, `uncordon` stops it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from scheduler import drain, lifecycle
from scheduler.drain import StepKind
from scheduler.errors import NotFound
from scheduler.records import DrainState, JobRecord, NodeRecord, TaskRecord

if TYPE_CHECKING:
    from scheduler.core import Scheduler

__all__ = ["Drainer", "start_state"]

log = logging.getLogger("titus.scheduler.drain")


def start_state(now: float, by: str, reason: str, batch_deadline_seconds: float) -> DrainState:
    return DrainState(started_at=now, by=by, reason=reason, batch_deadline=now + batch_deadline_seconds)


class Drainer:
    def __init__(self, sched: Scheduler) -> None:
        self._s = sched
        self.phases: dict[str, str] = {}  # task id → its phase at the last pass (the status)

    # ---- operator --------------------------------------------------------------------------------

    def start(self, node_id: str, reason: str, by: str, batch_deadline_seconds: float | None) -> NodeRecord:
        s = self._s
        node = s.nodes.get(node_id)
        if node is None:
            raise NotFound(f"no node {node_id!r}")
        now = s.clock()
        why = reason or "drained by an operator"
        deadline = s.config.drain_batch_deadline if batch_deadline_seconds is None else batch_deadline_seconds
        if node.drain is None or node.drain.finished_at is not None:
            node.drain = start_state(now, by, why, deadline)
        s.set_cordon(node_id, True, why, commit=False)
        s.store.commit(nodes=[node])
        self._audit(now, "drain.start", node, by=by, reason=why, batchDeadline=node.drain.batch_deadline)
        self.run_pass()
        return node

    def stop(self, node: NodeRecord, now: float) -> tuple[list[TaskRecord], list[JobRecord]]:
        """The drain of `node` ends (an uncordon): every replacement a move started and that has
        not taken over yet is cancelled (killed), so the job is back to its desired count; kills
        already sent stay sent. Returns the tasks and jobs to commit."""
        if node.drain is None:
            return [], []
        s = self._s
        changed: list[TaskRecord] = []
        jobs: dict[str, JobRecord] = {}
        for t in s.node_tasks(node.id):
            if t.replaced_by is None or t.state.terminal or t.kill_requested:
                continue
            for c in drain.covering(t, s.job_tasks(t.job_id)):
                c.replaced_by = t.id  # the index is covered by the task that stays
                c.message = f"drain of {node.id} stopped: replacement cancelled"
                s._request_kill(c)
                changed.append(c)
                if c.state.terminal:
                    s._after_finish(c, s.jobs[c.job_id])
            t.replaced_by = None
            changed.append(t)
            jobs[t.job_id] = s.jobs[t.job_id]
        self._audit(now, "drain.stop", node, cancelled=len([t for t in changed if t.node_id != node.id]))
        node.drain = None
        return changed, list(jobs.values())

    def status(self, node_id: str) -> dict[str, Any]:
        s = self._s
        node = s.nodes.get(node_id)
        if node is None:
            raise NotFound(f"no node {node_id!r}")
        tasks = sorted(s.node_tasks(node_id), key=lambda t: (t.job_id, t.index))
        return {
            "nodeId": node.id,
            "cordoned": node.cordoned,
            "drain": None if node.drain is None else node.drain.to_api(),
            "state": "none" if node.drain is None else ("drained" if node.drain.finished_at else "draining"),
            "remaining": [
                {"taskId": t.id, "jobId": t.job_id, "index": t.index, "state": t.state.value,
                 "kind": "service" if s.jobs[t.job_id].spec.batch is None else "batch",
                 "phase": self.phases.get(t.id, "")}
                for t in tasks
            ],
        }

    # ---- the pass --------------------------------------------------------------------------------

    def run_pass(self) -> None:
        s = self._s
        draining = [n for n in s.nodes.values() if n.drain is not None and n.drain.finished_at is None]
        if not draining:
            return
        now = s.clock()
        p = drain.plan(draining, s.node_tasks, s.job_tasks, s.jobs, s.config.job_disruption_fraction, now)
        phases = dict(p.phases)
        changed: dict[str, TaskRecord] = {}
        created: list[TaskRecord] = []
        jobs: dict[str, JobRecord] = {}
        nodes: dict[str, NodeRecord] = {}
        for step in p.steps:
            t, job, node = s.tasks[step.task_id], s.jobs[step.job_id], s.nodes[step.node_id]
            assert node.drain is not None
            if step.kind is StepKind.SURGE:
                new = lifecycle.new_task(job, t.index, now)
                new.retries_used, new.system_retries = t.retries_used, t.system_retries
                t.replaced_by = new.id
                changed[t.id] = t
                created.append(new)
                jobs[job.id] = job
                self._audit(now, "drain.replace", node, task=t.id, job=job.id, replacement=new.id)
                continue
            if s.reconciler.frozen is not None:
                phases[t.id] = f"kill held: reconciliation frozen ({s.reconciler.frozen})"
                continue
            refusal = s.reconciler.kill_path.take(job.id, s._live(job.id), now)
            if refusal is not None:
                phases[t.id] = f"kill deferred: {refusal}"
                continue
            t.message = step.reason
            t.evicted = step.kind is StepKind.EVICT
            s._request_kill(t)
            changed[t.id] = t
            jobs[job.id] = job
            if t.state.terminal:
                created.extend(s._after_finish(t, job))
            if step.kind is StepKind.EVICT:
                node.drain.evicted += 1
            else:
                node.drain.moved += 1
            nodes[node.id] = node
            s.metrics.drain_kills.labels(kind=step.kind.value).inc()
            self._audit(now, f"drain.{step.kind.value}", node, task=t.id, job=job.id, reason=step.reason)
        for node_id in p.done:
            node = s.nodes[node_id]
            assert node.drain is not None
            node.drain.finished_at = now
            nodes[node_id] = node
            self._audit(now, "drain.done", node, moved=node.drain.moved, evicted=node.drain.evicted,
                        seconds=round(now - node.drain.started_at, 1))
        self.phases = phases
        if changed or created or nodes:
            s.store.commit(tasks=[*changed.values(), *created], jobs=jobs.values(), nodes=nodes.values())
            s._remember(created)

    def _audit(self, now: float, event: str, node: NodeRecord, **fields: Any) -> None:
        self._s.reconciler.audit.write(now, event, node=node.id, **fields)
        log.warning("%s: host %s %s", event, node.id, " ".join(f"{k}={v}" for k, v in fields.items()),
                    extra={"node_id": node.id})
