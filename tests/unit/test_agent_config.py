"""Agent configuration (agent/config.py, titus_common/config.py): network defaults, the aws
provider's required settings, the isolation policy built from the config (agent/host/network.py); the typed
model's sources and precedence (defaults < TOML < TITUS_AGENT_* < flags), strict TOML types, and errors
naming the source and the key."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.config import AgentConfig, ConfigError, check_network, load_config
from agent.host.network import isolation_policy, make_provider
from netns.providers.aws import AwsProvider
from netns.providers.local import LocalProvider
from titus_common import errors


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


# ---- the typed model: sources, precedence, strict types, errors naming source and key ------------

# What `load_config` gave before the model (the dataclass and its hand-made merge), key by key.
DEFAULTS: dict[str, Any] = {
    "node_id": "n",
    "scheduler_url": "http://127.0.0.1:7100",
    "scheduler_ca_file": None,
    "bootstrap_token_file": None,
    "iam_policy": None,
    "listen": ("127.0.0.1", 7101),
    "state_dir": Path("/var/lib/titus/agent"),
    "docker_url": None,
    "docker_root": Path("/var/lib/docker"),
    "labels": {"zone": "local", "instanceType": "local"},
    "always_pull": False,
    "sync_wait_seconds": 5.0,
    "cpus": 0.0,
    "memory_mib": 0,
    "disk_mib": 0,
    "log_level": "INFO",
    "cpuset_enabled": True,
    "sysfs_root": Path("/sys"),
    "cgroup_root": Path("/sys/fs/cgroup"),
    "reserved_cpus": None,
    "cpuset_rebalance_seconds": 30.0,
    "cpuset_rebalance_max_moves": 8,
    "cpuset_check_seconds": 30.0,
    "security_policy": None,
    "require_userns": True,
    "network_enabled": True,
    "network_provider": "local",
    "network_cidr": "100.64.0.0/16",
    "network_local_vpc_state": None,
    "network_acquire_timeout_seconds": 30.0,
    "network_gc_seconds": 300.0,
    "network_isolation": True,
    "network_allowed_host_tcp_ports": [],
    "network_allowed_host_udp_ports": [],
    "network_control_plane_cidrs": [],
    "aws_region": "us-east-1",
    "aws_endpoint_url": None,
    "aws_imds_identity": False,
    "aws_imds_endpoint": "http://169.254.169.254",
    "aws_max_enis": None,
    "aws_ipv4_per_eni": None,
    "aws_subnet_id": "",
    "aws_instance_id": "",
    "aws_instance_type": "",
    "identity_enabled": True,
    "identity_dir": None,
    "imds_enabled": True,
    "imds_token_dir": Path("/run/titus-credentials"),
    "aws_sts_endpoint_url": None,
    "aws_account_id": None,
    "aws_availability_zone": None,
    "sandbox_image": "127.0.0.1:5000/titus/busybox:latest",
    "network_default_security_groups": [],
    "network_eni_link_timeout_seconds": 30.0,
    "network_eni_mtu": 9001,
    "network_unmanaged_dir": Path("/run/systemd/network"),
    "network_preflight": True,
    "health_enabled": True,
    "health_engine_seconds": 30.0,
    "health_scratch_budget_seconds": 10.0,
    "health_registry_seconds": 60.0,
    "health_registry_image": None,
    "health_disk_seconds": 60.0,
    "health_disk_degraded_pct": 85.0,
    "health_disk_failed_pct": 95.0,
    "health_data_dirs": [],
    "health_pressure_seconds": 15.0,
    "health_clock_seconds": 60.0,
    "health_leaks_seconds": 60.0,
    "health_credentials_seconds": 300.0,
    "health_network_seconds": 30.0,
    "health_metadata_probe": True,
    "health_engine_restart_command": [],
    "health_kmsg_enabled": True,
    "health_log_rules": None,
    "image_gc_enabled": True,
    "image_gc_high_pct": 85.0,
    "image_gc_low_pct": 80.0,
    "image_gc_unused_age_seconds": 3600.0,
    "image_gc_max_per_cycle": 5,
    "image_gc_seconds": 1800.0,
    "container_retention_seconds": 3600.0,
    "health_journal_enabled": True,
    "health_journal_rules": None,
}


def toml(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return ["--config", str(path)]


def test_defaults_are_todays() -> None:
    config = load_config(["--node-id", "n"], environ={})
    assert config.model_dump() == DEFAULTS
    for key, value in DEFAULTS.items():
        assert type(getattr(config, key)) is type(value), key
    assert load_config([], environ={}).node_id == socket.gethostname()
    # Built in code (tests, tools): the dataclass's defaults, no labels added.
    assert AgentConfig(node_id="n").labels == {} and AgentConfig(node_id="n").listen == ("127.0.0.1", 7101)


def test_config_error_is_the_common_one() -> None:
    assert ConfigError is errors.ConfigError
    assert errors.exit_code_for(ConfigError("x")) == errors.EXIT_BAD_CONFIG


def test_a_full_toml_file(tmp_path: Path) -> None:
    config = load_config(toml(tmp_path, (
        'node_id = "node-17"\nlisten = "0.0.0.0:7201"\nstate_dir = "/srv/agent"\nsync_wait_seconds = 2\n'
        'always_pull = true\nmemory_mib = 4096\nsecurity_policy = "/etc/titus/p.json"\nreserved_cpus = "0,48"\n'
        'network_allowed_host_udp_ports = [53]\n[labels]\nzone = "us-east-1a"\n'
    )), environ={})
    assert config.node_id == "node-17" and config.listen == ("0.0.0.0", 7201)
    assert config.state_dir == Path("/srv/agent") and config.security_policy == Path("/etc/titus/p.json")
    assert config.sync_wait_seconds == 2.0 and isinstance(config.sync_wait_seconds, float)
    assert config.always_pull is True and config.memory_mib == 4096 and config.reserved_cpus == "0,48"
    assert config.network_allowed_host_udp_ports == [53]
    assert config.labels == {"zone": "us-east-1a", "instanceType": "local"}


def test_the_packaged_agent_toml_loads() -> None:
    packaged = Path(__file__).resolve().parents[2] / "packaging" / "agent.toml"
    config = load_config(["--config", str(packaged), "--node-id", "n"], environ={})
    # The packaged file is a production one: the scheduler over TLS, the agent bootstrapping its certificate.
    assert config.model_dump() == {**DEFAULTS, "scheduler_url": "https://127.0.0.1:7100",
                                   "scheduler_ca_file": Path("/etc/titus/pki/ca.crt"),
                                   "bootstrap_token_file": Path("/etc/titus/bootstrap.token"),
                                   "identity_dir": Path("/var/lib/titus-identity")}  # test_packaged_config.py


@pytest.mark.parametrize(
    "text, problem",
    [
        # wrong type from TOML: never coerced
        ('sync_wait_seconds = "5"', "agent.toml: sync_wait_seconds: expected a number, got '5'"),
        ("always_pull = 1", "agent.toml: always_pull: expected true or false, got 1"),
        ('memory_mib = "4096"', "agent.toml: memory_mib: expected an integer, got '4096'"),
        ("memory_mib = 1.5", "agent.toml: memory_mib: expected an integer, got 1.5"),
        ("cpus = true", "agent.toml: cpus: expected a number, got True"),
        ("node_id = 17", "agent.toml: node_id: expected a string, got 17"),
        ("state_dir = 5", "agent.toml: state_dir: expected a path (a string), got 5"),
        ('network_allowed_host_tcp_ports = "53"', "agent.toml: network_allowed_host_tcp_ports: expected a list, got '53'"),
        ('network_allowed_host_tcp_ports = [53, "54"]',
         "agent.toml: network_allowed_host_tcp_ports[1]: expected an integer, got '54'"),
        ('labels = "zone=a"', "agent.toml: labels: expected a table, got 'zone=a'"),
        ("sync_wait_seconds = inf", "agent.toml: sync_wait_seconds: expected a finite number, got inf"),
        # out of range
        ("sync_wait_seconds = 0", "agent.toml: sync_wait_seconds: must be in (0, 30], got 0"),
        ("sync_wait_seconds = 31.0", "agent.toml: sync_wait_seconds: must be in (0, 30], got 31.0"),
        ("cpus = -1", "agent.toml: cpus: must be non-negative, got -1"),
        ("cpuset_rebalance_max_moves = -1", "agent.toml: cpuset_rebalance_max_moves: must be non-negative"),
        ("cpuset_check_seconds = 0", "agent.toml: cpuset_check_seconds: must be positive, got 0"),
        ("network_gc_seconds = -5", "agent.toml: network_gc_seconds: must be positive"),
        ("network_allowed_host_udp_ports = [65536]", "agent.toml: network_allowed_host_udp_ports: network allowed host port 65536"),
        ('aws_account_id = "12345"', "agent.toml: aws_account_id: expected 12 digits, got '12345'"),
        ('scheduler_url = "ftp://sched"', "agent.toml: scheduler_url: must start with http:// or https://"),
        ('network_provider = "gcp"', "agent.toml: network_provider: expected 'local' or 'aws', got 'gcp'"),
        ('network_cidr = "100.64.0.0/30"', "agent.toml: network_cidr: "),
        ('network_control_plane_cidrs = ["10.0.0.0/33"]', "agent.toml: network_control_plane_cidrs: "),
        ('reserved_cpus = "0-x"', "agent.toml: reserved_cpus: not a cpulist"),
        ('log_level = "LOUD"', "agent.toml: log_level: unknown level 'LOUD'"),
        ('node_id = ""', "agent.toml: node_id: must not be empty"),
        # bad listen
        ('listen = "7101"', "agent.toml: listen: expected HOST:PORT, got '7101'"),
        ('listen = "127.0.0.1:0"', "agent.toml: listen: expected HOST:PORT, got '127.0.0.1:0'"),
        ('listen = ["127.0.0.1", 7101]', "agent.toml: listen: expected HOST:PORT"),
        # bad labels
        ("[labels]\nzone = 5", "agent.toml: labels.zone: expected a string, got 5"),
        ('[labels]\n"rack id" = "r1"', "agent.toml: labels: label key 'rack id'"),
        ('[labels]\n"" = "r1"', "agent.toml: labels: label key ''"),
        # unknown keys, each named
        ("sync_wait = 5", "agent.toml: sync_wait: unknown key (did you mean sync_wait_seconds?)"),
        ("colour = 1\nconfig = 2", "agent.toml: colour: unknown key; ... agent.toml: config: unknown key"),
        # cross-field
        ('network_provider = "aws"', "network_provider aws needs aws_subnet_id, aws_instance_id, aws_instance_type"),
        ('network_provider = "aws"\naws_subnet_id = "s"\naws_instance_id = "i"\naws_instance_type = "x9.huge"',
         "agent.toml: aws_instance_type: no ENI/IP limits known for instance type 'x9.huge'"),
        # not TOML at all
        ("sync_wait_seconds = ", "agent.toml: not valid TOML"),
    ],
)
def test_bad_toml_values_are_refused_naming_file_and_key(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(toml(tmp_path, text + "\n"), environ={})
    assert isinstance(e.value, errors.ConfigError)
    for part in problem.split(" ... "):  # literal parts, in this order
        assert part in str(e.value), str(e.value)
    assert str(e.value).index(problem.split(" ... ")[-1]) >= str(e.value).index(problem.split(" ... ")[0])


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(toml(tmp_path, 'sync_wait_seconds = "5"\ncpus = -1\nlisten = "x"\n'), environ={})
    assert {"sync_wait_seconds", "cpus", "listen"} <= {part.split(": ")[1] for part in str(e.value).split("; ")}


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nowhere.toml: cannot read"):
        load_config(["--config", str(tmp_path / "nowhere.toml")], environ={})


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["--sync-wait", "31"], "--sync-wait: sync_wait_seconds: must be in (0, 30], got 31.0"),
        (["--cpuset-check-seconds", "0"], "--cpuset-check-seconds: cpuset_check_seconds: must be positive"),
        (["--aws-account-id", "abc"], "--aws-account-id: aws_account_id: expected 12 digits"),
        (["--scheduler", "sched:7100"], "--scheduler: scheduler_url: must start with http:// or https://"),
        (["--scheduler", "https://sched:7100"], "needs scheduler_ca_file"),
        (["--label", "zone"], "--label 'zone': expected KEY=VALUE"),
        (["--label", "=x"], "--label '=x': expected KEY=VALUE"),
        (["--label", "rack id=r1"], "--label: labels: label key 'rack id'"),
    ],
)
def test_bad_flags_are_refused_naming_the_flag_and_key(argv: list[str], problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_config(argv, environ={})


def test_flags_override_toml(tmp_path: Path) -> None:
    argv = toml(tmp_path, 'node_id = "from-file"\nsync_wait_seconds = 2.0\nlisten = "127.0.0.1:7201"\n'
                          'cpuset_enabled = true\n[labels]\nzone = "z-file"\nrack = "r1"\n')
    config = load_config([*argv, "--node-id", "from-flag", "--sync-wait", "3", "--no-cpuset",
                          "--label", "zone=z-flag"], environ={})
    assert (config.node_id, config.sync_wait_seconds, config.cpuset_enabled) == ("from-flag", 3.0, False)
    assert config.listen == ("127.0.0.1", 7201)  # not given as a flag: the file's
    # Labels merge: a flag's label wins over the file's, the file's others stay, the defaults fill in.
    assert config.labels == {"zone": "z-flag", "rack": "r1", "instanceType": "local"}


def test_a_wrong_file_value_is_refused_even_if_a_flag_overrides_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="agent.toml: sync_wait_seconds: expected a number, got '5'"):
        load_config([*toml(tmp_path, 'sync_wait_seconds = "5"\n'), "--sync-wait", "3"], environ={})


def test_cross_field_checks_see_every_source(tmp_path: Path) -> None:
    argv = toml(tmp_path, 'network_provider = "aws"\naws_subnet_id = "subnet-1"\n')
    config = load_config([*argv, "--aws-instance-id", "i-1", "--aws-instance-type", "m5.24xlarge"], environ={})
    assert (config.network_provider, config.aws_subnet_id, config.aws_instance_type) == ("aws", "subnet-1", "m5.24xlarge")
    with pytest.raises(ConfigError, match="--aws-instance-type: aws_instance_type: no ENI/IP limits known"):
        load_config([*argv, "--aws-instance-id", "i-1", "--aws-instance-type", "x9.huge"], environ={})
    with pytest.raises(ConfigError, match="^network_provider aws needs aws_instance_id, aws_instance_type$"):
        load_config(argv, environ={})


def test_environment_between_toml_and_flags(tmp_path: Path) -> None:
    argv = toml(tmp_path, 'sync_wait_seconds = 2.0\nnode_id = "from-file"\ncpuset_enabled = true\n')
    env = {
        "TITUS_AGENT_SYNC_WAIT_SECONDS": "7",
        "TITUS_AGENT_NODE_ID": "from-env",
        "TITUS_AGENT_CPUSET_ENABLED": "false",
        "TITUS_AGENT_LISTEN": ":7301",
        "TITUS_AGENT_STATE_DIR": "/srv/titus",
        "TITUS_AGENT_NETWORK_ALLOWED_HOST_TCP_PORTS": "[53, 8053]",
        "TITUS_AGENT_LABELS": '{"rack": "r9"}',
        "TITUS_AGENT_RESERVED_CPUS": "",
        # Launcher variables (systemd unit, scripts/run-local.sh) are not keys: ignored, not refused.
        "TITUS_AGENT_OPTS": "--node-id x",
        "TITUS_AGENT_ARGS": "--no-cpuset",
    }
    config = load_config(argv, environ=env)
    assert (config.sync_wait_seconds, config.node_id, config.cpuset_enabled) == (7.0, "from-env", False)
    assert config.listen == ("127.0.0.1", 7301) and config.state_dir == Path("/srv/titus")
    assert config.network_allowed_host_tcp_ports == [53, 8053] and config.reserved_cpus == ""
    assert config.labels == {"rack": "r9", "zone": "local", "instanceType": "local"}
    flagged = load_config([*argv, "--node-id", "from-flag", "--sync-wait", "1"], environ=env)
    assert (flagged.node_id, flagged.sync_wait_seconds) == ("from-flag", 1.0)


@pytest.mark.parametrize(
    "env, problem",
    [
        ({"TITUS_AGENT_SYNC_WAIT_SECONDS": "soon"}, "TITUS_AGENT_SYNC_WAIT_SECONDS: sync_wait_seconds: expected a number, got 'soon'"),
        ({"TITUS_AGENT_SYNC_WAIT_SECONDS": "60"}, "TITUS_AGENT_SYNC_WAIT_SECONDS: sync_wait_seconds: must be in (0, 30]"),
        ({"TITUS_AGENT_ALWAYS_PULL": "sometimes"}, "TITUS_AGENT_ALWAYS_PULL: always_pull: expected true or false"),
        ({"TITUS_AGENT_NETWORK_ALLOWED_HOST_TCP_PORTS": "53"},
         "TITUS_AGENT_NETWORK_ALLOWED_HOST_TCP_PORTS: network_allowed_host_tcp_ports: expected a list, got '53'"),
        ({"TITUS_AGENT_LISTEN": "nowhere"}, "TITUS_AGENT_LISTEN: listen: expected HOST:PORT"),
    ],
)
def test_bad_environment_values_name_the_variable(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_config([], environ=env)


def test_model_built_in_code_is_checked_too() -> None:
    with pytest.raises(ValidationError):
        AgentConfig(node_id="n", sync_wait_seconds="5")  # type: ignore[arg-type]
    config = AgentConfig(node_id="n", state_dir=Path("/x"))
    with pytest.raises(ValidationError):
        config.sync_wait_seconds = 99
    config.network_provider = "local"
    check_network(config)
    bad = config.model_copy(update={"aws_account_id": "1"})  # model_copy does not validate
    with pytest.raises(ConfigError, match="aws_account_id: expected 12 digits"):
        check_network(bad)


def test_labels_leave_room_for_the_platforms_instance_id() -> None:
    from titus_common.jobspec import MAX_LABELS

    many = {f"k{i}": "v" for i in range(MAX_LABELS - 1)}
    assert len(AgentConfig(node_id="n", labels=many).labels) == MAX_LABELS - 1
    with pytest.raises(ValidationError, match=f"at most {MAX_LABELS - 1} labels.*instanceId"):
        AgentConfig(node_id="n", labels={**many, "one": "more"})
