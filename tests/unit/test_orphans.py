"""Orphan cgroups and checkpoints (agent/host/orphans.py): which ones the scans find and the pure
decisions pick, on temporary trees; the resource's GC removes and counts them (fake engine, fake rmdir)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from agent.checkpoint import CheckpointStore, TaskCheckpoint
from agent.host.orphans import (
    CheckpointFile, OrphanResource, judge_checkpoints, orphan_cgroups, remove_cgroups, scan_cgroups, scan_checkpoints,
)
from agent.metrics import AgentMetrics
from titus_common.jobspec import ContainerSpec
from titus_common.protocol import TaskAssignment
from titus_common.states import TaskState

A, B, C, D = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)
NOW = 1_900_000_000.0


def cgroup(base: Path, cid: str, procs: str | None = "", child: bool = False) -> Path:
    d = base / cid
    d.mkdir(parents=True)
    if procs is not None:
        (d / "cgroup.procs").write_text(procs)
    (d / "cpuset.cpus").write_text("0-1\n")
    if child:
        (d / "sub").mkdir()
    return d


# (the directory's cgroup.procs (None: unreadable), a child cgroup, the engine lists it) → orphan?
CGROUP_CASES = [
    ("", False, False, True),  # empty, childless, engine does not know it: orphan
    ("", False, True, False),  # the engine still lists the container (stopped, or starting)
    ("4242\n", False, False, False),  # a process in it: never
    ("", True, False, False),  # a child cgroup: not empty
    (None, False, False, False),  # cgroup.procs unreadable: not known to be empty
]


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize(("procs", "child", "listed", "orphan"), CGROUP_CASES)
def test_orphan_cgroup_decision(tmp_path: Path, version: str, procs: str | None, child: bool, listed: bool,
                                orphan: bool) -> None:
    if version == "v2":
        (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
        bases = [tmp_path / "docker"]
    else:
        bases = [tmp_path / "cpuset" / "docker", tmp_path / "memory" / "docker"]
    want = [cgroup(base, A, procs, child) for base in bases]
    for base in bases:
        cgroup(base, "not-a-container-id")  # some other cgroup of the engine's: never looked at
    (tmp_path / "systemd").mkdir()  # a v1 hierarchy with no docker directory
    got = orphan_cgroups(scan_cgroups(tmp_path), {A} if listed else {B})
    assert got == (sorted(want) if orphan else [])


def test_scan_skips_controller_links_and_systemd_scopes(tmp_path: Path) -> None:
    cgroup(tmp_path / "cpu,cpuacct" / "docker", A)
    (tmp_path / "cpu").symlink_to("cpu,cpuacct")
    cgroup(tmp_path / "cpuset" / "system.slice", f"docker-{B}.scope")  # systemd's to remove
    assert [d.path for d in scan_cgroups(tmp_path)] == [tmp_path / "cpu,cpuacct" / "docker" / A]
    assert scan_cgroups(tmp_path / "missing") == []


def test_remove_cgroups_rmdir_only_and_survives_refusals(tmp_path: Path) -> None:
    busy, gone, fine = tmp_path / "busy", tmp_path / "gone", tmp_path / "fine"
    calls: list[Path] = []

    def rmdir(p: Path) -> None:
        calls.append(p)
        if p == busy:
            raise OSError(16, "Device or resource busy")
        if p == gone:
            raise FileNotFoundError(p)

    assert remove_cgroups([busy, gone, fine], rmdir) == [fine]
    assert calls == [busy, gone, fine]
    # The real rmdir never removes a directory that holds anything.
    full = cgroup(tmp_path / "docker", A)
    assert remove_cgroups([full]) == [] and full.is_dir()


GRACE, RETENTION = 300.0, 7 * 86400.0


@pytest.mark.parametrize(("name", "age", "live", "orphan", "expired"), [
    ("t1.json", 10_000, True, False, False),  # its runner holds it
    ("t1.json", 10_000, False, True, False),  # no runner: orphan, left in place
    ("t1.json", 10, False, False, False),  # saved moments ago, runner about to be registered
    ("t1.torn", 10, False, True, False),  # set aside after a reboot: counted, kept for a while
    ("t1.torn", RETENTION + 1, False, True, True),  # past the retention: deleted
    ("t1.torn", RETENTION + 1, True, True, True),  # a live task of that id does not own a torn record
])
def test_checkpoint_decision(tmp_path: Path, name: str, age: float, live: bool, orphan: bool,
                             expired: bool) -> None:
    p = tmp_path / name
    p.write_text("{}")
    os.utime(p, (NOW - age, NOW - age))
    (tmp_path / ".boot_id").write_text("x")
    (tmp_path / ".t2.json.tmp123").write_text("")
    (tmp_path / "notes.txt").write_text("")
    files = scan_checkpoints(tmp_path)
    assert files == [CheckpointFile(p, "t1", p.suffix == ".torn", NOW - age)]
    v = judge_checkpoints(files, {"t1"} if live else set(), NOW, GRACE, RETENTION)
    assert (v.orphans, v.expired) == ([p] if orphan else [], [p] if expired else [])


class FakeDocker:
    def __init__(self, ids: list[str]) -> None:
        self.ids = ids

    async def list_containers(self, *labels: str) -> list[dict[str, Any]]:
        assert labels == ()  # every container, not only the agent's
        return [{"Id": i} for i in self.ids]


def record(task_id: str, state: TaskState = TaskState.STARTED) -> TaskCheckpoint:
    a = TaskAssignment(task_id=task_id, job_id="j1", index=0, container=ContainerSpec(image="busybox"),
                       accepted_at=1.0)
    return TaskCheckpoint(assignment=a, state=state, timestamps={state: 2.0})


def removed(metrics: AgentMetrics, kind: str) -> float:
    value = metrics.registry.get_sample_value("titus_agent_network_leaks_removed_total", {"kind": kind})
    return value or 0.0


async def test_gc_removes_counts_once_and_waits_for_launches(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    orphan, listed, busy = cgroup(root / "cpuset" / "docker", A), cgroup(root / "cpuset" / "docker", B), \
        cgroup(root / "cpuset" / "docker", C, "77\n")
    store = CheckpointStore(tmp_path / "state")
    store.save(record("held"))
    store.save(record("forgotten"))
    store.flush()
    torn = store.dir / "old.torn"
    torn.write_text("garbage")
    now = [NOW]
    for p in store.dir.iterdir():
        os.utime(p, (NOW - 3600, NOW - 3600))
    rmdirs: list[Path] = []
    metrics = AgentMetrics()
    res = OrphanResource(FakeDocker([B, D]), metrics, store, root,  # type: ignore[arg-type]
                         clock=lambda: now[0], rmdir=rmdirs.append)

    await res.gc({"held": record("held"), "new": record("new", TaskState.ACCEPTED)})
    assert rmdirs == [] and removed(metrics, "cgroup") == 0  # a launch is mid-setup: nothing done

    await res.gc({"held": record("held")})
    assert rmdirs == [orphan]  # not the one the engine lists, not the one with a process
    assert listed.is_dir() and busy.is_dir()
    assert removed(metrics, "cgroup") == 1
    assert removed(metrics, "checkpoint") == 2  # forgotten.json and old.torn
    await res.gc({"held": record("held")})
    assert removed(metrics, "checkpoint") == 2  # the same orphans are not counted again
    assert (store.dir / "forgotten.json").exists() and torn.exists()

    now[0] = NOW + RETENTION
    await res.gc({"held": record("held")})
    assert not torn.exists() and (store.dir / "forgotten.json").exists() and (store.dir / "held.json").exists()
    assert removed(metrics, "checkpoint") == 2
