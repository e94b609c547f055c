#!/usr/bin/env python3
"""Preemption at fleet size (issue 15): the real Scheduler and engine, in process, on a full cell.

    python bench/preempt.py --quick    # 1,000 hosts
    python bench/preempt.py            # 7,000 hosts (the seed's cell)

Every host (64 cpu, 256 GiB) is filled with flex service tasks of 4 cpu (16 a host, jobs of 500
tasks), with the hold-back off so flex work takes the whole cell. Then a critical group `prod`
(reserving 5 % of the cell) submits `--claims` tasks of 4 cpu. Measured: the preemption pass (the
decision over every host and task, the engine's one-host check, the kills through the kill path),
how many preemption passes until every claim is placed, and the simulated seconds that took (a
pass longer than 200 ms is followed by a pause 9 times as long) (victims end at once: their kills are answered as the
agents would), victims, critical victims (must be 0), and the replacements left waiting.
Each pass is also decided from a full scan of every task on the same input first (`pass_ms`: that
decision plus the pass's kills; `pass_ms_index`: the pass as run, from the per-host usage index,
scheduler/groupuse.py); `same_plans` says whether both ways chose the same at every pass. The
control loop's once-a-second preemption check also runs during the fill (it keeps the index current).
Last line: `RESULT preempt hosts=… claims=… pass_ms=… pass_ms_index=… speedup=… same_plans=True victims=…
critical_victims=0 placed=… passes=… all_placed_s=…`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from scheduler.capacity import CapacityGroup  # noqa: E402
from scheduler.core import Scheduler, SchedulerConfig  # noqa: E402
from scheduler.engine import Engine  # noqa: E402
from scheduler.metrics import SchedulerMetrics  # noqa: E402
from scheduler.store import SQLiteStore  # noqa: E402
from titus_common.jobspec import parse_job_spec  # noqa: E402
from titus_common.protocol import CapacityReport, NodeReport, TaskUpdate  # noqa: E402
from titus_common.states import FinishReason, TaskState  # noqa: E402


def spec(app: str, n: int) -> object:
    return parse_job_spec({
        "appName": app, "owner": "bench", "attributes": {"titus.disruption.budget": "50"},
        "container": {"image": "busybox:latest", "command": ["sleep", "1d"], "resources": {"cpu": 4, "memoryMiB": 1024}},
        "service": {"desired": n},
    })


def answer_kills(s: Scheduler, now: float) -> None:
    """The agents: every kill sent is answered Finished at once."""
    for node_id in list(s.nodes):
        resp = s.work_for(node_id)
        if resp.kill:
            s.apply_updates(node_id, [TaskUpdate(task_id=t, state=TaskState.FINISHED, reason=FinishReason.KILLED,
                                                 timestamps={TaskState.FINISHED: now}) for t in resp.kill])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--hosts", type=int)
    ap.add_argument("--claims", type=int, default=200)
    args = ap.parse_args()
    hosts = args.hosts or (1000 if args.quick else 7000)
    logging.disable(logging.WARNING)
    cell_cpu = hosts * 64
    prod = CapacityGroup(name="prod", tier="critical", apps=["api"], reserved_cpu=cell_cpu * 0.05)
    config = SchedulerConfig(capacity_groups=[prod], reservation_hold_back=False, reconcile_grace=0.0,
                             kill_rate_per_second=1000.0, kill_burst=1000, job_disruption_fraction=1.0,
                             host_task_limit=120)
    with tempfile.TemporaryDirectory() as tmp:
        clock = [1_000_000.0]
        s = Scheduler(SQLiteStore(Path(tmp) / "s.db"), Engine(seed=1), SchedulerMetrics(), config,
                      clock=lambda: clock[0], monotonic=lambda: clock[0])
        for i in range(hosts):
            s.heartbeat(NodeReport(id=f"h{i:05d}", labels={"zone": "abc"[i % 3]},
                                   capacity=CapacityReport(cpus=64, memory_mib=262_144, disk_mib=1_000_000)))
        t0 = time.perf_counter()
        for j in range(hosts * 16 // 500):
            s.submit(spec(f"flex{j}", 500))
        left = hosts * 16 - (hosts * 16 // 500) * 500
        if left:
            s.submit(spec("flexrest", left))
        while s.schedule_pass():
            s.preempting.run_pass()  # the control loop's, every second: nothing to preempt yet
            clock[0] += 1
        fill_s = time.perf_counter() - t0
        held = sum(1 for t in s.tasks.values() if t.node_id is not None)
        print(f"filled {hosts} hosts with {held} flex tasks in {fill_s:.1f}s")
        api, _ = s.submit(spec("api", args.claims))
        s.schedule_pass()  # no host: the claims are parked
        times: list[float] = []
        begin = clock[0]
        passes = 0
        victims = 0
        full_times: list[float] = []
        same_plans = True
        while passes < 100:
            t0 = time.perf_counter()
            reference = s.preempting.decide(full_scan=True)  # the same decision from every task
            full_decide = time.perf_counter() - t0
            t0 = time.perf_counter()
            victims += s.preempting.run_pass()
            took = time.perf_counter() - t0
            same_plans = same_plans and s.preempting.last == reference
            times.append(took * 1000)
            full_times.append((full_decide + took - s.preempting.decide_seconds) * 1000)  # its kills: the same
            clock[0] += max(1.0, 10 * took)  # the control loop's second, or the pass's own pause
            answer_kills(s, clock[0])
            s.schedule_pass()
            passes += 1
            placed = sum(1 for t in s.job_tasks(api.id) if t.node_id is not None)
            if placed == args.claims:
                break
        crit = sum(1 for t in s.tasks.values() if t.state.terminal and "preempted" in t.message
                   and s.capacity.group_of(s.jobs[t.job_id].spec).tier == "critical")
        waiting = sum(1 for t in s.pending_tasks() if t.job_id != api.id)
        worst, worst_full = max(times), max(full_times)
        print(f"preemption passes: {passes}, ms each: max {worst:.1f}, first {times[0]:.1f} "
              f"(from every task: max {worst_full:.1f}, first {full_times[0]:.1f}); victims {victims}; "
              f"claims placed {placed}/{args.claims}; flex replacements waiting {waiting}")
        print(f"RESULT preempt hosts={hosts} claims={args.claims} pass_ms={worst_full:.1f} pass_ms_index={worst:.1f} "
              f"speedup={worst_full / worst:.1f} same_plans={same_plans} victims={victims} "
              f"critical_victims={crit} placed={placed} passes={passes} all_placed_s={clock[0] - begin:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
