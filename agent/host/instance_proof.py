"""The proof of which EC2 instance this host is, sent with the agent's bootstrap CSR when the
scheduler admits only instances (docs/trust.md, "Bound to the instance"; scheduler/iid.py checks
it): the instance identity document exactly as this instance's IMDSv2 serves it (its bytes are
what AWS signed, so nothing is stripped or re-encoded) and its base64 RSA signature.

Blocking (urllib): the scheduler client calls it from a thread, once per bootstrap. Read fresh at
each bootstrap, never cached: AWS recommends re-reading the document, which changes when the
instance is stopped and started. Every failure is one `IdentityUnavailable` naming the path.
"""

from __future__ import annotations

import urllib.error
import urllib.request

from netns.providers.ec2_identity import DEFAULT_IMDS_ENDPOINT, TOKEN_TTL_S, IdentityUnavailable

__all__ = ["InstanceProof", "read_instance_proof"]

MAX_BYTES = 8192
InstanceProof = dict[str, str]  # {"document": …, "signature": …}: the bootstrap's `instanceIdentity`


def _read(request: urllib.request.Request, what: str, timeout_s: float) -> str:
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            data = bytes(answer.read(MAX_BYTES + 1))
    except urllib.error.HTTPError as e:
        raise IdentityUnavailable(f"IMDS {what}: HTTP {e.code}") from None
    except OSError as e:
        raise IdentityUnavailable(f"IMDS {what}: unreachable: {e}") from None
    if len(data) > MAX_BYTES or not data.strip():
        raise IdentityUnavailable(f"IMDS {what}: {'empty' if not data.strip() else 'over 8 KiB'} answer")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise IdentityUnavailable(f"IMDS {what}: not UTF-8") from None


def read_instance_proof(endpoint: str = DEFAULT_IMDS_ENDPOINT, timeout_s: float = 2.0) -> InstanceProof:
    base = endpoint.rstrip("/")
    put = urllib.request.Request(f"{base}/latest/api/token", method="PUT",
                                 headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)})
    token = _read(put, "token (IMDSv2)", timeout_s).strip()
    headers = {"X-aws-ec2-metadata-token": token}
    proof = {}
    for key in ("document", "signature"):
        path = f"dynamic/instance-identity/{key}"
        proof[key] = _read(urllib.request.Request(f"{base}/latest/{path}", headers=headers), path, timeout_s)
    return proof
