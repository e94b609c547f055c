"""The host-wide half of task networking, built once at agent start: the IP provider (local or aws),
the pool, the wiring, and the control-plane isolation policy (docs/network.md)."""

from __future__ import annotations

import ipaddress
import logging
import socket
from pathlib import Path
from urllib.parse import urlsplit

from agent.config import AgentConfig
from agent.steps.network import HostNetwork
from netns import isolation
from netns.ipam import PoolConfig
from netns.pool import NetworkPool
from netns.providers.aws import AwsConfig, AwsProvider
from netns.providers.base import Provider
from netns.providers.local import LocalProvider, LocalVpc
from netns.step import HostEniByMac, TaskNetworks, no_host_eni
from netns.wiring import Wiring

log = logging.getLogger("titus.agent.network")


def local_vpc_state(config: AgentConfig) -> Path:
    if config.network_local_vpc_state is not None:
        return config.network_local_vpc_state
    return Path("/var/lib/titus/netns") / f"local-vpc-{config.network_cidr.replace('/', '_')}.json"


def make_provider(config: AgentConfig) -> Provider:
    if config.network_provider == "aws":
        return AwsProvider(
            AwsConfig(
                node_id=config.node_id,
                instance_id=config.aws_instance_id,
                instance_type=config.aws_instance_type,
                subnet_id=config.aws_subnet_id,
                region=config.aws_region,
                endpoint_url=config.aws_endpoint_url,
            )
        )
    return LocalProvider(config.node_id, LocalVpc(config.network_cidr, state_path=local_vpc_state(config)))


def host_network(config: AgentConfig) -> HostNetwork:
    """One IP pool and one wiring for the host. With aws, each ENI's host link (found by MAC) gets its
    own routing table; the local provider's ENIs have no link (host routing only)."""
    provider = make_provider(config)
    lim = provider.limits
    pool = NetworkPool(
        provider,
        PoolConfig(
            max_enis=lim.container_enis,
            ips_per_eni=lim.container_ips_per_eni,
            default_security_groups=("sg-default",),
        ),
        checkpoint_path=config.state_dir / "ipam.json",
        acquire_timeout_s=config.network_acquire_timeout_seconds,
    )
    host_eni_for = HostEniByMac() if config.network_provider == "aws" else no_host_eni
    networks = TaskNetworks(pool, Wiring(owner=config.node_id), host_eni_for=host_eni_for)
    return HostNetwork(networks, config.sandbox_image)


def scheduler_addresses(scheduler_url: str) -> list[str]:
    """The scheduler's IPv4 addresses, resolved (blocking: call from a thread). Loopback is left out:
    a task has its own loopback and cannot reach the host's."""
    host = urlsplit(scheduler_url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as e:
        log.warning("cannot resolve the scheduler host %r for control-plane isolation: %s", host, e)
        return []
    found = {str(info[4][0]) for info in infos}
    return sorted(a for a in found if not ipaddress.IPv4Address(a).is_loopback)


def isolation_policy(config: AgentConfig) -> isolation.IsolationPolicy:
    """Tasks reach neither the host's own ports (but the allowed ones) nor the scheduler nor the
    operator's control-plane CIDRs; with isolation off, only the metadata drop stays (a task must
    never reach the host's real IMDS). Blocking (resolves the scheduler's name)."""
    cidrs = [f"{a}/32" for a in scheduler_addresses(config.scheduler_url)]
    cidrs += [str(ipaddress.IPv4Network(c)) for c in config.network_control_plane_cidrs]
    return isolation.IsolationPolicy(
        allowed_host_tcp_ports=tuple(config.network_allowed_host_tcp_ports),
        allowed_host_udp_ports=tuple(config.network_allowed_host_udp_ports),
        control_plane_cidrs=tuple(dict.fromkeys(cidrs)),
        isolate=config.network_isolation,
    )
