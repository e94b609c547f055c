"""AppArmor: profiles generated per variant from `apparmor/titus-default.tmpl`, validated with
`apparmor_parser -Q -K` (parses and compiles without the kernel), kernel-support detection, loading,
and reading a process's confinement.

Docker silently ignores `--security-opt apparmor=...` on a kernel without AppArmor, so nothing here
trusts the engine: `detect_support` looks at the kernel itself, and the caller decides (policy) what a
job that needs AppArmor gets on a host that cannot enforce it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template

TEMPLATE_PATH = Path(__file__).parent / "apparmor" / "titus-default.tmpl"
PROFILE_PREFIX = "titus-"

# What a variant changes in the profile. Keys are seccomp variant names; absent = the default rules.
_DENY_ALL_MOUNTS = "deny mount,"
VARIANT_MOUNT_RULES: Mapping[str, str] = {
    # FUSE only: the filesystem type is checked here, which seccomp cannot do (it sees a pointer).
    "fuse": "mount fstype=fuse -> /**,\n  mount fstype=fuse.* -> /**,\n  mount fstype=fuseblk -> /**,",
}


def profile_name(variant: str) -> str:
    return f"{PROFILE_PREFIX}{variant}"


def render_profile(variant: str, template_path: Path = TEMPLATE_PATH) -> str:
    template = Template(template_path.read_text())
    return template.substitute(
        name=profile_name(variant),
        variant=variant,
        mount_rules=VARIANT_MOUNT_RULES.get(variant, _DENY_ALL_MOUNTS),
    )


@dataclass(frozen=True)
class ParserResult:
    ok: bool
    returncode: int
    output: str


def parser_path() -> str | None:
    return shutil.which("apparmor_parser") or (
        "/usr/sbin/apparmor_parser" if Path("/usr/sbin/apparmor_parser").exists() else None
    )


def validate_profile(text: str, label: str = "profile", timeout: float = 30.0) -> ParserResult:
    """Parse and compile the profile without loading it (works where the kernel has no AppArmor).
    Messages name `label` instead of the temporary file."""
    parser = parser_path()
    if parser is None:
        return ParserResult(False, -1, "apparmor_parser not found (Debian package 'apparmor')")
    with tempfile.NamedTemporaryFile("w", suffix=".apparmor", delete=True) as f:
        f.write(text)
        f.flush()
        proc = subprocess.run(
            [parser, "-Q", "-K", f.name], capture_output=True, text=True, timeout=timeout, check=False
        )
        output = (proc.stdout + proc.stderr).replace(f.name, label).strip()
    return ParserResult(proc.returncode == 0, proc.returncode, output)


@dataclass(frozen=True)
class AppArmorSupport:
    enforceable: bool
    module_enabled: bool
    securityfs: bool
    parser: str | None
    reason: str

    def to_json(self) -> dict[str, object]:
        return {
            "enforceable": self.enforceable,
            "moduleEnabled": self.module_enabled,
            "securityfs": self.securityfs,
            "parser": self.parser,
            "reason": self.reason,
        }


def detect_support(sys_root: Path = Path("/sys")) -> AppArmorSupport:
    enabled_file = sys_root / "module" / "apparmor" / "parameters" / "enabled"
    try:
        module_enabled = enabled_file.read_text().strip().upper().startswith("Y")
    except OSError:
        module_enabled = False
    securityfs = (sys_root / "kernel" / "security" / "apparmor").is_dir()
    parser = parser_path()
    if not module_enabled:
        reason = f"kernel has no AppArmor ({enabled_file} absent or not Y)"
    elif not securityfs:
        reason = "AppArmor is enabled but securityfs is not mounted at /sys/kernel/security"
    elif parser is None:
        reason = "apparmor_parser missing: profiles cannot be loaded"
    else:
        reason = "AppArmor enforced by the kernel"
    return AppArmorSupport(
        enforceable=module_enabled and securityfs and parser is not None,
        module_enabled=module_enabled,
        securityfs=securityfs,
        parser=parser,
        reason=reason,
    )


def load_profile(text: str, timeout: float = 30.0) -> ParserResult:
    """Load (or replace) a profile in the kernel. Only meaningful where `detect_support` says
    enforceable; not exercised on hosts without AppArmor."""
    parser = parser_path()
    if parser is None:
        return ParserResult(False, -1, "apparmor_parser not found")
    proc = subprocess.run(
        [parser, "-r", "-K"], input=text, capture_output=True, text=True, timeout=timeout, check=False
    )
    return ParserResult(proc.returncode == 0, proc.returncode, (proc.stdout + proc.stderr).strip())


def confinement_of(pid: int, proc_root: Path = Path("/proc")) -> str | None:
    """The AppArmor label of a running process ("titus-default (enforce)"), None if unavailable.
    Used to verify a container really is confined rather than trusting the engine."""
    for rel in ("attr/apparmor/current", "attr/current"):
        try:
            label = (proc_root / str(pid) / rel).read_text().strip("\x00\n ")
        except OSError:
            continue
        if label:
            return label
    return None
