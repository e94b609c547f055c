"""The host-level CPU object (agent/host/cpus.py, cpuset_apply.py), its applier against a fake engine, the cpuset step,
and the rebuild of the placement state from task checkpoints after a restart, on generated sysfs
trees (cpuset/synthetic.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.checkpoint import CheckpointStore, TaskCheckpoint
from agent.config import AgentConfig, load_config
from agent.host.cpus import (
    CpuStateError,
    HostCpus,
    PlacementFailed,
    auto_reserved,
    discover,
)
from agent.host.cpuset_apply import ENGINE_READBACK_EVERY, CpusetApplier
from agent.docker_api import DockerError
from agent.metrics import AgentMetrics
from agent.steps.base import LaunchContext, StepError
from agent.steps.cpuset import CpusetStep
from cpuset import format_cpulist, parse_cpulist
from cpuset.synthetic import TOPOLOGIES, SyntheticSpec, topology_of, write_sysfs
from titus_common.jobspec import ContainerSpec, Resources
from titus_common.protocol import TaskAssignment
from titus_common.states import FinishReason, TaskState
from titusctl.render import cpu_map

TINY = SyntheticSpec(name="tiny", sockets=1, l3_per_socket=1, cores_per_l3=2, threads=1)  # 2 CPUs, like CI


def record(task_id: str, cpu: float = 1.0, cpu_class: str | None = None,
           state: TaskState = TaskState.START_INITIATED) -> TaskCheckpoint:
    spec = ContainerSpec(image="busybox", resources=Resources(cpu=cpu), cpu_class=cpu_class)  # type: ignore[arg-type]
    a = TaskAssignment(task_id=task_id, job_id="j1", index=0, container=spec, accepted_at=1.0)
    return TaskCheckpoint(assignment=a, state=state)


def config_for(tmp_path: Path, spec: SyntheticSpec, reserved: str | None = None) -> AgentConfig:
    root = write_sysfs(spec, tmp_path / "sys")
    return AgentConfig(node_id="n1", state_dir=tmp_path / "state", sysfs_root=root, reserved_cpus=reserved)


def host_on(spec: SyntheticSpec, reserved: tuple[int, ...] = ()) -> HostCpus:
    return HostCpus(topology_of(spec).with_reserved(reserved), AgentMetrics())


def place(host: HostCpus, rec: TaskCheckpoint, store: CheckpointStore | None = None) -> Any:
    spec = rec.assignment.container
    grant = host.place(rec, lambda: store.save(rec) if store else None, spec.effective_cpu_class, spec.resources.cpu)
    rec.resources["cpuset"] = grant.to_record()
    if store is not None:
        store.save(rec)
    return grant


def metric(host: HostCpus, name: str, **labels: str) -> float:
    return host.metrics.registry.get_sample_value(name, labels) or 0.0


# ---- topology and configuration ------------------------------------------------------------------


def test_auto_reservation_is_the_first_core_on_4_cpus_or_more() -> None:
    assert auto_reserved(topology_of(TINY)) == frozenset()
    assert auto_reserved(topology_of(TOPOLOGIES["T1"])) == {0, 48}  # split numbering: core 0 = 0 and 48
    assert auto_reserved(topology_of(TOPOLOGIES["T8"])) == {0, 1}  # adjacent numbering


def test_discover_from_configured_sysfs_root(tmp_path: Path) -> None:
    assert discover(config_for(tmp_path / "a", TOPOLOGIES["T1"])).reserved == {0, 48}
    assert discover(config_for(tmp_path / "b", TOPOLOGIES["T1"], reserved="")).reserved == frozenset()
    assert discover(config_for(tmp_path / "c", TOPOLOGIES["T1"], reserved="0-3")).reserved == {0, 1, 2, 3}
    with pytest.raises(CpuStateError, match="cannot read the CPU topology"):
        discover(config_for(tmp_path / "d", TINY, reserved="7"))
    with pytest.raises(CpuStateError, match="missing"):
        discover(AgentConfig(node_id="n", sysfs_root=tmp_path / "nowhere"))


def test_config_flags() -> None:
    c = load_config(["--node-id", "n", "--reserved-cpus", "", "--sysfs-root", "/tmp/sys", "--no-cpuset",
                     "--cpuset-rebalance-max-moves", "4"])
    assert (c.reserved_cpus, c.sysfs_root, c.cpuset_enabled, c.cpuset_rebalance_max_moves) == (
        "", Path("/tmp/sys"), False, 4)
    d = load_config(["--node-id", "n"])
    assert d.reserved_cpus is None and d.cpuset_enabled and d.sysfs_root == Path("/sys")


# ---- decisions -------------------------------------------------------------------------------------


def test_static_whole_cores_one_l3_and_metrics() -> None:
    host = host_on(TOPOLOGIES["T3"], reserved=(0, 128))
    g = place(host, record("a", cpu=8))
    topo = host.topology
    assert len(g.exclusive) == 8 and len({topo.cpus[c].l3 for c in g.exclusive}) == 1
    assert all(set(topo.siblings(c)) <= set(g.exclusive) for c in g.exclusive)  # whole cores
    assert metric(host, "titus_agent_cpuset_placements_total", cls="static") == 1
    assert metric(host, "titus_agent_cpuset_placement_seconds_count") == 1
    assert metric(host, "titus_agent_cpuset_cross_placements_total", level="l3") == 0
    place(host, record("b", cpu=24))  # more than one 16-thread CCX: crosses L3 groups, stays in one socket
    assert metric(host, "titus_agent_cpuset_cross_placements_total", level="l3") == 1
    assert metric(host, "titus_agent_cpuset_cross_placements_total", level="socket") == 0


def test_burst_runs_on_its_minimum_plus_idle_cpus_and_shrinks() -> None:
    host = host_on(TINY)
    shared = place(host, record("shared", cpu=0.5))  # fractional → burst, no exclusive CPU
    assert shared.cls == "burst" and shared.exclusive == ()
    assert host.desired() == {"shared": "0-1"}
    static = place(host, record("static", cpu=1))
    (mine,) = static.exclusive
    assert host.desired() == {"shared": str(1 - mine), "static": str(mine)}
    host.release("static")
    host.release("static")  # idempotent
    assert host.desired() == {"shared": "0-1"}


def test_shared_task_never_gets_an_empty_cpuset() -> None:
    host = host_on(TOPOLOGIES["T2"], reserved=(0, 32))
    place(host, record("big", cpu=62))  # every usable CPU
    place(host, record("shared", cpu=0.1))
    assert host.desired()["shared"] == "0,32"  # the reserved CPUs
    mini = host_on(TINY)
    place(mini, record("big", cpu=2))
    place(mini, record("shared", cpu=0.1))
    assert mini.desired()["shared"] == "0-1"


def test_no_layout_is_a_clear_placement_failure() -> None:
    host = host_on(TINY)
    place(host, record("a", cpu=2))
    with pytest.raises(PlacementFailed, match=r"no CPU layout for 1 exclusive CPU\(s\).*0 of 2 usable CPUs are free"):
        place(host, record("b", cpu=1))
    with pytest.raises(PlacementFailed, match="2 usable"):
        place(host, record("c", cpu=3))
    assert metric(host, "titus_agent_cpuset_placement_failures_total") == 2
    assert set(host.grants) == {"a"}


def test_smt_sharing_is_counted() -> None:
    host = host_on(SyntheticSpec(name="smt", sockets=1, l3_per_socket=1, cores_per_l3=2, threads=2))
    place(host, record("a", cpu=3))  # a whole core + one thread of the other
    place(host, record("b", cpu=1))  # the last thread: its sibling is a's
    assert metric(host, "titus_agent_cpuset_smt_shared_placements_total") == 1
    assert host.smt_shared_cores() == 1
    assert host.usage() == {"reserved": 0, "static": 4, "burst": 0, "idle": 0}


# ---- rebuild after a restart ------------------------------------------------------------------------


def test_rebuild_from_task_checkpoints_gives_the_same_assignments(tmp_path: Path) -> None:
    spec = TOPOLOGIES["T4"]
    store = CheckpointStore(tmp_path)
    host = host_on(spec, reserved=(0, 128))
    recs = [record(f"t{i}", cpu=c, cpu_class=k) for i, (c, k) in
            enumerate([(4, None), (1, None), (6, "burst"), (0.5, None), (16, None), (2.5, None), (3, None)])]
    for r in recs:
        r.state = TaskState.STARTED
        place(host, r, store)
    host.release("t1")  # a finished task: its record says released, and must not come back
    recs[1].resources["cpuset"]["released"] = True
    store.save(recs[1])
    done = record("done", cpu=2, state=TaskState.FINISHED)
    # A finished task's record is ignored, even one naming CPUs another task holds now.
    done.resources["cpuset"] = {"class": "static", "request": 4, "cpus": recs[0].resources["cpuset"]["cpus"]}
    store.save(done)

    again = host_on(spec, reserved=(0, 128))
    assert again.rebuild(store.load_all(), store.save) == 6
    assert again.grants == host.grants
    assert again.alloc.owners() == host.alloc.owners()
    assert again.desired() == host.desired()
    # The rebuilt state keeps deciding like the original one.
    assert place(again, record("n", cpu=4)).exclusive == place(host, record("n", cpu=4)).exclusive


def test_rebuild_refuses_a_cpu_claimed_twice(tmp_path: Path) -> None:
    a, b = record("a", cpu=2), record("b", cpu=1)
    a.resources["cpuset"] = {"class": "static", "request": 2, "cpus": "4-5"}
    b.resources["cpuset"] = {"class": "static", "request": 1, "cpus": "5"}
    with pytest.raises(CpuStateError, match="task b's checkpoint claims CPUs 5 that task a also holds"):
        host_on(TOPOLOGIES["T1"]).rebuild([a, b], lambda r: None)


@pytest.mark.parametrize(
    "entry,words",
    [
        ({"class": "static", "request": 1, "cpus": "0"}, "reserved-cpus"),  # now reserved
        ({"class": "static", "request": 1, "cpus": "500"}, "does not fit this host"),
        ({"class": "static", "request": 2, "cpus": "4"}, "1 CPUs recorded for a static request of 2"),
        ({"class": "turbo", "request": 1, "cpus": "4"}, "unknown class"),
        ({"class": "static", "request": 1, "cpus": "4-"}, "does not fit"),
    ],
)
def test_rebuild_refuses_what_this_host_cannot_honour(entry: dict[str, Any], words: str) -> None:
    r = record("a")
    r.resources["cpuset"] = entry
    with pytest.raises(CpuStateError, match=words):
        host_on(TOPOLOGIES["T1"], reserved=(0, 48)).rebuild([r], lambda r: None)


def test_rebalance_moves_a_split_task_and_persists_it() -> None:
    host = host_on(TOPOLOGIES["T1"])
    r = record("split", cpu=2, state=TaskState.STARTED)
    r.resources["cpuset"] = {"class": "static", "request": 2, "cpus": "1,30"}  # one CPU on each socket
    saved: list[str] = []
    host.rebuild([r], lambda rec: saved.append(rec.resources["cpuset"]["cpus"]))
    assert host.rebalance(8) >= 1
    new = host.grants["split"].exclusive
    assert len({host.topology.cpus[c].socket for c in new}) == 1
    assert saved == [format_cpulist(new)] and r.resources["cpuset"]["cpus"] == format_cpulist(new)
    assert host.rebalance(8) == 0  # nothing left to improve
    assert metric(host, "titus_agent_cpuset_rebalance_moved_cpus_count") == 2


# ---- the applier, against a fake engine ------------------------------------------------------------


class FakeEngine:
    def __init__(self) -> None:
        self.cpusets: dict[str, str] = {}  # container name → HostConfig.CpusetCpus
        self.kernel: dict[str, str] = {}
        self.updates: list[tuple[str, str]] = []
        self.inspects = 0

    async def update_cpuset(self, container: str, cpus: str) -> None:
        if container not in self.cpusets:
            raise DockerError(404, f"No such container: {container}")
        self.updates.append((container, cpus))
        self.cpusets[container] = self.kernel[container] = cpus

    async def inspect(self, container: str) -> dict[str, Any] | None:
        self.inspects += 1
        if container not in self.cpusets:
            return None
        return {"Id": container, "HostConfig": {"CpusetCpus": self.cpusets[container]}}

    async def cgroup_cpuset(self, container_id: str, root: Path) -> str | None:
        return self.kernel.get(container_id)

    async def cgroup_cpusets(self, container_ids: list[str], root: Path) -> dict[str, str | None]:
        return {c: self.kernel.get(c) for c in container_ids}

    def create(self, task_id: str, cpus: str) -> None:
        self.cpusets[f"titus-{task_id}"] = self.kernel[f"titus-{task_id}"] = cpus


def applier_on(spec: SyntheticSpec) -> tuple[CpusetApplier, FakeEngine]:
    engine = FakeEngine()
    host = host_on(spec)
    return CpusetApplier(host, engine, host.metrics, Path("/nowhere")), engine  # type: ignore[arg-type]


async def test_applier_writes_changes_only_and_retries_what_is_not_created_yet() -> None:
    applier, engine = applier_on(TINY)
    host = applier.host
    place(host, record("burst", cpu=0.5))
    applier.created_with("burst", host.cpuset_of("burst"))
    engine.create("burst", "0-1")
    await applier.apply()
    assert engine.updates == []  # already created on the right cpuset
    place(host, record("static", cpu=1))  # not created yet: the burst shrinks, the static is pending
    await applier.apply()
    (mine,) = host.grants["static"].exclusive
    assert engine.updates == [("titus-burst", str(1 - mine))] and applier.pending
    engine.create("static", "0-1")  # created from a stale value
    await applier.apply()
    assert engine.cpusets["titus-static"] == str(mine) and not applier.pending
    host.release("static")
    await applier.apply()
    assert engine.cpusets["titus-burst"] == "0-1" and "static" not in applier.applied


async def test_applier_corrects_drift_in_the_engine_and_in_the_cgroup() -> None:
    applier, engine = applier_on(TINY)
    host = applier.host
    place(host, record("s", cpu=1))
    (mine,) = host.grants["s"].exclusive
    engine.create("s", str(mine))
    await applier.verify()
    assert engine.updates == []
    engine.cpusets["titus-s"] = engine.kernel["titus-s"] = "0-1"  # docker update from outside
    await applier.verify()
    assert engine.cpusets["titus-s"] == str(mine)
    engine.kernel["titus-s"] = "0-1"  # someone wrote the cgroup file directly
    await applier.verify()
    assert engine.kernel["titus-s"] == str(mine)
    assert metric(host, "titus_agent_cpuset_drift_corrections_total", source="engine") == 1
    assert metric(host, "titus_agent_cpuset_drift_corrections_total", source="cgroup") == 1


async def test_read_back_asks_the_engine_only_every_tenth_check_or_on_a_mismatch() -> None:
    applier, engine = applier_on(TINY)
    host = applier.host
    place(host, record("s", cpu=1))
    (mine,) = host.grants["s"].exclusive
    engine.create("s", str(mine))
    await applier.verify()
    assert engine.inspects == 1  # the first check learns the container's id from the engine
    for _ in range(ENGINE_READBACK_EVERY - 1):
        await applier.verify()
    assert engine.inspects == 1  # the kernel agreed: no engine round trip
    await applier.verify()
    assert engine.inspects == 2  # the 10th check reads the engine's record too
    engine.cpusets["titus-s"] = "0-1"  # the engine's record alone drifted: found on the next full check
    for _ in range(ENGINE_READBACK_EVERY):
        await applier.verify()
    assert engine.cpusets["titus-s"] == str(mine) and engine.inspects == 3
    engine.kernel["titus-s"] = "0-1"  # the kernel drifted: the very next check asks the engine, corrects
    await applier.verify()
    assert engine.inspects == 4 and engine.kernel["titus-s"] == str(mine)
    assert metric(host, "titus_agent_cpuset_drift_corrections_total", source="engine") == 1
    assert metric(host, "titus_agent_cpuset_drift_corrections_total", source="cgroup") == 1
    host.release("s")
    await applier.verify()
    assert applier._ids == {}  # a task gone is forgotten


# ---- the step ----------------------------------------------------------------------------------------


def ctx_for(rec: TaskCheckpoint, store: CheckpointStore) -> LaunchContext:
    return LaunchContext(rec, docker=None, node_id="n1", save=lambda: store.save(rec))  # type: ignore[arg-type]


async def test_step_setup_idempotent_teardown_repeatable(tmp_path: Path) -> None:
    applier, engine = applier_on(TOPOLOGIES["T2"])
    step = CpusetStep(applier)
    store = CheckpointStore(tmp_path)
    rec = record("t", cpu=4)
    ctx = ctx_for(rec, store)
    await step.setup(ctx)
    first = dict(rec.resources["cpuset"])
    assert store.load_all()[0].resources["cpuset"] == first  # recorded and saved before returning
    assert set(parse_cpulist(ctx.host_config_options["cpuset_cpus"])) == set(parse_cpulist(first["cpus"]))
    await step.setup(ctx_for(rec, store))  # re-run (agent restart mid-launch): the same CPUs
    assert rec.resources["cpuset"] == first and len(applier.host.alloc) == 1
    await step.teardown(ctx)
    await step.teardown(ctx)
    assert rec.resources["cpuset"]["released"] is True and not applier.host.grants
    # A later restart must not give the released CPUs back to this task.
    fresh = host_on(TOPOLOGIES["T2"])
    assert fresh.rebuild(store.load_all(), store.save) == 0


async def test_step_teardown_without_setup_and_placement_failure(tmp_path: Path) -> None:
    applier, _ = applier_on(TINY)
    step = CpusetStep(applier)
    store = CheckpointStore(tmp_path)
    await step.teardown(ctx_for(record("never"), store))
    await step.setup(ctx_for(record("a", cpu=2), store))
    rec = record("b", cpu=1)
    with pytest.raises(StepError) as e:
        await step.setup(ctx_for(rec, store))
    assert e.value.reason is FinishReason.CRASHED and "no CPU layout" in e.value.message
    await step.teardown(ctx_for(rec, store))
    assert set(applier.host.grants) == {"a"}


async def test_step_adopts_a_recorded_grant_after_a_restart(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    applier, _ = applier_on(TOPOLOGIES["T2"])
    rec = record("t", cpu=2, state=TaskState.START_INITIATED)
    await CpusetStep(applier).setup(ctx_for(rec, store))
    recorded = rec.resources["cpuset"]["cpus"]
    # Restart: a new host object rebuilt from the records, then setup re-runs for the mid-launch task.
    applier2, _ = applier_on(TOPOLOGIES["T2"])
    (loaded,) = store.load_all()
    applier2.host.rebuild([loaded], store.save)
    await CpusetStep(applier2).setup(ctx_for(loaded, store))
    assert loaded.resources["cpuset"]["cpus"] == recorded


# ---- what operators see --------------------------------------------------------------------------------


def test_snapshot_and_titusctl_map() -> None:
    host = host_on(SyntheticSpec(name="smt", sockets=2, l3_per_socket=1, cores_per_l3=2, threads=2), reserved=(0, 4))
    place(host, record("static-task", cpu=2))
    place(host, record("burst-task", cpu=0.5))
    doc = {"nodeId": "n1", **host.snapshot({"static-task": host.cpuset_of("static-task")})}
    assert doc["reserved"] == "0,4" and doc["topology"]["sockets"] == 2
    held = [c["cpu"] for c in doc["cpus"] if c["taskId"] == "static-task"]
    assert len(held) == 2
    assert all(c["burstTasks"] == ["burst-task"] for c in doc["cpus"] if c["taskId"] is None and not c["reserved"])
    text = cpu_map(doc)
    assert "reserved" in text and "static-task" in text and "1 task(s)" in text and "APPLIED" in text
    lines = text.splitlines()
    assert lines[3].split()[:2] == ["SOCKET", "NUMA"]


# ---- the job spec field --------------------------------------------------------------------------------


def job(container: dict[str, Any]) -> dict[str, Any]:
    return {"appName": "a", "owner": "o", "container": {"image": "busybox", **container}, "batch": {"size": 1}}


@pytest.mark.parametrize(
    "container,cls",
    [
        ({}, "static"),  # cpu defaults to 1: a whole CPU
        ({"resources": {"cpu": 2.0}}, "static"),
        ({"resources": {"cpu": 0.5}}, "burst"),
        ({"resources": {"cpu": 2.0}, "cpuClass": "burst"}, "burst"),
        ({"resources": {"cpu": 1.5}, "cpuClass": "burst"}, "burst"),
    ],
)
def test_cpu_class_default(container: dict[str, Any], cls: str) -> None:
    from titus_common.jobspec import parse_job_spec

    assert parse_job_spec(job(container)).container.effective_cpu_class == cls


def test_static_class_refuses_a_fractional_request() -> None:
    from titus_common.jobspec import SpecError, parse_job_spec

    with pytest.raises(SpecError, match="whole number of cpus"):
        parse_job_spec(job({"resources": {"cpu": 0.5}, "cpuClass": "static"}))
    with pytest.raises(SpecError, match="cpuClass"):
        parse_job_spec(job({"cpuClass": "turbo"}))
