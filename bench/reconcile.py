#!/usr/bin/env python3
"""Reconciliation benchmark (issue 14): a cell of simulated nodes, in process, with 10,000 running
tasks (100 hosts x 100 tasks, 100 service jobs of 100 tasks, the real Scheduler on a real SQLite store).

    python bench/reconcile.py --quick    # 2,000 tasks, 3 simulated minutes per case
    python bench/reconcile.py            # 10,000 tasks, 12 simulated minutes per case

It measures one reconciliation pass on the steady cell, then for a mismatch of 1, 10, 1,000 and
10,000 (N running tasks the agents stop reporting; capped at the cell's size) restores the cell
from its snapshot, keeps every host heartbeating with the mismatched reports, runs a pass every
`reconcile_interval` on a simulated clock and counts the tasks the kill path declared lost (and the
most in any 60 s): a small mismatch is released at the token bucket's rate after the start-up grace,
a mass one freezes and kills nothing. Then the time to snapshot the store and to restore-test it.
The last line is the RESULT line; `kills_on_mass_mismatch` sums the 1,000 and 10,000 cases.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from scheduler import backup  # noqa: E402
from scheduler.audit import AuditLog  # noqa: E402
from scheduler.core import Scheduler, SchedulerConfig  # noqa: E402
from scheduler.metrics import SchedulerMetrics  # noqa: E402
from scheduler.placement import FirstFit  # noqa: E402
from scheduler.store import SQLiteStore  # noqa: E402
from titus_common.jobspec import parse_job_spec  # noqa: E402
from titus_common.protocol import CapacityReport, NodeReport, TaskUpdate  # noqa: E402
from titus_common.states import FinishReason, TaskState  # noqa: E402

TASKS_PER_HOST = 100


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(db: Path, clock: Clock) -> Scheduler:
    return Scheduler(SQLiteStore(db), FirstFit(), SchedulerMetrics(), SchedulerConfig(), clock=clock,
                     audit=AuditLog())


def heartbeat(s: Scheduler, host: str, running: list[str]) -> None:
    s.heartbeat(NodeReport(id=host, capacity=CapacityReport(cpus=128, memory_mib=65536, disk_mib=1_000_000),
                           running=running))


def build(db: Path, tasks: int, clock: Clock) -> Scheduler:
    s = make(db, clock)
    hosts = [f"sim-{i:03d}" for i in range(tasks // TASKS_PER_HOST)]
    for h in hosts:
        heartbeat(s, h, [])
    for _ in range(tasks // TASKS_PER_HOST):
        s.submit(parse_job_spec({
            "appName": "bench", "owner": "bench",
            "container": {"image": "busybox", "command": ["sleep", "1d"], "resources": {"cpu": 1, "memoryMiB": 128}},
            "service": {"desired": TASKS_PER_HOST},
        }))
    s.schedule_pass()
    for h in hosts:
        ups = [TaskUpdate(task_id=t.id, state=TaskState.STARTED,
                          timestamps={TaskState.START_INITIATED: clock.now, TaskState.STARTED: clock.now})
               for t in s.node_tasks(h)]
        s.apply_updates(h, ups)
    return s


def running_by_host(s: Scheduler) -> dict[str, list[str]]:
    return {h: sorted(t.id for t in s.node_tasks(h) if t.state is TaskState.STARTED) for h in sorted(s.nodes)}


def case(snap: Path, work: Path, mismatch: int, minutes: float, t0: float) -> tuple[int, int, bool]:
    """Restore the cell, hide `mismatch` running tasks from the reports; (lost, most in 60 s, frozen)."""
    db = work / f"case-{mismatch}.db"
    backup.restore(snap, db, force=True)
    clock = Clock(t0)
    s = make(db, clock)
    reports = running_by_host(s)
    hidden = 0
    hosts = sorted(reports)
    while hidden < mismatch:  # spread over hosts and jobs, one at a time
        for h in hosts:
            if hidden < mismatch and reports[h]:
                reports[h].pop()
                hidden += 1
    lost_at: list[float] = []
    end = t0 + minutes * 60
    while clock.now < end:
        for h in hosts:
            heartbeat(s, h, reports[h])
        before = sum(1 for t in s.tasks.values() if t.reason is FinishReason.LOST)
        s.reconcile()
        after = sum(1 for t in s.tasks.values() if t.reason is FinishReason.LOST)
        lost_at += [clock.now] * (after - before)
        clock.now += s.config.reconcile_interval
    most = max((sum(1 for x in lost_at if a <= x < a + 60) for a in lost_at), default=0)
    frozen = s.reconciler.frozen is not None
    s.store.close()
    return len(lost_at), most, frozen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    logging.disable(logging.ERROR)  # the freeze's error line would flood the output
    tasks, minutes = (2_000, 3.0) if args.quick else (10_000, 12.0)
    with tempfile.TemporaryDirectory(prefix="bench-reconcile-") as tmp:
        work = Path(tmp)
        clock = Clock(1_000_000.0)
        started = time.monotonic()
        s = build(work / "cell.db", tasks, clock)
        print(f"cell: {len(s.nodes)} hosts, {sum(1 for t in s.tasks.values() if t.state is TaskState.STARTED)} "
              f"running tasks (built in {time.monotonic() - started:.1f}s)")
        for h, ids in running_by_host(s).items():
            heartbeat(s, h, ids)
        passes = []
        for _ in range(10):
            clock.now += 5
            t = time.perf_counter()
            s.reconcile()
            passes.append((time.perf_counter() - t) * 1000)
        pass_ms = statistics.median(passes)
        print(f"one reconciliation pass, steady cell: median {pass_ms:.1f} ms (max {max(passes):.1f} ms, 10 passes)")
        t = time.perf_counter()
        snap = backup.snapshot(work / "cell.db", work / "backups")
        snapshot_s = time.perf_counter() - t
        t = time.perf_counter()
        backup.verify(snap)
        verify_s = time.perf_counter() - t
        print(f"snapshot {snap.stat().st_size / 1e6:.1f} MB in {snapshot_s:.2f}s; restore test {verify_s:.2f}s")
        s.store.close()
        mass = 0
        print(f"{'mismatch':>9} {'lost':>6} {'most/60s':>9} {'frozen':>7}  ({minutes:.0f} simulated min, grace "
              f"{SchedulerConfig().reconcile_grace:.0f}s, bucket {SchedulerConfig().kill_rate_per_second}/s "
              f"burst {SchedulerConfig().kill_burst})")
        for k in (1, 10, 1_000, 10_000):
            n = min(k, tasks)
            lost, most, frozen = case(snap, work, n, minutes, clock.now + 10)
            print(f"{n:>9} {lost:>6} {most:>9} {str(frozen):>7}")
            if k >= 1_000:
                mass += lost
    print(f"RESULT reconcile pass_ms={pass_ms:.1f} kills_on_mass_mismatch={mass} snapshot_s={snapshot_s:.2f} "
          f"restore_verify_s={verify_s:.2f}")


if __name__ == "__main__":
    main()
