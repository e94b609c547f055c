"""A task's own policy rules (netns/taskrules.py): the diff of what the wired tasks need against a
rule dump, and the re-add that must never put back the rules of a task whose teardown has begun
(a re-add from a snapshot taken before a concurrent teardown once leaked them: found by
tests/integration/test_launch_leaks.py)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from netns import step
from netns.eniwatch import Owned, is_drift
from netns.ipam import PoolConfig
from netns.pool import NetworkPool
from netns.providers.local import LocalProvider, LocalVpc
from netns.taskrules import (
    MissingRule,
    TaskRule,
    WiredTask,
    WiredTasks,
    expected_rules,
    missing_rules,
    present_rules,
    readd_missing,
)
from netns.wiring import RT_PROTO_TITUS, Wiring, host_ifname

LOCAL = WiredTask("t-local", "100.64.0.5", None, host_ifname("t-local"))
ENI = WiredTask("t-eni", "10.0.0.7", 101, host_ifname("t-eni"))
TO_LOCAL = TaskRule(512, 254, "to", "100.64.0.5")
TO_ENI = TaskRule(512, 254, "to", "10.0.0.7")
FROM_ENI = TaskRule(1536, 101, "from", "10.0.0.7")
IIF_ENI = TaskRule(10, 101, "iif", host_ifname("t-eni"))
LINKS = {LOCAL.host_ifname, ENI.host_ifname}


def dumped(rule: TaskRule, protocol: int = RT_PROTO_TITUS) -> dict[str, Any]:
    """A rule as a netlink dump shows it."""
    msg: dict[str, Any] = {"FRA_PROTOCOL": protocol, "FRA_TABLE": rule.table, "FRA_PRIORITY": rule.priority,
                           "src_len": 0, "dst_len": 0}
    if rule.kind == "from":
        msg.update(FRA_SRC=rule.value, src_len=32)
    elif rule.kind == "to":
        msg.update(FRA_DST=rule.value, dst_len=32)
    else:
        msg.update(FRA_IIFNAME=rule.value)
    return msg


def test_expected_rules_local_task_has_only_its_to_rule_eni_task_all_three() -> None:
    assert expected_rules(LOCAL) == [TO_LOCAL]
    assert expected_rules(ENI) == [TO_ENI, FROM_ENI, IIF_ENI]


@pytest.mark.parametrize("present, links, missing", [
    ([TO_LOCAL, TO_ENI, FROM_ENI, IIF_ENI], LINKS, []),  # all in place
    ([TO_LOCAL, TO_ENI, IIF_ENI], LINKS, [MissingRule("t-eni", FROM_ENI)]),  # the from rule deleted
    ([TO_LOCAL, TO_ENI, FROM_ENI], LINKS, [MissingRule("t-eni", IIF_ENI)]),  # the hairpin deleted
    ([TO_ENI, FROM_ENI, IIF_ENI], LINKS, [MissingRule("t-local", TO_LOCAL)]),  # a local task's to rule
    ([], LINKS, sorted([MissingRule("t-local", TO_LOCAL), MissingRule("t-eni", TO_ENI),
                        MissingRule("t-eni", FROM_ENI), MissingRule("t-eni", IIF_ENI)])),  # flushed
    ([], {LOCAL.host_ifname}, [MissingRule("t-local", TO_LOCAL)]),  # t-eni's link is gone: left to GC
    ([], None, sorted([MissingRule("t-local", TO_LOCAL), MissingRule("t-eni", TO_ENI),
                       MissingRule("t-eni", FROM_ENI), MissingRule("t-eni", IIF_ENI)])),  # links not known
])
def test_missing_rules(present: list[TaskRule], links: set[str] | None, missing: list[MissingRule]) -> None:
    assert missing_rules([LOCAL, ENI], present_rules(dumped(r) for r in present), links) == missing


@pytest.mark.parametrize("msg, found", [
    (dumped(FROM_ENI), {FROM_ENI}),
    (dumped(TO_ENI), {TO_ENI}),
    (dumped(IIF_ENI), {IIF_ENI}),
    (dumped(FROM_ENI, protocol=4), set()),  # not ours (e.g. `ip rule add` by hand: proto static)
    ({**dumped(FROM_ENI), "src_len": 24}, set()),  # a /24 rule is no task's
    ({"FRA_PROTOCOL": RT_PROTO_TITUS, "FRA_TABLE": 255, "FRA_PRIORITY": 0}, set()),  # no selector
])
def test_present_rules_reads_only_our_per_task_rules(msg: dict[str, Any], found: set[TaskRule]) -> None:
    assert present_rules([msg]) == found


def test_netlink_fields_of_each_kind() -> None:
    assert FROM_ENI.netlink() == {"priority": 1536, "table": 101, "src": "10.0.0.7", "src_len": 32}
    assert TO_ENI.netlink() == {"priority": 512, "table": 254, "dst": "10.0.0.7", "dst_len": 32}
    assert IIF_ENI.netlink() == {"priority": 10, "table": 101, "iifname": host_ifname("t-eni")}
    assert FROM_ENI.describe() == "from 10.0.0.7 lookup 101 priority 1536"


class Nlmsg(dict[str, Any]):
    def get_attr(self, name: str) -> Any:
        return self.get(name)


@pytest.mark.parametrize("msg, drift", [
    ({"event": "RTM_DELRULE", **dumped(FROM_ENI)}, True),  # deleted from outside
    ({"event": "RTM_DELRULE", **dumped(TO_LOCAL)}, True),
    ({"event": "RTM_DELRULE", **dumped(TaskRule(1536, 101, "from", "10.0.0.99"))}, False),  # no wired task's
    ({"event": "RTM_NEWRULE", **dumped(FROM_ENI)}, False),  # our own re-add
])
def test_a_wired_tasks_deleted_rule_is_drift(msg: dict[str, Any], drift: bool) -> None:
    wired = WiredTasks()
    wired.wired(ENI)
    wired.wired(LOCAL)
    assert is_drift(Nlmsg(msg), Owned({}, frozenset(), wired.rules())) is drift


# ---- the re-add and a teardown -------------------------------------------------------------------


class FakeHost:
    """The host's rules and links; hooks run at the re-add's steps to interleave a teardown."""

    def __init__(self, rules: set[TaskRule], links: set[str]) -> None:
        self.rules = set(rules)
        self.links = set(links)
        self.on_dump: Callable[[], None] = lambda: None
        self.before_add: Callable[[TaskRule], None] = lambda r: None
        self.after_add: Callable[[TaskRule], None] = lambda r: None

    def dump(self) -> tuple[list[Any], list[Any]]:
        out = [dumped(r) for r in self.rules], [{"IFLA_IFNAME": n} for n in self.links]
        self.on_dump()
        return out

    def add(self, rule: TaskRule) -> None:
        self.before_add(rule)
        self.rules.add(rule)
        self.after_add(rule)

    def delete(self, rule: TaskRule) -> None:
        self.rules.discard(rule)


def teardown_of(wired: WiredTasks, host: FakeHost, task: WiredTask) -> Callable[[], None]:
    """What TaskNetworks.teardown does, in its order: mark, delete the rules, done."""
    def run() -> None:
        wired.teardown_begins(task.task_id)
        for r in expected_rules(task):
            host.delete(r)
        wired.teardown_done(task.task_id)
    return run


def wired_eni() -> tuple[WiredTasks, FakeHost]:
    wired = WiredTasks()
    wired.wired(ENI)
    return wired, FakeHost({TO_ENI, IIF_ENI}, {ENI.host_ifname})  # its from rule deleted from outside


def test_a_deleted_rule_is_re_added_and_reported() -> None:
    wired, host = wired_eni()
    assert readd_missing(wired, host) == [MissingRule("t-eni", FROM_ENI)]
    assert host.rules == {TO_ENI, FROM_ENI, IIF_ENI}
    assert readd_missing(wired, host) == []  # nothing missing any more


def test_a_teardown_that_began_before_the_re_add_is_left_alone() -> None:
    wired, host = wired_eni()
    teardown_of(wired, host, ENI)()
    assert readd_missing(wired, host) == [] and host.rules == set()


@pytest.mark.parametrize("hook", ["on_dump", "before_add", "after_add"])
def test_a_teardown_interleaving_the_re_add_leaves_none_of_its_rules(hook: str) -> None:
    # on_dump: the whole teardown between the snapshot and the check (a stale snapshot);
    # before_add: teardown deletes, then the re-add adds (D < A): the re-check deletes it again;
    # after_add: the re-add added, then teardown deletes (A < D).
    wired, host = wired_eni()
    ran = []

    def teardown(*_: Any) -> None:
        if not ran:
            ran.append(1)
            teardown_of(wired, host, ENI)()
    setattr(host, hook, teardown)
    assert readd_missing(wired, host) == []
    assert ran and host.rules == set()


def test_a_teardown_marked_but_not_yet_deleting_when_the_re_add_adds() -> None:
    # The mark lands between the check and the add; the teardown's deletions come only after the
    # re-add returned (its thread is slow): the re-add's re-check already took its rule away.
    wired, host = wired_eni()
    host.before_add = lambda r: wired.teardown_begins(ENI.task_id)
    assert readd_missing(wired, host) == []
    assert FROM_ENI not in host.rules
    teardown_of(wired, host, ENI)()
    assert host.rules == set()


def test_the_task_wired_again_is_kept_but_not_its_old_entry() -> None:
    wired = WiredTasks()
    old = WiredTask("t", "10.0.0.9", None, host_ifname("t"))
    wired.wired(old)
    wired.teardown_begins("t")
    wired.teardown_done("t")
    assert not wired.keeps(old)
    new = WiredTask("t", "10.0.0.9", None, host_ifname("t"))
    wired.wired(new)  # the same task wired again (a resumed launch)
    assert wired.keeps(new) and not wired.keeps(old)


# ---- TaskNetworks: its teardown on the event loop, the re-add on a thread -------------------------


class TeardownWiring(Wiring):
    def __init__(self, host: FakeHost, deleted: threading.Event) -> None:
        super().__init__(owner="unit")
        self.host = host
        self.deleted = deleted

    def teardown(self, record: dict[str, Any]) -> None:
        for r in (TO_ENI, FROM_ENI, IIF_ENI):
            self.host.delete(r)
        self.deleted.set()


async def test_task_networks_teardown_during_a_re_add_on_a_thread(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Real threads: the re-add has checked the task and is about to add when the teardown runs
    and deletes (D < A); the task's rules must be gone once both are done."""
    host = FakeHost({TO_ENI, IIF_ENI}, {ENI.host_ifname})
    adding, deleted = threading.Event(), threading.Event()

    def before_add(rule: TaskRule) -> None:
        adding.set()
        assert deleted.wait(10), "the teardown did not run"

    host.before_add = before_add
    monkeypatch.setattr(step, "readd_in", lambda netns, wired: readd_missing(wired, host))
    provider = LocalProvider("unit", LocalVpc("100.64.0.0/24", state_path=tmp_path / "vpc.json"))
    pool = NetworkPool(provider, PoolConfig(max_enis=1, ips_per_eni=4, default_security_groups=("sg-1",)),
                       checkpoint_path=tmp_path / "ipam.json")
    networks = step.TaskNetworks(pool, TeardownWiring(host, deleted))
    record = {"wiring": {"host_ifname": ENI.host_ifname, "address": ENI.address, "table": ENI.table}}
    networks._remember_wiring(ENI.task_id, record["wiring"])
    assert FROM_ENI in networks.owned.task_rules  # the watch knows it

    async def teardown() -> None:
        assert await asyncio.to_thread(adding.wait, 10)
        await networks.teardown(ENI.task_id, record)

    drift, _ = await asyncio.gather(networks.readd_task_rules(), teardown())
    assert drift == {} and host.rules == set()
    assert networks.recent_rule_repairs(60) == [] and networks.owned.task_rules == frozenset()
    assert await networks.readd_task_rules() == {} and host.rules == set()  # nor later


