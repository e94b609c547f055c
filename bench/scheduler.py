#!/usr/bin/env python3
"""Placement at fleet size, in process (issue 15; shared/reference/scheduler-and-health.md §8): the
project's engine (scheduler/engine.py, full vectorised scan) in spread and pack, side by side with
re-implementations of Fenzo's full scan, Nomad's limited sampling and kube-scheduler's
percentage-of-nodes scoring (bench/peers/cluster.py), all fed the identical seeded input.

    python bench/scheduler.py --quick     # 700 hosts × 750 tasks
    python bench/scheduler.py             # 7,000 hosts × 64 vCPU × 256 GiB, burst of 7,500

Fleet: 3 zones round-robin, preloaded to 15–45 % CPU (memory alike), 2 % bad hosts (never to be
chosen), 8 cached images per host from a Zipf-popular pool of 500, 2 warm security-group ENIs from a
pool of 50, 120 tasks per host. Burst: jobs of 1/3/10/30/100 tasks, {1,1,2,2,4,4,8,16} vCPU, 4 GiB
per vCPU, each job one image and one security group (Zipf). Launch model (virtual, an assumption):
2 s + 30 s if the image is not cached on the host (then it is) + 10 s if the host has no ENI for the
job's security group (then it has); 2 concurrent launches per host, starting at the wall-clock
assignment time. Not in this bench: the store (SQLite commits) and the scheduler's table build
from records — bench/idle_pending.py and the scheduler tests cover those paths.

Last line: `RESULT scheduler hosts=… spread_pps=… pack_pps=… pack_cache_hit_pct=… bad_host_placements=…
p99_assign_ms=… deterministic=…` (the project engine; p99 in pack, the failover mode).
"""

from __future__ import annotations

import argparse
import heapq
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.peers.cluster import F, FenzoFull, Fleet, K8sPct, NomadLimit  # noqa: E402
from scheduler.engine import Engine, HostInput, HostTable, Request  # noqa: E402
from scheduler.fitness import Mode  # noqa: E402

GIB = 1024


@dataclass(frozen=True)
class Task:
    id: str
    job: str
    cpu: float
    image: str
    sg: str
    desired: int


@dataclass
class World:
    hosts: list[HostInput]
    tasks: list[Task]


def zipf(rng: np.random.Generator, n: int, size: int, s: float = 1.1, replace: bool = True) -> list[int]:
    p = 1.0 / np.arange(1, n + 1) ** s
    return [int(x) for x in rng.choice(n, size=size, replace=replace, p=p / p.sum())]


