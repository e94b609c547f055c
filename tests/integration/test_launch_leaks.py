"""Launches that end badly or in bulk leave nothing on the host (issue 17, docs/launch-netns.md).

- The agent is killed -9 after the task's namespace was prepared and wired but before its container
  exists (the pipeline's test hook parks the launch there): the restarted agent resumes the launch
  in the same namespace (same attempt, no retry), and once the task is killed nothing is left.
- 100 tasks started and killed: every namespace, link, rule, route, nftables element, mount,
  cgroup, process and listening socket the launches made is gone again.

Host state is compared as a whole before and after (tests/integration/hoststate.py).
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import docker
import pytest
import requests

from agent.host.network import netns_dir
from agent.pipeline import STALL_ENV, STALL_MARKER
from netns.metadata import MetadataNetwork, meta_ifname
from netns.wiring import host_ifname, netns_name
from tests.harness import Platform, wait_for
from tests.integration.hoststate import leaks, snapshot

pytestmark = pytest.mark.integration


def agent_pid(p: Platform) -> int:
    assert p.agent is not None
    return int(p.agent.p.pid)


def namespaces(p: Platform) -> list[str]:
    d = netns_dir(p.node_id)
    return sorted({e.name.removesuffix(".user") for e in d.iterdir()}) if d.is_dir() else []


def host_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def assigned_ips(p: Platform) -> int:
    net = requests.get(f"http://127.0.0.1:{p.agent_port}/v1/net", timeout=5).json()
    return int(net["counts"]["assigned"])


def settle(p: Platform, job_ids: list[str]) -> None:
    """Kill the jobs and wait until the agent has torn everything down."""
    for job in job_ids:
        p.api("POST", f"/v1/jobs/{job}/kill", expect=202)
    for job in job_ids:
        p.wait_job_finished(job, timeout=240)
    wait_for(lambda: not p.containers(all=True) and not namespaces(p) and assigned_ips(p) == 0, 60,
             "containers, namespaces and IPs released")


def host_as_before(p: Platform, before: dict[str, object]) -> None:
    """Nothing on the host that was not there before (waiting a little for the last asynchronous
    removals)."""
    try:
        wait_for(lambda: not leaks(before, snapshot(p.node_id, agent_pid(p))), 30, "the host as before")
    except AssertionError:
        pass
    assert leaks(before, snapshot(p.node_id, agent_pid(p))) == {}


def warm(p: Platform) -> None:
    """One task through first, so what the agent makes once (the metadata namespace and its
    sysctls, thread pools, the image) exists before the baseline is taken."""
    job = p.submit("sleep 600", killGraceSeconds=1)
    wait_for(lambda: p.started(job), 60, "the warm-up task Started")
    settle(p, [job])


@pytest.mark.parametrize("parked_before", ["imds", "container"])
def test_agent_kill9_between_namespace_and_container_resumes_and_leaks_nothing(
    tmp_path: Path, engine: docker.DockerClient, parked_before: str
) -> None:
    p = Platform(tmp_path, engine)
    try:
        p.start_scheduler()
        p.start_agent()
        warm(p)
        before = snapshot(p.node_id, agent_pid(p))
        p.agent_env = {STALL_ENV: parked_before}
        assert p.agent is not None
        p.agent.stop()
        p.start_agent()

        job = p.submit("sleep 600", killGraceSeconds=1)
        log = tmp_path / "agent.log"
        wait_for(lambda: f"{STALL_MARKER} {parked_before}" in log.read_text(), 60, "the launch parked")
        (task,) = p.tasks(job)
        tid = task["id"]
        # The namespace is prepared and wired, the container does not exist yet.
        assert namespaces(p) == [netns_name(tid)]
        assert host_ifname(tid) in host_links()
        has_meta = meta_ifname(tid) in MetadataNetwork(p.node_id).links()
        assert has_meta == (parked_before == "container")
        assert not p.containers(all=True)
        p.agent.stop(signal.SIGKILL)

        p.agent_env = {}
        p.start_agent()
        wait_for(lambda: p.started(job), 60, "the resumed launch Started")
        (resumed,) = p.tasks(job)
        assert resumed["id"] == tid and resumed["retriesUsed"] == 0, resumed  # resumed, not retried
        assert namespaces(p) == [netns_name(tid)]  # in the namespace prepared before the kill
        (container,) = p.containers()
        code, out = container.exec_run(["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
        assert code == 0 and b"inet " in out, out
        assert meta_ifname(tid) in MetadataNetwork(p.node_id).links()

        settle(p, [job])
        host_as_before(p, before)
    finally:
        p.close()


def test_100_tasks_started_and_killed_leave_nothing(tmp_path: Path, engine: docker.DockerClient) -> None:
    count = 100
    p = Platform(tmp_path, engine)
    try:
        p.start_scheduler()
        p.start_agent()
        warm(p)
        before = snapshot(p.node_id, agent_pid(p))
        job = p.submit("sleep 600", count=count, killGraceSeconds=1, resources={"cpu": 0.01, "memoryMiB": 32, "diskMiB": 16})
        p.agent.wait_for(lambda: len(p.started(job)) == count, 400, f"{count} tasks Started")
        during = snapshot(p.node_id, agent_pid(p))
        assert len(during["prepared namespaces"]) >= count  # the snapshot sees what tasks hold
        assert len(during["metadata links"]) == count
        settle(p, [job])
        host_as_before(p, before)
        assert {t["reason"] for t in p.tasks(job)} == {"killed"}
    finally:
        p.close()
