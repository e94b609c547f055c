"""Queue age: why a task is pending (the API's `pendingReason`), the age buckets and the latency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest

from scheduler.api import make_app
from scheduler.core import Scheduler, SchedulerConfig
from scheduler.metrics import SchedulerMetrics
from scheduler.pending import PendingReason as P
from scheduler.pending import age_buckets, why_pending
from scheduler.placement import FirstFit, NodeView
from scheduler.store import SQLiteStore
from tests.unit.test_scheduler_core import Clock, node, spec
from titus_common.jobspec import Resources
from titus_common.states import TaskState as S


def view(cpus: float = 4, mem: int = 4096, disk: int = 10_000) -> NodeView:
    return NodeView("n", cpus, mem, disk, {})


def demand(cpu: float = 1, mem: int = 128, disk: int = 100) -> Resources:
    return Resources.model_validate({"cpu": cpu, "memoryMiB": mem, "diskMiB": disk})


@pytest.mark.parametrize(
    ("ready", "able", "want", "reason"),
    [
        ([], [], demand(), P.NO_READY_HOST),
        ([view()], [], demand(), P.POSTURE),
        ([view(cpus=0.5)], [view(cpus=0.5)], demand(cpu=1), P.INSUFFICIENT_CPU),
        ([view(mem=64)], [view(mem=64)], demand(mem=128), P.INSUFFICIENT_MEMORY),
        ([view(disk=50)], [view(disk=50)], demand(disk=100), P.INSUFFICIENT_DISK),
        # cpus free on one host, memory on another: neither takes it alone
        ([view(cpus=4, mem=64), view(cpus=0.5)], [view(cpus=4, mem=64), view(cpus=0.5)], demand(), P.NO_SINGLE_HOST_FITS),
    ],
)
def test_why_pending_names_the_first_blocking_reason(
    ready: list[NodeView], able: list[NodeView], want: Resources, reason: P
) -> None:
    assert why_pending(want, ready, able) is reason


def make(tmp_path: Path, clock: Clock) -> Scheduler:
    return Scheduler(SQLiteStore(tmp_path / "s.db"), FirstFit(), SchedulerMetrics(), SchedulerConfig(), clock=clock)


def metric(s: Scheduler, name: str, **labels: str) -> float | None:
    return s.metrics.registry.get_sample_value(name, labels)


def test_reasons_through_the_scheduler_and_counts(tmp_path: Path) -> None:
    clock = Clock()
    s = make(tmp_path, clock)
    job, _ = s.submit(spec(batch={"size": 3}))
    ids = [t.id for t in s.job_tasks(job.id)]
    assert {s.pending_reason(s.tasks[i]) for i in ids} == {"notYetConsidered"}
    s.schedule_pass()
    assert {s.pending_reason(s.tasks[i]) for i in ids} == {"noReadyHost"}
    assert metric(s, "titus_scheduler_pending_tasks", reason="noReadyHost") == 3
    node(s, cpus=2)  # room for two of the three 1-cpu tasks
    clock.now += 2
    assert s.schedule_pass() == 2
    placed = [i for i in ids if s.tasks[i].state is S.LAUNCHED]
    waiting = [i for i in ids if s.tasks[i].state is S.ACCEPTED]
    assert len(waiting) == 1 and s.pending_reason(s.tasks[waiting[0]]) == "insufficientCpu"
    assert all(s.pending_reason(s.tasks[i]) is None for i in placed)
    assert metric(s, "titus_scheduler_pending_tasks", reason="insufficientCpu") == 1
    assert metric(s, "titus_scheduler_pending_tasks", reason="noReadyHost") == 0
    # accepted → launched latency: both placed tasks waited 2 s
    assert metric(s, "titus_scheduler_accepted_to_launched_seconds_count") == 2
    assert metric(s, "titus_scheduler_accepted_to_launched_seconds_sum") == 4


def test_age_buckets_are_cumulative(tmp_path: Path) -> None:
    clock = Clock()
    s = make(tmp_path, clock)
    s.submit(spec())
    clock.now += 400  # > 1 and > 5 minutes
    s.submit(spec())
    clock.now += 61  # the first is 7m41s old, the second 61 s
    assert age_buckets(s.pending_tasks(), clock.now) == {60.0: 2, 300.0: 1, 600.0: 0, 900.0: 0}
    assert metric(s, "titus_scheduler_pending_tasks_older_than", seconds="300") == 1
    assert metric(s, "titus_scheduler_pending_tasks_older_than", seconds="900") == 0
    text = generate_latest(s.metrics.registry).decode()
    assert 'titus_scheduler_pending_tasks_older_than{seconds="60"} 2.0' in text


def test_back_off_is_a_reason(tmp_path: Path) -> None:
    clock = Clock()
    s = make(tmp_path, clock)
    job, _ = s.submit(spec())
    t = s.job_tasks(job.id)[0]
    t.not_before = clock.now + 30
    assert s.pending_reason(t) == P.RETRY_BACKOFF.value


async def test_api_field(tmp_path: Path) -> None:
    clock = Clock()
    s = make(tmp_path, clock)
    job, _ = s.submit(spec())
    s.schedule_pass()
    async with TestClient(TestServer(make_app(s))) as client:
        resp = await client.get(f"/v1/tasks?jobId={job.id}")
        doc: dict[str, Any] = await resp.json()
        assert [t["pendingReason"] for t in doc["tasks"]] == ["noReadyHost"]
        one = await (await client.get(f"/v1/tasks/{doc['tasks'][0]['id']}")).json()
        assert one["pendingReason"] == "noReadyHost"
