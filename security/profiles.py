"""Profile catalog, the owner allow-list for variants, and turning a job's security attributes into
concrete Docker options.

Two entry points for the rest of the platform:
- `validate_security_request(spec, policy)`: pure, for the scheduler at submit time. Returns
  `[(field, message)]`; non-empty means refuse the job (unknown/broken profile, variant not allowed
  for this owner/app, privileged or host namespaces asked for).
- `resolve_security(container, policy, posture, owner=, app=)`: for the agent's security step at
  launch. Returns a `SecurityDecision` (seccomp JSON + digest, AppArmor profile or the recorded
  reason there is none, capabilities, devices, warnings) or raises `SecurityRefused`.
"""

from __future__ import annotations

import fnmatch
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from security import apparmor
from security.attributes import (
    FIELD_PREFIX,
    SecurityRequest,
    parse_security_attributes,
)
from security.capabilities import DEFAULT_CAPABILITIES
from security.errors import DataFileError
from security.posture import (
    APPARMOR_MODES,
    AppArmorUnavailableMode,
    HostPosture,
    check_posture,
)
from security.seccomp_profile import (
    PROFILE_NAME,
    ProfileDocument,
    ProfileError,
    SeccompProfile,
    apply_overlay,
    full_profile,
    read_profile_document,
)
from titus_common.config import location
from titus_common.jobspec import ContainerSpec, JobSpec

PROFILE_DIR = Path(__file__).parent / "seccomp"
OPEN_VARIANTS_DEFAULT: frozenset[str] = frozenset({"default"})


# ---- catalog -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileCatalog:
    """Every profile in a directory. A file that fails to load is kept in `broken` with its error, so
    a job naming it is refused with the reason, and the other profiles still work."""

    profiles: Mapping[str, SeccompProfile]
    broken: Mapping[str, ProfileError]
    directory: str = ""

    @property
    def names(self) -> list[str]:
        return sorted({*self.profiles, *self.broken})

    def get(self, name: str) -> SeccompProfile:
        if name in self.profiles:
            return self.profiles[name]
        if name in self.broken:
            raise self.broken[name]
        raise KeyError(name)

    @classmethod
    def load(cls, directory: Path = PROFILE_DIR) -> ProfileCatalog:
        docs: dict[str, ProfileDocument] = {}
        broken: dict[str, ProfileError] = {}
        for path in sorted(directory.glob("*.json")):
            if not PROFILE_NAME.match(path.stem):
                broken[path.stem] = ProfileError(str(path), "", "file name is not a valid profile name")
                continue
            try:
                docs[path.stem] = read_profile_document(path)
            except ProfileError as e:
                broken[path.stem] = e
        profiles: dict[str, SeccompProfile] = {}

        def resolve(name: str, chain: tuple[str, ...]) -> SeccompProfile:
            if name in profiles:
                return profiles[name]
            if name in broken:
                raise broken[name]
            doc = docs.get(name)
            if doc is None:
                raise ProfileError(str(directory / f"{chain[-1]}.json"), "titus.extends", f"no profile named {name!r}")
            if name in chain:
                raise ProfileError(doc.file, "titus.extends", f"cycle: {' -> '.join((*chain, name))}")
            if doc.header.extends is None:
                result = full_profile(doc)
            else:
                try:
                    base = resolve(doc.header.extends, (*chain, name))
                except ProfileError as e:
                    raise ProfileError(
                        doc.file, "titus.extends", f"base {doc.header.extends!r} is unusable ({e})"
                    ) from None
                result = apply_overlay(base, doc)
            profiles[name] = result
            return result

        for name in docs:
            try:
                resolve(name, ())
            except ProfileError as e:
                broken[name] = e
        return cls(profiles=profiles, broken=broken, directory=str(directory))


# ---- owner allow-list ----------------------------------------------------------------------------


class PolicyError(DataFileError):
    """A policy file that cannot be used; `file` and `field` say where."""


@dataclass(frozen=True)
class VariantGrant:
    """Owners and apps matching these globs (both must match) may use the variant."""

    owner: str = "*"
    app: str = "*"

    def matches(self, owner: str, app: str) -> bool:
        return fnmatch.fnmatchcase(owner, self.owner) and fnmatch.fnmatchcase(app, self.app)


@dataclass(frozen=True)
class SecurityPolicy:
    catalog: ProfileCatalog
    grants: Mapping[str, tuple[VariantGrant, ...]] = field(default_factory=dict)
    open_variants: frozenset[str] = OPEN_VARIANTS_DEFAULT  # usable by every job
    apparmor_unavailable: AppArmorUnavailableMode = "refuse"
    source: str = "<built-in>"

    def may_use(self, variant: str, owner: str, app: str) -> bool:
        if variant in self.open_variants:
            return True
        return any(g.matches(owner, app) for g in self.grants.get(variant, ()))


