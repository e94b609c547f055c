"""Table-driven placement decisions, errors, burst pool, rebalance and checkpoints."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from cpuset import (
    CheckpointError,
    CpuAllocator,
    CpuBusy,
    DuplicateWorkload,
    InsufficientCpus,
    InvalidRequest,
    RequestTooLarge,
    Topology,
    UnknownWorkload,
    WorkloadClass,
    format_cpulist,
)
from cpuset.synthetic import TOPOLOGIES, topology_of

pytestmark = pytest.mark.usefixtures("native")

TOPO = {name: topology_of(spec) for name, spec in TOPOLOGIES.items()}


def spans(topo: Topology, cpus: tuple[int, ...]) -> tuple[int, int, int]:
    info = [topo.cpus[c] for c in cpus]
    return (len({i.socket for i in info}), len({i.node for i in info}), len({i.l3 for i in info}))


def whole_cores(topo: Topology, cpus: tuple[int, ...]) -> int:
    s = set(cpus)
    return sum(1 for core in topo.cores().values() if set(core) <= s)


def shares_core(alloc: CpuAllocator, workload: str) -> bool:
    owners = alloc.owners()
    for cpu in alloc.get(workload).cpus:
        for sib in alloc.topology.siblings(cpu):
            if owners.get(sib) not in (None, workload):
                return True
    return False


# (name, topology, prior allocations [(id, n)], request n, expected cpulist or None,
#  expected (socket, node, l3) spans, expected whole cores)
CASES: list[tuple[str, str, list[tuple[str, int]], int, str | None, tuple[int, int, int], int]] = [
    ("T1 4 -> two whole cores", "T1", [], 4, "0-1,48-49", (1, 1, 1), 2),
    ("T1 3 -> one core and a fresh half core", "T1", [], 3, "0-1,48", (1, 1, 1), 1),
    ("T1 odd after odd: no sibling sharing", "T1", [("a", 3)], 1, "2", (1, 1, 1), 0),
    ("T1 24 fits one socket", "T1", [], 24, "0-11,48-59", (1, 1, 1), 12),
    ("T1 whole socket", "T1", [], 48, "0-23,48-71", (1, 1, 1), 24),
    ("T1 best fit picks the fuller node", "T1", [("a", 40)], 8, "20-23,68-71", (1, 1, 1), 4),
    ("T1 too big for the free part of node 0 -> node 1", "T1", [("a", 40)], 10,
     "24-28,72-76", (1, 1, 1), 5),
    ("T1 60 spans the minimum of two sockets", "T1", [], 60, None, (2, 2, 2), 30),
    ("T3 8 -> one CCX", "T3", [], 8, "0-3,128-131", (1, 1, 1), 4),
    ("T3 16 -> one whole CCX", "T3", [], 16, "0-7,128-135", (1, 1, 1), 8),
    ("T3 best fit fills the partly used CCX", "T3", [("a", 12)], 4, "6-7,134-135",
     (1, 1, 1), 2),
    ("T3 20 -> two CCX, one socket", "T3", [], 20, None, (1, 1, 2), 10),
    ("T4 40 -> two NUMA nodes of one socket", "T4", [], 40, None, (1, 2, 3), 20),
    ("T4 32 -> one NUMA node", "T4", [], 32, "0-15,128-143", (1, 1, 2), 16),
    ("T5 8 -> one CCD (no SMT)", "T5", [], 8, "0-7", (1, 1, 1), 8),
    ("T6 6 -> one CCX", "T6", [], 6, "0-2,64-66", (1, 1, 1), 3),
    ("T7 never reserved or offline; avoids reserved siblings", "T7", [], 44,
     "24-45,72-93", (1, 1, 1), 22),
    ("T8 adjacent numbering", "T8", [], 4, "0-3", (1, 1, 1), 2),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_placement_table(case: tuple[Any, ...]) -> None:
    _, tname, prior, n, expected, exp_spans, exp_whole = case
    topo = TOPO[tname]
    alloc = CpuAllocator(topo)
    for wid, k in prior:
        alloc.allocate(wid, k)
    p = alloc.allocate("x", n)
    assert len(p.cpus) == n
    assert not set(p.cpus) & topo.reserved
    assert set(p.cpus) <= topo.online
    if expected is not None:
        assert p.cpulist == expected
    assert spans(topo, p.cpus) == exp_spans
    assert whole_cores(topo, p.cpus) == exp_whole
    assert not shares_core(alloc, "x")


def test_t7_uses_lone_threads_and_fills_exactly() -> None:
    topo = TOPO["T7"]
    alloc = CpuAllocator(topo)
    usable = len(topo.usable)
    got: set[int] = set()
    for i in range(usable):
        got |= set(alloc.allocate(f"w{i}", 1).cpus)
    assert got == topo.usable
    with pytest.raises(InsufficientCpus):
        alloc.allocate("one-more", 1)


def test_smt_sharing_only_when_unavoidable() -> None:
    topo = TOPO["T2"]  # 32 cores
    alloc = CpuAllocator(topo)
    for i in range(32):  # 32 one-CPU workloads: each gets its own core
        alloc.allocate(f"w{i}", 1)
    assert not any(shares_core(alloc, f"w{i}") for i in range(32))
    alloc.allocate("w32", 1)  # now unavoidable
    assert shares_core(alloc, "w32")


@pytest.mark.parametrize("n,exc", [(0, InvalidRequest), (-3, InvalidRequest),
                                   (97, RequestTooLarge), (10**9, RequestTooLarge)])
def test_bad_sizes(n: int, exc: type[Exception]) -> None:
    alloc = CpuAllocator(TOPO["T1"])
    with pytest.raises(exc):
        alloc.allocate("x", n)
    assert len(alloc) == 0 and len(alloc.free_cpus()) == 96


def test_bad_arguments() -> None:
    alloc = CpuAllocator(TOPO["T1"])
    for bad in (1.5, True, "2", None):
        with pytest.raises(InvalidRequest):
            alloc.allocate("x", bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        alloc.allocate("", 1)
    with pytest.raises(InvalidRequest):
        alloc.allocate("x", 1, "gold")
    with pytest.raises(InvalidRequest):
        alloc.rebalance(-1)


def test_insufficient_duplicate_unknown() -> None:
    alloc = CpuAllocator(TOPO["T1"].with_reserved({0, 48}))
    assert len(alloc.topology.usable) == 94
    with pytest.raises(RequestTooLarge):
        alloc.allocate("x", 95)
    alloc.allocate("a", 90)
    with pytest.raises(InsufficientCpus):
        alloc.allocate("b", 5)
    with pytest.raises(DuplicateWorkload):
        alloc.allocate("a", 1)
    with pytest.raises(UnknownWorkload):
        alloc.release("nope")
    with pytest.raises(UnknownWorkload):
        alloc.get("nope")
    alloc.release("a")
    with pytest.raises(UnknownWorkload):
        alloc.release("a")
    assert alloc.free_cpus() == alloc.topology.usable


def test_assign_validation() -> None:
    alloc = CpuAllocator(TOPO["T7"])
    alloc.assign("a", [2, 3])
    with pytest.raises(CpuBusy):
        alloc.assign("b", [3, 4])
    for bad in ([0], [23], [5, 5], [], [4000], [-1]):  # reserved, offline, dup, empty, range
        with pytest.raises(InvalidRequest):
            alloc.assign("b", bad)
    assert alloc.workloads()[0].cpus == (2, 3) and len(alloc) == 1


def test_burst_pool_expands_and_shrinks() -> None:
    topo = TOPO["T2"]
    alloc = CpuAllocator(topo)
    b = alloc.allocate("burst", 2, WorkloadClass.BURST)
    assert alloc.cpuset("burst") == tuple(sorted(topo.usable))
    s = alloc.allocate("static", 16)
    eff = set(alloc.cpuset("burst"))
    assert set(b.cpus) <= eff
    assert not eff & set(s.cpus)
    assert eff == topo.usable - set(s.cpus)
    assert alloc.cpuset("static") == s.cpus
    alloc.allocate("odd", 1)
    strict = set(alloc.cpuset("burst", avoid_static_siblings=True))
    assert not strict & {c for cpu in alloc.get("odd").cpus for c in topo.siblings(cpu)}


def test_rebalance_repairs_cross_socket_with_few_moves() -> None:
    topo = TOPO["T1"]
    alloc = CpuAllocator(topo)
    alloc.assign("w", [0, 1, 24, 25])  # split across sockets
    before = alloc.cost()
    assert before > 0
    dry = alloc.rebalance(8, apply=False)
    assert dry.cpus_moved == 2 and not dry.applied
    assert alloc.get("w").cpus == (0, 1, 24, 25)
    assert alloc.rebalance(1).cpus_moved == 0  # needs 2 moves: bound respected
    plan = alloc.rebalance(8)
    assert plan.applied and plan.improves and plan.cpus_moved == 2
    assert {m.from_cpu for m in plan.moves} == {24, 25}
    cpus = alloc.get("w").cpus
    assert spans(topo, cpus) == (1, 1, 1) and {0, 1} <= set(cpus)
    assert alloc.cost() == plan.cost_after == 0
    assert alloc.rebalance(8).cpus_moved == 0  # nothing left to improve


def test_rebalance_separates_smt_siblings() -> None:
    alloc = CpuAllocator(TOPO["T2"])
    alloc.assign("a", [0])
    alloc.assign("b", [32])  # same core as a
    plan = alloc.rebalance(4)
    assert plan.cpus_moved == 1
    assert not shares_core(alloc, "a") and not shares_core(alloc, "b")


def test_rebalance_is_bounded_on_a_messy_host() -> None:
    topo = TOPO["T3"]
    alloc = CpuAllocator(topo)
    import random

    rnd = random.Random(7)
    cpus = sorted(topo.usable)
    rnd.shuffle(cpus)
    for i in range(20):  # scattered 6-CPU workloads
        alloc.assign(f"w{i}", cpus[i * 6:(i + 1) * 6])
    for budget in (0, 3, 10, 40):
        plan = alloc.rebalance(budget, apply=False)
        assert plan.cpus_moved <= budget
        assert plan.cost_after <= plan.cost_before
    plan = alloc.rebalance(1000)
    assert plan.cost_after < plan.cost_before
    held = [set(p.cpus) for p in alloc.workloads()]
    assert sum(map(len, held)) == len(set().union(*held)) == 120


def test_checkpoint_roundtrip_and_validation() -> None:
    topo = TOPO["T7"]
    alloc = CpuAllocator(topo)
    alloc.allocate("a", 5)
    alloc.allocate("b", 3, WorkloadClass.BURST)
    alloc.allocate("c", 8)
    alloc.release("a")
    text = alloc.checkpoint()
    again = CpuAllocator.restore(topo, text)
    assert again.workloads() == alloc.workloads()
    assert again.checkpoint() == text
    # same future decisions after restore
    assert again.allocate("d", 7) == alloc.allocate("d", 7)
    with pytest.raises(CheckpointError):
        CpuAllocator.restore(TOPO["T1"], text)
    with pytest.raises(CheckpointError):
        CpuAllocator.restore(topo, "{not json")
    doc = json.loads(text)
    doc["workloads"][1]["cpus"] = doc["workloads"][0]["cpus"]  # overlap
    with pytest.raises(CheckpointError):
        CpuAllocator.restore(topo, json.dumps(doc))
    doc = json.loads(text)
    doc["workloads"][0]["cpus"] = "0"  # reserved CPU
    with pytest.raises(CheckpointError):
        CpuAllocator.restore(topo, json.dumps(doc))
    doc = json.loads(text)
    doc["version"] = 99
    with pytest.raises(CheckpointError):
        CpuAllocator.restore(topo, doc)


def _trace(alloc: CpuAllocator) -> list[str]:
    out = []
    for i, n in enumerate([3, 8, 1, 16, 5, 2, 32, 7]):
        out.append(alloc.allocate(f"w{i}", n, "burst" if i % 3 == 2 else "static").cpulist)
        if i % 2:
            alloc.release(f"w{i - 1}")
    out.append(str(alloc.rebalance(10).moves))
    out.append(format_cpulist(alloc.burst_pool()))
    return out


@pytest.mark.parametrize("name", ["T1", "T4", "T5", "T7"])
def test_deterministic(name: str) -> None:
    run: Callable[[], list[str]] = lambda: _trace(CpuAllocator(TOPO[name]))  # noqa: E731
    assert run() == run()
