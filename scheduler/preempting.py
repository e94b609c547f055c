"""Applies the reservation guards of `preempt` for the `Scheduler`, on its event loop.

- `hold_back`: called by the placement pass on its ordered due tasks; a task that does not draw on
  its own critical group's reservation is held (parked, reason `reservationHeldBack`) while placing
  it would eat into the critical groups' idle reservations.
- `run_pass`: once a second (the control loop's host checks). The critical tasks the last pass
  parked are the claims; `preempt.plan` picks victims; every victim is killed through the one kill
  path (held while reconciliation is frozen; the token bucket and each job's window must admit the
  whole set, or none is killed), ends `killed` with the message "preempted by capacity group X …",
  is replaced at once elsewhere costing its job no retry (`evicted`), is audited (`preempt`) and
  counted (`titus_scheduler_preemptions_total{group,by}`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from scheduler import drain, eligibility, passes, preempt
from scheduler.engine import Engine
from scheduler.pending import PendingReason
from scheduler.placement import NodeView
from scheduler.records import JobRecord, JobState, NodeStatus, TaskRecord
from titus_common.states import FinishReason, TaskState

if TYPE_CHECKING:
    from scheduler.core import Scheduler

__all__ = ["Cell", "Preemptor"]

log = logging.getLogger("titus.scheduler.preempt")

MAX_CLAIMS = 200  # claims looked at per pass (the oldest): bounds a pass on a big backlog


@dataclass
class Cell:
    """What the guards read of the cell (`Preemptor._scan`)."""

    use: dict[str, preempt.GroupUse]  # per group: reservation, and use on Ready hosts
    free_cpu: float = 0.0  # what the Ready, untainted hosts have free
    free_memory_mib: float = 0.0
    rooms: list[preempt.HostRoom] = field(default_factory=list)  # every Ready host, kills in flight counted free
    running: dict[str, tuple[preempt.Running, ...]] = field(default_factory=dict)  # Ready host → candidates, in order
    jobs: set[str] = field(default_factory=set)  # jobs with a task holding resources, no kill in flight
    in_flight: Counter[str] = field(default_factory=Counter)  # job → its kills in flight


class Preemptor:
    def __init__(self, sched: Scheduler) -> None:
        self._s = sched
        self.last: preempt.Plan = preempt.Plan()  # the last pass's plan (blocked/waiting, for tests and logs)
        self.held_kills = ""  # why the last pass's victims were not killed ("" when they were, or none)
        # The last placement pass's hold-back: what it let through, and what it held.
        self._admitted: list[str] = []
        self._held: list[str] = []
        self._seen_passes = -1  # the placement passes counted at the last look (nothing new: skip)
        self.decide_seconds = 0.0  # how long the last pass took to decide (bench/preempt.py)
        self._ready_hosts = 1  # Ready hosts at this pass (the engine's default per-host job cap)
        self._next_at = -1e18  # (monotonic) no preemption pass before this: its duty cycle

    @property
    def guarded(self) -> bool:
        """Is there a critical group with a reservation to guard?"""
        return any(g.tier == "critical" and (g.reserved_cpu > 0 or g.reserved_memory_mib > 0)
                   for g in self._s.capacity.by_name.values())

    def group_use(self) -> dict[str, preempt.GroupUse]:
        """Per group: its reservation, and what its placed tasks on Ready hosts hold (kills in flight
        left out): a group is above its reservation only on hosts that are running its work."""
        return self._scan().use

    def _scan(self, full_scan: bool = False) -> Cell:
        """The cell as the guards see it, from each host's `groupuse.HostUse`: as the index keeps
        it (recomputed only for the hosts whose tasks changed), or with `full_scan` computed afresh
        from every task (the reference: the same sums, in the same order)."""
        s = self._s
        groups = s.groupuse
        if not full_scan:
            groups.refresh()
        per_host = groups.full_scan if full_scan else groups.host
        use = {n: preempt.GroupUse(g.tier, g.reserved_cpu, float(g.reserved_memory_mib))
               for n, g in s.capacity.by_name.items()}
        cell = Cell(use)
        for n in s.nodes.values():
            h = per_host(n.id)
            ready = n.status is NodeStatus.READY
            cpu, mem = float(n.capacity.cpus), float(n.capacity.memory_mib)
            if ready and not n.taints:
                cell.free_cpu += max(0.0, cpu - h.held_cpu)
                cell.free_memory_mib += max(0.0, mem - h.held_memory_mib)
            cell.jobs.update(h.jobs)
            for job_id, k in h.in_flight.items():
                cell.in_flight[job_id] += k
            if not ready:  # a silent host's tasks may be lost: never a reason to kill
                continue
            for g, (c, m) in h.groups.items():
                use[g].used_cpu += c
                use[g].used_memory_mib += m
            cell.rooms.append(preempt.HostRoom(n.id, cpu - h.live_cpu, mem - h.live_memory_mib,
                                               float(n.capacity.disk_mib) - h.live_disk_mib))
            if h.candidates:
                cell.running[n.id] = h.candidates
        return cell

    # ---- hold-back (in the placement pass) --------------------------------------------------------

    def hold_back(self, pending: list[TaskRecord]) -> list[TaskRecord]:
        """The tasks of `pending` (in order) that may be placed; the rest are parked, their reason kept."""
        s = self._s
        if not s.config.reservation_hold_back or not self.guarded:
            return pending
        cell = self._scan()
        room = preempt.Headroom(cell.use, cell.free_cpu, cell.free_memory_mib)
        if not room.active:
            return pending
        out: list[TaskRecord] = []
        waiting: list[TaskRecord] = []
        self._held = []
        for t in pending:
            job = s.jobs[t.job_id]
            r = job.spec.container.resources
            if room.admit(s.capacity.group_of(job.spec).name, r.cpu, r.memory_mib):
                out.append(t)
                continue
            self._held.append(t.id)
            s.placing.parked.add(t.id)
            s.placing.pending.note(t.id, PendingReason.RESERVATION_HELD)
            why = room.why()
            if t.message != why:
                t.message = why
                waiting.append(t)
        if waiting:
            s.store.commit(tasks=waiting)
        self._admitted = [t.id for t in out]
        return out

    def _recheck_held(self) -> None:
        """A task the hold-back let through but no host took (too big for any one host) counted
        against the headroom of the tasks held after it: once it is parked, look at those again
        (at most once a second, so a held backlog never spins the loop)."""
        s = self._s
        if self._held and any(i in s.placing.parked for i in self._admitted):
            s.placing.parked.difference_update(self._held)
            self._held = []
            s._schedule_wanted.set()

    # ---- preemption (once a second) ---------------------------------------------------------------

    def run_pass(self) -> int:
        """Kill what makes room for parked critical tasks; returns how many victims were killed."""
        s = self._s
        self._recheck_held()
        if not self.guarded:
            return 0
        # Kept current every second, so that a pass after a burst of placements does not pay for
        # all of them at once (the hold-back's placement passes refresh it too).
        s.groupuse.refresh()
        if not s.config.preemption:
            return 0
        # The claims are what the placement passes parked: without a pass since the last look, and
        # with no kill refused then (its budget may have come back), there is nothing new to decide.
        if s.placing.passes == self._seen_passes and not self.held_kills:
            return 0
        # A pass reads every host (and recomputes those whose tasks changed, scheduler/groupuse.py):
        # one longer than 200 ms is followed by a pause 9 times as long, so preemption takes at
        # most 10 % of the loop's time, whatever the placement passes do meanwhile.
        if s.placing.tick() < self._next_at:
            return 0
        started = time.perf_counter()
        try:
            return self._run(s)
        finally:
            took = time.perf_counter() - started
            self._next_at = s.placing.tick() + 9 * took if took > 0.2 else -1e18

    def _run(self, s: Scheduler) -> int:
        self._seen_passes = s.placing.passes
        self.held_kills = ""
        started = time.perf_counter()
        p = self.decide()
        self.decide_seconds = time.perf_counter() - started
        self.last = p
        if not p.victims:
            return 0
        return self._kill(p, s.clock())

    def decide(self, full_scan: bool = False) -> preempt.Plan:
        """The plan for the claims parked now (nothing is changed: `_run` kills its victims).
        `full_scan`: from every task rather than the index (the reference, bench/preempt.py)."""
        s = self._s
        now = s.clock()
        parked = [s.tasks[i] for i in s.placing.parked if i in s.tasks]
        claims_tasks = sorted(
            (t for t in parked if t.state is TaskState.ACCEPTED and t.not_before <= now
             and s.capacity.group_of(s.jobs[t.job_id].spec).tier == "critical"),
            key=lambda t: (t.timestamps[TaskState.ACCEPTED.value], t.job_id, t.index),
        )[:MAX_CLAIMS]
        if not claims_tasks:
            return preempt.Plan()
        claims = [self._claim(t) for t in claims_tasks]
        cell = self._scan(full_scan)
        budget = {}
        for job_id in cell.jobs:
            job = s.jobs[job_id]
            if job.state is JobState.ACCEPTED:
                budget[job_id] = (drain.job_budget(job, s._live(job_id), s.config.job_disruption_fraction)
                                  - cell.in_flight[job_id])
        self._ready_hosts = max(1, len(cell.rooms))
        return preempt.plan(claims, cell.running, cell.rooms, cell.use, budget, self._fits,
                            s.config.preemption_max_per_pass)

    def _claim(self, t: TaskRecord) -> preempt.Claim:
        job = self._s.jobs[t.job_id]
        r = job.spec.container.resources
        return preempt.Claim(t.id, t.job_id, self._s.capacity.group_of(job.spec).name, r.cpu, r.memory_mib, r.disk_mib)

    def _fits(self, c: preempt.Claim, node_id: str, victims: Sequence[preempt.Running],
              routed: Sequence[preempt.Claim]) -> bool:
        """Would the placer take the claim on this host with the victims (and kills in flight) gone
        and the claims already routed there placed? The engine's own filters on a one-host table:
        taints, posture, constraints, IPs, the task cap, the job's per-host cap (as the whole cell
        would set it: a one-host table would otherwise lift the default cap)."""
        s = self._s
        node = s.nodes.get(node_id)
        if node is None or node.status is not NodeStatus.READY:
            return False
        gone = {v.task_id for v in victims}
        job = s.jobs[c.job_id]
        claimed = [s.tasks[r.task_id] for r in routed]

        def tasks_on(n: str) -> list[TaskRecord]:
            return [*(t for t in s.node_tasks(n) if not t.kill_requested and t.id not in gone), *claimed]

        placer = s.placing.placer
        if isinstance(placer, Engine):
            req = passes.request_for(s.tasks[c.task_id], job)
            req = dataclasses.replace(req, job_tasks=-(-req.job_tasks // self._ready_hosts))
            hard, _ = job.spec.constraints.max_per_host()
            cap = hard if hard is not None else max(placer.job_cap, req.job_tasks)
            if sum(1 for t in tasks_on(node_id) if t.job_id == c.job_id) >= cap:
                return False  # the job's per-host cap, without building a table
            table, ready = passes.build_table([node], tasks_on, s.jobs, s.facts, placer.seed,
                                              max_tasks_per_host=s.config.host_task_limit)
            d = placer.place(table, req, passes.job_masks(table, ready, job, s.security_policy))
            return d.host == node_id
        views = eligibility.node_views([node], tasks_on, s.jobs)
        able = eligibility.able_nodes(job, views, s.security_policy)
        return bool(able) and able[0].fits(job.spec.container.resources)

    def _kill(self, p: preempt.Plan, now: float) -> int:
        s = self._s
        if s.reconciler.frozen is not None:
            self.held_kills = f"reconciliation frozen ({s.reconciler.frozen})"
            log.warning("preemption of %d tasks held: %s", len(p.victims), self.held_kills)
            return 0
        refusal = s.reconciler.kill_path.room(Counter(v.task.job_id for v in p.victims), s._live, now)
        if refusal is not None:
            self.held_kills = refusal
            log.warning("preemption of %d tasks deferred: %s", len(p.victims), refusal)
            return 0
        changed: list[TaskRecord] = []
        created: list[TaskRecord] = []
        jobs: dict[str, JobRecord] = {}
        claims: dict[str, list[preempt.Victim]] = {}
        for v in p.victims:
            refused = s.reconciler.kill_path.take(v.task.job_id, s._live(v.task.job_id), now)
            if refused is not None:  # `room` said yes: only a bug gets here; the rest waits a pass
                log.error("preemption stopped: %s", refused)
                break
            t, job = s.tasks[v.task.task_id], s.jobs[v.task.job_id]
            why = (f"preempted by capacity group {v.for_group} (critical, within its reservation) "
                   f"for task {v.for_task}; group {v.task.group} was above its reservation")
            t.finish_as, t.evicted, t.message = FinishReason.KILLED, True, why
            s._request_kill(t)
            if t.state.terminal:  # never reached its host: finished at once, with our reason
                t.message = why
                created.extend(s._after_finish(t, job))
            changed.append(t)
            jobs[job.id] = job
            claims.setdefault(v.for_task, []).append(v)
            s.metrics.preemptions.labels(group=v.task.group, by=v.for_group).inc()
            s.reconciler.audit.write(now, "preempt", task=t.id, job=job.id, node=v.task.node_id,
                                     group=v.task.group, by=v.for_group, forTask=v.for_task)
            log.warning("preempt: task %s of group %s on %s for task %s of critical group %s", t.id, v.task.group,
                        v.task.node_id, v.for_task, v.for_group, extra={"task_id": t.id, "job_id": job.id})
        for task_id, vs in claims.items():
            c = s.tasks[task_id]
            c.message = f"waiting: {len(vs)} task(s) on {vs[0].task.node_id} preempted for its capacity group's reservation"
            changed.append(c)
        s.store.commit(tasks=[*changed, *created], jobs=jobs.values())
        s._remember(created)
        return sum(len(vs) for vs in claims.values())
