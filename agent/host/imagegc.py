"""Image and container GC as a host resource (agent/imagegc.py decides): every GC round it reads the
engine filesystem's usage (statvfs of `docker_root`) and collects under pressure; the age rule
runs every `image_gc_seconds`. `reconcile` keeps the LRU book from the tasks' images, with no
engine call; a GC round lists the engine's images and containers once. The `prune` remediation
runs it forced (as under pressure).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent import imagegc
from agent.checkpoint import TaskCheckpoint
from agent.config import AgentConfig
from agent.docker_api import LABEL_AGENT, LABEL_TASK, Docker, DockerError, DockerUnavailable
from agent.host.base import LiveTasks, launching
from agent.metrics import AgentMetrics

__all__ = ["ImageGcResource", "engine_usage"]

log = logging.getLogger("titus.agent.imagegc")


def engine_usage(root: Path) -> tuple[float, int] | None:
    """(used %, total bytes) of the engine's filesystem, as `df`; None when it cannot be read."""
    try:
        st = os.statvfs(root)
    except OSError:
        return None
    total = st.f_blocks * st.f_frsize
    used = total - st.f_bfree * st.f_frsize
    avail = st.f_bavail * st.f_frsize
    return (100.0 * used / (used + avail) if used + avail else 0.0), total


def _finished_at(doc: dict[str, Any] | None) -> float | None:
    """The engine's `State.FinishedAt` ("2026-12-02T01:23:45.123456789Z"; year 1 when never), to the second."""
    raw = str(((doc or {}).get("State") or {}).get("FinishedAt") or "")
    try:
        at = dt.datetime.fromisoformat(raw.split(".")[0].removesuffix("Z")).replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return at.timestamp() if at.year > 1970 else None


class ImageGcResource:
    name = "image-gc"

    def __init__(
        self, config: AgentConfig, docker: Docker, metrics: AgentMetrics,
        usage: Callable[[], tuple[float, int] | None] | None = None, clock: Callable[[], float] = time.time,
        image_label: str | None = None,
    ) -> None:
        self.config = config
        self.docker = docker
        self.metrics = metrics
        self.usage = usage or (lambda: engine_usage(config.docker_root))
        self.clock = clock
        self.image_label = image_label  # only images with this label (tests on a shared engine)
        self.limits = imagegc.GcLimits(
            high_pct=config.image_gc_high_pct, low_pct=config.image_gc_low_pct,
            unused_age_s=config.image_gc_unused_age_seconds, max_per_cycle=config.image_gc_max_per_cycle,
            container_retention_s=config.container_retention_seconds,
        )
        self.protected = {r for r in (config.sandbox_image, config.health_registry_image) if r}
        self._by_id: dict[str, float] = {}  # image id → last used (LRU book)
        self._by_ref: dict[str, float] = {}  # task image reference → last used
        self._next_age_run = clock() + config.image_gc_seconds
        self.last: imagegc.GcPlan | None = None

    async def start(self, records: Sequence[TaskCheckpoint]) -> None:
        return None

    async def reconcile(self, tasks: LiveTasks) -> None:
        now = self.clock()
        for r in tasks.values():
            self._by_ref[r.assignment.container.image] = now

    async def gc(self, tasks: LiveTasks) -> None:
        if launching(tasks):
            return
        now = self.clock()
        usage = await asyncio.to_thread(self.usage)
        pressure = usage is not None and usage[0] >= self.limits.high_pct
        if not pressure and now < self._next_age_run:
            return
        self._next_age_run = now + self.config.image_gc_seconds
        try:
            await self.run(tasks, usage=usage)
        except Exception as e:  # never let the agent's loop die
            log.warning("image GC failed: %s", e)

    async def run(self, tasks: LiveTasks, force: bool = False,
                  usage: tuple[float, int] | None = None) -> imagegc.GcPlan:
        """One collection; `force`: as under pressure (the prune remediation). Raises the engine's errors."""
        now = self.clock()
        if usage is None:
            usage = await asyncio.to_thread(self.usage)
        raw_images = await self.docker.images(self.image_label)
        raw_containers = await self.docker.list_containers()
        containers = [
            imagegc.ContainerInfo(
                id=str(c["Id"]), image_id=str(c.get("ImageID", "")), state=str(c.get("State", "")),
                task_id=(c.get("Labels") or {}).get(LABEL_TASK),
                ours=(c.get("Labels") or {}).get(LABEL_AGENT) == self.config.node_id,
            )
            for c in raw_containers
        ]
        self._by_id = imagegc.last_used(self._by_id, [str(i["Id"]) for i in raw_images], containers, now)
        images = []
        for i in raw_images:
            refs = tuple((i.get("RepoTags") or []) + (i.get("RepoDigests") or []))
            used = max([self._by_id[str(i["Id"])], *(self._by_ref.get(r, 0.0) for r in refs)])
            images.append(imagegc.ImageInfo(str(i["Id"]), refs, int(i.get("Size") or 0), used))
        # When did our exited containers finish (the list does not say): one inspect each.
        finished = []
        held = set(tasks)
        for c in containers:
            if c.ours and c.state in ("exited", "dead", "created") and c.task_id not in held:
                doc = await self.docker.inspect(c.id)
                c = imagegc.ContainerInfo(c.id, c.image_id, c.state, c.task_id, c.ours, _finished_at(doc))
            finished.append(c)
        task_images = {r.assignment.container.image for r in tasks.values()}
        p = imagegc.plan(images, finished, held, task_images, self.protected,
                         usage[0] if usage else None, usage[1] if usage else 0, self.limits, now, force=force)
        trigger = "prune" if force else ("pressure" if p.pressure else "age")
        for c in p.containers:
            await self.docker.remove(c.id)
            self.metrics.image_gc_containers_removed.inc()
        removed: list[imagegc.ImageInfo] = []
        for img in p.images:
            try:
                await self.docker.remove_image(img.id)
            except DockerError as e:  # in use after all (a container started since), or a parent
                log.info("image GC: %s kept: %s", img.refs[0] if img.refs else img.id[:19], e)
                continue
            except DockerUnavailable:
                raise
            removed.append(img)
            self.metrics.image_gc_images_removed.labels(trigger=trigger).inc()
            self.metrics.image_gc_bytes_reclaimed.inc(img.size)
        p.images = removed
        self.last = p
        if removed or p.containers:
            log.warning("image GC (%s): removed %d image(s) (%.1f MiB: %s) and %d exited container(s)", p.reason,
                        len(removed), sum(i.size for i in removed) / 2**20,
                        ", ".join(i.refs[0] if i.refs else i.id[:19] for i in removed[:5]), len(p.containers))
        return p

    async def stop(self) -> None:
        return None
