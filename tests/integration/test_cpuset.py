"""Cpusets on real containers: what the engine and the kernel say each container runs on, as tasks
arrive and leave, after a kill -9 of the agent, and after someone changes a cpuset from outside.

This machine has 2 CPUs and cgroup v1: the agent runs with no reserved CPU, so a 1-CPU static task
takes one CPU and a burst task is left the other."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from cpuset import parse_cpulist
from tests.harness import Platform, wait_for

pytestmark = pytest.mark.integration

CPU_FLAGS = ("--reserved-cpus", "", "--cpuset-check-seconds", "0.5", "--cpuset-rebalance-seconds", "1")
ALL_CPUS = set(parse_cpulist(Path("/sys/devices/system/cpu/online").read_text()))


@pytest.fixture
def cpu_platform(tmp_path: Path, engine: docker.DockerClient) -> Iterator[Platform]:
    if len(ALL_CPUS) < 2:
        pytest.skip("needs 2 CPUs")
    p = Platform(tmp_path, engine)
    try:
        p.start_scheduler()
        p.start_agent(*CPU_FLAGS)
        yield p
    finally:
        p.close()


def container_of(p: Platform, task_id: str) -> Any:
    return next(c for c in p.containers() if c.labels.get("titus.task_id") == task_id)


def cpusets(p: Platform, task_id: str) -> tuple[set[int], set[int]]:
    """(engine's HostConfig.CpusetCpus, the kernel's cpuset.cpus) of the task's container."""
    c = container_of(p, task_id)
    c.reload()
    engine = set(parse_cpulist(c.attrs["HostConfig"]["CpusetCpus"]))
    kernel = set(parse_cpulist(Path(f"/sys/fs/cgroup/cpuset/docker/{c.id}/cpuset.cpus").read_text()))
    return engine, kernel


def on(p: Platform, task_id: str, expected: set[int]) -> bool:
    try:
        engine, kernel = cpusets(p, task_id)
    except (StopIteration, FileNotFoundError):
        return False
    return engine == kernel == expected


def cpu_map(p: Platform) -> dict[str, Any]:
    return dict(requests.get(f"http://127.0.0.1:{p.agent_port}/v1/cpus", timeout=5).json())


def start_one(p: Platform, cpu: float, **container: Any) -> str:
    job_id = p.submit("sleep 600", service=True, killGraceSeconds=1,
                      resources={"cpu": cpu, "memoryMiB": 64}, **container)
    (task,) = wait_for(lambda: p.started(job_id), 30, f"job {job_id} Started")
    return str(task["id"])


def test_static_gets_a_cpu_burst_shrinks_and_grows_back(cpu_platform: Platform) -> None:
    p = cpu_platform
    burst = start_one(p, 0.5)  # fractional: burst class by default, no exclusive CPU
    wait_for(lambda: on(p, burst, ALL_CPUS), 10, "burst container on every CPU")

    static_job = p.submit("sleep 600", service=True, killGraceSeconds=1, resources={"cpu": 1, "memoryMiB": 64})
    (static_task,) = wait_for(lambda: p.started(static_job), 30, "static Started")
    static = str(static_task["id"])
    held = {c["cpu"] for c in cpu_map(p)["cpus"] if c["taskId"] == static}
    assert len(held) == 1
    assert on(p, static, held)
    # The burst container was shrunk before the static one started, not eventually.
    assert on(p, burst, ALL_CPUS - held)

    doc = cpu_map(p)
    by_task = {t["taskId"]: t for t in doc["tasks"]}
    assert by_task[static]["class"] == "static" and by_task[burst]["class"] == "burst"
    assert set(parse_cpulist(doc["burstPool"])) == ALL_CPUS - held
    human = subprocess.run(
        [sys.executable, "-m", "titusctl.main", "node", "cpus", "--agent", f"http://127.0.0.1:{p.agent_port}"],
        capture_output=True, text=True, timeout=30,
    )
    assert human.returncode == 0, human.stderr
    assert static in human.stdout and "SOCKET" in human.stdout and "1 task(s)" in human.stdout
    as_json = subprocess.run(
        [sys.executable, "-m", "titusctl.main", "-o", "json", "node", "cpus",
         "--agent", f"http://127.0.0.1:{p.agent_port}"],
        capture_output=True, text=True, timeout=30,
    )
    assert json.loads(as_json.stdout)["burstPool"] == doc["burstPool"]

    p.api("POST", f"/v1/jobs/{static_job}/kill", expect=202)
    p.wait_job_finished(static_job, timeout=30)
    wait_for(lambda: on(p, burst, ALL_CPUS), 10, "burst container back on every CPU")
    metrics = p.agent_metrics()
    assert 'titus_agent_cpuset_placements_total{cls="static"} 1.0' in metrics
    assert "titus_agent_cpuset_placement_seconds_count 1.0" in metrics


