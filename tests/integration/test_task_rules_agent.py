"""A task's own policy rules deleted from outside (an operator, a network manager) come back: the
real agent on the simulated EC2 host (the `sim` fixture of test_ec2sim_agent.py) re-adds exactly the
missing ones (netns/taskrules.py) on the rule's netlink event or its next reconcile, and the task
still reaches the outside address with its own source. Run under the engine lock."""

from __future__ import annotations

import subprocess

from netns.wiring import ENI_TABLE_BASE, RT_PROTO_TITUS, host_ifname
from tests.harness import wait_for
from tests.integration.test_ec2sim_agent import (  # noqa: F401 (sim: the fixture)
    Sim,
    address_in,
    egress_source,
    run,
    sim,
)


def test_a_deleted_task_rule_is_re_added(sim: Sim) -> None:
    p, ec2 = sim.platform, sim.ec2
    sim.start_agent()
    job = p.submit("sleep 600", service=True, count=1, killGraceSeconds=1)
    (task,) = wait_for(lambda: p.started(job), 60, "task Started")
    (box,) = [c for c in p.containers() if c.labels.get("titus.task_id") == task["id"]
              and c.labels.get("titus.role") != "sandbox"]
    address = address_in(box)
    enis = ec2.client.describe_network_interfaces(
        Filters=[{"Name": "attachment.instance-id", "Values": [ec2.instance_id]}])["NetworkInterfaces"]
    (eni,) = [e for e in enis if address in {a["PrivateIpAddress"] for a in e["PrivateIpAddresses"]}]
    table = ENI_TABLE_BASE + eni["Attachment"]["DeviceIndex"]
    from_rule = f"from {address} lookup {table} proto {RT_PROTO_TITUS}"
    iif_rule = f"iif {host_ifname(task['id'])} lookup {table} proto {RT_PROTO_TITUS}"
    assert wait_for(lambda: egress_source(sim, box), 20, "egress before") == address
    before = run("ip", "-4", "rule", "show")
    assert from_rule in before and iif_rule in before, before

    # Deleted from outside, one after the other: each comes back, once (no duplicate rule).
    for selector, wanted in ((["from", address, "lookup", str(table), "priority", "1536"], from_rule),
                             (["iif", host_ifname(task["id"]), "lookup", str(table), "priority", "10"], iif_rule)):
        subprocess.run(["ip", "rule", "del", *selector], check=True, timeout=20)
        wait_for(lambda: wanted in run("ip", "-4", "rule", "show"), 60, f"rule re-added: {wanted}")
        assert run("ip", "-4", "rule", "show").count(wanted) == 1
    assert run("ip", "-4", "rule", "show") == before  # exactly what was there, nothing else touched
    assert p.agent is not None
    wait_for(lambda: f"task {task['id']}: re-added from {address}" in p.agent.log.read_text(), 20,
             "the re-add logged, naming the task and its address")
    assert wait_for(lambda: egress_source(sim, box), 20, "egress after the re-add") == address

    p.api("POST", f"/v1/jobs/{job}/kill", expect=202)
    p.wait_job_finished(job, timeout=60)
    wait_for(lambda: not p.containers(all=True), 30, "containers removed")
    # Teardown is not undone by the re-assertion: the task's rules stay gone.
    wait_for(lambda: address not in run("ip", "-4", "rule", "show"), 15, "the task's rules removed")
    assert host_ifname(task["id"]) not in run("ip", "-4", "rule", "show")
