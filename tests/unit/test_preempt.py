"""The reservation guards' pure decisions (scheduler/preempt.py): which tasks a critical claim
preempts, and what the hold-back lets through."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from scheduler.preempt import Claim, GroupUse, Headroom, HostRoom, Running, plan, within_reservation

# Groups: prod (critical, reserves 8 cpu), web (critical, reserves 4 cpu), batch (flex, reserves 2),
# best (flex, reserves nothing). `used` is filled in from the running tasks of each case.
RESERVED = {"prod": ("critical", 8.0, 0.0), "web": ("critical", 4.0, 0.0), "batch": ("flex", 2.0, 0.0),
            "best": ("flex", 0.0, 0.0)}


def R(task: str, group: str, node: str, cpu: float = 1.0, started: float = 0.0, job: str = "",
      mem: float = 100.0) -> Running:
    return Running(task, job or f"job-{group}", group, node, cpu, mem, 0.0, started)


def C(task: str, group: str = "prod", cpu: float = 1.0, mem: float = 100.0) -> Claim:
    return Claim(task, f"job-{task}", group, cpu, mem, 0.0)


def groups(running: Sequence[Running], extra_used: dict[str, float] | None = None) -> dict[str, GroupUse]:
    out = {n: GroupUse(tier, cpu, mem) for n, (tier, cpu, mem) in RESERVED.items()}
    for r in running:
        out[r.group].used_cpu += r.cpu
        out[r.group].used_memory_mib += r.memory_mib
    for n, cpu in (extra_used or {}).items():
        out[n].used_cpu += cpu
    return out


def full(*nodes: str, cpu: float = 0.0) -> list[HostRoom]:
    return [HostRoom(n, cpu, 10_000.0, 10_000.0) for n in nodes]


def anywhere(c: Claim, node: str, victims: Sequence[Running], routed: Sequence[Claim]) -> bool:
    return True


CASES: list[tuple[str, dict[str, Any], dict[str, str] | str]] = [
    # name, inputs, expected victims {victim: claim} or the blocked reason
    ("flex before a critical group's excess", dict(
        claims=[C("p1")], running=[R("w1", "web", "n1", started=9), *[R(f"w{i}", "web", "n1") for i in range(2, 6)],
                                   R("b1", "best", "n1", started=1)]),
     {"b1": "p1"}),
    ("the youngest first within the tier", dict(
        claims=[C("p1")], running=[R("b1", "best", "n1", started=1), R("b2", "best", "n1", started=5),
                                   R("b3", "best", "n1", started=3)]),
     {"b2": "p1"}),
    ("a critical group's excess when no flex task is left", dict(
        claims=[C("p1")], running=[R(f"w{i}", "web", "n1", started=i) for i in range(5)]),  # web holds 5 of 4
     {"w4": "p1"}),
    ("never a critical task within its reservation", dict(
        claims=[C("p1")], running=[R(f"w{i}", "web", "n1") for i in range(4)]),  # web holds exactly 4
     "no host where tasks above their groups' reservations make room"),
    ("a flex group within its own reservation is kept", dict(
        claims=[C("p1", cpu=2)], running=[R("a1", "batch", "n1"), R("a2", "batch", "n1"), R("a3", "batch", "n1")]),
     "no host where tasks above their groups' reservations make room"),  # batch may lose 1 of 3, p1 needs 2
    ("a flex group down to its reservation, not below", dict(
        claims=[C("p1")], running=[R("a1", "batch", "n1"), R("a2", "batch", "n1"), R("a3", "batch", "n1", started=2)]),
     {"a3": "p1"}),
    ("a claim whose group is at its reservation preempts nothing", dict(
        claims=[C("p9")], running=[R("b1", "best", "n1")], used={"prod": 8.0}),
     "capacity group prod is at its reservation"),
    ("a flex claim preempts nothing", dict(claims=[C("x", group="best")], running=[R("b1", "batch", "n1")]),
     "not a critical group"),
    ("a job whose disruption budget is spent is skipped", dict(
        claims=[C("p1")], running=[R("b1", "best", "n1", started=9, job="j1"), R("b2", "best", "n1", job="j2")],
        budget={"j1": 0, "j2": 1}),
     {"b2": "p1"}),
    ("the host needing the fewest victims wins", dict(
        claims=[C("p1", cpu=2)], running=[R("b1", "best", "n1"), R("b2", "best", "n1"),
                                          R("b3", "best", "n2", cpu=2)]),
     {"b3": "p1"}),
    ("fewer critical victims break a tie", dict(
        claims=[C("p1")], running=[*[R(f"w{i}", "web", "n1") for i in range(5)], R("b1", "best", "n2")]),
     {"b1": "p1"}),
    ("a host the placer would refuse (constraints, posture) is skipped", dict(
        claims=[C("p1")], running=[R("b1", "best", "n1"), R("b2", "best", "n2")],
        fits=lambda c, node, victims, routed: node != "n1"),
     {"b2": "p1"}),
    ("only what frees the resource the claim is short of", dict(
        claims=[C("p1", cpu=0.5, mem=1000)], hosts=[HostRoom("n1", 4.0, 0.0, 1e4)],
        running=[R("b1", "best", "n1", cpu=1, mem=0.0, started=9), R("b2", "best", "n1", cpu=0.1, mem=1000)]),
     {"b2": "p1"}),
    ("a victim that turned out not to be needed is dropped", dict(
        claims=[C("p1", cpu=2)],
        running=[R("b1", "best", "n1", cpu=1, started=9), R("b2", "best", "n1", cpu=2, started=5)]),
     {"b2": "p1"}),
    ("two claims take two victims, not the same room twice", dict(
        claims=[C("p1"), C("p2")], running=[R("b1", "best", "n1", started=2), R("b2", "best", "n1", started=1)]),
     {"b1": "p1", "b2": "p2"}),
    ("a kill in flight already makes room: no new victim", dict(
        claims=[C("p1")], hosts=full("n1", cpu=1.0), running=[R("b1", "best", "n1")]),
     {}),
    ("at most max_victims a pass", dict(
        claims=[C("p1"), C("p2")], running=[R("b1", "best", "n1", started=2), R("b2", "best", "n1")], max_victims=1),
     {"b1": "p1"}),
    ("the claim's own group is never its victim", dict(
        claims=[C("p1")], running=[R("o1", "prod", "n1")]),
     "no host where tasks above their groups' reservations make room"),
]


@pytest.mark.parametrize("name, given, expected", CASES, ids=[c[0] for c in CASES])
def test_victims(name: str, given: dict[str, Any], expected: dict[str, str] | str) -> None:
    running = given["running"]
    nodes = sorted({r.node_id for r in running})
    budget = given.get("budget") or {r.job_id: 10 for r in running}
    p = plan(given["claims"], running, given.get("hosts") or full(*nodes), groups(running, given.get("used")),
             budget, given.get("fits", anywhere), given.get("max_victims", 100))
    if isinstance(expected, str):
        assert not p.victims and list(p.blocked.values()) == [expected]
    else:
        assert {v.task.task_id: v.for_task for v in p.victims} == expected
        for claim in given["claims"]:
            assert claim.task_id in p.waiting or claim.task_id in p.blocked


def test_fits_is_asked_with_the_victims_gone() -> None:
    seen: list[tuple[str, str, tuple[str, ...], tuple[str, ...]]] = []

    def fits(c: Claim, node: str, victims: Sequence[Running], routed: Sequence[Claim]) -> bool:
        seen.append((c.task_id, node, tuple(v.task_id for v in victims), tuple(r.task_id for r in routed)))
        return True

    running = [R("b1", "best", "n1"), R("b2", "best", "n1")]
    plan([C("p1"), C("p2")], running, full("n1"), groups(running), {"job-best": 2}, fits)
    # The second claim is checked with the first one's victim gone too, and the first claim there.
    assert seen == [("p1", "n1", ("b1",), ()), ("p2", "n1", ("b1", "b2"), ("p1",))]


@pytest.mark.parametrize("g, cpu, expected", [
    (GroupUse("critical", 8, 0, used_cpu=7), 1, True),
    (GroupUse("critical", 8, 0, used_cpu=7), 1.5, False),
    (GroupUse("critical", 0, 0), 1, False),  # reserves nothing
    (GroupUse("critical", 8, 1000, used_cpu=0, used_memory_mib=1000), 1, False),  # memory at its reservation
])
def test_within_reservation(g: GroupUse, cpu: float, expected: bool) -> None:
    assert within_reservation(g, cpu, 100 if g.reserved_memory_mib else 0) is expected


@pytest.mark.parametrize("free, used, asks, admitted", [
    # 10 cpu free, prod reserves 8 and uses 2 (6 idle), web uses its 4: flex may take 4, not 5.
    (10, {"prod": 2, "web": 4}, [("best", 4)], [True]),
    (10, {"prod": 2, "web": 4}, [("best", 5)], [False]),
    (10, {"prod": 2, "web": 4}, [("best", 4), ("best", 1)], [True, False]),
    # prod draws on its own reservation: always admitted, and the held-back amount shrinks with it.
    (10, {"prod": 2, "web": 4}, [("prod", 6), ("best", 4)], [True, True]),
    # prod above its reservation is treated like anybody else.
    (10, {"prod": 2, "web": 4}, [("prod", 7), ("best", 3)], [False, True]),
    # web (critical, 4 idle) and prod (6 idle): 12 free → 2 for flex.
    (12, {"prod": 2}, [("batch", 2), ("batch", 1)], [True, False]),
    # A critical group using all of its reservation holds nothing back.
    (1, {"prod": 8, "web": 4}, [("best", 1)], [True]),
])
def test_hold_back(free: float, used: dict[str, float], asks: list[tuple[str, float]], admitted: list[bool]) -> None:
    room = Headroom(groups([], used), free, 1e9)
    assert [room.admit(g, cpu, 0.0) for g, cpu in asks] == admitted


def test_hold_back_is_inactive_without_idle_critical_reservations() -> None:
    assert not Headroom(groups([], {"prod": 8, "web": 5}), 0.0, 0.0).active
    assert "6 cpu" in Headroom(groups([], {"prod": 2, "web": 4}), 10, 0).why()
