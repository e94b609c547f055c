"""The placement engine: a full scan of every host, vectorised with numpy (one array per resource,
one boolean mask per constraint), scored by `fitness` in the current mode (spread or pack).

Per task: hard filters (health, posture and other caller masks, host attributes, per-host job cap,
host task limit, zone balance, cpu, memory, disk, IPs) → score (fitness formulas) + seeded per-host
tie-break → best host, or the reasons with host counts when none is left. The first failing filter
per host counts (Fenzo's "first failure wins"), so the counts add up to the host count.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from scheduler.fitness import Mode, score, utilisation
from titus_common.constraints import ConstraintsSpec, host_attribute_requirements

__all__ = ["Decision", "Engine", "HostInput", "HostTable", "Request", "reason_text"]

F = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]
EPS = 1e-9
SOFT_PENALTY = 0.5


@dataclass
class HostInput:
    id: str
    cpus: float
    memory_mib: float
    disk_mib: float
    free_cpus: float
    free_memory_mib: float
    free_disk_mib: float
    labels: dict[str, str] = field(default_factory=dict)
    images: frozenset[str] = frozenset()
    free_ips: int | None = None
    warm: dict[str, int] = field(default_factory=dict)  # security-group set → free IPs on its ENI
    bad: bool = False  # never chosen (per-job taint tolerations are caller masks: passes.py)
    degraded: bool = False  # a degraded health check: the fitness term `degradedHost`
    tasks: int = 0
    job_tasks: dict[str, int] = field(default_factory=dict)  # job id → its tasks on this host


@dataclass(frozen=True)
class Request:
    task_id: str
    job_id: str
    cpu: float
    memory_mib: float
    disk_mib: float
    image: str = ""
    sg_key: str = ""
    constraints: ConstraintsSpec = ConstraintsSpec()
    job_tasks: int = 0  # the job's task count: the default per-host cap never makes it unplaceable


@dataclass
class Decision:
    task_id: str
    host: str | None
    reasons: list[tuple[str, int]] = field(default_factory=list)  # (reason, hosts), most first
    breakdown: dict[str, float] = field(default_factory=dict)  # the chosen host's score terms


def reason_text(reasons: list[tuple[str, int]], top: int = 3) -> str:
    return "; ".join(f"{n:,} hosts: {r}" for r, n in reasons[:top])


def _jitter(seed: int, host_id: str) -> float:
    h = hashlib.blake2b(f"{seed}:{host_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64 * 1e-6


class HostTable:
    """The fleet as arrays, in host-id order (so results do not depend on the order hosts came in)."""

    def __init__(self, hosts: list[HostInput], seed: int = 0, max_tasks_per_host: int = 120) -> None:
        hosts = sorted(hosts, key=lambda h: h.id)
        self.ids = [h.id for h in hosts]
        self.index = {h: i for i, h in enumerate(self.ids)}
        n = len(hosts)
        self.cap_cpu = np.array([max(h.cpus, EPS) for h in hosts], dtype=np.float64)
        self.cap_mem = np.array([max(h.memory_mib, EPS) for h in hosts], dtype=np.float64)
        self.free_cpu = np.array([h.free_cpus for h in hosts], dtype=np.float64)
        self.free_mem = np.array([h.free_memory_mib for h in hosts], dtype=np.float64)
        self.free_disk = np.array([h.free_disk_mib for h in hosts], dtype=np.float64)
        self.free_ips = np.array([np.inf if h.free_ips is None else h.free_ips for h in hosts], dtype=np.float64)
        self.bad = np.array([h.bad for h in hosts], dtype=np.bool_)
        self.degraded = np.array([1.0 if h.degraded else 0.0 for h in hosts], dtype=np.float64)
        self.tasks = np.array([h.tasks for h in hosts], dtype=np.float64)
        self.max_tasks = float(max_tasks_per_host)
        self.zones = sorted({h.labels.get("zone", "") for h in hosts})
        zi = {z: i for i, z in enumerate(self.zones)}
        self.zone = np.array([zi[h.labels.get("zone", "")] for h in hosts], dtype=np.int64)
        self.jitter = np.array([_jitter(seed, h.id) for h in hosts], dtype=np.float64)
        # Kept up to date host by host in `take` (only the chosen host changes), so a placement
        # recomputes only what depends on the request.
        self.inv_cpu = 1.0 / self.cap_cpu
        self.inv_mem = 1.0 / self.cap_mem
        self.free_frac = (self.free_cpu * self.inv_cpu + self.free_mem * self.inv_mem) / 2.0
        self.base_ok = ~self.bad & (self.tasks < self.max_tasks) & (self.free_ips >= 1)
        self._labels = [h.labels for h in hosts]
        self._label_masks: dict[tuple[str, str], B] = {}
        self.images: dict[str, F] = {}
        for i, h in enumerate(hosts):
            for img in h.images:
                if img not in self.images:
                    self.images[img] = np.zeros(n, dtype=np.float64)
                self.images[img][i] = 1.0
        self.warm: dict[str, F] = {}
        for i, h in enumerate(hosts):
            for sg, free in h.warm.items():
                if sg not in self.warm:
                    self.warm[sg] = np.zeros(n, dtype=np.float64)
                self.warm[sg][i] = free
        self.job_on_host: dict[str, F] = {}
        for i, h in enumerate(hosts):
            for job, count in h.job_tasks.items():
                self._job(job)[i] += count
        self.job_zone: dict[str, F] = {j: np.bincount(self.zone, weights=a, minlength=len(self.zones)).astype(np.float64)
                                       for j, a in self.job_on_host.items()}

    def __len__(self) -> int:
        return len(self.ids)

    def _job(self, job_id: str) -> F:
        a = self.job_on_host.get(job_id)
        if a is None:
            a = self.job_on_host[job_id] = np.zeros(len(self.ids), dtype=np.float64)
        return a

    def label_mask(self, key: str, value: str) -> B:
        m = self._label_masks.get((key, value))
        if m is None:
            m = self._label_masks[(key, value)] = np.array([lb.get(key) == value for lb in self._labels], dtype=np.bool_)
        return m

    def take(self, i: int, r: Request) -> None:
        self.free_cpu[i] -= r.cpu
        self.free_mem[i] -= r.memory_mib
        self.free_disk[i] -= r.disk_mib
        self.free_ips[i] -= 1
        if r.sg_key in self.warm and self.warm[r.sg_key][i] > 0:
            self.warm[r.sg_key][i] -= 1
        self.tasks[i] += 1
        self.free_frac[i] = (self.free_cpu[i] * self.inv_cpu[i] + self.free_mem[i] * self.inv_mem[i]) / 2.0
        self.base_ok[i] = not self.bad[i] and self.tasks[i] < self.max_tasks and self.free_ips[i] >= 1
        self._job(r.job_id)[i] += 1
        jz = self.job_zone.get(r.job_id)
        if jz is None:
            jz = self.job_zone[r.job_id] = np.zeros(len(self.zones), dtype=np.float64)
        jz[self.zone[i]] += 1


class Engine:
    """Full-scan placement. `mode` may be switched between passes (the live switch)."""

    def __init__(self, mode: Mode = Mode.SPREAD, seed: int = 0, job_cap: int = 8) -> None:
        self.mode = mode
        self.seed = seed
        self.job_cap = job_cap  # per-host cap of one job's tasks when the job sets none (anti-affinity)

    def place(self, table: HostTable, r: Request, masks: list[tuple[str, B]] | None = None) -> Decision:
        """Choose a host for `r` and commit it into `table`; `masks` are extra hard filters
        (reason, allowed per host), e.g. security posture."""
        n = len(table)
        if n == 0:
            return Decision(r.task_id, None, [("no Ready hosts", 0)])
        c = r.constraints
        hard_cap, soft_cap = c.max_per_host()
        # The default cap is anti-affinity, not a limit: on a cell with fewer hosts than the job needs
        # at `job_cap` each (one host in development), it grows to what an even spread needs.
        cap = float(hard_cap if hard_cap is not None else max(self.job_cap, -(-r.job_tasks // n)))
        known = table.job_on_host.get(r.job_id)
        on_host: F = known if known is not None else np.zeros(n, dtype=np.float64)
        attrs = [(f"host attribute {k}!={v}", table.label_mask(k, v)) for k, v in host_attribute_requirements(c.hard).items()]
        # The fast path: one combined mask; the per-reason counts only when nothing fits.
        ok = table.base_ok & (table.free_cpu >= r.cpu - EPS) & (table.free_mem >= r.memory_mib)
        if r.disk_mib > 0:
            ok &= table.free_disk >= r.disk_mib
        if known is not None:
            ok &= known < cap
        for _, allowed in (*(masks or ()), *attrs):
            ok &= allowed
        if not ok.any():
            reasons = self._reasons(table, r, cap, on_host, [*(masks or ()), *attrs])
            return Decision(r.task_id, None, sorted(reasons, key=lambda x: -x[1]))
        jz = table.job_zone.get(r.job_id)
        zone_min: F | float = 1.0
        if jz is not None and jz.any():
            open_zones = np.bincount(table.zone, weights=ok, minlength=len(table.zones)) > 0
            zone_min = (jz[table.zone] <= jz[open_zones].min()).astype(np.float64)
            if c.flag("zoneBalance")[0]:
                off = ok & (zone_min == 0)
                ok &= zone_min > 0
                if not ok.any():  # cannot happen (a least-loaded open zone exists); kept for safety
                    return Decision(r.task_id, None, [("zone balance", int(np.count_nonzero(off)))])
        util = utilisation(table.free_frac, table.inv_cpu, table.inv_mem, r.cpu, r.memory_mib)
        img = table.images.get(r.image)
        warm = table.warm.get(r.sg_key)
        terms = score(
            self.mode, util, on_host if known is not None else 0.0, zone_min,
            img if img is not None else 0.0,
            (warm >= 1).astype(np.float64) if warm is not None else 0.0,
            cap,
            table.degraded if table.degraded.any() else 0.0,
        )
        terms.update(self._soft(table, c, on_host, soft_cap, zone_min))
        total = table.jitter.copy()
        for v in terms.values():
            total += v
        i = int(np.argmax(np.where(ok, total, -np.inf)))
        table.take(i, r)
        return Decision(r.task_id, table.ids[i], [], {k: float(v[i] if isinstance(v, np.ndarray) else v)
                                                      for k, v in terms.items()})

    @staticmethod
    def _reasons(table: HostTable, r: Request, cap: float, on_host: F, allowed: list[tuple[str, B]]) -> list[tuple[str, int]]:
        """Why no host fits: the first failing filter per host, counted."""
        filters: list[tuple[str, B]] = [("unhealthy", table.bad)]
        filters += [(reason, ~a) for reason, a in allowed]
        filters.append((f"job already has {int(cap)} task(s) there", on_host >= cap))
        filters.append(("host task limit", table.tasks >= table.max_tasks))
        filters.append(("not enough cpu", table.free_cpu < r.cpu - EPS))
        filters.append(("not enough memory", table.free_mem < r.memory_mib))
        filters.append(("not enough disk", table.free_disk < r.disk_mib))
        filters.append(("no free IP", table.free_ips < 1))
        left = np.ones(len(table), dtype=np.bool_)
        out: list[tuple[str, int]] = []
        for reason, bad in filters:
            hit = int(np.count_nonzero(left & bad))
            if hit:
                out.append((reason, hit))
                left &= ~bad
        return out

    def _soft(
        self, table: HostTable, c: ConstraintsSpec, on_host: F, soft_cap: int | None, zone_min: F | float
    ) -> dict[str, F | float]:
        n = len(table)
        out: dict[str, F | float] = {}
        pen = np.zeros(n, dtype=np.float64)
        if soft_cap is not None:
            pen -= SOFT_PENALTY * (on_host >= soft_cap)
        for key, value in host_attribute_requirements(c.soft).items():
            pen -= SOFT_PENALTY * ~table.label_mask(key, value)
        if c.flag("zoneBalance")[1]:
            pen -= SOFT_PENALTY * (zone_min == 0)
        if soft_cap is not None or c.soft:
            out["softConstraints"] = pen
        return out

    def place_all(
        self, table: HostTable, requests: list[Request], masks_for: dict[str, list[tuple[str, B]]] | None = None
    ) -> list[Decision]:
        """Place in order. Once a job's task finds no host, its later tasks in this pass get the same
        reasons without a scan (capacity only shrinks within a pass) — a 10,000-task job that fits
        nowhere costs one scan."""
        failed: dict[str, list[tuple[str, int]]] = {}
        out: list[Decision] = []
        for r in requests:
            if r.job_id in failed:
                out.append(Decision(r.task_id, None, failed[r.job_id]))
                continue
            d = self.place(table, r, (masks_for or {}).get(r.job_id))
            if d.host is None:
                failed[r.job_id] = d.reasons
            out.append(d)
        return out
