"""Golden cases for the benchmark's peer re-implementations (bench/peers/).

titus-isolate greedy: the upstream ``tests/isolate/test_cpu.py`` expectations on its
default CPU (2 packages x 4 cores x 2 threads, thread id = row * 8 + package * 4 + core),
plus cases worked by hand from ``GreedyCpuAllocator.__assign_threads`` that tell "claim the
emptiest core's empty threads" apart from "one thread, then the emptiest core again".

kubelet full-pcpus-only: ``SMTAlignmentError`` from ``policy_static.go`` (not a multiple of
CPUsPerCore = NumCPUs / NumCores, or more than the free CPUs outside the reserved CPUs'
cores); otherwise the ordinary packed take.
"""

from __future__ import annotations

import pytest

from bench.peers.kubelet import KubeletStaticPolicy, NotEnoughCpus, SMTAlignmentError
from bench.peers.titus_isolate import (
    GreedyError,
    TitusIsolateGreedy,
    cpus_moved,
    greedy_rebalance,
    has_better_isolation,
)
from cpuset.topology import Topology, parse_cpulist, topology_from_layout


def _upstream_cpu(packages: int = 2, cores: int = 4, threads: int = 2) -> Topology:
    """titus-isolate's ``get_cpu()`` layout as a topology (core id = its row-0 thread)."""
    rows = []
    for p in range(packages):
        for c in range(cores):
            for r in range(threads):
                cpu = r * packages * cores + p * cores + c
                rows.append((cpu, p, p, p, p * cores + c))
    return topology_from_layout(rows)


UPSTREAM = _upstream_cpu()
NO_SMT = _upstream_cpu(threads=1)  # 0-3 package 0, 4-7 package 1


def _ids(spec: str) -> tuple[int, ...]:
    return tuple(parse_cpulist(spec))


# (case, topology, [(size, expected cpulist)] allocated in order on an empty host)
GREEDY_GOLDEN: list[tuple[str, Topology, list[tuple[int, str]]]] = [
    # upstream test_assign_one_thread_empty_cpu / _two_threads_ / _two_workloads_ / _ten_
    ("upstream-1", UPSTREAM, [(1, "0")]),
    ("upstream-2", UPSTREAM, [(2, "0,8")]),
    ("upstream-2-then-1", UPSTREAM, [(2, "0,8"), (1, "4")]),
    ("upstream-10", UPSTREAM, [(10, "0-4,8-12")]),
    # whole empty core first, then the next emptiest core for the remainder
    ("3-whole-core-first", UPSTREAM, [(3, "0,1,8")]),
    ("4-two-whole-cores", UPSTREAM, [(4, "0,1,8,9")]),
    # the second request goes to the emptier package, whole core first
    ("2-then-3", UPSTREAM, [(2, "0,8"), (3, "4,5,12")]),
    # packages tie (7 free each): the first; its emptiest core is core 1, not half-used 0
    ("1-1-2-skips-half-core", UPSTREAM, [(1, "0"), (1, "4"), (2, "1,9")]),
    # stays in the package until it is full, then the emptiest package again
    ("9-spills-one", UPSTREAM, [(9, "0-4,8-11")]),
    # whole empty cores first; the half-used cores only once none is left, lowest first
    ("half-cores-last", UPSTREAM,
     [(1, "0"), (1, "4"), (6, "1-3,9-11"), (1, "5"), (1, "6"), (5, "7,12-15"), (1, "8")]),
    ("no-smt", NO_SMT, [(1, "0"), (1, "4"), (3, "1-3")]),
]


@pytest.mark.parametrize("case", GREEDY_GOLDEN, ids=[g[0] for g in GREEDY_GOLDEN])
def test_greedy_golden(case: tuple[str, Topology, list[tuple[int, str]]]) -> None:
    _, topo, steps = case
    g = TitusIsolateGreedy(topo)
    for i, (n, expected) in enumerate(steps):
        assert g.allocate(f"w{i}", n) == _ids(expected), f"step {i}"


def test_greedy_fill_and_full() -> None:
    # upstream test_fill_cpu: 8, 4, 2, 1, 1 fill the 16 threads; then one more fails
    g = TitusIsolateGreedy(UPSTREAM)
    got = [g.allocate(f"w{i}", n) for i, n in enumerate((8, 4, 2, 1, 1))]
    assert [len(c) for c in got] == [8, 4, 2, 1, 1]
    assert sorted(c for cpus in got for c in cpus) == list(range(16))
    assert got[0] == _ids("0-3,8-11")  # one whole package
    with pytest.raises(GreedyError):
        g.allocate("more", 1)


def test_greedy_release_and_reserved() -> None:
    g = TitusIsolateGreedy(UPSTREAM)
    g.allocate("a", 2)
    g.release("a")
    assert g.allocate("b", 2) == _ids("0,8")
    # reserved CPUs (the bench reserves the first core) are not in the model
    g = TitusIsolateGreedy(UPSTREAM.with_reserved([0, 8]))
    assert g.allocate("a", 2) == _ids("4,12")  # package 1 has more empty threads
    assert g.allocate("b", 2) == _ids("1,9")


