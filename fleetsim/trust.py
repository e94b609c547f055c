"""The simulator's credentials against a TLS scheduler (docs/trust.md): every simulated host
bootstraps its own node certificate the way the agent does (a key made here, a CSR with
O=titus:nodes, CN=<node id> and a bounded-use bootstrap token to POST /v1/bootstrap; a 429 is
retried after its Retry-After; a host whose certificate is already in `key_dir` keeps it, as the agent
does across restarts, since the scheduler refuses a second bootstrap of a node id with a live
certificate), and the burst's operator calls use a client certificate or a bearer
token. Only titus_common and the public protocol: the simulator is a black-box client."""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from titus_common.errors import ConfigError
from titus_common.pki import client_context, csr_for, key_pem, new_key, write_private

__all__ = ["FleetTrust", "bootstrap_node"]

BOOTSTRAP_ATTEMPTS = 20


@dataclass(frozen=True)
class FleetTrust:
    ca_file: Path  # the cell CA, to verify the scheduler
    key_dir: Path  # the simulated hosts' keys and certificates (0600)
    bootstrap_token: str | None = None  # bounded-use, for a pattern covering the hosts ('sim-*')
    cert_file: Path | None = None  # the operator's client certificate (burst, mode switch)
    key_file: Path | None = None
    operator_token: str | None = None  # or a bearer token

    def operator_ssl(self) -> ssl.SSLContext:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("fleetsim: give both --cert and --key, or neither")
        return client_context(self.ca_file, self.cert_file, self.key_file)

    def operator_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.operator_token}"} if self.operator_token else {}


async def bootstrap_node(session: aiohttp.ClientSession, base: str, trust: FleetTrust, node_id: str) -> ssl.SSLContext:
    """One simulated host's certificate (the one in `key_dir`, or a new one); returns the TLS context
    presenting it."""
    crt, key_file = trust.key_dir / f"{node_id}.crt", trust.key_dir / f"{node_id}.key"
    if crt.exists() and key_file.exists():
        return client_context(trust.ca_file, crt, key_file)
    if trust.bootstrap_token is None:
        raise ConfigError("fleetsim: a TLS scheduler needs --bootstrap-token-file (nodes 'sim-*', --uses ≥ --hosts)")
    key = new_key()
    body = {"token": trust.bootstrap_token, "csr": csr_for(key, node_id).decode()}
    anonymous = client_context(trust.ca_file)
    for _ in range(BOOTSTRAP_ATTEMPTS):
        async with session.post(f"{base}/v1/bootstrap", json=body, ssl=anonymous) as r:
            text = await r.text()
            if r.status == 429:
                await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                continue
            if r.status != 201:
                raise RuntimeError(f"fleetsim: bootstrap of {node_id} refused: HTTP {r.status}: {text[:200]}")
        cert = str(json.loads(text)["certificate"])
        write_private(key_file, key_pem(key))
        write_private(crt, cert.encode())
        return client_context(trust.ca_file, crt, key_file)
    raise RuntimeError(f"fleetsim: bootstrap of {node_id} still rate-limited after {BOOTSTRAP_ATTEMPTS} attempts")
