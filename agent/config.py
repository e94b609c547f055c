"""Agent configuration: a typed model (`AgentConfig`) filled from defaults, a TOML file (`--config`),
environment variables `TITUS_AGENT_<KEY>` and command-line flags, in that order of precedence (a
flag wins). Every check is a validator of the model; a wrong value refuses start with a ConfigError
naming where it came from and the key (titus_common/config.py)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationInfo, field_validator, model_validator

from cpuset.errors import CpusetError
from cpuset.topology import parse_cpulist
from netns.providers.base import usable_addresses
from titus_common.config import Source, build, env_source, flag_source, toml_source
from titus_common.daemon import parse_listen
from titus_common.errors import ConfigError
from titus_common.jobspec import MAX_LABELS

__all__ = ["ENV_PREFIX", "AgentConfig", "ConfigError", "build_parser", "check_network", "load_config"]

ENV_PREFIX = "TITUS_AGENT_"
# Labels every node has unless a source sets them (placement constraints name them).
DEFAULT_LABELS = {"zone": "local", "instanceType": "local"}

# A path key: a string in TOML or the environment, a Path from a flag or from code.
AnyPath = Annotated[Path, Strict(False)]


def _positive(value: float, *, zero_ok: bool = False) -> float:
    if value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"must be {'non-negative' if zero_ok else 'positive'}, got {value!r}")
    return value


class AgentConfig(BaseModel):
    # Strict: a TOML "5" for a number is refused, not coerced. Unknown keys are refused.
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, validate_assignment=True)

    node_id: str = Field(default_factory=socket.gethostname)
    scheduler_url: str = "http://127.0.0.1:7100"
    # Trust (agent/node_credentials.py, docs/trust.md): the cell CA that signed the scheduler's
    # certificate (required for an https scheduler_url), and the one-time bootstrap token's file.
    scheduler_ca_file: AnyPath | None = None
    bootstrap_token_file: AnyPath | None = None
    # IAM role grants (the scheduler's --iam-policy file), re-checked before the metadata proxy hands
    # out a task's role; None = no re-check (the scheduler's submit-time check is the gate).
    iam_policy: AnyPath | None = None
    listen: tuple[str, int] = ("127.0.0.1", 7101)
    state_dir: AnyPath = Path("/var/lib/titus/agent")
    docker_url: str | None = None
    docker_root: AnyPath = Path("/var/lib/docker")
    labels: dict[str, str] = Field(default_factory=dict)
    always_pull: bool = False
    sync_wait_seconds: float = 5.0
    # Capacity overrides (0 = measure the host).
    cpus: float = 0.0
    memory_mib: int = 0
    disk_mib: int = 0
    log_level: str = "INFO"
    # cpuset placement (agent/cpus.py, agent/steps/cpuset.py; docs/cpuset.md).
    cpuset_enabled: bool = True
    sysfs_root: AnyPath = Path("/sys")
    cgroup_root: AnyPath = Path("/sys/fs/cgroup")
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
    security_policy: AnyPath | None = None
    # Refuse to start when dockerd does not remap user namespaces (container root = host root).
    require_userns: bool = True
    # Networking: one IP per task (netns/, agent/steps/network.py; docs/network.md).
    network_enabled: bool = True
    network_provider: str = "local"
    # The local provider's pretend VPC: carrier-grade NAT space, never routed on this host.
    network_cidr: str = "100.64.0.0/16"
    # The local VPC's state, shared by every agent on the host (None: /var/lib/titus/netns/…).
    network_local_vpc_state: AnyPath | None = None
    network_acquire_timeout_seconds: float = 30.0
    network_gc_seconds: float = 300.0
    # Control-plane isolation (netns/isolation.py): nftables table `inet titus_isolation`, scoped to
    # traffic arriving from task links (`tn*`): tasks reach no host port and not the scheduler.
    network_isolation: bool = True
    # Host ports tasks may reach anyway (an operator's choice, e.g. a node-local DNS cache).
    network_allowed_host_tcp_ports: list[int] = Field(default_factory=list)
    network_allowed_host_udp_ports: list[int] = Field(default_factory=list)
    # More control-plane CIDRs tasks must not reach (the scheduler's own address is always added).
    network_control_plane_cidrs: list[str] = Field(default_factory=list)
    # The aws provider (network_provider = "aws"): this instance, its subnet and the EC2 endpoint.
    aws_region: str = "us-east-1"
    aws_endpoint_url: str | None = None
    # On EC2 (docs/ec2-host.md): read instance id, type, region, AZ and subnet from this instance's
    # IMDSv2 at start; the aws_* keys above and below become overrides checked against it.
    aws_imds_identity: bool = False
    aws_imds_endpoint: str = "http://169.254.169.254"
    # ENI/IP limits when the type is outside netns/limits.py (default: EC2 DescribeInstanceTypes).
    aws_max_enis: int | None = None
    aws_ipv4_per_eni: int | None = None
    aws_subnet_id: str = ""
    aws_instance_id: str = ""
    aws_instance_type: str = ""
    # Task identities (docs/identity.md): a certificate per task from the scheduler (needs an https
    # scheduler_url: it is asked over the node's certificate); per-task directories under identity_dir
    # (default <state_dir>/identity).
    identity_enabled: bool = True
    identity_dir: AnyPath | None = None
    # The metadata/credential proxy (imds/, agent/steps/imds.py; docs/imds.md): needs the network step.
    imds_enabled: bool = True
    # Where each task's ECS-endpoint bearer token is written (bind-mounted read-only into the task).
    imds_token_dir: AnyPath = Path("/run/titus-credentials")
    aws_sts_endpoint_url: str | None = None
    # The account of jobs that give a bare role name (None: asked of STS GetCallerIdentity once).
    aws_account_id: str | None = None
    aws_availability_zone: str | None = None  # default: the region + "a"
    # Holds each task's network namespace (a `sleep` in a container the task joins).
    sandbox_image: str = "127.0.0.1:5000/titus/busybox:latest"
    # Security groups of jobs that name none (aws default: the subnet's VPC `default` group).
    network_default_security_groups: list[str] = Field(default_factory=list)
    # A newly attached ENI's link must appear (its MAC) within this; its MTU (9001 in a VPC).
    network_eni_link_timeout_seconds: float = 30.0
    network_eni_mtu: int = 9001
    # aws: per-ENI systemd-networkd files with Unmanaged=yes (netns/unmanaged.py); None: none written.
    network_unmanaged_dir: AnyPath | None = Path("/run/systemd/network")
    # Host pre-flight (agent/host/preflight.py): refuse to start on a host that cannot forward.
    network_preflight: bool = True
    # Host health checks (health/, agent/host/health.py; docs/health.md).
    health_enabled: bool = True
    health_engine_seconds: float = 30.0
    health_scratch_budget_seconds: float = 10.0
    health_registry_seconds: float = 60.0
    # The image whose manifest the registry check fetches (None: the sandbox image; "": no check).
    health_registry_image: str | None = None
    health_disk_seconds: float = 60.0
    health_disk_degraded_pct: float = 85.0
    health_disk_failed_pct: float = 95.0
    # More filesystems to watch besides the engine root and the state dir (e.g. a log or data dir).
    health_data_dirs: list[AnyPath] = Field(default_factory=list)
    health_pressure_seconds: float = 15.0
    # The host-state checks (health/checks/{clock,leaks,credentials,network}.py; docs/health.md).
    health_clock_seconds: float = 60.0
    health_leaks_seconds: float = 60.0
    health_credentials_seconds: float = 300.0
    health_network_seconds: float = 30.0
    # The imds check's self-probe through a task-side link (agent/host/metadata_probe.py).
    health_metadata_probe: bool = True
    # The remediation action `restart-engine` runs this (e.g. ["systemctl", "restart", "docker"]);
    # empty: the action is refused.
    health_engine_restart_command: list[str] = Field(default_factory=list)
    # Kernel log signals (/dev/kmsg) with node-problem-detector kernel-monitor.json rules
    # (None: the shipped health/rules/kernel-monitor.json).
    health_kmsg_enabled: bool = True
    health_log_rules: AnyPath | None = None
    # Image and container GC (agent/imagegc.py): disk high/low thresholds of the engine's filesystem,
    # the age rule (0: off), checked every GC round (network_gc_seconds), the age rule every
    # image_gc_seconds.
    image_gc_enabled: bool = True
    image_gc_high_pct: float = 85.0
    image_gc_low_pct: float = 80.0
    image_gc_unused_age_seconds: float = 3600.0
    image_gc_max_per_cycle: int = 5
    image_gc_seconds: float = 1800.0
    container_retention_seconds: float = 3600.0
    # Journal log signals (systemd-python; health/journal.py) with NPD docker-monitor.json-style rules
    # (None: the shipped health/rules/docker-monitor.json, dockerd's entries).
    health_journal_enabled: bool = True
    health_journal_rules: AnyPath | None = None

    # ---- checks (each error names its key; titus_common/config.py adds where the value came from)

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("scheduler_url")
    @classmethod
    def _scheduler_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {value!r}")
        return value

    @field_validator("listen", mode="before")
    @classmethod
    def _listen(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return parse_listen(value)
            except argparse.ArgumentTypeError as e:
                raise ValueError(str(e)) from None
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int) and not isinstance(value[1], bool):
            if not 0 < value[1] < 65536:
                raise ValueError(f"port {value[1]}: expected 1-65535")
            return value
        raise ValueError(f"expected HOST:PORT, got {value!r}")

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_LABELS - 1:
            raise ValueError(f"at most {MAX_LABELS - 1} labels, got {len(value)} (one is kept for the "
                             "platform's instanceId)")
        for key in value:
            if not key or "=" in key or any(c.isspace() for c in key):
                raise ValueError(f"label key {key!r}: expected a non-empty name without '=' or spaces")
        return value

    @field_validator("sync_wait_seconds")
    @classmethod
    def _sync_wait(cls, value: float) -> float:
        if not 0 < value <= 30:
            raise ValueError(f"must be in (0, 30], got {value!r}")
        return value

    @field_validator("cpus", "memory_mib", "disk_mib", "cpuset_rebalance_seconds", "cpuset_rebalance_max_moves",
                     "image_gc_unused_age_seconds", "container_retention_seconds")
    @classmethod
    def _not_negative(cls, value: float) -> float:
        return _positive(value, zero_ok=True)

    @field_validator("cpuset_check_seconds", "network_acquire_timeout_seconds", "network_gc_seconds",
                     "health_engine_seconds", "health_scratch_budget_seconds", "health_registry_seconds",
                     "health_disk_seconds", "health_pressure_seconds", "health_clock_seconds",
                     "health_leaks_seconds", "health_credentials_seconds", "health_network_seconds",
                     "image_gc_seconds")
    @classmethod
    def _period(cls, value: float) -> float:
        return _positive(value)

    @field_validator("health_disk_degraded_pct", "health_disk_failed_pct", "image_gc_high_pct", "image_gc_low_pct")
    @classmethod
    def _pct(cls, value: float) -> float:
        if not 0 < value <= 100:
            raise ValueError(f"must be a percentage in (0, 100], got {value!r}")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in logging.getLevelNamesMapping():
            raise ValueError(f"unknown level {value!r} (DEBUG, INFO, WARNING, ERROR, CRITICAL)")
        return value

    @field_validator("reserved_cpus")
    @classmethod
    def _reserved_cpus(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_cpulist(value, what="cpulist")
            except CpusetError as e:
                raise ValueError(str(e).removeprefix("cpulist: ")) from None
        return value

    @field_validator("network_provider")
    @classmethod
    def _provider(cls, value: str) -> str:
        if value not in ("local", "aws"):
            raise ValueError(f"expected 'local' or 'aws', got {value!r}")
        return value

    @field_validator("network_cidr")
    @classmethod
    def _network_cidr(cls, value: str) -> str:
        usable_addresses(value)  # ValueError says what is wrong with it
        return value

    @field_validator("network_allowed_host_tcp_ports", "network_allowed_host_udp_ports")
    @classmethod
    def _ports(cls, value: list[int]) -> list[int]:
        for port in value:
            if not 0 < port < 65536:
                raise ValueError(f"network allowed host port {port!r}: expected 1-65535")
        return value

    @field_validator("network_control_plane_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            ipaddress.IPv4Network(cidr)  # ValueError names the CIDR
        return value

    @field_validator("aws_instance_type")
    @classmethod
    def _instance_type(cls, value: str, info: ValidationInfo) -> str:
        from netns.limits import UnknownInstanceType, limits_for

        overridden = info.data.get("aws_imds_identity") or info.data.get("aws_max_enis") is not None
        if value and info.data.get("network_provider") == "aws" and not overridden:
            try:
                limits_for(value)
            except UnknownInstanceType as e:
                raise ValueError(e.args[0]) from None
        return value

    @field_validator("aws_account_id")
    @classmethod
    def _account_id(cls, value: str | None) -> str | None:
        if value is not None and not (len(value) == 12 and value.isdigit()):
            raise ValueError(f"expected 12 digits, got {value!r}")
        return value

    @model_validator(mode="after")
    def _aws_provider(self) -> AgentConfig:
        if self.network_provider == "aws" and (self.aws_max_enis is None) != (self.aws_ipv4_per_eni is None):
            raise ValueError("aws_max_enis and aws_ipv4_per_eni go together")
        if self.network_provider == "aws" and not self.aws_imds_identity:
            missing = [k for k in ("aws_subnet_id", "aws_instance_id", "aws_instance_type") if not getattr(self, k)]
            if missing:
                raise ValueError(f"network_provider aws needs {', '.join(missing)}")
        return self

    @model_validator(mode="after")
    def _image_gc(self) -> AgentConfig:
        if self.image_gc_low_pct >= self.image_gc_high_pct:
            raise ValueError(f"image_gc_low_pct ({self.image_gc_low_pct:g}) must be below image_gc_high_pct "
                             f"({self.image_gc_high_pct:g})")
        if self.image_gc_max_per_cycle < 1:
            raise ValueError("image_gc_max_per_cycle must be at least 1")
        return self

    @model_validator(mode="after")
    def _trust(self) -> AgentConfig:
        if self.scheduler_url.startswith("https://") and self.scheduler_ca_file is None:
            raise ValueError("an https scheduler_url needs scheduler_ca_file (the cell CA, docs/trust.md)")
        return self


def check_network(config: AgentConfig) -> None:
    """Re-check a config built or changed in code (the model's validators; ConfigError if wrong)."""
    build(AgentConfig, [Source("config", config.model_dump())])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="titus-agent", description="Runs titus tasks as Docker containers")
    p.add_argument("--config", type=Path,
                   help="TOML file with the same keys as the flags (node_id, …); TITUS_AGENT_<KEY> environment "
                        "variables override it, flags override both")
    p.add_argument("--node-id", help="this host's name at the scheduler (default: hostname)")
    p.add_argument("--scheduler", dest="scheduler_url", help="scheduler base URL")
    p.add_argument("--scheduler-ca", dest="scheduler_ca_file", type=Path, help="cell CA certificate (https)")
    p.add_argument("--bootstrap-token-file", type=Path, help="file holding the one-time bootstrap token")
    p.add_argument("--iam-policy", type=Path, help="IAM role grants re-checked before a role is handed out")
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
    p.add_argument("--no-identity", dest="identity_enabled", action="store_false", default=None,
                   help="no workload identity certificate for tasks (docs/identity.md)")
    p.add_argument("--identity-dir", type=Path, help="where per-task identity directories are written")
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
    p.add_argument("--network-default-security-group", dest="network_default_security_groups", action="append",
                   metavar="SG", help="security group of jobs naming none (repeatable; aws default: the VPC's `default`)")
    p.add_argument("--aws-imds-identity", action="store_true", default=None,
                   help="aws provider: this instance's identity from its IMDSv2 (aws_* keys then only override, checked)")
    p.add_argument("--aws-imds-endpoint", help="aws provider: this instance's IMDS (default http://169.254.169.254)")
    p.add_argument("--sandbox-image", help="image of the per-task network sandbox (must have `sleep`)")
    p.add_argument("--no-health", dest="health_enabled", action="store_false", default=None,
                   help="run no host health checks (the heartbeat then carries none)")
    p.add_argument("--health-engine-seconds", type=float, help="period of the engine check (default 30)")
    p.add_argument("--no-health-metadata-probe", dest="health_metadata_probe", action="store_false", default=None,
                   help="no self-probe of the metadata service through a task-side link in the imds check")
    p.add_argument("--no-image-gc", dest="image_gc_enabled", action="store_false", default=None,
                   help="no routine image and exited-container GC (docs/health.md)")
    p.add_argument("--image-gc-high-pct", type=float,
                   help="engine filesystem use that starts image GC (default 85; it stops at --image-gc-low-pct)")
    p.add_argument("--image-gc-low-pct", type=float, help="image GC's target use (default 80)")
    p.add_argument("--health-log-rules", type=Path,
                   help="kernel log rules in node-problem-detector kernel-monitor.json format (default: shipped)")
    p.add_argument("--health-data-dir", dest="health_data_dirs", type=Path, action="append",
                   help="another filesystem the disk check watches (repeatable)")
    return p


def load_config(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Defaults < the TOML file of `--config` < TITUS_AGENT_<KEY> variables < flags. Labels merge
    across sources (a later source wins per label); every other key is replaced whole."""
    parser = build_parser()
    args = parser.parse_args(argv)
    keys = AgentConfig.model_fields
    sources = [Source("defaults", {"labels": dict(DEFAULT_LABELS)})]
    if args.config is not None:
        sources.append(toml_source(AgentConfig, args.config))
    sources.append(env_source(AgentConfig, ENV_PREFIX, os.environ if environ is None else environ))
    flags = flag_source(parser, args, keys)
    if args.label:
        labels: dict[str, str] = {}
        for item in args.label:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"--label {item!r}: expected KEY=VALUE")
            labels[key] = value
        flags.values["labels"] = labels
        flags.where["labels"] = "--label"
    sources.append(flags)
    return build(AgentConfig, sources, merge=("labels",))
