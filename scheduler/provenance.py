"""Image provenance on the control plane (docs/provenance.md): the digest a job is pinned to, what
the API shows of it, and the periodic check that flags tasks whose tag moved in the registry.

Policy: a job is pinned to one manifest digest — the one its reference names, else the one the
registry answered at submit, else (registry unreachable at submit) the one the first agent that
launched it reports. Every later launch of the job (replacements, new service instances) is sent
that digest and pulls by it: moving a tag never changes what an existing job runs. A task whose
job's tag has since moved in the registry is flagged `tagMoved` (API, `titusctl task describe`,
metric `titus_scheduler_tasks_tag_moved`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from scheduler.records import JobRecord, JobState, TaskRecord
from scheduler.registry import Lookup, Registry
from titus_common.provenance import is_digest, provenance_of, split_reference

if TYPE_CHECKING:
    from scheduler.core import Scheduler

__all__ = ["TagWatcher", "pin_at_submit", "pin_from_report", "provenance_view", "tag_moved"]

log = logging.getLogger("titus.scheduler.provenance")


def by_tag(job: JobRecord) -> bool:
    """The job names its image by tag (a digest reference cannot move)."""
    return split_reference(job.spec.container.image)[3] is None


def pin_at_submit(job: JobRecord, lookup: Lookup | None, now: float) -> None:
    ref_digest = split_reference(job.spec.container.image)[3]
    if ref_digest is not None and is_digest(ref_digest):
        job.image_digest, job.image_pinned_by = ref_digest, "reference"
    elif lookup is not None and lookup.digest is not None:
        job.image_digest, job.image_pinned_by = lookup.digest, "submit"
        job.tag_digest, job.tag_checked_at = lookup.digest, now
    else:
        job.image_resolve_error = lookup.error if lookup is not None else "no registry lookup at submit"


def pin_from_report(job: JobRecord, task: TaskRecord, digest: str | None) -> bool:
    """Record the digest an agent ran; the first one pins a job the registry did not answer for at
    submit. Returns whether the job changed."""
    if digest is None or not is_digest(digest):
        return False
    task.image_digest = digest
    if job.image_digest is None:
        job.image_digest, job.image_pinned_by = digest, "launch"
        log.info("image digest pinned at first launch: %s", digest, extra={"job_id": job.id})
        return True
    return False


def tag_moved(job: JobRecord, task: TaskRecord) -> bool:
    """A live task runs another digest than the one its job's tag points at now."""
    running = task.image_digest or job.image_digest
    return (not task.state.terminal and by_tag(job) and running is not None and job.tag_digest is not None
            and running != job.tag_digest)


def provenance_view(job: JobRecord, task: TaskRecord | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "image": job.spec.container.image,
        "imageDigest": job.image_digest,
        "pinnedBy": job.image_pinned_by or None,
        "resolveError": job.image_resolve_error or None,
        "tagDigest": job.tag_digest,
        "tagCheckedAt": job.tag_checked_at,
        **provenance_of(job.spec.attributes),
    }
    if task is not None:
        doc["taskImageDigest"] = task.image_digest
        doc["tagMoved"] = tag_moved(job, task)
    return doc


class TagWatcher:
    """Asks the registry, every `interval` seconds per image reference, what the tags of live jobs
    point at; at most `per_pass` lookups per pass (one per distinct reference, however many jobs
    share it), each on a thread with the registry's timeout. Results are applied on the event loop
    by `Scheduler.note_tag_digests`."""

    def __init__(self, scheduler: Scheduler, registry: Registry, interval: float, per_pass: int,
                 clock: Callable[[], float]) -> None:
        self.scheduler = scheduler
        self.registry = registry
        self.interval = interval
        self.per_pass = per_pass
        self.clock = clock
        self._checked: dict[str, float] = {}  # reference → when last asked (answered or not)

    def due(self, jobs: Iterable[JobRecord], now: float) -> list[str]:
        refs: dict[str, float] = {}
        for job in jobs:
            if job.state is JobState.ACCEPTED and by_tag(job):
                ref = job.spec.container.image
                last = max(self._checked.get(ref, -1e18), job.tag_checked_at or -1e18)
                refs[ref] = min(refs.get(ref, last), last)
        self._checked = {r: t for r, t in self._checked.items() if r in refs}  # forget finished jobs' images
        due = sorted((last, ref) for ref, last in refs.items() if now - last >= self.interval)
        return [ref for _, ref in due[: self.per_pass]]

    async def run_pass(self) -> int:
        now = self.clock()
        refs = self.due(self.scheduler.jobs.values(), now)
        if not refs:
            return 0
        for ref in refs:
            self._checked[ref] = now
        lookups = await asyncio.gather(*(self.registry.lookup(ref) for ref in refs))
        self.scheduler.note_tag_digests(dict(zip(refs, lookups, strict=True)), self.clock())
        return len(refs)

    async def run(self, stop: asyncio.Event) -> None:
        tick = min(self.interval, 5.0)
        while not stop.is_set():
            try:
                await self.run_pass()
            except Exception:  # a bug here must not stop the scheduler: log it, try next pass
                log.exception("tag check pass failed")
            try:
                await asyncio.wait_for(stop.wait(), timeout=tick)
            except TimeoutError:
                pass
