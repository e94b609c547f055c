"""What an image tag points at in its registry: the manifest digest (Docker Registry HTTP API v2,
`HEAD /v2/<name>/manifests/<tag>`, header `Docker-Content-Digest`).

The scheduler asks at submit (to pin the job's digest) and periodically for running jobs (to flag a
tag that moved; scheduler/provenance.py). Every lookup is a blocking HTTP call: it runs on a thread
(its own pool of 32 threads), never on the event loop, with a timeout. A lookup that cannot be answered —
registry unreachable, slow, asking for credentials, or a Docker Hub name (token auth, not done here)
— is a `Lookup` with no digest and the reason: the job is accepted anyway and the agent's first
launch pins the digest instead (docs/provenance.md).

Loopback registries are spoken to over plain HTTP (as dockerd treats 127.0.0.0/8 as insecure by
default); every other registry over HTTPS with the system's trust store, loaded once (building a
default context per call cost ~20 ms of CPU each: 3/4 of the scheduler's CPU in a submit burst).

A burst of submissions asks mostly the same few tags: a lookup with `reuse=True` (submit) shares an
answer, or a lookup still in flight, for the same reference not older than `reuse_for` seconds, so a
failover's 750 jobs of 50 images cost 50 lookups, not 750, and an unreachable registry is waited for
once per reference, not once per job. The periodic tag check always asks afresh.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from titus_common.provenance import is_digest, split_reference

__all__ = ["Lookup", "Registry"]

# Everything a registry may hold under a tag: the digest is of whatever it stores (an index for a
# multi-platform image, as the engine's RepoDigests records it too).
ACCEPT = ", ".join((
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
))


@dataclass(frozen=True)
class Lookup:
    digest: str | None
    error: str = ""  # why there is no digest (empty when there is one)


def _loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:host.index("]")]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


LOOKUP_THREADS = 32


class Registry:
    def __init__(self, timeout: float = 5.0, reuse_for: float = 10.0) -> None:
        self.timeout = timeout
        self.reuse_for = reuse_for
        self._context: ssl.SSLContext | None = None
        self._recent: dict[str, tuple[float, asyncio.Future[Lookup]]] = {}  # ref → (asked at, answer)
        # Lookups wait on DNS and the network, not the CPU: their own threads, so a burst's distinct
        # tags (or a slow registry) do not queue behind the loop's 6 default workers, nor hold them.
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=LOOKUP_THREADS, thread_name_prefix="registry")

    def _ssl(self) -> ssl.SSLContext:
        if self._context is None:  # a benign race on first use: two threads may each build one
            self._context = ssl.create_default_context()
        return self._context

    def manifest_url(self, ref: str) -> str | None:
        """The manifest URL of `ref`'s tag; None for a reference without a tag (by digest) or a
        Docker Hub name."""
        host, name, tag, _ = split_reference(ref)
        if host == "docker.io":
            return None
        scheme = "http" if _loopback(host) else "https"
        return f"{scheme}://{host}/v2/{name}/manifests/{tag or 'latest'}"

    def lookup_blocking(self, ref: str) -> Lookup:
        """The digest `ref`'s tag points at now. Blocking: call `lookup` from the event loop."""
        _, _, tag, digest = split_reference(ref)
        if digest is not None:
            return Lookup(digest if is_digest(digest) else None, "" if is_digest(digest) else "not a sha256 digest")
        url = self.manifest_url(ref)
        if url is None:
            return Lookup(None, "Docker Hub lookups need token auth; resolved at first launch")
        request = urllib.request.Request(url, method="HEAD", headers={"Accept": ACCEPT})
        try:
            context = self._ssl() if url.startswith("https:") else None
            with urllib.request.urlopen(request, timeout=self.timeout, context=context) as response:  # noqa: S310
                found = response.headers.get("Docker-Content-Digest", "")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return Lookup(None, f"tag {tag or 'latest'} not found in the registry (404)")
            if e.code in (401, 403):
                return Lookup(None, f"registry asks for credentials ({e.code}); resolved at first launch")
            return Lookup(None, f"registry answered {e.code}")
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            return Lookup(None, f"registry unreachable: {reason}")
        if not is_digest(found):
            return Lookup(None, f"registry sent no usable Docker-Content-Digest ({found[:80]!r})")
        return Lookup(found)

    async def lookup(self, ref: str, reuse: bool = False) -> Lookup:
        """On a thread, bounded by the timeout (plus a margin for a slow DNS answer). `reuse`: an
        answer (or a lookup in flight) for `ref` begun within `reuse_for` seconds is shared."""
        if not reuse or self.reuse_for <= 0:
            return await self._ask(ref)
        now = time.monotonic()
        for old in [k for k, (at, _) in self._recent.items() if now - at >= self.reuse_for]:
            del self._recent[old]
        hit = self._recent.get(ref)
        if hit is None:
            hit = self._recent[ref] = (now, asyncio.ensure_future(self._ask(ref)))
        return await asyncio.shield(hit[1])

    async def _ask(self, ref: str) -> Lookup:
        try:
            asked = asyncio.get_running_loop().run_in_executor(self._pool, self.lookup_blocking, ref)
            return await asyncio.wait_for(asked, self.timeout + 1.0)
        except TimeoutError:
            return Lookup(None, f"registry did not answer within {self.timeout:g}s")
