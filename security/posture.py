"""Host security posture: what this host can actually enforce, as one typed record.

Gathered from the kernel (/proc, /sys), the engine (`docker info`: SecurityOptions, cgroup version,
root dir) and /etc/subuid,/etc/subgid. `check_posture` is the pure question "can this host run this
job as it asked", used by the launch step (and later by the scheduler with the posture reported in
the heartbeat).
"""

from __future__ import annotations

import json
import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from security import apparmor
from security.attributes import SecurityRequest

AppArmorUnavailableMode = Literal["refuse", "allow-unconfined-with-warning"]
APPARMOR_MODES: tuple[AppArmorUnavailableMode, ...] = ("refuse", "allow-unconfined-with-warning")


@dataclass(frozen=True)
class IdRange:
    start: int
    count: int


@dataclass(frozen=True)
class UsernsPosture:
    remapped: bool  # dockerd runs with userns-remap: container root is an unprivileged host uid
    remap_user: str | None = None
    root_uid: int | None = None  # host uid of container root (from DockerRootDir /var/lib/docker/<uid>.<gid>)
    root_gid: int | None = None
    subuid: IdRange | None = None
    subgid: IdRange | None = None
    kernel_user_namespaces: bool = False  # the kernel lets processes create user namespaces
    problem: str | None = None  # a remap that is configured but inconsistent


def userns_start_problem(userns: UsernsPosture, required: bool) -> str | None:
    """Why the agent must not start on this engine, or None. Without a remap, root in a container is
    root on the host: one kernel or runtime escape away from owning it."""
    if not required or userns.remapped:
        return None
    why = userns.problem or "dockerd runs without --userns-remap: container root would be host root"
    return f"{why}; restart dockerd with --userns-remap=default, or start the agent with --allow-no-userns"


@dataclass(frozen=True)
class HostPosture:
    kernel_version: str
    cgroup_version: int | None
    seccomp_kernel: bool  # the kernel has seccomp filter mode
    seccomp_engine: bool  # the engine reports seccomp among its SecurityOptions
    engine_seccomp_profile: str | None
    apparmor: apparmor.AppArmorSupport
    apparmor_engine: bool  # what the engine believes (it drops apparmor= silently when False)
    userns: UsernsPosture
    no_new_privileges_default: bool  # dockerd --no-new-privileges (titus sets it per container anyway)
    engine_version: str | None
    engine_security_options: tuple[str, ...] = field(default_factory=tuple)

    @property
    def seccomp_enforceable(self) -> bool:
        return self.seccomp_kernel and self.seccomp_engine

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["apparmor"] = self.apparmor.to_json()
        doc["seccompEnforceable"] = self.seccomp_enforceable
        camel: dict[str, Any] = _camel(doc)
        return camel

    def to_json_text(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)


