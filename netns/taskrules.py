"""A task's own policy rules, kept in place while the task is wired (issue 12).

`Wiring.setup` (netns/wiring.py) gives each task, in the host namespace: `to <ip> lookup main`
(priority 512), and on an ENI `from <ip> lookup <ENI table>` (1536) and the hairpin
`iif <tn link> lookup <ENI table>` (10). Deleted from outside (an operator, a network manager) the
task silently loses its traffic or leaves by the wrong interface. Here:
- `expected_rules` / `present_rules` / `missing_rules`: the pure diff of what the wired tasks need
  against a rule dump (only rules with our protocol count as present);
- `WiredTasks`: the tasks whose rules are kept, and those whose teardown has begun;
- `readd_missing`: puts the missing ones back (blocking netlink: run it on a thread), never a rule of
  a task whose teardown has begun (the argument is in its docstring).
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from netns.rtnl import IPRoute, NetlinkError
from netns.wiring import (
    HOST_IF_PREFIX,
    RT_PROTO_TITUS,
    RULE_FROM_CONTAINER_PRIORITY,
    RULE_FROM_TASK_LINK_PRIORITY,
    RULE_TO_CONTAINER_PRIORITY,
    iproute_in,
)

__all__ = ["MissingRule", "TaskRule", "WiredTask", "WiredTasks", "expected_rules", "missing_rules",
           "present_rules", "find_missing_in", "readd_in", "readd_missing", "task_links"]

MAIN_TABLE = 254
log = logging.getLogger("titus.netns.taskrules")


@dataclass(frozen=True, order=True)
class TaskRule:
    """One rule as netlink identifies it: priority, table and one selector (`from`, `to` or `iif`)."""

    priority: int
    table: int
    kind: str  # "from" | "to" | "iif"
    value: str  # the task's address, or its host link's name

    def describe(self) -> str:
        return f"{self.kind} {self.value} lookup {self.table} priority {self.priority}"

    def netlink(self) -> dict[str, Any]:
        """The fields `IPRoute.rule("add"/"del", …)` takes."""
        fields: dict[str, Any] = {"priority": self.priority, "table": self.table}
        if self.kind == "from":
            fields.update(src=self.value, src_len=32)
        elif self.kind == "to":
            fields.update(dst=self.value, dst_len=32)
        else:
            fields.update(iifname=self.value)
        return fields


@dataclass(frozen=True, eq=False)  # identity matters: a task wired again is another entry (WiredTasks.keeps)
class WiredTask:
    task_id: str
    address: str
    table: int | None  # its ENI's table; None: on no ENI (local provider): only the `to` rule
    host_ifname: str


@dataclass(frozen=True, order=True)
class MissingRule:
    task_id: str
    rule: TaskRule


def expected_rules(task: WiredTask) -> list[TaskRule]:
    rules = [TaskRule(RULE_TO_CONTAINER_PRIORITY, MAIN_TABLE, "to", task.address)]
    if task.table is not None:
        rules += [TaskRule(RULE_FROM_CONTAINER_PRIORITY, task.table, "from", task.address),
                  TaskRule(RULE_FROM_TASK_LINK_PRIORITY, task.table, "iif", task.host_ifname)]
    return rules


def present_rules(dump: Iterable[Mapping[str, Any]]) -> set[TaskRule]:
    """Our per-task rules in a rule dump (pyroute2 messages, or mappings in tests)."""
    out: set[TaskRule] = set()
    for r in dump:
        table, priority = r.get("FRA_TABLE"), r.get("FRA_PRIORITY")
        if r.get("FRA_PROTOCOL") != RT_PROTO_TITUS or not isinstance(table, int) or not isinstance(priority, int):
            continue
        if r.get("FRA_IIFNAME"):
            out.add(TaskRule(priority, table, "iif", str(r.get("FRA_IIFNAME"))))
        elif r.get("FRA_SRC") and r.get("src_len") == 32:
            out.add(TaskRule(priority, table, "from", str(r.get("FRA_SRC"))))
        elif r.get("FRA_DST") and r.get("dst_len") == 32:
            out.add(TaskRule(priority, table, "to", str(r.get("FRA_DST"))))
    return out


def task_links(dump: Iterable[Mapping[str, Any]]) -> set[str]:
    """The names of the `tn…` links in a link dump."""
    names = (str(link.get("IFLA_IFNAME") or "") for link in dump)
    return {n for n in names if n.startswith(HOST_IF_PREFIX)}


def missing_rules(tasks: Iterable[WiredTask], present: set[TaskRule], links: set[str] | None = None) -> list[MissingRule]:
    """The rules the tasks need that are not present, sorted. With `links` (the host's `tn…` links):
    a task whose link is gone is left out (it lost its network anyway; re-adding its rules would only
    fight the GC, which removes rules of links that do not exist)."""
    out = [MissingRule(t.task_id, rule) for t in tasks if links is None or t.host_ifname in links
           for rule in expected_rules(t) if rule not in present]
    return sorted(out)


class WiredTasks:
    """The tasks whose rules the agent keeps, and those whose teardown has begun. Written on the
    event loop, read by re-adds on threads: every access under a small lock that is never held
    across netlink (teardowns are not serialised by it)."""

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self._lock = threading.Lock()
        self._wired: dict[str, WiredTask] = {}
        self._closing: set[str] = set()
        self.on_change = on_change  # e.g. refresh what the netlink watch compares events with

    def wired(self, task: WiredTask) -> None:
        with self._lock:
            self._closing.discard(task.task_id)
            self._wired[task.task_id] = task
        self.on_change()

    def teardown_begins(self, task_id: str) -> None:
        """Before the teardown deletes anything: from now on no re-add puts its rules back."""
        with self._lock:
            self._closing.add(task_id)
            self._wired.pop(task_id, None)
        self.on_change()

    def teardown_done(self, task_id: str) -> None:
        with self._lock:
            self._closing.discard(task_id)

    def keeps(self, task: WiredTask) -> bool:
        """Its rules are to be kept: this very entry is the task's current one and no teardown began."""
        with self._lock:
            return task.task_id not in self._closing and self._wired.get(task.task_id) is task

    def closing(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._closing)

    def tasks(self) -> list[WiredTask]:
        with self._lock:
            return list(self._wired.values())

    def rules(self) -> frozenset[TaskRule]:
        with self._lock:
            return frozenset(r for t in self._wired.values() for r in expected_rules(t))


class RuleOps(Protocol):
    """What `readd_missing` does to the host (a seam for the race tests)."""

    def dump(self) -> tuple[list[Any], list[Any]]: ...  # (rules, links)

    def add(self, rule: TaskRule) -> None: ...

    def delete(self, rule: TaskRule) -> None: ...


class RuleHost:
    """`RuleOps` on a host namespace's netlink."""

    def __init__(self, ipr: IPRoute) -> None:
        self.ipr = ipr

    def dump(self) -> tuple[list[Any], list[Any]]:
        return list(self.ipr.rule("dump", family=2)), list(self.ipr.link("dump"))

    def add(self, rule: TaskRule) -> None:
        try:
            self.ipr.rule("add", protocol=RT_PROTO_TITUS, **rule.netlink())
        except NetlinkError as e:
            if e.code != errno.EEXIST:  # added meanwhile (by a setup of the same task): in place
                raise

    def delete(self, rule: TaskRule) -> None:
        try:
            self.ipr.rule("del", **rule.netlink())
        except NetlinkError as e:
            if e.code != errno.ENOENT:
                raise


def readd_missing(wired: WiredTasks, host: RuleOps) -> list[MissingRule]:
    """Re-add the wired tasks' missing rules; returns those put back (blocking).

    Never a rule of a task whose teardown has begun. `WiredTasks.teardown_begins` runs (on the event
    loop) before the teardown deletes anything (D). For each task this thread checks `keeps` (C1),
    adds (A), checks again (C2) and, if the teardown began meanwhile, deletes what it added (X):
    C1 < A < C2 < X in this thread. Teardown marked before C1: skipped. Marked between C1 and C2: X
    removes the rule whatever the order of A and D. Marked after C2: D comes after A and removes it.
    A snapshot taken before a teardown that has since finished fails `keeps` too (the entry is no
    longer the task's), so a slow re-add never resurrects a finished task's rules. (X deletes by
    selector; it cannot hit another task's rule: a released address cools 30 s before its reuse.)"""
    rules, links = host.dump()
    tasks = {t.task_id: t for t in wired.tasks()}
    by_task: dict[str, list[MissingRule]] = {}
    for m in missing_rules(tasks.values(), present_rules(rules), task_links(links)):
        by_task.setdefault(m.task_id, []).append(m)
    readded: list[MissingRule] = []
    for task_id, wanted in by_task.items():
        task = tasks[task_id]
        if not wired.keeps(task):  # C1
            continue
        added: list[MissingRule] = []
        try:
            for m in wanted:
                host.add(m.rule)  # A
                added.append(m)
        except NetlinkError as e:  # this task's rules stay missing (the health check says so)
            log.warning("re-adding task %s's rules failed: %s", task_id, e)
        finally:
            if not wired.keeps(task):  # C2: its teardown began while we added
                for m in added:
                    host.delete(m.rule)  # X
                added = []
        readded += added
    return readded


def readd_in(host_netns: str | None, wired: WiredTasks) -> list[MissingRule]:
    with iproute_in(host_netns) as ipr:
        return readd_missing(wired, RuleHost(ipr))


def find_missing_in(host_netns: str | None, wired: WiredTasks) -> list[MissingRule]:
    """Read-only, for the health check: the kept tasks' rules missing now."""
    with iproute_in(host_netns) as ipr:
        rules, links = RuleHost(ipr).dump()
    return missing_rules([t for t in wired.tasks() if wired.keeps(t)], present_rules(rules), task_links(links))
