"""Python re-implementation of titus-isolate's greedy allocator, written from the
description in ``shared/reference/cpu-placement.md`` section 3 (no upstream code copied).

Model: package -> core -> thread only (no NUMA within a socket, no L3). A request is
served thread by thread: stay in the emptiest package (most free threads) until it is
full, and inside it pick the emptiest core (worst-fit spread), then its lowest free
thread. Rebalancing re-places every workload from scratch (largest first) and is accepted
only if it lowers cross-package violations, or ties and lowers shared-core violations.
"""

from __future__ import annotations

from cpuset.topology import Topology


class GreedyError(Exception):
    pass


class TitusIsolateGreedy:
    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.usable = frozenset(topo.usable)
        pkgs: dict[int, dict[int, list[int]]] = {}
        for cpu in sorted(topo.usable):
            info = topo.cpus[cpu]
            pkgs.setdefault(info.socket, {}).setdefault(info.core, []).append(cpu)
        self.packages = {p: {c: tuple(t) for c, t in cores.items()} for p, cores in pkgs.items()}
        self.pkg_of = {cpu: topo.cpus[cpu].socket for cpu in topo.usable}
        self.sibs = {cpu: core for core in topo.cores().values() for cpu in core}
        self.free: set[int] = set(self.usable)
        self.assignments: dict[str, tuple[int, ...]] = {}

    def _pkg_free(self, free: set[int], p: int) -> int:
        return sum(1 for cores in self.packages[p].values() for t in cores if t in free)

    def _place(self, free: set[int], n: int) -> list[int]:
        if n > len(free):
            raise GreedyError(f"not enough free threads: requested={n}, available={len(free)}")
        taken: list[int] = []
        pkg: int | None = None
        while len(taken) < n:
            if pkg is None or self._pkg_free(free, pkg) == 0:
                pkg = min(self.packages, key=lambda p: (-self._pkg_free(free, p), p))
            best_core = min(
                (c for c, ts in self.packages[pkg].items() if any(t in free for t in ts)),
                key=lambda c: (-sum(1 for t in self.packages[pkg][c] if t in free), c),
            )
            thread = next(t for t in self.packages[pkg][best_core] if t in free)
            free.discard(thread)
            taken.append(thread)
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
        """(cross_package, shared_core) counts over workloads."""
        owner = {c: w for w, cpus in assignments.items() for c in cpus}
        cross = sum(1 for cpus in assignments.values() if len({self.pkg_of[c] for c in cpus}) > 1)
        shared = 0
        for w, cpus in assignments.items():
            if any(owner.get(s) not in (None, w)
                   for c in cpus for s in self.sibs[c]):
                shared += 1
        return cross, shared

    def replace_all(self, assignments: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """Greedy placement of every workload from an empty host (largest first)."""
        free = set(self.usable)
        out: dict[str, tuple[int, ...]] = {}
        for w in sorted(assignments, key=lambda w: (-len(assignments[w]), w)):
            out[w] = tuple(self._place(free, len(assignments[w])))
        return out


def cpus_moved(old: dict[str, tuple[int, ...]], new: dict[str, tuple[int, ...]]) -> int:
    """CPUs moved = sum over workloads of |old xor new| / 2."""
    total = 0
    for w, cpus in old.items():
        total += len(set(cpus) ^ set(new.get(w, ())))
    return total // 2


def greedy_rebalance(
    topo: Topology, assignments: dict[str, tuple[int, ...]]
) -> tuple[dict[str, tuple[int, ...]], int, bool]:
    """titus-isolate style rebalance of ``assignments``: (new layout, CPUs moved, accepted)."""
    g = TitusIsolateGreedy(topo)
    new = g.replace_all(assignments)
    before, after = g.violations(assignments), g.violations(new)
    accepted = after[0] < before[0] or (after[0] == before[0] and after[1] < before[1])
    if not accepted:
        return dict(assignments), 0, False
    return new, cpus_moved(assignments, new), True
