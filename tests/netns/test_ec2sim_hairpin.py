"""Same-host traffic between tasks of different security groups goes through the VPC (issue 16).

One simulated EC2 host (tests/ec2sim + moto): the aws provider creates one ENI per security-group
set, the hypervisor hot-plugs their links and plays the VPC router in a fabric namespace. Three
tasks on the host: web-1 and web-2 on the `web` ENI, db-1 on the `db` ENI. web-1 -> db-1 must leave
by the web ENI's link into the fabric and come back in by the db ENI's (counted there with
nftables), so a fabric-side drop standing in for db's security group blocks it; web-1 -> web-2 (same
ENI, same groups) stays on the host, as on EC2, and is not blocked. Namespaces: run under the lock."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from netns.wiring import RULE_FROM_TASK_LINK_PRIORITY, host_ifname
from tests.ec2sim.hypervisor import Hypervisor
from tests.netns.conftest import Ec2World
from tests.netns.test_ec2sim_datapath import can_connect_to, networks_for, wait_for
from tests.netns.world import ns_path

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")

PORT = 9090  # can_connect_to's


def sh(*args: str, input: str | None = None) -> str:
    done = subprocess.run(args, input=input, capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@pytest.fixture
def spaces() -> Iterator[dict[str, str]]:
    prefix = f"p{uuid.uuid4().hex[:6]}"
    names = {k: f"{prefix}{k}" for k in ("fab", "h", "web1", "web2", "db1")}
    for n in names.values():
        sh("ip", "netns", "add", n)
        sh("ip", "-n", n, "link", "set", "lo", "up")
    try:
        sh("ip", "netns", "exec", names["fab"], "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # The host with strict rp_filter everywhere (hot-plugged ENI links inherit `default`): the
        # agent sets its ENI links loose, else the VPC's hairpinned packets would be dropped.
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=1", "net.ipv4.conf.default.rp_filter=1"):
            sh("ip", "netns", "exec", names["h"], "sysctl", "-qw", key)
        yield names
    finally:
        for n in names.values():
            subprocess.run(["ip", "netns", "del", n], capture_output=True, timeout=20)


def fabric_rules(fab: str, web_link: str, db_link: str, web1: str, web2: str, db1: str, drop: bool) -> None:
    """The VPC's view: counters of web-1's packets to db-1 leaving the host by the web ENI and
    entering it by the db ENI, of web-1's packets to web-2 on any ENI; with `drop`, db's security
    group refusing web-1 (egress side: on the web ENI's fabric end)."""
    verdict = " drop" if drop else ""  # (an accept would end the chain before the next counter)
    script = "\n".join([
        "table inet ec2sim_sg", "delete table inet ec2sim_sg",
        "table inet ec2sim_sg {",
        "  counter web_out_to_db {}", "  counter into_db_eni {}", "  counter same_sg_in_fabric {}",
        "  chain forward {", "    type filter hook forward priority filter; policy accept;",
        f"    iifname \"{web_link}\" ip saddr {web1} ip daddr {db1} counter name web_out_to_db{verdict}",
        f"    oifname \"{db_link}\" ip saddr {web1} ip daddr {db1} counter name into_db_eni",
        f"    ip saddr {web1} ip daddr {web2} counter name same_sg_in_fabric",
        "  }", "}", ""])
    sh("ip", "netns", "exec", fab, "nft", "-f", "-", input=script)


def packets(fab: str, counter: str) -> int:
    out = sh("ip", "netns", "exec", fab, "nft", "list", "counter", "inet", "ec2sim_sg", counter)
    return int(out.split("packets")[1].split()[0])


async def test_tasks_of_different_security_groups_on_one_host_talk_through_their_enis(
    ec2: Ec2World, spaces: dict[str, str]
) -> None:
    web, db = ec2.groups["web"], ec2.groups["db"]
    _, networks = networks_for(ec2, "node-h", ec2.instance_id, spaces["h"])
    with Hypervisor(ec2.client, ec2.instance_id, spaces["h"], spaces["fab"], delay_s=0.3,
                    vpc_routing=True) as hv:
        await networks.restore({})
        recs: dict[str, dict[str, Any]] = {t: {} for t in ("web1", "web2", "db1")}
        for task, groups in (("web1", [web]), ("web2", [web]), ("db1", [db])):
            await networks.setup(task, ns_path(spaces[task]), groups, recs[task], lambda: None)
        addr = {t: str(r["lease"]["address"]) for t, r in recs.items()}
        eni = {t: str(r["lease"]["eni_id"]) for t, r in recs.items()}
        assert eni["web1"] == eni["web2"] != eni["db1"], (eni, hv.plugged)
        # The link shows on the host a moment before the hypervisor's thread records it as plugged.
        await wait_for(lambda: set(eni.values()) <= set(hv.plugged))
        web_link, db_link = ("f" + hv.plugged[eni[t]][2:] for t in ("web1", "db1"))

        # The host's policy routing: each task's link is routed by its ENI's table alone, which
        # reaches only that ENI's tasks directly.
        rules = sh("ip", "-n", spaces["h"], "rule")
        for task in recs:
            table = recs[task]["wiring"]["table"]
            assert f"{RULE_FROM_TASK_LINK_PRIORITY}:\tfrom all iif {host_ifname(task)} lookup {table} proto 122" in rules
        web_table = sh("ip", "-n", spaces["h"], "route", "show", "table", str(recs["web1"]["wiring"]["table"]))
        assert f"{addr['web1']} dev {host_ifname('web1')}" in web_table
        assert f"{addr['web2']} dev {host_ifname('web2')}" in web_table
        assert addr["db1"] not in web_table

        fabric_rules(spaces["fab"], web_link, db_link, addr["web1"], addr["web2"], addr["db1"], drop=False)
        # The fabric learns task addresses as moto lists them (the hypervisor polls).
        await wait_for(lambda: can_connect_to(spaces["db1"], addr["db1"], spaces["web1"]))
        assert packets(spaces["fab"], "web_out_to_db") > 0  # left by web's ENI into the VPC
        assert packets(spaces["fab"], "into_db_eni") > 0  # and came back in by db's ENI
        assert can_connect_to(spaces["web1"], addr["web1"], spaces["db1"])  # the way back, too
        assert can_connect_to(spaces["web2"], addr["web2"], spaces["web1"])  # same ENI: direct
        assert packets(spaces["fab"], "same_sg_in_fabric") == 0

        # db's security group refuses web-1: the VPC drops it, the host offers no way around.
        fabric_rules(spaces["fab"], web_link, db_link, addr["web1"], addr["web2"], addr["db1"], drop=True)
        assert not can_connect_to(spaces["db1"], addr["db1"], spaces["web1"])
        assert packets(spaces["fab"], "web_out_to_db") > 0
        assert can_connect_to(spaces["web2"], addr["web2"], spaces["web1"])  # same groups: still talk

        ifname = hv.plugged[eni["web1"]]
        assert sh("ip", "netns", "exec", spaces["h"], "sysctl", "-n", f"net.ipv4.conf.{ifname}.rp_filter").strip() == "2"

        # A network manager flushing the ENI table, and a task's iif rule lost (or wired by an agent
        # that predates the hairpin): the re-assertion restores both.
        web_table = str(recs["web1"]["wiring"]["table"])
        sh("ip", "-n", spaces["h"], "route", "flush", "table", web_table)
        sh("ip", "-n", spaces["h"], "rule", "del", "priority", str(RULE_FROM_TASK_LINK_PRIORITY), "iif",
           host_ifname("web1"), "lookup", web_table)
        drift = await networks.reassert_eni_tables()
        assert f"table {web_table} lacked {addr['web2']} dev {host_ifname('web2')}" in drift[eni["web1"]]
        assert (f"task web1: iif {host_ifname('web1')} lookup {web_table} priority {RULE_FROM_TASK_LINK_PRIORITY} "
                "was missing (re-added)") in drift[eni["web1"]]
        assert f"iif {host_ifname('web1')} lookup {web_table}" in sh("ip", "-n", spaces["h"], "rule")
        assert can_connect_to(spaces["db1"], addr["db1"], spaces["web1"]) is False  # still through the VPC
        assert can_connect_to(spaces["web2"], addr["web2"], spaces["web1"])
        assert packets(spaces["fab"], "same_sg_in_fabric") == 0

        for task, rec in recs.items():
            await networks.teardown(task, rec)
        rules = sh("ip", "-n", spaces["h"], "rule")
        assert "proto 122" not in rules  # nothing of ours left: iif rules go with their tasks
        assert hv.errors == []
        await networks.close()
