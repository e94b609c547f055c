"""`titusctl task stats` on the real engine: the scheduler relays the request to the agent over its
own connection; the answer shows the busy task's CPU use and throttling under its limit, its memory
limit, cpuset, network interface and processes (by their PIDs inside the container); `task top`
ranks them by CPU between two readings."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.harness import Platform, wait_for

pytestmark = pytest.mark.integration


def stats(p: Platform, task_id: str, *flags: str) -> Any:
    done = subprocess.run([sys.executable, "-m", "titusctl.main", *flags, "task", "stats", task_id],
                          env={**p.ctl_env(), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if flags else done.stdout


def test_stats_of_a_busy_task(platform: Platform) -> None:
    p = platform
    job_id = p.submit("while :; do :; done", service=True, killGraceSeconds=1)
    (task,) = wait_for(lambda: p.started(job_id), 60, "task Started")
    doc = wait_for(lambda: (d := stats(p, task["id"], "-o", "json"))["cpu"]["throttledPeriods"] and d, 30,
                   "CFS throttling visible")
    assert doc["taskId"] == task["id"] and doc["nodeId"] == p.node_id
    assert doc["cpu"]["usageSeconds"] > 0 and doc["cpu"]["limitCpus"] == pytest.approx(0.1)
    assert doc["memory"]["limitBytes"] == 64 * 1024 * 1024 and doc["memory"]["usageBytes"] > 0
    assert doc["cpuset"]["cpus"] and doc["pids"]["current"] >= 2
    assert doc["network"], "the task's interface counters"
    pids = {proc["pid"] for proc in doc["processes"]}
    assert 1 in pids and all(pid is not None and pid < 100 for pid in pids)  # container PIDs, not the host's
    assert any("while" in proc["cmdline"] or proc["comm"] == "sh" for proc in doc["processes"])
    text = stats(p, task["id"])
    assert "throttle" in text and "PID" in text
    # `task top`: two readings, the busy shell loop first, with CPU used between them
    top = subprocess.run([sys.executable, "-m", "titusctl.main", "-o", "json", "task", "top", task["id"],
                          "--interval", "0.5"], env={**p.ctl_env(), "PATH": "/usr/bin:/bin"}, capture_output=True,
                         text=True, timeout=60)
    assert top.returncode == 0, top.stderr
    busiest = json.loads(top.stdout)["processes"][0]
    assert busiest["comm"] == "sh" and busiest["cpuPercent"] > 0 and busiest["pid"] < 100, busiest
    # A finished task has no stats: refused, naming why.
    p.api("POST", f"/v1/jobs/{job_id}/kill", expect=202)
    p.wait_job_finished(job_id, timeout=60)
    r = p.http.get(f"{p.url}/v1/tasks/{task['id']}/stats", timeout=30)
    assert r.status_code == 409 and "Finished" in r.json()["error"]["message"]
