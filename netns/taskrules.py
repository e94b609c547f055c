"""The per-task policy rules `Wiring.setup` makes (netns/wiring.py), re-added when something
deleted them: `from <ip> lookup <ENI table>` (priority 1536) and the hairpin
`iif <tn link> lookup <ENI table>` (priority 10). Without them the task's traffic leaves by the
main table, i.e. the wrong interface, silently (issue #12).

`missing_task_rules` is the pure diff of the rules the agent's wired tasks need against the rules
present; only rules with our protocol (122) count as present, and only missing ones are added:
nothing of anyone else's is ever read as ours or touched.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from netns.wiring import (
    RT_PROTO_TITUS,
    RULE_FROM_CONTAINER_PRIORITY,
    RULE_FROM_TASK_LINK_PRIORITY,
    host_ifname,
    iproute_in,
)

__all__ = ["TaskRule", "add_task_rules", "expected_task_rules", "missing_task_rules", "present_task_rules"]


@dataclass(frozen=True, order=True)
class TaskRule:
    priority: int
    table: int
    src: str | None = None  # the from-rule's task address
    iifname: str | None = None  # the hairpin rule's host link

    def describe(self) -> str:
        what = f"from {self.src}" if self.src is not None else f"iif {self.iifname}"
        return f"{what} lookup {self.table} (priority {self.priority})"


def expected_task_rules(wired: Mapping[str, tuple[str, int | None]]) -> dict[TaskRule, str]:
    """Each rule a wired task (task → (address, ENI table)) needs, with its task. No table: the
    task is on no ENI (the local provider) and has no per-task rule."""
    out: dict[TaskRule, str] = {}
    for task_id, (address, table) in wired.items():
        if table is None:
            continue
        out[TaskRule(RULE_FROM_CONTAINER_PRIORITY, table, src=address)] = task_id
        out[TaskRule(RULE_FROM_TASK_LINK_PRIORITY, table, iifname=host_ifname(task_id))] = task_id
    return out


def present_task_rules(dump: Iterable[Mapping[str, Any]]) -> set[TaskRule]:
    """Our per-task rules among a rule dump (pyroute2 messages read as mappings)."""
    out: set[TaskRule] = set()
    for r in dump:
        if r.get("FRA_PROTOCOL") != RT_PROTO_TITUS or not isinstance(r.get("FRA_TABLE"), int):
            continue
        priority, table = r.get("FRA_PRIORITY"), int(r["FRA_TABLE"])
        if priority == RULE_FROM_CONTAINER_PRIORITY and r.get("FRA_SRC") and r.get("src_len") == 32:
            out.add(TaskRule(priority, table, src=str(r["FRA_SRC"])))
        elif priority == RULE_FROM_TASK_LINK_PRIORITY and r.get("FRA_IIFNAME"):
            out.add(TaskRule(priority, table, iifname=str(r["FRA_IIFNAME"])))
    return out


def missing_task_rules(expected: Mapping[TaskRule, str], present: set[TaskRule]) -> list[tuple[TaskRule, str]]:
    """The expected rules not present, with their task, in a stable order."""
    return sorted((rule, task) for rule, task in expected.items() if rule not in present)


def _dump(ipr: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for r in ipr.rule("dump", family=2):
        msg = {k: r.get(k) for k in ("FRA_PROTOCOL", "FRA_TABLE", "FRA_PRIORITY", "FRA_SRC", "FRA_IIFNAME")}
        msg["src_len"] = r.get("src_len")
        out.append(msg)
    return out


def add_task_rules(wired: Mapping[str, tuple[str, int | None]], host_netns: str | None = None) -> list[tuple[TaskRule, str]]:
    """Re-add the wired tasks' missing rules (blocking netlink: run on a thread); returns them."""
    with iproute_in(host_netns) as ipr:
        missing = missing_task_rules(expected_task_rules(wired), present_task_rules(_dump(ipr)))
        for rule, _task in missing:
            selector: dict[str, Any] = {"src": rule.src, "src_len": 32} if rule.src else {"iifname": rule.iifname}
            try:
                ipr.rule("add", protocol=RT_PROTO_TITUS, priority=rule.priority, table=rule.table, **selector)
            except OSError as e:  # added meanwhile (a concurrent setup): nothing to do
                if getattr(e, "code", e.errno) != errno.EEXIST:
                    raise
    return missing
