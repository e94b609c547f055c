"""Host health against the real engine: the scratch-container check, its leftovers' GC, and a host
whose engine stops answering getting no new work until it answers again (real agent, real
scheduler; the engine's socket is cut through a relay, the shared dockerd keeps running)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import docker
import pytest

from agent.config import AgentConfig
from agent.docker_api import Docker
from agent.host.health import LABEL_HEALTH, DockerProbe, HealthResource, default_checks
from agent.metrics import AgentMetrics
from health.checks.engine import EngineCheck
from tests.harness import Platform, wait_for
from tests.integration.conftest import SocketProxy
from titus_common.protocol import HealthStatus

pytestmark = pytest.mark.integration

IMAGE = "127.0.0.1:5000/titus/busybox:latest"


async def test_scratch_container_check_against_the_engine(engine: docker.DockerClient) -> None:
    d = Docker()
    node = "health-probe-test"
    try:
        obs = await EngineCheck(DockerProbe(d, node, IMAGE, lambda: True)).run()
        assert (obs.status, obs.reason) == (HealthStatus.OK, "EngineHealthy"), obs
        assert not engine.containers.list(all=True, filters={"label": f"{LABEL_HEALTH}={node}"})
        bad = await EngineCheck(DockerProbe(d, node, "127.0.0.1:5000/titus/no-such-image:0", lambda: True)).run()
        assert (bad.status, bad.reason) == (HealthStatus.FAILED, "ScratchContainerFailed")
    finally:
        d.pool.shutdown(wait=False)


async def test_gc_removes_scratch_leftovers(tmp_path: Path, engine: docker.DockerClient) -> None:
    node = "health-gc-test"
    left = engine.containers.create(IMAGE, ["true"], labels={LABEL_HEALTH: node}, network_mode="none")
    d = Docker()
    try:
        config = AgentConfig(node_id=node, state_dir=tmp_path)
        resource = HealthResource(config, d, AgentMetrics(), default_checks(config, d, lambda: None))
        await resource.gc({})
        assert not engine.containers.list(all=True, filters={"label": f"{LABEL_HEALTH}={node}"})
    finally:
        d.pool.shutdown(wait=False)
        try:
            left.remove(force=True)
        except docker.errors.NotFound:
            pass


def _engine(node: dict[str, Any] | None) -> dict[str, Any] | None:
    for c in (node or {}).get("health") or []:
        if c["check"] == "engine":
            return dict(c)
    return None


def test_engine_down_host_gets_no_new_work_until_it_answers(platform: Platform, docker_proxy: SocketProxy) -> None:
    p = platform
    assert p.agent is not None
    p.agent.stop()
    p.start_agent("--docker-url", f"unix://{docker_proxy.path}", "--health-engine-seconds", "1")
    wait_for(lambda: (c := _engine(p.node())) is not None and c["status"] == "ok", 30, "engine ok at the scheduler")
    docker_proxy.down()
    failed = wait_for(lambda: (c := _engine(p.node())) is not None and c["status"] == "failed" and c, 30,
                      "engine failed at the scheduler")
    assert failed["reason"] in ("EngineDown", "CheckTimeout", "ScratchContainerFailed")
    node = p.node()
    assert node is not None and "health.engine" in node["taints"]
    job_id = p.submit("exit 0")
    waiting = wait_for(lambda: [t for t in p.tasks(job_id) if "no Ready host takes new work" in t["message"]],
                       30, "the task waiting on the taint")
    assert waiting[0]["state"] == "Accepted" and waiting[0]["nodeId"] is None
    docker_proxy.up()
    wait_for(lambda: (n := p.node()) is not None and not n["taints"], 30, "the taint lifted")
    p.wait_job_finished(job_id, timeout=60)
    assert [t["reason"] for t in p.tasks(job_id)] == ["normal"]


def _kernel_log(node: dict[str, Any] | None) -> dict[str, Any] | None:
    for c in (node or {}).get("health") or []:
        if c["check"] == "kernel-log":
            return dict(c)
    return None


@pytest.fixture
def devkmsg_on() -> Any:
    """Root's writes to /dev/kmsg are rate-limited by default (printk_devkmsg=ratelimit: about ten
    per five seconds); the flood needs them all. Restored afterwards."""
    knob = Path("/proc/sys/kernel/printk_devkmsg")
    before = knob.read_text().strip()
    knob.write_text("on\n")
    yield
    knob.write_text(before + "\n")


def test_kernel_log_rule_hit_reaches_the_scheduler_and_a_flood_is_bounded(
    platform: Platform, tmp_path: Path, devkmsg_on: Any,
) -> None:
    import os
    import uuid

    import psutil

    p = platform
    assert p.agent is not None
    token = f"titus-health-test-{uuid.uuid4().hex[:8]}"
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({
        "source": "test-monitor",
        "conditions": [{"type": "TestCondition", "reason": "NoTestProblem"}],
        "rules": [
            {"type": "temporary", "reason": "TestFlood", "pattern": f"{token} flood \\d+"},
            {"type": "permanent", "condition": "TestCondition", "reason": "TestProblem", "pattern": f"{token} broken .*"},
        ],
    }))
    p.agent.stop()
    p.start_agent("--health-log-rules", str(rules))
    wait_for(lambda: (c := _kernel_log(p.node())) is not None and c["status"] == "ok", 30, "kernel-log ok")
    fd = os.open("/dev/kmsg", os.O_WRONLY)
    try:
        os.write(fd, f"{token} broken disk controller\n".encode())
        hit = wait_for(lambda: (c := _kernel_log(p.node())) is not None and c["status"] == "failed" and c, 30,
                       "kernel-log failed at the scheduler")
        assert hit["reason"] == "TestProblem"
        assert hit["evidence"]["TestCondition.line"] == f"{token} broken disk controller"
        node = p.node()
        assert node is not None and "health.kernel-log" in node["taints"]
        agent = psutil.Process(p.agent.p.pid)
        rss_before = agent.memory_info().rss
        for i in range(100_000):
            os.write(fd, f"{token} flood {i}\n".encode())
    finally:
        os.close(fd)
    metrics_line = f'titus_agent_log_rule_hits_total{{rule="TestFlood"}}'
    wait_for(lambda: metrics_line in p.agent_metrics(), 60, "flood hits counted")
    beat = (p.node() or {}).get("lastHeartbeat", 0)
    wait_for(lambda: (p.node() or {}).get("lastHeartbeat", 0) > beat, 30, "the agent keeps syncing")
    assert agent.memory_info().rss - rss_before < 50 * 1024 * 1024
    assert p.agent.alive()
