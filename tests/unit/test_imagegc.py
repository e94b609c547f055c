"""Image and container GC decisions (agent/imagegc.py): high/low thresholds, LRU order, the age
rule's bound, and what is never removed."""

from __future__ import annotations

from agent.imagegc import ContainerInfo, GcLimits, ImageInfo, last_used, plan

NOW = 100_000.0
GIB = 2**30
LIMITS = GcLimits(high_pct=85, low_pct=80, unused_age_s=3600, max_per_cycle=2, container_retention_s=3600)


def img(i: str, last: float, size: int = GIB, *refs: str) -> ImageInfo:
    return ImageInfo(f"sha256:{i}", refs or (f"r/{i}:1",), size, last)


IMAGES = [img("a", NOW - 9000), img("b", NOW - 8000), img("c", NOW - 7000), img("d", NOW - 10)]


def ids(images: list[ImageInfo]) -> list[str]:
    return [i.id.removeprefix("sha256:") for i in images]


def test_no_pressure_age_rule_bounded_and_lru() -> None:
    p = plan(IMAGES, [], set(), set(), set(), used_pct=50, total_bytes=100 * GIB, limits=LIMITS, now=NOW)
    assert not p.pressure and ids(p.images) == ["a", "b"]  # 3 are old enough; 2 per cycle, oldest first


def test_age_rule_off() -> None:
    off = GcLimits(unused_age_s=0)
    assert plan(IMAGES, [], set(), set(), set(), 50, 100 * GIB, off, NOW).images == []


def test_pressure_removes_lru_until_the_low_mark() -> None:
    # each image 1 GiB of 100 GiB: from 86.5 % four removals reach 82.5 %, still above 80: all four go
    p = plan(IMAGES, [], set(), set(), set(), used_pct=82.5, total_bytes=100 * GIB, limits=LIMITS, now=NOW)
    assert not p.pressure  # below the high mark: age rule only
    p = plan(IMAGES, [], set(), set(), set(), used_pct=86.5, total_bytes=100 * GIB, limits=LIMITS, now=NOW)
    assert p.pressure and ids(p.images) == ["a", "b", "c", "d"]
    p = plan(IMAGES, [], set(), set(), set(), used_pct=86.0, total_bytes=10 * GIB, limits=LIMITS, now=NOW)
    assert ids(p.images) == ["a"]  # 1 GiB of 10 GiB: 86 → 76 ≤ 80, stop; age does not matter under pressure


def test_never_in_use_pending_or_protected() -> None:
    images = [img("a", NOW - 9000, GIB, "app/web:1"), img("b", NOW - 9000, GIB, "busybox:latest"),
              img("c", NOW - 9000), img("d", NOW - 9000, GIB, "app/batch:2")]
    containers = [ContainerInfo("c1", "sha256:c", "exited", "t-old", ours=False)]
    p = plan(images, containers, held_tasks=set(), task_images={"app/web:1"}, protected={"busybox"},
             used_pct=99, total_bytes=100 * GIB, limits=LIMITS, now=NOW)
    assert ids(p.images) == ["d"] and p.kept_in_use == 3


def test_forced_removes_every_unused_image() -> None:
    p = plan(IMAGES, [], set(), set(), set(), used_pct=10, total_bytes=100 * GIB, limits=LIMITS, now=NOW, force=True)
    assert p.pressure and ids(p.images) == ["a", "b", "c", "d"]


def test_containers_of_finished_tasks_after_retention() -> None:
    cs = [
        ContainerInfo("old", "sha256:x", "exited", "t1", ours=True, finished_at=NOW - 4000),
        ContainerInfo("new", "sha256:x", "exited", "t2", ours=True, finished_at=NOW - 60),
        ContainerInfo("held", "sha256:x", "exited", "t3", ours=True, finished_at=NOW - 9000),
        ContainerInfo("running", "sha256:x", "running", "t4", ours=True),
        ContainerInfo("theirs", "sha256:x", "exited", "t5", ours=False, finished_at=NOW - 9000),
    ]
    p = plan([], cs, held_tasks={"t3"}, task_images=set(), protected=set(), used_pct=10, total_bytes=1,
             limits=LIMITS, now=NOW)
    assert [c.id for c in p.containers] == ["old"]
    p = plan([], cs, held_tasks={"t3"}, task_images=set(), protected=set(), used_pct=90, total_bytes=1,
             limits=LIMITS, now=NOW)
    assert [c.id for c in p.containers] == ["old", "new"]  # pressure: no retention


def test_lru_book() -> None:
    book = last_used({}, ["sha256:a", "sha256:b"], [], NOW)
    assert book == {"sha256:a": NOW, "sha256:b": NOW}  # first seen now
    book = last_used(book, ["sha256:a", "sha256:b"], [ContainerInfo("c", "sha256:b", "running", None, False)], NOW + 50)
    assert book == {"sha256:a": NOW, "sha256:b": NOW + 50}
    assert last_used(book, ["sha256:b"], [], NOW + 60) == {"sha256:b": NOW + 50}  # a is gone from the engine
