"""Orphan cgroups and checkpoints (issue #12's `leaks` check, docs/health.md): found by the agent's
periodic GC and counted into `titus_agent_network_leaks_removed_total{kind="cgroup"|"checkpoint"}`.

- cgroups: the engine's per-container cgroup directories (cgroupfs driver: v1
  `<root>/<controller>/docker/<64-hex id>`, v2 `<root>/docker/<64-hex id>`) whose container the
  engine no longer lists, with an empty `cgroup.procs` and no child cgroup, are removed with `rmdir`
  (the kernel refuses it on a cgroup that holds a process: never anything but an empty cgroup goes).
  The agent itself creates no cgroup directory (its cpusets are written by `docker update`,
  agent/host/cpuset_apply.py), and systemd-driver scopes are systemd's to remove.
- checkpoints: `<task>.json` in the state dir's `tasks/` with no runner (a crash between forget and
  delete) older than a grace, and `<task>.torn` records set aside after a reboot
  (agent/checkpoint.py): each counted once when first seen; a torn file older than the retention is
  deleted, an orphan record is left for the next start to adopt or an operator to inspect.

Decisions are pure functions over what a scan read (`orphan_cgroups`, `judge_checkpoints`); the
scans and removals are separate, on a thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.checkpoint import CheckpointStore, TaskCheckpoint
from agent.docker_api import Docker, DockerError, DockerUnavailable
from agent.host.base import LiveTasks, launching
from agent.metrics import AgentMetrics

__all__ = ["CgroupDir", "CheckpointFile", "CheckpointVerdict", "OrphanResource", "judge_checkpoints",
           "orphan_cgroups", "remove_cgroups", "scan_cgroups", "scan_checkpoints"]

log = logging.getLogger("titus.agent.orphans")

CONTAINER_ID = re.compile(r"^[0-9a-f]{64}$")
CHECKPOINT_GRACE_S = 300.0  # a record saved moments before its runner is registered is no orphan
TORN_RETENTION_S = 7 * 86400.0  # long enough for an operator to look at what the power loss tore


@dataclass(frozen=True)
class CgroupDir:
    path: Path
    container_id: str
    procs_empty: bool  # cgroup.procs read and empty (unreadable: False)
    children: bool  # some child cgroup directory


def orphan_cgroups(dirs: Iterable[CgroupDir], engine_ids: set[str]) -> list[Path]:
    """The container cgroups to remove: empty, childless, of a container the engine does not list."""
    return [d.path for d in dirs if d.procs_empty and not d.children and d.container_id not in engine_ids]


def _cgroup_dir(path: Path) -> CgroupDir:
    try:
        procs_empty = (path / "cgroup.procs").read_text().strip() == ""
    except OSError:
        procs_empty = False
    try:
        children = any(p.is_dir() and not p.is_symlink() for p in path.iterdir())
    except OSError:
        children = True
    return CgroupDir(path, path.name, procs_empty, children)


def scan_cgroups(root: Path) -> list[CgroupDir]:
    """Every engine-made container cgroup directory under the cgroup mount (v1 or v2, cgroupfs driver)."""
    if (root / "cgroup.controllers").exists():
        bases = [root / "docker"]
    else:
        try:  # v1: one hierarchy per controller; `cpu` → `cpu,cpuacct` links would count it twice
            bases = sorted(c / "docker" for c in root.iterdir() if c.is_dir() and not c.is_symlink())
        except OSError:
            return []
    found: list[CgroupDir] = []
    for base in bases:
        try:
            entries = sorted(base.iterdir())
        except OSError:
            continue
        found += [_cgroup_dir(p) for p in entries
                  if CONTAINER_ID.match(p.name) and p.is_dir() and not p.is_symlink()]
    return found


def remove_cgroups(paths: Sequence[Path], rmdir: Callable[[Path], None] = os.rmdir) -> list[Path]:
    """rmdir each (the kernel refuses a busy cgroup: EBUSY); the ones removed."""
    removed: list[Path] = []
    for p in paths:
        try:
            rmdir(p)
        except FileNotFoundError:
            continue  # gone meanwhile (the engine removed it after all)
        except OSError as e:
            log.warning("orphan cgroup %s not removed: %s", p, e)
            continue
        removed.append(p)
    return removed


@dataclass(frozen=True)
class CheckpointFile:
    path: Path
    task_id: str
    torn: bool
    mtime: float


@dataclass
class CheckpointVerdict:
    orphans: list[Path] = field(default_factory=list)  # no runner (every torn record, too)
    expired: list[Path] = field(default_factory=list)  # torn and older than the retention: delete


def judge_checkpoints(files: Iterable[CheckpointFile], live: set[str], now: float,
                      grace_s: float = CHECKPOINT_GRACE_S, torn_retention_s: float = TORN_RETENTION_S
                      ) -> CheckpointVerdict:
    v = CheckpointVerdict()
    for f in files:
        age = now - f.mtime
        if f.torn:
            v.orphans.append(f.path)
            if age >= torn_retention_s:
                v.expired.append(f.path)
        elif f.task_id not in live and age >= grace_s:
            v.orphans.append(f.path)
    return v


def scan_checkpoints(directory: Path) -> list[CheckpointFile]:
    """The task records and torn records in the store's directory (not its temp or boot-id files)."""
    out: list[CheckpointFile] = []
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return out
    for p in entries:
        if p.name.startswith(".") or p.suffix not in (".json", ".torn"):
            continue
        try:
            st = p.lstat()
        except OSError:
            continue
        if p.is_file() and not p.is_symlink():
            out.append(CheckpointFile(p, p.stem, p.suffix == ".torn", st.st_mtime))
    return out


