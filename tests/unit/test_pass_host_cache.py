"""The placement pass keeps each host's engine input between passes (passes.HostInputCache): a pass
with the cache must decide exactly as one that builds every host afresh, through the changes a host
goes through (tasks placed and ended, images and free IPs reported, capacity, labels, health)."""

from __future__ import annotations

import gc
import random
from pathlib import Path
from typing import Any

from scheduler import passes
from scheduler.core import Scheduler, SchedulerConfig
from scheduler.engine import Engine
from scheduler.fitness import Mode
from scheduler.metrics import SchedulerMetrics
from scheduler.store import SQLiteStore
from titus_common import gctune
from titus_common.protocol import CapacityReport, HealthCondition, HealthStatus, NodeReport, images_digest
from tests.unit.test_scheduler_core import Clock, spec


def report(name: str, cpus: float = 16, zone: str = "a", images: list[str] | None = None, **kw: Any) -> NodeReport:
    imgs = images or []
    return NodeReport(id=name, capacity=CapacityReport(cpus=cpus, memory_mib=int(cpus * 1024), disk_mib=100_000),
                      labels={"zone": zone}, cached_images_digest=images_digest(imgs), cached_images=imgs, **kw)


def fresh_table(s: Scheduler) -> list[Any]:
    """The hosts' inputs as a pass without the cache builds them."""
    table, _ = passes.build_table(s.nodes.values(), s.node_tasks, s.jobs, s.facts, 0)
    return table.inputs


def test_cached_inputs_equal_fresh_ones_through_host_changes(tmp_path: Path) -> None:
    clock = Clock()
    s = Scheduler(SQLiteStore(tmp_path / "s.db"), Engine(Mode.PACK), SchedulerMetrics(), SchedulerConfig(), clock=clock)
    rng = random.Random(7)
    names = [f"n{i}" for i in range(12)]
    for i, n in enumerate(names):
        s.heartbeat(report(n, zone="abc"[i % 3], images=["img0:1"]))
    cache = passes.HostInputCache(s._index.node_task_ids)
    for step in range(40):
        for _ in range(rng.randrange(1, 4)):
            cpu = rng.choice([1, 2, 4])
            s.submit(spec(container={"image": f"img{rng.randrange(3)}:1", "command": ["x"],
                                     "resources": {"cpu": cpu, "memoryMiB": 256}}, batch={"size": rng.randrange(1, 6)}))
        host = rng.choice(names)
        change = step % 5
        if change == 0:  # new images
            s.heartbeat(report(host, images=[f"img{k}:1" for k in range(rng.randrange(1, 4))]))
        elif change == 1:  # capacity and labels
            s.heartbeat(report(host, cpus=rng.choice([8, 16, 32]), zone=rng.choice("abc"), free_ips=rng.randrange(0, 30)))
        elif change == 2:  # a degraded check
            cond = HealthCondition(check="disk", status=HealthStatus.DEGRADED, reason="Slow", since=1, observed_at=1)
            s.heartbeat(report(host, health=[cond]))
        elif change == 3:  # tasks end
            for t in list(s.node_tasks(host))[:2]:
                s.kill_task(t.id)
        clock.now += 1
        cached = passes.build_table(s.nodes.values(), s.node_tasks, s.jobs, s.facts, 0, cache=cache)[0].inputs
        assert cached == fresh_table(s)
        s.schedule_pass()  # the scheduler's own pass (with its own cache) moves the state on
    assert sum(1 for t in s.tasks.values() if t.node_id) > 20


def test_the_scheduler_pass_decides_as_without_the_cache(tmp_path: Path) -> None:
    def run(cached: bool) -> list[tuple[int, int, str | None]]:
        clock = Clock()
        s = Scheduler(SQLiteStore(tmp_path / f"{cached}.db"), Engine(Mode.PACK), SchedulerMetrics(), SchedulerConfig(),
                      clock=clock)
        if not cached:  # a cache that never hits: every host built afresh each pass
            s.placing._hosts = passes.HostInputCache(lambda node_id: frozenset({object()}))  # type: ignore[arg-type]
        rng = random.Random(3)
        for i in range(20):
            s.heartbeat(report(f"n{i:02d}", zone="abc"[i % 3], images=[f"img{i % 4}:1"]))
        jobs: list[str] = []  # ids are random: compare by submission order
        for step in range(15):
            for _ in range(3):
                clock.now += 0.01  # one submit's tasks tie only among themselves
                job, _ = s.submit(spec(container={"image": f"img{rng.randrange(4)}:1", "command": ["x"],
                                                  "resources": {"cpu": rng.choice([1, 2, 4]), "memoryMiB": 512}},
                                       batch={"size": rng.randrange(1, 8)}))
                jobs.append(job.id)
            if step % 3 == 2:
                placed = sorted((t for t in s.tasks.values() if t.node_id), key=lambda t: (jobs.index(t.job_id), t.index))
                s.kill_task(placed[rng.randrange(len(placed))].id)
            clock.now += 1
            s.schedule_pass()
        return sorted((jobs.index(t.job_id), t.index, t.node_id) for t in s.tasks.values())

    assert run(True) == run(False)


def test_server_gc_thresholds_are_applied_and_restorable() -> None:
    before = gc.get_threshold()
    try:
        old = gctune.tune_for_server()
        assert old == before
        assert gc.get_threshold() == gctune.SERVER_THRESHOLDS
    finally:
        gc.set_threshold(*before)
