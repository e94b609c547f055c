"""A small VPC built from network namespaces (test-only; uses `ip`, `sysctl` via /proc and `nft`).

    container ns ──veth── host A ns ──"ENI" veth── fabric ns ──"ENI" veth── host B ns ──veth── container ns

The fabric plays the VPC: it holds the subnet router address on every ENI link, a /32 route per
container address towards the ENI that holds it, and the security groups as nftables sets.
Every name starts with a per-run prefix; `close()` deletes every namespace (and with them all links).
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from dataclasses import dataclass, field

from netns.wiring import HostEni, enter_netns_fd

VPC_ROUTER = "10.30.0.1"


def sh(*args: str, input: str | None = None) -> None:
    done = subprocess.run(args, input=input, capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")


def ns_path(name: str) -> str:
    return f"/var/run/netns/{name}"


def sysctl(ns: str, key: str, value: str) -> None:
    sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}")


@dataclass
class Host:
    name: str  # its namespace
    eni: HostEni
    eni_primary: str
    fabric_link: str


@dataclass
class World:
    prefix: str
    hosts: dict[str, Host] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)

    @property
    def fabric(self) -> str:
        return f"{self.prefix}fab"

    def add_ns(self, name: str) -> str:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def build(self, host_names: tuple[str, ...] = ("a", "b")) -> World:
        self.add_ns(self.fabric)
        sysctl(self.fabric, "net.ipv4.ip_forward", "1")
        for i, h in enumerate(host_names, start=1):
            ns = self.add_ns(f"{self.prefix}h{h}")
            for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                        "net.ipv4.conf.default.rp_filter=0"):
                sysctl(ns, *key.split("="))
            primary = f"10.30.0.{10 + i}"
            fab_link = f"f{h}1"
            sh("ip", "link", "add", "eni1", "netns", ns, "type", "veth", "peer", "name", fab_link,
               "netns", self.fabric)
            sh("ip", "-n", ns, "addr", "add", f"{primary}/32", "dev", "eni1")
            sh("ip", "-n", ns, "link", "set", "eni1", "up")
            sh("ip", "-n", ns, "route", "add", f"{VPC_ROUTER}/32", "dev", "eni1", "scope", "link")
            sh("ip", "-n", self.fabric, "addr", "add", f"{VPC_ROUTER}/32", "dev", fab_link)
            sh("ip", "-n", self.fabric, "link", "set", fab_link, "up")
            sh("ip", "-n", self.fabric, "route", "add", f"{primary}/32", "dev", fab_link, "scope", "link")
            self.hosts[h] = Host(ns, HostEni(1, "eni1", VPC_ROUTER), primary, fab_link)
        return self

    def container(self, name: str) -> str:
        return ns_path(self.add_ns(f"{self.prefix}c{name}"))

    def vpc_route(self, address: str, host: str) -> None:
        """The VPC learns that `address` is a secondary IP of `host`'s ENI."""
        h = self.hosts[host]
        sh("ip", "-n", self.fabric, "route", "replace", f"{address}/32", "via", h.eni_primary,
           "dev", h.fabric_link)

    def security_groups(self, members: dict[str, list[str]], allow: list[tuple[str, str, int]]) -> None:
        """Fabric firewall: `allow` = (from group, to group, tcp port); everything else towards a
        group member's TCP port is dropped."""
        lines = ["table inet vpc_sg {"]
        for group, addresses in members.items():
            elements = f"elements = {{ {', '.join(addresses)} }}" if addresses else ""
            lines.append(f"  set {group} {{ type ipv4_addr; {elements} }}")
        lines += ["  chain forward {", "    type filter hook forward priority filter; policy accept;",
                  "    ct state established,related accept"]
        for src, dst, port in allow:
            lines.append(f"    ip saddr @{src} ip daddr @{dst} tcp dport {port} accept")
        for group in members:
            lines.append(f"    ip daddr @{group} meta l4proto tcp drop")
        lines += ["  }", "}"]
        sh("ip", "netns", "exec", self.fabric, "nft", "-f", "-", input="\n".join(lines) + "\n")

    def close(self) -> None:
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
        self.namespaces.clear()


def socket_in(netns_path: str) -> socket.socket:
    """A TCP socket that lives in `netns_path` (opened from a thread that setns'd there)."""
    out: list[socket.socket] = []
    errors: list[BaseException] = []

    def run() -> None:
        fd = os.open(netns_path, os.O_RDONLY)
        try:
            enter_netns_fd(fd)  # this thread only; it ends right after
            out.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        except BaseException as e:  # noqa: BLE001 - reported to the caller
            errors.append(e)
        finally:
            os.close(fd)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return out[0]


def listen(netns_path: str, address: str, port: int) -> socket.socket:
    s = socket_in(netns_path)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, port))
    s.listen(16)
    return s


def can_connect(netns_path: str, address: str, port: int, timeout: float = 0.5) -> bool:
    s = socket_in(netns_path)
    s.settimeout(timeout)
    try:
        s.connect((address, port))
        return True
    except OSError:
        return False
    finally:
        s.close()
