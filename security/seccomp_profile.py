"""The seccomp profile format: Docker's JSON profile plus a `titus` header, parsed into typed values.

A profile file is either a full profile (`default.json`) or an overlay (`"extends": "default"` in the
header, plus extra `syscalls` groups appended to the base's). Parsing checks every field and raises
`ProfileError` naming the file and the field, so a broken file is reported, not half-used.

`SeccompProfile.for_container(caps)` evaluates the capability conditions the way Docker would for a
container holding `caps`, except for capabilities the variant lists in `seccompIgnoresCaps`: a
variant that needs CAP_SYS_ADMIN for one syscall does not thereby unlock the whole CAP_SYS_ADMIN group.
The result has no capability conditions left, so the engine cannot re-open them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from security.errors import DataFileError

ACTIONS = frozenset(
    {
        "SCMP_ACT_ALLOW",
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_TRAP",
        "SCMP_ACT_TRACE",
        "SCMP_ACT_LOG",
    }
)
COMPARE_OPS = frozenset(
    {"SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ"}
)
# Docker's names in includes/excludes.arches (Go GOARCH style) -> libseccomp's arch names.
DOCKER_ARCHES: Mapping[str, str] = {
    "amd64": "x86_64",
    "x86": "x86",
    "x32": "x32",
    "arm": "arm",
    "arm64": "aarch64",
    "mips": "mips",
    "mipsle": "mipsel",
    "mips64": "mips64",
    "mips64le": "mipsel64",
    "mips64n32": "mips64n32",
    "mips64len32": "mipsel64n32",
    "ppc": "ppc",
    "ppc64": "ppc64",
    "ppc64le": "ppc64le",
    "s390": "s390",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "loong64": "loongarch64",
}
SCMP_ARCH = re.compile(r"^SCMP_ARCH_[A-Z0-9_]+$")
CAPABILITY = re.compile(r"^CAP_[A-Z_]+$")
PROFILE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_KERNEL_VERSION = re.compile(r"^[0-9]+\.[0-9]+$")
_FULL_KEYS = {"titus", "defaultAction", "defaultErrnoRet", "archMap", "syscalls"}
_OVERLAY_KEYS = {"titus", "syscalls"}
_HEADER_KEYS = {
    "name",
    "version",
    "description",
    "provenance",
    "extends",
    "requiresAppArmor",
    "addCapabilities",
    "devices",
    "seccompIgnoresCaps",
    "omittedNames",
}
_RULE_KEYS = {"names", "action", "args", "includes", "excludes", "errnoRet", "comment"}
_FILTER_KEYS = {"caps", "arches", "minKernel"}
_ARG_KEYS = {"index", "value", "valueTwo", "op"}
_U64 = 2**64


class ProfileError(DataFileError):
    """A profile that cannot be used. `file` and `field` say where (field is a JSON path)."""


@dataclass(frozen=True)
class Condition:
    caps: tuple[str, ...] = ()
    arches: tuple[str, ...] = ()
    min_kernel: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.caps or self.arches or self.min_kernel)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.caps:
            out["caps"] = list(self.caps)
        if self.arches:
            out["arches"] = list(self.arches)
        if self.min_kernel:
            out["minKernel"] = self.min_kernel
        return out


@dataclass(frozen=True)
class ArgFilter:
    index: int
    value: int
    value_two: int
    op: str

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "value": self.value, "valueTwo": self.value_two, "op": self.op}


@dataclass(frozen=True)
class SyscallRule:
    names: tuple[str, ...]
    action: str
    args: tuple[ArgFilter, ...] = ()
    includes: Condition = Condition()
    excludes: Condition = Condition()
    errno_ret: int | None = None
    comment: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"names": list(self.names), "action": self.action}
        if self.args:
            out["args"] = [a.to_json() for a in self.args]
        if not self.includes.empty:
            out["includes"] = self.includes.to_json()
        if not self.excludes.empty:
            out["excludes"] = self.excludes.to_json()
        if self.errno_ret is not None:
            out["errnoRet"] = self.errno_ret
        return out


@dataclass(frozen=True)
class ArchEntry:
    architecture: str
    sub_architectures: tuple[str, ...]


@dataclass(frozen=True)
class ProfileHeader:
    name: str
    version: int
    description: str
    provenance: str
    extends: str | None = None
    requires_apparmor: bool = False
    add_capabilities: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    seccomp_ignores_caps: tuple[str, ...] = ()
    omitted_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class SeccompProfile:
    """A complete profile (overlays already applied onto their base)."""

    header: ProfileHeader
    default_action: str
    default_errno_ret: int | None
    arch_map: tuple[ArchEntry, ...]
    rules: tuple[SyscallRule, ...]
    source: str = ""  # the file(s) it came from, for messages

    @property
    def name(self) -> str:
        return self.header.name

    def all_names(self) -> set[str]:
        return {n for r in self.rules for n in r.names}

    def for_container(self, caps: Iterable[str]) -> SeccompProfile:
        """Evaluate capability conditions for a container holding `caps` (see module doc)."""
        held = set(caps) - set(self.header.seccomp_ignores_caps)
        kept: list[SyscallRule] = []
        for rule in self.rules:
            if rule.includes.caps and not set(rule.includes.caps) <= held:
                continue
            if rule.excludes.caps and set(rule.excludes.caps) & held:
                continue
            kept.append(
                replace(
                    rule,
                    includes=replace(rule.includes, caps=()),
                    excludes=replace(rule.excludes, caps=()),
                )
            )
        return replace(self, rules=tuple(kept))

    def to_docker_json(self) -> str:
        """The engine's format (no titus header, no comments), canonical so the digest is stable."""
        doc: dict[str, Any] = {"defaultAction": self.default_action}
        if self.default_errno_ret is not None:
            doc["defaultErrnoRet"] = self.default_errno_ret
        doc["archMap"] = [
            {"architecture": a.architecture, "subArchitectures": list(a.sub_architectures)} for a in self.arch_map
        ]
        doc["syscalls"] = [r.to_json() for r in self.rules]
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.to_docker_json().encode()).hexdigest()


