"""Isolation vs the host's real IMDS: a container must never reach 169.254.169.254 / 169.254.170.2 by
routing through its data link (`tn…`), whatever the policy; the host itself still reaches IMDS; the
metadata proxy's own path (netns/metadata.py) is not affected by the rule."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from netns import isolation
from netns.metadata import ECS_ADDRESS, IMDS_ADDRESS, MetadataNetwork
from netns.wiring import ContainerNetSpec, Wiring
from tests.netns.test_metadata import EchoServer, ask
from tests.netns.world import World, can_connect, listen, ns_path, sh

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


@pytest.fixture
def world() -> Iterator[World]:
    w = World(prefix=f"tii{os.getpid() % 10000}-")
    try:
        yield w
    finally:
        w.close()


@pytest.mark.parametrize(
    "policy",
    [
        isolation.IsolationPolicy(),
        isolation.IsolationPolicy(allowed_host_tcp_ports=(80,), control_plane_cidrs=("10.9.0.0/16",)),
    ],
)
def test_ruleset_always_drops_forwarding_to_metadata_addresses(policy: isolation.IsolationPolicy) -> None:
    text = isolation.ruleset(policy)
    forward = text[text.index("chain forward"):]
    assert f'iifname "tn*" ip daddr {{ {IMDS_ADDRESS}, {ECS_ADDRESS} }} counter drop' in forward
    assert 'iifname "tn*" ip6 daddr fd00:ec2::254 counter drop' in forward
    assert IMDS_ADDRESS not in text[: text.index("chain forward")]  # input chain unchanged


@needs_root
def test_ruleset_passes_nft_check(world: World) -> None:
    ns = world.add_ns(world.prefix + "chk")
    script = f"table inet {isolation.TABLE}\ndelete table inet {isolation.TABLE}\n" + isolation.ruleset(
        isolation.IsolationPolicy(allowed_host_tcp_ports=(8080,), control_plane_cidrs=("10.9.0.1/32",))
    )
    sh("ip", "netns", "exec", ns, isolation.NFT, "-c", "-f", "-", input=script)


@needs_root
def test_container_cannot_reach_the_real_imds_through_its_data_link(world: World, tmp_path: Path) -> None:
    world.build(("a",))
    host = world.hosts["a"]
    host_ns = ns_path(host.name)
    fabric = world.fabric
    # The fabric plays the real IMDS (as EC2's, reached by the host over its primary ENI).
    for address in (IMDS_ADDRESS, ECS_ADDRESS):
        sh("ip", "-n", fabric, "addr", "add", f"{address}/32", "dev", "lo")
        sh("ip", "-n", host.name, "route", "add", f"{address}/32", "via", host.eni.gateway, "dev", "eni1")
    real = [listen(ns_path(fabric), IMDS_ADDRESS, 80), listen(ns_path(fabric), ECS_ADDRESS, 80)]
    wiring = Wiring(host_ns)
    wiring.ensure_eni_table(host.eni)
    container = world.container("t1")
    wiring.setup(ContainerNetSpec("t1", container, "10.30.1.10", host.eni))
    world.vpc_route("10.30.1.10", "a")
    meta = MetadataNetwork(f"test-{uuid.uuid4().hex[:8]}", tmp_path / "netns")
    server = EchoServer()
    try:
        # Without isolation and without a metadata link, the task reaches the host's IMDS: the hole.
        assert can_connect(container, IMDS_ADDRESS, 80) and can_connect(container, ECS_ADDRESS, 80)
        isolation.apply(isolation.IsolationPolicy(allowed_host_tcp_ports=(80,)), host_ns)
        assert not can_connect(container, IMDS_ADDRESS, 80)
        assert not can_connect(container, ECS_ADDRESS, 80)
        assert can_connect(host_ns, IMDS_ADDRESS, 80)  # the host's own IMDS access is untouched
        counters = subprocess.run(["ip", "netns", "exec", host.name, "nft", "list", "chain", "inet",
                                   isolation.TABLE, "forward"], capture_output=True, text=True).stdout
        (rule,) = [line for line in counters.splitlines() if IMDS_ADDRESS in line]
        assert "counter packets 0 " not in rule  # the metadata rule is what dropped them

        # With its metadata link, the task gets its own proxy, with isolation on.
        meta.attach("t1", container, "10.30.1.10")
        server.serve("t1", meta.listeners("t1"))
        assert ask(container) == "t1 10.30.1.10"
        assert ask(container, ECS_ADDRESS) == "t1 10.30.1.10"
        meta.detach("t1")
        assert not can_connect(container, IMDS_ADDRESS, 80)  # link gone: still not the real one
    finally:
        server.close()
        meta.remove_namespace()
        for sock in real:
            sock.close()
