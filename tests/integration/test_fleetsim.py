"""A small simulated fleet against the real titus-scheduler process over the real protocol (no
Docker engine, no namespaces: no lock needed): 300 hosts, a burst of 1,000 tasks in pack mode, every
task Started. The throughput floor sits far below the measured figure (kube-scheduler's CI
practice); it is not the goal."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import requests

from fleetsim.main import run_burst
from fleetsim.sim import LaunchModel
from tests.harness import Proc, free_port, wait_for

FLOOR_PPS = 20.0  # measured ≈ 150–250/s end to end on the 2-core CI machine with 300 hosts


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False


def test_fleetsim_burst(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = Proc("scheduler", [sys.executable, "-m", "scheduler.main", "--listen", f"127.0.0.1:{port}",
                              "--db", str(tmp_path / "s.db"), "--insecure"],  # the simulator speaks no TLS yet
                tmp_path / "scheduler.log")
    try:
        wait_for(lambda: _ok(f"{url}/healthz"), 15, "scheduler /healthz")
        r = asyncio.run(run_burst(url, hosts=300, burst=1000, job_size=10, mode="pack",
                                  model=LaunchModel(time_scale=0.002), timeout=240))
        assert r.e2e_pps > FLOOR_PPS, r
        # run_burst returned: the simulated agents started all 1,000. The fleet stops at once, so its
        # last updates may never reach the scheduler: every task is placed, most are reported Started.
        tasks = requests.get(f"{url}/v1/tasks", timeout=10).json()["tasks"]
        assert len(tasks) == 1000
        assert {t["state"] for t in tasks} <= {"Launched", "StartInitiated", "Started"}, {t["state"] for t in tasks}
        assert requests.get(f"{url}/v1/admin/scheduling-mode", timeout=5).json() == {"mode": "pack"}
        # Garbage from a "simulated agent" is refused and the scheduler carries on.
        bad = requests.post(f"{url}/v1/nodes/sim-00000/sync", data=b"\x00garbage", timeout=5)
        assert bad.status_code == 400
        assert requests.get(f"{url}/healthz", timeout=5).ok
    finally:
        proc.stop()
    assert "Traceback" not in (tmp_path / "scheduler.log").read_text()
