"""NUMA-, L3- and SMT-aware cpuset placement for the node agent.

Public API::

    from cpuset import load_topology, CpuAllocator, WorkloadClass
    topo = load_topology("/sys", reserved="0,48")
    alloc = CpuAllocator(topo)
    alloc.allocate("container-1", 4)                     # static
    alloc.allocate("batch-1", 2, WorkloadClass.BURST)    # burst with a minimum of 2
    alloc.cpuset("batch-1")                              # minimum + idle CPUs
    alloc.release("container-1")
    alloc.rebalance(max_moves=8)
    alloc.checkpoint()

The placement itself runs in a C core (``native/cpuset_core.c``) loaded through cffi as
``cpuset._cpuset_core``; importing this package does not require it, constructing a
:class:`CpuAllocator` does (:class:`NativeUnavailable` otherwise).
"""

from cpuset.allocator import (
    CpuAllocator,
    Move,
    Placement,
    RebalancePlan,
    WorkloadClass,
    load_native,
)
from cpuset.errors import (
    CapacityExceeded,
    CheckpointError,
    CpuBusy,
    CpusetError,
    DuplicateWorkload,
    InsufficientCpus,
    InvalidRequest,
    NativeUnavailable,
    RequestTooLarge,
    TopologyError,
    UnknownWorkload,
)
from cpuset.topology import (
    CpuInfo,
    Topology,
    format_cpulist,
    load_topology,
    parse_cpulist,
    topology_from_layout,
)

__all__ = [
    "CapacityExceeded",
    "CheckpointError",
    "CpuAllocator",
    "CpuBusy",
    "CpuInfo",
    "CpusetError",
    "DuplicateWorkload",
    "InsufficientCpus",
    "InvalidRequest",
    "Move",
    "NativeUnavailable",
    "Placement",
    "RebalancePlan",
    "RequestTooLarge",
    "Topology",
    "TopologyError",
    "UnknownWorkload",
    "WorkloadClass",
    "format_cpulist",
    "load_native",
    "load_topology",
    "parse_cpulist",
    "topology_from_layout",
]
