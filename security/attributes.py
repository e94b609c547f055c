"""What a job may ask for in `container.securityAttributes`, parsed and checked without any host or
policy knowledge (so the scheduler can run it at submit time).

Accepted keys:
  seccomp        name of a profile variant (default "default"), e.g. "perf", "fuse"
  apparmor       "required" (refuse hosts that cannot enforce AppArmor) or "preferred" (default)
  userNamespace  "required" (refuse hosts whose engine does not remap root) or "preferred" (default)

Anything else is refused by name; in particular privileged mode, host namespaces, extra
capabilities/devices and raw security options are not offered to jobs at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

ATTR_SECCOMP = "seccomp"
ATTR_APPARMOR = "apparmor"
ATTR_USERNS = "userNamespace"
ACCEPTED_KEYS = (ATTR_SECCOMP, ATTR_APPARMOR, ATTR_USERNS)
FIELD_PREFIX = "container.securityAttributes"
DEFAULT_VARIANT = "default"

Requirement = Literal["required", "preferred"]

# Keys people reach for to escape confinement; each gets a specific refusal rather than "unknown key".
_ESCAPE_HATCHES: Mapping[str, str] = {
    "privileged": "privileged containers are not offered: they get every capability and every device of the host",
    "hostnetwork": "host networking is not offered: containers get their own network namespace",
    "hostpid": "the host PID namespace is not offered: it exposes every host process",
    "hostipc": "the host IPC namespace is not offered",
    "hostuts": "the host UTS namespace is not offered",
    "hostusers": "running without user-namespace remapping is not offered to jobs",
    "networkmode": "namespaces are set by the platform, not by the job",
    "pidmode": "namespaces are set by the platform, not by the job",
    "ipcmode": "namespaces are set by the platform, not by the job",
    "utsmode": "namespaces are set by the platform, not by the job",
    "usernsmode": "namespaces are set by the platform, not by the job",
    "cgroupnsmode": "namespaces are set by the platform, not by the job",
    "capadd": "extra capabilities come only with a profile variant (e.g. seccomp=fuse), not one by one",
    "capabilities": "extra capabilities come only with a profile variant (e.g. seccomp=fuse), not one by one",
    "devices": "devices come only with a profile variant (e.g. seccomp=fuse)",
    "securityopt": "raw Docker security options are not offered; ask for a profile variant",
    "nonewprivileges": "no-new-privileges is always on",
}
_UNCONFINED = {"unconfined", "none", "disabled", "off"}


@dataclass(frozen=True)
class SecurityRequest:
    variant: str = DEFAULT_VARIANT
    apparmor: Requirement = "preferred"
    user_namespace: Requirement = "preferred"


def _requirement(value: str, key: str, problems: list[tuple[str, str]]) -> Requirement:
    if value == "required":
        return "required"
    if value == "preferred":
        return "preferred"
    if value.lower() in _UNCONFINED:
        problems.append((f"{FIELD_PREFIX}.{key}", f"{key} cannot be turned off by a job"))
    else:
        problems.append((f"{FIELD_PREFIX}.{key}", f"expected 'required' or 'preferred', not {value!r}"))
    return "preferred"


def parse_security_attributes(attrs: Mapping[str, str]) -> tuple[SecurityRequest, list[tuple[str, str]]]:
    """The request, and every problem as (field path, message). Problems mean: refuse the job."""
    problems: list[tuple[str, str]] = []
    variant = DEFAULT_VARIANT
    apparmor: Requirement = "preferred"
    userns: Requirement = "preferred"
    for key, value in attrs.items():
        path = f"{FIELD_PREFIX}.{key}"
        normalised = key.replace("_", "").replace("-", "").lower()
        if key == ATTR_SECCOMP:
            if value.lower() in _UNCONFINED:
                problems.append((path, "running without a seccomp profile is not offered"))
            else:
                variant = value
        elif key == ATTR_APPARMOR:
            apparmor = _requirement(value, key, problems)
        elif key == ATTR_USERNS:
            userns = _requirement(value, key, problems)
        elif normalised == "privileged" and value.strip().lower() in {"false", "0", "no", ""}:
            continue  # asking not to be privileged is harmless
        elif normalised in _ESCAPE_HATCHES:
            problems.append((path, _ESCAPE_HATCHES[normalised]))
        else:
            problems.append((path, f"unknown security attribute (accepted: {', '.join(ACCEPTED_KEYS)})"))
    return SecurityRequest(variant=variant, apparmor=apparmor, user_namespace=userns), problems