# ---- parsing -------------------------------------------------------------------------------------


class _Checker:
    """Field-by-field checks that raise ProfileError with the file name and JSON path."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, path: str, message: str) -> ProfileError:
        return ProfileError(self.file, path, message)

    def obj(self, v: Any, path: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise self.fail(path, f"must be an object, not {type(v).__name__}")
        unknown = sorted(set(v) - allowed)
        if unknown:
            raise self.fail(
                f"{path}.{unknown[0]}" if path else unknown[0], f"unknown field (allowed: {', '.join(sorted(allowed))})"
            )
        return v

    def string(self, v: Any, path: str, pattern: re.Pattern[str] | None = None) -> str:
        if not isinstance(v, str) or not v:
            raise self.fail(path, "must be a non-empty string")
        if pattern is not None and not pattern.match(v):
            raise self.fail(path, f"{v!r} does not match {pattern.pattern}")
        return v

    def integer(self, v: Any, path: str, lo: int, hi: int) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(path, "must be an integer")
        if not lo <= v < hi:
            raise self.fail(path, f"{v} is out of range [{lo}, {hi})")
        return v

    def boolean(self, v: Any, path: str) -> bool:
        if not isinstance(v, bool):
            raise self.fail(path, "must be true or false")
        return v

    def strings(
        self, v: Any, path: str, pattern: re.Pattern[str] | None = None, non_empty: bool = False
    ) -> tuple[str, ...]:
        if not isinstance(v, list):
            raise self.fail(path, "must be a list of strings")
        if non_empty and not v:
            raise self.fail(path, "must not be empty")
        return tuple(self.string(x, f"{path}[{i}]", pattern) for i, x in enumerate(v))


def _parse_header(c: _Checker, raw: Any, expected_name: str) -> ProfileHeader:
    h = c.obj(raw, "titus", _HEADER_KEYS)
    for required in ("name", "version", "description", "provenance"):
        if required not in h:
            raise c.fail(
                f"titus.{required}", "missing (every profile says what it is, its version and where it comes from)"
            )
    name = c.string(h["name"], "titus.name", PROFILE_NAME)
    if name != expected_name:
        raise c.fail("titus.name", f"{name!r} does not match the file name ({expected_name}.json)")
    extends = c.string(h["extends"], "titus.extends", PROFILE_NAME) if "extends" in h else None
    if extends == name:
        raise c.fail("titus.extends", "a profile cannot extend itself")
    devices = c.strings(h.get("devices", []), "titus.devices", re.compile(r"^/dev/[A-Za-z0-9_./-]+$"))
    return ProfileHeader(
        name=name,
        version=c.integer(h["version"], "titus.version", 1, 1_000_000),
        description=c.string(h["description"], "titus.description"),
        provenance=c.string(h["provenance"], "titus.provenance"),
        extends=extends,
        requires_apparmor=c.boolean(h.get("requiresAppArmor", False), "titus.requiresAppArmor"),
        add_capabilities=c.strings(h.get("addCapabilities", []), "titus.addCapabilities", CAPABILITY),
        devices=devices,
        seccomp_ignores_caps=c.strings(h.get("seccompIgnoresCaps", []), "titus.seccompIgnoresCaps", CAPABILITY),
        omitted_names=c.strings(h.get("omittedNames", []), "titus.omittedNames"),
    )


def _parse_condition(c: _Checker, raw: Any, path: str) -> Condition:
    f = c.obj(raw, path, _FILTER_KEYS)
    arches = c.strings(f.get("arches", []), f"{path}.arches")
    for i, a in enumerate(arches):
        if a not in DOCKER_ARCHES:
            raise c.fail(
                f"{path}.arches[{i}]", f"unknown architecture {a!r} (known: {', '.join(sorted(DOCKER_ARCHES))})"
            )
    min_kernel = c.string(f["minKernel"], f"{path}.minKernel", _KERNEL_VERSION) if "minKernel" in f else None
    return Condition(
        caps=c.strings(f.get("caps", []), f"{path}.caps", CAPABILITY), arches=arches, min_kernel=min_kernel
    )


def _parse_rule(c: _Checker, raw: Any, path: str) -> SyscallRule:
    r = c.obj(raw, path, _RULE_KEYS)
    if "names" not in r or "action" not in r:
        raise c.fail(path, "needs 'names' and 'action'")
    names = c.strings(r["names"], f"{path}.names", re.compile(r"^[a-z_][a-z0-9_]*$"), non_empty=True)
    action = c.string(r["action"], f"{path}.action")
    if action not in ACTIONS:
        raise c.fail(f"{path}.action", f"unknown action {action!r} (known: {', '.join(sorted(ACTIONS))})")
    args: list[ArgFilter] = []
    raw_args = r.get("args", [])
    if not isinstance(raw_args, list):
        raise c.fail(f"{path}.args", "must be a list")
    for i, a in enumerate(raw_args):
        ap = f"{path}.args[{i}]"
        ao = c.obj(a, ap, _ARG_KEYS)
        if "index" not in ao or "value" not in ao or "op" not in ao:
            raise c.fail(ap, "needs 'index', 'value' and 'op'")
        op = c.string(ao["op"], f"{ap}.op")
        if op not in COMPARE_OPS:
            raise c.fail(f"{ap}.op", f"unknown comparison {op!r} (known: {', '.join(sorted(COMPARE_OPS))})")
        args.append(
            ArgFilter(
                index=c.integer(ao["index"], f"{ap}.index", 0, 6),
                value=c.integer(ao["value"], f"{ap}.value", 0, _U64),
                value_two=c.integer(ao.get("valueTwo", 0), f"{ap}.valueTwo", 0, _U64),
                op=op,
            )
        )
    errno_ret = None
    if "errnoRet" in r:
        if action != "SCMP_ACT_ERRNO":
            raise c.fail(f"{path}.errnoRet", "only meaningful with action SCMP_ACT_ERRNO")
        errno_ret = c.integer(r["errnoRet"], f"{path}.errnoRet", 1, 4096)
    comment = r.get("comment", "")
    if not isinstance(comment, str):
        raise c.fail(f"{path}.comment", "must be a string")
    return SyscallRule(
        names=names,
        action=action,
        args=tuple(args),
        includes=_parse_condition(c, r.get("includes", {}), f"{path}.includes"),
        excludes=_parse_condition(c, r.get("excludes", {}), f"{path}.excludes"),
        errno_ret=errno_ret,
        comment=comment,
    )


def _parse_rules(c: _Checker, raw: Any) -> tuple[SyscallRule, ...]:
    if not isinstance(raw, list) or not raw:
        raise c.fail("syscalls", "must be a non-empty list of rule groups")
    return tuple(_parse_rule(c, g, f"syscalls[{i}]") for i, g in enumerate(raw))


@dataclass(frozen=True)
class ProfileDocument:
    """One parsed file: a full profile, or an overlay still to be applied onto `header.extends`."""

    header: ProfileHeader
    rules: tuple[SyscallRule, ...]
    file: str
    default_action: str | None = None
    default_errno_ret: int | None = None
    arch_map: tuple[ArchEntry, ...] = field(default_factory=tuple)

    @property
    def is_overlay(self) -> bool:
        return self.header.extends is not None


def parse_profile_document(data: Any, file: str, expected_name: str) -> ProfileDocument:
    c = _Checker(file)
    if not isinstance(data, dict) or "titus" not in data:
        raise c.fail("titus", "missing: a profile file starts with a 'titus' header (name, version, provenance)")
    header = _parse_header(c, data["titus"], expected_name)
    if header.extends is not None:
        c.obj(data, "", _OVERLAY_KEYS)  # an overlay adds rules only: the base owns defaults and arches
        return ProfileDocument(header=header, rules=_parse_rules(c, data.get("syscalls")), file=file)
    c.obj(data, "", _FULL_KEYS)
    for required in ("defaultAction", "syscalls"):
        if required not in data:
            raise c.fail(required, "missing")
    default_action = c.string(data["defaultAction"], "defaultAction")
    if default_action not in ACTIONS:
        raise c.fail("defaultAction", f"unknown action {default_action!r}")
    if default_action == "SCMP_ACT_ALLOW":
        raise c.fail("defaultAction", "allow-by-default is not a confinement profile; use SCMP_ACT_ERRNO")
    default_errno = None
    if "defaultErrnoRet" in data:
        default_errno = c.integer(data["defaultErrnoRet"], "defaultErrnoRet", 1, 4096)
    arch_map: list[ArchEntry] = []
    raw_map = data.get("archMap", [])
    if not isinstance(raw_map, list) or not raw_map:
        raise c.fail("archMap", "must be a non-empty list")
    for i, e in enumerate(raw_map):
        p = f"archMap[{i}]"
        eo = c.obj(e, p, {"architecture", "subArchitectures"})
        if "architecture" not in eo:
            raise c.fail(f"{p}.architecture", "missing")
        arch_map.append(
            ArchEntry(
                architecture=c.string(eo["architecture"], f"{p}.architecture", SCMP_ARCH),
                sub_architectures=c.strings(eo.get("subArchitectures", []), f"{p}.subArchitectures", SCMP_ARCH),
            )
        )
    return ProfileDocument(
        header=header,
        rules=_parse_rules(c, data["syscalls"]),
        file=file,
        default_action=default_action,
        default_errno_ret=default_errno,
        arch_map=tuple(arch_map),
    )


def read_profile_document(path: Path) -> ProfileDocument:
    try:
        text = path.read_text()
    except OSError as e:
        raise ProfileError(str(path), "", f"cannot read: {e.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProfileError(str(path), "", f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    return parse_profile_document(data, str(path), path.stem)


def apply_overlay(base: SeccompProfile, overlay: ProfileDocument) -> SeccompProfile:
    return SeccompProfile(
        header=overlay.header,
        default_action=base.default_action,
        default_errno_ret=base.default_errno_ret,
        arch_map=base.arch_map,
        rules=base.rules + overlay.rules,
        source=f"{overlay.file} (extends {base.source})",
    )


def full_profile(doc: ProfileDocument) -> SeccompProfile:
    if doc.default_action is None:
        raise ProfileError(doc.file, "titus.extends", "an overlay needs its base applied first")
    return SeccompProfile(
        header=doc.header,
        default_action=doc.default_action,
        default_errno_ret=doc.default_errno_ret,
        arch_map=doc.arch_map,
        rules=doc.rules,
        source=doc.file,
    )
