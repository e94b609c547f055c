"""The pure drain plan (scheduler/drain.py): which task gets a replacement, which is killed, which
waits and why — table-driven over small sets of records."""

from __future__ import annotations

from typing import Any

import pytest

from scheduler import drain
from scheduler.drain import StepKind
from scheduler.records import Capacity, DrainState, JobRecord, JobState, NodeRecord, TaskRecord
from titus_common.jobspec import parse_job_spec
from titus_common.states import TaskState as S

NOW = 1000.0


def job(job_id: str, kind: str = "service", n: int = 4, **attributes: str) -> JobRecord:
    doc: dict[str, Any] = {"appName": "x", "owner": "me", "attributes": attributes,
                           "container": {"image": "busybox:latest", "command": ["true"],
                                         "resources": {"cpu": 1, "memoryMiB": 64}}}
    doc["service" if kind == "service" else "batch"] = {"desired": n} if kind == "service" else {"size": n}
    return JobRecord(id=job_id, spec=parse_job_spec(doc), created_at=0.0)


def task(tid: str, job_id: str, index: int, node: str | None, state: S = S.STARTED, **kw: Any) -> TaskRecord:
    return TaskRecord(id=tid, job_id=job_id, index=index, node_id=node, state=state, **kw)


def node(name: str, deadline: float = NOW + 100) -> NodeRecord:
    return NodeRecord(id=name, capacity=Capacity(cpus=4, memory_mib=1024, disk_mib=1024), registered_at=0.0,
                      last_heartbeat=NOW, cordoned=True,
                      drain=DrainState(started_at=NOW - 10, batch_deadline=deadline))


def run(tasks: list[TaskRecord], jobs: list[JobRecord], nodes: list[NodeRecord] | None = None,
        fraction: float = 0.1) -> drain.DrainPlan:
    nodes = nodes or [node("a")]
    return drain.plan(nodes, lambda n: [t for t in tasks if t.node_id == n], lambda j: [t for t in tasks if t.job_id == j],
                      {j.id: j for j in jobs}, fraction, NOW)


def steps(p: drain.DrainPlan) -> list[tuple[str, str]]:
    return [(s.kind.value, s.task_id) for s in p.steps]


CASES = [
    # (name, tasks, jobs, expected steps, expected phase of a task (id, prefix))
    ("one surge per budget of 1", [task("t0", "j", 0, "a"), task("t1", "j", 1, "a")], [job("j", n=2)],
     [("surge", "t0")], ("t1", "waiting: disruption budget")),
    ("budget attribute 2: two surges", [task("t0", "j", 0, "a"), task("t1", "j", 1, "a")],
     [job("j", n=2, **{"titus.disruption.budget": "2"})], [("surge", "t0"), ("surge", "t1")], ("t1", "replacement")),
    ("replacement still launching: wait", [task("t0", "j", 0, "a", replaced_by="r0"), task("r0", "j", 0, "b", S.LAUNCHED),
                                           task("t1", "j", 1, "a")], [job("j", n=2)],
     [], ("t0", "waiting for its replacement r0 (Launched on b)")),
    ("replacement started elsewhere: kill", [task("t0", "j", 0, "a", replaced_by="r0"), task("r0", "j", 0, "b")],
     [job("j", n=1)], [("kill", "t0")], ("t0", "replacement r0 Started on b")),
    ("a chain of replacements covers the index", [task("t0", "j", 0, "a", replaced_by="r0"),
                                                  task("r0", "j", 0, "b", S.FINISHED, replaced_by="r1"),
                                                  task("r1", "j", 0, "c")], [job("j", n=1)], [("kill", "t0")], None),
    ("a kill in flight uses the budget", [task("t0", "j", 0, "a", S.KILL_INITIATED, kill_requested=True),
                                          task("t1", "j", 1, "a")], [job("j", n=2)], [], ("t0", "killing")),
    ("batch before the deadline: left to finish", [task("t0", "b", 0, "a")], [job("b", "batch", 1)], [],
     ("t0", "batch: may finish until the deadline")),
    ("jobs have separate budgets", [task("t0", "j", 0, "a"), task("u0", "k", 0, "a")], [job("j", n=1), job("k", n=1)],
     [("surge", "t0"), ("surge", "u0")], None),
    ("a job being killed is left alone", [task("t0", "j", 0, "a")],
     [job("j", n=1).model_copy(update={"state": JobState.KILL_INITIATED})], [], ("t0", "its job is being killed")),
]


@pytest.mark.parametrize(("name", "tasks", "jobs", "expected", "phase"), CASES, ids=[c[0] for c in CASES])
def test_plan(name: str, tasks: list[TaskRecord], jobs: list[JobRecord], expected: list[tuple[str, str]],
              phase: tuple[str, str] | None) -> None:
    p = run(tasks, jobs)
    assert steps(p) == expected
    if phase is not None:
        assert p.phases[phase[0]].startswith(phase[1]), p.phases[phase[0]]


def test_batch_after_the_deadline_is_evicted_within_the_budget() -> None:
    tasks = [task("t0", "b", 0, "a"), task("t1", "b", 1, "a")]
    p = run(tasks, [job("b", "batch", 2)], [node("a", deadline=NOW)])
    assert steps(p) == [("evict", "t0")]
    assert p.phases["t1"].startswith("waiting: disruption budget")


def test_the_budget_spans_every_draining_host() -> None:
    tasks = [task("t0", "j", 0, "a"), task("t1", "j", 1, "b")]
    p = run(tasks, [job("j", n=2)], [node("a"), node("b")])
    assert steps(p) == [("surge", "t0")]


def test_default_budget_is_the_kill_path_fraction() -> None:
    tasks = [task(f"t{i}", "j", i, "a") for i in range(20)]
    p = run(tasks, [job("j", n=20)], fraction=0.1)
    assert [k for k, _ in steps(p)] == [StepKind.SURGE.value] * 2


def test_an_empty_host_is_done() -> None:
    p = run([task("t0", "j", 0, "b")], [job("j", n=1)], [node("a")])
    assert p.done == ["a"] and p.steps == []


@pytest.mark.parametrize(("raw", "ok"), [("1", 1), (" 3 ", 3), ("0", None), ("x", None), ("10001", None)])
def test_parse_budget(raw: str, ok: int | None) -> None:
    if ok is None:
        with pytest.raises(ValueError, match="titus.disruption.budget"):
            drain.parse_budget({drain.DISRUPTION_ATTRIBUTE: raw})
    else:
        assert drain.parse_budget({drain.DISRUPTION_ATTRIBUTE: raw}) == ok
    assert drain.parse_budget({}) is None