def test_burst_minimum_is_exclusive(cpu_platform: Platform) -> None:
    p = cpu_platform
    burst = start_one(p, 1, cpuClass="burst")  # 1 CPU guaranteed + the idle one
    wait_for(lambda: on(p, burst, ALL_CPUS), 10, "burst on its minimum + the pool")
    (mine,) = [c["cpu"] for c in cpu_map(p)["cpus"] if c["taskId"] == burst]
    static = start_one(p, 1)
    assert on(p, static, ALL_CPUS - {mine})
    assert on(p, burst, {mine})


def test_agent_kill9_restart_keeps_assignments(cpu_platform: Platform) -> None:
    p = cpu_platform
    static = start_one(p, 1)
    burst = start_one(p, 0.5)
    before = {t["taskId"]: (t["exclusive"], t["cpuset"]) for t in cpu_map(p)["tasks"]}
    started_at = {c.id: c.attrs["State"]["StartedAt"] for c in p.containers()}
    assert p.agent is not None
    p.agent.stop(signal.SIGKILL)
    p.start_agent(*CPU_FLAGS)
    wait_for(lambda: "titus_agent_adopted_total 2.0" in p.agent_metrics(), 20, "2 adopted")
    after = {t["taskId"]: (t["exclusive"], t["cpuset"]) for t in cpu_map(p)["tasks"]}
    assert after == before
    assert {c.id: c.attrs["State"]["StartedAt"] for c in p.containers()} == started_at
    for task_id, (_, cpus) in after.items():
        assert on(p, task_id, set(parse_cpulist(cpus)))
    assert "titus_agent_cpuset_drift_corrections_total{" not in p.agent_metrics()  # nothing had moved
    assert static in after and burst in after


def test_outside_cpuset_change_is_corrected(cpu_platform: Platform) -> None:
    p = cpu_platform
    static = start_one(p, 1)
    (mine,) = [c["cpu"] for c in cpu_map(p)["cpus"] if c["taskId"] == static]
    other = min(ALL_CPUS - {mine})
    p.engine.api.update_container(container_of(p, static).id, cpuset_cpus=str(other))  # `docker update` by hand
    wait_for(lambda: on(p, static, {mine}), 10, "cpuset put back")
    assert 'titus_agent_cpuset_drift_corrections_total{source="engine"}' in p.agent_metrics()


def test_no_layout_on_the_host_crashes_with_the_cause(tmp_path: Path, engine: docker.DockerClient) -> None:
    """The scheduler places by CPU count; an agent told to offer more CPUs than it has cannot lay the
    task out: a platform fault (crashed, no user retry spent), with the cause in the message."""
    p = Platform(tmp_path, engine)
    try:
        p.start_scheduler()
        p.start_agent(*CPU_FLAGS, "--cpus", str(len(ALL_CPUS) + 1))
        start_one(p, len(ALL_CPUS))
        job_id = p.submit("sleep 600", resources={"cpu": 1, "memoryMiB": 64})
        crashed = wait_for(lambda: [t for t in p.tasks(job_id) if t["reason"] == "crashed"], 30, "crashed")
        assert "no CPU layout" in crashed[0]["message"] and "cpuset step" in crashed[0]["message"]
        assert crashed[0]["retriesUsed"] == 0
    finally:
        p.close()


def test_no_cpuset_flag_leaves_containers_unpinned(tmp_path: Path, engine: docker.DockerClient) -> None:
    p = Platform(tmp_path, engine)
    try:
        p.start_scheduler()
        p.start_agent("--no-cpuset")
        task = start_one(p, 1)
        c = container_of(p, task)
        assert c.attrs["HostConfig"]["CpusetCpus"] == ""
        assert requests.get(f"http://127.0.0.1:{p.agent_port}/v1/cpus", timeout=5).status_code == 404
    finally:
        p.close()
