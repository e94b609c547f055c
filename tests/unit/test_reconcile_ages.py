"""Reconciliation's ages, wired into the Scheduler (a real SQLite store, fake clocks): a replacement
just placed is not `missing`; orphans are killed after `orphan_kill_after` through the kill path and
never after an empty-store start or on a mass mismatch; a wall-clock step moves the ages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scheduler.audit import AuditLog
from scheduler.clockstep import ClockStep
from scheduler.core import Scheduler, SchedulerConfig
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import FirstFit
from scheduler.records import NodeStatus
from scheduler.store import SQLiteStore
from tests.unit.test_scheduler_core import Clock, node, report, spec
from titus_common.protocol import CapacityReport, NodeReport
from titus_common.states import FinishReason as R
from titus_common.states import TaskState as S


def make(tmp_path: Path, clock: Clock, monotonic: Clock | None = None, **config: Any) -> Scheduler:
    cfg = SchedulerConfig(**{"reconcile_grace": 60.0, **config})
    return Scheduler(SQLiteStore(tmp_path / "s.db"), FirstFit(), SchedulerMetrics(), cfg, clock=clock,
                     audit=AuditLog(tmp_path / "audit.jsonl"), monotonic=monotonic)


def restarted(tmp_path: Path, clock: Clock, **config: Any) -> Scheduler:
    """A scheduler restarted on a store that already knows this cell (one node)."""
    first = make(tmp_path, clock, **config)
    node(first)
    first.store.close()
    return make(tmp_path, clock, **config)


def beat(s: Scheduler, running: list[str] = [], unknown: list[str] = [], name: str = "n1") -> None:  # noqa: B006
    s.heartbeat(NodeReport(id=name, capacity=CapacityReport(cpus=16, memory_mib=4096, disk_mib=100_000),
                           running=running, unknown_containers=unknown))


def events(tmp_path: Path) -> str:
    return (tmp_path / "audit.jsonl").read_text()


# ---- missing only after missing_after --------------------------------------------------------


def test_replacements_right_after_an_unfreeze_do_not_freeze_the_cell_again(tmp_path: Path) -> None:
    clock = Clock()
    s = make(tmp_path, clock, reconcile_grace=0.0, disconnect_after=5, lost_after=10, kill_burst=100,
             job_disruption_fraction=1.0, missing_after=10, missing_lost_after=30)
    beat(s)
    job, _ = s.submit(spec(batch={"size": 12}))
    s.schedule_pass()
    ids = [t.id for t in s.job_tasks(job.id)]
    for i in ids:
        report(s, i, S.STARTED, clock.now)
    beat(s, running=ids)
    beat(s, name="n2")
    clock.now += 20  # n1 goes silent; n2 keeps reporting (nothing yet)
    beat(s, name="n2")
    s.check_nodes()
    s.reconcile()
    assert s.reconciler.frozen is not None and s.reconciler.plan.counts["disconnected"] == 12
    s.reconciler.approve(None, clock.now, "alice")  # the operator releases the dry run
    assert s.reconcile() == 12 and all(s.tasks[i].reason is R.LOST for i in ids)
    s.reconciler.unfreeze(clock.now, "alice")
    clock.now += 2  # past the replacements' back-off
    s.schedule_pass()
    new = [s.tasks[i].replaced_by for i in ids]
    assert all(r is not None and s.tasks[r].node_id == "n2" for r in new)
    s.work_for("n2")
    for r in new:
        assert r is not None
        report(s, r, S.STARTED, clock.now, node_id="n2")  # Started; n2's last report predates them
    s.reconcile()
    assert s.reconciler.frozen is None, s.reconciler.frozen
    assert s.reconciler.plan.counts.get("missing", 0) == 0 and len(s.reconciler.plan.watch) == 12
    clock.now += 1
    beat(s, running=[r for r in new if r is not None], name="n2")
    s.reconcile()
    assert s.reconciler.frozen is None and s.reconciler.plan.total == 0 and not s.reconciler.plan.watch


def test_a_task_its_agent_stops_reporting_still_becomes_missing_then_lost(tmp_path: Path) -> None:
    clock = Clock()
    s = make(tmp_path, clock, reconcile_grace=0.0, missing_after=10, missing_lost_after=30)
    beat(s)
    job, _ = s.submit(spec(batch={"size": 1}))
    s.schedule_pass()
    (t,) = s.job_tasks(job.id)
    report(s, t.id, S.STARTED, clock.now)
    beat(s, running=[])
    s.reconcile()
    assert s.reconciler.plan.counts.get("missing", 0) == 0  # watched, not counted
    clock.now += 10
    s.reconcile()
    assert s.reconciler.plan.counts["missing"] == 1 and t.state is S.STARTED
    clock.now += 20
    assert s.reconcile() == 1 and t.reason is R.LOST


# ---- orphans ---------------------------------------------------------------------------------


def test_orphans_are_killed_after_their_age_through_the_kill_path(tmp_path: Path) -> None:
    clock = Clock()
    s = restarted(tmp_path, clock, orphan_kill_after=10)
    beat(s, running=["zombie"], unknown=["c0ffee000001"])
    s.reconcile()
    clock.now += 30  # old enough, but in the start-up grace
    assert s.reconcile() == 0
    assert s.reconciler.plan.counts == {"unknownTask": 1, "unknownContainer": 1}
    assert '"why":"start-up grace' in events(tmp_path)
    assert s.work_for("n1").kill == []
    clock.now += 31
    assert s.reconcile() == 2
    resp = s.work_for("n1")
    assert (resp.kill, resp.kill_containers) == (["zombie"], ["c0ffee000001"])
    assert s.work_for("n1").kill == []  # sent; again only after redeliver_after
    tokens = s.reconciler.kill_path.bucket.tokens
    clock.now += 1
    beat(s, running=["zombie"], unknown=["c0ffee000001"])  # the agent has not killed them yet
    assert s.reconcile() == 0  # on their way: neither admitted nor spent again
    assert s.reconciler.kill_path.bucket.tokens >= tokens
    assert events(tmp_path).count('"event":"action.executed"') == 2
    assert s.metrics.registry.get_sample_value(
        "titus_scheduler_reconcile_actions_total", {"kind": "killOrphanContainer", "outcome": "executed"}) == 1
    beat(s)  # the agent killed both
    clock.now += 600
    resp = s.work_for("n1")
    assert (resp.kill, resp.kill_containers) == ([], [])


def test_orphans_still_reported_are_sent_again_after_redeliver_after(tmp_path: Path) -> None:
    clock = Clock()
    s = restarted(tmp_path, clock, orphan_kill_after=10, reconcile_grace=0.0)
    beat(s, unknown=["c0ffee000001"])
    s.reconcile()
    clock.now += 11
    assert s.reconcile() == 1 and s.work_for("n1").kill_containers == ["c0ffee000001"]
    beat(s, unknown=["c0ffee000001"])
    clock.now += s.config.redeliver_after
    assert s.work_for("n1").kill_containers == ["c0ffee000001"]


def test_after_an_empty_store_start_no_orphan_is_killed_without_approval(tmp_path: Path) -> None:
    clock = Clock()
    s = make(tmp_path, clock, orphan_kill_after=10, reconcile_grace=0.0)
    assert not s.reconciler.orphans_trusted
    beat(s, running=["t1", "t2"])  # a couple: no freeze
    s.reconcile()
    for _ in range(5):
        clock.now += 100
        assert s.reconcile() == 0
    assert s.reconciler.frozen is None and s.work_for("n1").kill == []
    assert "started on an empty store" in events(tmp_path)
    assert s.reconciler.approve(["killOrphanTask:t1"], clock.now, "alice") == ["killOrphanTask:t1"]
    assert s.reconcile() == 1 and s.work_for("n1").kill == ["t1"]


def test_a_mass_of_orphans_freezes_instead_of_killing(tmp_path: Path) -> None:
    for store in ("empty", "known"):
        path = tmp_path / store
        path.mkdir()
        clock = Clock()
        s = (make(path, clock, orphan_kill_after=10) if store == "empty"
             else restarted(path, clock, orphan_kill_after=10))
        beat(s, running=[f"t{i}" for i in range(12)], unknown=[f"c{i:011d}" for i in range(8)])
        for _ in range(4):
            s.reconcile()
            clock.now += 100
        assert s.reconcile() == 0, store
        assert s.reconciler.frozen is not None and "unknownTask 12" in s.reconciler.frozen
        assert len([a for a in s.reconciler.plan.actions if a.kind.orphan]) == 20  # proposed: the dry run
        resp = s.work_for("n1")
        assert (resp.kill, resp.kill_containers) == ([], []), store
        assert s.metrics.registry.get_sample_value("titus_scheduler_reconcile_frozen") == 1


# ---- clock steps -----------------------------------------------------------------------------


def test_clock_step_detection() -> None:
    wall, mono = Clock(), Clock()
    c = ClockStep(wall, mono, tolerance=10)
    wall.now += 5
    mono.now += 5
    assert c.read() == (wall.now, None)
    wall.now += 3600
    mono.now += 1
    assert c.read() == (wall.now, 3599)
    wall.now -= 20
    mono.now += 1
    assert c.read() == (wall.now, -21)
    wall.now += 9
    assert c.read() == (wall.now, None)  # within the tolerance


def clocked(tmp_path: Path) -> tuple[Scheduler, Clock, Clock, list[str], str]:
    wall, mono = Clock(), Clock()
    s = make(tmp_path, wall, mono, disconnect_after=5, lost_after=10, missing_after=3, missing_lost_after=6)
    beat(s)
    job, _ = s.submit(spec(batch={"size": 3}))
    s.schedule_pass()
    ids = [t.id for t in s.job_tasks(job.id)]
    for i in ids:
        report(s, i, S.STARTED, wall.now)
    stuck_job, _ = s.submit(spec())
    s.schedule_pass()
    (launched,) = s.job_tasks(stuck_job.id)  # Launched on n1, never delivered: stuck after 300 s
    beat(s, running=ids)
    return s, wall, mono, ids, launched.id


def tick(wall: Clock, mono: Clock, seconds: float) -> None:
    wall.now += seconds
    mono.now += seconds


def test_a_clock_step_forward_makes_no_host_silent_and_no_task_stuck(tmp_path: Path) -> None:
    s, wall, mono, ids, launched = clocked(tmp_path)
    tick(wall, mono, 200)  # past the start-up grace; the Launched task is 200 s old
    beat(s, running=ids)
    s.reconcile()
    assert s.reconciler.plan.total == 0 and not s.reconciler.in_grace(wall.now)
    wall.now += 3600  # the wall clock jumps an hour; one second passes
    mono.now += 1
    s.check_nodes()
    assert s.nodes["n1"].status is NodeStatus.READY
    assert s.reconcile() == 0 and s.reconciler.plan.total == 0  # not disconnected, not stuck
    assert s.reconciler.in_grace(wall.now)  # the grace restarted
    assert '"event":"clockStep"' in events(tmp_path)
    tick(wall, mono, 100)  # the Launched task is 301 s old in steady time: stuck now
    beat(s, running=ids)
    s.reconcile()
    assert s.reconciler.plan.counts == {"stuck": 1} and s.reconciler.plan.actions[0].task_id == launched
    assert all(s.tasks[i].state is S.STARTED for i in ids)


def test_after_a_clock_step_a_silent_host_is_still_noticed(tmp_path: Path) -> None:
    for step in (3600, -3600):
        path = tmp_path / str(step)
        path.mkdir()
        s, wall, mono, ids, _ = clocked(path)
        tick(wall, mono, 100)
        beat(s, running=ids)
        wall.now += step
        mono.now += 1
        s.check_nodes()
        assert s.nodes["n1"].status is NodeStatus.READY, step
        tick(wall, mono, 20)  # and then the host really goes silent
        s.check_nodes()
        s.reconcile()
        assert s.nodes["n1"].status in (NodeStatus.DISCONNECTED, NodeStatus.LOST), step
        assert s.reconciler.plan.counts["disconnected"] == 4, step


async def test_a_sync_answers_at_once_with_an_orphan_kill(tmp_path: Path) -> None:
    clock = Clock()
    s = restarted(tmp_path, clock, orphan_kill_after=10, reconcile_grace=0.0)
    report_ = NodeReport(id="n1", capacity=CapacityReport(cpus=16, memory_mib=4096, disk_mib=100_000),
                         unknown_containers=["c0ffee000001"])
    s.heartbeat(report_)
    s.reconcile()
    clock.now += 11
    assert s.reconcile() == 1
    resp = await s.sync(report_, wait_seconds=1)  # a long poll must not swallow it
    assert resp.kill_containers == ["c0ffee000001"]
