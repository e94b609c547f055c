"""Host posture from engine info + host files, the posture check, AppArmor profiles and detection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from security import apparmor
from security.attributes import SecurityRequest
from security.posture import HostPosture, check_posture, parse_security_options, read_id_range
from tests.security.hosts import ENGINE_HARDENED, ENGINE_PLAIN, fake_posture


def test_this_hosts_shape(tmp_path: Path) -> None:
    p = fake_posture(ENGINE_PLAIN, tmp_path, apparmor_on=False)
    assert p.seccomp_enforceable and p.cgroup_version == 1 and p.kernel_version == "6.18.44"
    assert not p.apparmor.enforceable and "no AppArmor" in p.apparmor.reason
    assert not p.userns.remapped and p.userns.kernel_user_namespaces
    assert not p.no_new_privileges_default
    doc = json.loads(p.to_json_text())
    assert doc["apparmor"]["enforceable"] is False and doc["userns"]["remapped"] is False
    assert doc["seccompEnforceable"] is True and "kernelVersion" in doc


def test_hardened_host(tmp_path: Path) -> None:
    p = fake_posture(ENGINE_HARDENED, tmp_path, apparmor_on=True, remap_user="default")
    assert p.cgroup_version == 2 and p.no_new_privileges_default and p.apparmor_engine
    assert p.userns.remapped and p.userns.remap_user == "dockremap"
    assert (p.userns.root_uid, p.userns.root_gid) == (165536, 165536)
    assert p.userns.subuid is not None and p.userns.subuid.count == 65536
    # apparmor_parser is installed on this machine, so a host with the kernel module is enforceable
    assert p.apparmor.enforceable == (apparmor.parser_path() is not None)


def test_userns_mapping_that_disagrees_with_subuid(tmp_path: Path) -> None:
    p = fake_posture(ENGINE_HARDENED, tmp_path, apparmor_on=False, remap_user="default", subuid_start=300000)
    assert not p.userns.remapped and p.userns.problem and "/etc/subuid" in p.userns.problem


def test_parse_security_options_and_id_ranges(tmp_path: Path) -> None:
    assert parse_security_options(["name=seccomp,profile=default", "name=userns"]) == {
        "seccomp": {"profile": "default"},
        "userns": {},
    }
    (tmp_path / "subuid").write_text("garbage\nbob:1:2\n")
    assert read_id_range(tmp_path / "subuid", "bob") is not None
    assert read_id_range(tmp_path / "subuid", "alice") is None
    assert read_id_range(tmp_path / "missing", "bob") is None


def test_check_posture_plain_host(plain: HostPosture) -> None:
    v = check_posture(plain, SecurityRequest())
    assert v.ok and not v.apparmor_enforced
    assert any("AppArmor not enforced" in w for w in v.warnings)  # recorded, not silent
    assert any("host root" in w for w in v.warnings)

    refused = check_posture(plain, SecurityRequest(apparmor="required"))
    assert not refused.ok and "requires AppArmor" in refused.problems[0]

    fuse = check_posture(plain, SecurityRequest(variant="fuse"), variant_requires_apparmor=True)
    assert not fuse.ok and "'fuse' is only safe under AppArmor" in fuse.problems[0]

    allowed = check_posture(
        plain, SecurityRequest(apparmor="required"), apparmor_unavailable="allow-unconfined-with-warning"
    )
    assert allowed.ok and any("UNCONFINED" in w for w in allowed.warnings)

    assert not check_posture(plain, SecurityRequest(user_namespace="required")).ok


def test_check_posture_hardened_host(hardened: HostPosture) -> None:
    if not hardened.apparmor.enforceable:
        pytest.skip("apparmor_parser missing")
    v = check_posture(
        hardened,
        SecurityRequest(variant="fuse", apparmor="required", user_namespace="required"),
        variant_requires_apparmor=True,
    )
    assert v.ok and v.apparmor_enforced and v.warnings == ()


def test_no_seccomp_no_jobs(tmp_path: Path) -> None:
    info: dict[str, Any] = {**ENGINE_PLAIN, "SecurityOptions": []}
    p = fake_posture(info, tmp_path, apparmor_on=False)
    assert not check_posture(p, SecurityRequest()).ok


# ---- AppArmor ------------------------------------------------------------------------------------

needs_parser = pytest.mark.skipif(apparmor.parser_path() is None, reason="apt-get install apparmor")


@needs_parser
@pytest.mark.parametrize("variant", ["default", "perf", "fuse"])
def test_generated_profiles_pass_apparmor_parser(variant: str) -> None:
    text = apparmor.render_profile(variant)
    assert f"profile titus-{variant} " in text and "$" not in text
    result = apparmor.validate_profile(text)
    assert result.ok, result.output


@needs_parser
def test_parser_rejects_a_broken_profile() -> None:
    text = apparmor.render_profile("default").replace("  capability,", "  capability frobnicate,")
    result = apparmor.validate_profile(text)
    assert not result.ok and result.returncode != 0 and "line" in result.output.lower()


def test_profiles_carry_the_denials() -> None:
    default = apparmor.render_profile("default")
    for rule in (
        "deny @{PROC}/sysrq-trigger rwklx,",
        "deny @{PROC}/sys/** w,",
        "deny mount,",
        "ptrace (trace,read,tracedby,readby) peer=titus-default,",
        "deny /sys/firmware/** rwklx,",
    ):
        assert rule in default
    fuse = apparmor.render_profile("fuse")
    assert "deny mount," not in fuse and "mount fstype=fuse -> /**," in fuse


def test_detect_support_on_this_kernel() -> None:
    support = apparmor.detect_support()
    on = Path("/sys/module/apparmor/parameters/enabled")
    if not on.exists():
        assert not support.enforceable and "no AppArmor" in support.reason


def test_confinement_of_reads_the_label(tmp_path: Path) -> None:
    (tmp_path / "42" / "attr" / "apparmor").mkdir(parents=True)
    (tmp_path / "42" / "attr" / "apparmor" / "current").write_text("titus-default (enforce)\n")
    assert apparmor.confinement_of(42, tmp_path) == "titus-default (enforce)"
    assert apparmor.confinement_of(43, tmp_path) is None


def test_agent_refuses_an_engine_without_userns_remap() -> None:
    from security.posture import UsernsPosture, userns_start_problem

    assert userns_start_problem(UsernsPosture(remapped=True, remap_user="dockremap"), required=True) is None
    problem = userns_start_problem(UsernsPosture(remapped=False), required=True)
    assert problem is not None and "container root would be host root" in problem and "--allow-no-userns" in problem
    broken = UsernsPosture(remapped=False, problem="engine reports userns but DockerRootDir does not name it")
    assert "DockerRootDir" in (userns_start_problem(broken, required=True) or "")
    assert userns_start_problem(UsernsPosture(remapped=False), required=False) is None
