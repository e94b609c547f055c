"""Both /metrics endpoints pass promtool's exposition lint and carry the series operators alert on."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.harness import Platform

pytestmark = pytest.mark.integration


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/setup-host.sh installs Debian's prometheus package"
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_metrics_lint_and_content(platform: Platform) -> None:
    p = platform
    ok = p.submit("exit 0")
    bad = p.submit("exit 5")
    p.wait_job_finished(ok)
    p.wait_job_finished(bad)
    scheduler = p.http.get(f"{p.url}/metrics", timeout=5).text
    agent = p.agent_metrics()
    promtool_check(scheduler)
    promtool_check(agent)
    assert 'titus_scheduler_tasks_finished_total{reason="normal"} 1.0' in scheduler
    assert 'titus_scheduler_tasks_finished_total{reason="failed"} 1.0' in scheduler
    assert "titus_scheduler_launch_latency_seconds_count 2.0" in scheduler
    assert 'titus_scheduler_nodes{status="Ready"} 1.0' in scheduler
    assert "titus_agent_launches_total 2.0" in agent
    assert "titus_agent_launch_latency_seconds_count 2.0" in agent
    assert 'titus_agent_step_seconds_count{phase="setup",step="container"} 2.0' in agent
