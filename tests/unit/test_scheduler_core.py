"""The scheduler's decisions, against a real SQLite store and a fake clock."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from scheduler.core import Conflict, Scheduler, SchedulerConfig
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import FirstFit
from scheduler.records import JobState, NodeStatus
from scheduler.store import SQLiteStore, StoreCorrupt
from titus_common.jobspec import parse_job_spec
from titus_common.protocol import CapacityReport, NodeReport, TaskUpdate
from titus_common.states import FinishReason as R
from titus_common.states import TaskState as S


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def spec(**kw: Any) -> Any:
    doc: dict[str, Any] = {
        "appName": "app",
        "owner": "me",
        "container": {"image": "busybox:latest", "command": ["true"], "resources": {"cpu": 1, "memoryMiB": 128}},
        "batch": {"size": 1},
    }
    doc.update(kw)
    return parse_job_spec(doc)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(tmp_path: Path, clock: Clock, **config: Any) -> Scheduler:
    return Scheduler(
        SQLiteStore(tmp_path / "s.db"), FirstFit(), SchedulerMetrics(), SchedulerConfig(**config), clock=clock
    )


@pytest.fixture
def sched(tmp_path: Path, clock: Clock) -> Scheduler:
    return make(tmp_path, clock)


def node(s: Scheduler, name: str = "n1", cpus: float = 4, running: list[str] | None = None) -> None:
    s.heartbeat(
        NodeReport(
            id=name,
            capacity=CapacityReport(cpus=cpus, memory_mib=4096, disk_mib=100_000),
            running=running or [],
        )
    )


def report(s: Scheduler, task_id: str, state: S, at: float, node_id: str = "n1", **kw: Any) -> None:
    t = s.tasks[task_id]
    stamps = {S(k): v for k, v in t.timestamps.items() if S(k).rank >= S.LAUNCHED.rank}
    stamps[state] = at
    s.apply_updates(node_id, [TaskUpdate(task_id=task_id, state=state, timestamps=stamps, **kw)])


def finish(s: Scheduler, task_id: str, reason: R, clock: Clock, node_id: str = "n1") -> None:
    report(s, task_id, S.STARTED, clock.now, node_id)
    report(s, task_id, S.FINISHED, clock.now, node_id, reason=reason, message=reason.value)


def active(s: Scheduler, job_id: str) -> list[Any]:
    return [t for t in s.job_tasks(job_id) if not t.state.terminal]


def test_submit_places_on_first_fitting_ready_node(sched: Scheduler) -> None:
    node(sched, "a", cpus=1)
    node(sched, "b", cpus=4)
    job, created = sched.submit(spec(batch={"size": 3}))
    assert created
    assert sched.schedule_pass() == 3
    assert sorted(t.node_id or "" for t in sched.job_tasks(job.id)) == ["a", "b", "b"]
    assert all(t.state is S.LAUNCHED for t in sched.job_tasks(job.id))


def test_tasks_wait_when_nothing_fits(sched: Scheduler) -> None:
    node(sched, cpus=1)
    job, _ = sched.submit(spec(batch={"size": 2}))
    assert sched.schedule_pass() == 1
    assert sorted(t.state.value for t in sched.job_tasks(job.id)) == ["Accepted", "Launched"]


def test_work_is_delivered_once_then_redelivered_after_timeout(sched: Scheduler, clock: Clock) -> None:
    node(sched)
    sched.submit(spec())
    sched.schedule_pass()
    assert len(sched.work_for("n1").launch) == 1
    assert sched.work_for("n1").launch == []
    clock.now += 11
    assert len(sched.work_for("n1").launch) == 1


def test_batch_exit_codes_to_job_outcome(sched: Scheduler, clock: Clock) -> None:
    node(sched)
    job, _ = sched.submit(spec(batch={"size": 2}))
    sched.schedule_pass()
    t0, t1 = sched.job_tasks(job.id)
    finish(sched, t0.id, R.NORMAL, clock)
    assert job.state is JobState.ACCEPTED
    finish(sched, t1.id, R.FAILED, clock)
    assert job.state is JobState.FINISHED
    assert job.index_results == {"0": R.NORMAL, "1": R.FAILED}


def test_failure_consumes_retries_crash_does_not(sched: Scheduler, clock: Clock) -> None:
    node(sched)
    job, _ = sched.submit(spec(batch={"size": 1, "retryPolicy": {"retries": 1}}))
    for reason in (R.CRASHED, R.LOST, R.CRASHED, R.FAILED, R.CRASHED, R.FAILED):
        clock.now += 100  # past any back-off
        sched.schedule_pass()
        (task,) = active(sched, job.id)
        finish(sched, task.id, reason, clock)
    assert job.state is JobState.FINISHED
    tasks = sorted(sched.job_tasks(job.id), key=lambda t: t.timestamps["Accepted"])
    assert len(tasks) == 6
    assert tasks[-1].retries_used == 1 and tasks[-1].system_retries == 4
    assert job.index_results == {"0": R.FAILED}


def test_crash_backoff_and_crash_loop_flag(sched: Scheduler, clock: Clock) -> None:
    node(sched)
    job, _ = sched.submit(spec())
    delays = []
    for _ in range(4):
        sched.schedule_pass()
        (task,) = active(sched, job.id)
        if task.state is S.ACCEPTED:  # still backing off
            clock.now = task.not_before
            sched.schedule_pass()
        finish(sched, task.id, R.CRASHED, clock)
        (nxt,) = active(sched, job.id)
        delays.append(nxt.not_before - clock.now)
    assert delays == [1.0, 2.0, 4.0, 8.0]
    assert sched.crash_looping(job)


def test_service_replaces_any_ending_and_kill_job_stops_it(sched: Scheduler, clock: Clock) -> None:
    node(sched)
    job, _ = sched.submit(spec(batch=None, service={"desired": 2}))
    sched.schedule_pass()
    first = sched.job_tasks(job.id)[0]
    finish(sched, first.id, R.FAILED, clock)
    assert len(active(sched, job.id)) == 2
    sched.schedule_pass()
    for t in active(sched, job.id):
        report(sched, t.id, S.STARTED, clock.now)
    sched.kill_job(job.id)
    assert job.state is JobState.KILL_INITIATED
    assert {t.state for t in active(sched, job.id)} == {S.KILL_INITIATED}
    assert len(sched.work_for("n1").kill) == 2
    for t in active(sched, job.id):
        report(sched, t.id, S.FINISHED, clock.now, reason=R.KILLED)
    assert job.state is JobState.FINISHED
    assert len(sched.job_tasks(job.id)) == 3  # no replacement after the job kill


def test_kill_before_delivery_finishes_at_once(sched: Scheduler) -> None:
    job, _ = sched.submit(spec())
    (task,) = sched.job_tasks(job.id)
    sched.kill_task(task.id)
    assert task.state is S.FINISHED and task.reason is R.KILLED
    assert job.state is JobState.FINISHED


def test_stale_and_foreign_updates_are_ignored(sched: Scheduler, clock: Clock) -> None:
    node(sched)
    node(sched, "other")
    job, _ = sched.submit(spec())
    sched.schedule_pass()
    (task,) = sched.job_tasks(job.id)
    report(sched, task.id, S.STARTED, clock.now)
    report(sched, task.id, S.START_INITIATED, clock.now)  # stale
    assert task.state is S.STARTED
    accepted = sched.apply_updates(
        "other", [TaskUpdate(task_id=task.id, state=S.FINISHED, timestamps={S.FINISHED: 1.0}, reason=R.NORMAL)]
    )
    assert accepted == [task.id] and task.state is S.STARTED


def test_idempotency_key(sched: Scheduler) -> None:
    a, created_a = sched.submit(spec(idempotencyKey="k1"))
    b, created_b = sched.submit(spec(idempotencyKey="k1"))
    assert created_a and not created_b and a.id == b.id
    assert len(sched.tasks) == 1
    with pytest.raises(Conflict):
        sched.submit(spec(idempotencyKey="k1", batch={"size": 2}))
    assert len(sched.jobs) == 1 and len(sched.tasks) == 1


def test_silent_node_disconnects_then_loses_tasks_under_a_rate_limit(tmp_path: Path, clock: Clock) -> None:
    # The kill path's bucket is the brake (docs/reconcile.md): 2 at once, then one a minute.
    s = make(tmp_path, clock, disconnect_after=20, lost_after=100, reconcile_grace=0.0, kill_burst=2,
             kill_rate_per_second=1 / 60, job_disruption_fraction=1.0, reconcile_freeze_abs=10,
             reconcile_freeze_fraction=1.0)
    node(s)
    job, _ = s.submit(spec(batch={"size": 3}))
    s.schedule_pass()
    clock.now += 30
    s.check_nodes()
    s.reconcile()
    assert s.nodes["n1"].status is NodeStatus.DISCONNECTED
    assert all(t.state is S.LAUNCHED for t in s.job_tasks(job.id))  # disconnected ≠ lost
    clock.now += 100
    s.check_nodes()
    s.reconcile()
    lost = [t for t in s.job_tasks(job.id) if t.reason is R.LOST]
    assert len(lost) == 2  # the brake held the third back
    clock.now += 60
    s.check_nodes()
    s.reconcile()
    assert len([t for t in s.job_tasks(job.id) if t.reason is R.LOST]) == 3
    s.check_nodes()
    assert s.nodes["n1"].status is NodeStatus.LOST
    # Lost is a platform fault: replacements wait for a host, no retry consumed.
    assert all(t.retries_used == 0 for t in active(s, job.id)) and len(active(s, job.id)) == 3


def test_disconnected_nodes_get_no_work(tmp_path: Path, clock: Clock) -> None:
    s = make(tmp_path, clock, disconnect_after=20)
    node(s)
    clock.now += 30
    s.check_nodes()
    s.submit(spec())
    assert s.schedule_pass() == 0


def test_mismatch_is_recorded_not_acted_on(sched: Scheduler, clock: Clock) -> None:
    node(sched)
    job, _ = sched.submit(spec())
    sched.schedule_pass()
    (task,) = sched.job_tasks(job.id)
    report(sched, task.id, S.STARTED, clock.now)
    node(sched, running=[])  # the agent does not list it
    assert sched.nodes["n1"].missing_tasks == [task.id]
    assert task.state is S.STARTED


def test_restart_keeps_everything(tmp_path: Path, clock: Clock) -> None:
    s = make(tmp_path, clock)
    node(s)
    job, _ = s.submit(spec(batch={"size": 2}))
    s.schedule_pass()
    t0 = s.job_tasks(job.id)[0]
    finish(s, t0.id, R.NORMAL, clock)
    before = ({j.id: j.to_api() for j in s.jobs.values()}, {t.id: t.to_api() for t in s.tasks.values()})
    s.store.close()
    s2 = make(tmp_path, clock)
    after = ({j.id: j.to_api() for j in s2.jobs.values()}, {t.id: t.to_api() for t in s2.tasks.values()})
    assert after == before
    assert s2.nodes["n1"].status is NodeStatus.READY


def test_unreadable_record_stops_start(tmp_path: Path, clock: Clock) -> None:
    s = make(tmp_path, clock)
    job, _ = s.submit(spec())
    s.store.close()
    db = sqlite3.connect(tmp_path / "s.db")
    db.execute("UPDATE jobs SET doc = ? WHERE id = ?", ('{"id": "' + job.id + '", "spec": 42}', job.id))
    db.commit()
    db.close()
    with pytest.raises(StoreCorrupt, match=f"jobs record '{job.id}' cannot be read"):
        make(tmp_path, clock)


def test_newer_schema_is_refused(tmp_path: Path, clock: Clock) -> None:
    make(tmp_path, clock).store.close()
    db = sqlite3.connect(tmp_path / "s.db")
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(StoreCorrupt, match="newer"):
        make(tmp_path, clock)


def test_launch_latency_observed_once_and_started_kept_after_kill(sched: Scheduler, clock: Clock) -> None:
    node(sched)
    job, _ = sched.submit(spec())
    sched.schedule_pass()
    (task,) = sched.job_tasks(job.id)
    sched.work_for("n1")  # delivered
    report(sched, task.id, S.START_INITIATED, clock.now + 0.1)
    sched.kill_task(task.id)
    assert task.state is S.KILL_INITIATED
    report(sched, task.id, S.STARTED, clock.now + 0.5)  # the agent started it before the kill arrived
    assert task.state is S.KILL_INITIATED and task.timestamps["Started"] == clock.now + 0.5
    report(sched, task.id, S.FINISHED, clock.now + 1, reason=R.KILLED)
    hist = sched.metrics.launch_latency.collect()[0]
    count = next(s.value for s in hist.samples if s.name.endswith("_count"))
    assert count == 1


def posture(apparmor: bool, userns: bool) -> dict[str, Any]:
    return {"seccompEnforceable": True, "apparmor": {"enforceable": apparmor}, "userns": {"remapped": userns}}


def node_with(s: Scheduler, name: str, host_posture: dict[str, Any] | None) -> None:
    s.heartbeat(
        NodeReport(
            id=name, capacity=CapacityReport(cpus=4, memory_mib=4096, disk_mib=100_000), posture=host_posture
        )
    )


@pytest.mark.parametrize(
    "attributes,postures,placed_on",
    [
        ({}, {"a": None}, "a"),  # no requirement: a host that has not reported is fine
        ({"apparmor": "required"}, {"a": posture(False, True), "b": posture(True, True)}, "b"),
        ({"userNamespace": "required"}, {"a": posture(True, False), "b": posture(False, True)}, "b"),
        ({"apparmor": "required"}, {"a": None, "b": posture(False, True)}, None),
        ({"userNamespace": "required"}, {"a": posture(True, False)}, None),
    ],
)
def test_placement_respects_the_security_posture(
    sched: Scheduler, attributes: dict[str, str], postures: dict[str, Any], placed_on: str | None
) -> None:
    for name, host_posture in postures.items():
        node_with(sched, name, host_posture)
    job, _ = sched.submit(spec(container={"image": "busybox", "securityAttributes": attributes}))
    sched.schedule_pass()
    (task,) = sched.job_tasks(job.id)
    assert task.node_id == placed_on
    if placed_on is None:
        assert task.state is S.ACCEPTED and task.message.startswith("waiting: ")
        assert "AppArmor" in task.message or "user-namespace" in task.message or "posture" in task.message


def test_the_log_tail_of_a_terminal_update_is_stored_with_the_task(tmp_path: Path, clock: Clock) -> None:
    s = make(tmp_path, clock)
    node(s)
    job, _ = s.submit(spec())
    s.schedule_pass()
    (t,) = s.job_tasks(job.id)
    report(s, t.id, S.STARTED, clock.now)
    report(s, t.id, S.FINISHED, clock.now, reason=R.FAILED, message="exit 1", exit_code=1, log_tail="fatal: boom\n")
    assert s.tasks[t.id].log_tail == "fatal: boom\n" and s.tasks[t.id].to_api()["logTail"] == "fatal: boom\n"
    s.store.close()
    assert make(tmp_path, clock).tasks[t.id].log_tail == "fatal: boom\n"  # durable before `accepted`


def test_the_log_tail_reaches_a_task_the_scheduler_ended_first(tmp_path: Path, clock: Clock) -> None:
    """A kill sent, then a heartbeat no longer listing the task ends it here ("the host no longer
    held it") before the agent's terminal update arrives: the update's output is still kept."""
    s = make(tmp_path, clock)
    node(s)
    job, _ = s.submit(spec())
    s.schedule_pass()
    (t,) = s.job_tasks(job.id)
    report(s, t.id, S.STARTED, clock.now)
    node(s, running=[t.id])
    s.kill_task(t.id)
    assert s.work_for("n1").kill == [t.id]
    node(s, running=[])  # the agent finished it; its updates call is still backing off
    assert s.tasks[t.id].state.terminal and s.tasks[t.id].log_tail is None
    report(s, t.id, S.FINISHED, clock.now, reason=R.KILLED, message="killed", log_tail="bye\n")
    assert s.tasks[t.id].log_tail == "bye\n"
    s.store.close()
    assert make(tmp_path, clock).task(t.id).log_tail == "bye\n"
