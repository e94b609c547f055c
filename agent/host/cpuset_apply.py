"""Writing the host's cpusets to containers: `CpusetApplier` compares what each container should have
(`HostCpus.desired`) with what was last written, writes the difference with `docker update
--cpuset-cpus`, and periodically reads the kernel's value back (and, less often or on a mismatch,
the engine's) to correct drift.
`CpuResource` is the CPUs' lifecycle (agent/host/base.py): rebuild from the task checkpoints at
start, then the apply/rebalance/read-back loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

from agent.checkpoint import CheckpointStore, TaskCheckpoint
from agent.config import AgentConfig
from agent.host.base import LiveTasks
from agent.docker_api import Docker, DockerError, DockerUnavailable
from agent.host.cpus import HostCpus, discover_host
from agent.metrics import AgentMetrics
from agent.names import container_name
from cpuset import CpusetError, parse_cpulist

__all__ = ["CpuResource", "CpusetApplier", "cpuset_loop"]

log = logging.getLogger("titus.agent.cpus")

UPDATE_CONCURRENCY = 16
PENDING_RETRY_SECONDS = 1.0  # a container not created yet when its cpuset changed
# The kernel's cpuset.cpus is read back on every check (a file read); the engine's record (one inspect
# per container, most of an idle agent's CPU at 100 tasks) on every 10th, or when the kernel differs.
# Drift in the engine's record alone is rare: `docker update` moves the cgroup too.
ENGINE_READBACK_EVERY = 10


class CpusetApplier:
    """The one place that writes cpusets to containers, and reads them back."""

    def __init__(self, host: HostCpus, docker: Docker, metrics: AgentMetrics, cgroup_root: Path) -> None:
        self.host = host
        self.docker = docker
        self.metrics = metrics
        self.cgroup_root = cgroup_root
        self.applied: dict[str, str] = {}  # task → the cpulist its container was created with / last given
        self.pending = False  # some write could not happen yet (container not created, engine away)
        self._lock = asyncio.Lock()
        self._limit = asyncio.Semaphore(UPDATE_CONCURRENCY)
        self._ids: dict[str, str] = {}  # task → its container's id, learned from an inspect
        self._checks = 0

    def created_with(self, task_id: str, cpus: str) -> None:
        """The cpuset step hands the container its cpuset at create time."""
        self.applied[task_id] = cpus

    async def apply(self) -> None:
        """Bring every container to its desired cpuset; what cannot be written now stays pending."""
        async with self._lock:
            self.host.changed.clear()
            desired = self.host.desired()
            for gone in set(self.applied) - set(desired):
                del self.applied[gone]
            todo = {t: c for t, c in desired.items() if self.applied.get(t) != c}
            results = await asyncio.gather(*(self._write(t, c) for t, c in todo.items()))
            self.pending = not all(results)

    async def verify(self) -> None:
        """Read every container's cpuset back from the cgroup (and from the engine on every
        ENGINE_READBACK_EVERY-th check, for a container not seen yet, or on a mismatch); put drifted
        ones back."""
        async with self._lock:
            desired = self.host.desired()
            for gone in set(self._ids) - set(desired):
                del self._ids[gone]
            engine_too = self._checks % ENGINE_READBACK_EVERY == 0
            self._checks += 1
            known = {} if engine_too else {t: self._ids[t] for t in desired if t in self._ids}
            kernel: dict[str, str | None] = {}
            if known:
                try:
                    kernel = await self.docker.cgroup_cpusets(list(known.values()), self.cgroup_root)
                except (DockerError, DockerUnavailable, OSError) as e:  # then every one is asked of the engine
                    log.warning("cpuset read-back from the cgroups failed: %s", e)
            todo = []
            for task_id, cpus in desired.items():
                now = kernel.get(known[task_id]) if task_id in known else None
                if now is not None and _cpus(now) == set(parse_cpulist(cpus)):
                    self.applied[task_id] = cpus
                else:  # not read yet, no cgroup (a new container id?) or drifted: ask the engine
                    todo.append((task_id, cpus))
            await asyncio.gather(*(self._verify_one(t, c) for t, c in todo))

    async def _write(self, task_id: str, cpus: str) -> bool:
        async with self._limit:
            try:
                await self.docker.update_cpuset(container_name(task_id), cpus)
            except DockerError as e:
                if not e.not_found:  # not found: not created yet, or already gone; retried while held
                    self.metrics.cpuset_update_failures.inc()
                    log.warning("cpuset %s not applied: %s", cpus, e, extra={"task_id": task_id})
                return False
            except DockerUnavailable as e:
                self.metrics.cpuset_update_failures.inc()
                log.warning("cpuset %s not applied: %s", cpus, e, extra={"task_id": task_id})
                return False
        self.metrics.cpuset_updates.inc()
        self.applied[task_id] = cpus
        return True

    async def _verify_one(self, task_id: str, cpus: str) -> None:
        want = set(parse_cpulist(cpus))
        async with self._limit:
            try:
                state = await self.docker.inspect(container_name(task_id))
                if state is None:
                    return
                engine = str(state["HostConfig"].get("CpusetCpus") or "")
                self._ids[task_id] = str(state["Id"])
                kernel = await self.docker.cgroup_cpuset(str(state["Id"]), self.cgroup_root)
            except (DockerError, DockerUnavailable) as e:
                log.warning("cpuset read-back failed: %s", e, extra={"task_id": task_id})
                return
        source = None
        if _cpus(engine) != want:
            source = "engine"
        elif kernel and _cpus(kernel) != want:  # a stopped container has no cgroup; v2 may leave it empty
            source = "cgroup"
        if source is None:
            self.applied[task_id] = cpus
            return
        log.warning(
            "cpuset drift: container is on %s (%s), should be on %s; correcting",
            engine if source == "engine" else kernel, source, cpus, extra={"task_id": task_id},
        )
        self.applied.pop(task_id, None)
        if await self._write(task_id, cpus):
            self.metrics.cpuset_drift_corrections.labels(source=source).inc()


def _cpus(text: str) -> set[int] | None:
    try:
        return set(parse_cpulist(text))
    except CpusetError:
        return None


async def cpuset_loop(host: HostCpus, applier: CpusetApplier, config: AgentConfig) -> None:
    """Apply changes as they happen, rebalance and read back periodically. Never dies of an error."""
    now = time.monotonic()
    next_check = now  # read back at once: after a restart, containers may have drifted meanwhile
    rebalance_every = config.cpuset_rebalance_seconds
    next_rebalance = now + rebalance_every if rebalance_every > 0 else math.inf
    while True:
        now = time.monotonic()
        wake_at = min(next_check, next_rebalance, now + PENDING_RETRY_SECONDS if applier.pending else math.inf)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(host.changed.wait(), timeout=max(0.0, wake_at - now))
        try:
            now = time.monotonic()
            if now >= next_rebalance:
                next_rebalance = now + rebalance_every
                host.rebalance(config.cpuset_rebalance_max_moves)
            if now >= next_check:  # first: after a restart it learns what containers already have
                next_check = now + config.cpuset_check_seconds
                await applier.verify()
            await applier.apply()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("cpuset loop error (continuing)")
            await asyncio.sleep(1.0)


class CpuResource:
    """The host's CPUs: one placement state (`host`) and its applier (`applier`)."""

    name = "cpuset"

    def __init__(self, config: AgentConfig, docker: Docker, metrics: AgentMetrics, store: CheckpointStore) -> None:
        self.config = config
        self.store = store
        self.host = discover_host(config, metrics)  # CpuStateError: refuse, with the cause
        self.applier = CpusetApplier(self.host, docker, metrics, config.cgroup_root)
        self._loop: asyncio.Task[None] | None = None

    async def start(self, records: Sequence[TaskCheckpoint]) -> None:
        # Before any runner runs: the task records are the checkpoint of truth for who holds which
        # CPU (CpuStateError, a CheckpointCorrupt, on a mismatch).
        self.host.rebuild(records, self.store.save)
        self._loop = asyncio.create_task(cpuset_loop(self.host, self.applier, self.config), name="cpuset")

    async def reconcile(self, tasks: LiveTasks) -> None:
        return None  # the cpuset loop reads back and corrects on its own period

    async def gc(self, tasks: LiveTasks) -> None:
        return None  # grants are released by each task's teardown, checkpointed first

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loop
            self._loop = None