class OrphanResource:
    """Host resource (agent/host/base.py) whose only work is the GC of orphan cgroups and checkpoints."""

    name = "orphans"

    def __init__(self, docker: Docker, metrics: AgentMetrics, store: CheckpointStore, cgroup_root: Path,
                 *, clock: Callable[[], float] = time.time,
                 rmdir: Callable[[Path], None] = os.rmdir) -> None:
        self.docker = docker
        self.metrics = metrics
        self.store = store
        self.cgroup_root = cgroup_root
        self.clock = clock
        self.rmdir = rmdir
        self._seen: set[Path] = set()  # orphan checkpoints already counted

    async def start(self, records: Sequence[TaskCheckpoint]) -> None:
        return None

    async def reconcile(self, tasks: LiveTasks) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def gc(self, tasks: LiveTasks) -> None:
        if launching(tasks):  # a container being started may have an empty cgroup for a moment
            return
        try:
            await self._gc_checkpoints(set(tasks))
            await self._gc_cgroups()
        except Exception as e:  # never let the agent's loop die
            log.warning("orphan GC failed: %s", e)

    async def _gc_cgroups(self) -> None:
        # Scanned before the engine is asked: a container whose cgroup exists now was created (and is
        # listed) before the listing, so a fresh container is never taken for an orphan.
        dirs = await asyncio.to_thread(scan_cgroups, self.cgroup_root)
        if not dirs:
            return
        try:
            engine_ids = {str(c.get("Id")) for c in await self.docker.list_containers()}
        except (DockerUnavailable, DockerError) as e:
            log.warning("orphan cgroup GC: cannot list containers: %s", e)
            return
        removed = await asyncio.to_thread(remove_cgroups, orphan_cgroups(dirs, engine_ids), self.rmdir)
        if removed:
            self.metrics.network_leaks_removed.labels("cgroup").inc(len(removed))
            log.warning("orphan container cgroups removed: %s", [str(p) for p in removed])

    async def _gc_checkpoints(self, live: set[str]) -> None:
        files = await asyncio.to_thread(scan_checkpoints, self.store.dir)
        verdict = judge_checkpoints(files, live, self.clock())
        new = [p for p in verdict.orphans if p not in self._seen]
        self._seen = set(verdict.orphans)
        if new:
            self.metrics.network_leaks_removed.labels("checkpoint").inc(len(new))
            log.warning("orphan checkpoints (no runner) found: %s", [p.name for p in new])
        for p in verdict.expired:
            try:
                await asyncio.to_thread(p.unlink, True)
            except OSError as e:
                log.warning("torn checkpoint %s not removed: %s", p, e)
                continue
            self._seen.discard(p)
            log.warning("torn checkpoint %s removed after the retention", p.name)
