"""Python re-implementation of the kubelet CPU manager ``static`` policy allocation path.

Written from the description in ``shared/reference/cpu-placement.md`` sections 2.2-2.5
(no upstream code copied): packed ``takeByTopology`` (numaFirst / socketsFirst level
order, best-fit ordering by free CPUs then id, whole first-level, second-level and core
takes, then single CPUs), the Topology Manager NUMA hint (best-effort or restricted), and
the ``full-pcpus-only`` option. ``full-pcpus-only`` follows ``policy_static.go``
(kubernetes/kubernetes ``validateSMTAlignment`` / ``Allocate``): ``SMTAlignmentError`` when
the request is not a multiple of CPUsPerCore (NumCPUs / NumCores), or exceeds the free CPUs
outside the reserved CPUs' cores (``GetAvailablePhysicalCPUs``); the allocation itself is
the ordinary packed take. Kubelet rejects a restricted Topology Manager mismatch at
admission, before ``Allocate``; here the SMT check comes first (either way the request is
refused, only the error type differs). Not implemented: the distributed (KEP-2902), spread
(distribute-cpus-across-cores) and uncore (KEP-4800) variants.

Like kubelet, the "is this element fully free" tests compare against homogeneous sizes
computed from the whole topology (CPUs / cores, CPUs / NUMA nodes, CPUs / sockets), so
hosts with offline CPUs behave as the upstream code does.
"""

from __future__ import annotations

from collections.abc import Iterable

from cpuset.topology import Topology


class KubeletError(Exception):
    pass


class NotEnoughCpus(KubeletError):
    pass


class SMTAlignmentError(KubeletError):
    pass


class TopologyAffinityError(KubeletError):
    pass


class KubeletTopology:
    """CPU -> (socket, NUMA node, core) with kubelet's homogeneous per-element sizes."""

    def __init__(self, topo: Topology) -> None:
        self.socket_of: dict[int, int] = {}
        self.numa_of: dict[int, int] = {}
        self.core_of: dict[int, int] = {}
        self.cpus_in_socket: dict[int, frozenset[int]] = {}
        self.cpus_in_numa: dict[int, frozenset[int]] = {}
        self.cpus_in_core: dict[int, frozenset[int]] = {}
        sockets: dict[int, set[int]] = {}
        numas: dict[int, set[int]] = {}
        cores: dict[int, set[int]] = {}
        for cpu, info in topo.cpus.items():
            self.socket_of[cpu] = info.socket
            self.numa_of[cpu] = info.node
            self.core_of[cpu] = info.core
            sockets.setdefault(info.socket, set()).add(cpu)
            numas.setdefault(info.node, set()).add(cpu)
            cores.setdefault(info.core, set()).add(cpu)
        self.cpus_in_socket = {k: frozenset(v) for k, v in sockets.items()}
        self.cpus_in_numa = {k: frozenset(v) for k, v in numas.items()}
        self.cpus_in_core = {k: frozenset(v) for k, v in cores.items()}
        self.numas_in_socket: dict[int, list[int]] = {}
        self.sockets_in_numa: dict[int, list[int]] = {}
        for numa, cpus in self.cpus_in_numa.items():
            for s in sorted({self.socket_of[c] for c in cpus}):
                self.numas_in_socket.setdefault(s, []).append(numa)
                self.sockets_in_numa.setdefault(numa, []).append(s)
        self.cores_in_socket: dict[int, list[int]] = {}
        self.cores_in_numa: dict[int, list[int]] = {}
        for core, cpus in self.cpus_in_core.items():
            c0 = min(cpus)
            self.cores_in_socket.setdefault(self.socket_of[c0], []).append(core)
            self.cores_in_numa.setdefault(self.numa_of[c0], []).append(core)
        n = len(topo.cpus)
        self.num_cpus = n
        self.cpus_per_core = n // len(self.cpus_in_core)
        self.cpus_per_socket = n // len(self.cpus_in_socket)
        self.cpus_per_numa = n // len(self.cpus_in_numa)
        self.numa_first = len(self.cpus_in_socket) >= len(self.cpus_in_numa)


