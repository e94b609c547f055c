"""Client-side PKI shared by the agent and titusctl: keys generated locally (ECDSA P-256, written
0600, never sent anywhere), CSRs, and TLS contexts that verify the cell CA.

The CA itself, signing and the server's context are the scheduler's (scheduler/tls.py)."""

from __future__ import annotations

import datetime as dt
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from titus_common.errors import ConfigError

__all__ = [
    "CLOCK_SKEW", "NODE_ORG", "OPERATOR_ORG", "client_context", "csr_for", "load_cert", "new_key", "write_private",
]

# Certificate subjects: CN is the identity (a node id or an operator's name); O says which kind.
NODE_ORG = "titus:nodes"
# Certificates are valid from this long before they are issued: a host's clock may run behind.
CLOCK_SKEW = dt.timedelta(minutes=5)
OPERATOR_ORG = "titus:operators"


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_private(path: Path, data: bytes) -> None:
    """Write atomically with mode 0600 from the first byte (never world-readable, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def csr_for(key: ec.EllipticCurvePrivateKey, common_name: str, org: str = NODE_ORG) -> bytes:
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])
    return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256()).public_bytes(
        serialization.Encoding.PEM
    )


def load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable PEM certificate: {e}") from None


def remaining(cert: x509.Certificate, now: dt.datetime | None = None) -> float:
    """Seconds until the certificate expires (negative when it has)."""
    now = now or dt.datetime.now(dt.UTC)
    return (cert.not_valid_after_utc - now).total_seconds()


def lifetime(cert: x509.Certificate) -> float:
    """Seconds from issue (not the back-dated not-before) to expiry."""
    return (cert.not_valid_after_utc - cert.not_valid_before_utc - CLOCK_SKEW).total_seconds()


def client_context(ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None) -> ssl.SSLContext:
    """Verify the scheduler against the cell CA (hostname included); present a client certificate
    when one is given."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
        if cert_file is not None and key_file is not None:
            ctx.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"TLS credentials ({ca_file}, {cert_file}, {key_file}): {e}") from None
    return ctx
