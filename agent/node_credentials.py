"""The agent's identity at the scheduler (docs/trust.md), on kubelet's TLS bootstrap model.

The key is generated here and never leaves the host (`<state_dir>/pki/node.key`, 0600). Without a
valid certificate the agent sends a CSR (O=titus:nodes, CN=<node id>) with its one-time bootstrap
token to POST /v1/bootstrap (on EC2 with the instance identity document and its signature, which
bind the certificate to the instance: scheduler/iid.py); it rotates before expiry (when less than a third of the lifetime is
left) by sending a new CSR with its current certificate to POST /v1/nodes/<id>/certificate. A
rotation that fails is retried at the next call; the old certificate stays in use until it expires.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

from titus_common.pki import client_context, csr_for, key_pem, lifetime, new_key, remaining, write_private

__all__ = ["NodeCredentials"]

log = logging.getLogger("titus.agent.credentials")
ROTATE_AT = 1 / 3  # of the lifetime left


class NodeCredentials:
    def __init__(
        self, node_id: str, ca_file: Path, pki_dir: Path, bootstrap_token_file: Path | None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        instance_proof: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        self.node_id = node_id
        # On EC2 (aws provider with --aws-imds-identity): the instance identity document and its
        # signature, read from IMDSv2 (blocking) for each bootstrap (agent/host/instance_proof.py).
        self.instance_proof = instance_proof
        self.clock = clock
        self.ca_file = ca_file
        self.dir = pki_dir
        self.token_file = bootstrap_token_file
        self.key_file = pki_dir / "node.key"
        self.cert_file = pki_dir / "node.crt"
        self.rotations = 0
        # The parsed certificate, keyed by the file's (inode, mtime, size): every call to the
        # scheduler asks valid()/should_rotate(), and re-reading and re-parsing the PEM each time
        # was a measurable part of a kept-alive sync (bench/api.py).
        self._parsed: tuple[tuple[int, int, int], x509.Certificate] | None = None

    def certificate(self) -> x509.Certificate | None:
        try:
            st = self.cert_file.stat()
        except OSError:
            self._parsed = None
            return None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._parsed is not None and self._parsed[0] == stamp:
            return self._parsed[1]
        try:
            cert = x509.load_pem_x509_certificate(self.cert_file.read_bytes())
        except (OSError, ValueError):
            return None
        self._parsed = (stamp, cert)
        return cert

    def current(self, now: dt.datetime | None = None) -> bool:
        """A valid certificate that needs no rotation yet: the common case, decided without I/O
        beyond two stat calls."""
        cert = self.certificate()
        if cert is None or not self.key_file.exists():
            return False
        left = remaining(cert, now or self.clock())
        return left > 0 and left >= lifetime(cert) * ROTATE_AT

    def valid(self, now: dt.datetime | None = None) -> bool:
        cert = self.certificate()
        return cert is not None and self.key_file.exists() and remaining(cert, now or self.clock()) > 0

    def should_rotate(self, now: dt.datetime | None = None) -> bool:
        cert = self.certificate()
        return cert is not None and remaining(cert, now or self.clock()) < lifetime(cert) * ROTATE_AT

    def context(self) -> ssl.SSLContext:
        """Verify the scheduler; present the node certificate when there is a valid one."""
        if self.valid():
            return client_context(self.ca_file, self.cert_file, self.key_file)
        return client_context(self.ca_file)

    def bootstrap_token(self) -> str:
        if self.token_file is None:
            raise RuntimeError("no valid node certificate and no bootstrap token (bootstrap_token_file)")
        try:
            return self.token_file.read_text().strip()
        except OSError as e:
            raise RuntimeError(f"bootstrap token {self.token_file}: {e.strerror or e}") from None

    def new_request(self) -> tuple[bytes, bytes]:
        """(the new key's PEM, kept until the certificate arrives; the CSR's PEM)."""
        key = new_key()
        return key_pem(key), csr_for(key, self.node_id)

    def install(self, key: bytes, cert_pem: str, rotated: bool) -> None:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        write_private(self.key_file.with_name("node.key.new"), key)
        write_private(self.cert_file.with_name("node.crt.new"), cert_pem.encode())
        # Key first then certificate: a crash in between leaves a mismatched pair only for the
        # instant both renames take; the next start re-bootstraps or rotates.
        self.key_file.with_name("node.key.new").replace(self.key_file)
        self.cert_file.with_name("node.crt.new").replace(self.cert_file)
        self.rotations += rotated
        log.info("node certificate %s %x, valid until %s", "rotated:" if rotated else "issued:", cert.serial_number,
                 cert.not_valid_after_utc.isoformat())
