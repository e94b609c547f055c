#!/usr/bin/env python3
"""An idle cell with a large backlog that fits nowhere (issue 15, "bad input"): the real Scheduler
and its control loop over a SQLite store, 100,000 pending tasks (10 jobs × 10,000) that no host can
take, 50 hosts heartbeating unchanged every 5 s. Measures the process CPU the loop uses once the
backlog is parked.

    python bench/idle_pending.py --quick      # 20,000 tasks, 5 s measured
    python bench/idle_pending.py              # 100,000 tasks, 20 s measured

Last line: `RESULT idle_pending tasks=… hosts=… cpu_pct=… passes=…`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scheduler.core import Scheduler  # noqa: E402
from scheduler.engine import Engine  # noqa: E402
from scheduler.metrics import SchedulerMetrics  # noqa: E402
from scheduler.store import SQLiteStore  # noqa: E402
from titus_common.jobspec import parse_job_spec  # noqa: E402
from titus_common.protocol import CapacityReport, NodeReport  # noqa: E402


def report(i: int) -> NodeReport:
    return NodeReport(id=f"h{i:04d}", capacity=CapacityReport(cpus=4, memory_mib=16384, disk_mib=100_000),
                      labels={"zone": "abc"[i % 3]})


async def main(tasks: int, hosts: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as d:
        s = Scheduler(SQLiteStore(Path(d) / "s.db"), Engine(), SchedulerMetrics())
        for i in range(hosts):
            s.heartbeat(report(i))
        for _ in range(tasks // 10_000 or 1):
            s.submit(parse_job_spec({
                "appName": "big", "owner": "me", "batch": {"size": min(tasks, 10_000)},
                "container": {"image": "busybox:latest", "command": ["true"], "resources": {"cpu": 8, "memoryMiB": 128}},
            }))
        stop = asyncio.Event()
        loop_task = asyncio.create_task(s.run(stop))
        while s.next_due() is not None:  # until the backlog is parked
            await asyncio.sleep(0.05)
        passes = s.placement_passes
        cpu0, t0 = time.process_time(), time.monotonic()
        next_beat = t0
        while time.monotonic() - t0 < seconds:
            if time.monotonic() >= next_beat:
                for i in range(hosts):
                    s.heartbeat(report(i))
                next_beat += 5.0
            await asyncio.sleep(0.1)
        cpu = (time.process_time() - cpu0) / (time.monotonic() - t0) * 100
        stop.set()
        await loop_task
        pending = sum(1 for t in s.tasks.values() if t.state.value == "Accepted")
        print(f"pending={pending} hosts={hosts} measured_s={seconds:.0f} cpu={cpu:.2f}% passes_while_idle={s.placement_passes - passes}")
        print(f"RESULT idle_pending tasks={pending} hosts={hosts} cpu_pct={cpu:.2f} passes={s.placement_passes - passes}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    asyncio.run(main(20_000 if a.quick else 100_000, 50, 5.0 if a.quick else 20.0))
