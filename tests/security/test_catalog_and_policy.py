"""Loading profiles (good, broken, overlays), the owner allow-list, and submit-time validation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from security.profiles import (
    PROFILE_DIR,
    PolicyError,
    ProfileCatalog,
    SecurityPolicy,
    VariantGrant,
    default_policy,
    load_policy,
    parse_policy,
    validate_security_request,
)
from security.seccomp_profile import ProfileError
from tests.security.conftest import job


@pytest.fixture
def profile_dir(tmp_path: Path) -> Path:
    for p in PROFILE_DIR.glob("*.json"):
        shutil.copy(p, tmp_path / p.name)
    return tmp_path


def _edit(path: Path, change: Any) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "change,field,words",
    [
        (lambda d: d.pop("titus"), "titus", "header"),
        (lambda d: d["titus"].pop("provenance"), "titus.provenance", "missing"),
        (lambda d: d["titus"].update(version="1"), "titus.version", "integer"),
        (lambda d: d["titus"].update(name="other"), "titus.name", "file name"),
        (lambda d: d.update(defaultAction="SCMP_ACT_ALLOW"), "defaultAction", "allow-by-default"),
        (lambda d: d.update(surprise=1), "surprise", "unknown field"),
        (lambda d: d["syscalls"][3].update(names=[]), "syscalls[3].names", "empty"),
        (
            lambda d: d["syscalls"][2]["args"][0].update(op="SCMP_CMP_LIKE"),
            "syscalls[2].args[0].op",
            "unknown comparison",
        ),
        (lambda d: d["syscalls"][2]["args"][0].update(index=6), "syscalls[2].args[0].index", "out of range"),
        (lambda d: d["syscalls"][1]["includes"].update(minKernel="four"), "syscalls[1].includes.minKernel", "match"),
        (lambda d: d["syscalls"][1].update(includes={"arches": ["vax"]}), "syscalls[1].includes.arches[0]", "vax"),
        (lambda d: d["syscalls"][0].update(errnoRet=5), "syscalls[0].errnoRet", "SCMP_ACT_ERRNO"),
        (lambda d: d["archMap"][0].update(architecture="x86_64"), "archMap[0].architecture", "SCMP_ARCH_"),
    ],
)
def test_schema_errors_name_file_and_field(profile_dir: Path, change: Any, field: str, words: str) -> None:
    _edit(profile_dir / "default.json", change)
    catalog = ProfileCatalog.load(profile_dir)
    err = catalog.broken["default"]
    assert err.file.endswith("default.json") and err.field == field and words in err.message, str(err)
    # The variants built on a broken base are unusable too, and say why.
    assert "base 'default' is unusable" in str(catalog.broken["perf"])


def test_unparseable_file_is_kept_as_broken_not_fatal(profile_dir: Path) -> None:
    (profile_dir / "perf.json").write_text('{"titus": {"name": "perf",')
    catalog = ProfileCatalog.load(profile_dir)
    assert "not valid JSON" in str(catalog.broken["perf"]) and "perf.json" in str(catalog.broken["perf"])
    assert "default" in catalog.profiles and "fuse" in catalog.profiles
    problems = validate_security_request(
        job({"seccomp": "perf"}), SecurityPolicy(catalog, open_variants=frozenset({"default", "perf"}))
    )
    assert problems and problems[0][0] == "container.securityAttributes.seccomp"
    assert "cannot be used" in problems[0][1] and "not valid JSON" in problems[0][1]


def test_overlay_errors(profile_dir: Path) -> None:
    _edit(profile_dir / "perf.json", lambda d: d["titus"].update(extends="nothing"))
    _edit(profile_dir / "fuse.json", lambda d: d.update(defaultAction="SCMP_ACT_ERRNO"))
    catalog = ProfileCatalog.load(profile_dir)
    assert "no profile named 'nothing'" in str(catalog.broken["perf"])
    assert catalog.broken["fuse"].field == "defaultAction"  # overlays add rules, they do not redefine


def test_overlay_cycle(profile_dir: Path) -> None:
    _edit(profile_dir / "perf.json", lambda d: d["titus"].update(extends="fuse"))
    _edit(profile_dir / "fuse.json", lambda d: d["titus"].update(extends="perf"))
    catalog = ProfileCatalog.load(profile_dir)
    assert "cycle" in str(catalog.broken["perf"]) and "cycle" in str(catalog.broken["fuse"])


def test_get_raises_for_unknown_and_broken(profile_dir: Path) -> None:
    (profile_dir / "perf.json").write_text("[]")
    catalog = ProfileCatalog.load(profile_dir)
    with pytest.raises(KeyError):
        catalog.get("nope")
    with pytest.raises(ProfileError):
        catalog.get("perf")


# ---- policy file ---------------------------------------------------------------------------------

POLICY = {
    "version": 1,
    "apparmorUnavailable": "allow-unconfined-with-warning",
    "openVariants": ["default"],
    "variants": {
        "perf": [{"owner": "perf-team@example.com"}, {"app": "profiler-*"}],
        "fuse": [{"owner": "storage@example.com", "app": "s3fs-*"}],
    },
}


def test_policy_file_round_trip(tmp_path: Path, catalog: ProfileCatalog) -> None:
    path = tmp_path / "security-policy.json"
    path.write_text(json.dumps(POLICY))
    policy = load_policy(path, catalog)
    assert policy.apparmor_unavailable == "allow-unconfined-with-warning"
    assert policy.grants["perf"] == (VariantGrant(owner="perf-team@example.com"), VariantGrant(app="profiler-*"))
    assert policy.may_use("perf", "perf-team@example.com", "anything")
    assert policy.may_use("perf", "bob@example.com", "profiler-x")
    assert not policy.may_use("perf", "bob@example.com", "web")
    assert policy.may_use("fuse", "storage@example.com", "s3fs-a") and not policy.may_use(
        "fuse", "storage@example.com", "web"
    )
    assert policy.may_use("default", "anyone", "any")


@pytest.mark.parametrize(
    "change,field",
    [
        (lambda d: d.update(version=2), "version"),
        (lambda d: d.update(apparmorUnavailable="ignore"), "apparmorUnavailable"),
        (lambda d: d.update(extra=True), "extra"),
        (lambda d: d["variants"].update(gpu=[{"owner": "x"}]), "variants.gpu"),
        (lambda d: d["variants"].update(perf=[{"owner": "*"}]), "variants.perf[0]"),
        (lambda d: d["variants"].update(perf=[{"team": "x"}]), "variants.perf[0]"),
        (lambda d: d["variants"].update(perf=[{"owner": ""}]), "variants.perf[0].owner"),
        (lambda d: d.update(openVariants=["default", "nope"]), "openVariants[1]"),
    ],
)
def test_policy_errors_name_the_field(catalog: ProfileCatalog, change: Any, field: str) -> None:
    doc = json.loads(json.dumps(POLICY))
    change(doc)
    with pytest.raises(PolicyError) as e:
        parse_policy(doc, catalog, "policy.json")
    assert e.value.field == field and str(e.value).startswith("policy.json: ")


@pytest.mark.parametrize(
    "doc,field,message",
    [
        ([], "", "must be a JSON object"),
        ({}, "version", "must be 1"),
        ({"version": "1"}, "version", "must be 1"),
        ({"version": 1, "openVariants": "default"}, "openVariants", "must be a list of profile names"),
        ({"version": 1, "openVariants": [1]}, "openVariants", "must be a list of profile names"),
        ({"version": 1, "variants": []}, "variants", "must be an object"),
        ({"version": 1, "variants": {"perf": {"owner": "x"}}}, "variants.perf", "must be a list of {owner, app} grants"),
        ({"version": 1, "variants": {"perf": ["x"]}}, "variants.perf[0]", "a grant is an object"),
        ({"version": 1, "variants": {"perf": [{}]}}, "variants.perf[0]", "a grant is an object"),
        ({"version": 1, "variants": {"perf": [{"owner": 5}]}}, "variants.perf[0].owner", "must be a non-empty string"),
        ({"version": 2, "extra": 1}, "extra", "unknown field"),  # the unknown field first: it may explain the rest
    ],
)
def test_policy_shape_errors_name_the_field(catalog: ProfileCatalog, doc: Any, field: str, message: str) -> None:
    with pytest.raises(PolicyError) as e:
        parse_policy(doc, catalog, "policy.json")
    assert (e.value.file, e.value.field) == ("policy.json", field) and message in e.value.message


def test_policy_defaults(catalog: ProfileCatalog) -> None:
    policy = parse_policy({"version": 1}, catalog, "policy.json")
    assert policy.open_variants == frozenset({"default"}) and policy.apparmor_unavailable == "refuse"
    assert dict(policy.grants) == {} and policy.source == "policy.json"


def test_policy_file_not_json(tmp_path: Path, catalog: ProfileCatalog) -> None:
    (tmp_path / "p.json").write_text("{")
    with pytest.raises(PolicyError, match="not valid JSON"):
        load_policy(tmp_path / "p.json", catalog)


# ---- submit-time validation -----------------------------------------------------------------------


@pytest.fixture
def policy(catalog: ProfileCatalog) -> SecurityPolicy:
    return parse_policy(POLICY, catalog)


def test_plain_job_is_fine(policy: SecurityPolicy) -> None:
    assert validate_security_request(job(), policy) == []
    assert validate_security_request(job({"seccomp": "default", "apparmor": "required"}), policy) == []


@pytest.mark.parametrize(
    "attrs,field,words",
    [
        ({"seccomp": "gpu"}, "seccomp", "unknown seccomp profile 'gpu'"),
        ({"seccomp": "unconfined"}, "seccomp", "without a seccomp profile"),
        ({"seccomp": "perf"}, "seccomp", "not allowed the 'perf' variant"),
        ({"privileged": "true"}, "privileged", "privileged containers are not offered"),
        ({"hostNetwork": "true"}, "hostNetwork", "host networking"),
        ({"pidMode": "host"}, "pidMode", "namespaces are set by the platform"),
        ({"host_pid": "true"}, "host_pid", "host PID namespace"),
        ({"capAdd": "SYS_ADMIN"}, "capAdd", "capabilities"),
        ({"securityOpt": "apparmor=unconfined"}, "securityOpt", "raw Docker security options"),
        ({"apparmor": "unconfined"}, "apparmor", "cannot be turned off"),
        ({"apparmor": "maybe"}, "apparmor", "'required' or 'preferred'"),
        ({"userNamespace": "off"}, "userNamespace", "cannot be turned off"),
        ({"colour": "blue"}, "colour", "unknown security attribute"),
    ],
)
def test_refusals_name_the_attribute(policy: SecurityPolicy, attrs: dict[str, str], field: str, words: str) -> None:
    problems = validate_security_request(job(attrs), policy)
    assert problems, attrs
    assert problems[0][0] == f"container.securityAttributes.{field}" and words in problems[0][1], problems


def test_privileged_false_is_harmless(policy: SecurityPolicy) -> None:
    assert validate_security_request(job({"privileged": "false"}), policy) == []


def test_owner_allow_list(policy: SecurityPolicy) -> None:
    assert validate_security_request(job({"seccomp": "perf"}, owner="perf-team@example.com"), policy) == []
    assert validate_security_request(job({"seccomp": "perf"}, app="profiler-1"), policy) == []
    assert validate_security_request(job({"seccomp": "fuse"}, owner="storage@example.com", app="s3fs-x"), policy) == []
    assert validate_security_request(job({"seccomp": "fuse"}, owner="storage@example.com", app="web"), policy)


def test_default_policy_offers_only_default(catalog: ProfileCatalog) -> None:
    policy = default_policy(catalog)
    assert validate_security_request(job(), policy) == []
    assert validate_security_request(job({"seccomp": "perf"}), policy)
    assert policy.apparmor_unavailable == "refuse"
