"""The cell's PKI, offline and simple to operate (docs/trust.md).

`titus-scheduler ca init --pki DIR` creates, in DIR:
  ca.key (0600) / ca.crt      the cell CA, ECDSA P-256, 10 years
  server.key (0600) / server.crt   the scheduler's serving certificate (SANs: localhost, 127.0.0.1,
                                   ::1, this host's name, and any --san)
  admin.key (0600) / admin.crt     a first operator client certificate, role admin
Operator-supplied files with the same names work too. The scheduler signs node CSRs (bootstrap and
rotation) with ca.key; it never sees a node's private key.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from titus_common.errors import ConfigError
from titus_common.pki import CLOCK_SKEW, NODE_ORG, OPERATOR_ORG, key_pem, new_key, write_private

__all__ = ["CA", "Signed", "init_ca", "server_context"]

CA_FILES = ("ca.key", "ca.crt", "server.key", "server.crt")


@dataclass(frozen=True)
class Signed:
    pem: bytes
    serial: str  # hex, the deny list's key
    not_after: float


def _name(cn: str, org: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class CA:
    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert

    @classmethod
    def load(cls, pki: Path) -> CA:
        try:
            key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
        except (OSError, ValueError, TypeError) as e:
            raise ConfigError(f"cell CA in {pki}: {e} (create one with `titus-scheduler ca init --pki {pki}`)") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{pki / 'ca.key'}: expected an ECDSA key")
        if (pki / "ca.key").stat().st_mode & 0o077:
            raise ConfigError(f"{pki / 'ca.key'}: readable by group or others; chmod 0600")
        return cls(key, cert)

    def issue(
        self, public_key: ec.EllipticCurvePublicKey, cn: str, org: str, ttl: float,
        *, server_names: list[str] | None = None, now: dt.datetime | None = None, uris: Sequence[str] = (),
    ) -> Signed:
        now = now or dt.datetime.now(dt.UTC)
        not_after = now + dt.timedelta(seconds=ttl)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names is not None else ExtendedKeyUsageOID.CLIENT_AUTH
        b = (
            x509.CertificateBuilder().subject_name(_name(cn, org)).issuer_name(self.cert.subject)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server_names is not None:
            sans: list[x509.GeneralName] = []
            for n in server_names:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(n)))
                except ValueError:
                    sans.append(x509.DNSName(n))
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        elif uris:  # a node bound to its EC2 instance: the instance's ARN (scheduler/iid.py)
            b = b.add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
                                critical=False)
        cert = b.sign(self.key, hashes.SHA256())
        return Signed(cert.public_bytes(serialization.Encoding.PEM), format(cert.serial_number, "x"),
                      not_after.timestamp())

    @staticmethod
    def csr_node(csr_pem: bytes) -> tuple[str, ec.EllipticCurvePublicKey]:
        """A node CSR's CN and key. Refuses (ValueError) a CSR that is not self-signed by its key,
        not ECDSA P-256, or not in the nodes' organisation."""
        csr, key = load_p256_csr(csr_pem)
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        orgs = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
        if len(cns) != 1 or orgs != [NODE_ORG]:
            raise ValueError(f"the request's subject must be O={NODE_ORG}, CN=<node id>")
        return str(cns[0].value), key

    def sign_csr(self, csr_pem: bytes, ttl: float, uris: Sequence[str] = ()) -> tuple[str, Signed]:
        """A node CSR (checked as `csr_node`) → (its CN, the client certificate, with `uris` as its
        SAN). The CSR's own extensions are ignored: only the scheduler names what a node is bound to."""
        cn, key = self.csr_node(csr_pem)
        return cn, self.issue(key, cn, NODE_ORG, ttl, uris=uris)


def _self_signed_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = new_key()
    now = dt.datetime.now(dt.UTC)
    name = _name(f"titus cell CA {socket.gethostname()}", "titus:ca")
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def init_ca(pki: Path, sans: Sequence[str] = (), force: bool = False) -> list[Path]:
    """Create the CA, the server certificate and an admin client certificate. Refuses to replace an
    existing CA unless `force` (that would orphan every certificate it signed)."""
    if (pki / "ca.key").exists() and not force:
        raise ConfigError(f"{pki / 'ca.key'} exists; refusing to replace the cell CA (use --force)")
    pki.mkdir(parents=True, exist_ok=True)
    pki.chmod(0o700)
    key, cert = _self_signed_ca()
    write_private(pki / "ca.key", key_pem(key))
    (pki / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    ca = CA(key, cert)
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname(), *sans]
    for stem, cn, org, server in (("server", "titus-scheduler", "titus:scheduler", names),
                                  ("admin", "admin", f"{OPERATOR_ORG}:admin", None)):
        k = new_key()
        signed = ca.issue(k.public_key(), cn, org, 3650 * 86400.0 if server else 365 * 86400.0, server_names=server)
        write_private(pki / f"{stem}.key", key_pem(k))
        (pki / f"{stem}.crt").write_bytes(signed.pem)
    return [pki / n for n in (*CA_FILES, "admin.key", "admin.crt")]


def server_context(pki: Path) -> ssl.SSLContext:
    """TLS 1.2+ with the server certificate; client certificates verified against the CA when
    presented (optional at the TLS layer: bootstrap and bearer-token callers have none; the
    authorization middleware decides what an unauthenticated caller may do)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(pki / "server.crt"), str(pki / "server.key"))
        ctx.load_verify_locations(str(pki / "ca.crt"))
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"TLS files in {pki}: {e}") from None
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def load_p256_csr(csr_pem: bytes) -> tuple[x509.CertificateSigningRequest, ec.EllipticCurvePublicKey]:
    """A certificate request and its key, checked: PEM, self-signed by its key, and that key ECDSA P-256 (node
    and task requests alike); ValueError naming what is wrong."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as e:
        raise ValueError(f"not a PEM certificate request: {e}") from None
    if not csr.is_signature_valid:
        raise ValueError("the request's signature does not verify")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("the request's key must be ECDSA P-256")
    return csr, key
