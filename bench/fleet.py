#!/usr/bin/env python3
"""The failover burst end to end over the real protocol (issue 15): a real titus-scheduler process,
`titus-fleetsim` hosts in this process (long-poll sync + updates, launch model scaled by
--time-scale), steady state measured first (scheduler CPU %, RSS with every host heartbeating),
then the seed's failover: switch to pack, submit the burst at once, wait until every task is Started.

    python bench/fleet.py --quick    # 700 hosts, burst 750
    python bench/fleet.py            # 7,000 hosts, burst 7,500

Last line: `RESULT fleet hosts=… burst=… all_started_s=… e2e_pps=… sync_p99_ms=… scheduler_rss_mb=…
steady_cpu_pct=…`. all_started_s is wall seconds from the first submission until every task is Started;
the launch model runs at --time-scale (0.01: a 42 s cold launch takes 0.42 s), so at these speeds the
wall time is the platform's (scheduler + simulated agents sharing the 2 cores), not the model's.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleetsim.main import run_burst  # noqa: E402
from fleetsim.sim import Fleet, LaunchModel  # noqa: E402
from tests.harness import Proc, free_port, wait_for  # noqa: E402


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False


async def steady(url: str, hosts: int, seconds: float, pid: int) -> tuple[float, float]:
    fleet = Fleet(url, hosts, LaunchModel(), wait_seconds=5.0, seed=1)
    stop = asyncio.Event()
    task = asyncio.create_task(fleet.run(stop))
    await asyncio.sleep(8.0)  # registrations settle
    p = psutil.Process(pid)
    c0, t0 = sum(p.cpu_times()[:2]), time.monotonic()
    await asyncio.sleep(seconds)
    cpu = (sum(p.cpu_times()[:2]) - c0) / (time.monotonic() - t0) * 100
    stop.set()
    await task
    return cpu, p.memory_info().rss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--time-scale", type=float, default=0.01)
    a = ap.parse_args()
    hosts, burst = (700, 750) if a.quick else (7000, 7500)
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = Proc("scheduler", [sys.executable, "-m", "scheduler.main", "--listen", f"127.0.0.1:{port}",
                                  "--db", f"{d}/s.db", "--log-level", "WARNING", "--insecure"], Path(d) / "scheduler.log")
        try:
            wait_for(lambda: _ok(f"{url}/healthz"), 15, "scheduler /healthz")
            assert proc.p.pid is not None
            cpu, rss = asyncio.run(steady(url, hosts, 10.0, proc.p.pid))
            print(f"steady: {hosts} hosts heartbeating (5 s long-polls): scheduler {cpu:.1f} % CPU, RSS {rss:.0f} MB")
            r = asyncio.run(run_burst(url, hosts, burst, 10, "pack", LaunchModel(time_scale=a.time_scale), timeout=900))
            rss2 = psutil.Process(proc.p.pid).memory_info().rss / 2**20
        finally:
            proc.stop()
    print(f"burst: {burst} tasks on {hosts} hosts in pack: all Started after {r.all_started_s:.1f} s wall"
          f" (launch model at time scale {a.time_scale:g}), {r.e2e_pps:.0f} tasks/s end to end, sync p99 {r.sync_p99_ms:.0f} ms,"
          f" errors {r.errors}")
    print(f"RESULT fleet hosts={hosts} burst={burst} all_started_s={r.all_started_s:.1f} e2e_pps={r.e2e_pps:.0f}"
          f" sync_p99_ms={r.sync_p99_ms:.0f} scheduler_rss_mb={max(rss, rss2):.0f} steady_cpu_pct={cpu:.1f}")


if __name__ == "__main__":
    main()
