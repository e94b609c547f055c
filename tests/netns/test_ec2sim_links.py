"""The agent owns each container ENI's Linux link, on the simulated EC2 host (tests/ec2sim): moto
attaches, the "hypervisor" hot-plugs a link with the ENI's MAC after a delay; the agent waits for it,
brings it up, sets the MTU, writes the on-link router route and the default route in the ENI's table,
and restores them after a network manager flushed them. Namespaces and links: run under the lock."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from netns.errors import NetworkError
from netns.ipam import PoolConfig
from netns.pool import NetworkPool
from netns.providers.aws import AwsConfig, AwsProvider
from netns.step import HostEniByMac, TaskNetworks
from netns.wiring import Wiring, eni_table
from tests.ec2sim.hypervisor import Hypervisor, NetUtils
from tests.netns.conftest import Ec2World

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")


async def no_sleep(_: float) -> None:
    return None


@pytest.fixture
def host() -> Iterator[tuple[str, str]]:
    prefix = f"s{uuid.uuid4().hex[:6]}"
    names = (f"{prefix}host", f"{prefix}fab")
    for n in names:
        subprocess.run(["ip", "netns", "add", n], check=True)
    try:
        yield names
    finally:
        for n in names:
            subprocess.run(["ip", "netns", "del", n], check=False)


def provider(ec2: Ec2World) -> AwsProvider:
    return AwsProvider(AwsConfig(node_id="node-a", instance_id=ec2.instance_id, instance_type="m5.8xlarge",
                                 subnet_id=ec2.subnet_id, endpoint_url=ec2.endpoint), client=ec2.client,
                       sleep=no_sleep)


def link_state(ns: str, name: str) -> tuple[bool, int]:
    out = subprocess.run(["ip", "-n", ns, "-j", "link", "show", name], capture_output=True, text=True,
                         check=True).stdout
    (link,) = json.loads(out)
    return "UP" in link["flags"], int(link["mtu"])


def table_routes(ns: str, table: int) -> list[str]:
    out = subprocess.run(["ip", "-n", ns, "route", "show", "table", str(table)], capture_output=True,
                         text=True, check=True).stdout
    return sorted(" ".join(line.replace(" proto 122", "").split()) for line in out.splitlines())


async def test_hot_plugged_eni_link_is_waited_for_owned_and_reasserted(
    ec2: Ec2World, host: tuple[str, str], tmp_path: Path
) -> None:
    host_ns, fabric_ns = host
    p = provider(ec2)
    web = ec2.groups["web"]
    pool = NetworkPool(p, PoolConfig(max_enis=7, ips_per_eni=29, default_security_groups=(web,),
                                     warm_ip_target=2, refill_batch=2, burst_batch=2))
    networks = TaskNetworks(pool, Wiring(host_netns=f"/var/run/netns/{host_ns}", owner="node-a"),
                            host_eni_for=HostEniByMac(f"/var/run/netns/{host_ns}", timeout_s=20, mtu=9001),
                            unmanaged_dir=tmp_path)
    with Hypervisor(ec2.client, ec2.instance_id, host_ns, fabric_ns, delay_s=0.5) as hv:
        eni = await p.create_eni((web,), 1)
        assert eni.eni_id not in hv.plugged  # not there at once: the code must wait for it
        host_eni = await asyncio.to_thread(networks.host_eni_for, eni)
        assert host_eni is not None and host_eni.ifname == Hypervisor.link_name(eni.eni_id)
        assert await asyncio.to_thread(networks.wiring.ensure_eni_table, host_eni) != []  # was bare
        assert link_state(host_ns, host_eni.ifname) == (True, 9001)
        table = eni_table(1)
        gw = eni.gateway
        assert table_routes(host_ns, table) == sorted(
            [f"default via {gw} dev {host_eni.ifname}", f"{gw} dev {host_eni.ifname} scope link"])
        # ec2-net-utils: aliases and a flush. The next re-assertion restores the table, says so.
        pool.enis[eni.eni_id] = eni
        networks._eni_tables[eni.eni_id] = host_eni
        utils = NetUtils(host_ns)
        utils.add_aliases(host_eni.ifname, ["10.20.0.200"])
        utils.flush_table(table)
        assert table_routes(host_ns, table) == []
        drift = await networks.reassert_eni_tables()
        assert drift == {eni.eni_id: ["networkd Unmanaged file was missing",
                                      f"table {table} lacks its default route",
                                      f"host address 10.20.0.200/32 on {host_eni.ifname} removed"]}
        (unit,) = tmp_path.glob("05-titus-eni-*.network")
        assert unit.read_text().endswith(f"[Match]\nMACAddress={eni.mac.lower()}\n\n[Link]\nUnmanaged=yes\n")
        assert f"default via {gw} dev {host_eni.ifname}" in table_routes(host_ns, table)
        assert await networks.reassert_eni_tables() == {}  # nothing drifted since
        await p.delete_eni(eni.eni_id)
        del pool.enis[eni.eni_id]
        assert await networks.reassert_eni_tables() == {} and list(tmp_path.glob("*.network")) == []
        assert hv.errors == []


async def test_an_eni_whose_link_never_appears_times_out_with_the_cause(
    ec2: Ec2World, host: tuple[str, str]
) -> None:
    host_ns, fabric_ns = host
    p = provider(ec2)
    with Hypervisor(ec2.client, ec2.instance_id, host_ns, fabric_ns, delay_s=0.1) as hv:
        hv.paused = True
        eni = await p.create_eni((ec2.groups["web"],), 1)
        find = HostEniByMac(f"/var/run/netns/{host_ns}", timeout_s=0.5)
        with pytest.raises(NetworkError, match=f"ENI {eni.eni_id} .* attached but its link did not appear"):
            await asyncio.to_thread(find, eni)
        await p.delete_eni(eni.eni_id)


async def test_a_launch_whose_eni_link_never_appears_crashes_and_the_eni_is_given_back(
    ec2: Ec2World, host: tuple[str, str]
) -> None:
    host_ns, fabric_ns = host
    p = provider(ec2)
    web = ec2.groups["web"]
    pool = NetworkPool(p, PoolConfig(max_enis=7, ips_per_eni=29, default_security_groups=(web,),
                                     warm_ip_target=2, refill_batch=2, burst_batch=2), error_backoff_s=0.05)
    networks = TaskNetworks(pool, Wiring(host_netns=f"/var/run/netns/{host_ns}", owner="node-a"),
                            host_eni_for=HostEniByMac(f"/var/run/netns/{host_ns}", timeout_s=0.5))
    with Hypervisor(ec2.client, ec2.instance_id, host_ns, fabric_ns, delay_s=0.1) as hv:
        hv.paused = True  # the hot-plug never comes
        await networks.restore({})
        try:
            record: dict[str, object] = {}
            with pytest.raises(NetworkError, match="attached but its link did not appear") as raised:
                await networks.setup("task-1", f"/var/run/netns/{fabric_ns}", [web], record, lambda: None)
            assert raised.value.platform_fault  # the task ends crashed, with this cause
            (bad,) = {str(e["eni_id"]) for e in pool.snapshot()["enis"] if e["condemned"]}
            await networks.teardown("task-1", record)

            def attached() -> set[str]:
                answer = ec2.client.describe_network_interfaces(
                    Filters=[{"Name": "attachment.instance-id", "Values": [ec2.instance_id]}])
                return {str(d["NetworkInterfaceId"]) for d in answer["NetworkInterfaces"]}

            for _ in range(200):  # the refiller gives it back: addresses unassigned, detached, deleted
                if bad not in attached() and bad not in pool.pool.enis:
                    break
                await asyncio.sleep(0.05)
            assert bad not in attached() and bad not in pool.pool.enis
            assert pool.pool.by_task == {}
        finally:
            await networks.close()


async def test_a_flushed_eni_table_or_an_alias_is_seen_on_netlink_at_once(
    ec2: Ec2World, host: tuple[str, str], tmp_path: Path
) -> None:
    import threading

    from netns.eniwatch import EniWatch

    host_ns, fabric_ns = host
    p = provider(ec2)
    web = ec2.groups["web"]
    pool = NetworkPool(p, PoolConfig(max_enis=7, ips_per_eni=29, default_security_groups=(web,)))
    ns_path = f"/var/run/netns/{host_ns}"
    networks = TaskNetworks(pool, Wiring(host_netns=ns_path, owner="node-a"),
                            host_eni_for=HostEniByMac(ns_path, timeout_s=20, mtu=9001))
    drifted = threading.Event()
    with Hypervisor(ec2.client, ec2.instance_id, host_ns, fabric_ns, delay_s=0.1):
        eni = await p.create_eni((web,), 1)
        host_eni = await asyncio.to_thread(networks.host_eni_for, eni)
        assert host_eni is not None
        await asyncio.to_thread(networks.wiring.ensure_eni_table, host_eni)
        pool.enis[eni.eni_id] = eni
        networks._eni_tables[eni.eni_id] = host_eni
        networks._refresh_owned()
        watch = EniWatch(ns_path, lambda: networks.owned, drifted.set)
        watch.start()
        try:
            # Our own repair is not drift: re-assert, then make an unrelated change and wait to see it.
            await networks.reassert_eni_tables()
            seen = watch.events_seen
            subprocess.run(["ip", "-n", host_ns, "route", "add", "blackhole", "10.250.0.0/24", "table", "250"],
                           check=True)
            for _ in range(200):
                if watch.events_seen > seen:
                    break
                await asyncio.sleep(0.02)
            assert watch.events_seen > seen and not drifted.is_set()
            utils = NetUtils(host_ns)
            flush = lambda: utils.flush_table(eni_table(1))  # noqa: E731
            alias = lambda: utils.add_aliases(host_eni.ifname, ["10.20.0.201"])  # noqa: E731
            for act in (flush, alias, flush):  # drift after a repair is seen again
                drifted.clear()
                act()
                assert await asyncio.to_thread(drifted.wait, 10)
                assert await networks.reassert_eni_tables() != {}  # ...and the repair finds it
        finally:
            await asyncio.to_thread(watch.stop)
            await p.delete_eni(eni.eni_id)
