"""Health at placement, the same table for both placers (FirstFit and the engine in spread and pack):
a taint the job does not tolerate excludes the host, a tolerated one does not, a cordon is never
tolerated, a degraded host comes after healthy ones (the engine's `degradedHost` fitness term)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scheduler.core import Scheduler, SchedulerConfig
from scheduler.engine import Engine, HostInput, HostTable, Request
from scheduler.fitness import DEGRADED_PENALTY, Mode
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import FirstFit
from scheduler.store import SQLiteStore
from titus_common.jobspec import parse_job_spec
from titus_common.protocol import CapacityReport, HealthCondition, HealthStatus, NodeReport


class Clock:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def cond(check: str, status: HealthStatus, reason: str = "R") -> HealthCondition:
    return HealthCondition(check=check, status=status, reason=reason, since=1.0, observed_at=1.0)


FAILED_ENGINE = [cond("engine", HealthStatus.FAILED, "EngineDown")]
FAILED_REGISTRY = [cond("registry", HealthStatus.FAILED, "RegistryUnreachable")]
DEGRADED_DISK = [cond("disk", HealthStatus.DEGRADED, "DiskPressure")]
OK = [cond("engine", HealthStatus.OK)]

# (name, {host: (health, cordoned)}, job tolerations, expected host or None)
CASES: list[tuple[str, dict[str, tuple[list[HealthCondition], bool]], str, str | None]] = [
    ("failed host excluded", {"a": (FAILED_ENGINE, False), "b": (OK, False)}, "", "b"),
    ("tolerated taint is a host like any other", {"a": (FAILED_REGISTRY, False), "b": (OK, False)},
     "health.registry", "a"),
    ("a toleration of another check does not help", {"a": (FAILED_ENGINE, False), "b": (OK, False)},
     "health.registry", "b"),
    ("only a tainted host, tolerated", {"a": (FAILED_REGISTRY, False)}, "health.registry", "a"),
    ("only a tainted host, not tolerated", {"a": (FAILED_ENGINE, False)}, "", None),
    ("a cordon is never tolerated", {"a": (OK, True), "b": (OK, False)}, "cordoned", "b"),
    ("degraded comes after healthy", {"a": (DEGRADED_DISK, False), "b": (OK, False)}, "", "b"),
    ("degraded still takes work alone", {"a": (DEGRADED_DISK, False), "b": (FAILED_ENGINE, False)}, "", "a"),
    ("two taints, both tolerated", {"a": (FAILED_ENGINE + FAILED_REGISTRY, False), "b": (FAILED_ENGINE, False)},
     "health.registry,health.engine", "a"),
]


def make(tmp_path: Path, placer: str) -> Scheduler:
    p: Any = FirstFit() if placer == "firstfit" else Engine(Mode(placer))
    return Scheduler(SQLiteStore(tmp_path / "s.db"), p, SchedulerMetrics(), SchedulerConfig(), clock=Clock())


@pytest.mark.parametrize("placer", ["firstfit", "spread", "pack"])
@pytest.mark.parametrize(("name", "hosts", "tolerate", "expected"), CASES, ids=[c[0] for c in CASES])
def test_health_at_placement(tmp_path: Path, placer: str, name: str, hosts: dict[str, tuple[list[HealthCondition], bool]],
                             tolerate: str, expected: str | None) -> None:
    s = make(tmp_path, placer)
    for host, (health, cordoned) in hosts.items():
        s.heartbeat(NodeReport(id=host, capacity=CapacityReport(cpus=4, memory_mib=4096, disk_mib=100_000),
                               health=health))
        if cordoned:
            s.set_cordon(host, True, "maintenance")
    attributes = {"titus.health.tolerate": tolerate} if tolerate else {}
    job, _ = s.submit(parse_job_spec({
        "appName": "app", "owner": "me", "attributes": attributes, "batch": {"size": 1},
        "container": {"image": "busybox:latest", "command": ["true"], "resources": {"cpu": 1, "memoryMiB": 128}},
    }))
    s.schedule_pass()
    (task,) = s.job_tasks(job.id)
    assert task.node_id == expected
    if expected is None:
        assert task.message.startswith("waiting: no Ready host takes new work: a: health.engine (EngineDown")


def test_degraded_term_in_the_engine_breakdown() -> None:
    """A degraded host that is otherwise the better fit (emptier, in spread) still loses, and the
    decision's breakdown names the term."""
    table = HostTable([HostInput("a", 16, 16384, 1e5, 16, 16384, 1e5, degraded=True),
                       HostInput("b", 16, 16384, 1e5, 2, 2048, 1e5)])
    d = Engine(Mode.SPREAD).place(table, Request("t", "j", 1, 128, 0))
    assert d.host == "b" and d.breakdown["degradedHost"] == 0.0
    table = HostTable([HostInput("a", 16, 16384, 1e5, 16, 16384, 1e5, degraded=True)])
    d = Engine(Mode.PACK).place(table, Request("t", "j", 1, 128, 0))
    assert d.host == "a" and d.breakdown["degradedHost"] == -DEGRADED_PENALTY
    assert np.isclose(sum(d.breakdown.values()) + DEGRADED_PENALTY, sum(v for k, v in d.breakdown.items()
                                                                         if k != "degradedHost"))


def test_engine_reasons_name_the_untolerated_taints(tmp_path: Path) -> None:
    s = make(tmp_path, "spread")
    s.heartbeat(NodeReport(id="a", capacity=CapacityReport(cpus=4, memory_mib=4096, disk_mib=100_000),
                           health=FAILED_ENGINE + FAILED_REGISTRY))
    s.heartbeat(NodeReport(id="b", capacity=CapacityReport(cpus=0.5, memory_mib=4096, disk_mib=100_000), health=OK))
    job, _ = s.submit(parse_job_spec({
        "appName": "app", "owner": "me", "attributes": {"titus.health.tolerate": "health.registry"},
        "batch": {"size": 1},
        "container": {"image": "busybox:latest", "command": ["true"], "resources": {"cpu": 1, "memoryMiB": 128}},
    }))
    s.schedule_pass()
    (task,) = s.job_tasks(job.id)
    assert task.node_id is None
    assert sorted(task.placement_failures) == [("not enough cpu", 1), ("taint health.engine", 1)]
