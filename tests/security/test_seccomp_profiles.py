"""The shipped seccomp profiles: schema, libseccomp validation, compilation, and — in a throwaway
child process — what the kernel actually does under them."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support import libseccomp
from security.capabilities import DEFAULT_CAPABILITIES
from security.profiles import PROFILE_DIR, ProfileCatalog
from tests.support.seccomp_check import compile_to_bpf, unknown_syscall_names
from security.seccomp_profile import ProfileError, read_profile_document

SHIPPED = sorted(p.stem for p in PROFILE_DIR.glob("*.json"))


def test_catalog_has_default_and_the_variants(catalog: ProfileCatalog) -> None:
    assert not catalog.broken, {k: str(v) for k, v in catalog.broken.items()}
    assert {"default", "perf", "fuse"} <= set(catalog.profiles)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_syscall_name_is_known_to_libseccomp_x86_64(catalog: ProfileCatalog, name: str) -> None:
    assert unknown_syscall_names(catalog.get(name), "x86_64") == []


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize(
    "caps",
    [
        (),
        DEFAULT_CAPABILITIES,
        ("CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_BPF", "CAP_PERFMON", "CAP_SYS_TIME", "CAP_SYS_MODULE"),
    ],
)
def test_every_profile_compiles_to_bpf(catalog: ProfileCatalog, name: str, caps: tuple[str, ...]) -> None:
    bpf = compile_to_bpf(catalog.get(name), caps)
    assert len(bpf) > 0 and len(bpf) % 8 == 0  # struct sock_filter is 8 bytes


@pytest.mark.parametrize("name", SHIPPED)
def test_header_records_version_and_provenance(name: str) -> None:
    doc = read_profile_document(PROFILE_DIR / f"{name}.json")
    assert doc.header.version >= 1 and doc.header.provenance and doc.header.description


def test_default_has_docker_semantics(catalog: ProfileCatalog) -> None:
    p = catalog.get("default")
    assert p.default_action == "SCMP_ACT_ERRNO" and p.default_errno_ret == errno.EPERM
    assert p.arch_map[0].architecture == "SCMP_ARCH_X86_64"
    unconditional = {n for r in p.rules if r.includes.empty and r.excludes.empty and not r.args for n in r.names}
    assert {"read", "write", "execve", "futex", "openat"} <= unconditional
    dangerous = {
        "mount",
        "unshare",
        "setns",
        "bpf",
        "perf_event_open",
        "keyctl",
        "add_key",
        "init_module",
        "kexec_load",
        "reboot",
        "ptrace",
        "clock_settime",
        "chroot",
        "open_by_handle_at",
    }
    assert not dangerous & unconditional
    by_name = {n: [r for r in p.rules if n in r.names] for n in ("clone", "personality", "socket", "clone3")}
    assert any(a.op == "SCMP_CMP_MASKED_EQ" and a.value == 0x7E020000 for r in by_name["clone"] for a in r.args)
    assert {a.value for r in by_name["personality"] for a in r.args} == {0, 8, 0x20000, 0x20008, 0xFFFFFFFF}
    socket_equal = {a.value for r in by_name["socket"] for a in r.args if a.op == "SCMP_CMP_EQ"}
    assert 38 not in socket_equal and 40 not in socket_equal  # AF_ALG, AF_VSOCK
    assert any(r.errno_ret == errno.ENOSYS for r in by_name["clone3"])


def test_variants_only_add_what_they_say(catalog: ProfileCatalog) -> None:
    default = catalog.get("default").for_container(DEFAULT_CAPABILITIES).to_docker_json()
    perf = catalog.get("perf").for_container(DEFAULT_CAPABILITIES)
    assert "perf_event_open" not in default
    assert json.loads(perf.to_docker_json())["syscalls"][-1]["names"] == ["perf_event_open"]
    fuse = catalog.get("fuse")
    assert fuse.header.requires_apparmor and fuse.header.devices == ("/dev/fuse",)


def test_fuse_variant_does_not_open_the_sys_admin_group(catalog: ProfileCatalog) -> None:
    """FUSE needs CAP_SYS_ADMIN for mount(2); that must not unlock bpf/setns/unshare via Docker's
    capability-conditional rules."""
    fuse = catalog.get("fuse").for_container((*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"))
    doc = json.loads(fuse.to_docker_json())
    allowed = {n for g in doc["syscalls"] if g["action"] == "SCMP_ACT_ALLOW" and not g.get("args") for n in g["names"]}
    assert {"mount", "umount2"} <= allowed
    assert not {"bpf", "setns", "unshare", "clone3", "open_tree", "fsopen"} & allowed
    assert all("caps" not in g.get("includes", {}) and "caps" not in g.get("excludes", {}) for g in doc["syscalls"])


def test_docker_json_is_canonical_and_digest_stable(catalog: ProfileCatalog) -> None:
    p = catalog.get("default").for_container(DEFAULT_CAPABILITIES)
    assert p.to_docker_json() == p.to_docker_json() and p.digest().startswith("sha256:")
    assert "titus" not in json.loads(p.to_docker_json())


def test_unknown_name_is_reported() -> None:
    assert not libseccomp.is_known_syscall("definitely_not_a_syscall")
    assert libseccomp.is_known_syscall("arm_fadvise64_64")  # known name, other arch: fine


# ---- enforcement in a child process ---------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import ctypes, errno, json, os, sys
    from security.profiles import ProfileCatalog
    from tests.support.seccomp_check import build_filter
    from security.capabilities import DEFAULT_CAPABILITIES
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    def call(nr, *args):
        ctypes.set_errno(0)
        rc = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
        return 0 if rc >= 0 else ctypes.get_errno()
    probes = {
        # perf_event_open(NULL attr): EFAULT when the filter lets it through, EPERM when not
        "perf_event_open": lambda: call(298, 0, 0, -1, -1, 0),
        "clone3": lambda: call(435, 0, 0),
        "unshare_user": lambda: call(272, 0x10000000),
        "keyctl": lambda: call(250, 0, 0, 0, 0, 0),
        "socket_alg": lambda: call(41, 38, 5, 0),
        "socket_vsock": lambda: call(41, 40, 1, 0),
        "personality_addr_no_randomize": lambda: call(135, 0x0040000),
        "mount": lambda: call(165, 0, 0, 0, 0, 0),
        "getpid": lambda: call(39),
    }
    filt = build_filter(ProfileCatalog.load().get(sys.argv[1]), DEFAULT_CAPABILITIES)
    filt.load()
    print(json.dumps({k: errno.errorcode.get(f(), "OK") for k, f in probes.items()}))
    """
)


