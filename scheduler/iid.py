"""Node attestation by the EC2 instance identity document (docs/trust.md, "Bound to the instance").

With `--aws-imds-identity POLICY.json` a bootstrap must carry the document the instance's IMDSv2
serves (`/latest/dynamic/instance-identity/document`, its exact bytes) and its base64 RSA signature
(`…/signature`: RSA PKCS#1 v1.5 over SHA-256 of those bytes, AWS's "base64-encoded signature"
method, the one SPIRE's `aws_iid` attestor checks). The policy file:

    {"certificates": {"us-east-1": ["/etc/titus/aws-iid/us-east-1.pem"], "*": ["/etc/titus/aws-iid/rsa.pem"]},
     "accounts": ["123456789012"],          # required: the accounts whose instances may join
     "regions": [],                          # optional allow-list (empty: any region with a certificate)
     "nodeIds": {"i-0abc…": "web-17"},       # optional: instance id → node id; else the node id IS the instance id
     "maxDocumentAgeSeconds": 86400}         # the instance's last start (`pendingTime`) at most this old

The certificate is chosen by the region the document claims; a document signed by any other key
does not verify, so once verified its region, account and instance id are AWS's word. What this
module decides is pure (no store): replay (each instance id bootstraps once unless re-admitted) is
the trust store's, in the bootstrap route.

Not supported: the PKCS#7 forms (`/pkcs7`, DSA; `/rsa2048`) — `cryptography` cannot verify
PKCS#7 SignedData, and `/signature` is available in every region AWS publishes an RSA certificate
for.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from titus_common.errors import ConfigError

__all__ = ["IdentityRefused", "IidPolicy", "IidVerifier", "InstanceBinding", "instance_arn", "instance_of_arn"]

INSTANCE_ID = r"^i-[0-9a-f]{8,17}$"
ACCOUNT = r"^[0-9]{12}$"
REGION = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$"
FUTURE_SKEW_S = 300.0  # a pendingTime up to this far ahead of our clock is tolerated
_ARN = re.compile(r"^arn:aws:ec2:(?P<region>[a-z0-9-]+):(?P<account>[0-9]{12}):instance/(?P<id>i-[0-9a-f]{8,17})$")


class IdentityRefused(Exception):
    """A bootstrap's instance identity that does not prove what it must; `reason` is the refusal
    counter's label (`titus_scheduler_auth_refused_total{reason}`)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


class IidPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    certificates: Annotated[dict[str, list[Path]], Field(min_length=1)]
    accounts: Annotated[list[Annotated[str, Field(pattern=ACCOUNT)]], Field(min_length=1)]
    regions: list[Annotated[str, Field(pattern=REGION)]] = []
    node_ids: Annotated[dict[Annotated[str, Field(pattern=INSTANCE_ID)], str], Field(alias="nodeIds")] = {}
    max_document_age_seconds: Annotated[float, Field(gt=0, le=366 * 86400, alias="maxDocumentAgeSeconds")] = 86400.0


@dataclass(frozen=True)
class InstanceBinding:
    instance_id: str
    account_id: str
    region: str
    pending_time: float  # the instance's last start (epoch seconds)

    @property
    def arn(self) -> str:
        return instance_arn(self.region, self.account_id, self.instance_id)


def instance_arn(region: str, account: str, instance_id: str) -> str:
    """The instance's ARN: the certificate's SAN URI that binds a node certificate to it."""
    return f"arn:aws:ec2:{region}:{account}:instance/{instance_id}"


def instance_of_arn(uri: str) -> str | None:
    match = _ARN.match(uri)
    return match["id"] if match else None


def _rsa_keys(paths: list[Path], region: str) -> list[rsa.RSAPublicKey]:
    keys = []
    for path in paths:
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError) as e:
            raise ConfigError(f"AWS identity certificate for {region} ({path}): {e}") from None
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise ConfigError(f"{path}: not an RSA certificate (the `/signature` method's AWS RSA certificate)")
        keys.append(key)
    if not keys:
        raise ConfigError(f"AWS identity certificates: none listed for {region}")
    return keys


