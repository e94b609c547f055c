"""Python re-implementation of titus-isolate's greedy CPU allocator and its rebalance, for
bench/placement.py. Written from the upstream behaviour (Netflix-Skunkworks/titus-isolate;
no upstream code copied):

- placement: ``GreedyCpuAllocator.__assign_threads`` (``titus_isolate/allocate/
  greedy_cpu_allocator.py``, unchanged from 2018's ``isolate/cpu.py:assign_threads`` to
  10dd8ba) with ``Cpu.get_emptiest_package`` and ``processor/utils.py:get_emptiest_core``;
- rebalance: the 2018 ``WorkloadManager.__rebalance`` (6216842..0c8ad14): place every
  workload again on an empty copy of the CPU, static workloads largest first
  (``add_workloads`` sorts by thread count, stable), and adopt that layout only if
  ``isolate/balance.py:has_better_isolation`` says so, with the violations of
  ``isolate/detect.py``.

Algorithm (what upstream does):
1. the request fails if the CPU has no empty thread left;
2. pick the emptiest package: most empty threads, ties to the first package;
3. while threads are still needed and that package has empty threads: pick its emptiest
   core (most empty threads, ties to the first core) and claim *all* its empty threads, up
   to the number still needed - so whole empty cores are claimed first, and a half-used
   core is only taken once no core of the package has more empty threads;
4. recurse with what is still needed (back to step 1: the emptiest package again).

Violations: ``cross_package`` = workloads on more than one package; ``shared_core`` =
cores whose threads belong to more than one workload. A re-placement is better iff it has
fewer cross-package violations, or as many and fewer shared-core violations.

Where this differs from upstream:
- the topology is this project's sysfs discovery, not upstream's lscpu counts with thread
  ids computed by formula; packages are ordered by socket id, cores by their lowest thread
  id and threads ascending, which is the order upstream's formula produces on hosts it
  models correctly. Reserved CPUs (the bench reserves the first core) are simply absent.
- a request larger than the free threads is refused up front; upstream claims what it can,
  then raises on the full CPU, and the workload manager discards that attempt - the same
  outcome.
- every request is placed as ``static``: upstream's burst workloads get no exclusive
  threads (they share whatever is free), which the bench's other peers do not model either.
"""

from __future__ import annotations

from cpuset.topology import Topology


class GreedyError(Exception):
    pass


Package = tuple[tuple[int, ...], ...]  # cores in order, each its threads in order


class TitusIsolateGreedy:
    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.usable = frozenset(topo.usable)
        by_pkg: dict[int, dict[int, list[int]]] = {}
        for cpu in sorted(self.usable):
            info = topo.cpus[cpu]
            by_pkg.setdefault(info.socket, {}).setdefault(info.core, []).append(cpu)
        # cores within a package in order of their lowest thread (dict insertion order)
        self.packages: list[Package] = [
            tuple(tuple(threads) for threads in by_pkg[s].values()) for s in sorted(by_pkg)
        ]
        self.pkg_of = {cpu: i for i, pkg in enumerate(self.packages) for core in pkg for cpu in core}
        self.core_of = {cpu: core for pkg in self.packages for core in pkg for cpu in core}
        self.free: set[int] = set(self.usable)
        self.assignments: dict[str, tuple[int, ...]] = {}

    @staticmethod
    def _empty(threads: tuple[int, ...], free: set[int]) -> list[int]:
        return [t for t in threads if t in free]

    def _emptiest_package(self, free: set[int]) -> Package:
        best = self.packages[0]
        best_n = sum(len(self._empty(c, free)) for c in best)
        for pkg in self.packages[1:]:
            n = sum(len(self._empty(c, free)) for c in pkg)
            if n > best_n:  # strict: ties keep the first package
                best, best_n = pkg, n
        return best

    def _emptiest_core(self, pkg: Package, free: set[int]) -> tuple[int, ...]:
        best = pkg[0]
        best_n = len(self._empty(best, free))
        for core in pkg[1:]:
            n = len(self._empty(core, free))
            if n > best_n:  # strict: ties keep the first core
                best, best_n = core, n
        return best

    def _place(self, free: set[int], n: int) -> list[int]:
        """Claim ``n`` threads from ``free`` (mutated) the way upstream's greedy does."""
        if n > len(free):
            raise GreedyError(f"not enough free threads: requested={n}, available={len(free)}")
        taken: list[int] = []
        need = n
        while need > 0:  # upstream recurses; each round re-picks the emptiest package
            pkg = self._emptiest_package(free)
            while need > 0 and any(t in free for core in pkg for t in core):
                core = self._emptiest_core(pkg, free)
                for t in self._empty(core, free)[:need]:
                    free.discard(t)
                    taken.append(t)
                    need -= 1
        return sorted(taken)

    def allocate(self, workload: str, n: int) -> tuple[int, ...]:
        if workload in self.assignments:
            raise GreedyError(f"{workload} already allocated")
        cpus = tuple(self._place(self.free, n))
        self.assignments[workload] = cpus
        return cpus

    def release(self, workload: str) -> None:
        cpus = self.assignments.pop(workload)
        self.free |= set(cpus)

    # --- rebalancing --------------------------------------------------------------
    def violations(self, assignments: dict[str, tuple[int, ...]]) -> tuple[int, int]:
        """(cross_package workloads, shared_core cores), as upstream's detect.py counts."""
        cross = sum(1 for cpus in assignments.values() if len({self.pkg_of[c] for c in cpus}) > 1)
        users: dict[tuple[int, ...], set[str]] = {}
        for w, cpus in assignments.items():
            for c in cpus:
                users.setdefault(self.core_of[c], set()).add(w)
        shared = sum(1 for ws in users.values() if len(ws) > 1)
        return cross, shared

    def replace_all(self, assignments: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """Greedy placement of every workload on an empty host, largest first (stable: equal
        sizes keep the order of ``assignments``, as upstream's workload map does)."""
        free = set(self.usable)
        out: dict[str, tuple[int, ...]] = {}
        for w in sorted(assignments, key=lambda w: len(assignments[w]), reverse=True):
            out[w] = tuple(self._place(free, len(assignments[w])))
        return out


def has_better_isolation(before: tuple[int, int], after: tuple[int, int]) -> bool:
    """Upstream's acceptance rule over (cross_package, shared_core) violation counts."""
    if after[0] != before[0]:
        return after[0] < before[0]
    return after[1] < before[1]


def cpus_moved(old: dict[str, tuple[int, ...]], new: dict[str, tuple[int, ...]]) -> int:
    """CPUs moved = sum over workloads of |old xor new| / 2."""
    total = 0
    for w, cpus in old.items():
        total += len(set(cpus) ^ set(new.get(w, ())))
    return total // 2


def greedy_rebalance(
    topo: Topology, assignments: dict[str, tuple[int, ...]]
) -> tuple[dict[str, tuple[int, ...]], int, bool]:
    """titus-isolate's rebalance of ``assignments``: (new layout, CPUs moved, accepted)."""
    g = TitusIsolateGreedy(topo)
    new = g.replace_all(assignments)
    if not has_better_isolation(g.violations(assignments), g.violations(new)):
        return dict(assignments), 0, False
    return new, cpus_moved(assignments, new), True