def _camel(v: Any) -> Any:
    if isinstance(v, dict):
        return {re.sub(r"_([a-z])", lambda m: m.group(1).upper(), k): _camel(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_camel(x) for x in v]
    return v


# ---- gathering -----------------------------------------------------------------------------------


class _InfoSource(Protocol):
    def info(self) -> dict[str, Any]: ...


def parse_security_options(options: Sequence[str]) -> dict[str, dict[str, str]]:
    """`["name=seccomp,profile=default", "name=userns"]` -> {"seccomp": {"profile": "default"}, "userns": {}}"""
    out: dict[str, dict[str, str]] = {}
    for opt in options:
        fields = dict(part.split("=", 1) for part in opt.split(",") if "=" in part)
        name = fields.pop("name", None)
        if name:
            out[name] = fields
    return out


def read_id_range(path: Path, user: str) -> IdRange | None:
    """The first `user:start:count` line of /etc/subuid-style file."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] == user and parts[1].isdigit() and parts[2].isdigit():
            return IdRange(int(parts[1]), int(parts[2]))
    return None


def _remap_user(daemon_json: Path) -> str | None:
    try:
        cfg = json.loads(daemon_json.read_text())
    except (OSError, ValueError):
        return None
    value = cfg.get("userns-remap") if isinstance(cfg, dict) else None
    if not isinstance(value, str) or not value:
        return None
    user = value.split(":", 1)[0]
    return "dockremap" if user == "default" else user


def userns_posture(info: Mapping[str, Any], etc: Path = Path("/etc"), proc: Path = Path("/proc")) -> UsernsPosture:
    options = parse_security_options(info.get("SecurityOptions") or [])
    try:
        kernel_userns = int((proc / "sys" / "user" / "max_user_namespaces").read_text().strip()) > 0
    except (OSError, ValueError):
        kernel_userns = False
    if "userns" not in options:
        return UsernsPosture(remapped=False, kernel_user_namespaces=kernel_userns)
    root_uid = root_gid = None
    m = re.search(r"/(\d+)\.(\d+)/?$", str(info.get("DockerRootDir") or ""))
    if m:
        root_uid, root_gid = int(m.group(1)), int(m.group(2))
    user = _remap_user(etc / "docker" / "daemon.json")
    subuid = read_id_range(etc / "subuid", user) if user else None
    subgid = read_id_range(etc / "subgid", user) if user else None
    problem = None
    if root_uid is None:
        problem = "engine reports userns but DockerRootDir does not name the remapped uid.gid"
    elif subuid is not None and subuid.start != root_uid:
        problem = f"container root is uid {root_uid} but /etc/subuid gives {user} {subuid.start}"
    elif root_uid == 0:
        problem = "userns remap maps container root to host root"
    return UsernsPosture(
        remapped=problem is None,
        remap_user=user,
        root_uid=root_uid,
        root_gid=root_gid,
        subuid=subuid,
        subgid=subgid,
        kernel_user_namespaces=kernel_userns,
        problem=problem,
    )


def _seccomp_in_kernel(proc: Path) -> bool:
    try:
        return any(line.startswith("Seccomp:") for line in (proc / "self" / "status").read_text().splitlines())
    except OSError:
        return False


def _cgroup_version(info: Mapping[str, Any], sys_root: Path) -> int | None:
    reported = str(info.get("CgroupVersion") or "")
    if reported.isdigit():
        return int(reported)
    if (sys_root / "fs" / "cgroup" / "cgroup.controllers").exists():
        return 2
    return 1 if (sys_root / "fs" / "cgroup").is_dir() else None


def posture_from(
    info: Mapping[str, Any],
    *,
    kernel_version: str | None = None,
    sys_root: Path = Path("/sys"),
    proc: Path = Path("/proc"),
    etc: Path = Path("/etc"),
) -> HostPosture:
    """Build the posture from an engine `info` document plus the host's files (paths injectable for tests)."""
    raw_options = tuple(str(o) for o in (info.get("SecurityOptions") or []))
    options = parse_security_options(raw_options)
    return HostPosture(
        kernel_version=kernel_version or str(info.get("KernelVersion") or platform.release()),
        cgroup_version=_cgroup_version(info, sys_root),
        seccomp_kernel=_seccomp_in_kernel(proc),
        seccomp_engine="seccomp" in options,
        engine_seccomp_profile=options.get("seccomp", {}).get("profile"),
        apparmor=apparmor.detect_support(sys_root),
        apparmor_engine="apparmor" in options,
        userns=userns_posture(info, etc, proc),
        no_new_privileges_default="no-new-privileges" in options,
        engine_version=str(info["ServerVersion"]) if info.get("ServerVersion") else None,
        engine_security_options=raw_options,
    )


def probe_host_posture(engine: _InfoSource) -> HostPosture:
    """`engine` is a docker SDK client (APIClient or DockerClient) — anything with `.info()`.
    Blocking: call it on a worker thread from async code (e.g. `Docker.call`)."""
    return posture_from(engine.info())


# ---- the check -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostureVerdict:
    problems: tuple[str, ...]  # non-empty: this host must not run the job
    warnings: tuple[str, ...]  # runs, but with less than it could have; record these with the task
    apparmor_enforced: bool

    @property
    def ok(self) -> bool:
        return not self.problems


def reported_posture_problem(
    posture: Mapping[str, Any] | None,
    request: SecurityRequest,
    *,
    variant_requires_apparmor: bool = False,
    apparmor_unavailable: AppArmorUnavailableMode = "refuse",
) -> str | None:
    """For the scheduler, which knows each host only by the posture its agent reported (HostPosture's
    JSON): why the host cannot run a job with this request, or None. The agent re-checks at launch
    with `check_posture`; this keeps such jobs off hosts that would only refuse them."""
    needs_apparmor = (request.apparmor == "required" or variant_requires_apparmor) and apparmor_unavailable == "refuse"
    needs_userns = request.user_namespace == "required"
    if posture is None:
        return "host has not reported its security posture" if (needs_apparmor or needs_userns) else None
    if posture.get("seccompEnforceable") is False:
        return "host cannot enforce seccomp"
    if needs_apparmor and not (posture.get("apparmor") or {}).get("enforceable"):
        return "job requires AppArmor; host cannot enforce it"
    if needs_userns and not (posture.get("userns") or {}).get("remapped"):
        return "job requires user-namespace remapping; host has none"
    return None


def check_posture(
    posture: HostPosture,
    request: SecurityRequest,
    *,
    variant_requires_apparmor: bool = False,
    apparmor_unavailable: AppArmorUnavailableMode = "refuse",
) -> PostureVerdict:
    problems: list[str] = []
    warnings: list[str] = []
    if not posture.seccomp_enforceable:
        # Every job gets a seccomp profile; a host that cannot apply one runs nothing.
        problems.append("host cannot enforce seccomp (kernel or engine lacks it)")
    needs_apparmor = request.apparmor == "required" or variant_requires_apparmor
    why = (
        "the job requires AppArmor"
        if request.apparmor == "required"
        else (f"variant {request.variant!r} is only safe under AppArmor")
    )
    if not posture.apparmor.enforceable:
        if needs_apparmor and apparmor_unavailable == "refuse":
            problems.append(f"{why}, and this host cannot enforce it: {posture.apparmor.reason}")
        elif needs_apparmor:
            warnings.append(f"{why}; running UNCONFINED by AppArmor by policy: {posture.apparmor.reason}")
        else:
            warnings.append(f"AppArmor not enforced on this host: {posture.apparmor.reason}")
    if request.user_namespace == "required" and not posture.userns.remapped:
        detail = posture.userns.problem or "dockerd runs without userns-remap"
        problems.append(f"the job requires user-namespace remapping: {detail}")
    elif not posture.userns.remapped:
        warnings.append("container root is host root (dockerd runs without userns-remap)")
    return PostureVerdict(tuple(problems), tuple(warnings), apparmor_enforced=posture.apparmor.enforceable)
