"""The `restart-metadata` remediation end to end (real agent, scheduler and engine): a running task's
metadata datapath is cut from outside (the agent's metadata namespace unpinned and its `tm…` links
deleted), the imds check fails at the scheduler, the scheduler orders `restart-metadata`, the agent
re-creates the namespace and re-wires the task, and the task's own metadata answers again from
inside its container; the host's remediation history names the action and its result, and nothing
is left on the host after the kill."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import docker
import pytest

from netns.metadata import MetadataNetwork
from tests.harness import Platform, wait_for
from tests.integration.hoststate import leaks, snapshot
from tests.integration.test_imds import container_of, http_in_container

pytestmark = pytest.mark.integration


def imds_condition(p: Platform) -> dict[str, Any] | None:
    for c in (p.node() or {}).get("health") or []:
        if c["check"] == "imds":
            return dict(c)
    return None


def history(p: Platform) -> list[dict[str, Any]]:
    return list((p.node() or {}).get("remediationHistory") or [])


def instance_id(box: Any) -> tuple[int, str] | None:
    """The task's own `instance-id`, asked from inside its container (IMDSv2), or None if no answer."""
    try:
        status, token = http_in_container(box, "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
        if status != 200:
            return None
        return http_in_container(box, "GET", "/latest/meta-data/instance-id", {"X-aws-ec2-metadata-token": token})
    except AssertionError:  # no HTTP answer at all: the datapath is cut
        return None


def test_a_cut_metadata_datapath_is_restored_by_remediation(tmp_path: Path, engine: docker.DockerClient) -> None:
    p = Platform(tmp_path, engine)
    # The imds check every 2 s (its period is the network checks'), so the cut is seen quickly.
    p.agent_env = {"TITUS_AGENT_HEALTH_NETWORK_SECONDS": "2"}
    try:
        p.start_scheduler()
        p.start_agent()
        assert p.agent is not None
        wait_for(lambda: (c := imds_condition(p)) is not None and c["status"] == "ok", 60, "imds ok at the scheduler")
        before = snapshot(p.node_id, p.agent.p.pid)
        job = p.submit("sleep 600", service=True, killGraceSeconds=1)
        p.agent.wait_for(lambda: p.started(job), 60, "the task Started")
        (task,) = p.started(job)
        box = container_of(p, task["id"])
        assert instance_id(box) == (200, task["id"])

        MetadataNetwork(owner=p.node_id).remove_namespace()  # the pin and every tm… link (each task's veth)

        # The scheduler saw the failed condition (it orders only for one) and ordered the action.
        ordered = p.agent.wait_for(
            lambda: [e for e in history(p) if e["action"] == "restart-metadata" and e["outcome"] == "ordered"],
            60, "restart-metadata ordered")
        assert ordered[0]["check"] == "imds" and ordered[0]["reason"] in ("MetadataNamespaceGone", "MetadataProbeFailed")
        done = p.agent.wait_for(
            lambda: [e for e in history(p) if e["action"] == "restart-metadata" and e["outcome"] != "ordered"],
            60, "restart-metadata's result at the scheduler")
        assert done[0]["outcome"] == "ok", done
        assert done[0]["message"].startswith("metadata namespace re-created, "), done
        assert "1 task(s) re-wired" in done[0]["message"], done

        p.agent.wait_for(lambda: instance_id(box) == (200, task["id"]), 30, "the task's metadata answering again")
        p.agent.wait_for(lambda: (c := imds_condition(p)) is not None and c["status"] == "ok", 30,
                         "imds ok again at the scheduler")
        assert MetadataNetwork(owner=p.node_id).pinned()

        p.api("POST", f"/v1/jobs/{job}/kill", expect=202)
        p.wait_job_finished(job, timeout=60)
        wait_for(lambda: not p.containers(all=True), 60, "the container removed")
        try:  # the last asynchronous removals (sandbox, links) a moment after Finished
            wait_for(lambda: not leaks(before, snapshot(p.node_id, p.agent.p.pid if p.agent else None)), 30,
                     "the host as before")
        except AssertionError:
            pass
        assert leaks(before, snapshot(p.node_id, p.agent.p.pid)) == {}
    finally:
        p.close()
