"""The provider interface the pool driver talks to."""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from netns.ipam import SgKey
from netns.limits import InstanceLimits


@dataclass(frozen=True)
class EniInfo:
    eni_id: str
    device_index: int
    security_groups: SgKey
    subnet_cidr: str
    gateway: str  # the subnet's router: .1 of the subnet, as in a VPC
    mac: str
    primary_ip: str
    secondary_ips: tuple[str, ...]
    created_at: float  # wall-clock seconds


class Provider(Protocol):
    """All calls may raise `netns.errors.NetworkError` subclasses; none returns unchecked data."""

    name: str
    api_calls: int  # requests sent to the backing API (for EC2: every attempt, retries included)

    @property
    def limits(self) -> InstanceLimits: ...

    async def list_enis(self) -> list[EniInfo]:
        """Container ENIs this node created and has attached (never the primary, never foreign)."""
        ...

    def foreign_device_indexes(self) -> frozenset[int]:
        """Device indexes on this instance held by ENIs that are not this node's container ENIs
        (the primary's 0, ENIs attached by other tools), as of the last `list_enis` or failed
        attach: `create_eni` must not be asked for them."""
        ...

    async def stray_enis(self, held: Collection[str]) -> list[EniInfo]:
        """This node's ENIs attached to this instance that are not in `held` (the pool's ENIs)
        and not being created: lost track of (e.g. attach succeeded, then both the follow-up call
        and the cleanup detach failed). Their device indexes count in `foreign_device_indexes`."""
        ...

    async def create_eni(self, security_groups: SgKey, device_index: int) -> EniInfo: ...

    async def assign_ips(self, eni_id: str, count: int) -> list[str]:
        """Up to `count` new secondary addresses, unique on this node and inside the subnet."""
        ...

    async def unassign_ips(self, eni_id: str, addresses: Sequence[str]) -> None: ...

    async def delete_eni(self, eni_id: str) -> None: ...

    async def find_leaked_enis(self, older_than_s: float, now: float) -> list[str]:
        """ENIs created by this node, not attached, older than `older_than_s`."""
        ...

    async def delete_leaked_eni(self, eni_id: str) -> None: ...


def usable_addresses(cidr: str) -> tuple[ipaddress.IPv4Network, int, int]:
    """(network, first usable, last usable) as integers, reserving what a VPC reserves: the network
    address, .1 router, .2 DNS, .3 future use, and the broadcast address."""
    net = ipaddress.IPv4Network(cidr)
    if net.num_addresses < 16:
        raise ValueError(f"subnet {cidr} is smaller than a /28")
    return net, int(net.network_address) + 4, int(net.broadcast_address) - 1


def gateway_of(cidr: str) -> str:
    return str(ipaddress.IPv4Network(cidr).network_address + 1)