POLICY_EXAMPLE = """{
  "version": 1,
  "apparmorUnavailable": "refuse",
  "openVariants": ["default"],
  "variants": {
    "perf": [{"owner": "perf-team@example.com"}, {"owner": "*", "app": "profiler-*"}],
    "fuse": [{"owner": "storage@example.com", "app": "s3fs-*"}]
  }
}"""


_GRANT_SHAPE = "a grant is an object with 'owner' and/or 'app' (glob patterns)"
_POLICY_FIELDS = ("version", "apparmorUnavailable", "openVariants", "variants")


class _GrantDoc(BaseModel):
    """One entry of `variants.<name>`: owner and app globs, at least one of them given."""

    model_config = ConfigDict(strict=True, extra="forbid")

    owner: str = Field("*", min_length=1)
    app: str = Field("*", min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, value: Any) -> Any:
        if not isinstance(value, dict) or not value:
            raise ValueError(_GRANT_SHAPE)
        return value

    @model_validator(mode="after")
    def _not_everyone(self) -> _GrantDoc:
        if self.owner == "*" and self.app == "*":
            raise ValueError("grants everyone; list the variant in openVariants instead")
        return self


class _PolicyDoc(BaseModel):
    """The policy file's shape (POLICY_EXAMPLE); profile names are checked against the catalog after."""

    model_config = ConfigDict(strict=True, extra="forbid")

    version: Literal[1]
    apparmor_unavailable: AppArmorUnavailableMode = Field("refuse", alias="apparmorUnavailable")
    open_variants: list[str] = Field(default_factory=lambda: ["default"], alias="openVariants")
    variants: dict[str, list[_GrantDoc]] = Field(default_factory=dict)


def _policy_problem(file: str, errors: list[ErrorDetails]) -> PolicyError:
    """The first problem (an unknown top-level field first, as it may explain the rest) as a
    PolicyError naming the field in the file's own terms."""
    err = min(errors, key=lambda e: not (e["type"] == "extra_forbidden" and len(e["loc"]) == 1))
    loc = err["loc"]
    top = str(loc[0]) if loc else ""
    if not loc:
        return PolicyError(file, "", "must be a JSON object")
    if len(loc) == 1 and err["type"] == "extra_forbidden":
        return PolicyError(file, top, f"unknown field (allowed: {', '.join(sorted(_POLICY_FIELDS))})")
    if top == "version":
        return PolicyError(file, "version", "must be 1")
    if top == "apparmorUnavailable":
        mode = err.get("input")
        return PolicyError(file, top, f"must be one of {', '.join(APPARMOR_MODES)}, not {mode!r}")
    if top == "openVariants":
        return PolicyError(file, top, "must be a list of profile names")
    if len(loc) == 1:  # variants
        return PolicyError(file, top, "must be an object: variant name -> list of grants")
    if len(loc) == 2:
        return PolicyError(file, location(loc), "must be a list of {owner, app} grants")
    grant = location(loc[:3])
    if len(loc) == 3:  # the grant itself: not an object, empty, or everyone
        ctx_error = err.get("ctx", {}).get("error")
        return PolicyError(file, grant, str(ctx_error) if ctx_error is not None else _GRANT_SHAPE)
    if err["type"] == "extra_forbidden":
        return PolicyError(file, grant, _GRANT_SHAPE)
    return PolicyError(file, location(loc), "must be a non-empty string")


def parse_policy(data: Any, catalog: ProfileCatalog, file: str = "<policy>") -> SecurityPolicy:
    """The policy file format is POLICY_EXAMPLE. Unknown fields and unknown variants are errors."""
    try:
        doc = _PolicyDoc.model_validate(data)
    except ValidationError as e:
        raise _policy_problem(file, e.errors()) from None
    known = set(catalog.names)
    for i, v in enumerate(doc.open_variants):
        if v not in known:
            raise PolicyError(file, f"openVariants[{i}]", f"no profile named {v!r} in {catalog.directory}")
    for variant in doc.variants:
        if variant not in known:
            raise PolicyError(file, f"variants.{variant}", f"no profile named {variant!r} in {catalog.directory}")
    return SecurityPolicy(
        catalog=catalog,
        grants={
            variant: tuple(VariantGrant(owner=g.owner, app=g.app) for g in grants)
            for variant, grants in doc.variants.items()
        },
        open_variants=frozenset(doc.open_variants),
        apparmor_unavailable=doc.apparmor_unavailable,
        source=file,
    )


