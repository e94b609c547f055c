"""This instance's identity, read from its own IMDSv2, and the EC2 facts the aws provider needs at
start: ENI/IP limits of the instance type (the table in `netns/limits.py`, else
`DescribeInstanceTypes`) and the subnet's VPC default security group.

Blocking (urllib, boto3): call before the event loop runs or from a thread. Every failure is one
`IdentityUnavailable` (a ProviderError: exit 5) naming what was asked and why it failed.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from netns.errors import ProviderUnavailable
from netns.limits import InstanceLimits, UnknownInstanceType, limits_for

__all__ = [
    "DEFAULT_IMDS_ENDPOINT",
    "Ec2Identity",
    "IdentityUnavailable",
    "default_security_group",
    "imds_hardening_warnings",
    "instance_limits",
    "read_identity",
    "read_instance_role",
    "region_hostname_suffix",
]

DEFAULT_IMDS_ENDPOINT = "http://169.254.169.254"
TOKEN_TTL_S = 300
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class IdentityUnavailable(ProviderUnavailable):
    """IMDS or EC2 could not tell this instance who it is."""


@dataclass(frozen=True)
class Ec2Identity:
    instance_id: str
    instance_type: str
    region: str
    availability_zone: str
    account_id: str
    primary_mac: str
    vpc_id: str
    subnet_id: str  # the primary ENI's subnet
    primary_eni: str
    macs: tuple[str, ...]  # every attached ENI's MAC, as IMDS lists them


def region_hostname_suffix(region: str) -> str:
    """The suffix of an instance's private DNS name: `ec2.internal` in us-east-1, else
    `<region>.compute.internal`."""
    return "ec2.internal" if region == "us-east-1" else f"{region}.compute.internal"


class _Imds:
    def __init__(self, endpoint: str, timeout_s: float) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.timeout_s = timeout_s
        self.token = ""

    def _open(self, request: urllib.request.Request, what: str) -> str:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                return str(answer.read().decode())
        except urllib.error.HTTPError as e:
            raise IdentityUnavailable(f"IMDS {what}: HTTP {e.code} from {self.endpoint}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise IdentityUnavailable(f"IMDS {what}: {self.endpoint} unreachable: {e}") from None

    def login(self) -> None:
        put = urllib.request.Request(
            f"{self.endpoint}/latest/api/token", method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)},
        )
        self.token = self._open(put, "token (IMDSv2)").strip()
        if not self.token:
            raise IdentityUnavailable(f"IMDS token: {self.endpoint} answered an empty token")

    def get(self, path: str) -> str:
        req = urllib.request.Request(
            f"{self.endpoint}/latest/{path}", headers={"X-aws-ec2-metadata-token": self.token}
        )
        value = self._open(req, path).strip()
        if not value:
            raise IdentityUnavailable(f"IMDS {path}: empty answer")
        return value


def read_identity(endpoint: str = DEFAULT_IMDS_ENDPOINT, timeout_s: float = 2.0) -> Ec2Identity:
    imds = _Imds(endpoint, timeout_s)
    imds.login()
    try:
        doc: Any = json.loads(imds.get("dynamic/instance-identity/document"))
    except ValueError:
        raise IdentityUnavailable("IMDS instance-identity document is not JSON") from None
    if not isinstance(doc, dict):
        raise IdentityUnavailable("IMDS instance-identity document is not an object")

    def field(key: str) -> str:
        value = doc.get(key)
        if not isinstance(value, str) or not value:
            raise IdentityUnavailable(f"IMDS instance-identity document lacks {key}")
        return value

    mac = imds.get("meta-data/mac").lower()
    if not _MAC.match(mac):
        raise IdentityUnavailable(f"IMDS meta-data/mac: not a MAC: {mac!r}")
    base = f"meta-data/network/interfaces/macs/{mac}"
    macs = tuple(
        m.strip("/").lower() for m in imds.get("meta-data/network/interfaces/macs/").split() if m.strip("/")
    )
    return Ec2Identity(
        instance_id=field("instanceId"),
        instance_type=field("instanceType"),
        region=field("region"),
        availability_zone=field("availabilityZone"),
        account_id=field("accountId"),
        primary_mac=mac,
        vpc_id=imds.get(f"{base}/vpc-id"),
        subnet_id=imds.get(f"{base}/subnet-id"),
        primary_eni=imds.get(f"{base}/interface-id"),
        macs=macs,
    )


def read_instance_role(endpoint: str = DEFAULT_IMDS_ENDPOINT, timeout_s: float = 2.0) -> str:
    """The instance's IAM role as its IMDSv2 names it, "" when it has none (HTTP 404), after
    checking IMDS serves that role's credentials (`Code` Success); IdentityUnavailable otherwise."""
    imds = _Imds(endpoint, timeout_s)
    imds.login()
    try:
        listing = imds.get("meta-data/iam/security-credentials/")
    except IdentityUnavailable as e:
        if "HTTP 404" in str(e):
            return ""
        raise
    role = listing.split()[0].strip("/") if listing.split() else ""
    if not role:
        return ""
    try:
        doc: Any = json.loads(imds.get(f"meta-data/iam/security-credentials/{role}"))
    except ValueError:
        raise IdentityUnavailable(f"IMDS credentials of role {role}: not JSON") from None
    if not isinstance(doc, dict) or doc.get("Code") != "Success":
        code = doc.get("Code") if isinstance(doc, dict) else "?"
        raise IdentityUnavailable(f"IMDS credentials of role {role}: Code {code}")
    return role


