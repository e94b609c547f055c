"""Capacity groups: which group a job draws from, admission limits, and the placement order
(critical tier first, dominant resource fairness within a tier)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scheduler.capacity import CapacityGroup, Groups, OverLimit, UnknownGroup
from scheduler.config import SchedulerConfig, service_config
from scheduler.core import Scheduler
from scheduler.engine import Engine
from scheduler.metrics import SchedulerMetrics
from scheduler.records import JobRecord, TaskRecord
from scheduler.store import SQLiteStore
from tests.unit.test_scheduler_core import Clock, spec
from tests.unit.test_scheduling_passes import node
from titus_common.errors import ConfigError

GROUPS = Groups([
    CapacityGroup(name="prod", tier="critical", apps=["api"], limit_cpu=10, reserved_cpu=8),
    CapacityGroup(name="batch", owners=["data@"], limit_memory_mib=4096, reserved_cpu=4),
    CapacityGroup(name="ml", reserved_cpu=4),
])


def job_spec(app: str = "app", owner: str = "me", cpu: float = 1, mem: int = 128, n: int = 1, **kw: Any) -> Any:
    return spec(appName=app, owner=owner, batch={"size": n},
                container={"image": "busybox:latest", "command": ["true"], "resources": {"cpu": cpu, "memoryMiB": mem}},
                **kw)


@pytest.mark.parametrize("kw, group", [
    (dict(app="api"), "prod"),
    (dict(owner="data@"), "batch"),
    (dict(app="api", owner="data@"), "prod"),  # the app's group wins over the owner's
    (dict(capacityGroup="ml"), "ml"),
    (dict(app="api", capacityGroup="ml"), "ml"),  # named explicitly
    (dict(), "default"),
])
def test_group_of(kw: dict[str, Any], group: str) -> None:
    assert GROUPS.group_of(job_spec(**kw)).name == group


def test_unknown_group_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(UnknownGroup, match="no capacity group 'gpu'; known: batch, default, ml, prod"):
        GROUPS.group_of(job_spec(capacityGroup="gpu"), strict=True)
    # A stored job whose group left the config since draws from default (placement never fails on it).
    assert GROUPS.group_of(job_spec(capacityGroup="gpu")).name == "default"


def record(s: Any, job_id: str = "j") -> JobRecord:
    return JobRecord(id=job_id, spec=s, created_at=0.0)


@pytest.mark.parametrize("existing, new, error", [
    ([], job_spec(app="api", cpu=2, n=5), None),  # exactly the limit
    ([], job_spec(app="api", cpu=2, n=6), "would use 12 of its 10 cpu"),
    ([job_spec(app="api", cpu=1, n=8)], job_spec(app="api", cpu=1, n=3), "would use 11 of its 10 cpu"),
    ([job_spec(app="other", cpu=50, n=8)], job_spec(app="api", cpu=1, n=3), None),  # another group's use
    ([], job_spec(owner="data@", mem=1024, n=5), "would use 5120 of its 4096 MiB"),
    ([], job_spec(cpu=64, n=1000), None),  # default: no limit
])
def test_admission_limits(existing: list[Any], new: Any, error: str | None) -> None:
    jobs = [record(s, f"j{i}") for i, s in enumerate(existing)]
    if error is None:
        GROUPS.admit(new, jobs)
    else:
        with pytest.raises(OverLimit, match=error):
            GROUPS.admit(new, jobs)


def tasks_of(job: JobRecord, n: int, start: int = 0) -> list[TaskRecord]:
    return [TaskRecord(id=f"{job.id}-{i}", job_id=job.id, index=i, timestamps={"Accepted": float(start + i)})
            for i in range(n)]


def test_critical_first_then_dominant_resource_fairness() -> None:
    prod, batch, ml = record(job_spec(app="api"), "prod"), record(job_spec(owner="data@"), "batch"), record(
        job_spec(capacityGroup="ml"), "ml")
    jobs = {j.id: j for j in (prod, batch, ml)}
    # Oldest first overall: batch's, then ml's, then prod's.
    pending = tasks_of(batch, 4, 0) + tasks_of(ml, 4, 10) + tasks_of(prod, 2, 20)
    order = [t.job_id for t in GROUPS.order(pending, jobs, {"batch": (2.0, 256.0)}, (100.0, 102_400.0))]
    assert order[:2] == ["prod", "prod"]  # the critical tier before any flex task
    # Equal reservations (4 cpu): ml holds nothing, batch holds 2 → ml catches up first, then they
    # alternate (a tie goes to the name first in order), batch last once ml has no more.
    assert order[2:] == ["ml", "ml", "batch", "ml", "batch", "ml", "batch", "batch"]


def test_one_group_keeps_the_age_order() -> None:
    job = record(job_spec(), "d")
    pending = tasks_of(job, 3)
    assert GROUPS.order(pending, {"d": job}, {}, (1.0, 1.0)) == pending


def test_from_the_toml_keys_and_bad_groups_refused(tmp_path: Path) -> None:
    c = service_config({"capacity_groups": [{"name": "prod", "tier": "critical", "limit_cpu": 100}]})
    assert c.scheduler.capacity_groups[0].tier == "critical"
    with pytest.raises(ConfigError, match="given twice"):
        service_config({"capacity_groups": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(ConfigError, match="reserved_cpu exceeds limit_cpu"):
        service_config({"capacity_groups": [{"name": "a", "limit_cpu": 1, "reserved_cpu": 2}]})
    with pytest.raises(ConfigError):
        service_config({"capacity_groups": [{"name": "a", "tier": "gold"}]})


def test_the_scheduler_refuses_a_job_over_its_limit_and_stores_nothing(tmp_path: Path) -> None:
    config = SchedulerConfig(capacity_groups=[CapacityGroup(name="prod", apps=["api"], limit_cpu=4)])
    store = SQLiteStore(tmp_path / "s.db")
    s = Scheduler(store, Engine(), SchedulerMetrics(), config, clock=Clock())
    node(s, "n1", cpus=16)
    s.submit(job_spec(app="api", cpu=1, n=3))
    with pytest.raises(OverLimit, match="capacity group 'prod' would use 5 of its 4 cpu"):
        s.submit(job_spec(app="api", cpu=1, n=2))
    assert len(store.load().jobs) == 1 and len(s.jobs) == 1
    with pytest.raises(UnknownGroup):
        s.submit(job_spec(capacityGroup="nope"))
