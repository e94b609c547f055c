#!/usr/bin/env python3
"""registry-save.py REF OUT.tar: write a `docker load` archive of REF fetched straight from its
registry (v2 API, plain HTTP: the local test registry), without the Docker engine.

Used by make image to preload the VM's engine. Standard library only.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
import urllib.request

ACCEPT = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"


def fetch(url: str, accept: str | None = None) -> bytes:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=60) as resp:
        data: bytes = resp.read()
        return data


def main(ref: str, out: str) -> int:
    host, _, rest = ref.partition("/")
    repo, _, tag = rest.rpartition(":") if ":" in rest else (rest, "", "latest")
    base = f"http://{host}/v2/{repo}"
    manifest = json.loads(fetch(f"{base}/manifests/{tag}", ACCEPT))
    if "config" not in manifest:
        print(f"registry-save: {ref}: not a single-platform image manifest", file=sys.stderr)
        return 1
    config_digest = manifest["config"]["digest"]
    names = []
    with tarfile.open(out, "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add(config_digest.split(":")[1] + ".json", fetch(f"{base}/blobs/{config_digest}"))
        for layer in manifest["layers"]:
            name = layer["digest"].split(":")[1] + "/layer.tar"  # gzip inside: docker load detects it
            add(name, fetch(f"{base}/blobs/{layer['digest']}"))
            names.append(name)
        doc = [{"Config": config_digest.split(":")[1] + ".json", "RepoTags": [ref], "Layers": names}]
        add("manifest.json", json.dumps(doc).encode())
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: registry-save.py REF OUT.tar", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
