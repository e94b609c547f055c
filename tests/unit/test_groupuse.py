"""The per-host usage index (scheduler/groupuse.py) equals a full scan of every task after every
step of random histories: submissions, placements, agents' reports (started, finished), kills
(of a task, of a job, answered or not), hosts going silent, preemption passes, retention,
restarts.

The reference here walks `Scheduler.tasks` itself (not the index's per-host sets), sums with
resources that are exact in binary (so sums in any order are equal), and is compared with what the
guards read (`Preemptor._scan`): per group, per host, candidates in order, kills in flight, live
tasks per job. A hook left out (a placement, a kill, a report, an ending that does not mark its
host) leaves a stale host behind, which the next comparison sees."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.capacity import CapacityGroup
from scheduler.core import Scheduler, SchedulerConfig
from scheduler.engine import Engine
from scheduler.metrics import SchedulerMetrics
from scheduler.preempt import Running
from scheduler.records import NodeStatus
from scheduler.store import SQLiteStore
from tests.unit.test_scheduler_drain import FAST, Clock
from titus_common.jobspec import parse_job_spec
from titus_common.protocol import CapacityReport, NodeReport, TaskUpdate
from titus_common.states import FinishReason, TaskState

HOSTS = ["a", "b", "c"]
GROUPS = [CapacityGroup(name="prod", tier="critical", apps=["api"], reserved_cpu=3),
          CapacityGroup(name="batch", tier="flex", apps=["etl"], reserved_cpu=1)]


def spec(app: str, n: int, cpu: float, kind: str) -> Any:
    doc: dict[str, Any] = {
        "appName": app, "owner": "me", "attributes": {"titus.disruption.budget": "50"},
        "container": {"image": "busybox:latest", "command": ["sleep", "1d"],
                      "resources": {"cpu": cpu, "memoryMiB": 256, "diskMiB": 1000}},
    }
    doc[kind] = {"desired": n} if kind == "service" else {"size": n, "retryPolicy": {"retries": 1}}
    return parse_job_spec(doc)


class World:
    """A scheduler and its agents, driven one operation at a time."""

    def __init__(self, path: Path) -> None:
        self.clock, self.path = Clock(), path
        self.s = self.start()
        self.silent: set[str] = set()
        self.dropped: set[str] = set()  # kills the agents carried out without a report
        for h in HOSTS:
            self.beat(h)

    def start(self) -> Scheduler:
        return Scheduler(SQLiteStore(self.path / "s.db"), Engine(), SchedulerMetrics(),
                         SchedulerConfig(**{**FAST, "capacity_groups": GROUPS, "finished_job_retention": 0.0}),
                         clock=self.clock)

    def beat(self, host: str) -> None:
        running = sorted(t.id for t in self.s.node_tasks(host)
                         if t.state is not TaskState.LAUNCHED and t.id not in self.dropped)
        self.s.heartbeat(NodeReport(id=host, capacity=CapacityReport(cpus=4, memory_mib=2048, disk_mib=10_000),
                                    running=running))

    def live_tasks(self) -> list[Any]:
        return sorted((t for t in self.s.tasks.values() if not t.state.terminal), key=lambda t: t.id)

    def do(self, op: tuple[Any, ...]) -> None:
        s, kind = self.s, op[0]
        if kind == "submit":
            s.submit(spec(*op[1:]))
        elif kind == "place":
            s.schedule_pass()
        elif kind == "sync":  # the host's agent: starts what it is sent; kills: reported, done silently, or not yet
            host = HOSTS[op[1]]
            if host in self.silent:
                return
            resp = s.work_for(host)
            now = self.clock.now
            s.apply_updates(host, [TaskUpdate(task_id=a.task_id, state=TaskState.STARTED,
                                              timestamps={TaskState.STARTED: now}) for a in resp.launch])
            if op[2] == "report":
                s.apply_updates(host, [TaskUpdate(task_id=t, state=TaskState.FINISHED, reason=FinishReason.KILLED,
                                                  timestamps={TaskState.FINISHED: now}) for t in resp.kill])
            elif op[2] == "drop":  # no report: the next heartbeat no longer lists them
                self.dropped.update(resp.kill)
            self.beat(host)
        elif kind in ("exit", "kill_task", "kill_job"):
            live = self.live_tasks()
            if not live:
                return
            t = live[op[1] % len(live)]
            if kind == "kill_task":
                s.kill_task(t.id)
            elif kind == "kill_job":
                s.kill_job(t.job_id)
            elif t.node_id is not None and t.state is not TaskState.LAUNCHED:
                s.apply_updates(t.node_id, [TaskUpdate(task_id=t.id, state=TaskState.FINISHED,
                                                       reason=FinishReason.FAILED, exit_code=1,
                                                       timestamps={TaskState.FINISHED: self.clock.now})])
        elif kind == "restart":  # a new scheduler process on the same store: the index is rebuilt
            s.store.close()
            self.s = self.start()
        elif kind == "silence":  # a host stops (or resumes) heartbeating
            self.silent ^= {HOSTS[op[1]]}
        elif kind == "tick":
            self.clock.now += op[1]
            for h in HOSTS:
                if h not in self.silent:
                    self.beat(h)
            s.check_nodes()  # also the preemption pass
            s.reconcile()
            s.retention.evict(s, self.clock.now)

    def check(self) -> None:
        s = self.s
        cell, full = s.preempting._scan(), s.preempting._scan(full_scan=True)
        assert cell == full
        # An independent reference: every task in memory, summed directly.
        used: dict[str, list[float]] = {g.name: [0.0, 0.0] for g in s.capacity.by_name.values()}
        free = [0.0, 0.0]
        rooms: dict[str, list[float]] = {}
        on: dict[str, list[Running]] = {}
        in_flight: Counter[str] = Counter()
        jobs: set[str] = set()
        held: dict[str, list[float]] = {n: [0.0, 0.0] for n in s.nodes}
        for n in s.nodes.values():
            if n.status is NodeStatus.READY:
                rooms[n.id] = [float(n.capacity.cpus), float(n.capacity.memory_mib), float(n.capacity.disk_mib)]
        for t in s.tasks.values():
            if t.node_id is None or not t.state.active or t.node_id not in s.nodes:
                continue
            job = s.jobs[t.job_id]
            r, g = job.spec.container.resources, s.capacity.group_of(job.spec)
            held[t.node_id][0] += r.cpu
            held[t.node_id][1] += r.memory_mib
            if t.kill_requested:
                in_flight[t.job_id] += 1
                continue
            jobs.add(t.job_id)
            if t.node_id not in rooms:
                continue
            used[g.name][0] += r.cpu
            used[g.name][1] += r.memory_mib
            room = rooms[t.node_id]
            room[0] -= r.cpu
            room[1] -= r.memory_mib
            room[2] -= r.disk_mib
            started = t.timestamps.get("Started", t.timestamps.get("Launched", 0.0))
            on.setdefault(t.node_id, []).append(
                Running(t.id, t.job_id, g.name, t.node_id, r.cpu, r.memory_mib, r.disk_mib, started))
        for n in s.nodes.values():
            if n.status is NodeStatus.READY and not n.taints:
                free[0] += max(0.0, n.capacity.cpus - held[n.id][0])
                free[1] += max(0.0, n.capacity.memory_mib - held[n.id][1])
        for rs in on.values():
            rs.sort(key=lambda r: (s.capacity.by_name[r.group].tier == "critical", -r.started_at, r.task_id))
        assert {g: [u.used_cpu, u.used_memory_mib] for g, u in cell.use.items()} == used
        assert [cell.free_cpu, cell.free_memory_mib] == free
        assert {r.node_id: [r.free_cpu, r.free_memory_mib, r.free_disk_mib] for r in cell.rooms} == rooms
        assert {h: list(rs) for h, rs in cell.running.items()} == on
        assert +cell.in_flight == in_flight
        assert cell.jobs == jobs
        for job_id in s.jobs:
            assert s._live(job_id) == sum(1 for t in s.job_tasks(job_id) if not t.state.terminal)


OPS = st.one_of(
    st.tuples(st.just("submit"), st.sampled_from(["api", "web", "etl"]), st.integers(1, 4),
              st.sampled_from([0.5, 1.0, 1.5, 2.0]), st.sampled_from(["service", "batch"])),
    st.just(("place",)),
    st.tuples(st.just("sync"), st.integers(0, len(HOSTS) - 1), st.sampled_from(["report", "drop", "ignore"])),
    st.tuples(st.sampled_from(["exit", "kill_task", "kill_job"]), st.integers(0, 50)),
    st.tuples(st.just("silence"), st.integers(0, len(HOSTS) - 1)),
    st.tuples(st.just("tick"), st.sampled_from([1.0, 5.0, 40.0])),
    st.just(("restart",)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OPS, min_size=1, max_size=40))
def test_index_equals_full_scan_after_every_step(ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        w = World(Path(tmp))
        w.check()
        for op in ops:
            w.do(op)
            w.check()


def test_a_history_reaches_every_hook(tmp_path: Path) -> None:
    """Placement, a start after it, a kill in flight, the kill answered, an exit, a kill carried out
    without a report, a silent host: the
    index follows each (the kinds of change the random histories rely on do occur)."""
    w = World(tmp_path)
    s = w.s
    web, _ = s.submit(spec("web", 3, 1.0, "service"))
    w.do(("place",))
    w.check()
    w.clock.now += 1
    for i in range(len(HOSTS)):
        w.do(("sync", i, "report"))
    w.check()
    cell = s.preempting._scan()
    assert all(r.started_at == w.clock.now != s.tasks[r.task_id].timestamps["Launched"]
               for rs in cell.running.values() for r in rs) and len(cell.jobs) == 1
    victim, other, _ = s.job_tasks(web.id)
    s.kill_task(victim.id)
    w.check()
    assert s.preempting._scan().in_flight == {web.id: 1}
    assert victim.node_id is not None
    w.do(("sync", HOSTS.index(victim.node_id), "report"))
    w.check()
    assert victim.state.terminal and not s.preempting._scan().in_flight
    w.do(("exit", [t.id for t in w.live_tasks()].index(other.id)))
    w.check()
    assert other.state.terminal
    quiet = next(t for t in w.live_tasks() if t.state is TaskState.STARTED)
    assert quiet.node_id is not None
    s.kill_task(quiet.id)
    w.check()
    w.do(("sync", HOSTS.index(quiet.node_id), "drop"))  # the next heartbeat no longer lists it
    w.check()
    assert quiet.state.terminal
    w.do(("silence", 2))
    w.do(("tick", 40.0))
    w.check()
    assert s.nodes["c"].status is not NodeStatus.READY
