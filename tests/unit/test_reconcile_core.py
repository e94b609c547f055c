"""Reconciliation wired into the Scheduler and the admin API: a real SQLite store, a fake clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from scheduler.api import make_app
from scheduler.audit import AuditLog
from scheduler.core import Scheduler, SchedulerConfig
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import FirstFit
from scheduler.store import SQLiteStore
from tests.unit.test_scheduler_core import Clock, node, report, spec
from titus_common.states import FinishReason as R
from titus_common.states import TaskState as S


def make(tmp_path: Path, clock: Clock, **config: Any) -> Scheduler:
    cfg = SchedulerConfig(**{"reconcile_grace": 60.0, **config})
    return Scheduler(SQLiteStore(tmp_path / "s.db"), FirstFit(), SchedulerMetrics(), cfg, clock=clock,
                     audit=AuditLog(tmp_path / "audit.jsonl"))


def test_empty_store_with_a_busy_agent_freezes_and_kills_nothing(tmp_path: Path) -> None:
    clock = Clock()
    s = make(tmp_path, clock)
    node(s, running=[f"task-{i}" for i in range(8)])
    clock.now += 120  # past the grace
    assert s.reconcile() == 0
    assert s.reconciler.frozen is not None and "unknownTask 8" in s.reconciler.frozen
    assert s.metrics.registry.get_sample_value("titus_scheduler_reconcile_frozen") == 1
    assert s.metrics.registry.get_sample_value("titus_scheduler_orphan_containers") == 8
    assert s.work_for("n1").kill == []
    assert '"event":"freeze"' in (tmp_path / "audit.jsonl").read_text()


def started(s: Scheduler, clock: Clock, count: int = 1) -> list[str]:
    job, _ = s.submit(spec(batch={"size": count}))
    s.schedule_pass()
    ids = [t.id for t in s.job_tasks(job.id)]
    for i in ids:
        report(s, i, S.STARTED, clock.now)
    return ids


def test_missing_task_is_declared_lost_only_after_grace_and_its_own_age(tmp_path: Path) -> None:
    clock = Clock()
    s = make(tmp_path, clock, missing_lost_after=30)
    node(s)
    (tid,) = started(s, clock)
    node(s, running=[])
    s.reconcile()
    clock.now += 40
    assert s.reconcile() == 0 and s.tasks[tid].state is S.STARTED  # in grace
    clock.now += 30
    assert s.reconcile() == 1
    assert s.tasks[tid].reason is R.LOST and s.tasks[tid].replaced_by is not None


def test_silent_hosts_lose_nothing_in_grace_even_past_lost_after(tmp_path: Path) -> None:
    clock = Clock()
    s = make(tmp_path, clock, disconnect_after=5, lost_after=10, reconcile_grace=3600.0)
    node(s)
    (tid,) = started(s, clock)
    clock.now += 100
    s.check_nodes()
    s.reconcile()
    assert s.tasks[tid].state is S.STARTED


def test_stuck_start_initiated_is_killed_then_replaced_as_crashed(tmp_path: Path) -> None:
    clock = Clock()
    s = make(tmp_path, clock, reconcile_grace=0.0)
    node(s)
    job, _ = s.submit(spec())
    s.schedule_pass()
    (t,) = s.job_tasks(job.id)
    s.work_for("n1")
    report(s, t.id, S.START_INITIATED, clock.now)
    node(s, running=[t.id])
    clock.now += 301
    assert s.reconcile() == 1
    assert t.state is S.KILL_INITIATED and t.message.startswith("stuckInState")
    assert s.work_for("n1").kill == [t.id]
    node(s, running=[])  # the agent killed it
    assert t.reason is R.CRASHED and t.replaced_by is not None
    assert s.metrics.registry.get_sample_value("titus_scheduler_stuck_timeouts_total",
                                               {"state": "StartInitiated"}) == 1


def test_stuck_launched_not_on_its_host_is_retried_as_crashed(tmp_path: Path) -> None:
    clock = Clock()
    s = make(tmp_path, clock, reconcile_grace=0.0)
    node(s)
    job, _ = s.submit(spec())
    s.schedule_pass()
    (t,) = s.job_tasks(job.id)
    clock.now += 301
    node(s, running=[])
    assert s.reconcile() == 1
    assert t.reason is R.CRASHED and "stuckInState: Launched" in t.message


async def test_admin_api_show_approve_unfreeze(tmp_path: Path) -> None:
    clock = Clock()
    s = make(tmp_path, clock, reconcile_grace=0.0, disconnect_after=5, lost_after=10,
             kill_burst=100, job_disruption_fraction=1.0)
    node(s, cpus=16)
    ids = started(s, clock, count=12)
    clock.now += 20
    s.check_nodes()
    s.reconcile()
    assert s.reconciler.frozen is not None
    client = TestClient(TestServer(make_app(s)))
    await client.start_server()
    try:
        doc = await (await client.get("/v1/admin/reconcile")).json()
        assert doc["frozen"] and doc["mismatch"]["disconnected"] == 12 and len(doc["proposed"]) == 12
        r = await client.post("/v1/admin/reconcile/approve", json={"actions": [f"declareLost:{ids[0]}"]})
        assert (await r.json())["approved"] == [f"declareLost:{ids[0]}"]
        assert (await client.post("/v1/admin/reconcile/approve", json={"actions": "x"})).status == 400
        assert (await client.post("/v1/admin/reconcile/approve", json={"actions": ["nope"]})).status == 404
        s.reconcile()
        assert s.tasks[ids[0]].reason is R.LOST
        assert all(s.tasks[i].state is S.STARTED for i in ids[1:])
        doc = await (await client.post("/v1/admin/reconcile/unfreeze", json={"by": "alice"})).json()
        assert doc == {"wasFrozen": True, "frozen": False}
    finally:
        await client.close()
