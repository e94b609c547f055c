"""Container hardening as Docker HostConfig options, plus an audit of a final HostConfig.

`hardening_options(decision, memory_mib=...)` returns:
- `host_config_kwargs`: keyword arguments for the docker SDK's `create_host_config` (cap_drop ALL +
  the decision's minimal set, no-new-privileges + seccomp (+ AppArmor) security options, pids and
  memory limits, the variant's devices, binds after checking them);
- `host_config_raw`: HostConfig fields the SDK has no keyword for (MaskedPaths, ReadonlyPaths); merge
  them into the dict `create_host_config` returns.

Docker replaces (not extends) its default masked/read-only lists when MaskedPaths/ReadonlyPaths are
given, so ours start from Docker's 20.10 defaults and add to them.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from security.profiles import SecurityDecision

DEFAULT_PIDS_LIMIT = 32_768  # far above any real program's threads+processes; stops a fork bomb early
PID_MAX_PATH = Path("/proc/sys/kernel/pid_max")
# One task may hold at most this share of the host's PIDs: a fork bomb with memory to spare must still
# leave the host (agent, sshd, other tasks) room to fork. On hosts with systemd's pid_max of 4194304
# the cap is DEFAULT_PIDS_LIMIT; with the kernel's default of 32768 it is 4096.
HOST_PID_SHARE = 8


@functools.cache
def host_pids_limit(pid_max_path: Path = PID_MAX_PATH) -> int:
    try:
        pid_max = int(pid_max_path.read_text().strip())
    except (OSError, ValueError):
        return DEFAULT_PIDS_LIMIT // HOST_PID_SHARE  # unknown host: the conservative side
    return max(64, min(DEFAULT_PIDS_LIMIT, pid_max // HOST_PID_SHARE))

# Docker 20.10's defaults (oci/defaults.go) ...
DOCKER_MASKED_PATHS: tuple[str, ...] = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
)
DOCKER_READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)
# ... plus ours: energy counters (PLATYPUS side channel, masked by newer moby), kernel symbol and
# module addresses, host-wide lock/slab/page statistics, and /sys areas that hold kernel knobs.
MASKED_PATHS: tuple[str, ...] = DOCKER_MASKED_PATHS + (
    "/sys/devices/virtual/powercap",
    "/proc/kallsyms",
    "/proc/modules",
    "/proc/locks",
    "/proc/slabinfo",
    "/proc/pagetypeinfo",
    "/proc/vmallocinfo",
    "/sys/kernel/debug",
    "/sys/kernel/security",
)
READONLY_PATHS: tuple[str, ...] = DOCKER_READONLY_PATHS + (
    "/proc/sys/kernel",
    "/proc/sys/vm",
)

# Host paths no container may see: the engine's API is root on the host, and the runtimes' state dirs
# are a short step from it. Compared after resolving symlinks (/var/run -> /run).
FORBIDDEN_BIND_SOURCES: tuple[str, ...] = (
    "/run/docker.sock",
    "/run/docker",
    "/run/containerd",
    "/run/runc",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/run/titus",
    "/var/lib/titus",
    "/etc/docker",
    "/proc",
    "/sys",
    "/dev",
    "/boot",
)


@dataclass(frozen=True)
class HardeningOptions:
    host_config_kwargs: dict[str, Any]
    host_config_raw: dict[str, Any] = field(default_factory=dict)

    def host_config(self, make: Any) -> dict[str, Any]:
        """`make` is the SDK's `APIClient.create_host_config` (or the agent's `Docker.host_config`)."""
        hc: dict[str, Any] = dict(make(**self.host_config_kwargs))
        hc.update(self.host_config_raw)
        return hc


class BindRefused(ValueError):
    pass


def _bind_sources(binds: Sequence[str] | Mapping[str, Any]) -> list[str]:
    if isinstance(binds, Mapping):
        return [str(src) for src in binds]
    return [b.split(":", 1)[0] for b in binds]


def bind_problems(binds: Sequence[str] | Mapping[str, Any] | None) -> list[str]:
    """Why each bind mount is refused: the root, forbidden host paths (or a parent of one, which
    would expose it too), and any unix socket (the engine's socket can live anywhere)."""
    problems: list[str] = []
    for src in _bind_sources(binds or []):
        if not os.path.isabs(src):
            problems.append(f"{src}: named volumes and relative paths are not bind sources here")
            continue
        real = os.path.realpath(src)
        if real == "/":
            problems.append(f"{src}: the host's root filesystem")
            continue
        for forbidden in FORBIDDEN_BIND_SOURCES:
            if real == forbidden or real.startswith(forbidden + "/") or forbidden.startswith(real + "/"):
                problems.append(f"{src}: exposes {forbidden}")
                break
        else:
            if "docker.sock" in real or "containerd.sock" in real:
                problems.append(f"{src}: a container engine socket")
            else:
                try:
                    if stat.S_ISSOCK(os.stat(real).st_mode):
                        problems.append(f"{src}: unix sockets are not bind-mounted into containers")
                except OSError:
                    pass  # missing source: Docker will refuse or create a directory; not a socket
    return problems


def hardening_options(
    decision: SecurityDecision,
    *,
    memory_mib: int,
    pids_limit: int | None = None,
    binds: Sequence[str] | Mapping[str, Any] | None = None,
) -> HardeningOptions:
    if memory_mib <= 0:
        raise ValueError("a memory limit is mandatory")
    if pids_limit is None:
        pids_limit = host_pids_limit()
    if pids_limit <= 0:
        raise ValueError("a pids limit is mandatory")
    problems = bind_problems(binds)
    if problems:
        raise BindRefused("; ".join(problems))
    memory = memory_mib * 1024 * 1024
    kwargs: dict[str, Any] = {
        "privileged": False,
        "cap_drop": ["ALL"],
        "cap_add": list(decision.capabilities),
        "security_opt": decision.security_opt(),
        "pids_limit": pids_limit,
        "mem_limit": memory,
        "memswap_limit": memory,  # no swap: a memory bomb is OOM-killed, not paged onto the host
        "oom_kill_disable": False,
    }
    if decision.devices:
        kwargs["devices"] = [f"{d}:{d}:rwm" for d in decision.devices]
    if binds:
        kwargs["binds"] = binds
    return HardeningOptions(
        host_config_kwargs=kwargs,
        host_config_raw={"MaskedPaths": list(MASKED_PATHS), "ReadonlyPaths": list(READONLY_PATHS)},
    )


_HOST_NAMESPACE_FIELDS = ("NetworkMode", "PidMode", "IpcMode", "UTSMode", "UsernsMode", "CgroupnsMode")


def audit_host_config(hc: Mapping[str, Any]) -> list[str]:
    """Everything wrong with a final HostConfig (the dict sent to the engine). Meant to run on the
    merged result of all launch steps right before create, so a later step cannot quietly undo
    hardening."""
    problems: list[str] = []
    if hc.get("Privileged"):
        problems.append("Privileged is set")
    for f in _HOST_NAMESPACE_FIELDS:
        if str(hc.get(f) or "") == "host":
            problems.append(f"{f} is host")
    if [c.upper() for c in hc.get("CapDrop") or []] != ["ALL"]:
        problems.append("CapDrop is not exactly [ALL]")
    opts = [str(o) for o in hc.get("SecurityOpt") or []]
    if not any(o in ("no-new-privileges", "no-new-privileges:true") for o in opts):
        problems.append("no-new-privileges missing from SecurityOpt")
    seccomp = [o for o in opts if o.startswith("seccomp=") or o.startswith("seccomp:")]
    if not seccomp:
        problems.append("no seccomp profile in SecurityOpt")
    elif any(o[len("seccomp=") :] == "unconfined" for o in seccomp):
        problems.append("seccomp is unconfined")
    if any(o in ("apparmor=unconfined", "apparmor:unconfined") for o in opts):
        problems.append("AppArmor is unconfined")
    if not hc.get("PidsLimit") or int(hc["PidsLimit"]) <= 0:
        problems.append("no pids limit")
    if not hc.get("Memory"):
        problems.append("no memory limit")
    masked = set(hc.get("MaskedPaths") or DOCKER_MASKED_PATHS)
    if not set(MASKED_PATHS) <= masked:
        problems.append(f"MaskedPaths lacks {sorted(set(MASKED_PATHS) - masked)}")
    readonly = set(hc.get("ReadonlyPaths") or DOCKER_READONLY_PATHS)
    if not set(READONLY_PATHS) <= readonly:
        problems.append(f"ReadonlyPaths lacks {sorted(set(READONLY_PATHS) - readonly)}")
    problems += bind_problems(hc.get("Binds") or [])
    for m in hc.get("Mounts") or []:
        if m.get("Type", "volume") == "bind":
            problems += bind_problems([str(m.get("Source", ""))])
    return problems
