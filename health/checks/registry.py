"""The image registry: `/v2/` answers (200, or 401 asking for credentials — it is up), and the
manifest of an image the host needs (the sandbox image; a task image) can be fetched (HEAD).

Registry down or unreachable → failed `RegistryUnreachable` (no task can pull); the manifest
missing → degraded `ManifestMissing` (one image, not the host); the registry answering 5xx →
failed `RegistryError`.
"""

from __future__ import annotations

import aiohttp

from health.model import Observation, degraded, failed, ok
from titus_common.errors import ConfigError

__all__ = ["RegistryCheck", "split_image"]

MANIFEST_TYPES = ", ".join((
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
))


def split_image(ref: str) -> tuple[str, str, str]:
    """`host:port/name/path:tag` → (host:port, name/path, tag). Only references naming a registry
    host (a dot, a colon or localhost in the first part) are checkable."""
    first, sep, rest = ref.partition("/")
    if not sep or not ("." in first or ":" in first or first == "localhost"):
        raise ConfigError(f"registry check: {ref!r} names no registry host")
    name, tag = rest, "latest"
    if "@" in rest:
        name, _, tag = rest.partition("@")
    elif ":" in rest.rsplit("/", 1)[-1]:
        name, _, tag = rest.rpartition(":")
    return first, name, tag


class RegistryCheck:
    name = "registry"

    def __init__(self, image: str, *, scheme: str = "http", period: float = 60.0, timeout: float = 10.0) -> None:
        self.host, self.repo, self.tag = split_image(image)
        self.image = image
        self.base = f"{scheme}://{self.host}"
        self.period = period
        self.timeout = timeout

    async def run(self) -> Observation:
        timeout = aiohttp.ClientTimeout(total=self.timeout * 0.8)  # answer before the monitor's timeout
        try:
            async with aiohttp.ClientSession(timeout=timeout) as s:
                async with s.get(f"{self.base}/v2/") as r:
                    if r.status not in (200, 401):
                        return failed("RegistryError", f"{self.base}/v2/ answered {r.status}", status=r.status)
                url = f"{self.base}/v2/{self.repo}/manifests/{self.tag}"
                async with s.head(url, headers={"Accept": MANIFEST_TYPES}) as r:
                    if r.status == 404:
                        return degraded("ManifestMissing", f"{self.image}: no manifest", image=self.image)
                    if r.status >= 400 and r.status != 401:
                        return failed("RegistryError", f"manifest of {self.image}: {r.status}", status=r.status)
                    return ok("RegistryAnswers", image=self.image, status=r.status)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            return failed("RegistryUnreachable", f"{self.base}: {e}", registry=self.host)