def make_world(n_hosts: int, n_tasks: int, seed: int) -> World:
    rng = np.random.default_rng(seed)
    hosts = []
    for i in range(n_hosts):
        used = float(round(64 * rng.uniform(0.15, 0.45)))
        images = frozenset(f"img{k}" for k in zipf(rng, 500, 8, replace=False))
        warm = {f"sg-{k:08x}": 8 for k in zipf(rng, 50, 2, replace=False)}
        hosts.append(HostInput(f"h{i:05d}", 64, 256 * GIB, 10**6, 64 - used, (64 - used) * 4 * GIB, 10**6,
                               labels={"zone": "abc"[i % 3]}, images=images, warm=warm,
                               bad=bool(rng.random() < 0.02), tasks=int(used // 2)))
    tasks: list[Task] = []
    j = 0
    while len(tasks) < n_tasks:
        size = min(int(rng.choice([1, 3, 10, 30, 100])), n_tasks - len(tasks))
        cpu = float(rng.choice([1, 1, 2, 2, 4, 4, 8, 16]))
        image, sg = f"img{zipf(rng, 500, 1)[0]}", f"sg-{zipf(rng, 50, 1)[0]:08x}"
        tasks += [Task(f"j{j}-{k}", f"j{j}", cpu, image, sg, size) for k in range(size)]
        j += 1
    return World(hosts, tasks)


def fleet_of(w: World) -> Fleet:
    h = w.hosts
    image_hosts: dict[str, np.ndarray] = {}
    for i, x in enumerate(h):
        for img in x.images:
            image_hosts.setdefault(img, np.zeros(len(h), dtype=np.bool_))[i] = True
    return Fleet([x.id for x in h], np.array([x.cpus for x in h]), np.array([x.memory_mib for x in h]),
                 np.array([x.free_cpus for x in h]), np.array([x.free_memory_mib for x in h]),
                 np.array([float(x.tasks) for x in h]), np.array([x.bad for x in h]),
                 np.array([i % 3 for i in range(len(h))]), image_hosts)


Run = list[tuple[Task, int | None, float]]  # task, host index (into w.hosts), seconds after t0


def run_engine(w: World, mode: Mode, seed: int) -> tuple[Run, float]:
    """As the scheduler's pass does: each job's consecutive tasks go to `place_all` together (one
    incremental run); every task of a run is stamped with the time the run ended (conservative)."""
    t0 = time.perf_counter()
    table = HostTable(w.hosts, seed)
    engine = Engine(mode, seed)
    index = {x.id: i for i, x in enumerate(w.hosts)}
    out: Run = []
    start = 0
    while start < len(w.tasks):
        end = start
        while end < len(w.tasks) and w.tasks[end].job == w.tasks[start].job:
            end += 1
        run = w.tasks[start:end]
        start = end
        decisions = engine.place_all(
            table, [Request(t.id, t.job, t.cpu, t.cpu * 4 * GIB, 0, image=t.image, sg_key=t.sg, job_tasks=t.desired)
                    for t in run])
        at = time.perf_counter() - t0
        out += [(t, None if d.host is None else index[d.host], at) for t, d in zip(run, decisions)]
    return out, time.perf_counter() - t0


def run_peer(w: World, make: Callable[[Fleet], object]) -> tuple[Run, float]:
    t0 = time.perf_counter()
    fleet = fleet_of(w)
    peer = make(fleet)
    on: dict[str, F] = {}
    out: Run = []
    for t in w.tasks:
        on_host = on.setdefault(t.job, np.zeros(len(w.hosts)))
        i = peer.place(t.job, t.cpu, t.cpu * 4 * GIB, t.image, t.desired, on_host)  # type: ignore[attr-defined]
        if i is not None:
            fleet.free_cpu[i] -= t.cpu
            fleet.free_mem[i] -= t.cpu * 4 * GIB
            fleet.tasks[i] += 1
            on_host[i] += 1
        out.append((t, i, time.perf_counter() - t0))
    return out, time.perf_counter() - t0


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(xs, p)) if xs else float("nan")


def evaluate(w: World, run: Run, wall: float) -> dict[str, float | str]:
    slots: dict[int, list[float]] = {}
    images = {i: {img: 0.0 for img in h.images} for i, h in enumerate(w.hosts)}
    warm = {i: set(h.warm) for i, h in enumerate(w.hosts)}
    running, assigned, hits, warm_hits = [], [], 0, 0
    per_job_host: dict[tuple[str, int], int] = {}
    zones = [0, 0, 0]
    bad = 0
    placed = [(t, i, at) for t, i, at in run if i is not None]
    for t, i, at in placed:
        assigned.append(at)
        free = slots.setdefault(i, [0.0, 0.0])
        start = max(at, heapq.heappop(free))
        ready = images[i].get(t.image)
        cached = ready is not None and ready <= start
        hits += cached
        dur = 2.0 + (0 if cached else 30.0) + (0 if t.sg in warm[i] else 10.0)
        warm_hits += t.sg in warm[i]
        warm[i].add(t.sg)
        if ready is None:
            images[i][t.image] = start + 2 + 30
        heapq.heappush(free, start + dur)
        running.append(start + dur)
        per_job_host[(t.job, i)] = per_job_host.get((t.job, i), 0) + 1
        zones[i % 3] += 1
        bad += w.hosts[i].bad
    n = max(1, len(placed))
    mean_zone = n / 3
    return {
        "pps": len(placed) / wall, "p50_assign_ms": pct(assigned, 50) * 1000, "p99_assign_ms": pct(assigned, 99) * 1000,
        "run_p50_s": pct(running, 50), "run_p99_s": pct(running, 99), "unplaced": len(run) - len(placed),
        "hosts": len({i for _, i, _ in placed}), "cache_hit_pct": 100 * hits / n, "warm_net_pct": 100 * warm_hits / n,
        "zones": "/".join(map(str, zones)), "zone_imbalance_pct": 100 * (max(zones) - min(zones)) / mean_zone,
        "max_job_host": max(per_job_host.values(), default=0), "bad": bad,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="700 hosts × 750 tasks")
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args()
    n_hosts, n_tasks = (700, 750) if a.quick else (7000, 7500)
    w = make_world(n_hosts, n_tasks, a.seed)
    rows: list[tuple[str, str, dict[str, float | str]]] = []
    results: dict[str, Run] = {}
    for mode in (Mode.SPREAD, Mode.PACK):
        pack = mode is Mode.PACK
        run, wall = run_engine(w, mode, a.seed)
        results[mode.value] = run
        rows.append(("titus_engine", mode.value, evaluate(w, run, wall)))
        for name, make in (
            ("fenzo_full", lambda f, pk=pack: FenzoFull(f, pk)),
            ("nomad_limit", lambda f, pk=pack: NomadLimit(f, pk, a.seed)),
            ("k8s_pct", lambda f, pk=pack: K8sPct(f, pk)),
        ):
            run, wall = run_peer(w, make)
            rows.append((name, mode.value, evaluate(w, run, wall)))
    again, _ = run_engine(w, Mode.PACK, a.seed)
    deterministic = [i for _, i, _ in again] == [i for _, i, _ in results["pack"]]
    cols = ["pps", "p50_assign_ms", "p99_assign_ms", "run_p50_s", "run_p99_s", "unplaced", "hosts", "cache_hit_pct",
            "warm_net_pct", "zones", "zone_imbalance_pct", "max_job_host", "bad"]
    print(f"hosts={n_hosts} tasks={n_tasks} seed={a.seed}")
    print(" | ".join(["algorithm", "mode", *cols]))
    for name, mode_name, r in rows:
        cells = [f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        print(" | ".join([name, mode_name, *cells]))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {rss_mb:.0f} MB (whole process, all runs)")
    ours = {m: r for name, m, r in rows if name == "titus_engine"}
    bad_total = sum(int(r["bad"]) for name, _, r in rows if name == "titus_engine")
    print(
        f"RESULT scheduler hosts={n_hosts} spread_pps={float(ours['spread']['pps']):.0f} pack_pps={float(ours['pack']['pps']):.0f}"
        f" pack_cache_hit_pct={float(ours['pack']['cache_hit_pct']):.1f} bad_host_placements={bad_total}"
        f" p99_assign_ms={float(ours['pack']['p99_assign_ms']):.0f} deterministic={str(deterministic).lower()}"
    )


if __name__ == "__main__":
    main()
