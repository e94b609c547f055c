"""The scheduler's state machine: jobs → tasks → placement → agents, and what happens when tasks end.

All mutation goes through this class, on the event loop thread; each public operation commits its
records to the store in one transaction before it touches the in-memory copy or answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from security.attributes import parse_security_attributes
from security.posture import reported_posture_problem
from security.profiles import SecurityPolicy, default_policy
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import NodeView, Placer
from scheduler.records import JobRecord, JobState, NodeRecord, NodeStatus, TaskRecord
from scheduler.store import Store
from titus_common.jobspec import JobSpec
from titus_common.protocol import (
    NodeReport,
    SyncResponse,
    TaskAssignment,
    TaskUpdate,
)
from titus_common.states import FinishReason, TaskState, can_transition

log = logging.getLogger("titus.scheduler")


@dataclass
class SchedulerConfig:
    heartbeat_interval: float = 5.0
    # Missed heartbeats for this long → Disconnected: no new work; its tasks still count as running.
    disconnect_after: float = 20.0
    # Disconnected for this long → its tasks are declared lost and replaced.
    lost_after: float = 600.0
    # Brake on declaring tasks lost, so a control-plane network blip cannot fail a fleet at once.
    max_lost_per_minute: int = 100
    # A delivered launch or kill not acknowledged within this time is delivered again.
    redeliver_after: float = 10.0
    system_backoff_base: float = 1.0
    system_backoff_max: float = 30.0
    service_failure_backoff_max: float = 300.0
    # A task that stayed Started this long clears its index's crash/failure streak.
    streak_reset_after: float = 300.0
    crash_loop_threshold: int = 3


class NotFound(LookupError):
    pass


class Conflict(ValueError):
    pass


def new_id() -> str:
    return str(uuid.uuid4())


class Scheduler:
    def __init__(
        self,
        store: Store,
        placer: Placer,
        metrics: SchedulerMetrics,
        config: SchedulerConfig | None = None,
        clock: Callable[[], float] = time.time,
        security_policy: SecurityPolicy | None = None,
    ) -> None:
        self.store = store
        self.placer = placer
        self.metrics = metrics
        self.config = config or SchedulerConfig()
        self.clock = clock
        # Which hosts may run which jobs, by their reported security posture (docs/security.md).
        self.security_policy = security_policy or default_policy()
        self.jobs: dict[str, JobRecord] = {}
        self.tasks: dict[str, TaskRecord] = {}
        # Indexes, so API reads and per-host work do not scan every task ever run.
        self._tasks_by_job: dict[str, list[str]] = {}
        self._active_by_node: dict[str, set[str]] = {}  # tasks holding resources on each host
        self._pending: set[str] = set()  # Accepted tasks waiting for a host
        self.nodes: dict[str, NodeRecord] = {}
        self._by_idempotency_key: dict[str, str] = {}
        self._delivered_at: dict[str, float] = {}  # task id → when its launch/kill was last sent
        self._node_events: dict[str, asyncio.Event] = {}
        self._schedule_wanted = asyncio.Event()
        self._lost_budget = float(self.config.max_lost_per_minute)
        self._lost_budget_at = clock()
        snap = store.load()
        for j in snap.jobs:
            self.jobs[j.id] = j
            if j.spec.idempotency_key:
                self._by_idempotency_key[j.spec.idempotency_key] = j.id
        for t in snap.tasks:
            self._index(t)
        now = clock()
        for n in snap.nodes:
            # A restarted scheduler has heard from nobody yet: give every host a fresh grace period
            # instead of declaring the fleet lost (Nomad's failover heartbeat TTL).
            n.last_heartbeat = max(n.last_heartbeat, now)
            self.nodes[n.id] = n
        metrics.bind(self)
        log.info("loaded %d jobs, %d tasks, %d nodes", len(self.jobs), len(self.tasks), len(self.nodes))

    # ---- jobs -------------------------------------------------------------------------------

    def submit(self, spec: JobSpec) -> tuple[JobRecord, bool]:
        """Create a job and its tasks. Returns (job, created); a repeated idempotency key with the
        same spec returns the existing job, with a different spec it is a Conflict."""
        key = spec.idempotency_key
        if key and key in self._by_idempotency_key:
            existing = self.jobs[self._by_idempotency_key[key]]
            if existing.spec != spec:
                raise Conflict(f"idempotencyKey {key!r} was already used by job {existing.id} with a different spec")
            return existing, False
        now = self.clock()
        job = JobRecord(id=new_id(), spec=spec, created_at=now)
        tasks = [self._new_task(job, index, now) for index in range(spec.task_count)]
        self.store.commit(jobs=[job], tasks=tasks)
        self.jobs[job.id] = job
        if key:
            self._by_idempotency_key[key] = job.id
        for t in tasks:
            self._index(t)
        self.metrics.jobs_submitted.labels(kind=spec.kind).inc()
        log.info("job submitted: %s %s x%d", spec.kind, spec.app_name, spec.task_count, extra={"job_id": job.id})
        self._schedule_wanted.set()
        return job, True

    def _new_task(self, job: JobRecord, index: int, now: float) -> TaskRecord:
        job.tasks_created += 1
        task = TaskRecord(id=new_id(), job_id=job.id, index=index)
        task.enter(TaskState.ACCEPTED, now)
        return task

    def job(self, job_id: str) -> JobRecord:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise NotFound(f"no job {job_id!r}") from None

    def task(self, task_id: str) -> TaskRecord:
        try:
            return self.tasks[task_id]
        except KeyError:
            raise NotFound(f"no task {task_id!r}") from None

    def job_tasks(self, job_id: str) -> list[TaskRecord]:
        return [self.tasks[i] for i in self._tasks_by_job.get(job_id, [])]

    def node_tasks(self, node_id: str) -> list[TaskRecord]:
        """Tasks holding (or about to hold) resources on a host."""
        return [self.tasks[i] for i in self._active_by_node.get(node_id, ())]

    def _index(self, task: TaskRecord) -> None:
        self.tasks[task.id] = task
        self._tasks_by_job.setdefault(task.job_id, []).append(task.id)
        if task.node_id and task.state.active:
            self._active_by_node.setdefault(task.node_id, set()).add(task.id)
        if task.state is TaskState.ACCEPTED:
            self._pending.add(task.id)

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
        now = self.clock()
        never_delivered = task.state is TaskState.ACCEPTED or (
            task.state is TaskState.LAUNCHED and task.id not in self._delivered_at
        )
        if never_delivered:
            self._finish(task, FinishReason.KILLED, "killed before it reached a host", now)
        else:
            task.enter(TaskState.KILL_INITIATED, now)
            self._delivered_at.pop(task.id, None)
            if task.node_id:
                self._wake_node(task.node_id)
        return task

    # ---- agents -----------------------------------------------------------------------------

    def heartbeat(self, report: NodeReport) -> NodeRecord:
        now = self.clock()
        cap = report.capacity
        node = self.nodes.get(report.id)
        if node is None:
            node = NodeRecord.model_validate(
                {
                    "id": report.id,
                    "capacity": cap.model_dump(by_alias=True),
                    "registeredAt": now,
                    "lastHeartbeat": now,
                }
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
        running = set(report.running)
        # Tasks we think are running there that the agent does not hold: recorded for an operator,
        # never acted on here — a mismatch is not proof that the tasks are gone.
        node.missing_tasks = sorted(
            t.id
            for t in self.node_tasks(node.id)
            if t.state in (TaskState.START_INITIATED, TaskState.STARTED)
            and t.id not in running
        )
        self.nodes[node.id] = node
        # A kill already sent for a task the agent does not hold: nothing is left to kill.
        gone = [
            t
            for t in self.node_tasks(node.id)
            if t.state is TaskState.KILL_INITIATED
            and t.id in self._delivered_at
            and t.id not in running
        ]
        new_tasks: list[TaskRecord] = []
        for t in gone:
            self._finish(t, FinishReason.KILLED, "killed (the host no longer held it)", now)
            new_tasks.extend(self._after_finish(t, self.jobs[t.job_id]))
        self.store.commit(nodes=[node], tasks=[*gone, *new_tasks], jobs={self.jobs[t.job_id].id: self.jobs[t.job_id] for t in gone}.values())
        self._remember(new_tasks)
        self._schedule_wanted.set()
        return node

    def work_for(self, node_id: str) -> SyncResponse:
        """Launches and kills due for a node, not sent in the last `redeliver_after` seconds."""
        now = self.clock()
        resp = SyncResponse(heartbeat_interval_seconds=self.config.heartbeat_interval)
        for t in self.node_tasks(node_id):
            if now - self._delivered_at.get(t.id, -1e18) < self.config.redeliver_after:
                continue
            if t.state is TaskState.LAUNCHED and not t.kill_requested:
                job = self.jobs[t.job_id]
                resp.launch.append(
                    TaskAssignment(
                        task_id=t.id,
                        job_id=t.job_id,
                        index=t.index,
                        container=job.spec.container,
                        runtime_limit_seconds=job.spec.batch.runtime_limit_seconds if job.spec.batch else None,
                        accepted_at=t.timestamps[TaskState.ACCEPTED.value],
                        owner=job.spec.owner,
                        app_name=job.spec.app_name,
                    )
                )
                self._delivered_at[t.id] = now
            elif t.state is TaskState.KILL_INITIATED:
                resp.kill.append(t.id)
                self._delivered_at[t.id] = now
        return resp

    async def sync(self, report: NodeReport, wait_seconds: float) -> SyncResponse:
        """Heartbeat, then wait (long-poll) until there is work for the node or the wait is over."""
        self.heartbeat(report)
        event = self._node_events.setdefault(report.id, asyncio.Event())
        deadline = self.clock() + wait_seconds
        while True:
            event.clear()
            resp = self.work_for(report.id)
            remaining = deadline - self.clock()
            if resp.launch or resp.kill or remaining <= 0:
                return resp
            try:
                await asyncio.wait_for(event.wait(), timeout=remaining)
            except TimeoutError:
                pass

    def _wake_node(self, node_id: str) -> None:
        event = self._node_events.get(node_id)
        if event is not None:
            event.set()

    def apply_updates(self, node_id: str, updates: Iterable[TaskUpdate]) -> list[str]:
        """Apply an agent's task reports. Returns the ids durably taken (applied or stale)."""
        touched: dict[str, TaskRecord] = {}
        jobs: dict[str, JobRecord] = {}
        accepted: list[str] = []
        new_tasks: list[TaskRecord] = []
        for u in updates:
            task = self.tasks.get(u.task_id)
            if task is None:
                log.warning("update for unknown task %s from %s ignored", u.task_id, node_id)
                accepted.append(u.task_id)
                continue
            if task.node_id != node_id:
                log.warning(
                    "update for task %s from %s, but it is placed on %s: ignored",
                    u.task_id, node_id, task.node_id, extra={"task_id": task.id, "job_id": task.job_id},
                )
                accepted.append(u.task_id)
                continue
            accepted.append(u.task_id)
            if task.state.terminal:
                continue  # a repeated report, or the task was already declared lost
            newly_started = TaskState.STARTED.value not in task.timestamps and TaskState.STARTED in u.timestamps
            for state in sorted(u.timestamps, key=lambda s: s.rank):
                if state is TaskState.FINISHED:
                    continue
                # Keep every timestamp the agent saw (a Started that raced a kill still happened),
                # but the state itself only moves forward.
                task.timestamps.setdefault(state.value, u.timestamps[state])
                if can_transition(task.state, state):
                    task.state = state
                    self._delivered_at.pop(task.id, None)
            if u.container_id:
                task.container_id = u.container_id
            if newly_started:
                self.metrics.observe_started(task)
            if u.state is TaskState.FINISHED:
                self._finish(
                    task,
                    u.reason or FinishReason.CRASHED,
                    u.message or "agent reported no reason",
                    u.timestamps.get(TaskState.FINISHED, self.clock()),
                    exit_code=u.exit_code,
                )
                job = self.jobs[task.job_id]
                new_tasks.extend(self._after_finish(task, job))
                jobs[job.id] = job
            touched[task.id] = task
        if touched:
            self.store.commit(jobs=jobs.values(), tasks=[*touched.values(), *new_tasks])
            self._remember(new_tasks)
        return accepted

    def _remember(self, new_tasks: list[TaskRecord]) -> None:
        for t in new_tasks:
            self._index(t)
        if new_tasks:
            self._schedule_wanted.set()

    # ---- task endings -------------------------------------------------------------------------

    def _finish(
        self, task: TaskRecord, reason: FinishReason, message: str, at: float, exit_code: int | None = None
    ) -> None:
        task.enter(TaskState.FINISHED, at)
        task.reason = reason
        task.message = message
        task.exit_code = exit_code
        self._delivered_at.pop(task.id, None)
        self._pending.discard(task.id)
        if task.node_id:
            self._active_by_node.get(task.node_id, set()).discard(task.id)
        self.metrics.tasks_finished.labels(reason=reason.value).inc()
        log.info(
            "task finished: %s (%s)", reason.value, message, extra={"task_id": task.id, "job_id": task.job_id}
        )

    def _after_finish(self, task: TaskRecord, job: JobRecord) -> list[TaskRecord]:
        """Decide what replaces a finished task; returns the new tasks (not yet remembered)."""
        now = self.clock()
        reason = task.reason
        assert reason is not None
        if job.state is not JobState.ACCEPTED:
            self._maybe_finish_job(job)
            return []
        started = task.timestamps.get(TaskState.STARTED.value)
        ran_long = started is not None and (
            task.timestamps[TaskState.FINISHED.value] - started >= self.config.streak_reset_after
        )
        crashes = 0 if ran_long else task.consecutive_crashes
        failures = 0 if ran_long else task.consecutive_failures
        replacement: TaskRecord | None = None
        delay = 0.0
        if reason.system_error:
            # crashed ≠ failed: platform faults are retried with back-off and cost the user nothing.
            replacement = self._replacement(task, job, now)
            replacement.system_retries = task.system_retries + 1
            replacement.consecutive_crashes = crashes + 1
            replacement.consecutive_failures = failures
            delay = min(self.config.system_backoff_max, self.config.system_backoff_base * 2**crashes)
            if replacement.consecutive_crashes >= self.config.crash_loop_threshold:
                log.warning(
                    "task index %d is crash-looping (%d platform failures in a row): %s",
                    task.index, replacement.consecutive_crashes, task.message,
                    extra={"job_id": job.id, "task_id": task.id},
                )
        elif job.spec.batch is not None:
            policy = job.spec.batch.retry_policy
            if reason is FinishReason.FAILED and task.retries_used < policy.retries:
                replacement = self._replacement(task, job, now)
                replacement.retries_used = task.retries_used + 1
                replacement.consecutive_failures = failures + 1
                delay = policy.delay_seconds
            else:
                job.index_results[str(task.index)] = reason
        else:
            # Service: keep the desired count. A user failure restarts with back-off.
            replacement = self._replacement(task, job, now)
            if reason is FinishReason.FAILED:
                replacement.consecutive_failures = failures + 1
                delay = min(self.config.service_failure_backoff_max, 2.0**failures - 1)
            replacement.consecutive_crashes = crashes
        if replacement is None:
            self._maybe_finish_job(job)
            return []
        replacement.retries_used = max(replacement.retries_used, task.retries_used)
        replacement.not_before = now + delay
        task.replaced_by = replacement.id
        return [replacement]

    def _replacement(self, task: TaskRecord, job: JobRecord, now: float) -> TaskRecord:
        new = self._new_task(job, task.index, now)
        new.system_retries = task.system_retries
        return new

    def _maybe_finish_job(self, job: JobRecord) -> None:
        if job.state is JobState.FINISHED:
            return
        if any(not t.state.terminal for t in self.job_tasks(job.id)):
            return
        if job.state is JobState.KILL_INITIATED or (
            job.spec.batch is not None and len(job.index_results) >= job.spec.batch.size
        ):
            job.state = JobState.FINISHED
            job.finished_at = self.clock()
            log.info("job finished", extra={"job_id": job.id})

    def crash_looping(self, job: JobRecord) -> bool:
        return any(
            t.consecutive_crashes >= self.config.crash_loop_threshold
            for t in self.job_tasks(job.id)
            if not t.state.terminal
        )

    # ---- placement ----------------------------------------------------------------------------

    def eligible_nodes(self) -> list[NodeView]:
        views = {
            n.id: NodeView(n.id, n.capacity.cpus, n.capacity.memory_mib, n.capacity.disk_mib, n.labels, n.posture)
            for n in sorted(self.nodes.values(), key=lambda n: n.id)
            if n.status is NodeStatus.READY
        }
        for view in views.values():
            for t in self.node_tasks(view.id):
                view.take(self.jobs[t.job_id].spec.container.resources)
        return list(views.values())

    def _posture_problem(self, job: JobRecord, node: NodeView) -> str | None:
        request, problems = parse_security_attributes(job.spec.container.security_attributes)
        if problems:  # refused at submit; a job stored before a policy change stays put, visibly
            return "; ".join(m for _, m in problems)
        profile_needs_apparmor = (
            request.variant in self.security_policy.catalog.names
            and self.security_policy.catalog.get(request.variant).header.requires_apparmor
        )
        return reported_posture_problem(
            node.posture,
            request,
            variant_requires_apparmor=profile_needs_apparmor,
            apparmor_unavailable=self.security_policy.apparmor_unavailable,
        )

    def schedule_pass(self) -> int:
        """Place every Accepted task that is due. Returns how many were placed."""
        now = self.clock()
        pending = sorted(
            (t for t in map(self.tasks.__getitem__, self._pending) if t.not_before <= now),
            key=lambda t: t.timestamps[TaskState.ACCEPTED.value],
        )
        if not pending:
            return 0
        nodes = self.eligible_nodes()
        placed: list[TaskRecord] = []
        waiting: list[TaskRecord] = []
        for t in pending:
            job = self.jobs[t.job_id]
            demand = job.spec.container.resources
            able = [n for n in nodes if self._posture_problem(job, n) is None]
            node = self.placer.place(demand, able)
            if node is None:
                # Say why, when it is the posture: capacity comes and goes, a posture rarely does.
                why = "" if able or not nodes else f"waiting: {self._posture_problem(job, nodes[0])} (every Ready host)"
                if why != t.message:
                    t.message = why
                    waiting.append(t)
                continue
            t.message = ""
            node.take(demand)
            t.node_id = node.id
            t.enter(TaskState.LAUNCHED, now)
            self._active_by_node.setdefault(node.id, set()).add(t.id)
            self._pending.discard(t.id)
            placed.append(t)
        if placed or waiting:
            self.store.commit(tasks=[*placed, *waiting])
            for node_id in {t.node_id for t in placed if t.node_id}:
                self._wake_node(node_id)
        return len(placed)

    def next_due(self) -> float | None:
        """When the earliest delayed Accepted task becomes placeable."""
        delays = [self.tasks[i].not_before for i in self._pending]
        return min(delays) if delays else None

    # ---- host liveness ------------------------------------------------------------------------

    def check_nodes(self) -> None:
        """Disconnected after missed heartbeats; Lost (tasks replaced) only after a long grace and
        under a rate limit — a network partition must not turn into a mass kill."""
        now = self.clock()
        self._lost_budget = min(
            float(self.config.max_lost_per_minute),
            self._lost_budget + (now - self._lost_budget_at) * self.config.max_lost_per_minute / 60.0,
        )
        self._lost_budget_at = now
        changed_nodes: list[NodeRecord] = []
        changed_tasks: list[TaskRecord] = []
        changed_jobs: dict[str, JobRecord] = {}
        for node in self.nodes.values():
            silent = now - node.last_heartbeat
            if node.status is NodeStatus.READY and silent > self.config.disconnect_after:
                node.status = NodeStatus.DISCONNECTED
                changed_nodes.append(node)
                log.warning("node disconnected: %s (silent %.0fs)", node.id, silent, extra={"node_id": node.id})
            if node.status is not NodeStatus.READY and silent > self.config.lost_after:
                for t in self.node_tasks(node.id):
                    if self._lost_budget < 1:
                        log.error("lost-task rate limit reached: holding back; node %s", node.id)
                        break
                    self._lost_budget -= 1
                    self._finish(t, FinishReason.LOST, f"host {node.id} stopped answering", now)
                    job = self.jobs[t.job_id]
                    changed_tasks.append(t)
                    changed_tasks.extend(self._after_finish(t, job))
                    changed_jobs[job.id] = job
                else:
                    if node.status is not NodeStatus.LOST:
                        node.status = NodeStatus.LOST
                        changed_nodes.append(node)
        if changed_nodes or changed_tasks:
            self.store.commit(nodes=changed_nodes, tasks=changed_tasks, jobs=changed_jobs.values())
            self._remember([t for t in changed_tasks if t.id not in self.tasks])

    async def run(self, stop: asyncio.Event) -> None:
        """The control loop: place when something changed or a delayed task falls due; check hosts."""
        next_node_check = 0.0
        while not stop.is_set():
            self._schedule_wanted.clear()
            now = self.clock()
            if now >= next_node_check:
                self.check_nodes()
                next_node_check = now + 1.0
            self.schedule_pass()
            due = self.next_due()
            timeout = 1.0 if due is None else max(0.01, min(1.0, due - self.clock()))
            try:
                await asyncio.wait_for(self._schedule_wanted.wait(), timeout=timeout)
            except TimeoutError:
                pass
