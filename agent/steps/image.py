"""Image step: make sure the task's image is on the host."""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable
from typing import Any

from agent.docker_api import DockerError, DockerUnavailable
from agent.checkpoint import ImageOutput
from agent.steps.base import LaunchContext, StepError
from titus_common.jobspec import image_name_without_tag
from titus_common.provenance import digest_reference, is_digest, split_reference
from titus_common.retry import Backoff
from titus_common.states import FinishReason

log = logging.getLogger("titus.agent.image")

# A pull that fails after the engine began streaming has no status, only an error line: these are
# the registry's words for "no such image" there. Before streaming, the engine answers 404.
_NOT_FOUND_MARKERS = ("not found", "manifest unknown", "does not exist", "repository name not known")


# uname -m → the OCI/Go architecture names images carry in their config.
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le",
           "s390x": "s390x", "riscv64": "riscv64"}
HOST_ARCH = _GOARCH.get(platform.machine(), platform.machine())


def repo_digest(image: dict[str, Any], ref: str) -> str | None:
    """The manifest digest the engine recorded for `ref`'s repository (RepoDigests, set by a pull or
    a push); None for an image that never met a registry."""
    _, _, _, named = split_reference(ref)
    if named is not None and is_digest(named):
        return named
    want = image_name_without_tag(ref)
    for entry in image.get("RepoDigests") or []:
        name, _, digest = str(entry).partition("@")
        if name == want and is_digest(digest):
            return digest
    return None


# A reference checked present within this many seconds is not asked about again (issue 17: one engine
# round trip less per launch, and under a burst the engine answers an inspect slowly). An image removed
# meanwhile fails the container's create, which is the platform's fault (CRASHED: retried at no cost).
PRESENT_TTL = 30.0


class ImageStep:
    """Pulls unless the reference is already present (`always_pull` re-resolves mutable tags each time,
    at the cost of a registry round trip per launch). Up to `attempts` pulls with doubling back-off,
    as Titus does; an image the registry says does not exist is the user's error (FAILED), anything
    else is the platform's (CRASHED). A reference found present is remembered for `present_ttl`
    seconds (only its id, architecture and OS: a few hundred bytes per image)."""

    name = "image"

    def __init__(self, always_pull: bool = False, attempts: int = 3, backoff: float = 1.0,
                 host_arch: str = HOST_ARCH, present_ttl: float = PRESENT_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host_arch = host_arch
        self.always_pull = always_pull
        self.attempts = attempts
        self.backoff = backoff
        self.present_ttl = present_ttl
        self.clock = clock
        self._present: dict[str, tuple[float, dict[str, str]]] = {}  # ref -> (checked at, facts)

    def _known(self, ref: str) -> dict[str, str] | None:
        hit = self._present.get(ref)
        if hit is None or self.always_pull:
            return None
        if self.clock() - hit[0] > self.present_ttl:
            del self._present[ref]
            return None
        return hit[1]

    async def setup(self, ctx: LaunchContext) -> None:
        a = ctx.record.assignment
        # A job pinned to a digest runs exactly that manifest, whatever its tag points at now
        # (docs/provenance.md); otherwise the tag as the host has it (or pulls it).
        ref = digest_reference(a.container.image, a.image_digest) if a.image_digest else a.container.image
        known = self._known(ref)
        if known is not None:
            ctx.resources(self.name)["image_id"] = known["Id"]
            ctx.record.outputs.image = ImageOutput(ref=ref, digest=a.image_digest or known.get("digest") or None,
                                                   image_id=known["Id"])
            return
        try:
            image = None if self.always_pull else await ctx.docker.inspect_image(ref)
            if image is None:
                await self._pull(ctx, ref)
                image = await ctx.docker.inspect_image(ref)
        except DockerUnavailable as e:
            raise StepError(f"image {ref}: {e}") from None
        if image is None:
            raise StepError(f"image {ref} is still missing after a successful pull")
        arch, os_name = image.get("Architecture") or "", image.get("Os") or "linux"
        if (arch and arch != self.host_arch) or os_name != "linux":
            # It would start and die with "exec format error" (or worse, under emulation): refuse it
            # as the user's error before a container exists.
            raise StepError(f"image {ref} is built for {os_name}/{arch}; this host runs linux/{self.host_arch}",
                            FinishReason.FAILED)
        digest = a.image_digest or repo_digest(image, a.container.image)
        if len(self._present) > 1024:  # bounded: many distinct images on one host are rare
            self._present.clear()
        self._present[ref] = (self.clock(), {"Id": str(image["Id"]), "digest": digest or ""})
        # Recorded for the record's reader, not written: the step acquires nothing (images are shared,
        # a restart re-runs this check), so the next step's checkpoint write carries it; one fsync
        # pair less per launch.
        ctx.resources(self.name)["image_id"] = image["Id"]
        ctx.record.outputs.image = ImageOutput(ref=ref, digest=digest, image_id=str(image["Id"]))

    async def _pull(self, ctx: LaunchContext, ref: str) -> None:
        backoff = Backoff(initial=self.backoff, maximum=self.backoff * 2 ** max(0, self.attempts - 1))
        for attempt in range(1, self.attempts + 1):
            try:
                await ctx.docker.pull(ref)
                return
            except DockerError as e:
                if e.not_found or (e.status is None and any(m in str(e).lower() for m in _NOT_FOUND_MARKERS)):
                    raise StepError(f"image {ref} not found in its registry: {e}", FinishReason.FAILED) from None
                if attempt == self.attempts:
                    raise StepError(f"pulling image {ref} failed {attempt} times: {e}") from None
                log.warning("pull of %s failed (attempt %d): %s", ref, attempt, e, extra={"task_id": ctx.task_id})
            await backoff.sleep()

    async def teardown(self, ctx: LaunchContext) -> None:
        # Images are shared between tasks; removing unused ones is the image GC's job, not a task's.
        return None
