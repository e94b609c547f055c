"""Profile checks with libseccomp: every name is one libseccomp knows, and the profile compiles.

This compiles the profile the way runc does for one architecture (native plus the archMap's
sub-architectures), after evaluating the `includes`/`excludes` conditions Docker evaluates itself
(arches against the native arch, minKernel against the running kernel, caps against the container's).
"""

from __future__ import annotations

import errno
import platform
import re
from collections.abc import Iterable

from tests.support import libseccomp
from security.seccomp_profile import DOCKER_ARCHES, SeccompProfile, SyscallRule

_NATIVE_DOCKER_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), "amd64")
_SCMP_TO_LIBSECCOMP = {
    "SCMP_ARCH_X86_64": "x86_64",
    "SCMP_ARCH_X86": "x86",
    "SCMP_ARCH_X32": "x32",
    "SCMP_ARCH_AARCH64": "aarch64",
    "SCMP_ARCH_ARM": "arm",
}


def unknown_syscall_names(profile: SeccompProfile, arch: str = "x86_64") -> list[str]:
    """Names libseccomp has never heard of (not: names that exist only on another arch)."""
    return sorted(n for n in profile.all_names() if not libseccomp.is_known_syscall(n, arch))


def _kernel_at_least(minimum: str, release: str) -> bool:
    m = re.match(r"^(\d+)\.(\d+)", release)
    if m is None:
        return False
    have = (int(m.group(1)), int(m.group(2)))
    want = tuple(int(x) for x in minimum.split("."))
    return have >= want


def _applies_here(rule: SyscallRule, kernel_release: str) -> bool:
    if rule.includes.arches and _NATIVE_DOCKER_ARCH not in rule.includes.arches:
        return False
    if rule.excludes.arches and _NATIVE_DOCKER_ARCH in rule.excludes.arches:
        return False
    if rule.includes.min_kernel and not _kernel_at_least(rule.includes.min_kernel, kernel_release):
        return False
    return True


def _action_value(action: str, errno_ret: int | None, default_errno: int | None) -> int:
    if action == "SCMP_ACT_ALLOW":
        return libseccomp.ACT_ALLOW
    if action == "SCMP_ACT_ERRNO":
        return libseccomp.act_errno(errno_ret or default_errno or errno.EPERM)
    if action in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"):
        return libseccomp.ACT_KILL_THREAD
    if action == "SCMP_ACT_KILL_PROCESS":
        return libseccomp.ACT_KILL_PROCESS
    if action == "SCMP_ACT_TRAP":
        return libseccomp.ACT_TRAP
    if action == "SCMP_ACT_LOG":
        return libseccomp.ACT_LOG
    if action == "SCMP_ACT_TRACE":
        return libseccomp.act_trace(errno_ret or errno.EPERM)
    raise ValueError(f"unknown action {action}")


def _filter_arches(profile: SeccompProfile) -> list[str]:
    native = {"amd64": "SCMP_ARCH_X86_64", "arm64": "SCMP_ARCH_AARCH64"}[_NATIVE_DOCKER_ARCH]
    for entry in profile.arch_map:
        if entry.architecture == native:
            names = [entry.architecture, *entry.sub_architectures]
            return [_SCMP_TO_LIBSECCOMP[n] for n in names if n in _SCMP_TO_LIBSECCOMP]
    return [_SCMP_TO_LIBSECCOMP[native]]


def build_filter(
    profile: SeccompProfile, caps: Iterable[str] = (), kernel_release: str | None = None
) -> libseccomp.Filter:
    """A libseccomp filter equivalent to what the runtime installs for a container holding `caps`.
    The caller owns (and must release) the returned filter."""
    release = kernel_release or platform.release()
    resolved = profile.for_container(caps)
    default = _action_value(resolved.default_action, resolved.default_errno_ret, resolved.default_errno_ret)
    filt = libseccomp.Filter(default, _filter_arches(resolved))
    try:
        for rule in resolved.rules:
            if not _applies_here(rule, release):
                continue
            action = _action_value(rule.action, rule.errno_ret, resolved.default_errno_ret)
            if action == default:
                continue  # libseccomp rejects rules that repeat the default; runc skips them too
            conditions = tuple(libseccomp.ArgCondition(a.index, a.op, a.value, a.value_two) for a in rule.args)
            for name in rule.names:
                if not libseccomp.is_known_syscall(name):
                    continue  # runtimes skip names their libseccomp does not know
                filt.add_rule(libseccomp.CompiledRule(name, action, conditions))
    except Exception:
        filt.release()
        raise
    return filt


def compile_to_bpf(profile: SeccompProfile, caps: Iterable[str] = ()) -> bytes:
    with build_filter(profile, caps) as filt:
        return filt.export_bpf()


__all__ = ["DOCKER_ARCHES", "build_filter", "compile_to_bpf", "unknown_syscall_names"]