def _under_profile(name: str) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, name],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    result: dict[str, str] = json.loads(out.stdout)
    return result


def test_kernel_enforces_the_default_profile() -> None:
    r = _under_profile("default")
    assert r["getpid"] == "OK"
    for denied in (
        "perf_event_open",
        "unshare_user",
        "keyctl",
        "socket_alg",
        "socket_vsock",
        "personality_addr_no_randomize",
        "mount",
    ):
        assert r[denied] == "EPERM", (denied, r)
    assert r["clone3"] == "ENOSYS"  # so libc falls back to clone(2), whose flags seccomp can read


def test_perf_variant_lets_perf_event_open_through() -> None:
    r = _under_profile("perf")
    assert r["perf_event_open"] == "EFAULT"  # reached the kernel, which complained about the NULL attr
    assert r["unshare_user"] == "EPERM"


def test_broken_file_reports_file_and_field(tmp_path: Path) -> None:
    good = json.loads((PROFILE_DIR / "default.json").read_text())
    good["syscalls"][0]["action"] = "SCMP_ACT_MAYBE"
    (tmp_path / "default.json").write_text(json.dumps(good))
    with pytest.raises(ProfileError) as e:
        read_profile_document(tmp_path / "default.json")
    assert e.value.file.endswith("default.json") and e.value.field == "syscalls[0].action"
    assert "SCMP_ACT_MAYBE" in str(e.value)