def _ec2_error(operation: str, e: Exception) -> IdentityUnavailable:
    response = getattr(e, "response", None)
    code = (response or {}).get("Error", {}).get("Code", "") if isinstance(response, dict) else ""
    return IdentityUnavailable(f"EC2 {operation}: {code or type(e).__name__}: {e}")


def instance_limits(client: Any, instance_type: str) -> InstanceLimits:
    """The table's numbers, else EC2's own (`DescribeInstanceTypes`)."""
    try:
        return limits_for(instance_type)
    except UnknownInstanceType:
        pass
    try:
        answer = client.describe_instance_types(InstanceTypes=[instance_type])
    except Exception as e:  # botocore's ClientError/BotoCoreError
        raise _ec2_error("DescribeInstanceTypes", e) from None
    types = answer.get("InstanceTypes") or []
    info = types[0].get("NetworkInfo") if types and isinstance(types[0], dict) else None
    enis = info.get("MaximumNetworkInterfaces") if isinstance(info, dict) else None
    ips = info.get("Ipv4AddressesPerInterface") if isinstance(info, dict) else None
    if not (isinstance(enis, int) and isinstance(ips, int) and enis >= 1 and ips >= 1):
        raise IdentityUnavailable(
            f"EC2 DescribeInstanceTypes gave no ENI/IP limits for {instance_type!r}; "
            "set aws_max_enis and aws_ipv4_per_eni"
        )
    return InstanceLimits(enis, ips)


def default_security_group(client: Any, subnet_id: str) -> str:
    """The `default` security group of the subnet's VPC (EC2 creates one per VPC)."""
    try:
        subnets = client.describe_subnets(SubnetIds=[subnet_id]).get("Subnets") or []
        vpc = subnets[0].get("VpcId") if subnets else None
        if not isinstance(vpc, str):
            raise IdentityUnavailable(f"EC2 DescribeSubnets: subnet {subnet_id} not found")
        groups = client.describe_security_groups(
            Filters=[{"Name": "vpc-id", "Values": [vpc]}, {"Name": "group-name", "Values": ["default"]}]
        ).get("SecurityGroups") or []
    except IdentityUnavailable:
        raise
    except Exception as e:
        raise _ec2_error("DescribeSecurityGroups", e) from None
    if len(groups) != 1 or not isinstance(groups[0].get("GroupId"), str):
        raise IdentityUnavailable(
            f"VPC {vpc} has {len(groups)} groups named 'default'; set network_default_security_groups"
        )
    return str(groups[0]["GroupId"])


def imds_hardening_warnings(client: Any, instance_id: str) -> list[str]:
    """AWS's advice for container hosts: IMDSv2 required and a PUT hop limit of 1, so a container
    cannot obtain the host's token (and the instance role) even if it reaches 169.254.169.254."""
    try:
        doc = client.describe_instances(InstanceIds=[instance_id])
        options = doc["Reservations"][0]["Instances"][0].get("MetadataOptions") or {}
    except Exception as e:
        return [f"cannot read this instance's metadata options: {_ec2_error('DescribeInstances', e).message}"]
    warnings = []
    if options.get("HttpTokens") != "required":
        warnings.append(f"IMDS HttpTokens is {options.get('HttpTokens')!r}, not 'required' (IMDSv1 open)")
    hops = options.get("HttpPutResponseHopLimit")
    if isinstance(hops, int) and hops > 1:
        warnings.append(f"IMDS hop limit is {hops}: containers can obtain the host's IMDS token")
    return warnings
