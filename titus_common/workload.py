"""Workload identity, the pure parts shared by the scheduler (issuer), the agent (holder) and any
verifier (docs/identity.md):

- a task's identity is the SPIFFE-style URI `spiffe://<cell>/app/<app>/job/<job>/task/<task>`,
  carried as the only URI SAN of a short-lived X.509 certificate signed by the cell CA;
- the task's JWT (served by the metadata proxy) is ES256, signed by the task's own certificate key,
  with the certificate in the `x5c` header: a verifier needs only the cell CA's certificate.

No I/O here; every check takes `now` so tests can inject a clock.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.x509.oid import NameOID

__all__ = [
    "WORKLOAD_ORG", "IdentityRefused", "cert_spiffe_id", "mint_jwt", "spiffe_id", "task_csr", "verify_cert",
    "verify_jwt",
]

WORKLOAD_ORG = "titus:workloads"
CELL = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,62}[a-z0-9])?$")  # a SPIFFE trust domain, kept short
SEGMENT = re.compile(r"^[A-Za-z0-9._-]{1,128}$")  # a SPIFFE path segment (no '.' / '..' alone)
MAX_AUDIENCE = 256
AUDIENCE = re.compile(r"^[\x21-\x7e]{1,256}$")  # printable ASCII, no spaces
JWT_MAX_TTL = 300.0


class IdentityRefused(ValueError):
    """A certificate, CSR or JWT that does not prove the identity it claims (the message says why)."""


def _segment(what: str, value: str) -> str:
    if not SEGMENT.match(value) or value in (".", ".."):
        raise IdentityRefused(f"{what} {value!r} cannot be a SPIFFE path segment (letters, digits, '.', '_', '-')")
    return value


def spiffe_id(cell: str, app: str, job: str, task: str | None = None) -> str:
    """The identity of a task (or, without `task`, the prefix every task of the job gets)."""
    if not CELL.match(cell):
        raise IdentityRefused(f"cell {cell!r} is not a valid trust domain (lowercase letters, digits, '.', '-')")
    out = f"spiffe://{cell}/app/{_segment('app', app)}/job/{_segment('job', job)}"
    return out if task is None else f"{out}/task/{_segment('task', task)}"


def task_csr(key: ec.EllipticCurvePrivateKey, task_id: str) -> bytes:
    """The holder's request: CN=<task id>, no SAN (the scheduler decides the identity)."""
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, WORKLOAD_ORG),
                         x509.NameAttribute(NameOID.COMMON_NAME, task_id)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def cert_spiffe_id(cert: x509.Certificate) -> str:
    try:
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    spiffe = [u for u in uris if u.startswith("spiffe://")]
    if len(uris) != 1 or len(spiffe) != 1:
        raise IdentityRefused(f"a workload certificate has exactly one spiffe:// URI SAN, found {uris}")
    return spiffe[0]


def verify_cert(cert: x509.Certificate, ca: x509.Certificate, now: dt.datetime) -> str:
    """The certificate's SPIFFE id, if the cell CA signed it and it is valid at `now`."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as e:
        raise IdentityRefused(f"not issued by the cell CA: {e or type(e).__name__}") from None
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise IdentityRefused(f"certificate not valid at {now.isoformat()} (valid "
                              f"{cert.not_valid_before_utc.isoformat()} .. {cert.not_valid_after_utc.isoformat()})")
    return cert_spiffe_id(cert)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint_jwt(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, audience: str, now: float,
             ttl: float = JWT_MAX_TTL) -> str:
    """An ES256 JWT for the certificate's identity, bound to `audience`, expiring with the certificate
    at the latest."""
    if not AUDIENCE.match(audience):
        raise IdentityRefused(f"audience must be 1-{MAX_AUDIENCE} printable characters without spaces")
    sub = cert_spiffe_id(cert)
    exp = min(now + min(ttl, JWT_MAX_TTL), cert.not_valid_after_utc.timestamp())
    if exp <= now:
        raise IdentityRefused("the task's certificate has expired")
    header = {"alg": "ES256", "typ": "JWT", "kid": format(cert.serial_number, "x"),
              "x5c": [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]}
    claims = {"iss": sub.split("/app/", 1)[0], "sub": sub, "aud": audience, "iat": int(now), "exp": int(exp)}
    signing_input = f"{_b64url(json.dumps(header, separators=(',', ':')).encode())}." \
                    f"{_b64url(json.dumps(claims, separators=(',', ':')).encode())}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def verify_jwt(token: str, ca: x509.Certificate, audience: str, now: float) -> dict[str, Any]:
    """The claims, if the JWT is signed by a valid cell workload certificate (its `x5c`), names
    that certificate's identity, is for `audience` and has not expired at `now`."""
    try:
        head_b64, claims_b64, sig_b64 = token.split(".")
        header = json.loads(_unb64url(head_b64))
        claims = json.loads(_unb64url(claims_b64))
        sig = _unb64url(sig_b64)
        cert = x509.load_der_x509_certificate(base64.b64decode(header["x5c"][0]))
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise IdentityRefused(f"malformed JWT: {e}") from None
    if header.get("alg") != "ES256" or len(sig) != 64 or not isinstance(claims, dict):
        raise IdentityRefused("only ES256 JWTs with a 64-byte signature are accepted")
    sub = verify_cert(cert, ca, dt.datetime.fromtimestamp(now, dt.UTC))
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise IdentityRefused("the certificate's key is not ECDSA")
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        public.verify(der, f"{head_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise IdentityRefused("the JWT's signature does not verify") from None
    if claims.get("sub") != sub:
        raise IdentityRefused(f"the JWT names {claims.get('sub')!r}, its certificate {sub!r}")
    if claims.get("aud") != audience:
        raise IdentityRefused(f"the JWT is for audience {claims.get('aud')!r}, not {audience!r}")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool) or now >= exp:
        raise IdentityRefused("the JWT has expired")
    return claims
