"""The host quality tracker (scheduler/quality.py): with simulated agents, the one host whose
launches crash (a fault in its launch step) is quarantined — a `quality` taint, no new work —
while its healthy peers are not, and comes back after the quarantine; several bad hosts at once
are a fleet problem (an alert, no quarantine)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scheduler.config import SchedulerConfig
from scheduler.core import Scheduler
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import FirstFit
from scheduler.quality import QualityTracker
from scheduler.records import Capacity, NodeRecord
from scheduler.store import SQLiteStore
from titus_common.jobspec import parse_job_spec
from titus_common.protocol import CapacityReport, NodeReport, TaskUpdate
from titus_common.states import FinishReason as R
from titus_common.states import TaskState as S


class Clock:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def batch(n: int) -> Any:
    return parse_job_spec({"appName": "etl", "owner": "me", "batch": {"size": n},
                           "container": {"image": "busybox:latest", "command": ["true"],
                                         "resources": {"cpu": 1, "memoryMiB": 64}}})


def run_rounds(s: Scheduler, clock: Clock, hosts: list[str], bad: set[str], rounds: int) -> None:
    """Each host runs what it is sent: a bad host's launch step fails (crashed before it starts)."""
    for _ in range(rounds):
        s.schedule_pass()
        for h in hosts:
            s.heartbeat(NodeReport(id=h, capacity=CapacityReport(cpus=2, memory_mib=4096, disk_mib=10_000)))
            for a in s.work_for(h).launch:
                if h in bad:
                    s.apply_updates(h, [TaskUpdate(task_id=a.task_id, state=S.FINISHED, reason=R.CRASHED,
                                                   message="launch step network: injected fault",
                                                   timestamps={S.FINISHED: clock.now})])
                else:
                    s.apply_updates(h, [TaskUpdate(task_id=a.task_id, state=S.STARTED, timestamps={S.STARTED: clock.now})])
                    s.apply_updates(h, [TaskUpdate(task_id=a.task_id, state=S.FINISHED, reason=R.NORMAL,
                                                   timestamps={S.STARTED: clock.now, S.FINISHED: clock.now + 1})])
        clock.now += 5  # past the crash back-off of the replacements
        s.check_nodes()


def make(tmp_path: Path, **config: Any) -> tuple[Scheduler, Clock]:
    clock = Clock()
    cfg = SchedulerConfig(**{"system_backoff_base": 1.0, "system_backoff_max": 2.0, **config})
    return Scheduler(SQLiteStore(tmp_path / "s.db"), FirstFit(), SchedulerMetrics(), cfg, clock=clock), clock


def test_the_crashing_host_is_quarantined_and_its_peers_are_not(tmp_path: Path) -> None:
    s, clock = make(tmp_path, quality_quarantine_seconds=600.0)
    hosts = ["a", "b", "c", "d"]
    s.submit(batch(40))
    run_rounds(s, clock, hosts, bad={"b"}, rounds=12)
    assert "quality" in s.nodes["b"].taints, s.nodes["b"]
    assert s.nodes["b"].taints["quality"].startswith("QualityQuarantine: ")
    assert all("quality" not in s.nodes[h].taints for h in ("a", "c", "d"))
    assert s.metrics.quality_quarantines._value.get() == 1
    # no new work for b while quarantined
    job, _ = s.submit(batch(6))
    s.schedule_pass()
    assert all(t.node_id != "b" for t in s.job_tasks(job.id))
    # the quarantine decays: lifted after its time, with a clean window
    clock.now += 600
    s.check_nodes()
    assert "quality" not in s.nodes["b"].taints and s.nodes["b"].quarantined_until is None


def test_many_bad_hosts_at_once_are_a_fleet_problem(tmp_path: Path) -> None:
    s, clock = make(tmp_path)
    hosts = ["a", "b", "c", "d", "e"]
    s.submit(batch(60))
    run_rounds(s, clock, hosts, bad={"b", "d"}, rounds=12)
    assert all("quality" not in s.nodes[h].taints for h in hosts)
    assert s.quality.alerting


def node(name: str) -> NodeRecord:
    return NodeRecord(id=name, capacity=Capacity(cpus=1, memory_mib=1, disk_mib=1), registered_at=0, last_heartbeat=0)


def test_thresholds() -> None:
    cfg = SchedulerConfig(quality_min_launches=5, quality_min_crashes=3, quality_factor=3.0, quality_margin=0.2)
    q = QualityTracker(cfg)
    nodes = [node("a"), node("b")]
    for i in range(10):  # a: 4 of 10 crashed (40 %); b (peers): 1 of 10 (10 %): 40 ≥ max(30, 30) → quarantined
        q.record("a", i < 4, 100.0)
        q.record("b", i < 1, 100.0)
    assert q.evaluate(nodes, 101.0).quarantined == ["a"]
    q2 = QualityTracker(cfg)
    for i in range(10):  # 2 crashes: below the minimum count
        q2.record("a", i < 2, 100.0)
        q2.record("b", False, 100.0)
    assert q2.evaluate([node("a"), node("b")], 101.0).quarantined == []
    q3 = QualityTracker(cfg)
    for i in range(10):  # alone: no peers to compare with
        q3.record("a", True, 100.0)
    assert q3.evaluate([node("a")], 101.0).quarantined == []
    q4 = QualityTracker(cfg)
    for i in range(10):
        q4.record("a", True, 100.0)
        q4.record("b", False, 100.0)
    assert q4.evaluate([node("a"), node("b")], 100.0 + cfg.quality_window + 1).quarantined == []  # window passed
