"""Fake hosts for posture tests: engine `info` documents and /sys, /proc, /etc trees under a tmp dir."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from security.posture import HostPosture, posture_from

ENGINE_PLAIN = {
    "SecurityOptions": ["name=seccomp,profile=default"],
    "CgroupVersion": "1",
    "KernelVersion": "6.18.44",
    "ServerVersion": "20.10.24",
    "DockerRootDir": "/var/lib/docker",
}
ENGINE_HARDENED = {
    "SecurityOptions": ["name=apparmor", "name=seccomp,profile=default", "name=userns", "name=no-new-privileges"],
    "CgroupVersion": "2",
    "KernelVersion": "6.1.0",
    "ServerVersion": "24.0.7",
    "DockerRootDir": "/var/lib/docker/165536.165536",
}


def fake_posture(
    info: Mapping[str, Any], root: Path, *, apparmor_on: bool, remap_user: str | None = None, subuid_start: int = 165536
) -> HostPosture:
    """The posture of a fake host under `root` (its /sys, /proc, /etc) with engine `info`."""
    sys_root, proc, etc = root / "sys", root / "proc", root / "etc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "status").write_text("Name:\tx\nSeccomp:\t0\nSeccomp_filters:\t0\n")
    (proc / "sys" / "user").mkdir(parents=True)
    (proc / "sys" / "user" / "max_user_namespaces").write_text("96365\n")
    (sys_root / "fs" / "cgroup").mkdir(parents=True)
    if apparmor_on:
        (sys_root / "module" / "apparmor" / "parameters").mkdir(parents=True)
        (sys_root / "module" / "apparmor" / "parameters" / "enabled").write_text("Y\n")
        (sys_root / "kernel" / "security" / "apparmor").mkdir(parents=True)
    (etc / "docker").mkdir(parents=True)
    if remap_user:
        (etc / "docker" / "daemon.json").write_text(json.dumps({"userns-remap": remap_user}))
        (etc / "subuid").write_text(f"someone:100000:65536\ndockremap:{subuid_start}:65536\n")
        (etc / "subgid").write_text(f"dockremap:{subuid_start}:65536\n")
    return posture_from(info, sys_root=sys_root, proc=proc, etc=etc)
