"""Drain at the scheduler, with simulated agents (they start what they are sent and stop what they
are told to kill): service tasks are replaced elsewhere before each kill, within the per-job
disruption budget and the kill path's window; batch tasks finish until the deadline, then are
evicted and replaced without costing retries; uncordon stops a drain; a restart mid-drain loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scheduler.core import BadRequest, Scheduler, SchedulerConfig
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import FirstFit
from scheduler.records import JobRecord
from scheduler.store import SQLiteStore
from titus_common.jobspec import parse_job_spec
from titus_common.protocol import CapacityReport, NodeReport, TaskUpdate
from titus_common.states import FinishReason as R
from titus_common.states import TaskState as S


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


FAST = {"job_disruption_fraction": 1.0, "job_disruption_window": 1.0, "kill_rate_per_second": 100.0,
        "kill_burst": 100, "reconcile_grace": 0.0}


def make(tmp_path: Path, clock: Clock, **config: Any) -> Scheduler:
    return Scheduler(SQLiteStore(tmp_path / "s.db"), FirstFit(), SchedulerMetrics(),
                     SchedulerConfig(**{**FAST, **config}), clock=clock)


def service(n: int, **attributes: str) -> Any:
    return parse_job_spec({
        "appName": "web", "owner": "me", "attributes": attributes,
        "container": {"image": "busybox:latest", "command": ["sleep", "1d"], "resources": {"cpu": 1, "memoryMiB": 128}},
        "service": {"desired": n},
    })


def batch(n: int) -> Any:
    return parse_job_spec({
        "appName": "etl", "owner": "me",
        "container": {"image": "busybox:latest", "command": ["sleep", "1d"], "resources": {"cpu": 1, "memoryMiB": 128}},
        "batch": {"size": n, "retryPolicy": {"retries": 0}},
    })


class Agents:
    """Hosts that run what they are sent: a launch is Started at once, a kill Finished at once."""

    def __init__(self, s: Scheduler, clock: Clock) -> None:
        self.s, self.clock = s, clock
        self.running: dict[str, set[str]] = {}
        self.events: list[tuple[str, str, str]] = []  # ("started"|"killed", host, task)

    def join(self, name: str, cpus: float = 8) -> None:
        self.running.setdefault(name, set())
        self.beat(name, cpus)

    def beat(self, name: str, cpus: float = 8) -> None:
        self.s.heartbeat(NodeReport(id=name, capacity=CapacityReport(cpus=cpus, memory_mib=65536, disk_mib=100_000),
                                    running=sorted(self.running[name])))

    def step(self, name: str) -> None:
        resp = self.s.work_for(name)
        for a in resp.launch:
            self.running[name].add(a.task_id)
            self.s.apply_updates(name, [TaskUpdate(task_id=a.task_id, state=S.STARTED,
                                                   timestamps={S.STARTED: self.clock.now})])
            self.events.append(("started", name, a.task_id))
        for task_id in resp.kill:
            self.running[name].discard(task_id)
            self.s.apply_updates(name, [TaskUpdate(task_id=task_id, state=S.FINISHED, reason=R.KILLED,
                                                   timestamps={S.FINISHED: self.clock.now})])
            self.events.append(("killed", name, task_id))
        self.beat(name)

    def round(self, seconds: float = 1.0) -> None:
        self.s.schedule_pass()
        for name in sorted(self.running):
            self.step(name)
        self.clock.now += seconds
        self.s.check_nodes()


def live(s: Scheduler, job: JobRecord) -> list[Any]:
    return [t for t in s.job_tasks(job.id) if not t.state.terminal]


def started_on(s: Scheduler, job: JobRecord, host: str) -> int:
    return sum(1 for t in live(s, job) if t.node_id == host and t.state is S.STARTED)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_service_replaced_elsewhere_before_each_kill_one_at_a_time(tmp_path: Path, clock: Clock) -> None:
    s = make(tmp_path, clock)
    agents = Agents(s, clock)
    agents.join("a")
    job, _ = s.submit(service(4, **{"titus.disruption.budget": "1"}))
    agents.round()
    assert started_on(s, job, "a") == 4
    agents.join("b")
    agents.join("c")
    s.draining.start("a", "kernel upgrade", "tester", None)
    assert s.nodes["a"].cordoned and s.nodes["a"].drain is not None
    for _ in range(30):
        agents.round()
        # never below the desired count of Started tasks, never more than one move in flight
        assert sum(1 for t in live(s, job) if t.state is S.STARTED) >= 4
        assert len(live(s, job)) <= 5
        if s.nodes["a"].drain and s.nodes["a"].drain.finished_at:
            break
    drain = s.nodes["a"].drain
    assert drain is not None and drain.finished_at is not None and drain.moved == 4
    assert started_on(s, job, "a") == 0 and len(live(s, job)) == 4
    # each kill on a came after a replacement started elsewhere, and kills alternate with starts
    kills = [i for i, e in enumerate(agents.events) if e[0] == "killed"]
    assert len(kills) == 4
    for k, i in enumerate(kills):
        started_elsewhere = [e for e in agents.events[:i] if e[0] == "started" and e[1] != "a"]
        assert len(started_elsewhere) >= k + 1
    events = {e["event"] for e in s.reconciler.audit.recent}
    assert {"drain.start", "drain.replace", "drain.kill", "drain.done"} <= events
    status = s.draining.status("a")
    assert status["state"] == "drained" and status["remaining"] == []
    assert s.metrics.drain_kills.labels(kind="kill")._value.get() == 4


def test_kills_wait_for_the_kill_path_job_window(tmp_path: Path, clock: Clock) -> None:
    """The drain's budget allows 4 at once, but the kill path's per-job window allows 1 per 600 s."""
    s = make(tmp_path, clock, job_disruption_fraction=0.1, job_disruption_window=600.0)
    agents = Agents(s, clock)
    agents.join("a")
    job, _ = s.submit(service(4, **{"titus.disruption.budget": "4"}))
    agents.round()
    agents.join("b")
    s.draining.start("a", "", "tester", None)
    for _ in range(10):
        agents.round()
    assert s.nodes["a"].drain is not None and s.nodes["a"].drain.moved == 1
    assert len(live(s, job)) == 7  # 3 moves wait for the window with their replacements Started
    phases = [t["phase"] for t in s.draining.status("a")["remaining"]]
    assert sum("kill deferred: job disruption budget spent" in p for p in phases) == 3
    clock.now += 600
    for _ in range(3):
        agents.round()
    assert s.nodes["a"].drain.moved == 2


def test_replacement_waits_while_no_other_host_has_room(tmp_path: Path, clock: Clock) -> None:
    s = make(tmp_path, clock)
    agents = Agents(s, clock)
    agents.join("a")
    job, _ = s.submit(service(2))
    agents.round()
    s.draining.start("a", "", "tester", None)
    for _ in range(5):
        agents.round()
    assert started_on(s, job, "a") == 2  # nothing killed: nowhere to go
    phases = [t["phase"] for t in s.draining.status("a")["remaining"]]
    assert any(p.startswith("waiting for its replacement") for p in phases)
    agents.join("b")
    for _ in range(10):
        agents.round()
    assert started_on(s, job, "b") == 2 and started_on(s, job, "a") == 0


def test_batch_finishes_until_the_deadline_then_is_evicted_and_replaced(tmp_path: Path, clock: Clock) -> None:
    s = make(tmp_path, clock)
    agents = Agents(s, clock)
    agents.join("a")
    job, _ = s.submit(batch(2))
    agents.round()
    (first, second) = live(s, job)
    s.draining.start("a", "", "tester", 30.0)
    agents.join("b")
    # one finishes by itself before the deadline: left alone
    agents.running["a"].discard(first.id)
    s.apply_updates("a", [TaskUpdate(task_id=first.id, state=S.FINISHED, reason=R.NORMAL,
                                     timestamps={S.FINISHED: clock.now})])
    for _ in range(5):
        agents.round()
    assert s.tasks[second.id].state is S.STARTED and not s.tasks[second.id].kill_requested
    clock.now += 30
    for _ in range(5):
        agents.round()
    gone = s.tasks[second.id]
    assert gone.state is S.FINISHED and gone.reason is R.KILLED and gone.evicted
    (repl,) = live(s, job)
    assert repl.node_id == "b" and repl.index == second.index and repl.retries_used == 0
    assert str(second.index) not in job.index_results  # not settled: it runs again elsewhere
    assert s.nodes["a"].drain is not None and s.nodes["a"].drain.evicted == 1
    assert s.nodes["a"].drain.finished_at is not None


def test_uncordon_stops_the_drain_and_cancels_replacements(tmp_path: Path, clock: Clock) -> None:
    s = make(tmp_path, clock)
    agents = Agents(s, clock)
    agents.join("a")
    job, _ = s.submit(service(2, **{"titus.disruption.budget": "2"}))
    agents.round()
    s.draining.start("a", "", "tester", None)  # no other host: the replacements wait
    agents.round()
    assert len(live(s, job)) == 4
    s.set_cordon("a", False)
    assert s.nodes["a"].drain is None and not s.nodes["a"].cordoned
    agents.join("b")
    for _ in range(3):
        agents.round()
    assert len(live(s, job)) == 2 and started_on(s, job, "a") == 2  # back to the desired count, not moved
    assert all(t.replaced_by is None for t in live(s, job))
    assert "drain.stop" in {e["event"] for e in s.reconciler.audit.recent}


def test_a_restart_mid_drain_loads_and_finishes_it(tmp_path: Path, clock: Clock) -> None:
    s = make(tmp_path, clock)
    agents = Agents(s, clock)
    agents.join("a")
    job, _ = s.submit(service(2, **{"titus.disruption.budget": "1"}))
    agents.round()
    s.draining.start("a", "", "tester", None)
    agents.round()  # a replacement in flight: two live tasks of one index
    assert len(live(s, job)) == 3
    s2 = make(tmp_path, clock)  # the integrity check accepts a move in flight
    agents2 = Agents(s2, clock)
    agents2.running = {"a": set(agents.running["a"])}
    agents2.beat("a")
    agents2.join("b")
    for _ in range(10):
        agents2.round()
    assert s2.nodes["a"].drain is not None and s2.nodes["a"].drain.finished_at is not None
    assert len([t for t in s2.job_tasks(job.id) if not t.state.terminal]) == 2


def test_kills_are_held_while_reconciliation_is_frozen(tmp_path: Path, clock: Clock) -> None:
    s = make(tmp_path, clock)
    agents = Agents(s, clock)
    agents.join("a")
    job, _ = s.submit(service(1))
    agents.round()
    agents.join("b")
    s.reconciler.frozen = "test freeze"
    s.draining.start("a", "", "tester", None)
    for _ in range(4):
        agents.round()
    assert started_on(s, job, "a") == 1 and started_on(s, job, "b") == 1
    assert "reconciliation frozen" in s.draining.status("a")["remaining"][0]["phase"]


def test_invalid_disruption_budget_is_refused_at_submit(tmp_path: Path, clock: Clock) -> None:
    s = make(tmp_path, clock)
    for bad in ("zero", "0", "-1"):
        with pytest.raises(BadRequest, match="titus.disruption.budget"):
            s.submit(service(1, **{"titus.disruption.budget": bad}))