def load_policy(path: Path, catalog: ProfileCatalog | None = None) -> SecurityPolicy:
    catalog = catalog or ProfileCatalog.load()
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise PolicyError(str(path), "", f"cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise PolicyError(str(path), "", f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    return parse_policy(data, catalog, str(path))


def default_policy(catalog: ProfileCatalog | None = None) -> SecurityPolicy:
    """No policy file: only the open variants (default) for everyone, refuse where AppArmor is needed."""
    return SecurityPolicy(catalog=catalog or ProfileCatalog.load())


# ---- submit time ---------------------------------------------------------------------------------


def _variant_problems(request: SecurityRequest, owner: str, app: str, policy: SecurityPolicy) -> list[tuple[str, str]]:
    path = f"{FIELD_PREFIX}.seccomp"
    try:
        policy.catalog.get(request.variant)
    except KeyError:
        available = ", ".join(policy.catalog.profiles) or "none"
        return [(path, f"unknown seccomp profile {request.variant!r} (available: {available})")]
    except ProfileError as e:
        return [(path, f"seccomp profile {request.variant!r} cannot be used: {e}")]
    if not policy.may_use(request.variant, owner, app):
        return [
            (
                path,
                f"owner {owner!r} (app {app!r}) is not allowed the {request.variant!r} variant; "
                "the platform team grants variants per owner/app",
            )
        ]
    return []


def validate_security_attributes(
    attributes: Mapping[str, str], owner: str, app: str, policy: SecurityPolicy
) -> list[tuple[str, str]]:
    request, problems = parse_security_attributes(attributes)
    if not problems:
        problems += _variant_problems(request, owner, app, policy)
    return problems


def validate_security_request(spec: JobSpec, policy: SecurityPolicy) -> list[tuple[str, str]]:
    """Submit-time check (pure: no host, no engine). Empty list = acceptable."""
    return validate_security_attributes(spec.container.security_attributes, spec.owner, spec.app_name, policy)


# ---- launch time ---------------------------------------------------------------------------------


class SecurityRefused(Exception):
    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {m}" if f else m for f, m in problems))
        self.problems = problems


@dataclass(frozen=True)
class SecurityDecision:
    """Everything the container step needs, and everything worth recording about the task's confinement."""

    variant: str
    seccomp_profile: SeccompProfile  # capability conditions already evaluated
    seccomp_json: str
    seccomp_digest: str
    capabilities: tuple[str, ...]
    devices: tuple[str, ...]
    apparmor_profile: str | None  # None: not confined by AppArmor (reason in apparmor_status)
    apparmor_status: Literal["enforced", "unavailable"]
    warnings: tuple[str, ...]

    def security_opt(self) -> list[str]:
        opts = ["no-new-privileges:true", f"seccomp={self.seccomp_json}"]
        if self.apparmor_profile is not None:
            opts.append(f"apparmor={self.apparmor_profile}")
        return opts

    def to_json(self) -> dict[str, Any]:
        """For the task's checkpoint and status (not the profile text: the digest identifies it)."""
        return {
            "variant": self.variant,
            "seccompProfile": f"{self.seccomp_profile.name} v{self.seccomp_profile.header.version}",
            "seccompDigest": self.seccomp_digest,
            "capabilities": list(self.capabilities),
            "devices": list(self.devices),
            "apparmorProfile": self.apparmor_profile,
            "apparmor": self.apparmor_status,
            "noNewPrivileges": True,
            "warnings": list(self.warnings),
        }


@functools.lru_cache(maxsize=64)
def _effective_profile(profile: SeccompProfile, capabilities: tuple[str, ...]) -> tuple[SeccompProfile, str, str]:
    """The filter one variant gets with these capabilities, its Docker JSON and digest. The same for
    every launch of the variant: evaluated and serialised once, not on every task's launch path."""
    effective = profile.for_container(capabilities)
    return effective, effective.to_docker_json(), effective.digest()


def resolve_security(
    container: ContainerSpec,
    policy: SecurityPolicy,
    posture: HostPosture,
    *,
    owner: str | None = None,
    app: str | None = None,
) -> SecurityDecision:
    """Launch-time resolution. Re-checks the attributes and the profile, the owner allow-list when
    `owner` and `app` are given (a task assignment does not carry them today: the scheduler's
    submit-time check is then the gate), then the host's posture. Raises SecurityRefused with
    (field, message) problems."""
    request, problems = parse_security_attributes(container.security_attributes)
    if not problems:
        if owner is not None and app is not None:
            problems = _variant_problems(request, owner, app, policy)
        else:
            problems = _variant_problems(
                request, "", "", replace(policy, open_variants=frozenset(policy.catalog.names))
            )
    if problems:
        raise SecurityRefused(problems)
    profile = policy.catalog.get(request.variant)
    verdict = check_posture(
        posture,
        request,
        variant_requires_apparmor=profile.header.requires_apparmor,
        apparmor_unavailable=policy.apparmor_unavailable,
    )
    if not verdict.ok:
        raise SecurityRefused([("host", p) for p in verdict.problems])
    capabilities = tuple(dict.fromkeys((*DEFAULT_CAPABILITIES, *profile.header.add_capabilities)))
    effective, seccomp_json, digest = _effective_profile(profile, capabilities)
    return SecurityDecision(
        variant=request.variant,
        seccomp_profile=effective,
        seccomp_json=seccomp_json,
        seccomp_digest=digest,
        capabilities=capabilities,
        devices=profile.header.devices,
        apparmor_profile=apparmor.profile_name(request.variant) if verdict.apparmor_enforced else None,
        apparmor_status="enforced" if verdict.apparmor_enforced else "unavailable",
        warnings=verdict.warnings,
    )
