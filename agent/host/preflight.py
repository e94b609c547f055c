"""Host pre-flight for the network (docs/ec2-host.md): what a host must provide before tasks get
ENIs and IPs. Facts are gathered (`gather`, blocking: /proc and `iptables -S FORWARD`) apart from
their judgement (`judge`, pure), so each rule is tested on its own.

| check | refuse when | why |
|---|---|---|
| `ip_forward` | `net.ipv4.ip_forward` is not 1 | task traffic is routed by the host between its veth and the ENI link |
| FORWARD policy | iptables' FORWARD policy is DROP and no rule accepts `tn+` both ways | stock dockerd sets DROP: task packets vanish |
| `rp_filter` | warn when strict (1) on `all` | asymmetric paths through ENIs; the VPC CNI uses loose (2) |
| docker live-restore | warn when off | an engine restart kills every task |

With the aws provider a failed check refuses the start (HostRefused, exit 4); with the local provider
it is a warning (development hosts).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Finding", "HostFacts", "gather", "judge"]


@dataclass(frozen=True)
class HostFacts:
    ip_forward: str | None  # None: unreadable
    rp_filter_all: str | None
    forward_rules: str | None  # `iptables -S FORWARD`; None: no iptables on the host
    live_restore: bool | None  # None: unknown


@dataclass(frozen=True)
class Finding:
    check: str
    refuse: bool  # False: a warning
    message: str


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def gather(proc: Path = Path("/proc"), docker_info: dict[str, Any] | None = None) -> HostFacts:
    rules: str | None = None
    iptables = shutil.which("iptables")
    if iptables is not None:
        done = subprocess.run([iptables, "-S", "FORWARD"], capture_output=True, text=True, timeout=10)
        rules = done.stdout if done.returncode == 0 else None
    live = docker_info.get("LiveRestoreEnabled") if docker_info else None
    return HostFacts(
        ip_forward=_read(proc / "sys/net/ipv4/ip_forward"),
        rp_filter_all=_read(proc / "sys/net/ipv4/conf/all/rp_filter"),
        forward_rules=rules,
        live_restore=live if isinstance(live, bool) else None,
    )


def _forward_accepts_tasks(rules: str) -> bool:
    lines = [" ".join(line.split()) for line in rules.splitlines()]
    out = any("-i tn+" in line and line.endswith("-j ACCEPT") for line in lines)
    back = any("-o tn+" in line and line.endswith("-j ACCEPT") for line in lines)
    return out and back


def judge(facts: HostFacts) -> list[Finding]:
    found: list[Finding] = []
    if facts.ip_forward != "1":
        found.append(Finding("ip_forward", True, f"net.ipv4.ip_forward is {facts.ip_forward or 'unreadable'}, "
                             "tasks' traffic cannot be routed: sysctl -w net.ipv4.ip_forward=1"))
    if facts.forward_rules is not None:
        policy = next((line.split()[2] for line in facts.forward_rules.splitlines()
                       if line.startswith("-P FORWARD")), "ACCEPT")
        if policy != "ACCEPT" and not _forward_accepts_tasks(facts.forward_rules):
            found.append(Finding("forward_policy", True, f"iptables FORWARD policy is {policy} (dockerd sets it) and "
                                 "nothing accepts task links: iptables -I FORWARD -i tn+ -j ACCEPT; "
                                 "iptables -I FORWARD -o tn+ -j ACCEPT"))
    if facts.rp_filter_all == "1":
        found.append(Finding("rp_filter", False, "net.ipv4.conf.all.rp_filter is 1 (strict); "
                             "2 (loose) is what the AWS VPC CNI uses with per-ENI tables (the agent sets 2 on its ENI links)"))
    if facts.live_restore is False:
        found.append(Finding("docker_live_restore", False,
                             "dockerd runs without live-restore: an engine restart kills every task"))
    return found
