"""Host health at the scheduler: a failed condition or a cordon keeps new work off a host (a taint
with the reason, visible on the node and in the pending task's message); degraded hosts come last;
a job may tolerate named health taints; the store keeps cordons across a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from scheduler.api import make_app
from scheduler.core import Scheduler, SchedulerConfig
from scheduler.core import NotFound
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import FirstFit
from scheduler.store import SQLiteStore
from titus_common.jobspec import parse_job_spec
from titus_common.protocol import CapacityReport, HealthCondition, HealthStatus, NodeReport
from titus_common.states import TaskState as S


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path, clock: Clock) -> Scheduler:
    return Scheduler(SQLiteStore(tmp_path / "s.db"), FirstFit(), SchedulerMetrics(), SchedulerConfig(), clock=clock)


def spec(**attributes: str) -> Any:
    return parse_job_spec({
        "appName": "app", "owner": "me", "attributes": attributes,
        "container": {"image": "busybox:latest", "command": ["true"], "resources": {"cpu": 1, "memoryMiB": 128}},
        "batch": {"size": 1},
    })


def cond(check: str, status: HealthStatus, reason: str = "R", message: str = "") -> HealthCondition:
    return HealthCondition(check=check, status=status, reason=reason, message=message, since=1.0, observed_at=1.0)


def beat(s: Scheduler, name: str, health: list[HealthCondition] | None = None) -> None:
    s.heartbeat(NodeReport(id=name, capacity=CapacityReport(cpus=4, memory_mib=4096, disk_mib=100_000),
                           health=health))


def placed_on(s: Scheduler, job_id: str) -> str | None:
    s.schedule_pass()
    (task,) = s.job_tasks(job_id)
    return task.node_id


@pytest.fixture
def sched(tmp_path: Path) -> Scheduler:
    return make(tmp_path, Clock())


@pytest.mark.parametrize(
    ("health_a", "expected"),
    [
        (None, "a"),  # an agent without health checks: as before
        ([cond("engine", HealthStatus.OK)], "a"),
        ([cond("engine", HealthStatus.FAILED, "EngineDown")], "b"),
        ([cond("disk", HealthStatus.DEGRADED, "DiskPressure")], "b"),  # degraded: placed last
    ],
)
def test_placement_by_health(sched: Scheduler, health_a: list[HealthCondition] | None, expected: str) -> None:
    beat(sched, "a", health_a)
    beat(sched, "b", [cond("engine", HealthStatus.OK)])
    job, _ = sched.submit(spec())
    assert placed_on(sched, job.id) == expected


def test_degraded_hosts_still_take_work_when_alone(sched: Scheduler) -> None:
    beat(sched, "a", [cond("disk", HealthStatus.DEGRADED, "DiskPressure")])
    job, _ = sched.submit(spec())
    assert placed_on(sched, job.id) == "a"


def test_failed_host_gets_no_work_and_the_task_says_why(sched: Scheduler) -> None:
    beat(sched, "a", [cond("engine", HealthStatus.FAILED, "EngineDown", "no ping")])
    job, _ = sched.submit(spec())
    assert placed_on(sched, job.id) is None
    (task,) = sched.job_tasks(job.id)
    assert task.state is S.ACCEPTED
    assert "no Ready host takes new work" in task.message and "health.engine (EngineDown: no ping)" in task.message
    assert sched.nodes["a"].taints == {"health.engine": "EngineDown: no ping"}
    # The engine comes back: the next heartbeat lifts the taint and the task is placed.
    beat(sched, "a", [cond("engine", HealthStatus.OK)])
    assert sched.nodes["a"].taints == {}
    assert placed_on(sched, job.id) == "a"


def test_a_job_may_tolerate_a_named_health_taint(sched: Scheduler) -> None:
    beat(sched, "a", [cond("registry", HealthStatus.FAILED, "RegistryUnreachable")])
    tolerant, _ = sched.submit(spec(**{"titus.health.tolerate": "health.registry"}))
    other, _ = sched.submit(spec(**{"titus.health.tolerate": "health.engine"}))
    sched.schedule_pass()
    assert sched.job_tasks(tolerant.id)[0].node_id == "a"
    assert sched.job_tasks(other.id)[0].node_id is None


def test_cordon_keeps_work_off_survives_restart_and_cannot_be_tolerated(tmp_path: Path) -> None:
    clock = Clock()
    s = make(tmp_path, clock)
    beat(s, "a")
    s.set_cordon("a", True, "disk replacement")
    s.store.close()
    s = make(tmp_path, clock)
    assert s.nodes["a"].cordoned and s.nodes["a"].taints == {"cordoned": "disk replacement"}
    beat(s, "a")  # a heartbeat does not lift a cordon
    job, _ = s.submit(spec(**{"titus.health.tolerate": "cordoned"}))
    assert placed_on(s, job.id) is None
    s.set_cordon("a", False)
    assert s.nodes["a"].taints == {} and s.nodes["a"].cordoned_at is None
    assert placed_on(s, job.id) == "a"


def test_cordon_of_an_unknown_node(sched: Scheduler) -> None:
    with pytest.raises(NotFound):
        sched.set_cordon("nope", True)


async def test_api_node_cordon_uncordon_and_get(sched: Scheduler) -> None:
    beat(sched, "a", [cond("engine", HealthStatus.FAILED, "EngineDown")])
    async with TestClient(TestServer(make_app(sched))) as client:
        r = await client.post("/v1/nodes/a/cordon", json={"reason": "maintenance"})
        assert r.status == 200
        doc = await r.json()
        assert doc["taints"] == {"cordoned": "maintenance", "health.engine": "EngineDown"}
        assert doc["health"][0]["reason"] == "EngineDown"
        assert (await client.post("/v1/nodes/a/cordon", json={"why": 1})).status == 400
        assert (await client.post("/v1/nodes/zz/cordon")).status == 404
        r = await client.post("/v1/nodes/a/uncordon")
        assert (await r.json())["taints"] == {"health.engine": "EngineDown"}
        assert (await (await client.get("/v1/nodes/a")).json())["cordoned"] is False
        assert (await client.get("/v1/nodes/zz")).status == 404
        metrics = await (await client.get("/metrics")).text()
        assert 'titus_scheduler_nodes_tainted{taint="health.engine"} 1.0' in metrics
