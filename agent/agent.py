"""The agent: recovers what it ran, takes work from the scheduler, runs each task through its
TaskRunner, reports transitions, and keeps its view in step with the engine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from typing import Any

import psutil

from agent import __version__
from agent.checkpoint import CheckpointStore, TaskCheckpoint
from agent.config import AgentConfig
from agent.cpus import CpusetApplier, CpuStateError, cpuset_loop, host_cpus
from agent.hostimds import HostMetadata, host_metadata
from agent.hostnet import host_network, isolation_policy
from agent.docker_api import LABEL_TASK, Docker, DockerError, DockerUnavailable
from agent.metrics import AgentMetrics
from agent.pipeline import Pipeline
from agent.runner import TaskRunner
from agent.scheduler_client import SchedulerClient, SchedulerUnavailable
from security import apparmor
from security.posture import HostPosture, probe_host_posture, userns_start_problem
from security.profiles import PolicyError, SecurityPolicy, default_policy, load_policy
from agent.steps.container import ContainerStep
from agent.steps.cpuset import CpusetStep
from agent.steps.image import ImageStep
from agent.steps.imds import ImdsStep
from agent.steps.network import LABEL_ROLE, ROLE_SANDBOX, HostNetwork, NetworkStep, sandbox_name
from agent.steps.security import HostSecurity, SecurityStep
from agent.watcher import LABEL_SANDBOX_AGENT, ContainerWatcher
from netns import isolation
from netns.errors import NetworkError
from titus_common.protocol import CapacityReport, NodeReport, TaskAssignment
from titus_common.states import TaskState

log = logging.getLogger("titus.agent")

RECONCILE_EVERY = 30.0
SANDBOX_ORPHAN_AGE = 600.0


class SecurityStartError(RuntimeError):
    """The agent cannot confine containers as its policy says (bad policy file, an AppArmor profile
    the kernel will not load): it must not start and run them anyway."""


def load_security_policy(config: AgentConfig) -> SecurityPolicy:
    """The policy file named in the config, or the built-in one. PolicyError names file and field."""
    return load_policy(config.security_policy) if config.security_policy is not None else default_policy()


def default_pipeline(
    config: AgentConfig,
    metrics: AgentMetrics,
    cpus: CpusetApplier | None = None,
    security: HostSecurity | None = None,
    network: HostNetwork | None = None,
    metadata: HostMetadata | None = None,
) -> Pipeline:
    # The order is the launch order. The cpuset step comes after the image pull, so a slow pull does
    # not hold CPUs; the security step before it, so a job this host refuses never takes CPUs. The
    # network step after security (it reuses the hardening for the sandbox); the metadata step after
    # the network (its routes use the task's address), so credentials are being fetched while the
    # CPUs are placed and the container is created.
    security = security or HostSecurity(load_security_policy(config))
    cpuset = [CpusetStep(cpus)] if cpus is not None else []
    net = [NetworkStep(network)] if network is not None else []
    imds = [ImdsStep(metadata)] if metadata is not None and network is not None else []
    return Pipeline(
        [ImageStep(always_pull=config.always_pull), SecurityStep(security), *net, *imds, *cpuset, ContainerStep()],
        metrics,
    )


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
        # One placement state for the host's CPUs (None with --no-cpuset). A topology that cannot be
        # read stops the agent at start(), where start-up errors are reported.
        self.cpus: CpusetApplier | None = None
        self._cpus_error: CpuStateError | None = None
        if config.cpuset_enabled:
            try:
                self.cpus = host_cpus(config, docker, metrics)
            except CpuStateError as e:
                self._cpus_error = e
        # The security policy is read once; a bad file stops the agent at start(). The posture is
        # probed in start() (it needs the engine) and refreshed on every reconcile.
        self._security_error: PolicyError | None = None
        try:
            policy = load_security_policy(config)
        except PolicyError as e:
            self._security_error = e
            policy = default_policy()
        self.security = HostSecurity(policy)
        self.network: HostNetwork | None = host_network(config) if config.network_enabled else None
        self.metadata: HostMetadata | None = None
        self._metadata_error: str | None = None
        if self.network is not None and config.imds_enabled:
            try:
                self.metadata = host_metadata(config, metrics.registry)
            except (OSError, ValueError) as e:  # the token key file: refuse at start, with the cause
                self._metadata_error = str(e)
        self.pipeline = pipeline or default_pipeline(
            config, metrics, self.cpus, self.security, self.network, self.metadata
        )
        self.store = CheckpointStore(config.state_dir)
        self.capacity = host_capacity(config)
        self.runners: dict[str, TaskRunner] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self.unknown_containers: list[str] = []
        self.last_sync_ok: float | None = None
        self._report_wanted = asyncio.Event()
        self._reconcile_wanted = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._watcher: ContainerWatcher | None = None
        metrics.bind(lambda: [r.record.state for r in self.runners.values()], lambda: len(self.unknown_containers))
        if self.network is not None:
            metrics.bind_network(self.network.networks.snapshot)

    # ---- start and stop ----------------------------------------------------------------------

    async def start(self) -> None:
        records = self.store.load_all()  # CheckpointCorrupt stops the agent: never guess
        if self._cpus_error is not None:
            raise self._cpus_error
        if self._security_error is not None:
            raise SecurityStartError(f"security policy: {self._security_error}")
        if self._metadata_error is not None:
            raise SecurityStartError(f"metadata proxy: {self._metadata_error}")
        if self.cpus is not None:
            # Before any runner runs: the task records are the checkpoint of truth for who holds
            # which CPU (CpuStateError, a CheckpointCorrupt, on a mismatch).
            self.cpus.host.rebuild(records, self.store.save)
            if not self.config.cpus:  # the scheduler counts CPUs: offer only those tasks can get
                self.capacity = self.capacity.model_copy(update={"cpus": float(len(self.cpus.host.topology.usable))})
        containers = await self._list_containers_patiently()
        # Before any runner runs: every launch is decided against what this host can enforce.
        self.security.posture = await self._probe_posture_patiently()
        problem = userns_start_problem(self.security.posture.userns, self.config.require_userns)
        if problem is not None:
            raise SecurityStartError(problem)
        await self._load_apparmor_profiles()
        present = {c["Labels"].get(LABEL_TASK): c for c in containers}
        if self.network is not None:
            try:
                policy = await asyncio.to_thread(isolation_policy, self.config)
                await asyncio.to_thread(isolation.apply, policy)
            except NetworkError as e:  # not enforceable: do not run tasks without it
                raise SecurityStartError(f"control-plane isolation: {e.message}") from None
            log.info("network isolation applied (nftables table inet %s): host ports %s, host ports allowed %s, "
                     "control plane dropped %s, metadata addresses dropped", isolation.TABLE,
                     "closed" if policy.isolate else "OPEN (--no-network-isolation)",
                     list(policy.allowed_host_tcp_ports), list(policy.control_plane_cidrs))
            # Before any runner runs: tasks not finished keep their addresses; the rest is reconciled.
            report = await self.network.networks.restore(
                {r.task_id: r.resources["network"] for r in records
                 if not r.state.terminal and isinstance(r.resources.get("network"), dict)}
            )
            log.info("network pool restored: kept %d, adopted %d, released %d, orphans %s",
                     len(report.kept), len(report.adopted), len(report.released), sorted(report.orphan_tasks))
        if self.metadata is not None:
            try:
                await asyncio.to_thread(self.metadata.path.ensure)
            except NetworkError as e:
                raise SecurityStartError(f"metadata namespace: {e.message}") from None
            self.metadata.service.start()
        for record in records:
            self._add_runner(record)
            if record.state is TaskState.STARTED and record.task_id in present:
                self.metrics.adopted.inc()
                log.info("re-adopting running task", extra={"task_id": record.task_id, "job_id": record.job_id})
        self._note_unknown(containers)
        loop = asyncio.get_running_loop()
        self._watcher = ContainerWatcher(
            self.docker, self.config.node_id, loop, self._on_container_event, self._reconcile_wanted.set,
            self._on_sandbox_event if self.network is not None else None,
        )
        self._watcher.start()
        self._loops = [
            asyncio.create_task(self._sync_loop(), name="sync"),
            asyncio.create_task(self._report_loop(), name="report"),
            asyncio.create_task(self._reconcile_loop(), name="reconcile"),
        ]
        if self.cpus is not None:
            self._loops.append(
                asyncio.create_task(cpuset_loop(self.cpus.host, self.cpus, self.config), name="cpuset")
            )
        if self.network is not None:
            self._loops.append(asyncio.create_task(self._network_gc_loop(), name="network-gc"))
        self._report_wanted.set()
        log.info(
            "agent %s up: %d tasks recovered, %d unknown containers",
            self.config.node_id, len(records), len(self.unknown_containers),
        )

    async def _list_containers_patiently(self) -> list[dict[str, Any]]:
        """At start the agent must know what runs before it acts; wait for the engine if it is down."""
        delay = 0.5
        while True:
            try:
                return await self.docker.list_labelled(self.config.node_id)
            except (DockerUnavailable, DockerError) as e:
                log.warning("Docker engine not answering at start (%s); retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
                delay = min(10.0, delay * 2)

    async def _probe_posture_patiently(self) -> HostPosture:
        delay = 0.5
        while True:
            try:
                posture = await self.docker.call(probe_host_posture, self.docker.api)
            except (DockerUnavailable, DockerError) as e:
                log.warning("cannot probe the host's security posture (%s); retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
                delay = min(10.0, delay * 2)
                continue
            self._log_posture(posture)
            return posture

    @staticmethod
    def _log_posture(posture: HostPosture) -> None:
        log.info(
            "security posture: kernel %s, cgroup v%s, seccomp %s, AppArmor %s (%s), userns-remap %s",
            posture.kernel_version, posture.cgroup_version,
            "yes" if posture.seccomp_enforceable else "NO",
            "enforced" if posture.apparmor.enforceable else "NOT enforced", posture.apparmor.reason,
            "yes" if posture.userns.remapped else "no (container root is host root)",
        )

    async def _load_apparmor_profiles(self) -> None:
        """Where the kernel enforces AppArmor, load (or replace) one profile per seccomp variant, so
        `apparmor=titus-<variant>` names a profile the kernel has. Not loadable = do not start."""
        posture = self.security.posture
        if posture is None or not posture.apparmor.enforceable:
            return
        for variant in sorted(self.security.policy.catalog.profiles):
            text = apparmor.render_profile(variant)
            result = await asyncio.to_thread(apparmor.load_profile, text)
            if not result.ok:
                raise SecurityStartError(
                    f"AppArmor profile {apparmor.profile_name(variant)} does not load: {result.output}"
                )
            log.info("AppArmor profile %s loaded", apparmor.profile_name(variant))

    async def _refresh_posture(self) -> None:
        """After a dockerd restart the engine may have changed (seccomp, userns-remap): re-probe."""
        try:
            posture = await self.docker.call(probe_host_posture, self.docker.api)
        except (DockerUnavailable, DockerError) as e:
            log.warning("reconcile: cannot probe the security posture: %s", e)
            return
        if posture != self.security.posture:
            self._log_posture(posture)
            was_enforced = self.security.posture is not None and self.security.posture.apparmor.enforceable
            self.security.posture = posture
            if posture.apparmor.enforceable and not was_enforced:
                try:
                    await self._load_apparmor_profiles()
                except SecurityStartError as e:
                    log.error("%s", e)

    async def stop(self) -> None:
        """Stop the agent, not the tasks: containers keep running and are re-adopted at next start."""
        if self._watcher is not None:
            self._watcher.stop()
        for t in [*self._loops, *self._running.values()]:
            t.cancel()
        for t in [*self._loops, *self._running.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.network is not None:
            await self.network.networks.pool.close()
        if self.metadata is not None:  # the tasks' metadata links stay; listeners re-open at start
            await asyncio.to_thread(self.metadata.stop)
        await self.client.close()

    # ---- tasks -------------------------------------------------------------------------------

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

    def kill(self, task_id: str) -> None:
        runner = self.runners.get(task_id)
        if runner is not None:
            runner.request_kill()
            return
        log.warning("kill for a task this agent does not hold: %s", task_id, extra={"task_id": task_id})

    def _on_change(self, record: TaskCheckpoint) -> None:
        self._report_wanted.set()

    def _on_container_event(self, task_id: str) -> None:
        runner = self.runners.get(task_id)
        if runner is not None:
            runner.container_may_have_exited()

    def _on_sandbox_event(self, task_id: str) -> None:
        runner = self.runners.get(task_id)
        if runner is not None:
            runner.network_lost(f"the task's network sandbox {sandbox_name(task_id)} died: the task lost its network")

    def _forget(self, task_id: str) -> None:
        self.store.delete(task_id)
        self.runners.pop(task_id, None)
        self._running.pop(task_id, None)

    # ---- loops -------------------------------------------------------------------------------

    def node_report(self) -> NodeReport:
        return NodeReport(
            id=self.config.node_id,
            capacity=self.capacity,
            labels=self.config.labels,
            agent_version=__version__,
            running=[tid for tid, r in self.runners.items() if not r.record.state.terminal],
            unknown_containers=self.unknown_containers,
            posture=self.security.posture.to_json() if self.security.posture is not None else None,
        )

    async def _sync_loop(self) -> None:
        delay = 0.2
        while True:
            try:
                resp = await self.client.sync(self.node_report(), self.config.sync_wait_seconds)
            except SchedulerUnavailable as e:
                self.metrics.sync_errors.labels(call="sync").inc()
                log.warning("sync with scheduler failed: %s; retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
                delay = min(10.0, delay * 2)
                continue
            delay = 0.2
            self.last_sync_ok = time.time()
            for assignment in resp.launch:
                self.accept(assignment)
            for task_id in resp.kill:
                self.kill(task_id)

    async def _report_loop(self) -> None:
        delay = 0.2
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
                log.warning("reporting %d updates failed: %s; retrying in %.1fs", len(pending), e, delay)
                await asyncio.sleep(delay)
                delay = min(10.0, delay * 2)
                self._report_wanted.set()
                continue
            delay = 0.2
            for task_id in resp.accepted:
                runner = self.runners.get(task_id)
                if runner is None or task_id not in sent:
                    continue
                rec = runner.record
                rec.reported_revision = max(rec.reported_revision, sent[task_id])
                if rec.state.terminal and not rec.unreported:
                    self._forget(task_id)

    async def _reconcile_loop(self) -> None:
        """Catch exits the event stream missed (it reconnects after dockerd restarts)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reconcile_wanted.wait(), timeout=RECONCILE_EVERY)
            self._reconcile_wanted.clear()
            await self._refresh_posture()
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
            if self.network is not None:
                await self._check_sandboxes()

    async def _list_sandboxes(self) -> list[dict[str, Any]]:
        return await self.docker.call(
            self.docker.api.containers, all=True,
            filters={"label": [f"{LABEL_SANDBOX_AGENT}={self.config.node_id}", f"{LABEL_ROLE}={ROLE_SANDBOX}"]},
        )

    async def _check_sandboxes(self) -> None:
        """A running task whose sandbox is gone or stopped has lost its network (events missed)."""
        try:
            sandboxes = await self._list_sandboxes()
        except (DockerUnavailable, DockerError) as e:
            log.warning("reconcile: cannot list network sandboxes: %s", e)
            return
        alive = {(c.get("Labels") or {}).get(LABEL_TASK) for c in sandboxes if c.get("State") == "running"}
        for task_id, runner in self.runners.items():
            if runner.record.state is TaskState.STARTED and task_id not in alive:
                if runner.ctx.resources("network").get("sandbox_id"):
                    self._on_sandbox_event(task_id)

    async def _network_gc_loop(self) -> None:
        """Leaks: this agent's links and rules of tasks it no longer holds, IPs held for no task, and
        sandboxes nobody needs (see `_collect_sandboxes`)."""
        assert self.network is not None
        with contextlib.suppress(Exception):
            await self._collect_sandboxes()
        while True:
            await asyncio.sleep(self.config.network_gc_seconds)
            if any(r.record.state.rank < TaskState.STARTED.rank for r in self.runners.values()):
                continue  # a launch is wiring: collect on a quiet round, never under its feet
            live = set(self.runners)
            try:
                report = await self.network.networks.collect_leaks(live)
                for kind, found in (("link", report.wiring.links), ("rule", report.wiring.rules),
                                    ("namespace", report.wiring.namespaces), ("eni", report.enis)):
                    if found:
                        self.metrics.network_leaks_removed.labels(kind).inc(len(found))
                if report.wiring.links or report.wiring.rules or report.enis:
                    log.warning("network leaks removed: links %s, rules %s, ENIs %s",
                                report.wiring.links, report.wiring.rules, report.enis)
                if self.metadata is not None:
                    leaked = await asyncio.to_thread(self.metadata.path.gc, live)
                    if leaked:
                        self.metrics.network_leaks_removed.labels("metadata_link").inc(len(leaked))
                        log.warning("leaked metadata links removed: %s", leaked)
                await self._collect_sandboxes()
            except Exception as e:  # never let the loop die
                log.warning("network GC failed: %s", e)

    async def _collect_sandboxes(self) -> None:
        """Remove this node's sandboxes of tasks it does not hold, and any node's sandbox whose task
        container does not exist and that is older than SANDBOX_ORPHAN_AGE (its agent is gone or the
        task was removed behind its back: the namespace serves nobody)."""
        containers = await self.docker.call(
            self.docker.api.containers, all=True, filters={"label": [LABEL_TASK]}
        )
        names = {n.lstrip("/") for c in containers for n in c.get("Names") or []}
        now = time.time()
        for c in containers:
            labels = c.get("Labels") or {}
            if labels.get(LABEL_ROLE) != ROLE_SANDBOX:
                continue
            task_id = labels.get(LABEL_TASK)
            if labels.get(LABEL_SANDBOX_AGENT) == self.config.node_id:
                leaked = task_id not in self.runners
            else:
                leaked = f"titus-{task_id}" not in names and now - float(c.get("Created", now)) > SANDBOX_ORPHAN_AGE
            if leaked:
                log.warning("removing the leaked network sandbox %s of task %s", str(c["Id"])[:12], task_id)
                await self.docker.remove(str(c["Id"]))
                self.metrics.network_leaks_removed.labels("sandbox").inc()

    def _note_unknown(self, containers: list[dict[str, Any]]) -> None:
        unknown = []
        for c in containers:
            if (c.get("Labels") or {}).get(LABEL_TASK) not in self.runners:
                unknown.append(str(c.get("Id", ""))[:12])
        if unknown and sorted(unknown) != sorted(self.unknown_containers):
            log.warning(
                "%d container(s) labelled for this agent match no task it holds: %s (reported, not killed)",
                len(unknown), ", ".join(unknown),
            )
        self.unknown_containers = sorted(unknown)

