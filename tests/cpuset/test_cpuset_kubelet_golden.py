"""The benchmark's kubelet re-implementation against the golden cases listed in
shared/reference/cpu-placement.md section 6 (packed cases 1-14; the spread, uncore and
distributed variants are not re-implemented)."""

from __future__ import annotations

import pytest

from bench.peers.kubelet import KubeletTopology, NotEnoughCpus, take_by_topology_packed
from cpuset.topology import Topology, parse_cpulist, topology_from_layout


def _topo(rows: list[tuple[int, int, int, int]]) -> Topology:
    """rows: (cpu, socket, numa, core id)."""
    return topology_from_layout((c, s, n, s, core) for c, s, n, core in rows)


# topoSingleSocketHT: cores {0,4} {1,5} {2,6} {3,7}
SINGLE_HT = _topo([(c, 0, 0, c % 4) for c in range(8)])
# topoDualSocketHT: socket/NUMA 0 = even CPUs, cores {0,6} {2,8} {4,10}; 1 = odd
DUAL_HT = _topo([(c, c % 2, c % 2, c % 6) for c in range(12)])
# topoDualSocketNoHT: socket 0 = 0-3, socket 1 = 4-7
DUAL_NOHT = _topo([(c, c // 4, c // 4, c) for c in range(8)])
# topoDualSocketMultiNumaPerSocketHT: 80 CPUs, siblings cpu / cpu+40, node k = 10k..10k+9
MULTI_NUMA = _topo([(c, (c % 40) // 20, (c % 40) // 10, c % 40) for c in range(80)])

TOPOS = {"SingleSocketHT": SINGLE_HT, "DualSocketHT": DUAL_HT, "DualSocketNoHT": DUAL_NOHT,
         "MultiNuma": MULTI_NUMA}

GOLDEN = [
    ("2a", "SingleSocketHT", "0-7", 0, ""),
    ("2b", "SingleSocketHT", "0-7", 1, "0"),
    ("2c", "SingleSocketHT", "0-7", 8, "0-7"),
    ("3", "SingleSocketHT", "1,3,5,6,7", 1, "6"),
    ("4", "SingleSocketHT", "0-7", 2, "0,4"),
    ("5", "SingleSocketHT", "0,1,2,3,6", 2, "2,6"),
    ("6", "DualSocketHT", "0-11", 6, "0,2,4,6,8,10"),
    ("7", "DualSocketHT", "1,2,3,4,5,7,8,9,10,11", 1, "2"),
    ("8", "DualSocketHT", "0-11", 8, "0,2,4,6,8,10,1,7"),
    ("9", "MultiNuma", "0-79", 40, "0-19,40-59"),
    ("10", "MultiNuma", "0-79", 20, "0-9,40-49"),
    ("11", "MultiNuma", "10-39,50-79", 20, "10-19,50-59"),
    ("12", "MultiNuma", "0-79", 60, "0-29,40-69"),
    ("13", "MultiNuma", "1-39,41-79", 60, "10-39,50-79"),
    ("14", "MultiNuma", "0-79", 64, "0-29,40-69,30,31,70,71"),
    ("noHT", "DualSocketNoHT", "0-7", 4, "0-3"),
]


@pytest.mark.parametrize("case", GOLDEN, ids=[g[0] for g in GOLDEN])
def test_packed_golden(case: tuple[str, str, str, int, str]) -> None:
    _, topo_name, free, n, expected = case
    kt = KubeletTopology(TOPOS[topo_name])
    got = take_by_topology_packed(kt, parse_cpulist(free), n)
    assert sorted(got) == parse_cpulist(expected)


def test_packed_not_enough() -> None:
    kt = KubeletTopology(SINGLE_HT)
    with pytest.raises(NotEnoughCpus, match="requested=5, available=4"):
        take_by_topology_packed(kt, [0, 2, 4, 6], 5)


def test_level_order() -> None:
    assert KubeletTopology(DUAL_HT).numa_first
    assert not KubeletTopology(MULTI_NUMA).numa_first