# ---- the health check ------------------------------------------------------------------------------


def test_eni_check_reports_task_rule_missing_naming_the_task_and_the_rule() -> None:
    from health.checks.eni import EniCheck, EniLink, TaskRuleFinding
    from titus_common.protocol import HealthStatus

    async def links() -> list[EniLink]:
        return [EniLink("eni-1", "eth1", rules_checked=3)]

    def run(*found: TaskRuleFinding) -> Any:
        async def rules() -> list[TaskRuleFinding]:
            return list(found)
        return asyncio.run(EniCheck(links, task_rules=rules).run())

    assert run().reason == "EniOk"
    obs = run(TaskRuleFinding("t-eni", FROM_ENI.describe(), True))
    assert (obs.status, obs.reason) == (HealthStatus.DEGRADED, "TaskRuleMissing")
    assert "t-eni" in obs.message and "from 10.0.0.7 lookup 101" in obs.message
    assert obs.evidence["taskRule.t-eni"] == "from 10.0.0.7 lookup 101 priority 1536 (re-added)"
    assert (obs.evidence["taskRulesMissing"], obs.evidence["taskRulesReadded"]) == (0, 1)
    obs = run(TaskRuleFinding("t-eni", FROM_ENI.describe(), False), TaskRuleFinding("t-eni", IIF_ENI.describe(), False))
    assert obs.evidence["taskRulesMissing"] == 2 and "; iif " in str(obs.evidence["taskRule.t-eni"])