def test_greedy_violations_and_rebalance() -> None:
    g = TitusIsolateGreedy(UPSTREAM)
    # shared_core counts cores used by more than one workload; cross_package workloads
    assert g.violations({"a": (0,), "b": (8,)}) == (0, 1)
    assert g.violations({"a": (0, 4), "b": (8, 12)}) == (2, 2)
    assert has_better_isolation((1, 0), (0, 5))
    assert not has_better_isolation((0, 1), (1, 0))
    assert has_better_isolation((0, 2), (0, 1))
    assert not has_better_isolation((0, 1), (0, 1))
    # a and b share core 0: re-placed largest first (ties keep order), b moves to package 1
    new, moved, accepted = greedy_rebalance(UPSTREAM, {"a": (0,), "b": (8,)})
    assert accepted and new == {"a": (0,), "b": (4,)} and moved == 1
    # already isolated: the re-placement is not better, nothing moves
    old: dict[str, tuple[int, ...]] = {"a": (1, 9), "b": (4, 12)}
    new, moved, accepted = greedy_rebalance(UPSTREAM, old)
    assert not accepted and new == old and moved == 0
    assert cpus_moved({"a": (0, 8)}, {"a": (1, 9)}) == 2


# ----------------------------------------------------------------------------- kubelet

# topoSingleSocketHT: cores {0,4} {1,5} {2,6} {3,7}
SINGLE_HT = topology_from_layout((c, 0, 0, 0, c % 4) for c in range(8))
# topoDualSocketHT: socket/NUMA 0 = even CPUs, cores {0,6} {2,8} {4,10}; 1 = odd
DUAL_HT = topology_from_layout((c, c % 2, c % 2, c % 2, c % 6) for c in range(12))
# 5 online CPUs on 3 cores ({0,3} {1,4} {2}): CPUsPerCore = 5 // 3 = 1
ODD = topology_from_layout((c, 0, 0, 0, c % 3) for c in range(5))

# (case, topology, reserved, topology manager, [(size, expected cpulist or error type)])
FPO_GOLDEN: list[tuple[str, Topology, str, str | None, list[tuple[int, str | type]]]] = [
    ("odd-refused", SINGLE_HT, "", None, [(1, SMTAlignmentError), (3, SMTAlignmentError)]),
    ("whole-cores", SINGLE_HT, "", None, [(2, "0,4"), (4, "1,2,5,6"), (2, "3,7")]),
    ("full-then-refused", SINGLE_HT, "", None, [(8, "0-7"), (2, SMTAlignmentError)]),
    # reserved 0 alone: its sibling 4 counts as unavailable for the physical-CPU check
    ("reserved-sibling", SINGLE_HT, "0", None, [(8, SMTAlignmentError), (6, "1-3,5-7")]),
    ("reserved-sibling-count", SINGLE_HT, "0", None, [(2, "1,5"), (6, SMTAlignmentError)]),
    # with the Topology Manager hint: whole cores of NUMA node 0
    ("tm", DUAL_HT, "", "best-effort",
     [(3, SMTAlignmentError), (4, "0,2,6,8"), (2, "4,10"), (2, "1,7")]),
    # upstream's homogeneous CPUsPerCore: an offline sibling makes it 1, odd sizes pass
    ("offline-sibling", ODD, "", None, [(1, "2"), (3, "0,1,3")]),
]


@pytest.mark.parametrize("case", FPO_GOLDEN, ids=[g[0] for g in FPO_GOLDEN])
def test_kubelet_full_pcpus_only_golden(
    case: tuple[str, Topology, str, str | None, list[tuple[int, str | type]]],
) -> None:
    _, topo, reserved, tm, steps = case
    k = KubeletStaticPolicy(
        topo.with_reserved(parse_cpulist(reserved)), topology_manager=tm, full_pcpus_only=True
    )
    for i, (n, expected) in enumerate(steps):
        if isinstance(expected, str):
            assert k.allocate(f"w{i}", n) == _ids(expected), f"step {i}"
        else:
            with pytest.raises(expected):
                k.allocate(f"w{i}", n)


def test_kubelet_full_pcpus_only_off_shares_cores() -> None:
    # the same requests without the option: a single CPU, then its sibling to another pod
    k = KubeletStaticPolicy(SINGLE_HT)
    assert k.allocate("a", 1) == (0,)
    assert k.allocate("b", 1) == (4,)
    assert k.allocate("c", 3) == _ids("1,2,5")


def test_kubelet_full_pcpus_only_messages() -> None:
    k = KubeletStaticPolicy(SINGLE_HT.with_reserved([0]), full_pcpus_only=True)
    with pytest.raises(SMTAlignmentError, match="requested 3 cpus not multiple cpus per core = 2"):
        k.allocate("a", 3)
    with pytest.raises(SMTAlignmentError, match="available physical CPUs = 6, requested CPUs = 8"):
        k.allocate("a", 8)
    # more than the host: the SMT check refuses first (it runs before the allocation)
    k2 = KubeletStaticPolicy(SINGLE_HT, full_pcpus_only=True)
    with pytest.raises(SMTAlignmentError, match="available physical CPUs = 8"):
        k2.allocate("a", 10)
    with pytest.raises(NotEnoughCpus, match="requested=10, available=8"):
        KubeletStaticPolicy(SINGLE_HT).allocate("a", 10)
