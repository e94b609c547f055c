"""Agent configuration: command-line flags, optionally from a TOML file (`--config`), flags winning."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netns.providers.base import usable_addresses
from titus_common.daemon import parse_listen
from titus_common.errors import ConfigError



@dataclass
class AgentConfig:
    node_id: str
    scheduler_url: str = "http://127.0.0.1:7100"
    listen: tuple[str, int] = ("127.0.0.1", 7101)
    state_dir: Path = Path("/var/lib/titus/agent")
    docker_url: str | None = None
    docker_root: Path = Path("/var/lib/docker")
    labels: dict[str, str] = field(default_factory=dict)
    always_pull: bool = False
    sync_wait_seconds: float = 5.0
    # Capacity overrides (0 = measure the host).
    cpus: float = 0.0
    memory_mib: int = 0
    disk_mib: int = 0
    log_level: str = "INFO"
    # cpuset placement (agent/cpus.py, agent/steps/cpuset.py; docs/cpuset.md).
    cpuset_enabled: bool = True
    sysfs_root: Path = Path("/sys")
    cgroup_root: Path = Path("/sys/fs/cgroup")
    # CPUs kept for the agent and the system, as a cpulist; None = automatic (none on hosts with
    # fewer than 4 CPUs, else every thread of the first core), "" = none.
    reserved_cpus: str | None = None
    cpuset_rebalance_seconds: float = 30.0
    cpuset_rebalance_max_moves: int = 8
    # Read-back of every container's cpuset (drift correction): one inspect per container, so not
    # too often; changes the agent makes itself are written at once, not on this period.
    cpuset_check_seconds: float = 30.0
    # Security policy file (variant allow-list, AppArmor-unavailable mode; docs/security.md).
    # None = the built-in policy: only the `default` variant, refuse where AppArmor is required.
    security_policy: Path | None = None
    # Refuse to start when dockerd does not remap user namespaces (container root = host root).
    require_userns: bool = True
    # Networking: one IP per task (netns/, agent/steps/network.py; docs/network.md).
    network_enabled: bool = True
    network_provider: str = "local"
    # The local provider's pretend VPC: carrier-grade NAT space, never routed on this host.
    network_cidr: str = "100.64.0.0/16"
    # The local VPC's state, shared by every agent on the host (None: /var/lib/titus/netns/…).
    network_local_vpc_state: Path | None = None
    network_acquire_timeout_seconds: float = 30.0
    network_gc_seconds: float = 300.0
    # Control-plane isolation (netns/isolation.py): nftables table `inet titus_isolation`, scoped to
    # traffic arriving from task links (`tn*`): tasks reach no host port and not the scheduler.
    network_isolation: bool = True
    # Host ports tasks may reach anyway (an operator's choice, e.g. a node-local DNS cache).
    network_allowed_host_tcp_ports: list[int] = field(default_factory=list)
    network_allowed_host_udp_ports: list[int] = field(default_factory=list)
    # More control-plane CIDRs tasks must not reach (the scheduler's own address is always added).
    network_control_plane_cidrs: list[str] = field(default_factory=list)
    # The aws provider (network_provider = "aws"): this instance, its subnet and the EC2 endpoint.
    aws_region: str = "us-east-1"
    aws_endpoint_url: str | None = None
    aws_subnet_id: str = ""
    aws_instance_id: str = ""
    aws_instance_type: str = ""
    # The metadata/credential proxy (imds/, agent/steps/imds.py; docs/imds.md): needs the network step.
    imds_enabled: bool = True
    # Where each task's ECS-endpoint bearer token is written (bind-mounted read-only into the task).
    imds_token_dir: Path = Path("/run/titus-credentials")
    aws_sts_endpoint_url: str | None = None
    # The account of jobs that give a bare role name (None: asked of STS GetCallerIdentity once).
    aws_account_id: str | None = None
    aws_availability_zone: str | None = None  # default: the region + "a"
    # Holds each task's network namespace (a `sleep` in a container the task joins).
    sandbox_image: str = "127.0.0.1:5000/titus/busybox:latest"


def check_network(config: AgentConfig) -> None:
    from netns.limits import UnknownInstanceType, limits_for

    if config.network_provider not in ("local", "aws"):
        raise ConfigError(f"network_provider {config.network_provider!r}: expected 'local' or 'aws'")
    if config.network_provider == "aws":
        missing = [k for k in ("aws_subnet_id", "aws_instance_id", "aws_instance_type") if not getattr(config, k)]
        if missing:
            raise ConfigError(f"network_provider aws needs {', '.join(missing)}")
        try:
            limits_for(config.aws_instance_type)
        except UnknownInstanceType as e:
            raise ConfigError(f"aws_instance_type: {e.args[0]}") from None
    if config.aws_account_id is not None and not (len(config.aws_account_id) == 12 and config.aws_account_id.isdigit()):
        raise ConfigError(f"aws_account_id {config.aws_account_id!r}: expected 12 digits")
    for port in (*config.network_allowed_host_tcp_ports, *config.network_allowed_host_udp_ports):
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError(f"network allowed host port {port!r}: expected 1-65535")
    for cidr in config.network_control_plane_cidrs:
        try:
            ipaddress.IPv4Network(cidr)
        except ValueError as e:
            raise ConfigError(f"network_control_plane_cidrs: {e}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="titus-agent", description="Runs titus tasks as Docker containers")
    p.add_argument("--config", type=Path, help="TOML file with the same keys as the flags (node_id, …)")
    p.add_argument("--node-id", help="this host's name at the scheduler (default: hostname)")
    p.add_argument("--scheduler", dest="scheduler_url", help="scheduler base URL")
    p.add_argument("--listen", type=parse_listen, help="HOST:PORT for /metrics and /healthz")
    p.add_argument("--state-dir", type=Path, help="where task checkpoints live")
    p.add_argument("--docker-url", help="Docker engine address (default: DOCKER_HOST or the local socket)")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="node label, repeatable")
    p.add_argument("--always-pull", action="store_true", default=None, help="pull images at every launch")
    p.add_argument("--sync-wait", dest="sync_wait_seconds", type=float, help="long-poll wait (heartbeat)")
    p.add_argument("--cpus", type=float)
    p.add_argument("--memory-mib", type=int)
    p.add_argument("--disk-mib", type=int)
    p.add_argument("--log-level")
    p.add_argument("--no-cpuset", dest="cpuset_enabled", action="store_false", default=None,
                   help="do not place containers on cpusets (no cpuset launch step, no rebalancing)")
    p.add_argument("--sysfs-root", type=Path, help="where to read the CPU topology (default /sys)")
    p.add_argument("--cgroup-root", type=Path, help="cgroup mount, to read applied cpusets back (default /sys/fs/cgroup)")
    p.add_argument("--reserved-cpus", metavar="CPULIST",
                   help="CPUs kept for the agent and system, e.g. '0,48' ('' = none; default: the first core "
                        "on hosts with 4 or more CPUs, none below)")
    p.add_argument("--cpuset-rebalance-seconds", type=float, help="period of the cpuset rebalance (0 = never)")
    p.add_argument("--cpuset-rebalance-max-moves", type=int, help="CPUs one rebalance may move")
    p.add_argument("--cpuset-check-seconds", type=float, help="period of the cpuset read-back / drift check")
    p.add_argument("--security-policy", type=Path, metavar="PATH",
                   help="security policy JSON (seccomp variant allow-list; default: built-in, `default` only)")
    p.add_argument("--allow-no-userns", dest="require_userns", action="store_false", default=None,
                   help="start even if dockerd runs without --userns-remap (container root is then host root)")
    p.add_argument("--no-network", dest="network_enabled", action="store_false", default=None,
                   help="no network launch step: containers run with network_mode=none")
    p.add_argument("--network-provider", choices=["local", "aws"],
                   help="where task IPs come from: local (a pretend VPC over --network-cidr, default) or aws (ENIs)")
    p.add_argument("--network-cidr", help="the local provider's VPC CIDR (default 100.64.0.0/16)")
    p.add_argument("--network-local-vpc-state", type=Path, metavar="PATH",
                   help="the local VPC's state file, shared by the agents of a host")
    p.add_argument("--network-acquire-timeout", dest="network_acquire_timeout_seconds", type=float,
                   help="how long a launch waits for an IP before the task crashes (default 30)")
    p.add_argument("--network-gc-seconds", type=float, help="period of the network leak GC (default 300)")
    p.add_argument("--no-network-isolation", dest="network_isolation", action="store_false", default=None,
                   help="let tasks reach the host's own ports and the scheduler (isolation is on by default)")
    p.add_argument("--network-allow-host-port", dest="network_allowed_host_tcp_ports", type=int, action="append",
                   metavar="PORT", help="a host TCP port tasks may reach despite isolation (repeatable)")
    p.add_argument("--no-imds", dest="imds_enabled", action="store_false", default=None,
                   help="no metadata/credential proxy for tasks (169.254.169.254 unanswered)")
    p.add_argument("--imds-token-dir", type=Path, help="where per-task ECS-endpoint tokens are written")
    p.add_argument("--aws-sts-endpoint-url", help="STS endpoint for task roles (default: the SDK's)")
    p.add_argument("--aws-account-id", help="account of jobs giving a bare IAM role name (default: from STS)")
    p.add_argument("--aws-availability-zone", help="the zone tasks see in metadata (default: region + 'a')")
    p.add_argument("--aws-region", help="aws provider: the region (default us-east-1)")
    p.add_argument("--aws-endpoint-url", help="aws provider: EC2 endpoint (default: the SDK's)")
    p.add_argument("--aws-subnet-id", help="aws provider: the subnet of the container ENIs")
    p.add_argument("--aws-instance-id", help="aws provider: this instance's id")
    p.add_argument("--aws-instance-type", help="aws provider: this instance's type (ENI and IP limits)")
    p.add_argument("--sandbox-image", help="image of the per-task network sandbox (must have `sleep`)")
    return p


_FIELDS = {f for f in AgentConfig.__dataclass_fields__}


def load_config(argv: list[str] | None = None) -> AgentConfig:
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    if args.config is not None:
        try:
            doc = tomllib.loads(args.config.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"{args.config}: {e}") from None
        unknown = set(doc) - _FIELDS
        if unknown:
            raise ConfigError(f"{args.config}: unknown keys {sorted(unknown)}; known: {sorted(_FIELDS)}")
        values.update(doc)
    for key, value in vars(args).items():
        if key in _FIELDS and value is not None:
            values[key] = value
    labels = dict(values.get("labels", {}))
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--label {item!r}: expected KEY=VALUE")
        labels[key] = value
    labels.setdefault("zone", "local")
    labels.setdefault("instanceType", "local")
    values["labels"] = labels
    values.setdefault("node_id", socket.gethostname())
    for key in ("state_dir", "docker_root", "sysfs_root", "cgroup_root", "security_policy", "network_local_vpc_state",
                "imds_token_dir"):
        if key in values:
            values[key] = Path(values[key])
    if "listen" in values and isinstance(values["listen"], str):
        values["listen"] = parse_listen(values["listen"])
    try:
        config = AgentConfig(**values)
    except TypeError as e:
        raise ConfigError(str(e)) from None
    if not 0 < config.sync_wait_seconds <= 30:
        raise ConfigError("sync_wait_seconds must be in (0, 30]")
    if config.cpuset_rebalance_seconds < 0 or config.cpuset_rebalance_max_moves < 0:
        raise ConfigError("cpuset_rebalance_seconds and cpuset_rebalance_max_moves must not be negative")
    if config.cpuset_check_seconds <= 0:
        raise ConfigError("cpuset_check_seconds must be positive")
    check_network(config)
    try:
        usable_addresses(config.network_cidr)
    except ValueError as e:
        raise ConfigError(f"network_cidr: {e}") from None
    if config.network_acquire_timeout_seconds <= 0 or config.network_gc_seconds <= 0:
        raise ConfigError("network_acquire_timeout_seconds and network_gc_seconds must be positive")
    if not config.scheduler_url.startswith(("http://", "https://")):
        raise ConfigError(f"scheduler URL must start with http:// or https://, got {config.scheduler_url!r}")
    return config
