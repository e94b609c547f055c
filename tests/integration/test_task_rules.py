"""A task's own policy rules deleted from outside (issue 12) come back, and the host's health says
so: the real agent, real scheduler, real containers.

- aws (the simulated EC2 host of test_ec2sim_agent.py): `ip rule del` of the task's
  `from <ip> lookup <ENI table>` rule; the `eni` check reports `TaskRuleMissing` naming the task and
  the rule, the rule is back (once, with our protocol) and the task reaches the outside with its own
  address again; the check returns to ok; killing the task leaves none of its rules.
- local: the same for a task's `to <ip> lookup main` rule.
Run under the engine lock."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import docker
import pytest

from netns.wiring import ENI_TABLE_BASE, RT_PROTO_TITUS, host_ifname
from tests.harness import Platform, wait_for
from tests.integration.test_ec2sim_agent import (  # noqa: F401 (sim: the fixture)
    Sim,
    address_in,
    egress_source,
    run,
    sim,
)

pytestmark = pytest.mark.integration

FAST_HEALTH = {"TITUS_AGENT_HEALTH_NETWORK_SECONDS": "1"}


def eni_check(p: Platform) -> dict[str, Any] | None:
    for c in (p.node() or {}).get("health") or []:
        if c["check"] == "eni":
            return dict(c)
    return None


def rules() -> str:
    return run("ip", "-4", "rule", "show")


def task_container(p: Platform, task_id: str) -> Any:
    (box,) = [c for c in p.containers() if c.labels.get("titus.task_id") == task_id
              and c.labels.get("titus.role") != "sandbox"]
    return box


def rule_deleted_reported_and_back(p: Platform, task_id: str, selector: list[str], shown: str, described: str) -> None:
    assert rules().count(shown) == 1, rules()
    wait_for(lambda: (c := eni_check(p)) is not None and c["status"] == "ok", 30, "eni ok at the scheduler")
    subprocess.run(["ip", "rule", "del", *selector], check=True, timeout=20)
    reported = wait_for(lambda: (c := eni_check(p)) is not None and c["reason"] == "TaskRuleMissing" and c, 30,
                        "TaskRuleMissing at the scheduler")
    assert reported["status"] == "degraded"
    assert described in reported["evidence"][f"taskRule.{task_id}"], reported
    assert task_id in reported["message"]
    wait_for(lambda: shown in rules(), 30, f"the rule back: {shown}")
    assert rules().count(shown) == 1, rules()
    # A repaired rule is reported for TASK_RULE_REPAIR_HOLD_S (60 s) after its re-add.
    wait_for(lambda: (c := eni_check(p)) is not None and c["status"] == "ok", 120, "eni ok again")


def test_a_deleted_from_rule_is_reported_and_re_added_on_an_ec2_host(sim: Sim) -> None:
    p, ec2 = sim.platform, sim.ec2
    p.agent_env.update(FAST_HEALTH)
    sim.start_agent()
    job = p.submit("sleep 600", service=True, count=1, killGraceSeconds=1)
    (task,) = wait_for(lambda: p.started(job), 60, "task Started")
    box = task_container(p, task["id"])
    address = address_in(box)
    enis = ec2.client.describe_network_interfaces(
        Filters=[{"Name": "attachment.instance-id", "Values": [ec2.instance_id]}])["NetworkInterfaces"]
    (eni,) = [e for e in enis if address in {a["PrivateIpAddress"] for a in e["PrivateIpAddresses"]}]
    table = ENI_TABLE_BASE + eni["Attachment"]["DeviceIndex"]
    assert wait_for(lambda: egress_source(sim, box), 20, "egress before") == address
    before = rules()

    rule_deleted_reported_and_back(
        p, task["id"], ["from", address, "lookup", str(table), "priority", "1536"],
        f"from {address} lookup {table} proto {RT_PROTO_TITUS}", f"from {address} lookup {table} priority 1536")
    assert rules() == before  # exactly what was there, nothing else touched
    assert wait_for(lambda: egress_source(sim, box), 20, "egress after the re-add") == address
    assert p.agent is not None
    assert f"task {task['id']}: from {address} lookup {table} priority 1536 was missing (re-added)" in \
        p.agent.log.read_text()

    p.api("POST", f"/v1/jobs/{job}/kill", expect=202)
    p.wait_job_finished(job, timeout=60)
    wait_for(lambda: not p.containers(all=True), 30, "containers removed")
    wait_for(lambda: address not in rules() and host_ifname(task["id"]) not in rules(), 15,
             "the task's rules removed, and not put back")


def test_a_deleted_to_rule_is_reported_and_re_added_on_the_local_provider(
    tmp_path: Path, engine: docker.DockerClient
) -> None:
    p = Platform(tmp_path, engine)
    try:
        p.agent_env = dict(FAST_HEALTH)
        p.start_scheduler()
        p.start_agent()
        job = p.submit("sleep 600", service=True, count=1, killGraceSeconds=1)
        (task,) = wait_for(lambda: p.started(job), 60, "task Started")
        address = address_in(task_container(p, task["id"]))
        rule_deleted_reported_and_back(
            p, task["id"], ["to", address, "lookup", "main", "priority", "512"],
            f"to {address} lookup main proto {RT_PROTO_TITUS}", f"to {address} lookup 254 priority 512")
        p.api("POST", f"/v1/jobs/{job}/kill", expect=202)
        p.wait_job_finished(job, timeout=60)
        wait_for(lambda: f"to {address} " not in rules(), 30, "the task's rule removed, and not put back")
    finally:
        p.close()
