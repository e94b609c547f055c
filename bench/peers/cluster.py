"""Re-implementations of peer cluster schedulers' placement algorithms, written from the
descriptions in ``shared/reference/scheduler-and-health.md`` §2, §4, §5 (no upstream code copied),
for bench/scheduler.py. All run on the same numpy fleet arrays as the project's engine (same
language and runtime), so the comparison is of algorithms, not of JVM/Go against Python.

- ``FenzoFull``: full scan; score = 0.15·resource-set fitness (1: no resource sets) + 0.5·soft
  constraints (1: none) + 0.35·calculator, calculator = cpuMem bin-packer (mean of used/total after
  placing, pack) or its spreader (1 − bin-packer, spread); optional good-enough cut-off (default
  1.0 = never) over hosts in name order; ties broken by hostname.
- ``NomadLimit``: per job (an evaluation) one seeded shuffle of the nodes and a cursor through it;
  score only the first ``limit`` feasible nodes (max(2, ⌈log2 n⌉) for service jobs); BestFit v3
  ``20 − (10^freeCpu + 10^freeMem)`` (pack) or ``total − 2`` (spread), clamped to [0, 18] and
  normalised; job anti-affinity ``−(collisions + 1)/desired`` averaged in when collisions > 0.
  Not modelled: skipping up to 3 nodes scoring below 0.
- ``K8sPct``: percentageOfNodesToScore adaptive = max(5, 50 − n/125) %, at least 100 nodes; filter
  from a rotating start index until that many feasible nodes are found; score = NodeResourcesFit
  (LeastAllocated for spread, MostAllocated for pack) + BalancedAllocation + ImageLocality (500 MB
  images, scaled by the share of nodes holding the image), each 0..100, weight 1; highest wins,
  ties to the first found. Not modelled: default PodTopologySpread, taints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]


@dataclass
class Fleet:
    names: list[str]
    cap_cpu: F
    cap_mem: F
    free_cpu: F
    free_mem: F
    tasks: F
    bad: B
    zone: npt.NDArray[np.int64]
    image_hosts: dict[str, B]  # image → hosts holding it
    max_tasks: float = 120.0

    def feasible(self, cpu: float, mem: float) -> B:
        m: B = (self.free_cpu >= cpu - 1e-9) & (self.free_mem >= mem) & (self.tasks < self.max_tasks) & ~self.bad
        return m

    def used_after(self, idx: npt.NDArray[np.int64] | slice, cpu: float, mem: float) -> tuple[F, F]:
        uc: F = (self.cap_cpu[idx] - self.free_cpu[idx] + cpu) / self.cap_cpu[idx]
        um: F = (self.cap_mem[idx] - self.free_mem[idx] + mem) / self.cap_mem[idx]
        return uc, um


class FenzoFull:
    name = "fenzo_full"

    def __init__(self, fleet: Fleet, pack: bool, good_enough: float = 1.0) -> None:
        self.f, self.pack, self.good_enough = fleet, pack, good_enough
        self.order = np.argsort(np.array(fleet.names))  # hostname order for ties and cut-off

    def place(self, job: str, cpu: float, mem: float, image: str, desired: int, on_host: F) -> int | None:
        f = self.f
        ok = f.feasible(cpu, mem)[self.order]
        if not ok.any():
            return None
        uc, um = f.used_after(self.order, cpu, mem)
        calc = (uc + um) / 2 if self.pack else 1 - (uc + um) / 2
        score = np.where(ok, 0.15 + 0.5 + 0.35 * calc, -1.0)
        if self.good_enough < 1.0:
            good = np.flatnonzero(score > self.good_enough)
            if good.size:
                return int(self.order[good[0]])
        return int(self.order[int(np.argmax(score))])  # argmax: first maximum = lowest hostname


class NomadLimit:
    name = "nomad_limit"

    def __init__(self, fleet: Fleet, pack: bool, seed: int) -> None:
        self.f, self.pack = fleet, pack
        self.limit = max(2, math.ceil(math.log2(max(2, len(fleet.names)))))
        self.rng = np.random.default_rng(seed)
        self.cursors: dict[str, tuple[npt.NDArray[np.int64], int]] = {}

    def place(self, job: str, cpu: float, mem: float, image: str, desired: int, on_host: F) -> int | None:
        f = self.f
        n = len(f.names)
        if job not in self.cursors:
            self.cursors[job] = (self.rng.permutation(n), 0)
        order, pos = self.cursors[job]
        ok = f.feasible(cpu, mem)
        rolled = np.roll(order, -pos)
        cand = rolled[ok[rolled]][: self.limit]
        if cand.size == 0:
            return None
        self.cursors[job] = (order, (pos + int(np.flatnonzero(rolled == cand[-1])[0]) + 1) % n)
        uc, um = f.used_after(cand, cpu, mem)
        total = 10 ** (1 - uc) + 10 ** (1 - um)
        fit = np.clip(20 - total if self.pack else total - 2, 0, 18) / 18
        coll = on_host[cand]
        anti = -(coll + 1) / max(1, desired)
        score = np.where(coll > 0, (fit + anti) / 2, fit)
        return int(cand[int(np.argmax(score))])


class K8sPct:
    name = "k8s_pct"

    def __init__(self, fleet: Fleet, pack: bool) -> None:
        self.f, self.pack = fleet, pack
        n = len(fleet.names)
        pct = max(5.0, 50 - n / 125)
        self.to_find = min(n, max(100, int(n * pct / 100)))
        self.start = 0

    def place(self, job: str, cpu: float, mem: float, image: str, desired: int, on_host: F) -> int | None:
        f = self.f
        n = len(f.names)
        ok = f.feasible(cpu, mem)
        order = np.roll(np.arange(n), -self.start)
        found = order[ok[order]][: self.to_find]
        if found.size == 0:
            return None
        last = int(np.flatnonzero(order == found[-1])[0])
        self.start = (self.start + last + 1) % n
        uc, um = f.used_after(found, cpu, mem)
        fit = (uc + um) / 2 * 100 if self.pack else (1 - (uc + um) / 2) * 100
        balanced = (1 - np.abs(uc - um) / 2) * 100
        holders = f.image_hosts.get(image)
        locality = np.zeros(found.size)
        if holders is not None:
            ratio = holders.sum() / n
            locality = holders[found] * 100 * np.clip((500 * ratio - 23) / (1000 - 23), 0, 1)
        return int(found[int(np.argmax(fit + balanced + locality))])
