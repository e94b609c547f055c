"""Placement passes: which Accepted tasks are due, which host each gets, and why the rest wait.

`PlacementLoop` is owned by the `Scheduler` (the one writer) and runs on its event loop. It holds
the placer (FirstFit or the vectorised `Engine`), the why-pending book and the parked set, and
reads the scheduler's jobs, tasks and hosts through a back-reference; a pass ends in one store
transaction (`_commit`) before the hosts are woken. May import scheduler modules, never the agent.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from scheduler import eligibility, passes
from scheduler.automode import AutoMode
from scheduler.engine import B, Decision, Engine, HostTable, Request
from scheduler.errors import BadMode, Conflict
from scheduler.fitness import Mode
from scheduler.pending import PendingBook, PendingReason, why_pending
from scheduler.placement import NodeView, Placer
from scheduler.records import NodeStatus, TaskRecord
from scheduler.trace import TraceWriter
from titus_common.states import TaskState

if TYPE_CHECKING:
    from scheduler.core import Scheduler

audit = logging.getLogger("titus.scheduler.audit")


class PlacementLoop:
    def __init__(self, sched: Scheduler, placer: Placer | Engine) -> None:
        self._s = sched
        self.placer = placer
        self.pending = PendingBook()  # why each Accepted task waits (queue age, `pendingReason`)
        # Change-driven placement: a task no host could take is parked (its reason kept) until
        # something placement uses changes — a host's capacity/labels/posture/status/facts, a task
        # ending, a mode switch (`unpark`). New tasks are never parked.
        self.parked: set[str] = set()
        self.passes = 0  # passes that evaluated at least one task
        self._hosts = passes.HostInputCache(sched._index.node_task_ids)  # unchanged hosts kept between passes
        c = sched.config
        # Every engine pass written down for `titus-scheduler replay` (scheduler/trace.py); off by default.
        self.trace = TraceWriter(Path(c.decision_trace)) if c.decision_trace else None
        self.auto = AutoMode(c.auto_pack_queue_depth, c.auto_spread_queue_depth, c.auto_mode_hold,
                             pack_rate=c.auto_pack_arrival_rate, spread_rate=c.auto_spread_arrival_rate,
                             window_s=c.auto_arrival_window)

    def eligible_nodes(self) -> list[NodeView]:
        """Ready hosts, with what their assigned tasks leave free."""
        s = self._s
        return eligibility.node_views(s.nodes.values(), s.node_tasks, s.jobs)

    def run_pass(self) -> int:
        """Place every Accepted task that is due. Returns how many were placed."""
        s = self._s
        now = s.clock()
        queue = s._index.pending
        self._auto_switch(len(queue), self.tick())  # every Accepted task waiting, placeable or not
        if len(self.parked) == len(queue):  # parked ⊆ pending: all parked, O(1) when idle
            return 0
        pending = sorted(
            (t for t in map(s.tasks.__getitem__, queue - self.parked) if t.not_before <= now),
            # Oldest first; ties (one submit's tasks) by job and index, never by set order: the same
            # state gives the same pass.
            key=lambda t: (t.timestamps[TaskState.ACCEPTED.value], t.job_id, t.index),
        )
        if not pending:
            return 0
        if len(s.capacity.by_name) > 1:  # capacity groups: critical tier first, DRF within a tier
            pending = s.capacity.order(pending, s.jobs, self._placed_by_group(), self._cell_totals(),
                                       s.config.drf_tolerance)
            pending = s.preempting.hold_back(pending)  # critical groups' idle reservations (preempt.py)
            if not pending:
                return 0
        self.passes += 1
        began = time.perf_counter()
        placed = self._engine_pass(self.placer, pending, now) if isinstance(self.placer, Engine) \
            else self._placer_pass(self.placer, pending, now)
        m = s.metrics
        m.pass_seconds.observe(time.perf_counter() - began)
        m.pass_tasks.labels(outcome="placed").inc(placed)
        m.pass_tasks.labels(outcome="waiting").inc(len(pending) - placed)
        return placed

    def _placer_pass(self, placer: Placer, pending: list[TaskRecord], now: float) -> int:
        s = self._s
        nodes = self.eligible_nodes()
        placed: list[TaskRecord] = []
        waiting: list[TaskRecord] = []
        for t in pending:
            job = s.jobs[t.job_id]
            demand = job.spec.container.resources
            able = eligibility.able_nodes(job, nodes, s.security_policy)
            node = placer.place(demand, able)
            if node is None:
                self.pending.note(t.id, why_pending(demand, nodes, able))
                self.parked.add(t.id)
                why = eligibility.waiting_reason(job, able, nodes, s.security_policy)
                if why != t.message:
                    t.message = why
                    waiting.append(t)
                continue
            t.message = ""
            node.take(demand)
            t.node_id = node.id
            t.enter(TaskState.LAUNCHED, now)
            self._launched(t, placed)
        return self._commit(placed, waiting)

    def _placed_by_group(self) -> dict[str, tuple[float, float]]:
        s = self._s
        used: dict[str, list[float]] = {}
        for t in s.tasks.values():
            if t.node_id is None or t.state.terminal:
                continue
            job = s.jobs[t.job_id]
            r = job.spec.container.resources
            u = used.setdefault(s.capacity.group_of(job.spec).name, [0.0, 0.0])
            u[0] += r.cpu
            u[1] += r.memory_mib
        return {g: (u[0], u[1]) for g, u in used.items()}

    def _cell_totals(self) -> tuple[float, float]:
        ready = [n for n in self._s.nodes.values() if n.status is NodeStatus.READY]
        return sum(n.capacity.cpus for n in ready), float(sum(n.capacity.memory_mib for n in ready))

    def _engine_pass(self, engine: Engine, pending: list[TaskRecord], now: float) -> int:
        # A host with a taint (a failed health check, a cordon) the job does not tolerate takes none
        # of its tasks (per-job masks in passes.plan); a degraded host is penalised (fitness).
        s = self._s
        table, ready = passes.build_table(s.nodes.values(), s.node_tasks, s.jobs, s.facts, engine.seed,
                                          max_tasks_per_host=s.config.host_task_limit, cache=self._hosts)
        placed: list[TaskRecord] = []
        waiting: list[TaskRecord] = []
        on_pass = None
        if self.trace is not None and not self.trace.failed:
            trace = self.trace

            def on_pass(table: HostTable, requests: list[Request], masks: dict[str, list[tuple[str, B]]],
                        decisions: list[Decision]) -> None:
                trace.write(engine, table, requests, masks, decisions, now)

        for t, d in zip(pending, passes.plan(engine, table, ready, pending, s.jobs, s.security_policy, on_pass)):
            if d.host is None:
                self.parked.add(t.id)
                self.pending.note(t.id, engine_pending_reason(d.reasons, len(ready)))
                t.placement_failures = d.reasons
                why = passes.waiting_message(d, len(ready))
                job = s.jobs[t.job_id]
                if ready and all(eligibility.untolerated(job, n.taints) for n in ready):  # as FirstFit says
                    shown = "; ".join(f"{n.id}: " + ", ".join(f"{k} ({v})" for k, v in sorted(n.taints.items()))
                                      for n in ready[:3])
                    why = f"waiting: no Ready host takes new work: {shown}"[:1000]
                if why != t.message:
                    t.message = why
                    waiting.append(t)
                continue
            t.message = ""
            t.placement_failures = []
            t.node_id = d.host
            t.enter(TaskState.LAUNCHED, now)
            self._launched(t, placed)
        return self._commit(placed, waiting)

    def _launched(self, t: TaskRecord, placed: list[TaskRecord]) -> None:
        self.pending.forget(t.id)
        self._s.metrics.observe_launched(t)
        self._s._index.placed(t)
        placed.append(t)

    def _commit(self, placed: list[TaskRecord], waiting: list[TaskRecord]) -> int:
        """One transaction for a pass's placements and changed waiting messages; wake the hosts."""
        s = self._s
        if placed or waiting:
            s.store.commit(tasks=[*placed, *waiting])
            for node_id in {t.node_id for t in placed if t.node_id}:
                s._deliveries.wake(node_id)
        return len(placed)

    def forget(self, task_id: str) -> None:
        """A task ended: it no longer waits."""
        self.parked.discard(task_id)
        self.pending.forget(task_id)

    def unpark(self) -> None:
        """Something placement uses changed: every parked task is worth another look."""
        self.parked.clear()
        self._s._schedule_wanted.set()

    def pending_reason(self, task: TaskRecord) -> str | None:
        """Why an Accepted task is not placed yet (`pending.PendingReason`), None once it is."""
        reason = self.pending.reason(task, self._s.clock())
        return None if reason is None else reason.value

    @property
    def mode(self) -> Mode | None:
        return self.placer.mode if isinstance(self.placer, Engine) else None

    def tick(self) -> float:
        """Monotonic when the scheduler has it: a wall-clock step must not fake a held queue."""
        steps = getattr(self._s, "_steps", None)
        return steps.monotonic() if steps is not None else self._s.clock()

    def _auto_switch(self, depth: int, now: float) -> None:
        if isinstance(self.placer, Engine) and self.auto.enabled:
            new = self.auto.decide(depth, self.placer.mode, now)
            if new is not None:
                self._switch(new, f"auto ({self.auto.why})")

    def set_mode(self, mode: str, actor: str) -> Mode:
        """The live spread ⇄ pack switch: effective on the next pass, audited, in metrics. An
        operator's choice pins the mode against the automatic switch; `auto` hands it back."""
        if not isinstance(self.placer, Engine):
            raise Conflict(f"the placer {type(self.placer).__name__} has no scheduling modes")
        if mode == "auto":
            if not self.auto.configured:
                raise Conflict("the automatic switch is off (auto_pack_queue_depth = 0, auto_pack_arrival_rate = 0)")
            self.auto.pinned = False
            self.auto.reset()
            audit.info("scheduling mode handed to the automatic switch by %s", actor,
                       extra={"event": "scheduling_mode", "new": "auto", "actor": actor})
            self._s._schedule_wanted.set()
            return self.placer.mode
        try:
            new = Mode(mode)
        except ValueError:
            raise BadMode(f"unknown scheduling mode {mode!r}; one of {', '.join(m.value for m in Mode)}, auto") from None
        self.auto.pinned = True
        self.auto.reset()
        return self._switch(new, actor)

    def _switch(self, new: Mode, actor: str) -> Mode:
        assert isinstance(self.placer, Engine)
        old, self.placer.mode = self.placer.mode, new
        audit.info("scheduling mode %s -> %s by %s", old.value, new.value, actor,
                   extra={"event": "scheduling_mode", "old": old.value, "new": new.value, "actor": actor})
        self._s.metrics.mode_switches.labels(mode=new.value).inc()
        self.unpark()
        return new

    def next_due(self) -> float | None:
        """When the earliest delayed Accepted task becomes placeable (parked ones wait for a change)."""
        s = self._s
        if len(self.parked) == len(s._index.pending):
            return None
        delays = [s.tasks[i].not_before for i in s._index.pending - self.parked]
        return min(delays) if delays else None


_ENGINE_REASONS = {
    "not enough cpu": PendingReason.INSUFFICIENT_CPU,
    "not enough memory": PendingReason.INSUFFICIENT_MEMORY,
    "not enough disk": PendingReason.INSUFFICIENT_DISK,
    "posture": PendingReason.POSTURE,
}


def engine_pending_reason(reasons: list[tuple[str, int]], ready: int) -> PendingReason:
    """The engine's most common filter failure as a `pendingReason` (scheduler/pending.py)."""
    if ready == 0:
        return PendingReason.NO_READY_HOST
    for name, _hosts in reasons:
        for prefix, reason in _ENGINE_REASONS.items():
            if name.startswith(prefix):
                return reason
    return PendingReason.NO_SINGLE_HOST_FITS
