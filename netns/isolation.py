"""Control-plane isolation: containers cannot reach the host's own services (agent API/metrics,
anything listening on a host address) nor control-plane addresses (the scheduler), unless an
operator allows a port.

One nftables table, `inet titus_isolation`, keyed on the container links' name prefix (`tn*`), so
containers wired later are covered without touching the ruleset. The table is replaced atomically
(`nft -f` runs a file as one transaction). nftables has no netlink API usable from pyroute2 here, so
this module runs the `nft` binary (package nftables) — the only subprocess in netns/.

Whatever the policy, forwarding from a container link to the instance metadata addresses (IMDS
169.254.169.254, ECS 169.254.170.2, IMDS over IPv6 fd00:ec2::254) is dropped: a container gets
metadata only through its own link into the metadata proxy's namespace (netns/metadata.py), and
never the host's real IMDS by routing via its data link, e.g. when that metadata link is missing.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from netns.errors import WiringError
from netns.metadata import METADATA_ADDRESSES
from netns.wiring import HOST_IF_PREFIX, enter_netns_fd

TABLE = "titus_isolation"
NFT = "/usr/sbin/nft"
IMDS_IPV6_ADDRESS = "fd00:ec2::254"


@dataclass(frozen=True)
class IsolationPolicy:
    allowed_host_tcp_ports: tuple[int, ...] = ()  # e.g. a metadata proxy listening on the host
    allowed_host_udp_ports: tuple[int, ...] = ()
    control_plane_cidrs: tuple[str, ...] = ()  # forwarded traffic to these is dropped
    # False (an operator's `--no-network-isolation`): tasks reach host ports and the control plane;
    # the metadata drop stays whatever this says.
    isolate: bool = True


def ruleset(policy: IsolationPolicy) -> str:
    for port in (*policy.allowed_host_tcp_ports, *policy.allowed_host_udp_ports):
        if not 0 < port < 65536:
            raise ValueError(f"bad port {port}")
    cidrs = [str(ipaddress.IPv4Network(c)) for c in policy.control_plane_cidrs]
    containers = f'iifname "{HOST_IF_PREFIX}*"'
    lines = [
        f"table inet {TABLE} {{",
        "  chain input {",
        "    type filter hook input priority filter; policy accept;",
    ]
    if not policy.isolate:
        cidrs = []
    else:
        lines += [
            f"    {containers} ct state established,related accept",
            f"    {containers} meta l4proto icmp accept",
        ]
    if policy.isolate and policy.allowed_host_tcp_ports:
        ports = ", ".join(str(p) for p in policy.allowed_host_tcp_ports)
        lines.append(f"    {containers} tcp dport {{ {ports} }} accept")
    if policy.isolate and policy.allowed_host_udp_ports:
        ports = ", ".join(str(p) for p in policy.allowed_host_udp_ports)
        lines.append(f"    {containers} udp dport {{ {ports} }} accept")
    if policy.isolate:
        lines.append(f"    {containers} counter drop")
    lines += [
        "  }",
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        f"    {containers} ip daddr {{ {', '.join(METADATA_ADDRESSES)} }} counter drop",
        f"    {containers} ip6 daddr {IMDS_IPV6_ADDRESS} counter drop",
    ]
    if cidrs:
        lines.append(f"    {containers} ip daddr {{ {', '.join(cidrs)} }} counter drop")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def _nft(script: str, host_netns: str | None) -> None:
    target = os.open(host_netns, os.O_RDONLY) if host_netns else None

    def enter() -> None:  # runs in the child between fork and exec
        if target is not None:
            enter_netns_fd(target)

    try:
        done = subprocess.run(
            [NFT, "-f", "-"],
            input=script,
            capture_output=True,
            text=True,
            timeout=10,
            preexec_fn=enter,
            pass_fds=(target,) if target is not None else (),
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise WiringError(f"nft: {e}") from None
    finally:
        if target is not None:
            os.close(target)
    if done.returncode != 0:
        raise WiringError(f"nft refused the isolation ruleset: {done.stderr.strip()}")


def apply(policy: IsolationPolicy, host_netns: str | None = None) -> None:
    """Install or replace the isolation table, atomically."""
    # Declaring the table first makes the delete valid when it does not exist yet.
    script = f"table inet {TABLE}\ndelete table inet {TABLE}\n" + ruleset(policy)
    _nft(script, host_netns)


def remove(host_netns: str | None = None) -> None:
    _nft(f"table inet {TABLE}\ndelete table inet {TABLE}\n", host_netns)


def describe(policy: IsolationPolicy) -> Sequence[str]:
    return ruleset(policy).splitlines()
