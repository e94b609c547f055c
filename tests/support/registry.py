"""Images pushed straight to the local registry (127.0.0.1:5000, scripts/setup-host.sh) over its HTTP
API — no engine needed: a one-file layer, its config and a schema-2 manifest. Each test owns its
repository name and deletes what it pushed (`delete`)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import uuid

import requests

REGISTRY = "127.0.0.1:5000"
BASE = f"http://{REGISTRY}"


def require() -> None:
    """Fail (not skip) with how to get the registry when it is not there, as the integration tests do."""
    import pytest

    try:
        requests.get(f"{BASE}/v2/", timeout=2).raise_for_status()
    except requests.RequestException as e:
        pytest.fail(f"local registry not reachable on {REGISTRY} ({e}); run scripts/setup-host.sh")


def _blob(repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = requests.post(f"{BASE}/v2/{repo}/blobs/uploads/", timeout=10)
    r.raise_for_status()
    location = r.headers["Location"]
    location = location if location.startswith("http") else BASE + location
    sep = "&" if "?" in location else "?"
    r = requests.put(f"{location}{sep}digest={digest}", data=data,
                     headers={"Content-Type": "application/octet-stream"}, timeout=10)
    r.raise_for_status()
    return digest


def push(repo: str, tag: str, content: bytes) -> str:
    """Push an image whose only file is /content (`content`) as repo:tag; returns its manifest digest."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as t:
        info = tarfile.TarInfo("content")
        info.size = len(content)
        t.addfile(info, io.BytesIO(content))
    layer_bytes = layer.getvalue()
    layer_digest = _blob(repo, layer_bytes)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}).encode()
    config_digest = _blob(repo, config)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": len(config),
                   "digest": config_digest},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar", "size": len(layer_bytes),
                    "digest": layer_digest}],
    }).encode()
    r = requests.put(f"{BASE}/v2/{repo}/manifests/{tag}", data=manifest,
                     headers={"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"}, timeout=10)
    r.raise_for_status()
    return str(r.headers["Docker-Content-Digest"])


def delete(repo: str, digest: str) -> None:
    """Remove a manifest (and with it its tags) from the registry; absent is fine."""
    r = requests.delete(f"{BASE}/v2/{repo}/manifests/{digest}", timeout=10)
    if r.status_code not in (202, 404):
        r.raise_for_status()


def owned_repo(prefix: str) -> str:
    """A repository name no other test (or run) uses."""
    return f"titus/{prefix}-{uuid.uuid4().hex[:8]}"