class _Accumulator:
    def __init__(self, kt: KubeletTopology, available: Iterable[int], n: int) -> None:
        self.kt = kt
        self.avail = set(available)
        self.need = n
        self.result: list[int] = []

    def take(self, cpus: Iterable[int]) -> None:
        for c in sorted(cpus):
            self.avail.discard(c)
            self.result.append(c)
            self.need -= 1

    def _count(self, cpus: frozenset[int]) -> int:
        return len(cpus & self.avail)

    def _sort(self, ids: Iterable[int], cpus_of: dict[int, frozenset[int]]) -> list[int]:
        keyed = [(self._count(cpus_of[i]), i) for i in ids]
        return [i for k, i in sorted(keyed) if k > 0]

    def sorted_numas(self) -> list[int]:
        kt = self.kt
        if kt.numa_first:
            return self._sort(kt.cpus_in_numa, kt.cpus_in_numa)
        out: list[int] = []
        for s in self.sorted_sockets():
            out.extend(self._sort(kt.numas_in_socket[s], kt.cpus_in_numa))
        return out

    def sorted_sockets(self) -> list[int]:
        kt = self.kt
        if not kt.numa_first:
            return self._sort(kt.cpus_in_socket, kt.cpus_in_socket)
        out: list[int] = []
        for numa in self.sorted_numas():
            out.extend(self._sort(kt.sockets_in_numa[numa], kt.cpus_in_socket))
        return out

    def sorted_cores(self) -> list[int]:
        kt = self.kt
        out: list[int] = []
        if kt.numa_first:
            for s in self.sorted_sockets():
                out.extend(self._sort(kt.cores_in_socket[s], kt.cpus_in_core))
        else:
            for numa in self.sorted_numas():
                out.extend(self._sort(kt.cores_in_numa[numa], kt.cpus_in_core))
        return out

    def _take_full(self, ids: list[int], cpus_of: dict[int, frozenset[int]], size: int) -> None:
        free = [i for i in ids if self._count(cpus_of[i]) == size]
        for i in free:
            if self.need <= 0:
                return
            if self.need >= size:
                # the element's CPUs as seen through the available set (kubelet keeps
                # only available CPUs in its CPUDetails)
                self.take(cpus_of[i] & self.avail)

    def take_full_numas(self) -> None:
        self._take_full(self.sorted_numas(), self.kt.cpus_in_numa, self.kt.cpus_per_numa)

    def take_full_sockets(self) -> None:
        self._take_full(self.sorted_sockets(), self.kt.cpus_in_socket, self.kt.cpus_per_socket)

    def take_full_cores(self) -> None:
        self._take_full(self.sorted_cores(), self.kt.cpus_in_core, self.kt.cpus_per_core)

    def take_remaining(self) -> None:
        for core in self.sorted_cores():
            for cpu in sorted(self.kt.cpus_in_core[core] & self.avail):
                if self.need <= 0:
                    return
                self.take([cpu])


def take_by_topology_packed(kt: KubeletTopology, available: Iterable[int], n: int) -> list[int]:
    """takeByTopologyNUMAPacked: returns the CPUs in the order they were taken."""
    acc = _Accumulator(kt, available, n)
    if n > len(acc.avail):
        raise NotEnoughCpus(
            "not enough cpus available to satisfy request: "
            f"requested={n}, available={len(acc.avail)}"
        )
    if n <= 0:
        return []
    steps = (
        [acc.take_full_numas, acc.take_full_sockets]
        if kt.numa_first
        else [acc.take_full_sockets, acc.take_full_numas]
    )
    for step in (*steps, acc.take_full_cores, acc.take_remaining):
        if acc.need <= 0:
            break
        step()
    if acc.need != 0:
        raise KubeletError("failed to allocate cpus")
    return acc.result


def kt_siblings(kt: KubeletTopology, cpu: int) -> frozenset[int]:
    return kt.cpus_in_core[kt.core_of[cpu]]


