"""Property-based fuzzing of the C core through the Python API (hypothesis).

Invariants after every operation: no CPU held twice, every workload holds exactly what
it asked for, free + held = usable (online minus reserved), reserved/offline CPUs never
handed out, failed calls change nothing; and the same operation sequence yields the
same outputs.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpuset import CpuAllocator, CpusetError, Topology, topology_from_layout
from cpuset.synthetic import TOPOLOGIES, topology_of

pytestmark = pytest.mark.usefixtures("native")

FIXED = {n: topology_of(TOPOLOGIES[n]) for n in ("T2", "T4", "T5", "T7", "T8")}


@st.composite
def random_topology(draw: Any) -> Topology:
    sockets = draw(st.integers(1, 3))
    nodes = draw(st.integers(1, 3))
    l3s = draw(st.integers(1, 3))
    cores = draw(st.integers(1, 6))
    threads = draw(st.integers(1, 4))
    ncores = sockets * nodes * l3s * cores
    rows = []
    core = 0
    for s in range(sockets):
        for nd in range(nodes):
            for l in range(l3s):
                for _ in range(cores):
                    for t in range(threads):
                        cpu = core + t * ncores
                        rows.append((cpu, s, s * nodes + nd, (s * nodes + nd) * l3s + l, core))
                    core += 1
    offline = draw(st.sets(st.integers(0, ncores * threads - 1), max_size=4))
    rows = [r for r in rows if r[0] not in offline] or rows[:1]
    # the lowest online thread of the core is its id (core ids only need to be unique)
    online = {r[0] for r in rows}
    reserved = draw(st.sets(st.sampled_from(sorted(online)), max_size=2))
    if reserved >= online:
        reserved = set()
    return topology_from_layout(rows, num_cpu_ids=ncores * threads, reserved=reserved)


topologies = st.one_of(st.sampled_from(sorted(FIXED)).map(FIXED.__getitem__), random_topology())

op = st.one_of(
    st.tuples(st.just("alloc"), st.integers(0, 11), st.integers(-2, 40),
              st.sampled_from(["static", "burst"])),
    st.tuples(st.just("release"), st.integers(0, 12), st.just(0), st.just("")),
    st.tuples(st.just("rebalance"), st.integers(0, 20), st.booleans(), st.just("")),
    st.tuples(st.just("assign"), st.integers(0, 11), st.lists(st.integers(-1, 300), max_size=5),
              st.just("static")),
)


def run(topo: Topology, ops: list[tuple[Any, ...]]) -> list[str]:
    alloc = CpuAllocator(topo)
    held: dict[str, tuple[int, ...]] = {}
    log: list[str] = []
    usable = topo.usable
    for kind, a, b, c in ops:
        before = alloc.owners()
        wid = f"w{a}"
        try:
            if kind == "alloc":
                p = alloc.allocate(wid, b, c)
                assert len(p.cpus) == b and wid not in held
                assert all(before[x] is None for x in p.cpus)
                held[wid] = p.cpus
                log.append(f"A {wid} {p.cpulist}")
            elif kind == "release":
                alloc.release(wid)
                del held[wid]
                log.append(f"R {wid}")
            elif kind == "rebalance":
                plan = alloc.rebalance(a, apply=b)
                assert plan.cpus_moved <= a and plan.cost_after <= plan.cost_before
                if b:
                    held = {w: alloc.get(w).cpus for w in held}
                else:
                    assert alloc.owners() == before
                log.append(f"B {plan.moves} {plan.cost_after}")
            else:
                p = alloc.assign(wid, b, c)
                held[wid] = p.cpus
                log.append(f"S {wid} {p.cpulist}")
        except CpusetError as exc:
            assert alloc.owners() == before, "a failed call changed the state"
            log.append(f"E {type(exc).__name__}")
        owners = alloc.owners()
        seen: set[int] = set()
        for w, cpus in held.items():
            assert alloc.get(w).cpus == cpus
            assert not seen & set(cpus), "CPU held twice"
            seen |= set(cpus)
            assert all(owners[x] == w for x in cpus)
        free = {x for x, w in owners.items() if w is None}
        assert free | seen == usable and not free & seen
        assert not seen & topo.reserved and seen <= topo.online
        assert set(alloc.burst_pool()) == free
    return log


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topo=topologies, ops=st.lists(op, max_size=40))
def test_invariants_and_determinism(topo: Topology, ops: list[tuple[Any, ...]]) -> None:
    first = run(topo, ops)
    assert run(topo, ops) == first


@settings(max_examples=40, deadline=None)
@given(topo=topologies, ops=st.lists(op, max_size=25))
def test_checkpoint_restore_equivalence(topo: Topology, ops: list[tuple[Any, ...]]) -> None:
    alloc = CpuAllocator(topo)
    for kind, a, b, c in ops:
        try:
            if kind == "alloc":
                alloc.allocate(f"w{a}", b, c)
            elif kind == "release":
                alloc.release(f"w{a}")
        except CpusetError:
            pass
    again = CpuAllocator.restore(topo, alloc.checkpoint())
    assert again.owners() == alloc.owners()
    for n in (1, 2, 3):
        try:
            x = alloc.allocate(f"new{n}", n)
        except CpusetError as exc:
            with pytest.raises(type(exc)):
                again.allocate(f"new{n}", n)
        else:
            assert again.allocate(f"new{n}", n) == x
