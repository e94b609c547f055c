"""The datapath in a world of namespaces: containers on two hosts reach each other through a VPC
fabric by IP, security groups (nftables in the fabric) decide which ports, containers cannot reach
their host's ports unless allowed, and teardown / gc leave nothing behind."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from netns import isolation
from netns.errors import AddressConflict, WiringError
from netns.wiring import (
    ContainerNetSpec,
    Wiring,
    host_ifname,
    netns_name,
    pin_netns,
)
from tests.netns.world import World, can_connect, listen, ns_path, sh

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


@pytest.fixture
def world() -> Iterator[World]:
    w = World(prefix=f"tnt{os.getpid() % 10000}-")
    try:
        yield w.build()
    finally:
        w.close()


def wire(world: World, host: str, task: str, address: str) -> tuple[str, dict[str, object]]:
    h = world.hosts[host]
    wiring = Wiring(ns_path(h.name))
    wiring.ensure_eni_table(h.eni)
    container = world.container(task)
    record = wiring.setup(ContainerNetSpec(task, container, address, h.eni))
    world.vpc_route(address, host)
    return container, record


def links(ns: str) -> list[str]:
    out = subprocess.run(["ip", "-n", ns, "-o", "link", "show"], capture_output=True, text=True).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def test_containers_on_two_hosts_reach_each_other_and_security_groups_apply(world: World) -> None:
    a1, _ = wire(world, "a", "web-1", "10.30.1.10")
    a2, _ = wire(world, "a", "other-1", "10.30.1.11")
    b1, _ = wire(world, "b", "db-1", "10.30.2.10")
    db = listen(b1, "10.30.2.10", 5432)
    try:
        assert can_connect(a1, "10.30.2.10", 5432)
        assert can_connect(a2, "10.30.2.10", 5432)  # no security groups yet: open
        world.security_groups(
            {"sg_web": ["10.30.1.10"], "sg_other": ["10.30.1.11"], "sg_db": ["10.30.2.10"]},
            allow=[("sg_web", "sg_db", 5432)],
        )
        assert can_connect(a1, "10.30.2.10", 5432)  # web -> db:5432 allowed
        assert not can_connect(a2, "10.30.2.10", 5432)  # other -> db:5432 closed
    finally:
        db.close()


def test_container_traffic_leaves_by_its_eni_table(world: World) -> None:
    _, record = wire(world, "a", "t1", "10.30.1.20")
    host = ns_path(world.hosts["a"].name)
    rules = subprocess.run(["ip", "-n", world.hosts["a"].name, "rule"], capture_output=True, text=True).stdout
    assert "512:\tfrom all to 10.30.1.20 lookup main proto 122" in rules
    assert "1536:\tfrom 10.30.1.20 lookup 101 proto 122" in rules
    assert f"10:\tfrom all iif {host_ifname('t1')} lookup 101 proto 122" in rules  # hairpin: no shortcut
    table = subprocess.run(["ip", "-n", world.hosts["a"].name, "route", "show", "table", "101"],
                           capture_output=True, text=True).stdout
    assert "default via 10.30.0.1 dev eni1" in table
    assert f"10.30.1.20 dev {host_ifname('t1')} proto 122 scope link" in table  # its ENI's own task
    assert record["host_ifname"] == host_ifname("t1") and record["table"] == 101


def test_control_plane_isolation(world: World) -> None:
    a1, _ = wire(world, "a", "t1", "10.30.1.30")
    host = world.hosts["a"]
    agent = listen(ns_path(host.name), host.eni_primary, 7101)
    proxy = listen(ns_path(host.name), host.eni_primary, 8080)
    try:
        assert can_connect(a1, host.eni_primary, 7101)  # before isolation: reachable
        isolation.apply(isolation.IsolationPolicy(allowed_host_tcp_ports=(8080,)), ns_path(host.name))
        assert not can_connect(a1, host.eni_primary, 7101)
        assert can_connect(a1, host.eni_primary, 8080)  # allowed by the operator
        isolation.apply(isolation.IsolationPolicy(), ns_path(host.name))  # replace, idempotent
        assert not can_connect(a1, host.eni_primary, 8080)
        isolation.remove(ns_path(host.name))
        isolation.remove(ns_path(host.name))
        assert can_connect(a1, host.eni_primary, 7101)
    finally:
        agent.close()
        proxy.close()


def test_setup_is_idempotent_teardown_is_repeatable(world: World) -> None:
    h = world.hosts["a"]
    wiring = Wiring(ns_path(h.name))
    wiring.ensure_eni_table(h.eni)
    c = world.container("t1")
    spec = ContainerNetSpec("t1", c, "10.30.1.40", h.eni)
    record = wiring.setup(spec)
    assert wiring.setup(spec) == record  # re-run after a restart: same link, nothing doubled
    assert links(h.name).count(host_ifname("t1")) == 1
    with pytest.raises(AddressConflict):  # another task cannot take a wired address
        wiring.setup(ContainerNetSpec("t2", world.container("t2"), "10.30.1.40", h.eni))
    wiring.teardown(record)
    wiring.teardown(record)
    assert host_ifname("t1") not in links(h.name)
    assert "eth0" not in links(world.prefix + "ct1")
    rules = subprocess.run(["ip", "-n", h.name, "rule"], capture_output=True, text=True).stdout
    assert "10.30.1.40" not in rules and host_ifname("t1") not in rules
    with pytest.raises(WiringError):
        wiring.teardown({"host_ifname": "eni1"})  # never something we did not create
    with pytest.raises(WiringError):
        wiring.setup(ContainerNetSpec("t3", "/var/run/netns/does-not-exist", "10.30.1.41", h.eni))


def test_gc_removes_only_our_leaks(world: World, tmp_path: Path) -> None:
    h = world.hosts["a"]
    wiring = Wiring(ns_path(h.name))
    keep_c, keep = wire(world, "a", "keep", "10.30.1.50")
    wire(world, "a", "leak", "10.30.1.51")
    sh("ip", "-n", h.name, "link", "add", "vethforeign", "type", "veth", "peer", "name", "vethforeign2")
    sh("ip", "-n", h.name, "rule", "add", "from", "10.30.9.9", "lookup", "77", "priority", "1536")
    pinned = pin_netns(os.getpid(), "leaky-task", netns_dir=tmp_path)
    assert Path(pinned).name == netns_name("leaky-task") and os.path.ismount(pinned)
    (tmp_path / "other-ns").touch()
    report = wiring.gc({"keep"}, netns_dir=tmp_path)
    assert report.links == [host_ifname("leak")]
    assert sorted(report.rules) == [f"10:{host_ifname('leak')}", "1536:10.30.1.51", "512:10.30.1.51"]
    assert report.namespaces == [netns_name("leaky-task")]
    remaining = links(h.name)
    assert "vethforeign" in remaining and host_ifname("keep") in remaining
    rules = subprocess.run(["ip", "-n", h.name, "rule"], capture_output=True, text=True).stdout
    assert "10.30.9.9" in rules and "10.30.1.50" in rules
    assert (tmp_path / "other-ns").exists() and not Path(pinned).exists()
    service = listen(ns_path(h.name), h.eni_primary, 7000)
    try:
        assert can_connect(keep_c, h.eni_primary, 7000)  # the kept container is still wired
    finally:
        service.close()
    assert keep["address"] == "10.30.1.50"


async def test_task_networks_api_end_to_end_with_local_provider(world: World, tmp_path: Path) -> None:
    from netns.ipam import PoolConfig
    from netns.pool import NetworkPool
    from netns.providers.local import LocalProvider, LocalVpc
    from netns.step import TaskNetworks

    host = ns_path(world.hosts["a"].name)
    provider = LocalProvider("a", LocalVpc("10.31.0.0/24"), "m5.8xlarge")
    cfg = PoolConfig(max_enis=7, ips_per_eni=29, warm_ip_target=2, default_security_groups=("sg-d",))
    pool = NetworkPool(provider, cfg, tmp_path / "ipam.json")
    networks = TaskNetworks(pool, Wiring(host))
    await networks.restore({})
    records: dict[str, dict[str, object]] = {}
    saves = []
    for task in ("t1", "t2"):
        records[task] = {}
        await networks.setup(task, world.container(task), [], records[task], lambda: saves.append(1))
    a1, a2 = (str(records[t]["lease"]["address"]) for t in ("t1", "t2"))  # type: ignore[index]
    server = listen(ns_path(world.prefix + "ct2"), a2, 9000)
    try:
        assert can_connect(ns_path(world.prefix + "ct1"), a2, 9000)  # same host, via host routes
    finally:
        server.close()
    assert len(saves) == 4
    # Restart: t1 still running, t2 gone -> its address cools, t1 keeps its own.
    await pool.close()
    pool2 = NetworkPool(provider, cfg, tmp_path / "ipam.json")
    networks2 = TaskNetworks(pool2, Wiring(host))
    report = await networks2.restore({"t1": records["t1"]})
    assert report.kept == {"t1": a1} and report.released == {"t2": a2}
    await networks2.teardown("t2", records["t2"])
    leaks = await networks2.collect_leaks({"t1"})
    assert leaks.wiring.links == []
    await networks2.teardown("t1", records["t1"])
    await networks2.teardown("t1", records["t1"])
    assert not [n for n in links(world.hosts["a"].name) if n.startswith("tn")]
    snap = networks2.snapshot()
    assert snap["counts"]["assigned"] == 0 and snap["provider"]["name"] == "local"
    await pool2.close()


def test_gc_with_an_owner_spares_other_agents_links_and_rules(world: World) -> None:
    """Several agents on one host (tests do this): each GC removes only links carrying its owner."""
    h = world.hosts["a"]
    host = ns_path(h.name)
    mine, theirs = Wiring(host, owner="node-a"), Wiring(host, owner="node-b")
    for wiring, task, address in ((mine, "mine-keep", "10.30.1.60"), (mine, "mine-leak", "10.30.1.61"),
                                  (theirs, "theirs", "10.30.1.62")):
        wiring.setup(ContainerNetSpec(task, world.container(task), address, None))
    report = mine.gc({"mine-keep"})
    assert report.links == [host_ifname("mine-leak")]
    assert report.rules == ["512:10.30.1.61"] and report.namespaces == []
    remaining = links(h.name)
    assert host_ifname("theirs") in remaining and host_ifname("mine-keep") in remaining
    rules = subprocess.run(["ip", "-n", h.name, "rule"], capture_output=True, text=True).stdout
    assert "10.30.1.62" in rules and "10.30.1.60" in rules and "10.30.1.61" not in rules
