#!/usr/bin/env python3
"""DRF across capacity groups, by runs (issue 15; scheduler/capacity.py, docs/capacity-runs.md): the
real Scheduler, engine and SQLite store in process, one placement pass over a backlog that four
flex groups share, with `drf_tolerance` 0 (task-at-a-time DRF: equally served groups alternate
task by task, so every engine run is one task) against the default (a group keeps the turn for a
run while its dominant share stays within the tolerance of the next group's).

    python bench/capacity.py --quick     # 700 hosts × 8 vCPU, 2,000 tasks
    python bench/capacity.py             # 7,000 hosts × 8 vCPU, 20,000 tasks

Hosts: 8 vCPU, 32 GiB, 3 zones. Groups g40/g30/g20/g10 reserve 40/30/20/10 % of the cell's CPU.
Backlog: jobs of 25 tasks × 4 vCPU, the groups' jobs submitted in turn (so their ages interleave),
1.43× what the cell holds: capacity runs out inside the pass and DRF decides who gets it. Reports
the pass time, placements/s, engine runs, each group's placed CPU as a share of its reservation, and
the largest difference of those shares between the two orders.

Last line: `RESULT capacity hosts=… groups=4 exact_pps=… runs_pps=… speedup=… exact_runs=… runs=…
max_share_diff=… tolerance=…`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scheduler.capacity import CapacityGroup  # noqa: E402
from scheduler.config import SchedulerConfig  # noqa: E402
from scheduler.core import Scheduler  # noqa: E402
from scheduler.engine import Engine  # noqa: E402
from scheduler.fitness import Mode  # noqa: E402
from scheduler.metrics import SchedulerMetrics  # noqa: E402
from scheduler.store import SQLiteStore  # noqa: E402
from titus_common.jobspec import parse_job_spec  # noqa: E402
from titus_common.protocol import CapacityReport, NodeReport  # noqa: E402

GROUPS = {"g40": 0.4, "g30": 0.3, "g20": 0.2, "g10": 0.1}
JOB = 25  # tasks per job


def one_pass(hosts: int, tasks: int, tolerance: float, mode: Mode) -> tuple[float, int, int, dict[str, float]]:
    """(pass seconds, placed, engine runs, group → placed cpu / reserved cpu)."""
    cell = hosts * 8.0
    config = SchedulerConfig(drf_tolerance=tolerance, capacity_groups=[
        CapacityGroup(name=name, reserved_cpu=cell * f) for name, f in GROUPS.items()])
    with tempfile.TemporaryDirectory() as d:
        engine = Engine(mode)
        s = Scheduler(SQLiteStore(Path(d) / "s.db"), engine, SchedulerMetrics(), config)
        for i in range(hosts):
            s.heartbeat(NodeReport(id=f"h{i:05d}", capacity=CapacityReport(cpus=8, memory_mib=32768, disk_mib=100_000),
                                   labels={"zone": "abc"[i % 3]}))
        names = list(GROUPS)
        for k in range(tasks // JOB):
            s.submit(parse_job_spec({
                "appName": f"app{k}", "owner": "bench", "capacityGroup": names[k % len(names)], "batch": {"size": JOB},
                "container": {"image": f"img{k % 20}:1", "command": ["run"], "resources": {"cpu": 4, "memoryMiB": 4096}},
            }))
        runs = [0]
        place_run = engine._place_run

        def counting(*a: object, **kw: object) -> object:
            runs[0] += 1
            return place_run(*a, **kw)  # type: ignore[arg-type]
        engine._place_run = counting  # type: ignore[method-assign,assignment]
        t0 = time.perf_counter()
        placed = s.schedule_pass()
        took = time.perf_counter() - t0
        used = dict.fromkeys(GROUPS, 0.0)
        for t in s.tasks.values():
            if t.node_id is not None:
                used[s.capacity.group_of(s.jobs[t.job_id].spec).name] += 4.0
        s.store.close()
    return took, placed, runs[0], {name: used[name] / (cell * f) for name, f in GROUPS.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tolerance", type=float, default=SchedulerConfig().drf_tolerance)
    ap.add_argument("--mode", choices=[m.value for m in Mode], default="pack")
    ap.add_argument("--repeat", type=int, default=3, help="passes per setting (fresh cells); the fastest counts")
    a = ap.parse_args()
    hosts, tasks = (700, 2000) if a.quick else (7000, 20000)
    mode = Mode(a.mode)
    rows = []
    for tol in (0.0, a.tolerance):
        tries = [one_pass(hosts, tasks, tol, mode) for _ in range(max(1, a.repeat))]
        took = min(t[0] for t in tries)
        _, placed, runs, shares = tries[0]
        rows.append((took, placed, runs, shares))
        print(f"drf_tolerance={tol:g}: pass {took:.2f} s, {placed} of {tasks} placed ({placed / took:,.0f}/s), "
              f"{runs} engine runs (fastest of {max(1, a.repeat)}); placed cpu / reservation: "
              + ", ".join(f"{n} {v:.3f}" for n, v in shares.items()))
    (t0, p0, r0, s0), (t1, p1, r1, s1) = rows
    diff = max(abs(s0[n] - s1[n]) for n in GROUPS)
    print(f"speed-up {t0 / t1:.2f}x; largest share difference {diff:.4f} (tolerance {a.tolerance:g}"
          f" + two tasks' share {2 * 4 / (hosts * 8 * min(GROUPS.values())):.4f})")
    print(f"RESULT capacity hosts={hosts} groups={len(GROUPS)} exact_pps={p0 / t0:.0f} runs_pps={p1 / t1:.0f}"
          f" speedup={t0 / t1:.2f} exact_runs={r0} runs={r1} max_share_diff={diff:.4f} tolerance={a.tolerance:g}")


if __name__ == "__main__":
    main()
