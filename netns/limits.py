"""Per-instance-type ENI and IPv4 limits (AWS published numbers: ENIs per instance, IPv4 per ENI).

An ENI's primary address is never given to a container and the primary ENI (device 0) belongs to
the host, so a host offers (ENIs - 1) x (IPv4 per ENI - 1) container addresses.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InstanceLimits:
    max_enis: int  # network interfaces the instance type can attach, primary included
    ipv4_per_eni: int  # private IPv4 addresses per interface, primary included

    @property
    def container_enis(self) -> int:
        return self.max_enis - 1

    @property
    def container_ips_per_eni(self) -> int:
        return self.ipv4_per_eni - 1

    @property
    def container_capacity(self) -> int:
        return self.container_enis * self.container_ips_per_eni


def _family(prefix: str, sizes: dict[str, tuple[int, int]]) -> dict[str, InstanceLimits]:
    return {f"{prefix}.{size}": InstanceLimits(*numbers) for size, numbers in sizes.items()}


_SMALL = {"large": (3, 10), "xlarge": (4, 15), "2xlarge": (4, 15), "4xlarge": (8, 30)}
_M5_LIKE = {
    **_SMALL,
    "8xlarge": (8, 30),
    "12xlarge": (8, 30),
    "16xlarge": (15, 50),
    "24xlarge": (15, 50),
    "metal": (15, 50),
}
_SIXTH_GEN = {**_M5_LIKE, "32xlarge": (15, 50)}
_C5 = {
    **_SMALL,
    "9xlarge": (8, 30),
    "12xlarge": (8, 30),
    "18xlarge": (15, 50),
    "24xlarge": (15, 50),
    "metal": (15, 50),
}

INSTANCE_LIMITS: dict[str, InstanceLimits] = {
    **_family("m5", _M5_LIKE),
    **_family("r5", _M5_LIKE),
    **_family("m6i", _SIXTH_GEN),
    **_family("r6i", _SIXTH_GEN),
    **_family("c5", _C5),
    **_family("c6i", _SIXTH_GEN),
    "m7i.48xlarge": InstanceLimits(15, 50),
    "p3dn.24xlarge": InstanceLimits(15, 50),
    "t3.micro": InstanceLimits(2, 2),
    "t3.small": InstanceLimits(3, 4),
    "t3.medium": InstanceLimits(3, 6),
    "t3.large": InstanceLimits(3, 12),
}


class UnknownInstanceType(KeyError):
    pass


def limits_for(instance_type: str) -> InstanceLimits:
    try:
        return INSTANCE_LIMITS[instance_type]
    except KeyError:
        raise UnknownInstanceType(
            f"no ENI/IP limits known for instance type {instance_type!r}; add it to netns/limits.py"
        ) from None
