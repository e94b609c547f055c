"""Remediation decisions and budgets (scheduler/remediation.py) on a fake clock, and the round
trip through the scheduler: order in the sync response, result in the heartbeat."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler import remediation
from scheduler.config import SchedulerConfig
from scheduler.core import Scheduler
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import FirstFit
from scheduler.records import NodeRecord, NodeStatus
from scheduler.store import SQLiteStore
from titus_common.protocol import CapacityReport, HealthCondition, HealthStatus, NodeReport, RemediationResult

NOW = 1_000_000.0


def cond(check: str = "engine", status: HealthStatus = HealthStatus.FAILED, reason: str = "EngineDown") -> HealthCondition:
    return HealthCondition(check=check, status=status, reason=reason, since=NOW, observed_at=NOW)


def host(name: str, *conds: HealthCondition) -> NodeRecord:
    return NodeRecord.model_validate({
        "id": name, "capacity": {"cpus": 2, "memoryMiB": 1024, "diskMiB": 1000}, "registeredAt": NOW,
        "lastHeartbeat": NOW, "health": [c.model_dump(by_alias=True) for c in conds],
    })


def fleet(n: int, failing: int, check: str = "engine") -> list[NodeRecord]:
    return [host(f"h{i:02d}", cond(check) if i < failing else cond(check, HealthStatus.OK, "Fine")) for i in range(n)]


def test_one_failing_host_gets_one_order() -> None:
    nodes = fleet(10, 1)
    p = remediation.plan(nodes, SchedulerConfig(), NOW)
    assert p.ordered == ["h00"] and not p.frozen
    order = remediation.order_for(nodes[0])
    assert order is not None and order.action == "restart-engine" and order.check == "engine"
    # Already in flight: nothing new next pass.
    assert remediation.plan(nodes, SchedulerConfig(), NOW + 1).ordered == []


@pytest.mark.parametrize(
    ("n", "failing", "max_hosts", "fraction", "expected"),
    [
        (10, 2, 1, 0.1, 1),  # N=1 bounds it (2/10 < freeze)
        (20, 5, 5, 0.1, 2),  # 10 % of 20 = 2 bounds it
        (100, 20, 3, 0.5, 3),  # 20 of 100 < 30 %: N=3
        (4, 1, 5, 0.1, 1),  # at least one host however small the cell
    ],
)
def test_budget_bounds_hosts_in_remediation(n: int, failing: int, max_hosts: int, fraction: float, expected: int) -> None:
    config = SchedulerConfig(remediation_max_hosts=max_hosts, remediation_max_fraction=fraction)
    nodes = fleet(n, failing)
    assert len(remediation.plan(nodes, config, NOW).ordered) == expected
    assert sum(1 for x in nodes if x.remediation is not None) == expected


def test_half_the_fleet_failing_freezes_no_orders_no_drains() -> None:
    nodes = fleet(10, 5)
    for n in nodes[:5]:  # even hosts that would otherwise be drained
        for _ in range(3):
            n.remediation_history.append(remediation.RemediationEntry(
                at=NOW - 10, check="engine", reason="EngineDown", action="restart-engine", outcome="failed"))
    p = remediation.plan(nodes, SchedulerConfig(), NOW)
    assert p.frozen and "5 of 10" in p.alert and p.ordered == [] and p.drained == []
    assert not any(n.cordoned for n in nodes)


def _run_order(node: NodeRecord, ok: bool, at: float) -> None:
    cur = node.remediation
    assert cur is not None
    assert remediation.apply_results(node, [RemediationResult(id=cur.order_id, action=cur.action, ok=ok,
                                                              message="m", finished_at=at)], at)


def test_failed_actions_in_a_row_drain_the_host() -> None:
    config = SchedulerConfig(remediation_failures_before_drain=2, remediation_cooldown=30)
    nodes = fleet(10, 1)
    t = NOW
    for _ in range(2):
        assert remediation.plan(nodes, config, t).ordered == ["h00"]
        _run_order(nodes[0], False, t + 1)
        t += 60
    p = remediation.plan(nodes, config, t)
    assert p.drained == ["h00"] and nodes[0].cordoned and "2 failed actions in a row" in nodes[0].cordon_reason
    assert [e.outcome for e in nodes[0].remediation_history] == ["ordered", "failed", "ordered", "failed", "drained"]
    assert "cordoned" in nodes[0].taints
    # A drained (cordoned) host is the operator's now.
    assert remediation.plan(nodes, config, t + 60).ordered == []


def test_hourly_action_limit_then_drain_and_the_hour_rolls() -> None:
    config = SchedulerConfig(remediation_actions_per_hour=2, remediation_failures_before_drain=5,
                             remediation_cooldown=30)
    nodes = fleet(10, 1)
    for i in range(2):
        assert remediation.plan(nodes, config, NOW + i * 60).ordered == ["h00"]
        _run_order(nodes[0], True, NOW + i * 60 + 1)  # the action "worked" but the check still fails
    p = remediation.plan(nodes, config, NOW + 300)
    assert p.drained == ["h00"] and "after 2 actions this hour" in nodes[0].cordon_reason


def test_order_without_result_times_out() -> None:
    config = SchedulerConfig(remediation_timeout=100, remediation_cooldown=0)
    nodes = fleet(10, 1)
    remediation.plan(nodes, config, NOW)
    p = remediation.plan(nodes, config, NOW + 101)
    assert nodes[0].remediation_history[1].outcome == "timeout"
    assert p.ordered == ["h00"]  # ordered again (within the hourly limit)


def test_conditions_without_a_playbook_and_degraded_ones_are_not_remediated() -> None:
    nodes = [host("a", cond("registry", reason="RegistryUnreachable")),
             host("b", cond("disk", HealthStatus.DEGRADED, "DiskPressure"))] + fleet(10, 0)
    assert remediation.plan(nodes, SchedulerConfig(), NOW).ordered == []


def test_disabled_and_disconnected() -> None:
    nodes = fleet(10, 1)
    assert remediation.plan(nodes, SchedulerConfig(remediation_enabled=False), NOW).ordered == []
    nodes[0].status = NodeStatus.DISCONNECTED
    assert remediation.plan(nodes, SchedulerConfig(), NOW).ordered == []


def test_round_trip_through_the_scheduler(tmp_path: Path) -> None:
    clock = [NOW]
    s = Scheduler(SQLiteStore(tmp_path / "s.db"), FirstFit(), SchedulerMetrics(), SchedulerConfig(),
                  clock=lambda: clock[0])

    def beat(name: str, health: list[HealthCondition], results: list[RemediationResult] | None = None) -> None:
        s.heartbeat(NodeReport(id=name, capacity=CapacityReport(cpus=2, memory_mib=1024, disk_mib=1000),
                               health=health, remediation_results=results or []))

    for i in range(9):
        beat(f"ok{i}", [cond(status=HealthStatus.OK, reason="Fine")])
    beat("bad", [cond("disk", reason="DiskPressure")])
    s.check_nodes()
    (order,) = s.work_for("bad").remediate
    assert order.action == "prune" and s.work_for("bad").remediate == [order]  # redelivered until answered
    clock[0] += 5
    beat("bad", [cond("disk", HealthStatus.OK, "DiskOk")],
         [RemediationResult(id=order.id, action="prune", ok=True, message="freed 1 GiB", finished_at=clock[0])])
    assert s.work_for("bad").remediate == []
    s.store.close()
    s2 = Scheduler(SQLiteStore(tmp_path / "s.db"), FirstFit(), SchedulerMetrics(), SchedulerConfig(),
                   clock=lambda: clock[0])
    assert [e.outcome for e in s2.nodes["bad"].remediation_history] == ["ordered", "ok"]
    assert s2.nodes["bad"].remediation_history[-1].message == "freed 1 GiB"


def test_cooldown_between_actions_on_a_host() -> None:
    config = SchedulerConfig(remediation_cooldown=120)
    nodes = fleet(10, 1)
    remediation.plan(nodes, config, NOW)
    _run_order(nodes[0], True, NOW + 1)
    assert remediation.plan(nodes, config, NOW + 100).ordered == []  # still cooling: checks re-run
    assert remediation.plan(nodes, config, NOW + 122).ordered == ["h00"]


def test_unsupported_action_is_not_a_host_failure_and_not_reordered() -> None:
    config = SchedulerConfig(remediation_failures_before_drain=1, remediation_actions_per_hour=1)
    nodes = fleet(10, 1)
    remediation.plan(nodes, config, NOW)
    cur = nodes[0].remediation
    assert cur is not None
    remediation.apply_results(nodes[0], [RemediationResult(id=cur.order_id, action=cur.action, ok=False,
                                                           supported=False, message="not configured",
                                                           finished_at=NOW)], NOW)
    assert nodes[0].remediation_history[-1].outcome == "unsupported"
    for t in (NOW + 10, NOW + 1000, NOW + 3000):
        p = remediation.plan(nodes, config, t)
        assert p.ordered == [] and p.drained == [] and not nodes[0].cordoned
    assert remediation.plan(nodes, config, NOW + 3700).ordered == ["h00"]  # an hour later: asked again
