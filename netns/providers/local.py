"""The `local` provider: a host-local pretend VPC over a configured CIDR, no cloud.

`LocalVpc` is the "cloud": which addresses of the CIDR are taken and by which ENI. Several
`LocalProvider`s (hosts) may share one in-process `LocalVpc` (tests do) so addresses never clash.
Limits are those of a configured instance type, so the pool behaves as it would on EC2.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import itertools
import json
import os
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from netns.errors import (
    EniLimitReached,
    IpLimitReached,
    NetworkError,
    SubnetExhausted,
    UnknownSecurityGroup,
)
from netns.ipam import SgKey
from netns.limits import InstanceLimits, limits_for
from netns.providers.base import EniInfo, gateway_of, usable_addresses


@dataclass
class _LocalEni:
    eni_id: str
    node_id: str
    device_index: int
    security_groups: SgKey
    primary_ip: str
    created_at: float
    attached: bool = True
    secondary: list[str] = field(default_factory=list)


class LocalVpc:
    """`state_path` None: in memory (tests sharing one VPC in a process). With a path the VPC is a
    JSON file shared by every agent on the host (under an flock), so it survives agent restarts and
    two agents on one host never hand out the same address."""

    def __init__(
        self,
        cidr: str = "100.64.0.0/16",
        security_groups: Iterable[str] | None = None,
        state_path: Path | None = None,
    ) -> None:
        self.cidr = cidr
        self.network, self._first, self._last = usable_addresses(cidr)
        self.known_groups = None if security_groups is None else set(security_groups)
        self.taken: dict[str, str] = {}  # address -> ENI id
        self.enis: dict[str, _LocalEni] = {}
        self._ids = itertools.count(1)
        self._next_id = 1
        self._cursor = self._first
        self.state_path = state_path
        self.seen: dict[str, float] = {}  # node -> last provider call (shared state only)
        # A node silent this long (its agent gone for good: tests, a renamed host) loses its ENIs
        # and addresses, so the shared file does not fill up with the dead.
        self.node_expiry_s = 86400.0

    def touch(self, node_id: str, now: float) -> None:
        """Mark `node_id` alive and drop the ENIs of nodes silent for `node_expiry_s`."""
        if self.state_path is None:
            return
        self.seen[node_id] = now
        for node, last in list(self.seen.items()):
            if now - last <= self.node_expiry_s:
                continue
            del self.seen[node]
            for eni in [e for e in self.enis.values() if e.node_id == node]:
                del self.enis[eni.eni_id]
                for address in [eni.primary_ip, *eni.secondary]:
                    self.free(address)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Load the shared state, let the caller change it, write it back (no-op in memory)."""
        if self.state_path is None:
            yield
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(self.state_path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._load()
            yield
            self._store()
        finally:
            os.close(fd)  # releases the lock

    def _load(self) -> None:
        assert self.state_path is not None
        if not self.state_path.exists():
            return
        doc = json.loads(self.state_path.read_text())
        if doc.get("cidr") != self.cidr:
            raise NetworkError(f"{self.state_path} is for {doc.get('cidr')}, not {self.cidr}")
        self.enis = {}
        for e in doc["enis"]:
            e["security_groups"] = tuple(e["security_groups"])
            self.enis[e["eni_id"]] = _LocalEni(**e)
        self.taken = dict(doc["taken"])
        cursor = int(doc["cursor"])
        self._cursor = cursor if self._first <= cursor <= self._last else self._first
        self._next_id = int(doc["next_id"])
        self.seen = {str(k): float(v) for k, v in doc.get("seen", {}).items()}
        for eni in self.enis.values():  # nodes from before `seen` existed start their clock now
            self.seen.setdefault(eni.node_id, time.time())

    def _store(self) -> None:
        assert self.state_path is not None
        doc = {
            "cidr": self.cidr,
            "enis": [asdict(e) for e in self.enis.values()],
            "taken": self.taken,
            "cursor": self._cursor,
            "next_id": self._next_id,
            "seen": self.seen,
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.state_path)

    def take(self, eni_id: str) -> str:
        """Next free address, scanning round-robin so a released address is reused late."""
        span = self._last - self._first + 1
        for _ in range(span):
            candidate = str(ipaddress.IPv4Address(self._cursor))
            self._cursor = self._first if self._cursor >= self._last else self._cursor + 1
            if candidate not in self.taken:
                self.taken[candidate] = eni_id
                return candidate
        raise SubnetExhausted(f"subnet {self.cidr} has no free address")

    def free(self, address: str) -> None:
        self.taken.pop(address, None)

    def new_eni_id(self, node_id: str) -> str:
        if self.state_path is not None:
            n, self._next_id = self._next_id, self._next_id + 1
            return f"eni-local-{node_id}-{n}"
        return f"eni-local-{node_id}-{next(self._ids)}"


class LocalProvider:
    name = "local"

    def __init__(
        self,
        node_id: str,
        vpc: LocalVpc | None = None,
        instance_type: str = "m5.24xlarge",
    ) -> None:
        self.node_id = node_id
        self.vpc = vpc or LocalVpc()
        self._limits = limits_for(instance_type)
        self.api_calls = 0
        self.fail_next: list[NetworkError] = []  # injected faults, raised one per call (tests)

    @property
    def limits(self) -> InstanceLimits:
        return self._limits

    def _call(self) -> None:
        self.api_calls += 1
        self.vpc.touch(self.node_id, time.time())
        if self.fail_next:
            raise self.fail_next.pop(0)

    def _mine(self) -> list[_LocalEni]:
        return [e for e in self.vpc.enis.values() if e.node_id == self.node_id]

    def _info(self, eni: _LocalEni) -> EniInfo:
        return EniInfo(
            eni_id=eni.eni_id,
            device_index=eni.device_index,
            security_groups=eni.security_groups,
            subnet_cidr=self.vpc.cidr,
            gateway=gateway_of(self.vpc.cidr),
            mac="",
            primary_ip=eni.primary_ip,
            secondary_ips=tuple(eni.secondary),
            created_at=eni.created_at,
        )

    def _eni(self, eni_id: str) -> _LocalEni:
        eni = self.vpc.enis.get(eni_id)
        if eni is None or eni.node_id != self.node_id:
            raise NetworkError(f"ENI {eni_id} does not belong to node {self.node_id}")
        return eni

    def _list_enis(self) -> list[EniInfo]:
        self._call()
        return [self._info(e) for e in self._mine() if e.attached]

    def _create_eni(self, security_groups: SgKey, device_index: int) -> EniInfo:
        self._call()
        if self.vpc.known_groups is not None:
            unknown = sorted(set(security_groups) - self.vpc.known_groups)
            if unknown:
                raise UnknownSecurityGroup(f"security groups do not exist: {', '.join(unknown)}")
        attached = [e for e in self._mine() if e.attached]
        if len(attached) >= self._limits.container_enis:
            raise EniLimitReached(f"node {self.node_id} already has {len(attached)} container ENIs")
        eni_id = self.vpc.new_eni_id(self.node_id)
        primary = self.vpc.take(eni_id)
        eni = _LocalEni(eni_id, self.node_id, device_index, security_groups, primary, time.time())
        self.vpc.enis[eni_id] = eni
        return self._info(eni)

    def _assign_ips(self, eni_id: str, count: int) -> list[str]:
        self._call()
        eni = self._eni(eni_id)
        if len(eni.secondary) + count > self._limits.container_ips_per_eni:
            raise IpLimitReached(
                f"{eni_id} holds {len(eni.secondary)} of {self._limits.container_ips_per_eni} IPs"
            )
        got: list[str] = []
        try:
            for _ in range(count):
                got.append(self.vpc.take(eni_id))
        except SubnetExhausted:
            if not got:
                raise
        eni.secondary += got
        return got

    def _unassign_ips(self, eni_id: str, addresses: Sequence[str]) -> None:
        self._call()
        eni = self._eni(eni_id)
        for address in addresses:
            if address in eni.secondary:
                eni.secondary.remove(address)
                self.vpc.free(address)

    def _delete_eni(self, eni_id: str) -> None:
        self._call()
        eni = self.vpc.enis.pop(eni_id, None)
        if eni is None:
            return
        for address in [eni.primary_ip, *eni.secondary]:
            self.vpc.free(address)

    def _find_leaked_enis(self, older_than_s: float, now: float) -> list[str]:
        self._call()
        return [e.eni_id for e in self._mine() if not e.attached and now - e.created_at >= older_than_s]

    def foreign_device_indexes(self) -> frozenset[int]:
        return frozenset({0})  # the host's own interface; nothing else attaches ENIs here

    async def stray_enis(self, held: Collection[str]) -> list[EniInfo]:
        with self.vpc.locked():
            return [e for e in self._list_enis() if e.eni_id not in held]

    async def list_enis(self) -> list[EniInfo]:
        with self.vpc.locked():
            return self._list_enis()

    async def create_eni(self, security_groups: SgKey, device_index: int) -> EniInfo:
        with self.vpc.locked():
            return self._create_eni(security_groups, device_index)

    async def assign_ips(self, eni_id: str, count: int) -> list[str]:
        with self.vpc.locked():
            return self._assign_ips(eni_id, count)

    async def unassign_ips(self, eni_id: str, addresses: Sequence[str]) -> None:
        with self.vpc.locked():
            return self._unassign_ips(eni_id, addresses)

    async def delete_eni(self, eni_id: str) -> None:
        with self.vpc.locked():
            return self._delete_eni(eni_id)

    async def find_leaked_enis(self, older_than_s: float, now: float) -> list[str]:
        with self.vpc.locked():
            return self._find_leaked_enis(older_than_s, now)

    async def delete_leaked_eni(self, eni_id: str) -> None:
        await self.delete_eni(eni_id)
