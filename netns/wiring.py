"""The netlink side: a container's interface, address, routes and the host's policy routing.

Datapath (the AWS VPC CNI's, which works on real ENIs without bridges):
- container: `eth0` (one end of a veth) with `<ip>/32`, an on-link route to 169.254.1.1, `default via
  169.254.1.1`, and a permanent neighbour entry 169.254.1.1 -> the host end's MAC (no ARP needed);
- host: the other end `tn<hash>`; `<ip>/32 dev tn<hash>` in main; rule `to <ip> lookup main`
  (priority 512) and, per ENI, `from <ip> lookup <100 + device index>` (priority 1536), whose table
  holds `default via <subnet router> dev <ENI link>`, so a container's traffic leaves by its ENI.
- same-host traffic between tasks of different ENIs (different security groups) is hairpinned through
  the VPC, as the VPC CNI's `strict` mode does: rule `iif <tn link> lookup <ENI table>` (priority 10,
  before the 512 shortcut to main), and the ENI table holds `<ip>/32 dev <tn link>` only for the
  tasks of that ENI. A task reaches a task of its own ENI (same groups) directly, any other address
  on this host only out of its ENI and back in through the other's, where EC2 applies the groups.

The veth is created with its container end already in the container's namespace (one RTM_NEWLINK
with the peer's net_ns_fd): moving an existing device between namespaces takes `rtnl_lock` across an
RCU barrier and cost the VPC CNI seconds per pod under burst.

Everything this module creates is recognisable: links named `tn…`, routes and rules with protocol
`RT_PROTO_TITUS`, namespaces pinned as /var/run/netns/titus-…. `gc` removes only such things.
All calls are blocking netlink: run them in a thread (`asyncio.to_thread`) from async code.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netns.rtnl import IPRoute, NetlinkError

from netns.errors import AddressConflict, WiringError
from netns.nsenter import enter_netns_fd as enter_netns_fd
from netns.nsenter import ensure_loose_rp_filter
from netns.nsenter import iproute_in as iproute_in
from netns.nsenter import thread_in_netns as thread_in_netns

HOST_IF_PREFIX = "tn"
NETNS_PREFIX = "titus-"
NETNS_DIR = Path("/var/run/netns")
CONTAINER_IFNAME = "eth0"
LINK_LOCAL_GATEWAY = "169.254.1.1"
RT_PROTO_TITUS = 122  # an unassigned routing protocol number: marks our routes and rules
RULE_TO_CONTAINER_PRIORITY = 512
RULE_FROM_CONTAINER_PRIORITY = 1536
RULE_FROM_TASK_LINK_PRIORITY = 10  # the VPC CNI's VlanRulePriority (strict mode): before 512
ENI_TABLE_BASE = 100
RT_SCOPE_LINK = 253
LOOPBACK_INDEX = 1  # lo is ifindex 1 in every network namespace
MS_BIND = 4096
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)


def host_ifname(task_id: str) -> str:
    """A stable, short (<= 15 bytes) host-side name derived from the task id."""
    return HOST_IF_PREFIX + hashlib.sha256(task_id.encode()).hexdigest()[:10]


def host_mac(task_id: str) -> str:
    """A stable, locally administered unicast MAC for the host end: known without asking netlink."""
    digest = hashlib.sha256(b"mac:" + task_id.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def netns_name(task_id: str) -> str:
    return NETNS_PREFIX + hashlib.sha256(task_id.encode()).hexdigest()[:16]


def eni_table(device_index: int) -> int:
    return ENI_TABLE_BASE + device_index


@dataclass(frozen=True)
class HostEni:
    """How the host reaches the VPC through one ENI."""

    device_index: int
    ifname: str  # the ENI's link on the host (eth1… on EC2; a veth into the fabric in tests)
    gateway: str  # the subnet router
    mtu: int | None = None  # set on the link (9001 in a VPC); None: leave the link's MTU alone
    mac: str = ""  # the ENI's MAC (how its link was found)
    # Set (aws): the ENI's primary address, the only host address its link may carry; every other
    # (ec2-net-utils' aliases of the secondary IPs) is removed. Empty: addresses are left alone.
    primary_ip: str = ""


@dataclass(frozen=True)
class ContainerNetSpec:
    task_id: str
    netns_path: str  # /proc/<pid>/ns/net or /var/run/netns/<name>
    address: str
    eni: HostEni | None = None  # None: no per-ENI table (local provider without uplinks)
    mtu: int = 1500


@dataclass
class GcReport:
    links: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)


def _ignore(codes: tuple[int, ...], fn: Any, *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except NetlinkError as e:
        if e.code not in codes:
            raise


def _link_index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        return None
    if len(found) != 1 or not isinstance(found[0], int):
        raise WiringError(f"netlink returned {found!r} for link {ifname}")
    return found[0]


class Wiring:
    """Wires containers on one host. `host_netns` None: the namespace of the calling thread (a real
    host); tests pass a namespace path that plays a host."""

    def __init__(self, host_netns: str | None = None, owner: str | None = None) -> None:
        self.host_netns = host_netns
        # With an owner (the agent's node id), host links carry it as their alias and `gc` removes
        # only links of this owner: several agents may share one host (tests do).
        self.owner = owner

    # ---- per ENI ---------------------------------------------------------------------------------

    def ensure_eni_table(self, eni: HostEni) -> list[str]:
        """Own the ENI's link: up, its MTU, no host addresses, and in the ENI's table an on-link route to the router and
        `default via <router> dev <ENI link>` (replace: idempotent). Returns what was found missing
        (drift: a network manager flushed the table or downed the link), empty when all was in place."""
        table = eni_table(eni.device_index)
        with iproute_in(self.host_netns) as ipr:
            index = _link_index(ipr, eni.ifname)
            if index is None:
                raise WiringError(f"ENI link {eni.ifname} does not exist")
            drift = self._eni_drift(ipr, index, eni, table)
            # No host address but its primary on a container ENI: ec2-net-utils/networkd add its secondary IPs as
            # aliases, which makes task addresses local to the host (the local table wins).
            for addr in ipr.get_addr(family=2, index=index) if eni.primary_ip else ():
                address = addr.get_attr("IFA_ADDRESS")
                if address == eni.primary_ip:
                    continue
                _ignore((errno.EADDRNOTAVAIL,), ipr.addr, "del", index=index, address=address,
                        prefixlen=addr["prefixlen"])
                drift.append(f"host address {address}/{addr['prefixlen']} on {eni.ifname} removed")
            ipr.link("set", index=index, state="up", **({"mtu": eni.mtu} if eni.mtu else {}))
            ipr.route(
                "replace", dst=f"{eni.gateway}/32", oif=index, scope=RT_SCOPE_LINK, table=table,
                proto=RT_PROTO_TITUS,
            )
            ipr.route(
                "replace", dst="0.0.0.0/0", gateway=eni.gateway, oif=index, table=table,
                proto=RT_PROTO_TITUS,
            )
            drift += self._ensure_task_routes(ipr, table)
        before = ensure_loose_rp_filter(self.host_netns, eni.ifname)
        if before is not None:
            drift.append(f"{eni.ifname} rp_filter {before}")
        return drift

    def _ensure_task_routes(self, ipr: IPRoute, table: int) -> list[str]:
        """The hairpin routes of the ENI's tasks, re-derived from the host (each `from <ip> lookup
        <table>` rule names a task of this ENI; the `tn…` link holding that /32 in main is its link):
        the task's direct route in the ENI table. A flushed table gets them back without knowing the
        tasks. Returns what was missing. (The tasks' rules, the `iif` one included, are re-added by
        netns/taskrules.py, which knows the tasks and never races their teardown.)"""
        links = {link["index"]: str(link.get_attr("IFLA_IFNAME")) for link in ipr.link("dump")
                 if str(link.get_attr("IFLA_IFNAME") or "").startswith(HOST_IF_PREFIX)}
        holder = {str(r.get("RTA_DST")): int(r.get("RTA_OIF")) for r in ipr.route("dump", table=254)
                  if r.get("dst_len") == 32 and r.get("RTA_OIF") in links and r.get("RTA_TABLE") == 254}
        present = {(str(r.get("RTA_DST")), r.get("RTA_OIF")) for r in ipr.route("dump", table=table)
                   if r.get("dst_len") == 32 and r.get("RTA_TABLE") == table}
        rules = [r for r in ipr.rule("dump") if r.get("FRA_PROTOCOL") == RT_PROTO_TITUS and r.get("FRA_TABLE") == table]
        missing: list[str] = []
        for rule in rules:
            address = rule.get("FRA_SRC")
            if rule.get("FRA_PRIORITY") != RULE_FROM_CONTAINER_PRIORITY or str(address) not in holder:
                continue  # not a task rule, or its task is being torn down (gc removes the rule)
            link = holder[str(address)]
            ifname = links[link]
            if (str(address), link) not in present:
                self._task_route(ipr, str(address), link, table)
                missing.append(f"table {table} lacked {address} dev {ifname}")
        return missing

    @staticmethod
    def _task_route(ipr: IPRoute, address: str, link: int, table: int) -> None:
        ipr.route("replace", dst=f"{address}/32", oif=link, scope=RT_SCOPE_LINK, table=table,
                  proto=RT_PROTO_TITUS)

    def _eni_drift(self, ipr: IPRoute, index: int, eni: HostEni, table: int) -> list[str]:
        drift: list[str] = []
        (link,) = ipr.link("get", index=index)
        if not link["flags"] & 1:  # IFF_UP
            drift.append(f"{eni.ifname} down")
        if eni.mtu and link.get("IFLA_MTU") != eni.mtu:
            drift.append(f"{eni.ifname} mtu {link.get('IFLA_MTU')}")
        routes = ipr.route("dump", table=table)
        if not any(r.get("dst_len") == 0 and r.get("RTA_TABLE") == table for r in routes):
            drift.append(f"table {table} lacks its default route")
        return drift

    # ---- per container ---------------------------------------------------------------------------

    def setup(self, spec: ContainerNetSpec) -> dict[str, Any]:
        """Create or complete the container's network; returns the record to checkpoint. Idempotent:
        after a restart it finds the host link by its name and re-applies the rest."""
        address = str(ipaddress.IPv4Address(spec.address))
        name = host_ifname(spec.task_id)
        record: dict[str, Any] = {
            "host_ifname": name,
            "address": address,
            "netns_path": spec.netns_path,
            "table": eni_table(spec.eni.device_index) if spec.eni else None,
        }
        with iproute_in(self.host_netns) as host:
            index = _link_index(host, name)
            if index is None:
                self._check_free(host, address)
                self._create_veth(host, name, spec)
                index = _link_index(host, name)
                if index is None:
                    raise WiringError(f"veth {name} vanished right after creation")
                if self.owner is not None:
                    host.link("set", index=index, ifalias=self.owner)
            host.link("set", index=index, state="up")
            host.route(
                "replace", dst=f"{address}/32", oif=index, scope=RT_SCOPE_LINK, proto=RT_PROTO_TITUS
            )
            self._add_rule(host, priority=RULE_TO_CONTAINER_PRIORITY, table=254, dst=address, dst_len=32)
            if spec.eni is not None:
                table = eni_table(spec.eni.device_index)
                self._add_rule(
                    host,
                    priority=RULE_FROM_CONTAINER_PRIORITY,
                    table=table,
                    src=address,
                    src_len=32,
                )
                # Hairpin: what the task sends is routed by its ENI's table alone, which reaches
                # directly only the tasks of this ENI (same security groups); any other task on
                # this host is reached out of this ENI and back in through its own, past EC2's SGs.
                self._task_route(host, address, index, table)
                self._add_rule(host, priority=RULE_FROM_TASK_LINK_PRIORITY, table=table, iifname=name)
        with iproute_in(spec.netns_path) as inner:
            self._configure_container(inner, address, host_mac(spec.task_id), spec.mtu)
        return record

    def _check_free(self, host: IPRoute, address: str) -> None:
        # An address already routed to another of our links would steal that container's traffic.
        try:
            routes = host.route("get", dst=address)
        except NetlinkError as e:
            if e.code in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                return  # nothing routes there
            raise
        for route in routes:
            oif = route.get("RTA_OIF")
            if oif is None:
                continue
            (link,) = host.link("get", index=oif)
            ifname = link.get("IFLA_IFNAME") or ""
            if ifname.startswith(HOST_IF_PREFIX) and route.get("dst_len") == 32:
                raise AddressConflict(f"{address} is already wired to {ifname}")

    def _create_veth(self, host: IPRoute, name: str, spec: ContainerNetSpec) -> None:
        try:
            target = os.open(spec.netns_path, os.O_RDONLY)
        except OSError as e:
            raise WiringError(f"container namespace {spec.netns_path} not available: {e}") from None
        try:
            host.link(
                "add",
                ifname=name,
                kind="veth",
                mtu=spec.mtu,
                address=host_mac(spec.task_id),
                peer={"ifname": CONTAINER_IFNAME, "net_ns_fd": target, "mtu": spec.mtu},
            )
        except NetlinkError as e:
            if e.code == errno.EEXIST:
                raise WiringError(
                    f"{CONTAINER_IFNAME} already exists in {spec.netns_path} (or {name} on the host)"
                ) from None
            raise WiringError(f"creating veth {name}: {e}") from None
        finally:
            os.close(target)

    def _add_rule(self, host: IPRoute, **selector: Any) -> None:
        # The kernel refuses an identical rule (EEXIST): a re-run after a restart adds nothing.
        _ignore((errno.EEXIST,), host.rule, "add", protocol=RT_PROTO_TITUS, **selector)

    def _configure_container(self, inner: IPRoute, address: str, host_mac: str, mtu: int) -> None:
        eth = _link_index(inner, CONTAINER_IFNAME)
        if eth is None:
            raise WiringError(f"container namespace lacks {CONTAINER_IFNAME}")
        inner.link("set", index=LOOPBACK_INDEX, state="up")
        inner.link("set", index=eth, state="up", mtu=mtu)
        _ignore((errno.EEXIST,), inner.addr, "add", index=eth, address=address, prefixlen=32)
        inner.route("replace", dst=f"{LINK_LOCAL_GATEWAY}/32", oif=eth, scope=RT_SCOPE_LINK)
        inner.route("replace", dst="0.0.0.0/0", gateway=LINK_LOCAL_GATEWAY, oif=eth)
        inner.neigh(
            "replace", dst=LINK_LOCAL_GATEWAY, lladdr=host_mac, ifindex=eth, state=0x80
        )  # NUD_PERMANENT

    def teardown(self, record: dict[str, Any]) -> None:
        """Remove what `setup` made; safe after a partial setup and when repeated."""
        name = record.get("host_ifname")
        address = record.get("address")
        if not isinstance(name, str) or not name.startswith(HOST_IF_PREFIX):
            raise WiringError(f"refusing to tear down {name!r}: not a link this agent creates")
        with iproute_in(self.host_netns) as host:
            if isinstance(address, str):
                _ignore(
                    (errno.ENOENT,), host.rule, "del", priority=RULE_TO_CONTAINER_PRIORITY,
                    table=254, dst=address, dst_len=32,
                )
            table = record.get("table")
            if isinstance(address, str) and isinstance(table, int):
                _ignore(
                    (errno.ENOENT,), host.rule, "del", priority=RULE_FROM_CONTAINER_PRIORITY,
                    table=table, src=address, src_len=32,
                )
            if isinstance(table, int):  # the task's route in the ENI table goes with its link
                _ignore(
                    (errno.ENOENT,), host.rule, "del", priority=RULE_FROM_TASK_LINK_PRIORITY,
                    table=table, iifname=name,
                )
            index = _link_index(host, name)
            if index is not None:  # deleting one end removes both and the /32 route
                _ignore((errno.ENODEV,), host.link, "del", index=index)

    # ---- leaks -----------------------------------------------------------------------------------

    def gc(self, keep_tasks: set[str], netns_dir: Path = NETNS_DIR) -> GcReport:
        """Remove our links, rules and pinned namespaces that belong to no task in `keep_tasks`.
        Only `tn…` links, rules with our protocol and `titus-…` namespaces are ever looked at."""
        report = GcReport()
        keep_links = {host_ifname(t) for t in keep_tasks}
        keep_ns = {netns_name(t) for t in keep_tasks}
        with iproute_in(self.host_netns) as host:
            kept_addresses: set[str] = set()
            kept_links: set[str] = set()
            for link in host.link("dump"):
                ifname = link.get("IFLA_IFNAME") or ""
                if not ifname.startswith(HOST_IF_PREFIX):
                    continue
                foreign = self.owner is not None and link.get("IFLA_IFALIAS") != self.owner
                if ifname in keep_links or foreign:
                    kept_links.add(ifname)
                    for route in host.route("dump", oif=link["index"], table=254):
                        if route.get("dst_len") == 32 and route.get("RTA_DST"):
                            kept_addresses.add(str(route.get("RTA_DST")))
                    continue
                _ignore((errno.ENODEV,), host.link, "del", index=link["index"])
                report.links.append(ifname)
            for rule in host.rule("dump"):
                if rule.get("FRA_PROTOCOL") != RT_PROTO_TITUS:
                    continue
                iifname = rule.get("FRA_IIFNAME")
                selector = rule.get("FRA_DST") or rule.get("FRA_SRC") or iifname
                if selector in kept_addresses or (iifname and iifname in kept_links):
                    continue
                fields = {
                    "priority": rule.get("FRA_PRIORITY"),
                    "table": rule.get("FRA_TABLE"),
                }
                if iifname:
                    fields.update(iifname=iifname)
                if rule.get("FRA_DST"):
                    fields.update(dst=rule.get("FRA_DST"), dst_len=rule["dst_len"])
                if rule.get("FRA_SRC"):
                    fields.update(src=rule.get("FRA_SRC"), src_len=rule["src_len"])
                _ignore((errno.ENOENT,), host.rule, "del", **fields)
                report.rules.append(f"{fields['priority']}:{selector}")
        if netns_dir.is_dir() and self.owner is None:  # pinned namespaces carry no owner
            for entry in sorted(netns_dir.iterdir()):
                if entry.name.startswith(NETNS_PREFIX) and entry.name not in keep_ns:
                    unpin_netns_path(entry)
                    report.namespaces.append(entry.name)
        return report


# ---- pinning a container's namespace -------------------------------------------------------------


def pin_netns(pid: int, task_id: str, netns_dir: Path = NETNS_DIR) -> str:
    """Bind-mount /proc/<pid>/ns/net at <netns_dir>/titus-<hash>, so the task's namespace has a name
    that outlives the pid (teardown after the container exited, re-adoption after a restart)."""
    path = netns_dir / netns_name(task_id)
    if path.exists() and os.path.ismount(path):
        return str(path)
    netns_dir.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o444, exist_ok=True)
    source = f"/proc/{pid}/ns/net".encode()
    if _libc.mount(source, str(path).encode(), None, MS_BIND, None) != 0:
        err = ctypes.get_errno()
        path.unlink(missing_ok=True)
        raise WiringError(f"pinning netns of pid {pid}: {os.strerror(err)}")
    return str(path)


def unpin_netns_path(path: Path, prefix: str = NETNS_PREFIX) -> None:
    if not path.name.startswith(prefix):
        raise WiringError(f"refusing to unpin {path}: not a namespace this agent pins")
    if _libc.umount2(str(path).encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # EINVAL: not a mount point (any more)
            raise WiringError(f"unpinning {path}: {os.strerror(err)}")
    path.unlink(missing_ok=True)
