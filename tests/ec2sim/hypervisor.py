"""The simulated instance's "hypervisor": watches moto for ENIs attached to the instance and, after
`delay_s`, hot-plugs a link with the ENI's MAC into the host namespace (one end of a veth whose other
end sits in a fabric namespace, the VPC side; `host_ns=None`: the caller's own namespace, the real
host for an agent-level run); on detach it unplugs it. Plus `NetUtils`, what Amazon
Linux's ec2-net-utils does to hot-plugged ENIs: secondary IPs as host aliases, custom tables flushed.
Uses `ip`: run under the engine lock."""

from __future__ import annotations

import hashlib
import ipaddress
import subprocess
import threading
import time
from typing import Any


def ip(*args: str) -> None:
    done = subprocess.run(("ip", *args), capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def in_ns(ns: str | None) -> tuple[str, ...]:
    """`ip` arguments that run a command in the named namespace; None: the caller's own (the real
    host's, for an agent-level run that must reach loopback services)."""
    return () if ns is None else ("-n", ns)


class Hypervisor:
    def __init__(self, client: Any, instance_id: str, host_ns: str | None, fabric_ns: str,
                 delay_s: float = 0.5, poll_s: float = 0.05, vpc_routing: bool = False) -> None:
        self.client, self.instance_id = client, instance_id
        self.host_ns, self.fabric_ns = host_ns, fabric_ns
        self.delay_s, self.poll_s = delay_s, poll_s
        self.paused = False  # True: attachments are seen but never plugged (a link that never comes)
        self.plugged: dict[str, str] = {}  # eni id -> host link name
        self.errors: list[str] = []
        self.seen: list[str] = []  # every ENI id ever seen attached, in order
        self._seen: dict[str, float] = {}
        self.vpc_routing = vpc_routing  # also play the VPC's routing in the fabric namespace
        self._routed: dict[str, set[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="ec2sim-hypervisor")

    def __enter__(self) -> Hypervisor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for eni_id in list(self.plugged):
            self._unplug(eni_id)

    @staticmethod
    def link_name(eni_id: str) -> str:
        return "en" + hashlib.sha256(eni_id.encode()).hexdigest()[:8]

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._step()
            except Exception as e:  # keep simulating; the test reads errors
                self.errors.append(str(e))

    def _step(self) -> None:
        doc = self.client.describe_network_interfaces(
            Filters=[{"Name": "attachment.instance-id", "Values": [self.instance_id]}])
        attached = {e["NetworkInterfaceId"]: e["MacAddress"] for e in doc["NetworkInterfaces"]
                    if e.get("Attachment", {}).get("DeviceIndex", 0) > 0
                    and e["Attachment"].get("Status", "attached") == "attached"}
        now = time.monotonic()
        for eni_id, mac in attached.items():
            if eni_id not in self._seen and eni_id not in self.seen:
                self.seen.append(eni_id)
            self._seen.setdefault(eni_id, now)
            if eni_id not in self.plugged and not self.paused and now - self._seen[eni_id] >= self.delay_s:
                name = self.link_name(eni_id)
                ip(*in_ns(self.host_ns), "link", "add", name, "address", mac, "type", "veth",
                   "peer", "name", "f" + name[2:], "netns", self.fabric_ns)
                ip("-n", self.fabric_ns, "link", "set", "f" + name[2:], "up")  # the VPC side is up
                self.plugged[eni_id] = name
        if self.vpc_routing:
            self._route(doc["NetworkInterfaces"])
        for eni_id in [e for e in self.plugged if e not in attached]:
            self._unplug(eni_id)
        for eni_id in [e for e in self._seen if e not in attached]:
            del self._seen[eni_id]

    def _route(self, enis: list[dict[str, Any]]) -> None:
        """The VPC side of each plugged ENI: the subnet router's address on its fabric end, and every
        private IP of the ENI delivered to the ENI's MAC (EC2 needs no ARP from the instance)."""
        for eni in enis:
            name = self.plugged.get(eni["NetworkInterfaceId"])
            if name is None:
                continue
            fab = "f" + name[2:]
            if name not in self._routed:
                subnet = self.client.describe_subnets(SubnetIds=[eni["SubnetId"]])["Subnets"][0]
                base = int(ipaddress.IPv4Network(subnet["CidrBlock"]).network_address)
                ip("-n", self.fabric_ns, "addr", "replace", f"{ipaddress.IPv4Address(base + 1)}/32", "dev", fab)
                self._routed[name] = set()
            for entry in eni["PrivateIpAddresses"]:
                address = entry["PrivateIpAddress"]
                if address in self._routed[name]:
                    continue
                ip("-n", self.fabric_ns, "route", "replace", f"{address}/32", "dev", fab)
                ip("-n", self.fabric_ns, "neigh", "replace", address, "lladdr", eni["MacAddress"],
                   "dev", fab, "nud", "permanent")
                self._routed[name].add(address)

    def _unplug(self, eni_id: str) -> None:
        name = self.plugged.pop(eni_id)
        self._routed.pop(name, None)
        try:
            ip(*in_ns(self.host_ns), "link", "del", name)
        except RuntimeError:
            pass  # already gone with its namespace


class NetUtils:
    """ec2-net-utils' behaviour, on demand: add an ENI's secondary IPs as /32 host aliases, flush a
    custom routing table."""

    def __init__(self, host_ns: str | None) -> None:
        self.host_ns = host_ns

    def add_aliases(self, link: str, addresses: list[str]) -> None:
        for address in addresses:
            ip(*in_ns(self.host_ns), "addr", "add", f"{address}/32", "dev", link)

    def flush_table(self, table: int) -> None:
        ip(*in_ns(self.host_ns), "route", "flush", "table", str(table))
