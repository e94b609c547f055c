"""Image and container garbage collection as routine (the ECS agent's most reported problem is a
full disk: aws/amazon-ecs-agent #118, #463, #632). Pure decisions over what the engine lists;
`agent/host/imagegc.py` runs them.

Images, least recently used first (last seen in use by a container on this host, else first seen
by this agent):
- **disk pressure**: the engine's filesystem ≥ `high_pct` (85 %) used → remove until the estimate
  (used − the removed images' sizes) is ≤ `low_pct` (80 %) (kubelet's high/low thresholds);
- **age**: otherwise at most `max_per_cycle` (5) images unused for ≥ `unused_age_s` (1 h; 0: off) —
  the ECS agent's rule;
- **never**: an image a container on this host uses (any state: the engine refuses anyway), an
  image a pending or running task of this agent names (by reference, tag or digest, or image id),
  the sandbox image and the agent's own (`protected`). Under pressure the age does not matter
  (kubelet's default minimum age is 0 too).
Containers: exited or dead containers this agent created for tasks it no longer holds, finished
more than `container_retention_s` (1 h) ago; all of them under disk pressure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["ContainerInfo", "GcLimits", "GcPlan", "ImageInfo", "plan"]


@dataclass(frozen=True)
class ImageInfo:
    id: str
    refs: tuple[str, ...]  # RepoTags + RepoDigests
    size: int
    last_used: float  # last seen in use here, else first seen by this agent


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    image_id: str
    state: str  # created | running | paused | restarting | exited | dead
    task_id: str | None  # the titus.task_id label (None: not a task container)
    ours: bool  # created by this agent (titus.agent=<node>)
    finished_at: float | None = None  # exited containers: when (None: unknown → treated as old)


@dataclass(frozen=True)
class GcLimits:
    high_pct: float = 85.0
    low_pct: float = 80.0
    unused_age_s: float = 3600.0
    max_per_cycle: int = 5
    container_retention_s: float = 3600.0


@dataclass
class GcPlan:
    images: list[ImageInfo] = field(default_factory=list)
    containers: list[ContainerInfo] = field(default_factory=list)
    pressure: bool = False
    kept_in_use: int = 0  # images not removable: in use, pending, protected
    reason: str = ""


def _named(image: ImageInfo, refs: set[str]) -> bool:
    if image.id in refs or image.id.removeprefix("sha256:") in refs:
        return True
    for r in image.refs:
        if r in refs or r.removesuffix(":latest") in refs:
            return True
    return False


def plan(
    images: Iterable[ImageInfo],
    containers: Iterable[ContainerInfo],
    held_tasks: set[str],
    task_images: set[str],
    protected: set[str],
    used_pct: float | None,
    total_bytes: int,
    limits: GcLimits,
    now: float,
    force: bool = False,
) -> GcPlan:
    """`task_images`: the image references of this agent's tasks (pending or running); `used_pct`,
    `total_bytes`: the engine filesystem's (None: unknown — no pressure rule); `force`: act as under
    pressure (the `prune` remediation)."""
    containers = list(containers)
    out = GcPlan(pressure=force or (used_pct is not None and used_pct >= limits.high_pct))
    in_use = {c.image_id for c in containers}
    never = task_images | protected
    candidates: list[ImageInfo] = []
    for img in images:
        if img.id in in_use or _named(img, never):
            out.kept_in_use += 1
        else:
            candidates.append(img)
    candidates.sort(key=lambda i: (i.last_used, i.id))
    if out.pressure:
        target = limits.low_pct
        used = used_pct if used_pct is not None else 100.0
        for img in candidates:
            if used_pct is not None and not force and used <= target:
                break
            out.images.append(img)
            if total_bytes > 0:
                used -= 100.0 * img.size / total_bytes
        out.reason = "forced (prune)" if force else f"disk {used_pct:.1f}% used ≥ {limits.high_pct:g}%"
    elif limits.unused_age_s > 0:
        old = [i for i in candidates if now - i.last_used >= limits.unused_age_s]
        out.images = old[:limits.max_per_cycle]
        out.reason = f"unused ≥ {limits.unused_age_s:g}s"
    for c in containers:
        if not c.ours or c.state not in ("exited", "dead", "created") or (c.task_id is not None and c.task_id in held_tasks):
            continue
        if out.pressure or c.finished_at is None or now - c.finished_at >= limits.container_retention_s:
            out.containers.append(c)
    return out


def last_used(
    previous: Mapping[str, float], images: Iterable[str], containers: Iterable[ContainerInfo], now: float
) -> dict[str, float]:
    """The LRU book: images in use by a container now are used now; a new image is first seen now;
    images the engine no longer holds are forgotten."""
    using = {c.image_id for c in containers}
    return {i: (now if i in using else previous.get(i, now)) for i in images}
