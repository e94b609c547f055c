"""The placement engine: a full scan of every host, vectorised with numpy (one array per resource,
one boolean mask per constraint), scored by `fitness` in the current mode (spread or pack).

Per task: hard filters (health, posture and other caller masks, host attributes, per-host job cap,
host task limit, zone balance, cpu, memory, disk, IPs) → score (fitness formulas) + seeded per-host
tie-break → best host, or the reasons with host counts when none is left. The first failing filter
per host counts (Fenzo's "first failure wins"), so the counts add up to the host count.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from scheduler.fitness import WEIGHTS, Mode, score, utilisation
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


def _shape(r: Request) -> tuple[object, ...]:
    """Everything of a request but its task id: tasks of one shape are placed as one run."""
    return (r.job_id, r.cpu, r.memory_mib, r.disk_mib, r.image, r.sg_key, r.constraints, r.job_tasks)


def reason_text(reasons: list[tuple[str, int]], top: int = 3) -> str:
    return "; ".join(f"{n:,} hosts: {r}" for r, n in reasons[:top])


@functools.lru_cache(maxsize=65536)  # a table is rebuilt every pass; the hosts mostly stay the same
def _jitter(seed: int, host_id: str) -> float:
    h = hashlib.blake2b(f"{seed}:{host_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64 * 1e-6


class HostTable:
    """The fleet as arrays, in host-id order (so results do not depend on the order hosts came in)."""

    def __init__(self, hosts: list[HostInput], seed: int = 0, max_tasks_per_host: int = 120) -> None:
        hosts = sorted(hosts, key=lambda h: h.id)
        self.inputs = hosts  # as given (never changed by `take`): what a decision trace records
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
        # Each job's tasks per host and per zone, made into arrays only for the jobs a pass places
        # (`_job`, `job_zone_of`): a burst's hundreds of jobs each cost an array per pass otherwise.
        self._job_hosts: dict[str, list[tuple[int, int]]] = {}
        for i, h in enumerate(hosts):
            for job, count in h.job_tasks.items():
                self._job_hosts.setdefault(job, []).append((i, count))
        self.job_on_host: dict[str, F] = {}
        self.job_zone: dict[str, F] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def _job(self, job_id: str) -> F:
        a = self.job_on_host.get(job_id)
        if a is None:
            a = self.job_on_host[job_id] = np.zeros(len(self.ids), dtype=np.float64)
            for i, count in self._job_hosts.get(job_id, ()):
                a[i] += count
        return a

    def job_zone_of(self, job_id: str) -> F | None:
        """The job's tasks per zone; None for a job with none in the table (and none placed since)."""
        jz = self.job_zone.get(job_id)
        if jz is None and job_id in self._job_hosts:
            jz = self.job_zone[job_id] = np.bincount(self.zone, weights=self._job(job_id),
                                                     minlength=len(self.zones)).astype(np.float64)
        return jz

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
        jz = self.job_zone_of(r.job_id)  # before this placement is counted in `_job`
        self._job(r.job_id)[i] += 1
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
        return self._place_run(table, [r], masks)[0]

    def _place_run(self, table: HostTable, run: list[Request], masks: list[tuple[str, B]] | None) -> list[Decision]:
        """Place tasks of one job in order. What does not depend on the job's zone spread is
        computed once for every host and then kept up to date host by host: a placement changes
        only the chosen host, so each further task of the run costs a few array operations (zone
        term, mask, argmax) instead of a full re-score. Bit-identical to scoring each task alone:
        every host's terms are computed by the same element-wise operations, summed in one order
        (jitter, the mode's terms, soft penalties; then the zone terms)."""
        n = len(table)
        if n == 0:
            return [Decision(r.task_id, None, [("no Ready hosts", 0)]) for r in run]
        r0 = run[0]
        c = r0.constraints
        hard_cap, soft_cap = c.max_per_host()
        # The default cap is anti-affinity, not a limit: on a cell with fewer hosts than the job needs
        # at `job_cap` each (one host in development), it grows to what an even spread needs.
        cap = float(hard_cap if hard_cap is not None else max(self.job_cap, -(-r0.job_tasks // n)))
        attrs = [(f"host attribute {k}!={v}", table.label_mask(k, v)) for k, v in host_attribute_requirements(c.hard).items()]
        extra = [*(masks or ()), *attrs]
        on_host = table._job(r0.job_id)  # live: `take` counts each placement in it
        allowed: B = np.ones(n, dtype=np.bool_)
        for _, a in extra:
            allowed &= a
        img = table.images.get(r0.image)
        warm = table.warm.get(r0.sg_key)
        soft_static: F = np.zeros(n, dtype=np.float64)
        for key, value in host_attribute_requirements(c.soft).items():
            soft_static -= SOFT_PENALTY * ~table.label_mask(key, value)
        has_soft = soft_cap is not None or bool(c.soft)
        hard_zone, soft_zone = c.flag("zoneBalance")
        w_zone = WEIGHTS[self.mode].zone

        def fits_all() -> B:
            ok = table.base_ok & (table.free_cpu >= r0.cpu - EPS) & (table.free_mem >= r0.memory_mib)
            if r0.disk_mib > 0:
                ok &= table.free_disk >= r0.disk_mib
            return ok & (on_host < cap) & allowed

        def fits_one(i: int) -> bool:  # the same tests as `fits_all`, for the host a placement changed
            return bool(table.base_ok[i] and table.free_cpu[i] >= r0.cpu - EPS and table.free_mem[i] >= r0.memory_mib
                        and (r0.disk_mib <= 0 or table.free_disk[i] >= r0.disk_mib) and on_host[i] < cap and allowed[i])

        # The score without the zone terms: every host's, then one host's after a placement. The one-host
        # version runs the same element-wise operations on floats, so results are bit-identical.
        def terms_all() -> dict[str, F]:
            util = utilisation(table.free_frac, table.inv_cpu, table.inv_mem, r0.cpu, r0.memory_mib)
            t = score(self.mode, util, on_host, 0.0, img if img is not None else 0.0,
                      (warm >= 1).astype(np.float64) if warm is not None else 0.0, cap,
                      table.degraded if table.degraded.any() else 0.0)
            del t["zoneBalance"]  # added per task: it moves as the job's zone spread does
            out = {k: v if isinstance(v, np.ndarray) else np.full(n, v, dtype=np.float64) for k, v in t.items()}
            if has_soft:
                pen = soft_static.copy()
                if soft_cap is not None:
                    pen -= SOFT_PENALTY * (on_host >= soft_cap)
                out["softConstraints"] = pen
            return out

        def terms_one(i: int) -> dict[str, float]:
            util = utilisation(float(table.free_frac[i]), float(table.inv_cpu[i]), float(table.inv_mem[i]),
                               r0.cpu, r0.memory_mib)
            t = score(self.mode, util, float(on_host[i]), 0.0, float(img[i]) if img is not None else 0.0,
                      (1.0 if warm[i] >= 1 else 0.0) if warm is not None else 0.0, cap,
                      float(table.degraded[i]))
            del t["zoneBalance"]
            out = {k: float(v) for k, v in t.items()}
            if has_soft:
                pen = float(soft_static[i])
                if soft_cap is not None:
                    pen -= SOFT_PENALTY * (1.0 if on_host[i] >= soft_cap else 0.0)
                out["softConstraints"] = pen
            return out

        ok = fits_all()
        terms = terms_all()
        base = table.jitter.copy()
        for v in terms.values():
            base += v
        masked = np.where(ok, base, -np.inf)  # kept up to date host by host
        zone_open = np.bincount(table.zone, weights=ok, minlength=len(table.zones))  # hosts that fit, per zone
        out: list[Decision] = []
        for k, r in enumerate(run):
            if not ok.any():
                reasons = sorted(self._reasons(table, r, cap, on_host, extra), key=lambda x: -x[1])
                out += [Decision(q.task_id, None, reasons) for q in run[k:]]
                break
            # The zone terms, per zone: 1 where the zone holds the fewest of the job's tasks among
            # zones with a fitting host (zone balance), else 0; hard zone balance closes the others.
            jz = table.job_zone_of(r.job_id)
            zmin = np.ones(len(table.zones), dtype=np.float64)
            if jz is not None and jz.any():
                zmin = (jz <= jz[zone_open > 0].min()).astype(np.float64)
            add = w_zone * zmin
            if soft_zone:
                add = add - SOFT_PENALTY * (zmin == 0)
            if hard_zone:
                add = np.where(zmin > 0, add, -np.inf)
            i = int(np.argmax(masked + add[table.zone]))
            if masked[i] == -np.inf or add[table.zone[i]] == -np.inf:  # cannot happen: kept for safety
                reasons = [("zone balance", int(np.count_nonzero(ok)))]
                out += [Decision(q.task_id, None, reasons) for q in run[k:]]
                break
            z = float(zmin[table.zone[i]])
            breakdown = {name: float(v[i]) for name, v in terms.items()}
            breakdown["zoneBalance"] = w_zone * z
            if soft_zone and z == 0:
                breakdown["softConstraints"] = breakdown.get("softConstraints", 0.0) - SOFT_PENALTY
            table.take(i, r)
            out.append(Decision(r.task_id, table.ids[i], [], breakdown))
            still = fits_one(i)
            if not still and ok[i]:
                zone_open[table.zone[i]] -= 1
            ok[i] = still
            fresh = terms_one(i)
            score_i = float(table.jitter[i])
            for name, term in fresh.items():
                terms[name][i] = term
                score_i += term
            base[i] = score_i
            masked[i] = score_i if still else -np.inf
        return out

    @staticmethod
    def _reasons(table: HostTable, r: Request, cap: float, on_host: F, allowed: list[tuple[str, B]]) -> list[tuple[str, int]]:
        """Why no host fits: the first failing filter per host, counted."""
        filters: list[tuple[str, B]] = [("unhealthy", table.bad)]
        filters += [(reason, ~a) for reason, a in allowed]
        filters.append((f"job already has {int(cap)} task(s) there", on_host >= cap))
        filters.append(("host task limit", table.tasks >= table.max_tasks))
        filters.append(("not enough cpu", table.free_cpu < r.cpu - EPS))
        filters.append(("not enough memory", table.free_mem < r.memory_mib))
        if r.disk_mib > 0:  # as the fit test: a task asking no disk is not refused for it
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

    def place_all(
        self, table: HostTable, requests: list[Request], masks_for: dict[str, list[tuple[str, B]]] | None = None
    ) -> list[Decision]:
        """Place in order, consecutive tasks of one job as one run (`_place_run`). Once a job's task
        finds no host, its later tasks in this pass get the same reasons without a scan (capacity
        only shrinks within a pass) — a 10,000-task job that fits nowhere costs one scan."""
        failed: dict[str, list[tuple[str, int]]] = {}
        out: list[Decision] = []
        start = 0
        while start < len(requests):
            job = requests[start].job_id
            same = _shape(requests[start])
            end = start
            while end < len(requests) and _shape(requests[end]) == same:
                end += 1
            run = requests[start:end]
            start = end
            if job in failed:
                out += [Decision(r.task_id, None, failed[job]) for r in run]
                continue
            decisions = self._place_run(table, run, (masks_for or {}).get(job))
            if decisions[-1].host is None:
                failed[job] = decisions[-1].reasons
            out += decisions
        return out
