"""A stand-in for AWS's instance-identity signing key (scheduler/iid.py, docs/trust.md): an RSA-2048
key and a self-signed certificate, as AWS publishes one per region for the `/signature` method.
The fake IMDS signs its documents with it, and the test scheduler's `--aws-imds-identity` policy
trusts its certificate: the scheduler verifies real signatures, there is no bypass."""

from __future__ import annotations

import base64
import datetime as dt
import json
import textwrap
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

ACCOUNT = "123456789012"


class IidAuthority:
    def __init__(self, name: str = "test AWS instance identity") -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = dt.datetime.now(dt.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Amazon Web Services LLC (test)"),
                             x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
                     .sign(self.key, hashes.SHA256()))

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def sign(self, document: str) -> str:
        """What IMDS's `/signature` serves: base64 of RSA PKCS#1 v1.5 over SHA-256, in 64-column lines."""
        sig = self.key.sign(document.encode(), padding.PKCS1v15(), hashes.SHA256())
        return "\n".join(textwrap.wrap(base64.b64encode(sig).decode(), 64))

    def write_policy(self, directory: Path, *, cert_regions: tuple[str, ...] = ("us-east-1",),
                     accounts: tuple[str, ...] = (ACCOUNT,), **extra: Any) -> Path:
        """The scheduler's `--aws-imds-identity` file, trusting this authority for `cert_regions`;
        `extra`: the policy's other keys (regions, nodeIds, maxDocumentAgeSeconds)."""
        directory.mkdir(parents=True, exist_ok=True)
        cert = directory / "aws-iid.pem"
        cert.write_bytes(self.cert_pem())
        policy = {"certificates": {r: [str(cert)] for r in cert_regions}, "accounts": list(accounts), **extra}
        path = directory / "aws-iid-policy.json"
        path.write_text(json.dumps(policy))
        return path


def identity_document(instance_id: str, *, region: str = "us-east-1", account: str = ACCOUNT,
                      instance_type: str = "m5.large", private_ip: str = "10.0.0.10",
                      pending: dt.datetime | None = None) -> str:
    """An instance identity document laid out as EC2 serves it (pretty-printed JSON)."""
    pending = pending or dt.datetime.now(dt.UTC)
    return json.dumps({
        "accountId": account, "architecture": "x86_64", "availabilityZone": f"{region}a", "billingProducts": None,
        "devpayProductCodes": None, "marketplaceProductCodes": None, "imageId": "ami-0123456789abcdef0",
        "instanceId": instance_id, "instanceType": instance_type, "kernelId": None,
        "pendingTime": pending.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "privateIp": private_ip,
        "ramdiskId": None, "region": region, "version": "2017-09-30",
    }, indent=2, separators=(",", " : "))
