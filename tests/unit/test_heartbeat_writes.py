"""A heartbeat that changes nothing but its time is not written to the store (core.Scheduler.heartbeat):
at 7,000 hosts that was 1,400 commits a second. Anything else it changes is written at once, and the
record is written at least every STORED_BEAT_EVERY seconds; after a restart the hosts are as stored."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from scheduler.config import SchedulerConfig
from scheduler.core import Scheduler
from scheduler.nodeproto import STORED_BEAT_EVERY
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import FirstFit
from scheduler.records import JobRecord, NodeRecord, NodeStatus, TaskRecord
from scheduler.store import SQLiteStore
from tests.unit.test_scheduler_core import Clock
from titus_common.protocol import CapacityReport, NodeReport


class CountingStore(SQLiteStore):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.node_writes: list[str] = []

    def commit(self, jobs: Iterable[JobRecord] = (), tasks: Iterable[TaskRecord] = (),
               nodes: Iterable[NodeRecord] = ()) -> None:
        nodes = list(nodes)
        self.node_writes += [n.id for n in nodes]
        super().commit(jobs, tasks, nodes)


def beat(s: Scheduler, **kw: Any) -> None:
    doc: dict[str, Any] = {"id": "n1", "capacity": CapacityReport(cpus=4, memory_mib=4096, disk_mib=100_000),
                           "labels": {"zone": "a"}}
    doc.update(kw)
    s.heartbeat(NodeReport(**doc))


@pytest.fixture
def world(tmp_path: Path) -> tuple[Scheduler, CountingStore, Clock]:
    clock = Clock()
    store = CountingStore(tmp_path / "s.db")
    return Scheduler(store, FirstFit(), SchedulerMetrics(), SchedulerConfig(), clock=clock), store, clock


@pytest.mark.parametrize("change", [
    {"labels": {"zone": "b"}},
    {"capacity": CapacityReport(cpus=8, memory_mib=4096, disk_mib=100_000)},
    {"agent_version": "2.0"},
    {"unknown_containers": ["c1"]},
    {"posture": {"seccomp": True}},
])
def test_a_changed_heartbeat_is_written_an_unchanged_one_is_not(
    world: tuple[Scheduler, CountingStore, Clock], change: dict[str, Any]
) -> None:
    s, store, clock = world
    beat(s)
    assert store.node_writes == ["n1"]  # a new host is written at once
    for _ in range(5):
        clock.now += 5
        beat(s)
    assert store.node_writes == ["n1"]  # the same report again: only the heartbeat time moved
    assert s.nodes["n1"].last_heartbeat == clock.now  # in memory it did
    clock.now += 5
    beat(s, **change)
    assert store.node_writes == ["n1", "n1"]


def test_an_unchanged_host_is_still_written_now_and_then(world: tuple[Scheduler, CountingStore, Clock]) -> None:
    s, store, clock = world
    beat(s)
    steps = int(STORED_BEAT_EVERY // 5)
    for _ in range(steps - 1):
        clock.now += 5
        beat(s)
    assert len(store.node_writes) == 1
    clock.now += 5
    beat(s)
    assert len(store.node_writes) == 2


def test_a_host_back_from_disconnected_is_written(world: tuple[Scheduler, CountingStore, Clock]) -> None:
    s, store, clock = world
    beat(s)
    clock.now += s.config.disconnect_after + 1
    s.check_nodes()
    assert s.nodes["n1"].status is NodeStatus.DISCONNECTED
    writes = len(store.node_writes)
    beat(s)
    assert s.nodes["n1"].status is NodeStatus.READY and len(store.node_writes) == writes + 1
    # And a restart loads the host as it was last written, Ready, with a fresh grace.
    s2 = Scheduler(SQLiteStore(store.path), FirstFit(), SchedulerMetrics(), SchedulerConfig(), clock=clock)
    assert s2.nodes["n1"].status is NodeStatus.READY and s2.nodes["n1"].last_heartbeat >= clock.now
