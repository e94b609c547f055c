"""The Scheduler façade: the one writer of jobs → tasks → placement → agents.

All mutation goes through `Scheduler`, on the event loop thread; each public operation commits its
records to the store in one transaction before it touches the in-memory copy or answers. The
decisions it applies live beside it: `retries` (what replaces an ended task), `liveness` (silent
hosts), `placing` (the placement passes: `eligibility`, then the placer or engine), `nodeproto`
(what agents' syncs read and write), `control` (the control loop: host checks, reconciliation,
placement); `index` and `delivery` hold its in-memory bookkeeping.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from scheduler import drain, integrity, lifecycle, liveness, provenance, retries
from scheduler.quality import QualityTracker
from scheduler.audit import AuditLog
from scheduler.clockstep import ClockStep
from scheduler.pending import PendingBook
from scheduler.placing import PlacementLoop
from scheduler.nodeproto import NodeProtocol
from scheduler.control import ControlLoop
from scheduler.config import SchedulerConfig
from scheduler.delivery import Deliveries
from scheduler.draining import Drainer
from scheduler.preempting import Preemptor
from scheduler.retire import Retirer, make_ec2
from scheduler.exec_relay import ExecRelay
from scheduler.engine import Engine
from scheduler.capacity import Groups
from scheduler.errors import BadMode, BadRequest, Conflict, NotFound
from scheduler.fitness import Mode
from scheduler.hostfacts import HostFactsTable
from scheduler.groupuse import GroupUseIndex
from scheduler.index import TaskIndex
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import NodeView, Placer
from scheduler.reconciler import Reconciler
from scheduler.registry import Lookup, Registry
from scheduler.records import JobRecord, JobState, NodeRecord, TaskRecord
from scheduler.retention import Retention
from scheduler.store import Store
from scheduler.taskstats import StatsRelay
from security.profiles import SecurityPolicy, default_policy
from titus_common.jobspec import JobSpec
from titus_common.protocol import NodeReport, SyncResponse, TaskUpdate
from titus_common.states import FinishReason, TaskState

__all__ = ["BadMode", "BadRequest", "Conflict", "NotFound", "Scheduler", "SchedulerConfig"]

log = logging.getLogger("titus.scheduler")


class Scheduler:
    def __init__(
        self,
        store: Store,
        placer: Placer | Engine,
        metrics: SchedulerMetrics,
        config: SchedulerConfig | None = None,
        clock: Callable[[], float] = time.time,
        security_policy: SecurityPolicy | None = None,
        audit: AuditLog | None = None,
        monotonic: Callable[[], float] | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.store = store
        # Where image tags are resolved to digests (scheduler/provenance.py); None: never asked.
        self.registry = registry
        self.metrics = metrics
        self.config = config if config is not None else SchedulerConfig()
        # Every reading of the wall clock first checks it against the monotonic one (a test's fake
        # clock without a monotonic one is taken as steady): a step moves the ages, it is no time.
        if monotonic is None and clock is time.time:
            monotonic = time.monotonic
        self._steps = None if monotonic is None else ClockStep(clock, monotonic, self.config.clock_step_tolerance)
        self._wall = clock
        self.clock: Callable[[], float] = clock if self._steps is None else self._read_clock
        # Which hosts may run which jobs, by their reported security posture (docs/security.md).
        self.security_policy = security_policy or default_policy()
        self.jobs: dict[str, JobRecord] = {}
        self._index = TaskIndex()
        self.tasks: dict[str, TaskRecord] = self._index.tasks
        self.nodes: dict[str, NodeRecord] = {}
        self._by_idempotency_key: dict[str, str] = {}
        self._deliveries = Deliveries(self.config.redeliver_after)
        self.stats = StatsRelay(self._deliveries.wake)  # `titusctl task stats` (scheduler/taskstats.py)
        self.execs = ExecRelay(self._deliveries.wake, clock)  # owners' exec sessions (docs/exec.md)
        self._schedule_wanted = asyncio.Event()
        self.capacity = Groups(self.config.capacity_groups)  # admission limits, tiers, fair share
        # Per host, per capacity group, what its tasks hold; kept current from the index's dirty hosts.
        self.groupuse = GroupUseIndex(self._index, self.jobs, self.capacity)
        self.placing = PlacementLoop(self, placer)
        self.protocol = NodeProtocol(self)  # agents' heartbeats, syncs and reports (nodeproto.py)
        self.control = ControlLoop(self)  # host checks, reconciliation, the loop (control.py)
        self.facts = HostFactsTable()  # cached images, free IPs, warm ENIs (scheduler/hostfacts.py)
        self._liveness = liveness.Liveness(self.config, clock())
        self.retention = Retention(self.config.finished_job_retention)
        # Every kill or declared-lost the control plane decides on its own asks it (docs/reconcile.md).
        self.reconciler = Reconciler(self.config, clock(), audit or AuditLog(), metrics.registry)
        self.quality = QualityTracker(self.config)  # hosts whose launches crash more than peers'
        self.remediation_frozen = False  # the last remediation plan's fleet-wide freeze
        self.retirer = Retirer(self, self.config.retire_provider, lambda: make_ec2(
            self.config.retire_aws_region, self.config.retire_aws_endpoint_url))
        self.draining = Drainer(self)  # `titusctl node drain`: moves tasks off under budgets (drain.py)
        self.preempting = Preemptor(self)  # critical groups' reservations: hold-back, preemption
        snap = store.load()
        integrity.check(snap, getattr(store, "path", "the store"))  # refuses a self-contradicting store
        self.reconciler.orphans_trusted = bool(snap.jobs or snap.nodes)
        if not snap.jobs and not snap.nodes:
            log.warning("starting on an EMPTY store: if this cell ran work before, this is the wrong store; "
                        "reconciliation kills nothing for %.0fs and freezes on any mass mismatch",
                        self.config.reconcile_grace)
        for j in snap.jobs:
            self.jobs[j.id] = j
            if j.spec.idempotency_key:
                self._by_idempotency_key[j.spec.idempotency_key] = j.id
        for t in snap.tasks:
            self._index.add(t)
        now = clock()
        for n in snap.nodes:
            # A restarted scheduler has heard from nobody yet: give every host a fresh grace period
            # instead of declaring the fleet lost (Nomad's failover heartbeat TTL).
            n.last_heartbeat = max(n.last_heartbeat, now)
            self.nodes[n.id] = n
        metrics.bind(self)
        log.info("loaded %d jobs, %d tasks, %d nodes", len(self.jobs), len(self.tasks), len(self.nodes))

    def _read_clock(self) -> float:
        assert self._steps is not None
        now, step = self._steps.read()
        if step is not None:  # the wall clock stepped: every age stays what it was (docs/reconcile.md)
            for n in self.nodes.values():
                n.last_heartbeat += step
            self._deliveries.shift(step)
            self.reconciler.clock_stepped(step, now, self.tasks.values())
        return now

    # ---- jobs -------------------------------------------------------------------------------

    def submit(self, spec: JobSpec, image: Lookup | None = None) -> tuple[JobRecord, bool]:
        """Create a job and its tasks. Returns (job, created); a repeated idempotency key with the
        same spec returns the existing job, with a different spec it is a Conflict. `image`: what the
        registry said the tag points at (the API asks it off the event loop before calling this)."""
        try:
            drain.parse_budget(spec.attributes)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        key = spec.idempotency_key
        if key and key in self._by_idempotency_key:
            existing = self.job(self._by_idempotency_key[key])
            if existing.spec != spec:
                raise Conflict(f"idempotencyKey {key!r} was already used by job {existing.id} with a different spec")
            return existing, False
        self.capacity.admit(spec, self.jobs.values())  # an unknown group or one over its limit: refused
        now = self.clock()
        job = JobRecord(id=lifecycle.new_id(), spec=spec, created_at=now)
        provenance.pin_at_submit(job, image, now)
        tasks = [lifecycle.new_task(job, index, now) for index in range(spec.task_count)]
        self.store.commit(jobs=[job], tasks=tasks)
        self.jobs[job.id] = job
        if key:
            self._by_idempotency_key[key] = job.id
        for t in tasks:
            self._index.add(t)
        self.metrics.jobs_submitted.labels(kind=spec.kind).inc()
        self.placing.auto.arrived(len(tasks), self.placing.tick())  # the auto switch's arrival rate
        log.info("job submitted: %s %s x%d", spec.kind, spec.app_name, spec.task_count, extra={"job_id": job.id})
        self._schedule_wanted.set()
        return job, True

    def job(self, job_id: str) -> JobRecord:
        # Not in memory: perhaps a finished job past its retention (read from the store).
        job = self.jobs.get(job_id) or self.retention.job(self, job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job

    def task(self, task_id: str) -> TaskRecord:
        task = self.tasks.get(task_id) or self.retention.task(self, task_id)
        if task is None:
            raise NotFound(f"no task {task_id!r}")
        return task

    def job_tasks(self, job_id: str) -> list[TaskRecord]:
        if job_id not in self.jobs:
            return self.retention.job_tasks(self, job_id)
        return self._index.job_tasks(job_id)

    def node_tasks(self, node_id: str) -> list[TaskRecord]:
        """Tasks holding (or about to hold) resources on a host."""
        return self._index.node_tasks(node_id)

    def kill_job(self, job_id: str) -> JobRecord:
        job = self.job(job_id)
        if job.state is not JobState.ACCEPTED:
            return job
        job.state = JobState.KILL_INITIATED
        changed = [self._request_kill(t) for t in self.job_tasks(job_id) if not t.state.terminal]
        self._maybe_finish_job(job)
        self.store.commit(jobs=[job], tasks=[t for t in changed if t is not None])
        log.info("job kill requested", extra={"job_id": job.id})
        return job

    def kill_task(self, task_id: str) -> TaskRecord:
        task = self.task(task_id)
        if task.state.terminal:
            return task
        job = self.jobs[task.job_id]
        changed = self._request_kill(task)
        new_tasks: list[TaskRecord] = self._after_finish(task, job) if task.state.terminal else []
        self.store.commit(jobs=[job], tasks=[t for t in (changed, *new_tasks) if t is not None])
        self._remember(new_tasks)
        return task

    def _request_kill(self, task: TaskRecord) -> TaskRecord | None:
        """Mark a task for killing. One that no agent has seen yet finishes at once."""
        if task.kill_requested or task.state.terminal:
            return None
        task.kill_requested = True
        self._index.touched(task)  # its capacity is on its way back (scheduler/groupuse.py)
        now = self.clock()
        never_delivered = task.state is TaskState.ACCEPTED or (
            task.state is TaskState.LAUNCHED and not self._deliveries.was_sent(task.id)
        )
        if never_delivered:
            self._finish(task, FinishReason.KILLED, "killed before it reached a host", now)
        else:
            task.enter(TaskState.KILL_INITIATED, now)
            self._deliveries.forget(task.id)
            if task.node_id:
                self._deliveries.wake(task.node_id)
        return task

    # ---- agents -----------------------------------------------------------------------------

    def heartbeat(self, report: NodeReport) -> NodeRecord:
        return self.protocol.heartbeat(report)

    def set_cordon(self, node_id: str, cordoned: bool, reason: str = "", commit: bool = True) -> NodeRecord:
        """Keep new work off a host, or let it take work again (an operator's `node cordon|drain`).
        Lifting a cordon stops the host's drain (its replacements not yet taken over are cancelled)."""
        node = self.nodes.get(node_id)
        if node is None:
            raise NotFound(f"no node {node_id!r}")
        now = self.clock()
        tasks, jobs = ([], []) if cordoned else self.draining.stop(node, now)
        liveness.set_cordon(node, cordoned, reason, now)
        if commit:
            self.store.commit(nodes=[node], tasks=tasks, jobs=jobs)
        self._unpark()
        return node

    def work_for(self, node_id: str) -> SyncResponse:
        return self.protocol.work_for(node_id)

    async def sync(self, report: NodeReport, wait_seconds: float) -> SyncResponse:
        return await self.protocol.sync(report, wait_seconds)

    def apply_updates(self, node_id: str, updates: Iterable[TaskUpdate]) -> list[str]:
        return self.protocol.apply_updates(node_id, updates)

    def note_tag_digests(self, lookups: dict[str, Lookup], now: float) -> None:
        """What the periodic tag check found (scheduler/provenance.py): record it on the jobs using
        each reference; a lookup without an answer changes nothing."""
        changed = []
        for job in self.jobs.values():
            lookup = lookups.get(job.spec.container.image)
            if lookup is None:
                continue
            self.metrics.registry_lookups.labels(outcome="ok" if lookup.digest else "error").inc()
            if lookup.digest is None:
                continue
            if lookup.digest != job.tag_digest and job.image_digest not in (None, lookup.digest):
                log.warning("image tag %s moved to %s; the job stays pinned to %s", job.spec.container.image,
                            lookup.digest, job.image_digest, extra={"job_id": job.id})
            job.tag_digest, job.tag_checked_at = lookup.digest, now
            changed.append(job)
        if changed:
            self.store.commit(jobs=changed)

    def _remember(self, new_tasks: list[TaskRecord]) -> None:
        for t in new_tasks:
            self._index.add(t)
        if new_tasks:
            self._schedule_wanted.set()

    # ---- task endings -------------------------------------------------------------------------

    def _end(
        self, task: TaskRecord, reason: FinishReason, message: str, at: float, jobs: dict[str, JobRecord],
        exit_code: int | None = None,
    ) -> list[TaskRecord]:
        """Finish a task and decide its replacement; adds its job to `jobs` (to commit) and returns
        the new tasks (not yet remembered)."""
        self._finish(task, reason, message, at, exit_code)
        job = jobs[task.job_id] = self.jobs[task.job_id]
        return self._after_finish(task, job)

    def _finish(
        self, task: TaskRecord, reason: FinishReason, message: str, at: float, exit_code: int | None = None
    ) -> None:
        if task.node_id and (reason is FinishReason.CRASHED or TaskState.STARTED.value in task.timestamps):
            self.quality.record(task.node_id, reason is FinishReason.CRASHED, at)
        lifecycle.finish(task, reason, message, at, exit_code)
        self.placing.forget(task.id)
        if task.node_id:
            self._unpark()  # it held resources that are free now
        self._deliveries.forget(task.id)
        self._index.finished(task)
        self.metrics.tasks_finished.labels(reason=reason.value).inc()
        log.info(
            "task finished: %s (%s)", reason.value, message, extra={"task_id": task.id, "job_id": task.job_id}
        )

    def _after_finish(self, task: TaskRecord, job: JobRecord) -> list[TaskRecord]:
        """Decide what replaces a finished task; returns the new tasks (not yet remembered)."""
        now = self.clock()
        reason = task.reason
        assert reason is not None
        if job.state is not JobState.ACCEPTED or task.replaced_by is not None:
            # (replaced_by already set: a drain started its replacement before it ended)
            self._maybe_finish_job(job)
            return []
        if task.evicted:  # a drain evicted it: replaced elsewhere at once, its counters unchanged
            return [lifecycle.replacement(job, task, retries.Replace(0.0, lifecycle.counters(task)), now)]
        batch_retry = job.spec.batch.retry_policy if job.spec.batch is not None else None
        decision = retries.decide(reason, lifecycle.ran_seconds(task), lifecycle.counters(task), batch_retry, self.config)
        if isinstance(decision, retries.Settle):
            job.index_results[str(task.index)] = decision.result
            self._maybe_finish_job(job)
            return []
        if decision.crash_looping:
            log.warning(
                "task index %d is crash-looping (%d platform failures in a row): %s",
                task.index, decision.counters.consecutive_crashes, task.message,
                extra={"job_id": job.id, "task_id": task.id},
            )
        return [lifecycle.replacement(job, task, decision, now)]

    def _maybe_finish_job(self, job: JobRecord) -> None:
        if lifecycle.job_complete(job, self.job_tasks(job.id)):
            job.state = JobState.FINISHED
            job.finished_at = self.clock()
            log.info("job finished", extra={"job_id": job.id})

    def _live(self, job_id: str) -> int:
        """The job's tasks not Finished (counted by the index: the kill path asks once per kill)."""
        return self._index.live(job_id)

    def crash_looping(self, job: JobRecord) -> bool:
        if job.id not in self.jobs:
            return self.retention.summary(self, job.id).crash_looping
        return any(
            retries.is_crash_looping(t.consecutive_crashes, self.config)
            for t in self.job_tasks(job.id)
            if not t.state.terminal
        )

    # ---- placement (scheduler/placing.py) -----------------------------------------------------

    @property
    def placer(self) -> Placer | Engine:
        return self.placing.placer

    @property
    def pending(self) -> PendingBook:
        return self.placing.pending

    @property
    def placement_passes(self) -> int:
        return self.placing.passes

    def eligible_nodes(self) -> list[NodeView]:
        return self.placing.eligible_nodes()

    def schedule_pass(self) -> int:
        """Place every Accepted task that is due. Returns how many were placed."""
        return self.placing.run_pass()

    def pending_tasks(self) -> list[TaskRecord]:
        return [self.tasks[i] for i in self._index.pending]

    def pending_reason(self, task: TaskRecord) -> str | None:
        return self.placing.pending_reason(task)

    def _unpark(self) -> None:
        self.placing.unpark()

    @property
    def scheduling_mode(self) -> Mode | None:
        return self.placing.mode

    def set_scheduling_mode(self, mode: str, actor: str) -> Mode:
        return self.placing.set_mode(mode, actor)

    def next_due(self) -> float | None:
        return self.placing.next_due()

    # ---- host liveness, reconciliation and the control loop (scheduler/control.py) -----------

    def check_nodes(self) -> None:
        self.control.check_nodes()

    def reconcile(self) -> int:
        """One reconciliation pass; applies what the kill path admits. Returns how many were applied."""
        return self.control.reconcile()

    async def run(self, stop: asyncio.Event) -> None:
        await self.control.run(stop)