async def test_task_rule_findings_re_add_first_and_report_repairs_for_a_while(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from agent.host.health_sources import task_rule_findings

    host = FakeHost({TO_ENI, IIF_ENI}, {ENI.host_ifname})
    monkeypatch.setattr(step, "readd_in", lambda netns, wired: readd_missing(wired, host))
    monkeypatch.setattr(step, "find_missing_in", lambda netns, wired: missing_rules(
        [t for t in wired.tasks() if wired.keeps(t)], present_rules(host.dump()[0]), {ENI.host_ifname}))
    provider = LocalProvider("unit", LocalVpc("100.64.0.0/24", state_path=tmp_path / "vpc.json"))
    pool = NetworkPool(provider, PoolConfig(max_enis=1, ips_per_eni=4, default_security_groups=("sg-1",)),
                       checkpoint_path=tmp_path / "ipam.json")
    networks = step.TaskNetworks(pool, Wiring(owner="unit"))
    networks._remember_wiring(ENI.task_id, {"host_ifname": ENI.host_ifname, "address": ENI.address, "table": 101})
    resource: Any = SimpleNamespace(tasks=SimpleNamespace(networks=networks))

    (found,) = await task_rule_findings(resource)
    assert (found.task_id, found.rule, found.readded) == ("t-eni", FROM_ENI.describe(), True)
    assert FROM_ENI in host.rules
    assert len(await task_rule_findings(resource)) == 1  # reported for a while after the re-add
    assert await task_rule_findings(resource, hold_s=0.0) == []  # ...then no more: back in place since
    host.rules.discard(FROM_ENI)
    assert (await networks.reassert_eni_tables()) == {  # "tasks": its table is of no ENI this agent owns
        "tasks": ["task t-eni: from 10.0.0.7 lookup 101 priority 1536 was missing (re-added)"]}
    (found,) = await task_rule_findings(resource)  # the reconcile repaired it: reported too
    assert found.readded and FROM_ENI in host.rules

    def refuse(rule: TaskRule) -> None:
        from netns.rtnl import NetlinkError
        raise NetlinkError(1, "Operation not permitted")

    host.rules.discard(FROM_ENI)
    host.before_add = refuse
    (found,) = await task_rule_findings(resource)
    assert not found.readded  # still missing: the re-add could not put it back
