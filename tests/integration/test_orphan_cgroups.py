"""Orphan-cgroup GC (agent/host/orphans.py) against the host's real cgroup hierarchy and engine:
an empty engine-style cgroup of a container the engine does not list is removed in every
controller; a running container's cgroup, a dir with a child cgroup and one holding a process
are left alone. Everything the test makes is removed even when it fails."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from agent.checkpoint import CheckpointStore
from agent.docker_api import Docker
from agent.host.orphans import OrphanResource, scan_cgroups
from agent.metrics import AgentMetrics

CGROUP_ROOT = Path("/sys/fs/cgroup")
IMAGE = "127.0.0.1:5000/titus/busybox:latest"


def _docker_dirs() -> list[Path]:
    """`<ctrl>/docker` of every v1 controller hierarchy the engine uses (symlinked aliases skipped)."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        pytest.fail("this test is written for the cgroup v1 hierarchy of this host")
    return sorted(c / "docker" for c in CGROUP_ROOT.iterdir()
                  if c.is_dir() and not c.is_symlink() and (c / "docker").is_dir())


def _remove_tree(path: Path) -> None:
    """rmdir depth first (cgroup dirs hold only kernel files; rmdir is how they go)."""
    if not path.is_dir():
        return
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            _remove_tree(child)
    path.rmdir()


@pytest.fixture
def made() -> Iterator[list[Path]]:
    """Cgroup dirs the test creates: removed at the end whatever happened."""
    paths: list[Path] = []
    yield paths
    for p in reversed(paths):
        try:
            _remove_tree(p)
        except OSError:
            pass


@pytest.fixture
def running(engine: docker.DockerClient) -> Iterator[str]:
    container = engine.containers.run(IMAGE, ["sleep", "300"], detach=True,
                                      labels={"titus.test": "orphan-cgroups"})
    try:
        yield str(container.id)
    finally:
        container.remove(force=True)


def _gc(tmp_path: Path) -> AgentMetrics:
    metrics = AgentMetrics()
    resource = OrphanResource(Docker(), metrics, CheckpointStore(tmp_path / "state"), CGROUP_ROOT)
    asyncio.run(resource.gc({}))
    return metrics


def test_gc_removes_only_empty_unlisted_cgroups(tmp_path: Path, made: list[Path], running: str) -> None:
    bases = _docker_dirs()
    assert bases, "no <controller>/docker cgroup dir on this host"
    orphan_id, nested_id, busy_id = (secrets.token_hex(32) for _ in range(3))
    orphans = [b / orphan_id for b in bases]
    nested = [b / nested_id for b in bases]
    for d in orphans + nested:
        d.mkdir()
        made.append(d)
    for d in nested:  # a child cgroup: the dir is not empty, never removed
        (d / "child").mkdir()
        made.append(d / "child")
    pids = CGROUP_ROOT / "pids" / "docker"
    busy = pids / busy_id  # holds a process: the kernel would refuse, the GC must not even try
    busy.mkdir()
    made.append(busy)
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        (busy / "cgroup.procs").write_text(str(sleeper.pid))
        running_dirs = [b / running for b in bases if (b / running).is_dir()]
        assert running_dirs, f"the running container {running[:12]} has no cgroup under docker/"
        assert {d.path for d in scan_cgroups(CGROUP_ROOT)} >= set(orphans) | set(running_dirs)

        metrics = _gc(tmp_path)

        assert [d for d in orphans if d.exists()] == []
        assert all(d.is_dir() and (d / "child").is_dir() for d in nested)
        assert busy.is_dir() and str(sleeper.pid) in (busy / "cgroup.procs").read_text().split()
        assert all(d.is_dir() for d in running_dirs)
        removed = metrics.registry.get_sample_value("titus_agent_network_leaks_removed_total", {"kind": "cgroup"})
        assert removed is not None and removed >= len(orphans)
    finally:
        # Back to the root pids cgroup, so the busy dir can go.
        try:
            (CGROUP_ROOT / "pids" / "cgroup.procs").write_text(str(sleeper.pid))
        except OSError:
            pass
        sleeper.kill()
        sleeper.wait()
