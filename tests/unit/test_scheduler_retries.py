"""The scheduler's pure decisions, table by table: retries/back-off/crash loop, liveness, layering."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from scheduler.api import ApiError
from scheduler.config import SchedulerConfig
from scheduler.core import Conflict, NotFound
from scheduler.liveness import Liveness, LostBudget
from scheduler.records import NodeRecord, NodeStatus, TaskRecord
from scheduler.retries import Counters, Replace, Settle, decide
from titus_common.errors import TitusError
from titus_common.jobspec import RetryPolicy
from titus_common.states import FinishReason as R

C = SchedulerConfig()
BATCH = RetryPolicy(retries=2, delay_seconds=7)
SERVICE = None


@pytest.mark.parametrize(
    "reason,ran,before,policy,expected",
    [
        # platform faults: back-off 1, 2, 4, … capped at 30 s; never the user's retries; crash loop at 3
        (R.CRASHED, None, Counters(), BATCH, Replace(1.0, Counters(system_retries=1, consecutive_crashes=1))),
        (R.LOST, 10.0, Counters(system_retries=1, consecutive_crashes=1), BATCH,
         Replace(2.0, Counters(system_retries=2, consecutive_crashes=2))),
        (R.CRASHED, None, Counters(retries_used=1, system_retries=2, consecutive_crashes=2, consecutive_failures=1),
         SERVICE, Replace(4.0, Counters(1, 3, 3, 1), crash_looping=True)),
        (R.CRASHED, None, Counters(consecutive_crashes=9), BATCH,
         Replace(30.0, Counters(system_retries=1, consecutive_crashes=10), crash_looping=True)),
        # a task that ran streak_reset_after clears the streaks first
        (R.CRASHED, 300.0, Counters(consecutive_crashes=5, consecutive_failures=2), BATCH,
         Replace(1.0, Counters(system_retries=1, consecutive_crashes=1))),
        # batch: failed consumes retries with the policy's delay, then settles
        (R.FAILED, 1.0, Counters(), BATCH, Replace(7.0, Counters(retries_used=1, consecutive_failures=1))),
        (R.FAILED, 1.0, Counters(retries_used=1, system_retries=3, consecutive_crashes=2), BATCH,
         Replace(7.0, Counters(retries_used=2, system_retries=3, consecutive_failures=1))),
        (R.FAILED, 1.0, Counters(retries_used=2), BATCH, Settle(R.FAILED)),
        (R.NORMAL, 1.0, Counters(), BATCH, Settle(R.NORMAL)),
        (R.KILLED, None, Counters(), BATCH, Settle(R.KILLED)),
        # service: every ending is replaced; a user failure backs off 2^n - 1, capped at 300 s
        (R.NORMAL, 1.0, Counters(consecutive_crashes=1, consecutive_failures=3), SERVICE,
         Replace(0.0, Counters(consecutive_crashes=1))),
        (R.FAILED, 1.0, Counters(), SERVICE, Replace(0.0, Counters(consecutive_failures=1))),
        (R.FAILED, 1.0, Counters(consecutive_failures=3), SERVICE, Replace(7.0, Counters(consecutive_failures=4))),
        (R.FAILED, 1.0, Counters(consecutive_failures=20), SERVICE, Replace(300.0, Counters(consecutive_failures=21))),
        (R.FAILED, 400.0, Counters(consecutive_failures=20), SERVICE, Replace(0.0, Counters(consecutive_failures=1))),
    ],
)
def test_decide(
    reason: R, ran: float | None, before: Counters, policy: RetryPolicy | None, expected: Replace | Settle
) -> None:
    assert decide(reason, ran, before, policy, C) == expected


def test_backoff_follows_the_config() -> None:
    c = SchedulerConfig(system_backoff_base=0.5, system_backoff_max=3, crash_loop_threshold=1)
    delays = [decide(R.CRASHED, None, Counters(consecutive_crashes=n), None, c) for n in range(4)]
    assert [d.delay for d in delays if isinstance(d, Replace)] == [0.5, 1.0, 2.0, 3.0]
    assert all(isinstance(d, Replace) and d.crash_looping for d in delays)


def test_lost_budget_refills_per_minute() -> None:
    b = LostBudget(2, now=0.0)
    assert [b.take(), b.take(), b.take()] == [True, True, False]
    b.refill(30.0)  # half a minute: one token back
    assert [b.take(), b.take()] == [True, False]
    b.refill(10_000.0)
    assert [b.take(), b.take(), b.take()] == [True, True, False]  # never more than a minute's worth


def _node(name: str, last: float) -> NodeRecord:
    return NodeRecord.model_validate(
        {"id": name, "capacity": {"cpus": 1, "memoryMiB": 1, "diskMiB": 1}, "registeredAt": 0, "lastHeartbeat": last}
    )


def test_liveness_disconnects_then_loses_within_the_budget() -> None:
    live = Liveness(SchedulerConfig(disconnect_after=20, lost_after=100, max_lost_per_minute=2), now=0.0)
    a, b = _node("a", 0.0), _node("b", 90.0)
    tasks = {"a": [TaskRecord(id=f"t{i}", job_id="j", index=i) for i in range(3)], "b": []}
    assert [(v.node.id, v.status_changed, v.lose) for v in live.check([a, b], tasks.__getitem__, 30.0)] == [
        ("a", True, [])
    ]
    assert a.status is NodeStatus.DISCONNECTED and b.status is NodeStatus.READY
    (v,) = live.check([a, b], tasks.__getitem__, 101.0)
    assert v.node is a and [t.id for t in v.lose] == ["t0", "t1"] and not v.status_changed  # rate limit
    assert a.status is NodeStatus.DISCONNECTED  # not Lost while tasks are held back
    verdicts = list(live.check([a, b], lambda n: tasks[n][2:] if n == "a" else [], 131.0))
    assert [(v.node.id, v.status_changed, [t.id for t in v.lose]) for v in verdicts] == [
        ("a", True, ["t2"]), ("b", True, [])
    ]
    assert a.status is NodeStatus.LOST and b.status is NodeStatus.DISCONNECTED


def test_api_errors_derive_from_the_error_root() -> None:
    assert issubclass(NotFound, TitusError) and issubclass(NotFound, LookupError)
    assert issubclass(Conflict, TitusError) and issubclass(Conflict, ValueError)
    assert issubclass(ApiError, TitusError)


FORBIDDEN = {"agent", "netns", "imds", "cpuset", "titusctl"}


def test_scheduler_imports_no_host_package() -> None:
    root = Path(__file__).resolve().parents[2] / "scheduler"
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
