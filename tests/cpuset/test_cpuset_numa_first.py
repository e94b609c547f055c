"""NUMA span before socket span when they conflict (NPS4): a request one socket can hold only
across more NUMA nodes than the fewest nodes that hold it anywhere crosses sockets."""

from __future__ import annotations

import pytest

from cpuset import CpuAllocator
from cpuset.synthetic import TOPOLOGIES, topology_of

pytestmark = pytest.mark.usefixtures("native")

T4 = topology_of(TOPOLOGIES["T4"])  # 2 sockets × 4 nodes × 16 cores × 2 threads, split numbering


def threads(cores: range) -> list[int]:
    return [c + t * 128 for c in cores for t in (0, 1)]


def test_crosses_sockets_when_that_saves_a_numa_node() -> None:
    alloc = CpuAllocator(T4)
    # free: node 0 24, node 1 8, node 2 8 (socket 0: 40); node 4 16 (socket 1); everything else held
    held = [range(0, 4), range(16, 28), range(32, 44), range(48, 64), range(64, 72), range(80, 128)]
    alloc.assign("filler", [c for r in held for c in threads(r)])
    cpus = alloc.allocate("x", 36).cpus
    assert {T4.cpus[c].node for c in cpus} == {0, 4}  # 2 nodes, not nodes 0-2 of socket 0
    assert {T4.cpus[c].socket for c in cpus} == {0, 1}


def test_stays_in_the_socket_when_the_node_count_is_the_same() -> None:
    alloc = CpuAllocator(T4)
    # free: node 0 24, node 1 16 (socket 0: 40); node 4 16 (socket 1)
    held = [range(0, 4), range(16, 24), range(32, 64), range(64, 72), range(80, 128)]
    alloc.assign("filler", [c for r in held for c in threads(r)])
    cpus = alloc.allocate("x", 36).cpus
    assert {T4.cpus[c].socket for c in cpus} == {0}
    assert {T4.cpus[c].node for c in cpus} == {0, 1}
