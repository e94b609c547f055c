"""libseccomp through ctypes: syscall name resolution and filter compilation.

Used to validate profiles (every name known, the profile compiles) and by tests to load a filter into
a child process. Docker/runc compile the JSON themselves at container create; this is our check that
what we hand them means what we think. ctypes rather than a PyPI binding: libseccomp.so.2 ships with
Debian (the engine's runc needs it anyway), so there is no extra dependency to install.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

# scmp_compare (seccomp.h)
COMPARE_OPS: dict[str, int] = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}

ACT_KILL_PROCESS = 0x80000000
ACT_KILL_THREAD = 0x00000000
ACT_TRAP = 0x00030000
ACT_LOG = 0x7FFC0000
ACT_ALLOW = 0x7FFF0000
_ACT_ERRNO_BASE = 0x00050000
_ACT_TRACE_BASE = 0x7FF00000

NR_SCMP_ERROR = -1  # what resolve returns for a name libseccomp has never heard of


def act_errno(err: int) -> int:
    return _ACT_ERRNO_BASE | (err & 0xFFFF)


def act_trace(msg: int) -> int:
    return _ACT_TRACE_BASE | (msg & 0xFFFF)


class LibseccompUnavailable(RuntimeError):
    pass


class LibseccompError(RuntimeError):
    pass


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as e:
        raise LibseccompUnavailable(f"cannot load libseccomp ({name}): {e}; install libseccomp2") from None
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.restype = None
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_arch_add.restype = ctypes.c_int
    lib.seccomp_arch_native.argtypes = []
    lib.seccomp_arch_native.restype = ctypes.c_uint32
    lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    lib.seccomp_syscall_resolve_name_arch.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_rule_add_array.restype = ctypes.c_int
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_export_bpf.restype = ctypes.c_int
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_load.restype = ctypes.c_int
    lib.seccomp_version.argtypes = []
    lib.seccomp_version.restype = ctypes.c_void_p
    return lib


def version() -> str:
    class _Ver(ctypes.Structure):
        _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]

    ptr = _lib().seccomp_version()
    v = ctypes.cast(ptr, ctypes.POINTER(_Ver)).contents
    return f"{v.major}.{v.minor}.{v.micro}"


def arch_token(name: str) -> int:
    """`x86_64`, `x86`, `x32`, `aarch64`... (libseccomp's names); 0 if unknown."""
    return int(_lib().seccomp_arch_resolve_name(name.encode()))


def resolve_syscall(name: str, arch: str = "x86_64") -> int:
    """The syscall number on `arch`; NR_SCMP_ERROR if libseccomp does not know the name at all, and
    another negative (pseudo) number if it knows it but the syscall does not exist on that arch."""
    token = arch_token(arch)
    if token == 0:
        raise LibseccompError(f"libseccomp does not know the architecture {arch!r}")
    return int(_lib().seccomp_syscall_resolve_name_arch(token, name.encode()))


def is_known_syscall(name: str, arch: str = "x86_64") -> bool:
    return resolve_syscall(name, arch) != NR_SCMP_ERROR


@dataclass(frozen=True)
class ArgCondition:
    index: int
    op: str  # one of COMPARE_OPS
    value: int
    value_two: int = 0


@dataclass(frozen=True)
class CompiledRule:
    syscall: str
    action: int
    conditions: tuple[ArgCondition, ...] = ()


class Filter:
    """An owned libseccomp filter context; use as a context manager."""

    def __init__(self, default_action: int, arches: Sequence[str] = ()) -> None:
        self._ctx: int | None = _lib().seccomp_init(default_action)
        if not self._ctx:
            raise LibseccompError(f"seccomp_init refused default action {default_action:#x}")
        for arch in arches:
            token = arch_token(arch)
            if token == 0:
                raise LibseccompError(f"libseccomp does not know the architecture {arch!r}")
            rc = _lib().seccomp_arch_add(self._ctx, token)
            if rc < 0 and -rc != errno.EEXIST:  # the native arch is already in the filter
                raise LibseccompError(f"seccomp_arch_add({arch}): {os.strerror(-rc)}")

    def __enter__(self) -> Filter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        if self._ctx:
            _lib().seccomp_release(self._ctx)
            self._ctx = None

    def _context(self) -> int:
        if not self._ctx:
            raise LibseccompError("filter already released")
        return self._ctx

    def add_rule(self, rule: CompiledRule) -> None:
        nr = resolve_syscall(rule.syscall, _native_arch_name())
        if nr == NR_SCMP_ERROR:
            raise LibseccompError(f"unknown syscall {rule.syscall!r}")
        conds = (_ArgCmp * max(1, len(rule.conditions)))()
        for i, c in enumerate(rule.conditions):
            conds[i] = _ArgCmp(c.index, COMPARE_OPS[c.op], c.value, c.value_two)
        rc = _lib().seccomp_rule_add_array(self._context(), rule.action, nr, len(rule.conditions), conds)
        if rc < 0:
            raise LibseccompError(f"cannot add rule for {rule.syscall!r}: {os.strerror(-rc)}")

    def export_bpf(self) -> bytes:
        with tempfile.TemporaryFile() as f:
            rc = _lib().seccomp_export_bpf(self._context(), f.fileno())
            if rc < 0:
                raise LibseccompError(f"seccomp_export_bpf: {os.strerror(-rc)}")
            f.seek(0)
            return f.read()

    def load(self) -> None:
        """Install the filter on the calling thread (irreversible: only in a throwaway process)."""
        rc = _lib().seccomp_load(self._context())
        if rc < 0:
            raise LibseccompError(f"seccomp_load: {os.strerror(-rc)}")


def _native_arch_name() -> str:
    # Names are resolved against the native arch; libseccomp translates them for the other arches.
    return {0xC000003E: "x86_64", 0xC00000B7: "aarch64"}.get(int(_lib().seccomp_arch_native()), "x86_64")
