"""A drain with two real agents on the real engine (networking off on both: two agents on one
host would share the host's nftables isolation table): a service job of 2 with a disruption budget
of 1 runs on host A; `titusctl`'s API drains A; each task is replaced on B, and only after its
replacement is Started is the task on A killed; A ends drained and cordoned, B runs both."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.harness import Platform, Proc, free_port, wait_for

pytestmark = pytest.mark.integration

AGENT_FLAGS = ("--no-network", "--no-cpuset", "--no-image-gc")


def second_agent(p: Platform, engine: docker.DockerClient) -> Platform:
    """Another agent of the same scheduler (its own node id, port, state dir)."""
    b = Platform(p.tmp / "b", engine)
    b.tmp.mkdir()
    b.pki, b.url, b.http = p.pki, p.url, p.http
    token = b.tmp / "bootstrap.token"
    token.write_text(p._trust("token", "create", "--db", str(p.tmp / "scheduler.db"), "--nodes", b.node_id,
                              "--ttl", "1h"))
    b.agent_port = free_port()
    b.agent = Proc("agent-b", [
        sys.executable, "-m", "agent.main", "--scheduler", p.url, "--scheduler-ca", str(p.pki / "ca.crt"),
        "--bootstrap-token-file", str(token), "--listen", f"127.0.0.1:{b.agent_port}",
        "--state-dir", str(b.tmp / "agent"), "--node-id", b.node_id, "--sync-wait", "2",
        "--imds-token-dir", str(b.tmp / "tokens"), *AGENT_FLAGS], b.tmp / "agent.log")
    wait_for(lambda: (n := b.node()) is not None and n["status"] == "Ready", 30, "agent B registration")
    return b


def ts(t: dict[str, Any], state: str) -> float:
    return float(t["timestamps"][state])


def test_drain_replaces_each_service_task_before_killing_it(tmp_path: Path, engine: docker.DockerClient) -> None:
    p = Platform(tmp_path, engine)
    b: Platform | None = None
    try:
        p.start_scheduler("--job-disruption-window", "1", "--kill-rate-per-second", "10")
        p.start_agent(*AGENT_FLAGS)
        job = p.api("POST", "/v1/jobs", {
            "appName": "drain", "owner": "test", "attributes": {"titus.disruption.budget": "1"},
            "container": {"image": "127.0.0.1:5000/titus/busybox:latest", "command": ["sleep", "3600"],
                          "resources": {"cpu": 0.1, "memoryMiB": 32}},
            "service": {"desired": 2},
        }, expect=201)
        job_id = job["id"]
        wait_for(lambda: len(p.started(job_id)) == 2, 60, "both tasks Started on A")
        b = second_agent(p, engine)
        p.api("POST", f"/v1/nodes/{p.node_id}/drain", {"reason": "test drain"})
        status = wait_for(lambda: (d := p.api("GET", f"/v1/nodes/{p.node_id}/drain"))["state"] == "drained" and d,
                          120, "A drained")
        assert status["drain"]["moved"] == 2 and status["remaining"] == [] and status["cordoned"]
        tasks = p.tasks(job_id)
        live = [t for t in tasks if t["state"] == "Started"]
        assert len(live) == 2 and {t["nodeId"] for t in live} == {b.node_id}
        killed = [t for t in tasks if t["nodeId"] == p.node_id]
        assert len(killed) == 2 and all(t["reason"] == "killed" for t in killed)
        for old in killed:
            repl = [t for t in tasks if t["index"] == old["index"] and t["nodeId"] == b.node_id]
            assert repl and ts(repl[0], "Started") <= ts(old, "KillInitiated"), (old, repl)
        # one move at a time (budget 1): the second replacement was created after the first kill
        first, second = sorted(killed, key=lambda t: ts(t, "KillInitiated"))
        second_repl = next(t for t in tasks if t["index"] == second["index"] and t["nodeId"] == b.node_id)
        assert ts(second_repl, "Accepted") >= ts(first, "KillInitiated")
    finally:
        if b is not None:
            b.close()
        p.close()
