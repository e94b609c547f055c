"""What a platform leaves on the host, as one comparable snapshot (the no-leak tests take one before
and one after a run and compare them): links (host and the agent's metadata namespace), policy rules,
titus routes, the nftables ruleset (counters blanked), namespace mounts, the engine's cgroups,
container and runtime processes, the agent's prepared namespaces and its listening sockets.

Meant to run under the shared engine lock (nobody else makes containers or links meanwhile)."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

from agent.host.metadata import PROBE_TASK_ID
from agent.host.network import netns_dir
from netns.metadata import MetadataNetwork, meta_ifname
from netns.wiring import RT_PROTO_TITUS

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_CONTROLLERS = ("memory", "pids", "cpuset", "cpu", "unified")
# Processes a task leaves behind if its teardown is incomplete.
PROCESS_NAMES = ("containerd-shim", "containerd-shim-runc-v2", "unshare", "runc", "tini", "docker-init")


def _lines(*argv: str) -> list[str]:
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def _links() -> list[str]:
    return sorted(line.split(":")[1].strip().split("@")[0] for line in _lines("ip", "-o", "link", "show"))


def _nft() -> list[str]:
    blank = re.compile(r"counter packets \d+ bytes \d+")
    return [blank.sub("counter", line) for line in _lines("nft", "list", "ruleset")]


def _mounts() -> list[str]:
    """Namespace pins: nsfs mounts and anything mounted under the titus and netns directories."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point, fstype = fields[4], fields[fields.index("-") + 1]
        if fstype == "nsfs" or point.startswith(("/run/titus", "/var/run/netns", "/run/netns")):
            found.append(f"{point} {fstype}")
    return sorted(found)


def _cgroups() -> list[str]:
    found = []
    for controller in CGROUP_CONTROLLERS:
        d = CGROUP_ROOT / controller / "docker"
        if d.is_dir():
            found += [f"{controller}/{e.name}" for e in d.iterdir() if e.is_dir()]
    return sorted(found)


def _processes() -> dict[str, int]:
    counts: Counter[str] = Counter()
    for proc in psutil.process_iter(["name"]):
        name = str(proc.info.get("name") or "")
        if name in PROCESS_NAMES:
            counts[name] += 1
    return dict(counts)


def _listening(pid: int | None) -> list[str]:
    if pid is None:
        return []
    conns = psutil.Process(pid).net_connections(kind="inet")
    return sorted(f"{c.laddr.ip}:{c.laddr.port}" for c in conns if c.status == psutil.CONN_LISTEN)


def snapshot(node_id: str, agent_pid: int | None) -> dict[str, Any]:
    prepared_dir = netns_dir(node_id)
    return {
        "links": _links(),
        # The imds check's self-probe (agent/host/metadata_probe.py) has a link for ~50 ms every 30 s.
        "metadata links": [n for n in MetadataNetwork(node_id).links() if n != meta_ifname(PROBE_TASK_ID)],
        "rules": _lines("ip", "-4", "rule", "show") + _lines("ip", "-6", "rule", "show"),
        "titus routes": _lines("ip", "-4", "route", "show", "table", "all", "proto", str(RT_PROTO_TITUS)),
        "nft": _nft(),
        "mounts": _mounts(),
        "cgroups": _cgroups(),
        "processes": _processes(),
        "prepared namespaces": sorted(e.name for e in prepared_dir.iterdir()) if prepared_dir.is_dir() else [],
        "agent listening sockets": _listening(agent_pid),
    }


def leaks(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Per key, what `after` holds that `before` did not (a list's new entries, a process count that
    grew). Only growth counts: the host is shared, and something of someone else's may end meanwhile."""
    found: dict[str, Any] = {}
    for key, was in before.items():
        now = after[key]
        if isinstance(was, list):
            grown = sorted((Counter(now) - Counter(was)).elements())
            if grown:
                found[key] = grown
        else:
            more = {name: n for name, n in now.items() if n > was.get(name, 0)}
            if more:
                found[key] = {"before": was, "after": now}
    return found
