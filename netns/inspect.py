"""Read-only looks at the host's datapath for the health checks (health/checks/eni.py, forward.py):
what `Wiring.ensure_eni_table` and `Wiring.setup` put in place, and the host's nftables forward
hooks. Nothing here changes the host. Blocking (netlink, `nft`): run it in a thread.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from netns.errors import WiringError
from netns.wiring import (
    HostEni,
    _link_index,
    eni_table,
    enter_netns_fd,
    iproute_in,
)

__all__ = ["EniLinkState", "inspect_eni", "iptables_legacy_filter", "nft_ruleset"]

IFF_UP = 1


@dataclass(frozen=True)
class EniLinkState:
    """One ENI's link and table as the datapath needs them. `problems()` empty: all in place."""

    eni_id: str
    ifname: str
    table: int
    present: bool
    up: bool = False
    mtu: int | None = None
    want_mtu: int | None = None
    gateway_route: bool = False  # `<router>/32 dev <link> scope link` in the ENI's table
    default_route: bool = False  # `default via <router> dev <link>` in the ENI's table

    def problems(self) -> list[str]:
        if not self.present:
            return [f"{self.ifname} absent"]
        out: list[str] = []
        if not self.up:
            out.append(f"{self.ifname} down")
        if self.want_mtu is not None and self.mtu != self.want_mtu:
            out.append(f"{self.ifname} mtu {self.mtu} (want {self.want_mtu})")
        if not self.gateway_route:
            out.append(f"table {self.table} lacks the router's on-link route")
        if not self.default_route:
            out.append(f"table {self.table} lacks its default route")
        return out


def inspect_eni(eni_id: str, eni: HostEni, host_netns: str | None = None) -> EniLinkState:
    """The ENI's link (by name) and its table's two routes. The tasks' own rules to its table are
    netns/taskrules.py's (`TaskNetworks.missing_task_rules`)."""
    table = eni_table(eni.device_index)
    with iproute_in(host_netns) as ipr:
        index = _link_index(ipr, eni.ifname)
        if index is None:
            return EniLinkState(eni_id, eni.ifname, table, False, want_mtu=eni.mtu)
        (link,) = ipr.link("get", index=index)
        mtu = link.get("IFLA_MTU")
        gateway = default = False
        for r in ipr.route("dump", table=table):
            if r.get("RTA_TABLE") != table or r.get("RTA_OIF") != index:
                continue
            if r.get("dst_len") == 0 and r.get("RTA_GATEWAY") == eni.gateway:
                default = True
            elif r.get("dst_len") == 32 and r.get("RTA_DST") == eni.gateway:
                gateway = True
    return EniLinkState(
        eni_id, eni.ifname, table, True, up=bool(link["flags"] & IFF_UP),
        mtu=int(mtu) if isinstance(mtu, int) else None, want_mtu=eni.mtu, gateway_route=gateway,
        default_route=default,
    )


def _run_in(host_netns: str | None, argv: list[str], timeout: float, what: str) -> subprocess.CompletedProcess[str]:
    """Run a command in the host's namespace (the child enters it between fork and exec, as
    netns/isolation.py does); WiringError naming `what` when it cannot run."""
    def enter() -> None:
        assert host_netns is not None
        fd = os.open(host_netns, os.O_RDONLY)
        enter_netns_fd(fd)
        os.close(fd)

    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              preexec_fn=enter if host_netns is not None else None)
    except (OSError, subprocess.SubprocessError) as e:
        raise WiringError(f"{what}: {e}") from None


def iptables_legacy_filter(host_netns: str | None = None, timeout: float = 10.0) -> str | None:
    """`iptables-legacy -S` of the legacy `filter` table, or None when the kernel has none (read from
    /proc/net/ip_tables_names in that namespace first: running iptables-legacy would load the module
    and create the table) or iptables-legacy is not installed. Raises WiringError when it fails."""
    legacy = shutil.which("iptables-legacy")
    if legacy is None:
        return None
    script = 'grep -qx filter /proc/net/ip_tables_names 2>/dev/null || exit 3; exec "$0" -t filter -S'
    done = _run_in(host_netns, ["/bin/sh", "-c", script, legacy], timeout, "iptables-legacy -S")
    if done.returncode == 3:
        return None
    if done.returncode != 0:
        raise WiringError(f"iptables-legacy -S: {done.stderr.strip()[:200]}")
    return done.stdout


def nft_ruleset(host_netns: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """`nft -j list ruleset` of the host's namespace (iptables-nft's rules included), parsed.
    Raises WiringError when nft is missing, fails or prints no JSON."""
    nft = shutil.which("nft")
    if nft is None:
        raise WiringError("nft not found")
    done = _run_in(host_netns, [nft, "-j", "list", "ruleset"], timeout, "nft list ruleset")
    if done.returncode != 0:
        raise WiringError(f"nft list ruleset: {done.stderr.strip()[:200]}")
    try:
        doc = json.loads(done.stdout or "{}")
    except ValueError as e:
        raise WiringError(f"nft list ruleset: not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise WiringError("nft list ruleset: not a JSON object")
    return doc
