"""The agent: the composition of the host's resources (agent/host/), one TaskRunner per task, and
the loops that talk to the scheduler and keep the agent's view in step with the engine.

Start-up order: task checkpoints (the truth of what this host ran) → the engine's containers →
each host resource's `start` (CPUs, security, network, metadata; any may refuse the start with a
TitusError kind) → one runner per checkpoint → the event watcher and the loops (sync, report,
reconcile, gc). `stop` stops the agent, never the tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psutil

from agent import __version__, taskstats
from agent.checkpoint import CheckpointStore, TaskCheckpoint
from agent.config import AgentConfig
from agent.docker_api import LABEL_TASK, Docker, DockerError, DockerUnavailable
from agent.docker_exec import EngineExec
from agent.exec_session import ExecSessions
from agent.host.base import HostResource, LiveTasks
from agent.host.orphans import OrphanResource
from agent.host.cpuset_apply import CpuResource
from agent.host.health import HealthResource, default_checks, journal_log_signals, kernel_log_signals
from agent.host.health_sources import HostSources, host_checks
from agent.host.imagegc import ImageGcResource
from agent.host.metadata import MetadataResource
from agent.host.network import NetworkResource, lost_message
from agent.host.security import HostSecurity, SecurityResource, load_security_policy
from agent.host.workload import IdentityResource, IdentityUnavailable, Issued, TaskIdentities
from agent.imagecache import ImageCacheReport
from agent.launch import launch_pipeline
from agent.names import container_name
from agent.metrics import AgentMetrics
from agent.pipeline import Pipeline
from agent.playbooks import Playbooks
from agent.remediation import Remediator
from agent import orphan_kills
from agent.runner import TaskRunner
from agent.scheduler_client import SchedulerClient, SchedulerUnavailable
from agent.watcher import ContainerWatcher
from security.profiles import default_policy
from titus_common.errors import ConfigError, TitusError
from titus_common.memory import give_back
from titus_common.protocol import MAX_TASKS_PER_NODE, CapacityReport, NodeReport, TaskAssignment, WarmNetwork
from titus_common.retry import Backoff, retry_forever
from titus_common.states import TaskState

log = logging.getLogger("titus.agent")

RECONCILE_EVERY = 30.0
ORPHAN_KILL_GRACE = 10.0  # seconds between SIGTERM and SIGKILL for an orphan the scheduler ordered killed
GIVE_BACK_AFTER = 5.0  # seconds after a task is forgotten before freed memory is returned to the host

T = TypeVar("T")


def host_capacity(config: AgentConfig) -> CapacityReport:
    cpus = config.cpus or float(psutil.cpu_count(logical=True) or 1)
    memory = config.memory_mib or psutil.virtual_memory().total // (1024 * 1024)
    disk_root = config.docker_root if config.docker_root.exists() else config.state_dir
    disk = config.disk_mib or shutil.disk_usage(disk_root).total // (1024 * 1024)
    return CapacityReport(cpus=cpus, memory_mib=max(1, memory), disk_mib=max(1, disk))


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        docker: Docker,
        client: SchedulerClient,
        metrics: AgentMetrics,
        pipeline: Pipeline | None = None,
    ) -> None:
        self.config = config
        self.docker = docker
        self.client = client
        self.metrics = metrics
        self.store = CheckpointStore(config.state_dir)
        # A resource that cannot even be built (unreadable topology, bad policy file, bad token key)
        # refuses the start in start(), where start-up errors are reported, not here.
        self._build_errors: list[TitusError] = []
        try:
            policy = load_security_policy(config.security_policy)
        except ConfigError as e:
            self._build_errors.append(ConfigError(f"security policy: {e}"))
            policy = default_policy()
        self.security = HostSecurity(policy)
        self.cpus = self._build(lambda: CpuResource(config, docker, metrics, self.store)) if config.cpuset_enabled else None
        self.network = (
            NetworkResource(config, docker, metrics, self._on_network_lost) if config.network_enabled else None
        )
        # Task identities need the node's certificate: the scheduler issues them over it (docs/identity.md).
        self.identity = (
            IdentityResource(TaskIdentities(config.identity_dir or config.state_dir / "identity", self._issue_identity),
                             self.tasks, metrics.registry)
            if config.identity_enabled and getattr(client, "credentials", None) is not None else None
        )
        self.metadata = (
            self._build(lambda: MetadataResource(
                config, metrics, self.identity.identities.jwt if self.identity is not None else None))
            if self.network is not None and config.imds_enabled else None
        )
        self.unknown_containers: list[str] = []
        sources = HostSources(metrics.network_leaks_removed, lambda: len(self.unknown_containers),
                              lambda: client.skew, self.network, self.metadata, client.credentials)
        self.health = (
            self._build(lambda: HealthResource(config, docker, metrics,
                                               [*default_checks(config, docker, self._event_stream_connected),
                                                *host_checks(config, sources)],
                                               kernel_log_signals(config, metrics),
                                               journal_log_signals(config, metrics)))
            if config.health_enabled else None
        )
        self.image_gc = ImageGcResource(config, docker, metrics) if config.image_gc_enabled else None
        self.remediator = Remediator(
            Playbooks(self).actions(),
            after=self.health.monitor.recheck if self.health is not None else None,
        )
        self.resources: list[HostResource] = [
            r for r in (self.cpus, SecurityResource(self.security, docker, config.require_userns),
                        self.network, self.metadata, self.identity, self.health, self.image_gc,
                        OrphanResource(docker, metrics, self.store, config.cgroup_root)) if r is not None
        ]
        self.pipeline = pipeline or launch_pipeline(
            metrics, self.security, always_pull=config.always_pull,
            cpus=self.cpus.applier if self.cpus is not None else None,
            network=self.network.tasks if self.network is not None else None,
            metadata=self.metadata.host if self.metadata is not None else None,
            identity=self.identity.identities if self.identity is not None else None,
        )
        self.capacity = host_capacity(config)
        self.runners: dict[str, TaskRunner] = {}
        self._stats_replies: set[asyncio.Task[None]] = set()
        # Owners' exec sessions into running tasks (docs/exec.md).
        self.execs = ExecSessions(EngineExec(docker.base_url, docker.api_version), client, self._running_container)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._give_back: asyncio.TimerHandle | None = None
        self._orphan_kills: set[asyncio.Task[None]] = set()
        self.last_sync_ok: float | None = None
        self._report_wanted = asyncio.Event()
        self.image_cache = ImageCacheReport()  # cached images for placement affinity (agent/imagecache.py)
        self._reconcile_wanted = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._watcher: ContainerWatcher | None = None
        self._started: list[HostResource] = []
        metrics.bind(lambda: [r.record.state for r in self.runners.values()], lambda: len(self.unknown_containers))
        if self.network is not None:
            metrics.bind_network(self.network.snapshot)

    async def _issue_identity(self, task_id: str, csr: str) -> Issued:
        try:
            certificate, bundle = await self.client.task_identity(task_id, csr)
        except SchedulerUnavailable as e:
            raise IdentityUnavailable(str(e)) from None
        return Issued(certificate, bundle)

    def _event_stream_connected(self) -> bool | None:
        return self._watcher.connected if self._watcher is not None else None

    def _build(self, make: Callable[[], T]) -> T | None:
        try:
            return make()
        except TitusError as e:
            self._build_errors.append(e)
            return None

    # ---- start and stop ----------------------------------------------------------------------

    async def start(self) -> None:
        """Recover, then take work. Raises a TitusError kind when the agent must not start; what
        was started by then is stopped again."""
        records = self.store.load_all()  # CheckpointCorrupt stops the agent: never guess
        if self._build_errors:
            raise self._build_errors[0]
        containers = await retry_forever(
            lambda: self.docker.list_labelled(self.config.node_id), (DockerUnavailable, DockerError),
            Backoff(0.5, 10.0),
            lambda e, delay: log.warning("Docker engine not answering at start (%s); retrying in %.1fs", e, delay),
        )
        try:
            for resource in self.resources:  # before any runner runs
                self._started.append(resource)
                await resource.start(records)
        except BaseException:
            await self._stop_resources()
            raise
        if self.cpus is not None and not self.config.cpus:  # the scheduler counts CPUs: offer only those tasks can get
            self.capacity = self.capacity.model_copy(update={"cpus": float(len(self.cpus.host.topology.usable))})
        present = {c["Labels"].get(LABEL_TASK) for c in containers}
        for record in records:
            self._add_runner(record)
            if record.state is TaskState.STARTED and record.task_id in present:
                self.metrics.adopted.inc()
                log.info("re-adopting running task", extra={"task_id": record.task_id, "job_id": record.job_id})
        self._note_unknown(containers)
        self._watcher = ContainerWatcher(
            self.docker, self.config.node_id, asyncio.get_running_loop(), self._on_container_event,
            self._reconcile_wanted.set, self._on_sandbox_event if self.network is not None else None,
        )
        self._watcher.start()
        self._loops = [
            asyncio.create_task(self._sync_loop(), name="sync"),
            asyncio.create_task(self._report_loop(), name="report"),
            asyncio.create_task(self._reconcile_loop(), name="reconcile"),
            asyncio.create_task(self._gc_loop(), name="gc"),
        ]
        self._report_wanted.set()
        log.info(
            "agent %s up: %d tasks recovered, %d unknown containers",
            self.config.node_id, len(records), len(self.unknown_containers),
        )

    async def stop(self) -> None:
        """Stop the agent, not the tasks: containers keep running and are re-adopted at next start.
        Safe after a failed start."""
        if self._watcher is not None:
            self._watcher.stop()
        if self._give_back is not None:
            self._give_back.cancel()
        for t in [*self._loops, *self._running.values(), *self._orphan_kills]:
            t.cancel()
        for t in [*self._loops, *self._running.values(), *self._orphan_kills]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.remediator.stop()
        await self.execs.stop()
        await self._stop_resources()
        await self.client.close()
        # Checkpoints saved last are made durable by the group sync; a clean stop waits for it.
        if not await asyncio.to_thread(self.store.flush, 10.0):
            if self.store.sync.error is not None:
                log.error("task checkpoints may not be on disk: %s", self.store.sync.error)
            else:
                log.warning("task checkpoints not yet on disk after 10 s (they are in the page cache)")

    async def _stop_resources(self) -> None:
        for resource in reversed(self._started):
            try:
                await resource.stop()
            except Exception as e:
                log.warning("stopping %s failed: %s", resource.name, e)
        self._started = []

    # ---- tasks -------------------------------------------------------------------------------

    def tasks(self) -> LiveTasks:
        return {task_id: runner.record for task_id, runner in self.runners.items()}

    def _add_runner(self, record: TaskCheckpoint) -> TaskRunner:
        runner = TaskRunner(
            record, self.pipeline, self.docker, self.store, self.config.node_id, self.metrics, self._on_change
        )
        self.runners[record.task_id] = runner
        self._running[record.task_id] = asyncio.create_task(runner.run(), name=f"task-{record.task_id}")
        return runner

    def accept(self, assignment: TaskAssignment) -> None:
        if assignment.task_id in self.runners:
            return  # a redelivery: the task is already ours
        self.metrics.launches.inc()
        record = TaskCheckpoint(
            assignment=assignment, state=TaskState.LAUNCHED, timestamps={TaskState.LAUNCHED: time.time()}
        )
        self.store.save(record)
        log.info("task received", extra={"task_id": assignment.task_id, "job_id": assignment.job_id})
        self._add_runner(record)

    def _running_container(self, task_id: str) -> str | None:
        runner = self.runners.get(task_id)
        if runner is None or runner.record.state is not TaskState.STARTED or runner.record.kill_requested:
            return None
        return runner.record.container_id

    def kill(self, task_id: str) -> None:
        runner = self.runners.get(task_id)
        self.execs.close_task(task_id)
        if runner is not None:
            runner.request_kill()
            return
        log.warning("kill for a task this agent does not hold: %s", task_id, extra={"task_id": task_id})

    def _on_change(self, record: TaskCheckpoint) -> None:
        if record.state is not TaskState.STARTED or record.kill_requested:
            self.execs.close_task(record.task_id)
        if record.state is TaskState.STARTED:
            # A launch's transients (engine answers, JSON bodies, a burst's thread stacks) are free
            # now; without a give-back the heap stays at the burst's high-water mark.
            self._schedule_give_back()
        self._report_wanted.set()

    def _on_container_event(self, task_id: str) -> None:
        runner = self.runners.get(task_id)
        if runner is not None:
            runner.container_may_have_exited()

    def _on_sandbox_event(self, task_id: str) -> None:
        self._on_network_lost(task_id, lost_message(task_id))

    def _on_network_lost(self, task_id: str, message: str) -> None:
        runner = self.runners.get(task_id)
        if runner is not None:
            runner.network_lost(message)

    async def _remove_container(self, rec: TaskCheckpoint) -> None:
        # By name when no id was recorded (a kill -9 between the create and its checkpoint): teardown
        # stopped it by that name; none by that name is a 404, which removal takes as done.
        try:
            await self.docker.remove(rec.container_id or container_name(rec.task_id))
        except (DockerUnavailable, DockerError) as e:  # the image GC removes it after the retention
            log.warning("cannot remove the finished task's container: %s", e, extra={"task_id": rec.task_id})

    def _forget(self, task_id: str) -> None:
        self.store.delete(task_id)
        self.runners.pop(task_id, None)
        self._running.pop(task_id, None)
        # A finished task's launch context, checkpoint and buffers are garbage now; once a burst of
        # them has ended, hand the freed heap back to the host (titus_common/memory.py).
        self._schedule_give_back()

    def _schedule_give_back(self) -> None:
        """At most one give-back per GIVE_BACK_AFTER seconds, that long after the first cause."""
        if self._give_back is None:
            self._give_back = asyncio.get_running_loop().call_later(GIVE_BACK_AFTER, self._gave_back)

    def _gave_back(self) -> None:
        self._give_back = None
        give_back()

    # ---- loops -------------------------------------------------------------------------------

    def node_report(self) -> NodeReport:
        digest, images = self.image_cache.fields()
        ip_capacity = free_ips = None
        warm: list[WarmNetwork] = []
        if self.network is not None:
            ip_capacity, free_ips, warm = self.network.placement_facts()
        return NodeReport(
            ip_capacity=ip_capacity,
            free_ips=free_ips,
            warm_networks=warm,
            cached_images_digest=digest,
            cached_images=images,
            id=self.config.node_id,
            capacity=self.capacity,
            labels=self._labels(),
            agent_version=__version__,
            running=[tid for tid, r in self.runners.items() if not r.record.state.terminal],
            # The protocol bounds the list; an operator sees the first MAX_TASKS_PER_NODE of them.
            unknown_containers=self.unknown_containers[:MAX_TASKS_PER_NODE],
            posture=self.security.posture.to_json() if self.security.posture is not None else None,
            health=self.health.conditions() if self.health is not None else None,
            remediation_results=self.remediator.results(),
        )

    def _labels(self) -> dict[str, str]:
        """The configured labels, plus `instanceId` on EC2: the scheduler retires a host remediation
        gave up on by terminating that instance (scheduler/retire.py)."""
        c = self.config
        if c.network_provider == "aws" and c.aws_instance_id:  # the instance's own id, never a configured one
            # Always room for it (the config admits MAX_LABELS - 1): a node bound to its instance
            # that reports none is refused (scheduler/auth.py).
            return {**{k: v for k, v in c.labels.items() if k != "instanceId"}, "instanceId": c.aws_instance_id}
        return c.labels

    async def _sync_loop(self) -> None:
        backoff = Backoff(0.2, 10.0)
        while True:
            try:
                resp = await self.client.sync(self.node_report(), self.config.sync_wait_seconds)
            except SchedulerUnavailable as e:
                self.metrics.sync_errors.labels(call="sync").inc()
                delay = backoff.next_delay()
                log.warning("sync with scheduler failed: %s; retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            self.last_sync_ok = time.time()
            if resp.send_cached_images:
                self.image_cache.resend()
            for assignment in resp.launch:
                self.accept(assignment)
            for task_id in resp.kill:
                self.kill(task_id)
            if resp.kill_containers:
                job = asyncio.create_task(self.kill_unknown(resp.kill_containers), name="kill-orphans")
                self._orphan_kills.add(job)
                job.add_done_callback(self._orphan_kills.discard)
            for order in resp.remediate:
                self.remediator.submit(order)
            for request in resp.stats:  # `titusctl task stats`: answered beside the loop (agent/taskstats.py)
                runner = self.runners.get(request.task_id)
                self._stats_replies.add(reply := asyncio.create_task(taskstats.reply(
                    self.client, self.docker, self.config.cgroup_root, request, runner.record if runner else None)))
                reply.add_done_callback(self._stats_replies.discard)
            for exec_order in resp.exec_orders:
                self.execs.open(exec_order)

    async def _report_loop(self) -> None:
        backoff = Backoff(0.2, 10.0)
        while True:
            await self._report_wanted.wait()
            self._report_wanted.clear()
            pending = [r.record for r in self.runners.values() if r.record.unreported]
            if not pending:
                continue
            sent = {rec.task_id: rec.revision for rec in pending}
            try:
                resp = await self.client.updates([rec.to_update() for rec in pending])
            except SchedulerUnavailable as e:
                self.metrics.sync_errors.labels(call="updates").inc()
                delay = backoff.next_delay()
                log.warning("reporting %d updates failed: %s; retrying in %.1fs", len(pending), e, delay)
                await asyncio.sleep(delay)
                self._report_wanted.set()
                continue
            backoff.reset()
            done: list[TaskCheckpoint] = []
            for task_id in resp.accepted:
                runner = self.runners.get(task_id)
                if runner is None or task_id not in sent:
                    continue
                rec = runner.record
                rec.reported_revision = max(rec.reported_revision, sent[task_id])
                if rec.state.terminal and not rec.unreported:
                    done.append(rec)
            # Their last output is with the scheduler now: the containers may go (agent/logtail.py).
            await asyncio.gather(*(self._remove_container(rec) for rec in done))
            for rec in done:
                self._forget(rec.task_id)

    async def _reconcile_loop(self) -> None:
        """Catch exits the event stream missed (it reconnects after dockerd restarts), then let each
        host resource reconcile (posture re-probed, sandboxes checked)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reconcile_wanted.wait(), timeout=RECONCILE_EVERY)
            self._reconcile_wanted.clear()
            try:
                containers = await self.docker.list_labelled(self.config.node_id)
            except (DockerUnavailable, DockerError) as e:
                log.warning("reconcile: cannot list containers: %s", e)
                continue
            running = {c["Labels"].get(LABEL_TASK) for c in containers if c.get("State") == "running"}
            for task_id, runner in self.runners.items():
                if runner.record.state in (TaskState.STARTED, TaskState.KILL_INITIATED) and task_id not in running:
                    runner.container_may_have_exited()
            self._note_unknown(containers)
            try:
                self.image_cache.update(await self.docker.image_refs())
            except (DockerUnavailable, DockerError) as e:
                log.warning("reconcile: cannot list images: %s", e)
            for resource in self.resources:
                await resource.reconcile(self.tasks())

    async def _gc_loop(self) -> None:
        """Leaks of every host resource (network links, rules, ENIs, sandboxes, metadata links)."""
        while True:
            await asyncio.sleep(self.config.network_gc_seconds)
            for resource in self.resources:
                await resource.gc(self.tasks())

    # ---- orphan containers (agent/orphan_kills.py) -------------------------------------------

    async def kill_unknown(self, container_ids: list[str]) -> None:
        """Kill the unknown containers the scheduler ordered killed as orphans (agent/orphan_kills.py)."""
        await orphan_kills.kill_ordered(self.docker, self.config.node_id, self.runners, container_ids, ORPHAN_KILL_GRACE)
        self._reconcile_wanted.set()  # list again: the next report no longer holds what was killed

    def _note_unknown(self, containers: list[dict[str, Any]]) -> None:
        self.unknown_containers = orphan_kills.note_unknown(containers, self.runners, self.unknown_containers)
