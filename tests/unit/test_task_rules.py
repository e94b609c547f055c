"""The per-task rule diff (netns/taskrules.py) and the `eni` check's verdict on missing task rules."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from health.checks.eni import EniCheck, EniLink
from titus_common.protocol import HealthStatus
from netns.taskrules import TaskRule, expected_task_rules, missing_task_rules, present_task_rules
from netns.wiring import host_ifname

OURS = 122


def from_rule(ip: str, table: int = 101, proto: int = OURS) -> dict[str, Any]:
    return {"FRA_PROTOCOL": proto, "FRA_TABLE": table, "FRA_PRIORITY": 1536, "FRA_SRC": ip, "src_len": 32}


def iif_rule(task: str, table: int = 101, proto: int = OURS) -> dict[str, Any]:
    return {"FRA_PROTOCOL": proto, "FRA_TABLE": table, "FRA_PRIORITY": 10, "FRA_IIFNAME": host_ifname(task)}


FROM_A = TaskRule(1536, 101, src="10.0.0.5")
IIF_A = TaskRule(10, 101, iifname=host_ifname("task-a"))
FROM_B = TaskRule(1536, 102, src="10.0.1.7")
IIF_B = TaskRule(10, 102, iifname=host_ifname("task-b"))
WIRED = {"task-a": ("10.0.0.5", 101), "task-b": ("10.0.1.7", 102)}


@pytest.mark.parametrize("wired, dump, missing", [
    pytest.param(WIRED, [from_rule("10.0.0.5"), iif_rule("task-a"), from_rule("10.0.1.7", 102),
                         iif_rule("task-b", 102)], [], id="all-present"),
    pytest.param(WIRED, [iif_rule("task-a"), from_rule("10.0.1.7", 102), iif_rule("task-b", 102)],
                 [(FROM_A, "task-a")], id="from-rule-deleted"),
    pytest.param(WIRED, [from_rule("10.0.0.5"), from_rule("10.0.1.7", 102), iif_rule("task-b", 102)],
                 [(IIF_A, "task-a")], id="hairpin-rule-deleted"),
    pytest.param(WIRED, [], [(IIF_A, "task-a"), (IIF_B, "task-b"), (FROM_A, "task-a"), (FROM_B, "task-b")],
                 id="all-flushed"),
    # Someone else's identical-looking rule (another protocol) is not ours: ours is still missing.
    pytest.param({"task-a": ("10.0.0.5", 101)}, [from_rule("10.0.0.5", proto=4), iif_rule("task-a")],
                 [(FROM_A, "task-a")], id="foreign-protocol-not-counted"),
    # A rule to another table does not stand in for the ENI's.
    pytest.param({"task-a": ("10.0.0.5", 101)}, [from_rule("10.0.0.5", table=102), iif_rule("task-a")],
                 [(FROM_A, "task-a")], id="wrong-table"),
    # A task on no ENI (local provider) needs no per-task rule.
    pytest.param({"task-l": ("172.30.0.4", None)}, [], [], id="no-eni-table"),
    # Rules of tasks the agent no longer wires are extra, never reported (gc removes them).
    pytest.param({}, [from_rule("10.0.0.9"), iif_rule("gone")], [], id="extra-rules-ignored"),
])
def test_missing_task_rules(wired: dict[str, tuple[str, int | None]], dump: list[dict[str, Any]],
                            missing: list[tuple[TaskRule, str]]) -> None:
    assert missing_task_rules(expected_task_rules(wired), present_task_rules(dump)) == missing


def test_diff_is_idempotent_once_readded() -> None:
    expected = expected_task_rules(WIRED)
    present = present_task_rules([])
    present |= {rule for rule, _ in missing_task_rules(expected, present)}
    assert missing_task_rules(expected, present) == []


def test_describe_names_the_selector() -> None:
    assert FROM_A.describe() == "from 10.0.0.5 lookup 101 (priority 1536)"
    assert IIF_A.describe() == f"iif {host_ifname('task-a')} lookup 101 (priority 10)"


def test_eni_check_degraded_when_only_task_rules_missing() -> None:
    links = [EniLink("eni-1", "eth1", ("1 task rule(s) to table 101 missing (10.0.0.5)",), rules_checked=2,
                     missing_rules=("10.0.0.5",))]

    async def read() -> list[EniLink]:
        return links

    obs = asyncio.run(EniCheck(read).run())
    assert obs.status is HealthStatus.DEGRADED and obs.reason == "TaskRuleMissing"
    assert "10.0.0.5" in obs.message and obs.evidence["missingTaskRules"] == "10.0.0.5"
