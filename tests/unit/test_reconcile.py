"""Reconciliation's pure decision function (table-driven), the kill path's brakes, and the
Reconciler's freeze / grace / approve / unfreeze / audit."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from scheduler.audit import AuditLog
from scheduler.config import SchedulerConfig
from scheduler.killpath import JobBudget, KillPath, TokenBucket
from scheduler.reconcile import ActionKind, CellView, NodeObs, TaskObs, decide
from scheduler.reconciler import Reconciler
from titus_common.states import TaskState as S

NOW = 10_000.0
CFG = SchedulerConfig(lost_after=600, missing_lost_after=60, missing_after=30)
ORPHANS = SchedulerConfig(lost_after=600, missing_lost_after=60, missing_after=30, orphan_kill_after=300)


def t(i: str, state: S = S.STARTED, since: float = NOW - 10, job: str = "j") -> TaskObs:
    return TaskObs(i, job, state, since)


def n(tasks: tuple[TaskObs, ...] = (), reported: frozenset[str] | None = frozenset(), ready: bool = True,
      silent: float = 1.0, unknown: tuple[str, ...] = ()) -> NodeObs:
    return NodeObs("n1", ready, silent, reported, unknown, tasks)


def cell(*nodes: NodeObs, extra_known: frozenset[str] = frozenset(), running: int | None = None) -> CellView:
    known = frozenset(x.id for nd in nodes for x in nd.tasks) | extra_known
    return CellView(nodes, known, sum(len(nd.tasks) for nd in nodes) if running is None else running)


@dataclass
class Case:
    name: str
    view: CellView
    first_seen: dict[str, float] = field(default_factory=dict)
    actions: list[tuple[ActionKind, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    freeze: bool = False
    config: SchedulerConfig = CFG
    watched: int = 0


def started(k: int) -> tuple[TaskObs, ...]:
    return tuple(t(f"r{i}", since=NOW - 1) for i in range(k))


OLD = NOW - 1000  # a first sighting long ago

CASES = [
    Case("all agree", cell(n((t("a"),), frozenset({"a"})))),
    Case("missing, just seen: watched, not counted, no action", cell(n((t("a"),), frozenset())), watched=1),
    Case("missing for less than missing_after: not counted", cell(n((t("a"),), frozenset())),
         first_seen={"missing:a": NOW - 29}, watched=1),
    Case("missing for missing_after: counted, no action yet", cell(n((t("a"),), frozenset())),
         first_seen={"missing:a": NOW - 30}, counts={"missing": 1}),
    Case("12 replacements just placed, not in the agent's last report: no mismatch, no freeze",
         cell(n(started(12), frozenset())), watched=12),
    Case("12 replacements unreported for missing_after: a mass mismatch",
         cell(n(started(12), frozenset())), first_seen={f"missing:r{i}": NOW - 30 for i in range(12)},
         counts={"missing": 12}, freeze=True),
    Case("a StartInitiated task just entered, unreported: not missing",
         cell(n((t("a", S.START_INITIATED, NOW - 1),), frozenset())), watched=1),
    Case("missing past missing_lost_after: declare lost",
         cell(n((t("a"),), frozenset())), first_seen={"missing:a": NOW - 61},
         actions=[(ActionKind.DECLARE_LOST, "a")], counts={"missing": 1}),
    Case("no report since start: no evidence, nothing", cell(n((t("a"),), None))),
    Case("silent host, under lost_after: nothing", cell(n((t("a"),), frozenset(), ready=False, silent=300))),
    Case("silent host past lost_after: declare lost",
         cell(n((t("a"),), frozenset(), ready=False, silent=601)),
         actions=[(ActionKind.DECLARE_LOST, "a")], counts={"disconnected": 1}),
    Case("unknown task on an agent: reported only", cell(n((), frozenset({"x"}))), counts={"unknownTask": 1}),
    Case("unknown container: reported only", cell(n((), frozenset(), unknown=("c1",))),
         counts={"unknownContainer": 1}),
    Case("orphans with orphan_kill_after 0: never killed, however old",
         cell(n((), frozenset({"x"}), unknown=("c1",))), first_seen={"unknownTask:x": OLD, "unknownContainer:c1": OLD},
         counts={"unknownTask": 1, "unknownContainer": 1}),
    Case("orphans younger than orphan_kill_after: reported only",
         cell(n((), frozenset({"x"}), unknown=("c1",))),
         first_seen={"unknownTask:x": NOW - 299, "unknownContainer:c1": NOW - 299},
         counts={"unknownTask": 1, "unknownContainer": 1}, config=ORPHANS),
    Case("orphans past orphan_kill_after: kill them",
         cell(n((), frozenset({"x"}), unknown=("c1",))), first_seen={"unknownTask:x": OLD, "unknownContainer:c1": OLD},
         actions=[(ActionKind.KILL_ORPHAN_TASK, "x"), (ActionKind.KILL_ORPHAN_CONTAINER, "c1")],
         counts={"unknownTask": 1, "unknownContainer": 1}, config=ORPHANS),
    Case("orphans in a silent host's stale last report: not counted, not killed",
         cell(n((), frozenset({"x"}), unknown=("c1",), ready=False, silent=30)),
         first_seen={"unknownTask:x": OLD, "unknownContainer:c1": OLD}, config=ORPHANS),
    Case("a mass of old orphans (an empty store): proposed, but a freeze",
         cell(n((), frozenset(f"x{i}" for i in range(8)))), first_seen={f"unknownTask:x{i}": OLD for i in range(8)},
         actions=[(ActionKind.KILL_ORPHAN_TASK, f"x{i}") for i in range(8)], counts={"unknownTask": 8},
         freeze=True, config=ORPHANS),
    Case("Launched 5 min, not on its agent: retry as crashed",
         cell(n((t("a", S.LAUNCHED, NOW - 301),), frozenset())),
         actions=[(ActionKind.RETRY_STUCK, "a")], counts={"stuck": 1}),
    Case("Launched 5 min but its agent holds it: not stuck",
         cell(n((t("a", S.LAUNCHED, NOW - 301),), frozenset({"a"})))),
    Case("StartInitiated 5 min: kill and replace",
         cell(n((t("a", S.START_INITIATED, NOW - 301),), frozenset({"a"}))),
         actions=[(ActionKind.KILL_STUCK, "a")], counts={"stuck": 1}),
    Case("KillInitiated 10 min: resend the kill",
         cell(n((t("a", S.KILL_INITIATED, NOW - 601),), frozenset({"a"}))),
         actions=[(ActionKind.RESEND_KILL, "a")], counts={"stuck": 1}),
    Case("StartInitiated 4 min: fine", cell(n((t("a", S.START_INITIATED, NOW - 240),), frozenset({"a"})))),
    Case("empty store, agent runs 8: mass mismatch",
         cell(n((), frozenset(f"x{i}" for i in range(8)))), counts={"unknownTask": 8}, freeze=True),
    Case("a couple of mismatches among few tasks: no freeze",
         cell(n((), frozenset({"x1", "x2"}))), counts={"unknownTask": 2}),
    Case("over the absolute threshold: freeze",
         cell(n((), frozenset(f"x{i}" for i in range(11))), running=10_000), counts={"unknownTask": 11}, freeze=True),
    Case("10 of 10,000: no freeze", cell(n((), frozenset(f"x{i}" for i in range(10))), running=10_000),
         counts={"unknownTask": 10}),
    Case("clock jump: every host silent past lost_after: freeze",
         cell(n(tuple(t(f"a{i}") for i in range(5)), frozenset(), ready=False, silent=3600)),
         actions=[(ActionKind.DECLARE_LOST, f"a{i}") for i in range(5)], counts={"disconnected": 5}, freeze=True),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decide(case: Case) -> None:
    plan = decide(case.view, case.first_seen, case.config, NOW)
    assert [(a.kind, a.task_id) for a in plan.actions] == case.actions
    assert dict(plan.counts) == case.counts
    assert (plan.freeze is not None) is case.freeze
    assert len(plan.watch) == case.watched


def test_token_bucket_refills_and_never_mints_on_a_clock_step_back() -> None:
    b = TokenBucket.full(0.1, 2, 0.0)
    assert b.take(0.0) and b.take(0.0) and not b.take(0.0)
    assert not b.take(9.0) and b.take(10.0)
    assert not b.take(5.0)  # the clock went back: no tokens for that
    assert not b.take(1e9 + 0) or b.tokens <= 2  # capped at the burst
    assert b.tokens <= 2


def test_job_budget_is_a_fraction_with_a_floor_of_one_per_window() -> None:
    j = JobBudget(0.1, 600)
    assert j.allowance(3) == 1 and j.allowance(50) == 5
    j.spend("a", 0.0)
    assert not j.available("a", 3, 1.0) and j.available("b", 3, 1.0)
    assert j.available("a", 3, 601.0)


def test_kill_path_refuses_without_spending() -> None:
    kp = KillPath(SchedulerConfig(kill_burst=1, job_disruption_fraction=0.1), 0.0)
    assert kp.take("a", 3, 0.0) is None
    assert "disruption budget" in (kp.take("a", 3, 0.0) or "")
    assert "rate limit" in (kp.take("b", 3, 0.0) or "")


def reconciler(**kw: Any) -> tuple[Reconciler, CollectorRegistry, AuditLog]:
    reg, audit = CollectorRegistry(), AuditLog()
    cfg = SchedulerConfig(**{"reconcile_grace": 60.0, "kill_burst": 100, "job_disruption_fraction": 1.0, **kw})
    return Reconciler(cfg, NOW, audit, reg), reg, audit


LIVE: Callable[[str], int] = lambda job: 100  # noqa: E731


def lost_view(k: int) -> CellView:
    return cell(n(tuple(t(f"a{i}", job=f"j{i}") for i in range(k)), frozenset(), ready=False, silent=3600))


def test_grace_holds_every_kill_then_lets_them_through() -> None:
    r, reg, audit = reconciler()
    assert r.run_pass(lost_view(2), LIVE, NOW + 1) == []
    assert [e["event"] for e in audit.recent] == ["action.held", "action.held"]
    assert [a.task_id for a in r.run_pass(lost_view(2), LIVE, NOW + 61)] == ["a0", "a1"]
    assert reg.get_sample_value("titus_scheduler_reconcile_actions_total",
                                {"kind": "declareLost", "outcome": "executed"}) == 2


def test_mass_mismatch_freezes_pages_and_holds_until_approved(tmp_path: Any) -> None:
    page = tmp_path / "paged.json"
    r, reg, audit = reconciler(reconcile_grace=0.0, page_command=f"sh -c 'cat > {page}'")
    assert r.run_pass(lost_view(20), LIVE, NOW) == []
    assert r.frozen is not None and reg.get_sample_value("titus_scheduler_reconcile_frozen") == 1
    assert audit.recent[0]["event"] == "freeze"
    shown = r.show(NOW)
    assert shown["frozen"] and len(shown["proposed"]) == 20
    assert r.run_pass(lost_view(20), LIVE, NOW + 5) == []  # sticky, and held again without new audit lines
    assert sum(1 for e in audit.recent if e["event"] == "action.held") == 20
    assert r.approve(["declareLost:a3", "nope"], NOW + 6, "alice") == ["declareLost:a3"]
    assert [a.task_id for a in r.run_pass(lost_view(20), LIVE, NOW + 7)] == ["a3"]
    assert r.frozen is not None
    assert any(e["event"] == "action.executed" and e["why"] == "approved by an operator" for e in audit.recent)
    assert r.unfreeze(NOW + 8, "alice") and reg.get_sample_value("titus_scheduler_reconcile_frozen") == 0
    r.run_pass(lost_view(20), LIVE, NOW + 9)  # still a mass mismatch: frozen again
    assert r.frozen is not None
    for _ in range(200):  # the page command runs in a thread: wait for its output, not a fixed time
        if page.exists() and page.read_text():
            break
        time.sleep(0.05)
    assert "titus_scheduler_reconcile_frozen" in page.read_text()


def test_budget_defers_and_audits_once() -> None:
    r, reg, audit = reconciler(reconcile_grace=0.0, kill_burst=1, reconcile_freeze_abs=100,
                               reconcile_freeze_fraction=1.0)
    assert len(r.run_pass(lost_view(3), LIVE, NOW)) == 1
    assert len(r.run_pass(lost_view(3), LIVE, NOW)) == 0  # (a0 is proposed again: this view never changes)
    assert len(r.run_pass(lost_view(3), LIVE, NOW)) == 0
    deferred = [e["action"] for e in audit.recent if e["event"] == "action.deferred"]
    assert sorted(deferred) == ["declareLost:a0", "declareLost:a1", "declareLost:a2"]  # each once
    assert all("rate limit" in e["why"] for e in audit.recent if e["event"] == "action.deferred")
