"""Launch-time resolution (attributes + policy + posture -> decision) and the HostConfig it yields."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import docker
import pytest

from security.capabilities import (
    DEFAULT_CAPABILITIES,
    DOCKER_DEFAULT_CAPABILITIES,
)
from security.hardening import (
    DOCKER_MASKED_PATHS,
    DOCKER_READONLY_PATHS,
    MASKED_PATHS,
    READONLY_PATHS,
    BindRefused,
    audit_host_config,
    bind_problems,
    hardening_options,
)
from security.posture import HostPosture
from security.profiles import (
    ProfileCatalog,
    SecurityDecision,
    SecurityPolicy,
    SecurityRefused,
    parse_policy,
    resolve_security,
)
from tests.security.conftest import job
from titus_common.jobspec import JobSpec

# create_host_config only needs an API version; no engine is contacted.
make_host_config = docker.APIClient(version="1.41").create_host_config


def resolve(spec: JobSpec, policy: SecurityPolicy, posture: HostPosture) -> SecurityDecision:
    return resolve_security(spec.container, policy, posture, owner=spec.owner, app=spec.app_name)


@pytest.fixture
def policy(catalog: ProfileCatalog) -> SecurityPolicy:
    return parse_policy(
        {"version": 1, "variants": {"perf": [{"owner": "perf@x"}], "fuse": [{"owner": "fuse@x"}]}}, catalog
    )


def test_default_decision_on_this_kind_of_host(policy: SecurityPolicy, plain: HostPosture) -> None:
    d = resolve(job(), policy, plain)
    assert d.variant == "default" and d.capabilities == DEFAULT_CAPABILITIES
    assert d.apparmor_profile is None and d.apparmor_status == "unavailable"
    assert any("AppArmor not enforced" in w for w in d.warnings)
    opts = d.security_opt()
    assert opts[0] == "no-new-privileges:true" and opts[1].startswith("seccomp={")
    assert not any(o.startswith("apparmor=") for o in opts)  # never pretend: Docker would drop it silently
    assert json.loads(opts[1].removeprefix("seccomp="))["defaultAction"] == "SCMP_ACT_ERRNO"
    status = d.to_json()
    assert status["apparmor"] == "unavailable" and status["seccompDigest"].startswith("sha256:")


def test_apparmor_is_named_where_enforced(policy: SecurityPolicy, hardened: HostPosture) -> None:
    if not hardened.apparmor.enforceable:
        pytest.skip("apparmor_parser missing")
    d = resolve(job({"seccomp": "perf"}, owner="perf@x"), policy, hardened)
    assert d.apparmor_profile == "titus-perf" and "apparmor=titus-perf" in d.security_opt()


def test_refusals_at_launch(policy: SecurityPolicy, plain: HostPosture) -> None:
    with pytest.raises(SecurityRefused) as e:
        resolve(job({"apparmor": "required"}), policy, plain)
    assert e.value.problems[0][0] == "host" and "cannot enforce" in e.value.problems[0][1]
    with pytest.raises(SecurityRefused):  # fuse needs AppArmor to limit mount(2) to FUSE
        resolve(job({"seccomp": "fuse"}, owner="fuse@x"), policy, plain)
    with pytest.raises(SecurityRefused):  # the allow-list is re-checked at launch
        resolve(job({"seccomp": "perf"}), policy, plain)


def test_allow_unconfined_with_warning(catalog: ProfileCatalog, plain: HostPosture) -> None:
    lenient = parse_policy({"version": 1, "apparmorUnavailable": "allow-unconfined-with-warning"}, catalog)
    d = resolve(job({"apparmor": "required"}), lenient, plain)
    assert d.apparmor_profile is None and any("UNCONFINED" in w for w in d.warnings)


def test_fuse_decision_grants_sys_admin_and_dev_fuse_only(policy: SecurityPolicy, hardened: HostPosture) -> None:
    if not hardened.apparmor.enforceable:
        pytest.skip("apparmor_parser missing")
    d = resolve(job({"seccomp": "fuse"}, owner="fuse@x"), policy, hardened)
    assert "CAP_SYS_ADMIN" in d.capabilities and d.devices == ("/dev/fuse",)
    assert "setns" not in d.seccomp_json and '"mount"' in d.seccomp_json
    hc = hardening_options(d, memory_mib=128).host_config(make_host_config)
    assert hc["Devices"][0]["PathOnHost"] == "/dev/fuse"


def test_host_config(policy: SecurityPolicy, plain: HostPosture) -> None:
    d = resolve(job(), policy, plain)
    hc = hardening_options(d, memory_mib=256).host_config(make_host_config)
    assert hc["CapDrop"] == ["ALL"] and hc["CapAdd"] == list(DEFAULT_CAPABILITIES)
    assert hc["Memory"] == hc["MemorySwap"] == 256 * 1024 * 1024 and hc["PidsLimit"] > 0
    assert hc["MaskedPaths"] == list(MASKED_PATHS) and hc["ReadonlyPaths"] == list(READONLY_PATHS)
    assert set(DOCKER_MASKED_PATHS) < set(MASKED_PATHS) and set(DOCKER_READONLY_PATHS) < set(READONLY_PATHS)
    assert not hc.get("Privileged")
    assert audit_host_config(hc) == []
    assert not {"CAP_NET_RAW", "CAP_MKNOD", "CAP_SYS_CHROOT"} & set(hc["CapAdd"])
    assert set(DEFAULT_CAPABILITIES) < set(DOCKER_DEFAULT_CAPABILITIES)


def test_limits_are_mandatory(policy: SecurityPolicy, plain: HostPosture) -> None:
    d = resolve(job(), policy, plain)
    with pytest.raises(ValueError):
        hardening_options(d, memory_mib=0)
    with pytest.raises(ValueError):
        hardening_options(d, memory_mib=64, pids_limit=0)


@pytest.mark.parametrize(
    "mutation,words",
    [
        ({"Privileged": True}, "Privileged"),
        ({"PidMode": "host"}, "PidMode is host"),
        ({"NetworkMode": "host"}, "NetworkMode is host"),
        ({"CapDrop": ["NET_RAW"]}, "CapDrop"),
        ({"SecurityOpt": ["seccomp=unconfined", "no-new-privileges:true"]}, "seccomp is unconfined"),
        ({"SecurityOpt": []}, "no-new-privileges"),
        ({"PidsLimit": 0}, "pids"),
        ({"Memory": 0}, "memory"),
        ({"MaskedPaths": []}, "MaskedPaths"),
        ({"Binds": ["/var/run/docker.sock:/var/run/docker.sock"]}, "/run/docker.sock"),
        ({"Mounts": [{"Type": "bind", "Source": "/var/lib/docker", "Target": "/x"}]}, "/var/lib/docker"),
    ],
)
def test_audit_catches_undone_hardening(
    policy: SecurityPolicy, plain: HostPosture, mutation: dict[str, object], words: str
) -> None:
    hc = hardening_options(resolve(job(), policy, plain), memory_mib=64).host_config(make_host_config)
    hc.update(mutation)
    problems = audit_host_config(hc)
    assert any(words in p for p in problems), problems


def test_bind_checks(tmp_path: Path) -> None:
    sock_path = tmp_path / "engine.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock_path))
    try:
        data = tmp_path / "data"
        data.mkdir()
        (tmp_path / "sneaky").symlink_to("/run")
        assert bind_problems([f"{data}:/data:ro"]) == []
        assert bind_problems({str(data): {"bind": "/data", "mode": "rw"}}) == []
        for bad in (
            "/var/run/docker.sock:/s",
            "/:/host",
            "/var:/v",
            f"{tmp_path}/sneaky:/r",
            "/proc:/p",
            f"{sock_path}:/s",
            "myvolume:/v",
            "/var/lib/docker/overlay2:/o",
        ):
            assert bind_problems([bad]), bad
    finally:
        s.close()


def test_hardening_refuses_bad_binds(policy: SecurityPolicy, plain: HostPosture) -> None:
    with pytest.raises(BindRefused, match="docker.sock"):
        hardening_options(resolve(job(), policy, plain), memory_mib=64, binds=["/run/docker.sock:/d.sock"])


def test_without_owner_the_agent_trusts_admission(policy: SecurityPolicy, plain: HostPosture) -> None:
    """TaskAssignment carries no owner/app: the allow-list was the scheduler's check at submit time;
    everything else (attributes, profile, posture) is still checked at launch."""
    spec = job({"seccomp": "perf"})
    assert resolve_security(spec.container, policy, plain).variant == "perf"
    with pytest.raises(SecurityRefused):
        resolve_security(job({"seccomp": "nope"}).container, policy, plain)
    with pytest.raises(SecurityRefused):
        resolve_security(job({"privileged": "true"}).container, policy, plain)


def test_pids_limit_leaves_the_host_most_of_its_pids(tmp_path: Path) -> None:
    from security.hardening import DEFAULT_PIDS_LIMIT, host_pids_limit

    def limit(pid_max: str) -> int:
        f = tmp_path / f"pid_max_{pid_max or 'empty'}"
        f.write_text(pid_max)
        return host_pids_limit.__wrapped__(f)

    assert limit("4194304\n") == DEFAULT_PIDS_LIMIT  # systemd's 64-bit default: the plain cap
    assert limit("32768\n") == 4096  # the kernel's default: one task gets an eighth
    assert limit("") == DEFAULT_PIDS_LIMIT // 8  # unreadable: the conservative side
    assert host_pids_limit.__wrapped__(tmp_path / "missing") == DEFAULT_PIDS_LIMIT // 8
