"""The datapath on two simulated EC2 hosts (tests/ec2sim + moto): the aws provider creates and
attaches ENIs, the hypervisor hot-plugs their links and plays the VPC's routing in a fabric
namespace; the agent's TaskNetworks wires one task per host. Two tasks talk; a task reaches an
outside address through its ENI with its own address as source; ec2-net-utils' aliases (the task
addresses added to the host's ENI link) are removed by the next re-assertion and do not break it.
Namespaces and links: run under the lock."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netns.ipam import PoolConfig
from netns.pool import NetworkPool
from netns.providers.aws import AwsConfig, AwsProvider
from netns.step import HostEniByMac, TaskNetworks
from netns.wiring import Wiring
from tests.ec2sim.hypervisor import Hypervisor, NetUtils
from tests.netns.conftest import Ec2World
from tests.netns.world import can_connect, listen, ns_path

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")

OUTSIDE = "198.51.100.1"


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=20)


async def no_sleep(_: float) -> None:
    return None


@pytest.fixture
def spaces() -> Iterator[dict[str, str]]:
    prefix = f"d{uuid.uuid4().hex[:6]}"
    names = {k: f"{prefix}{k}" for k in ("fab", "ha", "hb", "ca", "cb", "inet")}
    for n in names.values():
        sh("ip", "netns", "add", n)
        sh("ip", "-n", n, "link", "set", "lo", "up")
    try:
        for n in (names["fab"], names["ha"], names["hb"]):
            for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                        "net.ipv4.conf.default.rp_filter=0"):
                sh("ip", "netns", "exec", n, "sysctl", "-qw", key)
        # The outside world, beyond the VPC's router.
        sh("ip", "link", "add", "out0", "netns", names["inet"], "type", "veth", "peer", "name", "out1",
           "netns", names["fab"])
        sh("ip", "-n", names["inet"], "addr", "add", f"{OUTSIDE}/24", "dev", "out0")
        sh("ip", "-n", names["inet"], "link", "set", "out0", "up")
        sh("ip", "-n", names["inet"], "route", "add", "default", "via", "198.51.100.254")
        sh("ip", "-n", names["fab"], "addr", "add", "198.51.100.254/24", "dev", "out1")
        sh("ip", "-n", names["fab"], "link", "set", "out1", "up")
        yield names
    finally:
        for n in names.values():
            subprocess.run(["ip", "netns", "del", n], capture_output=True, timeout=20)


def networks_for(ec2: Ec2World, node: str, instance: str, host_ns: str) -> tuple[AwsProvider, TaskNetworks]:
    p = AwsProvider(AwsConfig(node_id=node, instance_id=instance, instance_type="m5.8xlarge",
                              subnet_id=ec2.subnet_id, endpoint_url=ec2.endpoint), client=ec2.client,
                    sleep=no_sleep)
    web = ec2.groups["web"]
    pool = NetworkPool(p, PoolConfig(max_enis=7, ips_per_eni=29, default_security_groups=(web,),
                                     warm_ip_target=2, refill_batch=2, burst_batch=2))
    networks = TaskNetworks(pool, Wiring(host_netns=ns_path(host_ns), owner=node),
                            host_eni_for=HostEniByMac(ns_path(host_ns), timeout_s=20, mtu=9001))
    return p, networks


async def test_two_tasks_on_two_simulated_hosts_and_egress_through_the_eni(
    ec2: Ec2World, spaces: dict[str, str], tmp_path: Path
) -> None:
    second = ec2.client.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1,
                                      InstanceType="m5.8xlarge", SubnetId=ec2.subnet_id)["Instances"][0]["InstanceId"]
    web = ec2.groups["web"]
    pa, na = networks_for(ec2, "node-a", ec2.instance_id, spaces["ha"])
    pb, nb = networks_for(ec2, "node-b", second, spaces["hb"])
    with Hypervisor(ec2.client, ec2.instance_id, spaces["ha"], spaces["fab"], delay_s=0.3, vpc_routing=True) as hva, \
         Hypervisor(ec2.client, second, spaces["hb"], spaces["fab"], delay_s=0.3, vpc_routing=True) as hvb:
        await na.restore({})
        await nb.restore({})
        rec_a: dict[str, Any] = {}
        rec_b: dict[str, Any] = {}
        await asyncio.gather(
            na.setup("task-a", ns_path(spaces["ca"]), [web], rec_a, lambda: None),
            nb.setup("task-b", ns_path(spaces["cb"]), [web], rec_b, lambda: None),
        )
        a, b = rec_a["lease"]["address"], rec_b["lease"]["address"]
        # The fabric learns task addresses as moto lists them (the hypervisor polls): wait for both.
        await wait_for(lambda: can_connect_to(spaces["cb"], b, spaces["ca"]))

        server = listen(ns_path(spaces["inet"]), OUTSIDE, 8080)
        try:
            assert can_connect(ns_path(spaces["ca"]), OUTSIDE, 8080, timeout=2)
            peer, _ = await asyncio.to_thread(accept_peer, server)
            assert peer == a  # left through its ENI, its own address as source (no SNAT to the host)
        finally:
            server.close()

        # ec2-net-utils adds the ENI's secondary IPs, task-a's among them, as host aliases: the host
        # would now answer for task-a itself. The agent's next re-assertion removes them.
        (eni_id,) = [e for e in na.pool.enis]
        link = hva.plugged[eni_id]
        NetUtils(spaces["ha"]).add_aliases(link, [a])
        drift = await na.reassert_eni_tables()
        assert drift == {eni_id: [f"host address {a}/32 on {link} removed"]}
        assert can_connect_to(spaces["ca"], a, spaces["cb"])
        assert hva.errors == [] and hvb.errors == []
        await na.teardown("task-a", rec_a)
        await nb.teardown("task-b", rec_b)
        await na.close()
        await nb.close()


def accept_peer(server: Any) -> tuple[str, int]:
    server.settimeout(5)
    conn, peer = server.accept()
    conn.close()
    return peer  # type: ignore[no-any-return]


def can_connect_to(target_ns: str, address: str, from_ns: str) -> bool:
    s = listen(ns_path(target_ns), address, 9090)
    try:
        return can_connect(ns_path(from_ns), address, 9090, timeout=1)
    finally:
        s.close()


async def wait_for(condition: Any, attempts: int = 100) -> None:
    for _ in range(attempts):
        if await asyncio.to_thread(condition):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition never held")
