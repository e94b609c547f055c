"""Change-driven placement through the engine: unplaceable tasks are parked with their reasons until
something relevant changes; the live spread ⇄ pack switch; placement facts from heartbeats."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scheduler.core import BadMode, Scheduler, SchedulerConfig
from scheduler.engine import Engine
from scheduler.fitness import Mode
from scheduler.metrics import SchedulerMetrics
from scheduler.store import SQLiteStore
from titus_common.protocol import CapacityReport, NodeReport, images_digest
from titus_common.states import TaskState as S
from tests.unit.test_scheduler_core import Clock, spec


def make(tmp_path: Path) -> tuple[Scheduler, Clock]:
    clock = Clock()
    s = Scheduler(SQLiteStore(tmp_path / "s.db"), Engine(), SchedulerMetrics(), SchedulerConfig(), clock=clock)
    return s, clock


def node(s: Scheduler, name: str, cpus: float = 4, zone: str = "a", **kw: Any) -> None:
    s.heartbeat(NodeReport(id=name, capacity=CapacityReport(cpus=cpus, memory_mib=cpus * 1024, disk_mib=100_000),
                           labels={"zone": zone}, **kw))


def big_job(cpu: float, n: int) -> Any:
    return spec(container={"image": "busybox:latest", "command": ["true"], "resources": {"cpu": cpu, "memoryMiB": 128}},
                batch={"size": n})


def test_unplaceable_tasks_are_parked_until_something_changes(tmp_path: Path) -> None:
    s, clock = make(tmp_path)
    node(s, "n1", cpus=4)
    job, _ = s.submit(big_job(8, 1000))
    assert s.schedule_pass() == 0
    tasks = s.job_tasks(job.id)
    assert all(t.message == "waiting: not enough cpu (every Ready host)" for t in tasks)
    assert tasks[0].placement_failures == [("not enough cpu", 1)]
    passes = s.placement_passes
    # Idle: nothing due, nothing evaluated, however often the loop wakes.
    assert s.next_due() is None
    for _ in range(5):
        assert s.schedule_pass() == 0
    assert s.placement_passes == passes
    # An unchanged heartbeat does not wake the loop or unpark anything.
    s._schedule_wanted.clear()
    node(s, "n1", cpus=4)
    assert not s._schedule_wanted.is_set()
    s.schedule_pass()
    assert s.placement_passes == passes
    # New capacity is a relevant change: the parked tasks are looked at again.
    node(s, "n2", cpus=64)
    assert s._schedule_wanted.is_set()
    # n2's 64 cpus take 8 tasks of 8 cpus. The job cap does not stop it: 1,000 tasks on 2 hosts
    # raise the default cap to 500 (an even spread), so cpu is the only reason left.
    assert s.schedule_pass() == 8
    assert s.placement_passes == passes + 1
    waiting = [t for t in s.job_tasks(job.id) if t.state is S.ACCEPTED][0]
    assert waiting.placement_failures == [("not enough cpu", 2)]
    assert waiting.message == "waiting: not enough cpu (every Ready host)"


def test_a_finished_task_unparks(tmp_path: Path) -> None:
    s, clock = make(tmp_path)
    node(s, "n1", cpus=2)
    a, _ = s.submit(big_job(2, 1))
    b, _ = s.submit(big_job(2, 1))
    assert s.schedule_pass() == 1
    assert s.schedule_pass() == 0 and s.next_due() is None
    placed, parked = sorted((s.job_tasks(a.id)[0], s.job_tasks(b.id)[0]), key=lambda t: t.node_id is None)
    s.kill_task(placed.id)  # never delivered: finishes at once, freeing the host
    assert s.schedule_pass() == 1
    assert parked.node_id == "n1"


def test_live_mode_switch_during_a_burst(tmp_path: Path) -> None:
    s, clock = make(tmp_path)
    for i in range(4):
        node(s, f"n{i}", cpus=16)
    first, _ = s.submit(big_job(1, 4))
    s.schedule_pass()
    assert len({t.node_id for t in s.job_tasks(first.id)}) == 4  # spread: one per host
    assert s.set_scheduling_mode("pack", actor="test") is Mode.PACK
    assert s.scheduling_mode is Mode.PACK
    second, _ = s.submit(big_job(1, 4))
    s.schedule_pass()
    assert len({t.node_id for t in s.job_tasks(second.id)}) == 1  # pack: one host
    assert s.metrics.mode_switches.labels(mode="pack")._value.get() == 1
    with pytest.raises(BadMode, match="unknown scheduling mode 'binpack'"):
        s.set_scheduling_mode("binpack", actor="test")


def test_mode_switch_unparks(tmp_path: Path) -> None:
    s, _ = make(tmp_path)
    node(s, "n1", cpus=1)
    s.submit(big_job(2, 1))
    s.schedule_pass()
    s._schedule_wanted.clear()
    s.set_scheduling_mode("pack", actor="test")
    assert s._schedule_wanted.is_set() and s.next_due() is not None


def test_cached_images_go_by_digest(tmp_path: Path) -> None:
    s, _ = make(tmp_path)
    imgs = ["app:1", "web:2"]
    node(s, "n1", cached_images_digest=images_digest(imgs))
    assert s.work_for("n1").send_cached_images  # digest unknown: ask for the list
    node(s, "n1", cached_images_digest=images_digest(imgs), cached_images=imgs)
    assert not s.work_for("n1").send_cached_images
    assert s.facts.get("n1").images == frozenset(imgs)
    s._schedule_wanted.clear()
    node(s, "n1", cached_images_digest=images_digest(imgs))  # digest only, unchanged: no wake-up
    assert not s._schedule_wanted.is_set() and not s.work_for("n1").send_cached_images


def test_ip_capacity_limits_placement(tmp_path: Path) -> None:
    s, _ = make(tmp_path)
    node(s, "n1", cpus=16, free_ips=2)
    job, _ = s.submit(big_job(1, 3))
    assert s.schedule_pass() == 2
    assert [t for t in s.job_tasks(job.id) if t.state is S.ACCEPTED][0].message == "waiting: no free IP (every Ready host)"


def test_ip_capacity_is_not_overcommitted_across_passes_between_heartbeats(tmp_path: Path) -> None:
    s, _ = make(tmp_path)
    node(s, "n1", cpus=16, ip_capacity=3, free_ips=3)
    first, _ = s.submit(big_job(1, 2))
    assert s.schedule_pass() == 2
    second, _ = s.submit(big_job(1, 2))  # no heartbeat since: the agent's free_ips is stale
    assert s.schedule_pass() == 1  # capacity 3 minus the 2 tasks placed there
    waiting = [t for t in s.job_tasks(second.id) if t.state is S.ACCEPTED]
    assert len(waiting) == 1 and waiting[0].message == "waiting: no free IP (every Ready host)"


def test_agent_reports_ip_capacity_and_warm_enis_from_its_pool() -> None:
    from netns.ipam import AssignIps, CreateEni, IpPool, PoolConfig, sg_key

    web, db = sg_key(["sg-web"]), sg_key(["sg-db"])
    pool = IpPool(PoolConfig(max_enis=3, ips_per_eni=10, warm_ip_target=2, refill_batch=2,
                             default_security_groups=web))
    for action in pool.plan(0.0):
        assert isinstance(action, CreateEni)
        pool.eni_created(action, "eni-web", 0.0)
    for action in pool.plan(0.0):
        assert isinstance(action, AssignIps)
        pool.ips_assigned(action, [f"10.0.0.{i}" for i in range(10, 10 + action.count)], 0.0)
    assert pool.allocate("t1", web, 1.0) is not None
    capacity, free, warm = pool.placement_facts(1.0)
    assert (capacity, free) == (30, 29)
    assert warm == {web: 9} and db not in warm  # 1 free + 8 more assignable without a new ENI


def test_hard_constraints_through_the_scheduler(tmp_path: Path) -> None:
    s, _ = make(tmp_path)
    node(s, "n1", cpus=16, zone="a")
    node(s, "n2", cpus=16, zone="b")
    job, _ = s.submit(spec(constraints={"hard": {"uniqueHost": "true"}}, batch={"size": 3}))
    assert s.schedule_pass() == 2
    assert {t.node_id for t in s.job_tasks(job.id) if t.node_id} == {"n1", "n2"}


def test_agent_sends_the_image_list_only_when_it_changed_or_is_asked() -> None:
    from agent.imagecache import ImageCacheReport

    r = ImageCacheReport()
    assert r.fields() == ("", None)
    r.update(["b:1", "a:1"])
    digest, images = r.fields()
    assert digest == images_digest(["a:1", "b:1"]) and images == ["a:1", "b:1"]
    assert r.fields() == (digest, None)  # unchanged: digest only
    r.resend()
    assert r.fields() == (digest, ["a:1", "b:1"])
    r.update(["a:1"])
    assert r.fields()[1] == ["a:1"]


def test_bare_image_names_match_the_engine_tag(tmp_path: Path) -> None:
    s, _ = make(tmp_path)
    s.set_scheduling_mode("pack", actor="test")
    node(s, "n1", cpus=16, cached_images_digest="x", cached_images=[])
    node(s, "n2", cpus=16, cached_images_digest="y", cached_images=["busybox:latest"])
    job, _ = s.submit(spec(container={"image": "busybox", "command": ["true"], "resources": {"cpu": 1, "memoryMiB": 128}}))
    s.schedule_pass()
    assert s.job_tasks(job.id)[0].node_id == "n2"