class KubeletStaticPolicy:
    """Exclusive-CPU allocator of the static policy, driven like the project's allocator.

    ``topology_manager``: None (policy ``none``), "best-effort" or "restricted".
    """

    def __init__(
        self,
        topo: Topology,
        *,
        topology_manager: str | None = None,
        full_pcpus_only: bool = False,
    ) -> None:
        if topology_manager not in (None, "best-effort", "restricted"):
            raise ValueError(f"unsupported topology manager policy {topology_manager!r}")
        self.kt = KubeletTopology(topo)
        self.topology_manager = topology_manager
        self.full_pcpus_only = full_pcpus_only
        self.free: set[int] = set(topo.usable)
        # reservedPhysicalCPUs: the reserved CPUs and their core siblings
        self.reserved_physical: frozenset[int] = frozenset(
            s for r in topo.reserved for s in kt_siblings(self.kt, r)
        )
        self.assignments: dict[str, tuple[int, ...]] = {}
        self.numa_ids = sorted(self.kt.cpus_in_numa)

    # --- Topology Manager ------------------------------------------------------
    def numa_hint(self, n: int) -> tuple[int, bool] | None:
        """Best NUMA affinity (bitmask over sorted node ids, preferred?) or None."""
        ids = self.numa_ids
        free_per = [len(self.kt.cpus_in_numa[i] & self.free) for i in ids]
        cap_per = [len(self.kt.cpus_in_numa[i]) for i in ids]
        masks = range(1, 1 << len(ids))
        min_size = min(
            (bin(m).count("1") for m in masks
             if sum(cap_per[b] for b in range(len(ids)) if m >> b & 1) >= n),
            default=None,
        )
        best: tuple[int, int, int] | None = None
        for m in masks:
            if sum(free_per[b] for b in range(len(ids)) if m >> b & 1) < n:
                continue
            pop = bin(m).count("1")
            key = (0 if pop == min_size else 1, pop, m)
            if best is None or key < best:
                best = key
        if best is None:
            return None
        return best[2], best[0] == 0

    # --- allocation -------------------------------------------------------------
    def allocate(self, workload: str, n: int) -> tuple[int, ...]:
        if workload in self.assignments:
            raise KubeletError(f"{workload} already allocated")
        kt = self.kt
        if self.full_pcpus_only:
            # policy_static.go validateSMTAlignment: a multiple of CPUsPerCore (NumCPUs /
            # NumCores), and no more than the free CPUs outside the reserved CPUs' cores
            if n % kt.cpus_per_core != 0:
                raise SMTAlignmentError(
                    f"SMT Alignment Error: requested {n} cpus not multiple cpus per core = "
                    f"{kt.cpus_per_core}"
                )
            available_physical = len(self.free - self.reserved_physical)
            if n > available_physical:
                raise SMTAlignmentError(
                    "SMT Alignment Error: not enough free physical CPUs: available physical "
                    f"CPUs = {available_physical}, requested CPUs = {n}, CPUs per core = "
                    f"{kt.cpus_per_core}"
                )
        if n > len(self.free):
            raise NotEnoughCpus(
                "not enough cpus available to satisfy request: "
                f"requested={n}, available={len(self.free)}"
            )
        aligned: set[int] = set()
        if self.topology_manager is not None:
            hint = self.numa_hint(n)
            if hint is not None:
                mask, preferred = hint
                if self.topology_manager == "restricted" and not preferred:
                    raise TopologyAffinityError("no preferred NUMA affinity")
                for b, numa in enumerate(self.numa_ids):
                    if mask >> b & 1:
                        aligned |= kt.cpus_in_numa[numa] & self.free
            elif self.topology_manager == "restricted":
                raise TopologyAffinityError("no NUMA affinity")
        result: list[int] = []
        if aligned:
            k = min(n, len(aligned))
            result = take_by_topology_packed(kt, aligned, k)
        if len(result) < n:
            rest = self.free - set(result)
            result += take_by_topology_packed(kt, rest, n - len(result))
        cpus = tuple(sorted(result))
        self.free -= set(cpus)
        self.assignments[workload] = cpus
        return cpus

    def release(self, workload: str) -> None:
        cpus = self.assignments.pop(workload)
        self.free |= set(cpus)
