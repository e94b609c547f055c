"""The `aws` provider: container ENIs and secondary IPs through the EC2 API (boto3).

- Every blocking boto3 call runs in a worker thread (`asyncio.to_thread`); the event loop never waits
  on the network.
- Throttling (RequestLimitExceeded & co.) and transient failures (5xx, connection errors) are
  retried with exponential backoff and full jitter; every attempt counts in `api_calls`.
- Everything created is tagged `titus:node`, `titus:instance`, `titus:created` (tag-on-create) and
  marked DeleteOnTermination once attached; listing and deletion only consider ENIs carrying this
  node's tag; the leak GC, with `sweep_cell`, any titus node's `available` ENIs past the grace.
- Detach is clean (no Force); Force is the last resort when a clean detach did not finish.
- A stray (an ENI of this node attached here that nobody holds: attach succeeded, then both the
  DeleteOnTermination call and the cleanup detach failed) keeps its device index out of use and is
  listed by `stray_enis` for the pool's periodic recovery to detach and delete.
- Answers are checked, not trusted: limits from `netns/limits.py` are enforced here (moto enforces
  none), addresses must be inside the subnet, outside the VPC-reserved ones and not already held on
  this node (moto hands out duplicates); bad ones are given back and replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from netns.errors import (
    AddressConflict,
    EniLimitReached,
    IpLimitReached,
    NetworkError,
    ProviderResponseInvalid,
    ProviderThrottled,
    ProviderUnavailable,
    SubnetExhausted,
    UnknownSecurityGroup,
)
from netns.ipam import SgKey, sg_key
from netns.limits import InstanceLimits, limits_for
from netns.providers.base import EniInfo, gateway_of, usable_addresses

log = logging.getLogger("titus.netns.aws")
TAG_NODE = "titus:node"
TAG_INSTANCE = "titus:instance"
TAG_CREATED = "titus:created"
DESCRIPTION_PREFIX = "titus-node"

THROTTLE_CODES = {
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "TooManyRequestsException",
}
TRANSIENT_CODES = {"InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable"}
ERROR_TYPES: dict[str, type[NetworkError]] = {
    "InvalidGroup.NotFound": UnknownSecurityGroup,
    "InvalidSecurityGroupID.NotFound": UnknownSecurityGroup,
    "InvalidGroupId.Malformed": UnknownSecurityGroup,
    "InsufficientFreeAddressesInSubnet": SubnetExhausted,
    "InsufficientCidrBlocks": SubnetExhausted,
    "AttachmentLimitExceeded": EniLimitReached,
    "PrivateIpAddressLimitExceeded": IpLimitReached,
}
REPLACEMENT_ROUNDS = 3


@dataclass(frozen=True)
class AwsConfig:
    node_id: str
    instance_id: str
    instance_type: str
    subnet_id: str
    region: str = "us-east-1"
    endpoint_url: str | None = None
    max_attempts: int = 6
    base_delay_s: float = 0.1
    max_delay_s: float = 5.0
    detach_wait_attempts: int = 10
    limits: InstanceLimits | None = None  # None: netns/limits.py's table for instance_type
    # The leak GC also deletes `available` titus ENIs of other nodes (a terminated host's, a crashed
    # agent's between detach and delete): only an off-node cleaner is fully reliable.
    sweep_cell: bool = False
    # After EC2 says the subnet is out of addresses, no create/assign call for this long (the VPC
    # CNI's insufficientCidrErrorCooldown): retrying every pool pass throttles EC2 account-wide.
    exhausted_cooldown_s: float = 120.0


def make_client(config: AwsConfig) -> Any:
    """An EC2 client with the SDK's own retries off: this provider retries, and counts, itself."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "ec2",
        region_name=config.region,
        endpoint_url=config.endpoint_url,
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=10),
    )


def _error_code(exc: BaseException) -> tuple[str, int]:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return "", 0
    err = response.get("Error") or {}
    meta = response.get("ResponseMetadata") or {}
    status = meta.get("HTTPStatusCode")
    return str(err.get("Code", "")), int(status) if isinstance(status, int) else 0


