"""Agent configuration: network defaults, the aws provider's required settings, and the isolation
policy built from the config (agent/config.py, agent/host/network.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError, load_config
from agent.host.network import isolation_policy, make_provider
from netns.providers.aws import AwsProvider
from netns.providers.local import LocalProvider


def test_network_defaults_isolation_on_local_provider(tmp_path: Path) -> None:
    config = load_config(["--state-dir", str(tmp_path), "--network-local-vpc-state", str(tmp_path / "vpc.json")])
    assert config.network_enabled and config.network_isolation and config.network_provider == "local"
    assert config.network_cidr == "100.64.0.0/16"
    assert isinstance(make_provider(config), LocalProvider)


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["--network-provider", "aws"], "needs aws_subnet_id, aws_instance_id, aws_instance_type"),
        (["--network-provider", "aws", "--aws-subnet-id", "subnet-1", "--aws-instance-id", "i-1",
          "--aws-instance-type", "x9.huge"], "no ENI/IP limits known for instance type 'x9.huge'"),
        (["--network-allow-host-port", "0"], "network allowed host port 0"),
        (["--network-allow-host-port", "70000"], "network allowed host port 70000"),
        (["--network-cidr", "100.64.0.0/30"], "network_cidr"),
        (["--network-cidr", "not-a-cidr"], "network_cidr"),
        (["--network-acquire-timeout", "0"], "must be positive"),
    ],
)
def test_bad_network_settings_are_refused_with_the_setting_named(argv: list[str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        load_config(argv)


def test_bad_control_plane_cidr_in_toml(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('network_control_plane_cidrs = ["10.0.0.0/33"]\n')
    with pytest.raises(ConfigError, match="network_control_plane_cidrs"):
        load_config(["--config", str(path)])


def test_aws_provider_from_config() -> None:
    config = load_config([
        "--network-provider", "aws", "--aws-subnet-id", "subnet-1", "--aws-instance-id", "i-1",
        "--aws-instance-type", "m5.24xlarge", "--aws-endpoint-url", "http://127.0.0.1:1",
    ])
    provider = make_provider(config)
    assert isinstance(provider, AwsProvider)
    assert (provider.limits.container_enis, provider.limits.container_ips_per_eni) == (14, 49)


def test_isolation_policy_from_config(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        'scheduler_url = "http://10.1.2.3:7100"\n'
        'network_allowed_host_tcp_ports = [53]\n'
        'network_allowed_host_udp_ports = [53]\n'
        'network_control_plane_cidrs = ["10.9.0.0/16"]\n'
    )
    policy = isolation_policy(load_config(["--config", str(path)]))
    assert policy.control_plane_cidrs == ("10.1.2.3/32", "10.9.0.0/16")
    assert policy.allowed_host_tcp_ports == (53,) and policy.allowed_host_udp_ports == (53,)
    # A scheduler on loopback needs no rule: a task has its own loopback.
    local = isolation_policy(load_config(["--scheduler", "http://127.0.0.1:7100"]))
    assert local.control_plane_cidrs == ()
    # A name that does not resolve: no rule to write (logged), and the agent still starts.
    unresolved = isolation_policy(load_config(["--scheduler", "http://sched.invalid:7100"]))
    assert unresolved.control_plane_cidrs == ()
    # Isolation off: the policy says so (only the metadata drop stays, netns/isolation.py).
    assert isolation_policy(load_config(["--no-network-isolation"])).isolate is False


def test_imds_token_key_is_kept_and_a_bad_one_refused(tmp_path: Path) -> None:
    from agent.host.metadata import KEY_FILE, load_or_create_key

    key = load_or_create_key(tmp_path)
    assert len(key) == 32 and (tmp_path / KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert load_or_create_key(tmp_path) == key  # tokens issued before a restart stay valid
    (tmp_path / KEY_FILE).write_bytes(b"short")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        load_or_create_key(tmp_path)