def _timestamp(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


class IidVerifier:
    def __init__(self, policy: IidPolicy) -> None:
        self.policy = policy
        self.keys = {region: _rsa_keys(paths, region) for region, paths in policy.certificates.items()}

    @classmethod
    def load(cls, path: Path) -> IidVerifier:
        try:
            policy = IidPolicy.model_validate(json.loads(path.read_text()))
        except OSError as e:
            raise ConfigError(f"--aws-imds-identity {path}: {e.strerror or e}") from None
        except ValueError as e:  # JSON or the model's ValidationError
            detail = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors(include_url=False)) \
                if isinstance(e, ValidationError) else str(e)
            raise ConfigError(f"--aws-imds-identity {path}: {detail}") from None
        return cls(policy)

    def node_id_for(self, instance_id: str) -> str:
        return self.policy.node_ids.get(instance_id, instance_id)

    def verify(self, document: str, signature: str, node_id: str, now: float, *, check_age: bool = True) -> InstanceBinding:
        """The document's binding, or IdentityRefused naming the first check that failed:
        signature (`iid_signature`), content (`iid_document`), account/region (`iid_policy`),
        node id (`iid_node`), age (`iid_stale`)."""
        try:
            raw = json.loads(document)
        except ValueError:
            raise IdentityRefused("iid_document", "instance identity document is not JSON") from None
        if not isinstance(raw, dict):
            raise IdentityRefused("iid_document", "instance identity document is not a JSON object")
        region = raw.get("region")
        if not isinstance(region, str) or not re.match(REGION, region):
            raise IdentityRefused("iid_document", "instance identity document has no valid region")
        keys = self.keys.get(region) or self.keys.get("*")
        if keys is None:
            raise IdentityRefused("iid_policy", f"no AWS identity certificate configured for region {region}")
        try:
            sig = base64.b64decode("".join(signature.split()), validate=True)
        except (binascii.Error, ValueError):
            raise IdentityRefused("iid_signature", "instance identity signature is not base64") from None
        if not any(self._verifies(key, sig, document.encode()) for key in keys):
            raise IdentityRefused("iid_signature", f"instance identity signature does not verify against the "
                                                   f"AWS certificate of {region} (forged or altered document)")
        # From here on the document is AWS's word.
        instance, account = raw.get("instanceId"), raw.get("accountId")
        if not isinstance(instance, str) or not re.match(INSTANCE_ID, instance):
            raise IdentityRefused("iid_document", "instance identity document has no valid instanceId")
        if not isinstance(account, str) or account not in self.policy.accounts:
            raise IdentityRefused("iid_policy", f"account {account} is not allowed to join this cell")
        if self.policy.regions and region not in self.policy.regions:
            raise IdentityRefused("iid_policy", f"region {region} is not allowed to join this cell")
        expected = self.node_id_for(instance)
        if node_id != expected:
            raise IdentityRefused("iid_node", f"instance {instance} may join only as node {expected!r}, not {node_id!r}")
        pending = _timestamp(raw.get("pendingTime"))
        if pending is None:
            raise IdentityRefused("iid_document", "instance identity document has no valid pendingTime")
        binding = InstanceBinding(instance, account, region, pending)
        if check_age:
            self.check_fresh(binding, now)
        return binding

    def check_fresh(self, binding: InstanceBinding, now: float) -> None:
        """A first bootstrap: the instance's last start at most the policy's bound ago (and not
        ahead of our clock by more than FUTURE_SKEW_S)."""
        age = now - binding.pending_time
        if age > self.policy.max_document_age_seconds or age < -FUTURE_SKEW_S:
            started = dt.datetime.fromtimestamp(binding.pending_time, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            raise IdentityRefused("iid_stale", f"instance {binding.instance_id} started at {started}, outside the "
                                               f"{self.policy.max_document_age_seconds:.0f} s bound for a first "
                                               f"bootstrap (an admin may re-admit it)")

    @staticmethod
    def _verifies(key: rsa.RSAPublicKey, sig: bytes, data: bytes) -> bool:
        try:
            key.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return False
        return True