def _str(doc: Any, key: str) -> str:
    value = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(value, str) or not value:
        raise ProviderResponseInvalid(f"EC2 answer lacks {key}: {doc!r:.200}")
    return value


class AwsProvider:
    name = "aws"

    def __init__(
        self,
        config: AwsConfig,
        client: Any | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._exhausted_until = 0.0
        self.exhausted_refusals = 0  # create/assign refused locally during the cooldown
        self.config = config
        self.client = client if client is not None else make_client(config)
        self._limits = config.limits or limits_for(config.instance_type)
        self._sleep = sleep
        self.api_calls = 0
        # Calls spent giving back and replacing addresses EC2 should never have offered (moto's
        # duplicates): counted in api_calls too, reported apart so a figure can tell them from batching.
        self.repair_calls = 0
        self.retries = 0
        self.forced_detaches = 0
        self._subnet_cidr: str | None = None
        self._known_groups: set[str] = set()
        self._enis: dict[str, EniInfo] = {}
        self._attachments: dict[str, str] = {}
        self._foreign_indexes: frozenset[int] = frozenset({0})
        self._creating: set[str] = set()  # created, not yet returned to the pool nor cleaned up
        self._strays: dict[str, int] = {}  # this node's ENIs attached here that nobody holds -> index

    @property
    def limits(self) -> InstanceLimits:
        return self._limits

    # ---- the one way to call EC2 -----------------------------------------------------------------

    async def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        method = getattr(self.client, operation)
        for attempt in range(self.config.max_attempts):
            self.api_calls += 1
            try:
                answer = await asyncio.to_thread(method, **kwargs)
            except ClientError as e:
                code, status = _error_code(e)
                if ERROR_TYPES.get(code) is SubnetExhausted:
                    self._exhausted_until = self._clock() + self.config.exhausted_cooldown_s
                if code in ERROR_TYPES:
                    raise ERROR_TYPES[code](f"{operation}: {code}: {e}") from None
                retry = code in THROTTLE_CODES or code in TRANSIENT_CODES or status >= 500
                if not retry:
                    raise NetworkError(f"{operation} refused: {code or status}: {e}") from None
                last: Exception = e
            except BotoCoreError as e:  # connection refused, timeouts, endpoint errors
                code, last = "", e
            else:
                if not isinstance(answer, dict):
                    raise ProviderResponseInvalid(f"{operation} answered {type(answer).__name__}")
                return answer
            if attempt + 1 < self.config.max_attempts:
                self.retries += 1
                cap = min(self.config.max_delay_s, self.config.base_delay_s * 2**attempt)
                await self._sleep(random.uniform(0, cap))  # full jitter
        if code in THROTTLE_CODES:
            raise ProviderThrottled(f"{operation} throttled after {self.config.max_attempts} attempts")
        raise ProviderUnavailable(f"{operation} failed after {self.config.max_attempts} attempts: {last}")

    # ---- subnet, groups, parsing -------------------------------------------------------------------

    async def _subnet(self) -> str:
        if self._subnet_cidr is None:
            answer = await self._call("describe_subnets", SubnetIds=[self.config.subnet_id])
            subnets = answer.get("Subnets")
            if not isinstance(subnets, list) or len(subnets) != 1:
                raise ProviderResponseInvalid(f"subnet {self.config.subnet_id} not described")
            cidr = _str(subnets[0], "CidrBlock")
            usable_addresses(cidr)  # validates
            self._subnet_cidr = cidr
        return self._subnet_cidr

    async def _check_groups(self, groups: SgKey) -> None:
        missing = [g for g in groups if g not in self._known_groups]
        if not missing:
            return
        answer = await self._call("describe_security_groups", GroupIds=missing)
        found = {g.get("GroupId") for g in answer.get("SecurityGroups", []) if isinstance(g, dict)}
        unknown = sorted(set(missing) - found)
        if unknown:
            raise UnknownSecurityGroup(f"security groups do not exist: {', '.join(unknown)}")
        self._known_groups.update(missing)

    def _check_address(self, address: Any, cidr: str) -> str | None:
        """The address if it can be used, None if it is reserved, outside the subnet or malformed."""
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            return None
        _, first, last = usable_addresses(cidr)
        return str(ip) if first <= int(ip) <= last else None

    def _parse_eni(self, doc: Any, cidr: str) -> EniInfo:
        eni_id = _str(doc, "NetworkInterfaceId")
        groups = sg_key(_str(g, "GroupId") for g in doc.get("Groups", []))
        attachment = doc.get("Attachment") or {}
        device_index = attachment.get("DeviceIndex")
        if not isinstance(device_index, int) or device_index < 0:
            raise ProviderResponseInvalid(f"{eni_id} has no device index")
        if attachment.get("AttachmentId"):
            self._attachments[eni_id] = str(attachment["AttachmentId"])
        primary, secondary = "", []
        for entry in doc.get("PrivateIpAddresses", []):
            address = _str(entry, "PrivateIpAddress")
            if entry.get("Primary"):
                primary = address
            else:
                secondary.append(address)
        tags = {t.get("Key"): t.get("Value") for t in doc.get("TagSet", []) if isinstance(t, dict)}
        try:
            created = float(tags.get(TAG_CREATED) or 0)
        except ValueError:
            created = 0.0
        return EniInfo(
            eni_id=eni_id,
            device_index=device_index,
            security_groups=groups,
            subnet_cidr=cidr,
            gateway=gateway_of(cidr),
            mac=str(doc.get("MacAddress", "")),
            primary_ip=primary or _str(doc, "PrivateIpAddress"),
            secondary_ips=tuple(secondary),
            created_at=created,
        )

    def _held(self) -> dict[str, str]:
        held: dict[str, str] = {}
        for eni in self._enis.values():
            for address in (eni.primary_ip, *eni.secondary_ips):
                held[address] = eni.eni_id
        return held

    # ---- Provider --------------------------------------------------------------------------------

    async def list_enis(self) -> list[EniInfo]:
        cidr = await self._subnet()
        docs = await self._attached_here()
        mine = [d for d in docs if self._is_mine(d)]
        enis = [self._parse_eni(d, cidr) for d in mine]
        self._enis = {e.eni_id: e for e in enis if e.device_index > 0}
        self._strays = {k: v for k, v in self._strays.items() if k not in self._enis}
        return list(self._enis.values())

    def foreign_device_indexes(self) -> frozenset[int]:
        return self._foreign_indexes | frozenset(self._strays.values())

    async def stray_enis(self, held: Collection[str]) -> list[EniInfo]:
        """This node's ENIs attached to this instance that neither `held` (the pool's) nor a create
        in progress accounts for: lost by a create whose modify and cleanup detach both failed. Their
        device indexes count as taken until `delete_eni` removes them."""
        cidr = await self._subnet()
        docs = await self._attached_here()
        strays = []
        for doc in docs:
            eni_id = doc.get("NetworkInterfaceId") if isinstance(doc, dict) else None
            if not self._is_mine(doc) or eni_id in held or eni_id in self._creating:
                continue
            eni = self._parse_eni(doc, cidr)
            if eni.device_index > 0:
                strays.append(eni)
        self._strays = {e.eni_id: e.device_index for e in strays}
        return strays

    async def _attached_here(self) -> list[Any]:
        """Every ENI attached to this instance (DescribeNetworkInterfaces by attachment, which
        carries the same device indexes as DescribeInstances). Remembers the indexes of ENIs that
        are not this node's (the primary, other tools' ENIs) so the pool never asks for them."""
        answer = await self._call(
            "describe_network_interfaces",
            Filters=[{"Name": "attachment.instance-id", "Values": [self.config.instance_id]}],
        )
        docs = answer.get("NetworkInterfaces", [])
        if not isinstance(docs, list):
            raise ProviderResponseInvalid("DescribeNetworkInterfaces: NetworkInterfaces is not a list")
        foreign = {0}
        for d in docs:
            index = (d.get("Attachment") or {}).get("DeviceIndex") if isinstance(d, dict) else None
            if not isinstance(index, int):
                continue
            if not self._is_mine(d):
                foreign.add(index)
            elif d.get("NetworkInterfaceId") not in self._enis and d.get("NetworkInterfaceId") not in self._creating:
                self._strays[str(d.get("NetworkInterfaceId"))] = index  # ours, held by nobody
        self._foreign_indexes = frozenset(foreign)
        return docs

    def _is_mine(self, doc: Any) -> bool:
        tags = doc.get("TagSet", []) if isinstance(doc, dict) else []
        return any(isinstance(t, dict) and t.get("Key") == TAG_NODE and t.get("Value") == self.config.node_id
                   for t in tags)

    async def create_eni(self, security_groups: SgKey, device_index: int) -> EniInfo:
        if len(self._enis) >= self._limits.container_enis:
            raise EniLimitReached(
                f"{self.config.instance_type} allows {self._limits.container_enis} container ENIs"
            )
        if not security_groups:
            raise UnknownSecurityGroup("an ENI needs at least one security group")
        self._check_cooldown()
        cidr = await self._subnet()
        await self._check_groups(security_groups)
        tags = [
            {"Key": TAG_NODE, "Value": self.config.node_id},
            {"Key": TAG_INSTANCE, "Value": self.config.instance_id},
            {"Key": TAG_CREATED, "Value": str(int(time.time()))},
        ]
        repairing_since: int | None = None
        for _ in range(REPLACEMENT_ROUNDS):
            info = await self._create_and_attach(security_groups, device_index, tags, cidr)
            if info.primary_ip not in self._held() and self._check_address(info.primary_ip, cidr):
                self._enis[info.eni_id] = info
                self._count_repairs(repairing_since)
                return info
            # moto can hand out an address already held here; EC2 would not. Give it back, retry.
            repairing_since = self.api_calls if repairing_since is None else repairing_since
            self._creating.add(info.eni_id)  # not a stray while it is being given back
            try:
                await self.delete_eni(info.eni_id)
            finally:
                self._creating.discard(info.eni_id)
        self._count_repairs(repairing_since)
        raise AddressConflict("EC2 kept offering ENIs whose primary address is already in use")

    async def _create_and_attach(
        self, security_groups: SgKey, device_index: int, tags: list[dict[str, str]], cidr: str
    ) -> EniInfo:
        answer = await self._call(
            "create_network_interface",
            SubnetId=self.config.subnet_id,
            Groups=list(security_groups),
            Description=f"{DESCRIPTION_PREFIX} {self.config.node_id}",
            TagSpecifications=[{"ResourceType": "network-interface", "Tags": tags}],
        )
        doc = answer.get("NetworkInterface")
        eni_id = _str(doc, "NetworkInterfaceId")
        self._creating.add(eni_id)
        try:
            return await self._attach_new(eni_id, doc, device_index, tags, cidr)
        finally:
            self._creating.discard(eni_id)

    async def _attach_new(
        self, eni_id: str, doc: Any, device_index: int, tags: list[dict[str, str]], cidr: str
    ) -> EniInfo:
        try:
            attached = await self._call(
                "attach_network_interface",
                NetworkInterfaceId=eni_id,
                InstanceId=self.config.instance_id,
                DeviceIndex=device_index,
            )
            self._attachments[eni_id] = _str(attached, "AttachmentId")
            # EC2 deletes it with the instance: a terminated host leaks no ENI (nor its IPs).
            await self._call(
                "modify_network_interface_attribute",
                NetworkInterfaceId=eni_id,
                Attachment={"AttachmentId": self._attachments[eni_id], "DeleteOnTermination": True},
            )
        except NetworkError as e:
            if eni_id not in self._attachments:
                # Often "already has an interface attached at device index N" (another tool's
                # ENI): learn the taken indexes so the pool's next attempt picks a free one.
                with contextlib.suppress(NetworkError):
                    await self._attached_here()
                log.warning("attach of %s at device index %d failed: %s", eni_id, device_index, e.message)
            # Not attached (or not marked): delete now rather than leave it for the leak GC.
            if eni_id in self._attachments:
                try:
                    await self._call("detach_network_interface", AttachmentId=self._attachments[eni_id])
                except NetworkError as cleanup:
                    # Still attached, and the pool will not know it: mark its index taken; the
                    # periodic recovery (`stray_enis`) detaches and deletes it later.
                    self._strays[eni_id] = device_index
                    log.warning("%s stays attached at device index %d after a failed create (%s); "
                                "recovered later", eni_id, device_index, cleanup.message)
                    raise e from None
                self._attachments.pop(eni_id, None)
                await self._delete_when_detached(eni_id)  # failing: `available`, for the leak GC
            else:
                await self._call("delete_network_interface", NetworkInterfaceId=eni_id)
            raise
        assert isinstance(doc, dict)
        attachment = {"DeviceIndex": device_index, "AttachmentId": self._attachments[eni_id]}
        return self._parse_eni({**doc, "Attachment": attachment, "TagSet": tags}, cidr)

    def _check_cooldown(self) -> None:
        left = self._exhausted_until - self._clock()
        if left > 0:
            self.exhausted_refusals += 1
            raise SubnetExhausted(
                f"subnet {self.config.subnet_id} exhausted; not asking EC2 again for {left:.0f}s"
            )

    def backoff(self) -> dict[str, float]:
        """For the network snapshot: seconds left of the exhaustion cooldown, refusals so far."""
        return {"subnet_exhausted_cooldown_s": max(0.0, self._exhausted_until - self._clock()),
                "subnet_exhausted_refusals": float(self.exhausted_refusals),
                "forced_detaches": float(self.forced_detaches)}

    def _count_repairs(self, since: int | None) -> None:
        if since is not None:
            self.repair_calls += self.api_calls - since

    async def assign_ips(self, eni_id: str, count: int) -> list[str]:
        eni = self._enis.get(eni_id)
        if eni is None:
            raise NetworkError(f"{eni_id} is not a container ENI of node {self.config.node_id}")
        self._check_cooldown()
        room = self._limits.container_ips_per_eni - len(eni.secondary_ips)
        if count > room:
            raise IpLimitReached(f"{eni_id} has room for {room} more IPs, asked {count}")
        cidr = await self._subnet()
        _, first, last = usable_addresses(cidr)
        held = self._held()
        if len(held) + count > last - first + 1:
            raise SubnetExhausted(f"subnet {cidr} cannot hold {count} more addresses")
        good: list[str] = []
        repairing_since: int | None = None
        for _ in range(REPLACEMENT_ROUNDS):
            wanted = count - len(good)
            answer = await self._call(
                "assign_private_ip_addresses",
                NetworkInterfaceId=eni_id,
                SecondaryPrivateIpAddressCount=wanted,
            )
            listed = [_str(a, "PrivateIpAddress") for a in answer.get("AssignedPrivateIpAddresses", [])]
            # EC2 lists the new addresses; moto lists all of the ENI's. Keep only what is new here.
            before = {eni.primary_ip, *eni.secondary_ips, *good}
            returned = [a for a in listed if a not in before]
            if len(returned) != wanted:
                raise ProviderResponseInvalid(f"asked {wanted} IPs on {eni_id}, got {len(returned)}")
            bad: list[str] = []
            for raw in returned:
                address = self._check_address(raw, cidr)
                if address is None or address in held or address in good:
                    bad.append(raw)
                else:
                    good.append(address)
            if bad:  # give them back; they are not ours to use
                repairing_since = self.api_calls if repairing_since is None else repairing_since
                await self._call(
                    "unassign_private_ip_addresses", NetworkInterfaceId=eni_id, PrivateIpAddresses=bad
                )
            if len(good) == count:
                break
        self._count_repairs(repairing_since)
        self._enis[eni_id] = _with_secondary(eni, eni.secondary_ips + tuple(good))
        if not good:
            raise AddressConflict(f"EC2 offered only addresses already in use on {eni_id}")
        return good

    async def unassign_ips(self, eni_id: str, addresses: Sequence[str]) -> None:
        if not addresses:
            return
        await self._call(
            "unassign_private_ip_addresses", NetworkInterfaceId=eni_id, PrivateIpAddresses=list(addresses)
        )
        eni = self._enis.get(eni_id)
        if eni is not None:
            gone = set(addresses)
            self._enis[eni_id] = _with_secondary(eni, tuple(a for a in eni.secondary_ips if a not in gone))

    async def delete_eni(self, eni_id: str) -> None:
        attachment = self._attachments.get(eni_id)
        if attachment is not None:
            # A clean detach: the OS releases the link first. Force (which can leave the instance
            # with a stale device) only as the last resort, after the clean one did not finish.
            await self._call("detach_network_interface", AttachmentId=attachment)
        try:
            await self._delete_when_detached(eni_id)
        except NetworkError as e:
            if attachment is None or "InUse" not in e.message:
                raise
            self.forced_detaches += 1
            await self._call("detach_network_interface", AttachmentId=attachment, Force=True)
            await self._delete_when_detached(eni_id)
        self._enis.pop(eni_id, None)
        self._attachments.pop(eni_id, None)
        self._strays.pop(eni_id, None)

    async def _delete_when_detached(self, eni_id: str) -> None:
        # EC2 detaches asynchronously; deleting too early answers InUse.
        for attempt in range(self.config.detach_wait_attempts):
            try:
                await self._call("delete_network_interface", NetworkInterfaceId=eni_id)
                return
            except NetworkError as e:
                if "InvalidNetworkInterfaceID.NotFound" in e.message:
                    return
                if "InUse" not in e.message or attempt + 1 == self.config.detach_wait_attempts:
                    raise
            await self._sleep(min(self.config.max_delay_s, self.config.base_delay_s * 2**attempt))

    async def find_leaked_enis(self, older_than_s: float, now: float) -> list[str]:
        owner = (
            {"Name": "tag-key", "Values": [TAG_NODE]} if self.config.sweep_cell
            else {"Name": f"tag:{TAG_NODE}", "Values": [self.config.node_id]}
        )
        answer = await self._call(
            "describe_network_interfaces",
            Filters=[
                owner,
                {"Name": "subnet-id", "Values": [self.config.subnet_id]},
                {"Name": "status", "Values": ["available"]},
            ],
        )
        leaked = []
        for doc in answer.get("NetworkInterfaces", []):
            tags = {t.get("Key"): t.get("Value") for t in doc.get("TagSet", []) if isinstance(t, dict)}
            if not tags.get(TAG_NODE) or (tags[TAG_NODE] != self.config.node_id and not self.config.sweep_cell):
                continue  # never touch an ENI no titus node created
            try:
                created = float(tags.get(TAG_CREATED) or "")
            except ValueError:
                continue  # no creation time: cannot prove it is old, leave it alone
            if now - created >= older_than_s and not doc.get("Attachment"):
                leaked.append(_str(doc, "NetworkInterfaceId"))
        return sorted(leaked)

    async def delete_leaked_eni(self, eni_id: str) -> None:
        await self._delete_when_detached(eni_id)


def _with_secondary(eni: EniInfo, secondary: tuple[str, ...]) -> EniInfo:
    return EniInfo(
        eni_id=eni.eni_id,
        device_index=eni.device_index,
        security_groups=eni.security_groups,
        subnet_cidr=eni.subnet_cidr,
        gateway=eni.gateway,
        mac=eni.mac,
        primary_ip=eni.primary_ip,
        secondary_ips=secondary,
        created_at=eni.created_at,
    )
